"""License pools and leases on the cloud side: the store around the core's rules.

The core decides (firmware_py.billing L1-L4: tiers, minimum purchase, activation window, usage
period, earliest-end-first draws; firmware_py.lease.Pool P1-P9: grant size, final-unit flag,
offline reservation, reports, returns, reclaim); this module loads the state an operation
needs, calls the core, and stores what it decided, in the caller's transaction:

 S1. A pool is loaded with only the leases an operation touches (pool.Pool P9 allows it) under
     the pool row's lock (SELECT .. FOR UPDATE on PostgreSQL; SQLite serialises writers), so two
     raters never grant the same free units.
 S2. Every entry the core returns is stored, immutable, in pool_entries (its ints, in order);
     the pools and leases rows are projections written from the Pool after the operation and
     checked by `edgemeter admin rebuild`, which replays the entries through pool.Pool.
 S3. A purchase is billing.purchase(); a workspace's later purchases are add-ons feeding the
     same pool. No refunds: nothing removes a purchase.
 S4. An activation is billing.activate() on the purchase's order (count licences, within the
     window); its grant's units enter the pool (Pool.add), tagged with the activation.
 S5. Expiry: when an activation's usage period ends, the units it still holds are withdrawn
     (Pool.withdraw). What it holds is decided by billing.pool_draw: the units the live
     activations no longer hold (their units less `free`) are drawn earliest end first at the
     instant before the end; the rest of the ending activation is forfeited. expire_due() runs
     before every activation and grant, so a later activation never masks an ended one.
 S6. Leases: request -> Pool.open, renew -> Pool.renew, return -> Pool.close, booked batches ->
     Pool.report with the lease's booked total (a lower bound of use, P5), silence for twice
     the validity -> Pool.reclaim_due (into `unrec`, never straight to free).
 S7. A lease's booked total never passes billing.LIMIT (2**60 uCNY, billing P9), so no flood of
     a device's batches can overflow it: a batch that would take it past is not reported and
     not added (`lease-limit`); it stays booked, uncharged, with a definite verdict
     (cloud.ingest G4).

Errors: PoolError(ValueError) for caller mistakes (unknown workspace or lease, not a License
workspace, a lease of another device). Refusals that are business outcomes (a closed activation
window, an empty pool) are returned values.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, select, update
from sqlalchemy.engine import Connection

from edgemeter.cloud import accounts, ledger
from edgemeter.cloud import schema as S
from firmware_py import billing, pricebook
from firmware_py import lease as L
from firmware_py import pool as PL


class PoolError(ValueError):
    """A caller mistake in a pool, licence or lease operation."""


POLICIES = {"stop": L.STOP, "continue": L.CONTINUE, "degrade": L.DEGRADE}


def workspace(conn: Connection, ws_id: int) -> Any:
    row = conn.execute(select(S.workspaces).where(S.workspaces.c.id == ws_id)).mappings().first()
    if row is None:
        raise PoolError(f"no workspace {ws_id}")
    return row


def _license_ws(conn: Connection, ws_id: int) -> Any:
    ws = workspace(conn, ws_id)
    if ws["billing"] != "license":
        raise PoolError(f"workspace {ws_id} is billed postpaid, not from a License pool")
    return ws


# pool P5's overshoot: the dearest round of the shipped price book
OVERSHOOT = PL.max_round(pricebook.default())
LEASE_LIMIT = "lease-limit"      # S7: the problem report_booked names


def terms(ws: Any) -> dict[str, int]:
    """The workspace's lease terms in pool.TERMS form (overshoot: OVERSHOOT)."""
    return {"grant": ws["grant_units"], "max": ws["max_units"], "validity": ws["validity_s"],
            "policy": ws["offline_policy"], "allowance": ws["offline_units"], "low": ws["low_units"],
            "renew_pct": ws["renew_pct"], "overshoot": OVERSHOOT}


# ------------------------------------------------------------------------------ load / store
# pool.Pool's lease row, field by field (lease id -> [dev, state, total, allow, used, validity,
# seen, extra]) and the leases columns that hold them
LEASE_FIELDS = ("device_id", "state", "total", "allow", "used", "validity", "seen", "extra")
ENTRY_COLS = ("workspace_id", "at", "op", "lease_id", "entry", "activation_id", "batch_id")


def _lease_row(r: Any) -> list[int]:
    return [r[f] for f in LEASE_FIELDS]


class StoredPool(PL.Pool):
    """The core's Pool as the store holds it: its workspace and the leases read from the
    table (store() inserts the others and updates these)."""

    def __init__(self, state: dict[str, Any], terms: dict[str, Any], ws_id: int, loaded: set[int]) -> None:
        super().__init__(state, terms)
        self.ws_id = ws_id
        self.loaded = loaded


