"""Rebuild benchmark: seconds to recompute every balance from the ledger, per million rounds.

    python -m edgemeter.tools.bench_rebuild [--json] [--quick] [--rounds N] [--pg]

`run()` returns rows {name, value, unit, how} (aggregated by `edgemeter bench`). A ledger of
10-round batches is written straight into a fresh store, half from License devices (one pool
report entry per batch on the device's lease) and half from postpaid devices (one
pay-as-you-go charge per batch), with usage lines. `edgemeter admin rebuild` (cloud.rebuild)
first writes the projections, then the timed `--check` run replays every pool entry through
firmware_py.pool.Pool, sums every account entry and recomputes every device's acked seq, and
must find no difference. With --pg (or when EDGEMETER_PG_URL answers and --pg is given) the
same runs on a fresh PostgreSQL database.
"""
from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgemeter.tools import benchrows

ROUNDS_PER_BATCH = 10
DEVICES = 200


def _fill(url: str, rounds: int) -> int:
    """A ledger of `rounds` rounds; returns the number of batches."""
    from sqlalchemy import insert

    from edgemeter.cloud import accounts, db, devices, ledger, pools
    from edgemeter.cloud import schema as S
    from firmware_py import pool as PL
    from firmware_py import pricebook
    from edgemeter.tools.fleetpub import STANDARD_CHAT_UCNY

    book = pricebook.default()
    engine = db.open_store(url, create=True)
    now = int(time.time())
    batches = rounds // ROUNDS_PER_BATCH
    per_batch = ROUNDS_PER_BATCH * STANDARD_CHAT_UCNY
    with db.write_connect(engine) as conn, conn.begin():
        acc = accounts.create_account(conn, "bench", now)
        accounts.top_up(conn, acc, 10**15, now)
        pp = accounts.create_workspace(conn, acc, "pp", "postpaid", now)
        lic = accounts.create_workspace(conn, acc, "lic", "license", now, grant=10**13, max=10**13)
        p = pools.buy_license(conn, book, lic, "standard", 10**6, now - 10)
        pools.activate(conn, book, p, 10**6, now - 10)
        devs = [(devices.register(conn, pp if i % 2 else lic, now)["id"], i % 2 == 0) for i in range(DEVICES)]
        lease = {d: pools.lease_open(conn, book, lic, d, 10**9, now)["lease"] for d, is_lic in devs if is_lic}
    seq = {d: 0 for d, _ in devs}
    booked = {d: 0 for d in lease}
    chunk = 20_000
    done = 0
    while done < batches:
        n = min(chunk, batches - done)
        with db.write_connect(engine) as conn, conn.begin():
            rows, meta = [], []
            for i in range(n):
                d, is_lic = devs[(done + i) % DEVICES]
                seq[d] += 1
                rows.append({"device_id": d, "seq": seq[d], "boot": 1, "book_version": 1,
                             "lease_id": lease.get(d, 0), "t0": now, "rounds": ROUNDS_PER_BATCH,
                             "device_ucny": per_batch, "rated_ucny": per_batch, "mismatch": False,
                             "payload": b"", "workspace_id": lic if is_lic else pp, "account_id": acc,
                             "received_ms": now * 1000, "booked_ms": now * 1000})
                meta.append((d, is_lic))
            ids = ledger.insert_batches(conn, rows)
            lines, pentries, charges = [], [], []
            for r, (d, is_lic) in zip(rows, meta):
                bid = ids[(d, r["seq"])]
                for item, ucny in ((2, 750), (4, 1700), (5, 800), (6, 2200)):
                    lines.append({"batch_id": bid, "item": item, "multiplier": 1, "calls": ROUNDS_PER_BATCH,
                                  "ucny": ucny * ROUNDS_PER_BATCH})
                if is_lic:
                    booked[d] += per_batch
                    pentries.append({"workspace_id": lic, "at": now, "op": PL.OP_REPORT, "lease_id": lease[d],
                                     "entry": f"{PL.OP_REPORT},{lease[d]},{booked[d]},{now}", "batch_id": bid})
                else:
                    charges.append({"account_id": acc, "batch_id": bid, "at": now, "kind": "payg", "ref": 0,
                                    "list_ucny": per_batch, "bp": 10000})
            conn.execute(insert(S.usage_lines), lines)
            if pentries:
                conn.execute(insert(S.pool_entries), pentries)
            if charges:
                conn.execute(insert(S.account_entries), charges)
        done += n
    engine.dispose()
    return batches


def _measure(url: str, rounds: int) -> dict[str, Any]:
    from edgemeter.cloud import db, rebuild

    batches = _fill(url, rounds)
    engine = db.open_store(url)
    with db.write_connect(engine) as conn, conn.begin():
        first = rebuild.run(conn, check=False)      # writes the projections of the bulk-loaded entries
    t0 = time.perf_counter()
    with db.write_connect(engine) as conn, conn.begin():
        r = rebuild.run(conn, check=True)
    wall = time.perf_counter() - t0
    engine.dispose()
    if r["differences"]:
        raise RuntimeError(f"rebuild found differences after writing: {r['differences'][:5]}")
    return {"batches": batches, "rounds": r["rounds"], "wall": wall, "compute": r["seconds"], "first": first}


def run(quick: bool = False, rounds: int | None = None, pg: bool = False) -> list[dict[str, Any]]:
    rounds = rounds or (100_000 if quick else 1_000_000)
    rows: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="edgemeter-bench-rebuild-"))
    try:
        m = _measure(f"sqlite:///{work / 'ledger.db'}", rounds)
        per_m = m["wall"] * 1_000_000 / m["rounds"]
        rows.append({"name": "rebuild every projection (SQLite): seconds per million rounds", "value": round(per_m, 2),
                     "unit": "s", "how": f"{m['rounds']} rounds in {m['batches']} 10-round batches, half License "
                                         f"(pool entries replayed through pool.Pool) and half postpaid; "
                                         f"admin rebuild --check took {m['wall']:.2f} s, no difference"})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if pg:
        from edgemeter.tools import pgcheck
        why = pgcheck.reachable()
        if why:
            rows.append({"name": "rebuild every projection (PostgreSQL): seconds per million rounds", "value": "skipped",
                         "unit": "", "how": f"PostgreSQL not reachable: {why}"})
        else:
            import psycopg
            admin_url = pgcheck.pg_url()
            name = f"em_bench_{secrets.token_hex(4)}"
            with psycopg.connect(admin_url, autocommit=True) as c:
                c.execute(f'CREATE DATABASE "{name}"')
            try:
                m = _measure(admin_url.rsplit("/", 1)[0] + "/" + name, rounds)
                rows.append({"name": "rebuild every projection (PostgreSQL): seconds per million rounds",
                             "value": round(m["wall"] * 1_000_000 / m["rounds"], 2), "unit": "s",
                             "how": f"the same ledger on PostgreSQL ({m['rounds']} rounds), --check {m['wall']:.2f} s"})
            finally:
                with psycopg.connect(admin_url, autocommit=True) as c:
                    c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = benchrows.parser("edgemeter.tools.bench_rebuild", __doc__)
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--pg", action="store_true", help="also on PostgreSQL (EDGEMETER_PG_URL)")
    args = ap.parse_args(argv)
    return benchrows.emit(run(args.quick, args.rounds, args.pg or bool(os.environ.get("EDGEMETER_BENCH_PG"))), args.json)


if __name__ == "__main__":
    sys.exit(main())
