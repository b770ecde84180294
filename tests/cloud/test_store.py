"""The ledger store: URLs, SQLite settings, Alembic migrations equal to the schema, booking once."""
from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import insert, select, text
from sqlalchemy.exc import IntegrityError

from edgemeter.cloud import db
from edgemeter.cloud import schema as S


def test_url_normalisation():
    assert db.normalize_url("postgresql://u@h:5432/d") == "postgresql+psycopg://u@h:5432/d"
    assert db.normalize_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"
    assert db.normalize_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    for bad in ("mysql://x/y", "ledger.db", ""):
        with pytest.raises(db.StoreURLError):
            db.normalize_url(bad)


def test_sqlite_runs_in_wal_with_normal_sync_and_busy_timeout(sqlite_url):
    engine = db.open_store(sqlite_url, create=True)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1   # NORMAL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.SQLITE_BUSY_TIMEOUT_MS
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


def _head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    cfg = Config()
    cfg.set_main_option("script_location", str(db.MIGRATIONS))
    return ScriptDirectory.from_config(cfg).get_current_head()


def test_migrations_build_exactly_the_schema_and_are_idempotent(store_url):
    head = _head()
    assert db.migrate(store_url) == head
    assert db.migrate(store_url) == head
    engine = db.make_engine(store_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), S.metadata)
    engine.dispose()
    assert diff == []


def test_only_migrate_creates_or_upgrades_a_store(store_url, tmp_path):
    """cloud.db rule 3 on both back ends: open_store refuses an empty store and one at an older
    revision, names the command to run, and changes nothing; migrate() then makes it usable."""
    missing = f"sqlite:///{tmp_path / 'no' / 'ledger.db'}"
    with pytest.raises(db.StoreError, match="no ledger at .*directory .* does not exist.*admin migrate"):
        db.open_store(missing)
    with pytest.raises(db.StoreError, match="directory .* does not exist"):
        db.migrate(missing)
    assert not (tmp_path / "no").exists()
    if store_url.startswith("sqlite"):
        db.sqlite_path(store_url).write_bytes(b"")          # an empty file: no ledger in it
    with pytest.raises(db.StoreError, match="the database is empty.*admin migrate"):
        db.open_store(store_url)
    if store_url.startswith("sqlite"):
        assert db.sqlite_path(store_url).stat().st_size == 0    # read, not written
    assert db.migrate(store_url, "0002") == "0002"
    with pytest.raises(db.StoreError, match=f"at schema revision 0002, this edgemeter needs {_head()}"):
        db.open_store(store_url)
    engine = db.make_engine(store_url)
    with engine.connect() as conn:
        assert db.current_revision(conn) == "0002"
    engine.dispose()
    assert db.migrate(store_url) == _head()
    db.open_store(store_url).dispose()


def _minimal_device(conn, now=1_800_000_000):
    acc = conn.execute(insert(S.accounts).values(name="acme", created_at=now)).inserted_primary_key[0]
    ws = conn.execute(insert(S.workspaces).values(account_id=acc, name="w", billing="postpaid",
                                                  created_at=now)).inserted_primary_key[0]
    conn.execute(insert(S.devices).values(id=7, workspace_id=ws, username=f"{ws}/7", password_hash="x", kid=1,
                                          created_at=now))
    return acc, ws


def _batch(acc, ws, seq):
    return dict(device_id=7, seq=seq, boot=1, book_version=1, lease_id=0, t0=1, rounds=1, device_ucny=5,
                rated_ucny=5, mismatch=False, payload=b"p", workspace_id=ws, account_id=acc,
                received_ms=1, booked_ms=2)


def test_a_device_sequence_is_booked_once_forever(store_url):
    engine = db.open_store(store_url, create=True)
    with db.write_connect(engine) as conn, conn.begin():
        acc, ws = _minimal_device(conn)
        conn.execute(insert(S.usage_batches).values(_batch(acc, ws, 1)))
    with pytest.raises(IntegrityError):
        with db.write_connect(engine) as conn, conn.begin():
            conn.execute(insert(S.usage_batches).values(_batch(acc, ws, 1)))
    # the portable idempotent form the rater uses books nothing the second time
    from edgemeter.cloud import ledger
    with db.write_connect(engine) as conn, conn.begin():
        assert set(ledger.insert_batches(conn, [_batch(acc, ws, 1), _batch(acc, ws, 2)])) == {(7, 2)}
    with engine.connect() as conn:
        assert conn.execute(select(S.usage_batches.c.seq).order_by("seq")).scalars().all() == [1, 2]
    engine.dispose()