def load_leases(conn: Connection, pool: StoredPool, lease_ids: Iterable[int]) -> None:
    """Read the named leases of the pool's workspace that it does not hold yet into it."""
    missing = sorted(set(lease_ids) - set(pool.leases))
    if missing:
        q = select(S.leases).where(S.leases.c.workspace_id == pool.ws_id, S.leases.c.id.in_(missing))
        for r in conn.execute(q).mappings():
            pool.leases[r["id"]] = _lease_row(r)
            pool.loaded.add(r["id"])


def load(conn: Connection, ws_id: int, lease_ids: Iterable[int] = (), ws: Mapping | None = None) -> StoredPool:
    """The workspace's Pool with the given leases loaded, its row locked (rule S1)."""
    ws = ws or workspace(conn, ws_id)
    ledger.ensure_pool(conn, ws_id)
    row = conn.execute(select(S.pools).where(S.pools.c.workspace_id == ws_id).with_for_update()).mappings().one()
    state: dict[str, Any] = {b: row[b] for b in S.POOL_BUCKETS}
    state["next_lease"] = row["next_lease"]
    pool = StoredPool(state, terms(ws), ws_id, set())
    load_leases(conn, pool, lease_ids)
    return pool


def store(conn: Connection, pool: StoredPool, entries: list[list[int]], at: int,
          activation_id: int | None = None, batch_ids: Sequence[int | None] | None = None) -> None:
    """Insert the entries (rule S2) and write the pool's buckets and leases back."""
    ws_id = pool.ws_id
    if entries:
        rows = [(ws_id, at, e[0], _entry_lease(e), ",".join(map(str, e)), activation_id,
                 batch_ids[i] if batch_ids else None) for i, e in enumerate(entries)]
        ledger.insert_tuples(conn, S.pool_entries, ENTRY_COLS, rows)
    vals: dict[str, Any] = {b: getattr(pool, b) for b in S.POOL_BUCKETS}
    vals["next_lease"] = pool.next_lease
    vals["entries"] = S.pools.c.entries + len(entries)
    conn.execute(update(S.pools).where(S.pools.c.workspace_id == ws_id).values(**vals))
    loaded = pool.loaded
    new: list[dict[str, Any]] = []
    old: list[dict[str, Any]] = []
    for lid, r in pool.leases.items():
        row = {"b_ws": ws_id, "b_id": lid, **dict(zip(LEASE_FIELDS, r))}
        (old if lid in loaded else new).append(row)
    if new:
        conn.execute(insert(S.leases), [{"workspace_id": x.pop("b_ws"), "id": x.pop("b_id"),
                                          "opened_at": at, **x} for x in new])
    if old:
        stmt = update(S.leases).where(and_(S.leases.c.workspace_id == bindparam("b_ws"),
                                           S.leases.c.id == bindparam("b_id"))).values(
            **{f: bindparam(f) for f in LEASE_FIELDS[1:]})
        conn.execute(stmt, [{k: v for k, v in x.items() if k != "device_id"} for x in old])
    pool.loaded = set(pool.leases)


def _entry_lease(e: list[int]) -> int | None:
    return e[1] if e[0] in (PL.OP_OPEN, PL.OP_GRANT, PL.OP_REPORT, PL.OP_CLOSE, PL.OP_RECLAIM) else None


