"""Alembic environment for the ledger store.

Run programmatically by `cloud.db.migrate()` (which passes an open connection in
`config.attributes["connection"]`), or by the alembic CLI with `-x db=URL`. There is no
alembic.ini: the script location is set by the caller.
"""
from __future__ import annotations

from alembic import context

from edgemeter.cloud import db
from edgemeter.cloud.schema import metadata

config = context.config
target_metadata = metadata


def _configure(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",   # SQLite ALTERs via table copies
        compare_type=True,
    )


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = context.get_x_argument(as_dictionary=True).get("db") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("alembic: pass -x db=URL")
    engine = db.make_engine(url)
    with db.write_connect(engine) as conn:
        _configure(conn)
        with context.begin_transaction():
            context.run_migrations()
        conn.commit()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; pass a database URL")
run_migrations_online()
