"""Recompute every projection from the immutable entries and compare (or overwrite).

    edgemeter admin rebuild --db URL [--check] [--json]

What is recomputed (see cloud/schema.py for which tables are entries and which projections):
 R1. pools and leases: each workspace's pool_entries replayed in id order through a fresh
     firmware_py.pool.Pool with the workspace's terms (the core's P9: replay rebuilds the
     ledger); the result's buckets, next lease id and lease rows must equal the stored ones.
 R2. leases.booked: the rated µCNY of the batches reported on a lease (cloud.pools S6: those
     with a pool entry; a batch that named a lease not yet opened, or another device's, was
     not, and stays a mismatch even if that lease id is opened later).
 R3. account_balances: paid = payments + orders paid up front; purchases = every order's
     price; payg = pay-as-you-go charges; balance = payments - payg - orders paid from it;
     trial left = trial amount - trial charges - trial forfeit; suspended = balance < 0
     (billing P5). plan_balances: used = plan charges, forfeited = plan forfeits, closed =
     forfeited.
 R4. devices.acked_seq: the highest k such that seqs 1..k are all booked for the device.
Differences are reported as (table, key, column, stored, rebuilt). With --check nothing is
written and the exit status is 1 when any difference exists; without it the stored
projections are overwritten with the rebuilt ones in one transaction.

Invariants of the rebuilt ledger, reported as one line each (`violations`; exit status 1 with
--check), whatever the stored projections say:
 I1. Every pool bucket is >= 0 and conserves (firmware_py/pool.py P1).
 I2. No lease counts use beyond its bound, total + offline allowance + one round
     (pool P5: a device's report is bounded by what the cloud granted).
 I3. A pool's overdraft is at most one round per lease (the allowed overdraft, P5).
 I4. No account's balance lies outside [-LIMIT, LIMIT] and no lease's booked total above LIMIT
     (firmware_py.billing P9, cloud.pools S7: what a flood of device claims could overflow).
"""
from __future__ import annotations

import time
from typing import Any

from sqlalchemy import and_, bindparam, func, over, select, update
from sqlalchemy.engine import Connection

from edgemeter.cloud import pools
from edgemeter.cloud import schema as S
from firmware_py import billing
from firmware_py import pool as PL

Diff = tuple[str, str, str, Any, Any]


def rebuild_pools(conn: Connection) -> tuple[dict, dict]:
    """R1 + R2: ({ws: pool columns}, {(ws, lease): lease columns})."""
    terms = {r["id"]: pools.terms(r) for r in conn.execute(select(S.workspaces)).mappings()}
    out_pools: dict[int, dict[str, int]] = {}
    out_leases: dict[tuple[int, int], dict[str, int]] = {}
    cur_ws = None
    pool = PL.Pool()
    n = 0

    def flush() -> None:
        if cur_ws is None:
            return
        out_pools[cur_ws] = {**{b: getattr(pool, b) for b in S.POOL_BUCKETS}, "next_lease": pool.next_lease,
                             "entries": n}
        for lid, r in pool.leases.items():
            out_leases[(cur_ws, lid)] = dict(zip(pools.LEASE_FIELDS, r))

    q = select(S.pool_entries.c.workspace_id, S.pool_entries.c.entry).order_by(
        S.pool_entries.c.workspace_id, S.pool_entries.c.id).execution_options(yield_per=20000)
    for ws, text in conn.execute(q):
        if ws != cur_ws:
            flush()
            cur_ws, pool, n = ws, PL.Pool(None, terms.get(ws)), 0
        pool.apply([int(v) for v in text.split(",")])
        n += 1
    flush()
    b = S.usage_batches
    e = S.pool_entries
    booked = conn.execute(
        select(b.c.workspace_id, b.c.lease_id, func.sum(b.c.rated_ucny))
        .join(e, and_(e.c.batch_id == b.c.id, e.c.workspace_id == b.c.workspace_id))
        .where(b.c.lease_id != 0).group_by(b.c.workspace_id, b.c.lease_id))
    for ws, lid, total in booked:
        if (ws, lid) in out_leases:
            out_leases[(ws, lid)]["booked"] = int(total)
    for row in out_leases.values():
        row.setdefault("booked", 0)
    return out_pools, out_leases


