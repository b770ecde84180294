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
 3. Only `migrate()` creates or upgrades a store (Alembic, cloud/migrations): `edgemeter admin
    migrate`, or a caller passing `open_store(url, create=True)` explicitly (the simulator, the
    benchmarks, tests). Every other command opens with `open_store(url)`, which refuses a
    missing SQLite file, an unreachable server, an empty database or one at another schema
    revision, and writes nothing: a mistyped path never quietly becomes a new ledger, and a
    store is never used half-built.
 4. `migrate()` creates a SQLite file but not its directory: a path into a folder that does
    not exist is a mistake to report, not a tree to create.
 5. A SQLite store fails closed: each connection remembers the device and inode of the file it
    opened, and every COMMIT first checks that the path still names that file; when it was
    unlinked (its directory deleted) or replaced, the commit raises StoreGone and nothing is
    committed (and no new connection opens another file at that path), so the rater
    acknowledges nothing booked into a file no one will read. The database file is never
    memory-mapped (PRAGMA mmap_size=0); the WAL index (-shm) is, as SQLite requires for several
    processes, and a fault on it kills the process with SIGBUS before any commit of the group
    (the rater's watchdog reports it and exits 3: cloud.supervise).
 6. SQLite ledger files are private: the database file is created 0600 (SQLite gives its -wal
    and -shm the database file's mode), and files an older version created readable by others
    are narrowed to 0600 when opened by their owner. Its directory is the operator's (rule 4:
    `install -d -m 700`); `admin migrate` and the rater warn, naming the fix, when it is open
    to other users (open_directory).

Errors (one line each, naming the URL with its password hidden):
    ValueError
     +-- StoreURLError     the URL is malformed or names a back end we do not serve (usage)
    RuntimeError
     +-- StoreError        the store cannot be used: unreachable, missing, not migrated,
     |                     refusing the connection or the write (a failed operation)
     +-- StoreGone         the SQLite file in use is no longer the one at its path (rule 5)
"""
from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000


class StoreURLError(ValueError):
    """The database URL is malformed or names a back end or driver this store does not support."""


class StoreError(RuntimeError):
    """The store at a URL cannot be used (rule 3); the message is one line naming the URL."""


def redact(url: str) -> str:
    """`url` with its password replaced by ***."""
    scheme, sep, rest = url.partition("://")
    cred, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in cred:
        return url
    return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}"


def reason(exc: BaseException) -> str:
    """The first line of a driver error (SQLAlchemy wraps it; psycopg adds hint lines)."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0].strip() if text else type(orig).__name__


def _missing_hint(url: str) -> str:
    return f"run `edgemeter admin migrate --db {redact(url)}` to create it"


class StoreGone(RuntimeError):
    """Rule 5: the SQLite file this connection writes was unlinked or replaced."""


def _tighten(path: str) -> None:
    """Rule 6 for ledger files created before it: owner-only, when we own them."""
    for p in (path, path + "-wal", path + "-shm"):
        try:
            st = os.stat(p)
            if st.st_mode & 0o077 and st.st_uid == os.getuid():
                os.chmod(p, 0o600)
        except OSError:
            pass


def open_directory(url: str) -> str | None:
    """Rule 6: for a SQLite ledger whose directory other users may enter, read or write, the
    one-line warning to give (None otherwise, and for other back ends). The directory is the
    operator's to set (rule 4), so it is reported, never changed: with write access another
    user can replace the ledger, with read access list its files."""
    path = sqlite_path(url)
    if path is None:
        return None
    try:
        mode = os.stat(path.parent).st_mode & 0o777
    except OSError:
        return None
    if not mode & 0o077:
        return None
    return (f"the ledger's directory {path.parent} is open to other users (mode {mode:04o}); "
            f"make it owner-only: chmod 700 {path.parent}")


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


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


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for other back ends and in-memory stores)."""
    sa_url = _parse(url)
    if sa_url.get_backend_name() != "sqlite" or not sa_url.database or sa_url.database == ":memory:":
        return None
    return Path(sa_url.database)


def _parse(url: str) -> URL:
    try:
        return make_url(normalize_url(url))
    except (ArgumentError, ValueError) as e:
        if isinstance(e, StoreURLError):
            raise
        raise StoreURLError(f"malformed database URL {redact(url)!r}: {e}") from None


def make_engine(url: str, **kw) -> Engine:
    """An Engine for `url` with the store's connection settings (see the module rules). Nothing
    is opened or created until the engine connects."""
    sa_url = _parse(url)
    if sa_url.get_backend_name() == "sqlite":
        engine = create_engine(sa_url, **kw)
        _sqlite_settings(engine, os.path.abspath(sa_url.database)
                         if sa_url.database and sa_url.database != ":memory:" else None)
        return engine
    kw.setdefault("pool_pre_ping", True)
    return create_engine(sa_url, **kw)


def _sqlite_settings(engine: Engine, path: str | None) -> None:
    first: dict[str, tuple[int, int] | None] = {}   # the file this engine's first connection opened

    @event.listens_for(engine, "do_connect")
    def _private(dialect, _rec, cargs, cparams):  # type: ignore[no-untyped-def]
        if path and first.get("file") and _identity(path) != first["file"]:
            raise StoreGone(f"the ledger file {path} was unlinked or replaced while in use; "
                            "not opening another")   # rule 5, before SQLite makes a new one
        old = os.umask(0o077)    # rule 6: a file SQLite creates now is 0600 (its -wal/-shm follow it)
        try:
            return dialect.connect(*cargs, **cparams)
        finally:
            os.umask(old)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, record):  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None  # rule 1: we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA mmap_size=0")   # rule 5
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()
        if path:
            record.info["em_file"] = _identity(path)
            first.setdefault("file", record.info["em_file"])
            _tighten(path)

    @event.listens_for(engine, "commit")
    def _on_commit(conn: Connection) -> None:   # rule 5, before the COMMIT is sent
        opened = conn.connection.info.get("em_file")
        if path and opened is not None and _identity(path) != opened:
            raise StoreGone(f"the ledger file {path} was unlinked or replaced while in use; "
                            "nothing more is committed")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("em_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


def write_connect(engine: Engine) -> Connection:
    """A connection whose transactions take the write lock at BEGIN (SQLite) — use for writers."""
    return engine.connect().execution_options(em_write=True)


def _alembic_config():  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    """The newest schema revision this version of edgemeter knows."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head() or ""


