"""The ledger store's engine: one schema, two back ends, chosen by URL.

    sqlite:///path/to/ledger.db          embedded default: WAL, synchronous=NORMAL, busy_timeout
    postgresql://user@host:5432/db        PostgreSQL through psycopg 3 (mapped to postgresql+psycopg://)
    postgresql+psycopg://...              the same, spelled out

Rules:
 1. SQLite connections run in autocommit at the driver level and SQLAlchemy emits BEGIN itself
    (pysqlite's own implicit transactions are off), so a transaction is exactly the `with
    conn.begin()` block. A connection opened by `write_connect()` begins with BEGIN IMMEDIATE:
    a writer takes SQLite's write lock when it starts, so two writers never deadlock on a lock
    upgrade and the busy timeout applies.
 2. Foreign keys are enforced on SQLite (PRAGMA foreign_keys=ON).
 3. `migrate()` brings any store to the newest schema with Alembic (cloud/migrations); the rater
    and the admin command call it at start (`open_store`), so a store is never used half-built.

Errors: `StoreURLError(ValueError)` for a URL we cannot serve.
"""
from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000


class StoreURLError(ValueError):
    """The database URL names a back end or driver this store does not support."""


def normalize_url(url: str) -> str:
    """The SQLAlchemy URL for `url`: plain postgresql:// (or postgres://) becomes postgresql+psycopg://."""
    if not isinstance(url, str) or "://" not in url:
        raise StoreURLError(f"not a database URL: {url!r} (use sqlite:///PATH or postgresql://...)")
    scheme, rest = url.split("://", 1)
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        return "postgresql+psycopg://" + rest
    if scheme in ("sqlite", "sqlite+pysqlite"):
        return "sqlite://" + rest
    raise StoreURLError(f"unsupported database URL scheme {scheme!r} (use sqlite:/// or postgresql://)")


def is_sqlite(engine: Engine | Connection) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(url: str, **kw) -> Engine:
    """An Engine for `url` with the store's connection settings (see the module rules)."""
    sa_url = make_url(normalize_url(url))
    if sa_url.get_backend_name() == "sqlite":
        if sa_url.database and sa_url.database != ":memory:":
            Path(sa_url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(sa_url, **kw)
        _sqlite_settings(engine)
        return engine
    kw.setdefault("pool_pre_ping", True)
    return create_engine(sa_url, **kw)


def _sqlite_settings(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None  # rule 1: we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("em_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


def write_connect(engine: Engine) -> Connection:
    """A connection whose transactions take the write lock at BEGIN (SQLite) — use for writers."""
    return engine.connect().execution_options(em_write=True)


def migrate(engine_or_url: Engine | str, revision: str = "head") -> str:
    """Upgrade the store to `revision` with Alembic; returns the revision now current."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with write_connect(engine) as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        conn.commit()
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    if isinstance(engine_or_url, str):
        engine.dispose()
    return current or ""


def open_store(url: str, **kw) -> Engine:
    """An engine for `url`, migrated to the newest schema (rule 3)."""
    engine = make_engine(url, **kw)
    migrate(engine)
    return engine


def default_url() -> str | None:
    """EDGEMETER_DB when set (commands take --db URL first)."""
    return os.environ.get("EDGEMETER_DB") or None