def invariants(rp: dict, rl: dict, ra: dict | None = None) -> list[str]:
    """I1-I4 over the rebuilt pools, leases and account balances: one line per violation."""
    out = [f"account {a}: balance {r['balance_ucny']} beyond the limit of +-{billing.LIMIT} (billing P9)"
           for a, r in sorted((ra or {}).items()) if billing.over_limit({"balance": r["balance_ucny"]})]
    out += [f"lease {ws}/{lid}: booked {r['booked']} beyond the limit of {billing.LIMIT} (pools S7)"
            for (ws, lid), r in sorted(rl.items()) if r.get("booked", 0) > billing.LIMIT]
    over = pools.OVERSHOOT
    per_ws: dict[int, int] = {}
    for (ws, lid), r in sorted(rl.items()):
        per_ws[ws] = per_ws.get(ws, 0) + 1
        bound = r["total"] + r["allow"] + over
        if r["used"] > bound:
            out.append(f"lease {ws}/{lid}: used {r['used']} beyond its bound {bound} (total {r['total']} + "
                       f"offline {r['allow']} + one round {over})")
    for ws, p in sorted(rp.items()):
        neg = [b for b in S.POOL_BUCKETS if p[b] < 0]
        if neg:
            out.append(f"pool {ws}: {', '.join(neg)} below zero")
        if p["added"] + p["overdraft"] != p["free"] + p["out"] + p["unrec"] + p["consumed"]:
            out.append(f"pool {ws}: added + overdraft != free + out + unrec + consumed")
        if p["overdraft"] > over * per_ws.get(ws, 0):
            out.append(f"pool {ws}: overdraft {p['overdraft']} beyond one round per lease "
                       f"({per_ws.get(ws, 0)} x {over})")
    return out


def rebuild_accounts(conn: Connection) -> tuple[dict, dict]:
    """R3: ({account: balance columns}, {plan: plan columns})."""
    accs = {a: {"paid_ucny": 0, "payg_ucny": 0, "trial_left_ucny": 0, "purchases_ucny": 0, "balance_ucny": 0}
            for a in conn.execute(select(S.accounts.c.id)).scalars()}
    for a, total in conn.execute(select(S.payments.c.account_id, func.sum(S.payments.c.amount_ucny))
                                 .group_by(S.payments.c.account_id)):
        accs[a]["paid_ucny"] = accs[a]["balance_ucny"] = int(total)
    o = S.orders
    for a, paid_by, total in conn.execute(select(o.c.account_id, o.c.paid_by, func.sum(o.c.price_ucny))
                                          .group_by(o.c.account_id, o.c.paid_by)):
        accs[a]["purchases_ucny"] += int(total)
        if paid_by == "upfront":
            accs[a]["paid_ucny"] += int(total)
        else:
            accs[a]["balance_ucny"] -= int(total)
    for a, amount in conn.execute(select(S.trials.c.account_id, S.trials.c.amount_ucny)):
        accs[a]["trial_left_ucny"] = amount
    e = S.account_entries
    plans = {p: {"used_ucny": 0, "forfeited_ucny": 0, "closed": False}
             for p in conn.execute(select(S.savings_plans.c.id)).scalars()}
    q = select(e.c.account_id, e.c.kind, e.c.ref, func.sum(e.c.list_ucny)).group_by(e.c.account_id, e.c.kind, e.c.ref)
    for a, kind, ref, total in conn.execute(q):
        total = int(total)
        if kind == "payg":
            accs[a]["payg_ucny"] += total
        elif kind in ("trial", "forfeit-trial"):
            accs[a]["trial_left_ucny"] -= total
        elif kind == "plan":
            plans[ref]["used_ucny"] += total
        elif kind == "forfeit-plan":
            plans[ref]["forfeited_ucny"] += total
            plans[ref]["closed"] = True
    for v in accs.values():
        v["balance_ucny"] -= v["payg_ucny"]
        v["suspended"] = v["balance_ucny"] < 0
    return accs, plans


def rebuild_acked(conn: Connection) -> dict[int, int]:
    """R4: {device: acked_seq}."""
    b = S.usage_batches
    rn = over(func.row_number(), partition_by=b.c.device_id, order_by=b.c.seq).label("rn")
    sub = select(b.c.device_id, b.c.seq, rn).subquery()
    out = {d: 0 for d in conn.execute(select(S.devices.c.id)).scalars()}
    q = select(sub.c.device_id, func.max(sub.c.seq)).where(sub.c.seq == sub.c.rn).group_by(sub.c.device_id)
    for d, k in conn.execute(q):
        out[d] = int(k)
    return out