def test_booking_fits_an_sqlite_built_with_the_old_999_parameter_limit(sqlite_url):
    """SQLite before 3.32 (e.g. Ubuntu 20.04's) binds at most 999 parameters per statement; a
    group of 200 batches (15 columns each) must still book, in statements within that limit."""
    import sqlite3

    from edgemeter.cloud import ledger
    engine = db.open_store(sqlite_url, create=True)
    with db.write_connect(engine) as conn, conn.begin():
        acc, ws = _minimal_device(conn)
        conn.connection.dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        assert ledger.max_params(conn) == 999
        booked = ledger.insert_batches(conn, [_batch(acc, ws, q) for q in range(1, 201)])
        assert set(booked) == {(7, q) for q in range(1, 201)}
        assert set(ledger.insert_batches(conn, [_batch(acc, ws, q) for q in range(150, 260)])) == \
            {(7, q) for q in range(201, 260)}      # the repeats book nothing
    engine.dispose()


def test_sqlite_writers_serialise_instead_of_deadlocking(sqlite_url):
    engine = db.open_store(sqlite_url, create=True)
    a, b = db.write_connect(engine), db.write_connect(engine)
    with a.begin():
        a.execute(text("INSERT INTO meta(key, value) VALUES ('x', '1')"))
    with b.begin():
        assert b.execute(text("SELECT value FROM meta WHERE key='x'")).scalar() == "1"
    a.close(), b.close()
    engine.dispose()


def test_migration_0004_bills_earlier_purchases_as_paid_up_front(store_url):
    """Plans and licences bought before the orders table become orders paid up front."""
    assert db.migrate(store_url, "0003") == "0003"
    engine = db.make_engine(store_url)
    with db.write_connect(engine) as conn, conn.begin():
        acc, _ = _minimal_device(conn)
        lic = conn.execute(insert(S.workspaces).values(account_id=acc, name="l", billing="license",
                                                       created_at=1)).inserted_primary_key[0]
        conn.execute(text("INSERT INTO account_balances (account_id, paid_ucny, payg_ucny, balance_ucny, "
                          "trial_left_ucny, suspended) VALUES (:a, 5000000, 0, 5000000, 0, false)"), {"a": acc})
        conn.execute(text("INSERT INTO payments (account_id, amount_ucny, at, ref) VALUES (:a, 5000000, 5, '')"),
                     {"a": acc})
        conn.execute(text("INSERT INTO savings_plans (account_id, commit_ucny, bp, cap_ucny, bought_at, ends_at) "
                          "VALUES (:a, 100000000, 9000, 111111111, 10, 20)"), {"a": acc})
        conn.execute(text("INSERT INTO license_purchases (workspace_id, tier, devices, price_ucny, purchased_at, "
                          "activate_by, addon) VALUES (:w, 3, 100, 1000000000, 11, 30, false)"), {"w": lic})
    engine.dispose()
    assert db.migrate(store_url) == _head()
    engine = db.make_engine(store_url)
    with engine.connect() as conn:
        orders = conn.execute(select(S.orders.c.kind, S.orders.c.price_ucny, S.orders.c.paid_by, S.orders.c.at)
                              .order_by(S.orders.c.id)).all()
        bal = conn.execute(select(S.account_balances)).mappings().one()
        from edgemeter.cloud import rebuild
        diffs = rebuild.run(conn, check=True)["differences"]
    engine.dispose()
    assert [tuple(o) for o in orders] == [("savings-plan", 100000000, "upfront", 10),
                                          ("license", 1000000000, "upfront", 11)]
    assert (bal["paid_ucny"], bal["purchases_ucny"], bal["balance_ucny"]) == (1105000000, 1100000000, 5000000)
    assert [d for d in diffs if d[0] == "account_balances"] == []