def current_revision(conn: Connection) -> str | None:
    """The store's schema revision (None: an empty database, never migrated)."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def migrate(engine_or_url: Engine | str, revision: str = "head") -> str:
    """Create or upgrade the store to `revision` with Alembic (rules 3, 4); returns the revision
    now current. StoreError when the store cannot be reached or written."""
    from alembic import command

    engine = make_engine(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
    url = redact(engine_or_url) if isinstance(engine_or_url, str) else engine.url.render_as_string(hide_password=True)
    path = sqlite_path(url)
    if path is not None and not path.parent.is_dir():
        raise StoreError(f"cannot create the ledger {path}: directory {path.parent} does not exist")
    cfg = _alembic_config()
    try:
        with write_connect(engine) as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            conn.commit()
        with engine.connect() as conn:
            current = current_revision(conn)
    except DBAPIError as e:
        raise StoreError(f"cannot migrate the ledger at {url}: {reason(e)}") from None
    finally:
        if isinstance(engine_or_url, str):
            engine.dispose()
    return current or ""


def open_store(url: str, create: bool = False, **kw) -> Engine:
    """An engine for the store at `url`, at the newest schema (rule 3). create=True migrates it
    first (creating it if need be); otherwise a missing, empty or older store is refused with
    StoreError and nothing is written (SQLite is checked over a read-only connection, before
    the engine's own connections set the journal mode)."""
    if create:
        migrate(url)
        return make_engine(url, **kw)
    path = sqlite_path(url)
    if path is not None:
        _check_revision(_sqlite_revision(path, url), url)
        return make_engine(url, **kw)
    engine = make_engine(url, **kw)
    try:
        with engine.connect() as conn:
            rev = current_revision(conn)
        _check_revision(rev, url)
    except DBAPIError as e:
        engine.dispose()
        raise StoreError(f"cannot open the ledger at {redact(url)}: {reason(e)}") from None
    except BaseException:
        engine.dispose()
        raise
    return engine


def _sqlite_revision(path: Path, url: str) -> str | None:
    """The schema revision of a SQLite file, read without creating or writing it."""
    import sqlite3

    if not path.is_file():
        where = "no such file" if path.parent.is_dir() else f"directory {path.parent} does not exist"
        raise StoreError(f"no ledger at {redact(url)} ({where}); {_missing_hint(url)}")
    try:
        con = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open the ledger at {redact(url)}: {e}") from None
    try:
        if not con.execute("SELECT 1 FROM sqlite_master WHERE name = 'alembic_version'").fetchone():
            return None
        row = con.execute("SELECT version_num FROM alembic_version").fetchone()
        return row[0] if row else None
    except sqlite3.Error as e:
        raise StoreError(f"cannot open the ledger at {redact(url)}: {e}") from None
    finally:
        con.close()


def _check_revision(rev: str | None, url: str) -> None:
    """StoreError unless `rev` is the newest revision (rule 3)."""
    head = head_revision()
    if rev is None:
        raise StoreError(f"no ledger at {redact(url)} (the database is empty); {_missing_hint(url)}")
    if rev != head:
        raise StoreError(f"the ledger at {redact(url)} is at schema revision {rev}, this edgemeter needs {head}; "
                         f"run `edgemeter admin migrate --db {redact(url)}`")


def default_url() -> str | None:
    """EDGEMETER_DB when set (commands take --db URL first)."""
    return os.environ.get("EDGEMETER_DB") or None
