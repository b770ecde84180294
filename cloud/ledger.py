"""Low-level ledger writes shared by the rater, the services and the admin command.

Rules:
 L1. A usage batch is booked by INSERT .. ON CONFLICT (device_id, seq) DO NOTHING .. RETURNING, so
     of any group of rows only the ones never booked before come back, with their ids; everything
     derived from a batch (lines, pool and account entries) is written only for those rows, in the
     same transaction. A redelivered or replayed batch therefore changes nothing.
 L2. Projections are moved by relative UPDATEs (`x = x + :d`) in the same transaction as the
     entry that justifies them; `cloud.rebuild` recomputes them from the entries.
 L3. A dead letter is counted by (reason, topic, sha256(payload)): the first one is stored, each
     repeat bumps `count` and `last_seen_ms`. Nothing else changes.
 L4. `devices.acked_seq` only grows and is a lower bound: every seq <= it is booked.
 L5. On PostgreSQL the hot multi-row writes bind one array per column and unnest them
     (INSERT .. SELECT FROM unnest(...), UPDATE .. FROM unnest(...)): one short statement per
     group whatever its size, parsed and prepared once by the driver. A multi-row VALUES list
     is a new statement text for every row count (psycopg re-parses its thousands of
     placeholders each time) and executemany is one server round in the pipeline per row;
     both cost the rater several times the CPU (tools/bench_ingest_pg.py).
"""
from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import bindparam, case, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from edgemeter.cloud import schema as S

DEAD_PAYLOAD_MAX = 65536


def _insert(conn: Connection, table):  # type: ignore[no-untyped-def]
    return (sqlite.insert if conn.dialect.name == "sqlite" else postgresql.insert)(table)


def new_id(result: Any) -> int:
    """The primary key of the row an INSERT .. VALUES just created."""
    pk = result.inserted_primary_key
    if pk is None:
        raise RuntimeError("the INSERT returned no primary key")
    return int(pk[0])


def marks(conn: Connection) -> str:
    """The driver's parameter marker for SQL written out by hand: "?" (sqlite3), "%s" (psycopg)."""
    return "?" if conn.dialect.name == "sqlite" else "%s"


_SQLITE_VARS = 999   # the smallest SQLITE_MAX_VARIABLE_NUMBER of any SQLite build (before 3.32)


def max_params(conn: Connection) -> int:
    """How many parameters one statement may bind: this SQLite library's limit (999 before
    3.32, 32766 since; asked of the connection), PostgreSQL's 65535."""
    if conn.dialect.name != "sqlite":
        return 65535
    getlimit = getattr(conn.connection.dbapi_connection, "getlimit", None)   # Python 3.11+
    return int(getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)) if getlimit else _SQLITE_VARS