def parse_entry(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def levels(conn: Connection, ws_id: int) -> dict[str, int]:
    """The projected pool buckets of a workspace (zeros before anything happened)."""
    row = conn.execute(select(S.pools).where(S.pools.c.workspace_id == ws_id)).mappings().first()
    return {b: (row[b] if row else 0) for b in S.POOL_BUCKETS}


# ------------------------------------------------------------------------------ licences
def buy_license(conn: Connection, book: dict, ws_id: int, tier: str | int, devices: int, now: int,
                paid_by: str = billing.PAY_UPFRONT) -> int:
    """Rule S3: record a purchase and its order (accounts A5: paid up front or from the account's
    balance); returns its id (BillingError from the core on a bad order, PurchaseRefused when
    the balance cannot pay it)."""
    ws = _license_ws(conn, ws_id)
    order = billing.purchase(book, tier, devices, now)
    accounts.check_payment(conn, ws["account_id"], order["price_ucny"], paid_by)
    addon = conn.execute(select(func.count()).select_from(S.license_purchases)
                         .where(S.license_purchases.c.workspace_id == ws_id)).scalar_one() > 0
    pid = ledger.new_id(conn.execute(insert(S.license_purchases).values(
        workspace_id=ws_id, tier=order["tier"], devices=order["devices"], price_ucny=order["price_ucny"],
        purchased_at=order["bought"], activate_by=order["activate_by"], addon=addon)))
    accounts.record_order(conn, ws["account_id"], "license", pid, order["price_ucny"], paid_by, now)
    return pid


def _order(conn: Connection, purchase_id: int) -> tuple[Any, dict[str, Any]]:
    p = conn.execute(select(S.license_purchases).where(S.license_purchases.c.id == purchase_id)
                     .with_for_update()).mappings().first()
    if p is None:
        raise PoolError(f"no licence purchase {purchase_id}")
    done = conn.execute(select(func.coalesce(func.sum(S.license_activations.c.count), 0))
                        .where(S.license_activations.c.purchase_id == purchase_id)).scalar_one()
    return p, {"tier": p["tier"], "devices": p["devices"], "bought": p["purchased_at"],
               "activate_by": p["activate_by"], "activated": done, "price_ucny": p["price_ucny"]}


def activate(conn: Connection, book: dict, purchase_id: int, count: int, now: int,
             device_id: int | None = None) -> tuple[int | None, str | None]:
    """Rule S4: (activation id, None), or (None, reason) when the core refuses (window-closed...)."""
    p, order = _order(conn, purchase_id)
    if device_id is not None and conn.execute(select(S.devices.c.workspace_id).where(
            S.devices.c.id == device_id)).scalar() != p["workspace_id"]:
        raise PoolError(f"no device {device_id} in workspace {p['workspace_id']} of purchase {purchase_id}")
    expire_due(conn, book, p["workspace_id"], now)
    _, grant, reason = billing.activate(book, order, count, now)
    if reason is not None:
        return None, reason
    aid = ledger.new_id(conn.execute(insert(S.license_activations).values(
        purchase_id=purchase_id, workspace_id=p["workspace_id"], device_id=device_id, count=count,
        activated_at=grant["start"], period_end=grant["end"], units=grant["units"])))
    pool = load(conn, p["workspace_id"])
    store(conn, pool, [pool.add(grant["units"])], now, activation_id=aid)
    return aid, None


def expire_due(conn: Connection, book: dict, ws_id: int, now: int) -> list[tuple[int, int]]:
    """Rule S5: withdraw what ended activations still hold; [(activation id, units withdrawn)]."""
    a = S.license_activations
    withdrawn = select(S.pool_entries.c.activation_id).where(
        S.pool_entries.c.workspace_id == ws_id, S.pool_entries.c.op == PL.OP_WITHDRAW,
        S.pool_entries.c.activation_id.is_not(None))
    rows = conn.execute(select(a).where(a.c.workspace_id == ws_id, a.c.id.not_in(withdrawn))
                        .order_by(a.c.period_end, a.c.id)).mappings().all()
    due = [r for r in rows if r["period_end"] <= now]
    if not due:
        return []
    pool = load(conn, ws_id)
    live = list(rows)
    out = []
    for r in due:
        grants = [{"start": g["activated_at"], "end": g["period_end"], "units": g["units"], "used": 0,
                   "id": g["id"]} for g in live]
        drawn = max(0, sum(g["units"] for g in grants) - pool.free)
        at = r["period_end"] - 1
        after, _, _, _ = billing.pool_draw(grants, drawn, at)
        mine = [g for g in after if g["id"] == r["id"]]
        rest = mine[0]["units"] - mine[0]["used"] if mine else 0
        e = pool.withdraw(rest)
        store(conn, pool, [e], r["period_end"], activation_id=r["id"])
        out.append((r["id"], e[1]))
        live = [g for g in live if g["id"] != r["id"]]
    return out


# ------------------------------------------------------------------------------ leases
def _own(pool: StoredPool, lid: int, dev: int) -> None:
    r = pool.leases.get(lid)
    if r is None:
        raise PoolError(f"no lease {lid} in workspace {pool.ws_id}")
    if r[0] != dev:
        raise PoolError(f"lease {lid} belongs to device {r[0]}, not {dev}")


def lease_open(conn: Connection, book: dict, ws_id: int, dev: int, want: int, now: int) -> dict:
    """A new lease for dev (P2, P4): the core's grant dict {lease, total, validity, final, ...}."""
    _license_ws(conn, ws_id)
    expire_due(conn, book, ws_id, now)
    pool = load(conn, ws_id)
    entries, grant = pool.open(dev, want, now)
    store(conn, pool, entries, now)
    return grant


def lease_renew(conn: Connection, book: dict, ws_id: int, dev: int, lid: int, used: int, want: int,
                now: int) -> dict:
    """Report use and grant more on the device's lease (P3-P5, P7): the grant dict."""
    expire_due(conn, book, ws_id, now)
    pool = load(conn, ws_id, [lid])
    _own(pool, lid, dev)
    if pool.leases[lid][1] == PL.CLOSED:
        raise PoolError(f"lease {lid} is closed")
    entries, grant = pool.renew(lid, used, want, now)
    store(conn, pool, entries, now)
    return grant


def lease_close(conn: Connection, ws_id: int, dev: int, lid: int, used: int, now: int) -> dict:
    """The device returns its lease with its final use (P8): the closing grant's fields."""
    pool = load(conn, ws_id, [lid])
    _own(pool, lid, dev)
    store(conn, pool, [pool.close(lid, used, now)], now)
    r = pool.leases[lid]
    return {"lease": lid, "total": r[2], "validity": r[5], "final": 0, "policy": pool.terms["policy"],
            "allowance": r[3], "renew_at": 0, "units": 0}


def report_booked(conn: Connection, ws_id: int, items: list[tuple[int, int, int, int]],
                  now: int) -> dict[int, str]:
    """Booked batches as reports (pool P5): items = [(lease id, device, rated units, batch id)] in
    booking order.

    Adds the units to each lease's booked total and reports that total to the core as a lower
    bound of the device's use (one entry per batch). Returns {batch id: problem} for batches on
    a lease that is unknown or another device's, `beyond-grant` for one whose use the pool
    counted only up to the lease's bound (pool P5), and `lease-limit` for one that would take
    the lease's booked total past billing.LIMIT (rule S7: not reported, not added); the batch
    stays booked, the caller records a mismatch.
    """
    lids = {it[0] for it in items}
    pool = load(conn, ws_id, lids)
    problems: dict[int, str] = {}
    entries, batch_ids = [], []
    totals: dict[int, int] = {}
    if lids:
        q = select(S.leases.c.id, S.leases.c.booked).where(S.leases.c.workspace_id == ws_id,
                                                           S.leases.c.id.in_(sorted(lids)))
        totals = {k: v for k, v in conn.execute(q)}
    for lid, dev, units, batch_id in items:
        r = pool.leases.get(lid)
        if r is None or r[0] != dev:
            problems[batch_id] = "unknown-lease" if r is None else "foreign-lease"
            continue
        if totals[lid] + units > billing.LIMIT:
            problems[batch_id] = LEASE_LIMIT      # S7: not reported, not added
            continue
        totals[lid] += units
        entries.append(pool.report(lid, totals[lid], now))
        batch_ids.append(batch_id)
        if entries[-1][2] < totals[lid]:
            problems[batch_id] = "beyond-grant"
    store(conn, pool, entries, now, batch_ids=batch_ids)
    upd = [{"b_ws": ws_id, "b_id": lid, "b_booked": v} for lid, v in totals.items() if lid in pool.leases]
    if upd:
        conn.execute(update(S.leases).where(and_(S.leases.c.workspace_id == bindparam("b_ws"),
                                                 S.leases.c.id == bindparam("b_id")))
                     .values(booked=bindparam("b_booked")), upd)
    return problems


def reclaim_due(conn: Connection, ws_id: int, now: int) -> list[int]:
    """Reclaim live leases silent for twice their validity (P6): the lease ids reclaimed."""
    l_ = S.leases
    ids = conn.execute(select(l_.c.id).where(l_.c.workspace_id == ws_id, l_.c.state == PL.LIVE,
                                             now - l_.c.seen >= 2 * l_.c.validity)).scalars().all()
    if not ids:
        return []
    pool = load(conn, ws_id, ids)
    entries = pool.reclaim_due(now)
    store(conn, pool, entries, now)
    return [e[1] for e in entries]


def license_workspaces(conn: Connection) -> list[int]:
    return list(conn.execute(select(S.workspaces.c.id).where(S.workspaces.c.billing == "license")
                             .order_by(S.workspaces.c.id)).scalars())


def housekeeping(conn: Connection, book: dict, now: int) -> dict[str, list]:
    """Expire ended activations and reclaim silent leases in every License workspace."""
    out: dict[str, list] = {"expired": [], "reclaimed": []}
    for ws in license_workspaces(conn):
        out["expired"] += [(ws, a, u) for a, u in expire_due(conn, book, ws, now)]
        out["reclaimed"] += [(ws, lid) for lid in reclaim_due(conn, ws, now)]
    return out


def activations(conn: Connection, ws_id: int) -> list[dict[str, Any]]:
    a = S.license_activations
    return [dict(r) for r in conn.execute(select(a).where(a.c.workspace_id == ws_id).order_by(a.c.id)).mappings()]