def _compare(table: str, stored: dict, rebuilt: dict, cols: list[str], diffs: list[Diff],
             default: dict | None = None) -> None:
    for key in sorted(set(stored) | set(rebuilt), key=str):
        s, r = stored.get(key), rebuilt.get(key, default)
        for c in cols:
            sv = None if s is None else s[c]
            rv = None if r is None else r[c]
            if sv != rv:
                diffs.append((table, str(key), c, sv, rv))


def run(conn: Connection, check: bool = True) -> dict[str, Any]:
    """Rebuild every projection; report differences; write the rebuilt values unless check."""
    t0 = time.perf_counter()
    rp, rl = rebuild_pools(conn)
    ra, rpl = rebuild_accounts(conn)
    rk = rebuild_acked(conn)
    elapsed = time.perf_counter() - t0
    sp = {r["workspace_id"]: r for r in conn.execute(select(S.pools)).mappings()}
    sl = {(r["workspace_id"], r["id"]): r for r in conn.execute(select(S.leases)).mappings()}
    sa = {r["account_id"]: r for r in conn.execute(select(S.account_balances)).mappings()}
    spl = {r["plan_id"]: r for r in conn.execute(select(S.plan_balances)).mappings()}
    sk = {d: {"acked_seq": a} for d, a in conn.execute(select(S.devices.c.id, S.devices.c.acked_seq))}
    diffs: list[Diff] = []
    _compare("pools", sp, rp, list(S.POOL_BUCKETS) + ["next_lease", "entries"], diffs,
             default={**{b: 0 for b in S.POOL_BUCKETS}, "next_lease": 1, "entries": 0})
    _compare("leases", sl, rl, list(pools.LEASE_FIELDS) + ["booked"], diffs)
    _compare("account_balances", sa, ra, ["paid_ucny", "payg_ucny", "balance_ucny", "trial_left_ucny", "suspended",
                                          "purchases_ucny"],
             diffs)
    _compare("plan_balances", spl, rpl, ["used_ucny", "forfeited_ucny", "closed"], diffs)
    _compare("devices", sk, {d: {"acked_seq": a} for d, a in rk.items()}, ["acked_seq"], diffs)
    rounds = conn.execute(select(func.coalesce(func.sum(S.usage_batches.c.rounds), 0))).scalar_one()
    if not check and diffs:
        _write(conn, rp, rl, ra, rpl, rk)
    return {"differences": diffs, "violations": invariants(rp, rl, ra), "seconds": elapsed, "rounds": int(rounds), "pools": len(rp), "leases": len(rl),
            "accounts": len(ra), "devices": len(rk), "written": bool(not check and diffs)}


def _write(conn: Connection, rp: dict, rl: dict, ra: dict, rpl: dict, rk: dict) -> None:
    from edgemeter.cloud import ledger
    for ws, vals in rp.items():
        ledger.ensure_pool(conn, ws)
        conn.execute(update(S.pools).where(S.pools.c.workspace_id == ws).values(**vals))
    existing = {(r[0], r[1]) for r in conn.execute(select(S.leases.c.workspace_id, S.leases.c.id))}
    for (ws, lid), vals in rl.items():
        if (ws, lid) in existing:
            conn.execute(update(S.leases).where(S.leases.c.workspace_id == ws, S.leases.c.id == lid).values(**vals))
        else:
            conn.execute(S.leases.insert().values(workspace_id=ws, id=lid, opened_at=vals["seen"], **vals))
    for a, vals in ra.items():
        conn.execute(update(S.account_balances).where(S.account_balances.c.account_id == a).values(**vals))
    for p, vals in rpl.items():
        conn.execute(update(S.plan_balances).where(S.plan_balances.c.plan_id == p).values(**vals))
    if rk:
        conn.execute(update(S.devices).where(S.devices.c.id == bindparam("b_id")).values(acked_seq=bindparam("b_a")),
                     [{"b_id": d, "b_a": a} for d, a in rk.items()])