def rows_per_statement(conn: Connection, width: int) -> int:
    """The statement-size rule of every multi-row statement written here (INSERT .. VALUES,
    IN lists, OR'ed conditions): at most _CHUNK rows of `width` parameters each, and never
    more parameters than the library binds (max_params)."""
    return max(1, min(_CHUNK, max_params(conn) // width))


_CHUNK = 1000
BATCH_COLS = ("device_id", "seq", "boot", "book_version", "lease_id", "t0", "rounds", "device_ucny", "rated_ucny",
              "mismatch", "payload", "workspace_id", "account_id", "received_ms", "booked_ms")


def insert_batches(conn: Connection, rows: Sequence[Mapping]) -> dict[tuple[int, int], int]:
    """Book `rows` (usage_batches dicts) once each (rule L1): {(device_id, seq): id} of the new ones."""
    return insert_batch_tuples(conn, [tuple(bool(r[c]) if c == "mismatch" else r[c] for c in BATCH_COLS)
                                      for r in rows])


def insert_batch_tuples(conn: Connection, rows: Sequence[tuple]) -> dict[tuple[int, int], int]:
    """insert_batches() of rows given as tuples in BATCH_COLS order (mismatch a bool).

    Straight through the driver (the rater's hot path), rule L5: PostgreSQL, one
    INSERT .. SELECT FROM unnest(arrays) .. ON CONFLICT (device_id, seq) DO NOTHING .. RETURNING
    for the whole group; SQLite, one multi-row INSERT .. VALUES .. ON CONFLICT .. RETURNING per
    1000 rows (fewer where the library binds fewer parameters: max_params)."""
    out: dict[tuple[int, int], int] = {}
    tail = " ON CONFLICT (device_id, seq) DO NOTHING RETURNING id, device_id, seq"
    if not rows:
        return out
    if conn.dialect.name != "sqlite":
        sql, params = unnest_insert(conn, S.usage_batches, BATCH_COLS, rows)
        for i, d, q in _fetch(conn, sql + tail, params):
            out[(d, q)] = i
        return out
    one = "(" + ", ".join([marks(conn)] * len(BATCH_COLS)) + ")"
    head = f"INSERT INTO {S.usage_batches.name} ({', '.join(BATCH_COLS)}) VALUES "
    per = rows_per_statement(conn, len(BATCH_COLS))
    for k in range(0, len(rows), per):
        chunk = rows[k:k + per]
        params: list[Any] = []
        for r in chunk:
            params += r
        for i, d, q in _fetch(conn, head + ", ".join([one] * len(chunk)) + tail, tuple(params)):
            out[(d, q)] = i
    return out


def _fetch(conn: Connection, sql: str, params: Sequence[Any]) -> list[tuple]:
    """Run sql on the DBAPI cursor of conn's transaction and return its rows (no Row objects)."""
    cur = conn.connection.cursor()
    try:
        cur.execute(sql, params)
        return cur.fetchall()
    finally:
        cur.close()


_PG_ARRAY_TYPES: dict[tuple[str, str], str] = {}


def _pg_type(conn: Connection, table, col: str) -> str:  # type: ignore[no-untyped-def]
    """The PostgreSQL type of table.col as DDL writes it (BIGINT, TEXT, BYTEA, ...), cached."""
    t = _PG_ARRAY_TYPES.get((table.name, col))
    if t is None:
        t = _PG_ARRAY_TYPES[(table.name, col)] = table.c[col].type.compile(dialect=conn.dialect)
    return t


def unnest_insert(conn: Connection, table, cols: Sequence[str], rows: Sequence[tuple]) -> tuple[str, tuple]:  # type: ignore[no-untyped-def]
    """Rule L5: `INSERT INTO table (cols) SELECT * FROM unnest(%s::T1[], ...)` and its parameters
    (one array per column, in row order) for PostgreSQL. The statement's text depends only on
    the table and columns, so the driver parses and prepares it once, whatever the row count."""
    types = [_pg_type(conn, table, c) for c in cols]
    arrays = "unnest(" + ", ".join(f"%b::{t}[]" for t in types) + ")"
    sql = f"INSERT INTO {table.name} ({', '.join(cols)}) SELECT * FROM {arrays}"
    return sql, tuple(list(col) for col in zip(*rows))


def update_tuples(conn: Connection, table, cols: Sequence[str], key: str, rows: Sequence[tuple]) -> None:  # type: ignore[no-untyped-def]
    """UPDATE table SET cols = ... WHERE key = ... for rows given as tuples (cols..., key), straight
    through the driver: PostgreSQL, one UPDATE .. FROM unnest(arrays) (rule L5); SQLite,
    executemany. The keys must be distinct."""
    if not rows:
        return
    if conn.dialect.name == "sqlite":
        sets = ", ".join(f"{c} = ?" for c in cols)
        conn.exec_driver_sql(f"UPDATE {table.name} SET {sets} WHERE {key} = ?", list(rows))
        return
    names = [*cols, key]
    types = [_pg_type(conn, table, c) for c in names]
    arrays = ", ".join(f"%b::{t}[]" for t in types)
    alias = ", ".join(f"v_{c}" for c in names)
    sets = ", ".join(f"{c} = v.v_{c}" for c in cols)
    conn.exec_driver_sql(f"UPDATE {table.name} SET {sets} FROM unnest({arrays}) AS v({alias}) "
                         f"WHERE {table.name}.{key} = v.v_{key}", tuple(list(col) for col in zip(*rows)))


def insert_rows(conn: Connection, table, rows: Sequence[Mapping]) -> None:  # type: ignore[no-untyped-def]
    if rows:
        conn.execute(insert(table), list(rows))


def insert_tuples(conn: Connection, table, cols: Sequence[str], rows: Sequence[tuple]) -> None:  # type: ignore[no-untyped-def]
    """INSERT many rows given as tuples in `cols` order, straight through the driver (no
    per-row parameter processing: for the rater's hot path), in order. SQLite: multi-row
    INSERT .. VALUES of up to 999 parameters each (half the CPU of executemany for the
    rater's usage lines); PostgreSQL: one INSERT .. SELECT FROM unnest (rule L5)."""
    if not rows:
        return
    if conn.dialect.name != "sqlite":
        conn.exec_driver_sql(*unnest_insert(conn, table, cols, rows))
        return
    head = f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES "
    one = "(" + ", ".join(["?"] * len(cols)) + ")"
    per = rows_per_statement(conn, len(cols))
    for k in range(0, len(rows), per):
        chunk = rows[k:k + per]
        params: list[Any] = []
        for r in chunk:
            params += r
        conn.exec_driver_sql(head + ", ".join([one] * len(chunk)), tuple(params))


def ensure_pool(conn: Connection, ws: int) -> None:
    """Create the workspace's pools row (all zeros) if it does not exist yet."""
    conn.execute(_insert(conn, S.pools).values(workspace_id=ws).on_conflict_do_nothing(
        index_elements=["workspace_id"]))


def record_dead_letter(conn: Connection, reason: str, topic: str, payload: bytes, detail: str,
                       now_ms: int) -> None:
    """Count one rejected message (rule L3)."""
    t = S.dead_letters
    stmt = _insert(conn, t).values(
        reason=reason, topic=topic[:256], digest=hashlib.sha256(payload).digest(),
        payload=bytes(payload[:DEAD_PAYLOAD_MAX]), detail=detail[:2000], count=1,
        first_seen_ms=now_ms, last_seen_ms=now_ms)
    stmt = stmt.on_conflict_do_update(
        index_elements=["reason", "topic", "digest"],
        set_={"count": t.c.count + 1, "last_seen_ms": stmt.excluded.last_seen_ms})
    conn.execute(stmt)


def raise_acked(conn: Connection, acked: Mapping[int, int], seen_ms: int) -> None:
    """devices.acked_seq = max(acked_seq, new) and last_seen_ms = now for each device (rule L4)."""
    if not acked:
        return
    d = S.devices
    stmt = update(d).where(d.c.id == bindparam("b_id")).values(
        acked_seq=case((d.c.acked_seq < bindparam("b_acked"), bindparam("b_acked")), else_=d.c.acked_seq),
        last_seen_ms=bindparam("b_seen"))
    conn.execute(stmt, [{"b_id": k, "b_acked": v, "b_seen": seen_ms} for k, v in acked.items()])


def ensure_books(conn: Connection, now: int) -> dict[int, dict]:
    """Every price book in the store by version; the core's default book is stored first when
    the store has none (so batches are re-rated with exactly what devices ship with)."""
    from firmware_py import pricebook

    books = books_since(conn, 0)
    if not books:
        book = dict(pricebook.default(), effective_at=0)
        conn.execute(_insert(conn, S.price_books).values(
            version=book["version"], hash=book["hash"], cbor=pricebook.to_cbor(book), created_at=now,
            effective_at=0).on_conflict_do_nothing(index_elements=["version"]))
        return {book["version"]: book}
    return books


def books_since(conn: Connection, version: int) -> dict[int, dict]:
    """The stored price books above `version`, each with its "effective_at" (cloud.books B4)."""
    from firmware_py import pricebook

    pb = S.price_books
    rows = conn.execute(select(pb.c.version, pb.c.cbor, pb.c.effective_at).where(pb.c.version > version)).all()
    out = {}
    for v, c, eff in rows:
        book = pricebook.from_cbor(bytes(c))
        book["effective_at"] = int(eff)
        out[v] = book
    return out


def latest_book(books: Mapping[int, dict]) -> dict:
    """The newest stored book (what `edgemeter admin book export` starts from)."""
    return books[max(books)]


def book_in_force(books: Mapping[int, dict], now: int) -> dict:
    """The book in force at now: the newest whose effective time has come (cloud.books B4)."""
    live = [v for v, b in books.items() if b.get("effective_at", 0) <= now]
    return books[max(live)] if live else books[min(books)]


def device_rows(conn: Connection, ids: Iterable[int]) -> tuple[dict[int, dict[str, Any]], list[tuple]]:
    """The rater's device lookup, straight through the driver (it runs for every group): the
    rows {id: {id, workspace_id, session, kid_sent, status}} of the devices ids (locked FOR
    UPDATE where the store has row locks, in id order: two raters locking overlapping
    sets then queue instead of deadlocking, where a sequential scan would lock them in their
    physical order, which updates keep changing) and their stored keys [(device, kid, wrapped
    key)]."""
    d, k = S.devices, S.device_keys
    suffix = "" if conn.dialect.name == "sqlite" else " FOR UPDATE"
    rows: dict[int, dict[str, Any]] = {}
    found: list[tuple] = []
    per = rows_per_statement(conn, 1)
    ordered = sorted(ids)
    for at in range(0, len(ordered), per):
        part = tuple(ordered[at:at + per])
        inl = ", ".join([marks(conn)] * len(part))
        for i, ws, sess, kid_sent, status in conn.exec_driver_sql(
                f"SELECT {d.c.id.name}, {d.c.workspace_id.name}, {d.c.session.name}, {d.c.kid_sent.name}, "
                f"{d.c.status.name} FROM {d.name} WHERE {d.c.id.name} IN ({inl}) ORDER BY {d.c.id.name}{suffix}",
                part):
            rows[i] = {"id": i, "workspace_id": ws, "session": sess, "kid_sent": kid_sent, "status": status}
        found += conn.exec_driver_sql(f"SELECT {k.c.device_id.name}, {k.c.kid.name}, {k.c.key.name} FROM {k.name} "
                                      f"WHERE {k.c.device_id.name} IN ({inl})", part).all()
    return rows, found


def booked_between(conn: Connection, gaps: Mapping[int, tuple[int, int]]) -> list[tuple[int, int]]:
    """The booked (device, seq) with lo < seq <= hi of each device's (lo, hi), straight through
    the driver: one statement per rows_per_statement() devices."""
    b = S.usage_batches
    out: list[tuple[int, int]] = []
    items = sorted(gaps.items())
    ph = marks(conn)
    per = rows_per_statement(conn, 3)
    dev, seq = b.c.device_id.name, b.c.seq.name
    for at in range(0, len(items), per):
        part = items[at:at + per]
        cond = " OR ".join([f"({dev} = {ph} AND {seq} > {ph} AND {seq} <= {ph})"] * len(part))
        params = tuple(x for d, (lo, hi) in part for x in (d, lo, hi))
        out += conn.exec_driver_sql(f"SELECT {dev}, {seq} FROM {b.name} WHERE {cond}", params).all()
    return out
