"""Read-only queries behind the HTTP API and the dashboard: lists, usage roll-ups, pool history.

Everything here reads; nothing writes. Numbers come from the ledger's own projections and
entries (pools, leases, account_balances, usage_batches, usage_lines, ...) or from the cloud
services (cloud.pools, cloud.accounts, cloud.invoices) where those already compute them.

Rules:
 Q1. Scope: `account` None means every account (an operator); an int limits every query to
     that account's workspaces, devices and usage (a tenant). Objects outside the scope are
     reported as not found, exactly like objects that do not exist.
 Q2. Pages are limit/offset over a stable order (the primary key); `total` counts the whole
     filtered set.
 Q3. Usage is attributed to the device time of its batch (usage_batches.t0), bucketed on the
     billing calendar (UTC+8, firmware_py.civil): minute, hour, day or month. Invoices, by contrast,
     follow the cloud's booking time (cloud.invoices rule I1).
 Q4. Pool history replays the workspace's immutable pool entries through the core's
     firmware_py.pool.Pool (the same replay as `edgemeter admin rebuild`), incrementally: a
     PoolHistory keeps each pool's replay and applies only entries it has not seen, and
     replays from the start when the entry count disagrees (an entry committed late).
 Q5. Forecast of a pool's exhaustion: ordinary least squares of the consumed units against
     time over the recent window; exhaustion = now + remaining / slope, where remaining =
     free + out + unrec (= added + overdraft - consumed, pool rule P1). No forecast with fewer
     than two distinct times or a slope <= 0.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, literal_column, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Select

from edgemeter.cloud import ledger, pools
from edgemeter.cloud import schema as S
from firmware_py import civil, pricebook
from firmware_py import pool as PL

TZ = civil.BILLING_TZ
BUCKETS = {"minute": 60, "hour": 3600, "day": 86400}
LEASE_STATES = {PL.LIVE: "live", PL.RECLAIMED: "reclaimed", PL.CLOSED: "closed"}
STATE_IDS = {v: k for k, v in LEASE_STATES.items()}


class NotFound(LookupError):
    """The object does not exist or is outside the caller's scope (rule Q1)."""


# ------------------------------------------------------------------------------ helpers
def books(conn: Connection) -> dict[int, dict]:
    """The stored price books by version (read-only; the default book when none is stored)."""
    bs = ledger.books_since(conn, 0)
    if not bs:
        b = pricebook.default()
        return {b["version"]: b}
    return bs


def latest_book(conn: Connection) -> dict:
    bs = books(conn)
    return bs[max(bs)]


def item_name(book: Mapping, item: int) -> str:
    row = book["items"].get(item)
    return row[1] if row else f"item-{item}"


def page(conn: Connection, q: Select, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Rule Q2: (rows of q[offset:offset+limit], total rows of q)."""
    total = conn.execute(select(func.count()).select_from(q.order_by(None).subquery())).scalar_one()
    rows = [dict(r) for r in conn.execute(q.limit(limit).offset(offset)).mappings()]
    return rows, int(total)


def _ws_scope(q: Select, account: int | None) -> Select:
    return q if account is None else q.where(S.workspaces.c.account_id == account)


def workspace_account(conn: Connection, ws_id: int, account: int | None) -> int:
    acc = conn.execute(select(S.workspaces.c.account_id).where(S.workspaces.c.id == ws_id)).scalar()
    if acc is None or (account is not None and acc != account):
        raise NotFound(f"no workspace {ws_id}")
    return int(acc)


def check_account(conn: Connection, account_id: int, account: int | None) -> None:
    found = conn.execute(select(S.accounts.c.id).where(S.accounts.c.id == account_id)).scalar()
    if found is None or (account is not None and account_id != account):
        raise NotFound(f"no account {account_id}")


def device_workspace(conn: Connection, dev: int, account: int | None) -> int:
    row = conn.execute(select(S.devices.c.workspace_id, S.workspaces.c.account_id)
                       .join(S.workspaces, S.workspaces.c.id == S.devices.c.workspace_id)
                       .where(S.devices.c.id == dev)).first()
    if row is None or (account is not None and row[1] != account):
        raise NotFound(f"no device {dev}")
    return int(row[0])


# ------------------------------------------------------------------------------ accounts
def accounts_page(conn: Connection, account: int | None, limit: int, offset: int) -> tuple[list[dict], int]:
    a, b = S.accounts, S.account_balances
    nws = select(func.count()).where(S.workspaces.c.account_id == a.c.id).scalar_subquery()
    q = (select(a.c.id, a.c.name, a.c.created_at, b.c.balance_ucny, b.c.paid_ucny, b.c.payg_ucny,
                b.c.purchases_ucny, b.c.trial_left_ucny, b.c.suspended, nws.label("workspaces"))
         .outerjoin(b, b.c.account_id == a.c.id).order_by(a.c.id))
    if account is not None:
        q = q.where(a.c.id == account)
    rows, total = page(conn, q, limit, offset)
    for r in rows:
        r["suspended"] = bool(r["suspended"])
        for k in ("balance_ucny", "paid_ucny", "payg_ucny", "purchases_ucny", "trial_left_ucny"):
            r[k] = r[k] or 0
    return rows, total


# ------------------------------------------------------------------------------ workspaces
def _ws_select() -> Select:
    w, p = S.workspaces, S.pools
    ndev = select(func.count()).where(S.devices.c.workspace_id == w.c.id).scalar_subquery()
    return (select(w, ndev.label("devices"), *[p.c[b].label("pool_" + b) for b in S.POOL_BUCKETS])
            .outerjoin(p, p.c.workspace_id == w.c.id))


def _ws_row(r: Any) -> dict[str, Any]:
    out = {k: r[k] for k in ("id", "account_id", "name", "billing", "created_at", "devices")}
    out["terms"] = {"grant": r["grant_units"], "max": r["max_units"], "validity_s": r["validity_s"],
                    "offline_policy": ("stop", "continue", "degrade")[r["offline_policy"]]
                    if 0 <= r["offline_policy"] <= 2 else str(r["offline_policy"]),
                    "offline_units": r["offline_units"], "low_units": r["low_units"], "renew_pct": r["renew_pct"]}
    if r["billing"] == "license":
        lv = {b: (r["pool_" + b] or 0) for b in S.POOL_BUCKETS}
        out["pool"] = pool_summary(lv)
    else:
        out["pool"] = None
    return out


def pool_summary(lv: Mapping[str, int]) -> dict[str, int]:
    """The pool's buckets plus remaining = free + out + unrec (rule Q5)."""
    out = {b: int(lv[b]) for b in S.POOL_BUCKETS}
    out["remaining"] = out["free"] + out["out"] + out["unrec"]
    return out


def workspaces_page(conn: Connection, account: int | None, limit: int, offset: int,
                    account_id: int | None = None, billing: str | None = None) -> tuple[list[dict], int]:
    q = _ws_scope(_ws_select(), account).order_by(S.workspaces.c.id)
    if account_id is not None:
        q = q.where(S.workspaces.c.account_id == account_id)
    if billing is not None:
        q = q.where(S.workspaces.c.billing == billing)
    rows, total = page(conn, q, limit, offset)
    return [_ws_row(r) for r in rows], total


def workspace_detail(conn: Connection, ws_id: int, account: int | None) -> dict[str, Any]:
    workspace_account(conn, ws_id, account)
    r = conn.execute(_ws_select().where(S.workspaces.c.id == ws_id)).mappings().one()
    out = _ws_row(r)
    if out["pool"] is not None:
        out["pool"] = pool_summary(pools.levels(conn, ws_id))   # the service's reading of the projection
    return out


# ------------------------------------------------------------------------------ devices (fleet)
def _status(text: str) -> dict[str, Any]:
    try:
        v = json.loads(text or "{}")
        return v if isinstance(v, dict) else {}
    except ValueError:
        return {}


def devices_page(conn: Connection, account: int | None, limit: int, offset: int, now_ms: int, online_s: int,
                 workspace_id: int | None = None, status: str | None = None, online: bool | None = None,
                 mismatched: bool | None = None) -> tuple[list[dict], int]:
    d, w = S.devices, S.workspaces
    q = (select(d.c.id, d.c.workspace_id, w.c.account_id, w.c.billing, d.c.username, d.c.status, d.c.kid,
                d.c.created_at, d.c.last_seen_ms, d.c.acked_seq, d.c.session, d.c.last_status, d.c.firmware)
         .join(w, w.c.id == d.c.workspace_id).order_by(d.c.id))
    q = _ws_scope(q, account)
    if workspace_id is not None:
        q = q.where(d.c.workspace_id == workspace_id)
    if status is not None:
        q = q.where(d.c.status == status)
    cutoff = now_ms - online_s * 1000
    if online is True:
        q = q.where(d.c.last_seen_ms >= cutoff, d.c.last_seen_ms > 0)
    elif online is False:
        q = q.where(or_(d.c.last_seen_ms < cutoff, d.c.last_seen_ms == 0))
    m = S.mismatches
    if mismatched is not None:
        has = select(m.c.id).where(m.c.device_id == d.c.id).exists()
        q = q.where(has if mismatched else ~has)
    rows, total = page(conn, q, limit, offset)
    return _fleet_rows(conn, rows, cutoff), total


def wide_sum(expr: Any, name: str) -> tuple[Any, Any]:
    """An exact SUM of a signed 64-bit expression as two columns that cannot overflow: the sums
    of its high 32 bits (arithmetic shift) and of its low 32 bits; wide() joins them. Device
    claims may reach 2^63 - 1 per row, and SQLite's SUM fails with `integer overflow` past
    the int64 range (PostgreSQL's would widen to numeric)."""
    e = expr.self_group()
    return (func.coalesce(func.sum(e.op(">>")(literal_column("32"))), 0).label(name + "_hi"),
            func.coalesce(func.sum(e.op("&")(literal_column("4294967295"))), 0).label(name + "_lo"))


def wide(hi: Any, lo: Any) -> int:
    """The exact integer of a wide_sum pair."""
    return (int(hi or 0) << 32) + int(lo or 0)


def _fleet_rows(conn: Connection, rows: list[dict], cutoff_ms: int) -> list[dict]:
    ids = [r["id"] for r in rows]
    if not ids:
        return []
    b, m, ls = S.usage_batches, S.mismatches, S.leases
    agg = {r[0]: r[1:] for r in conn.execute(
        select(b.c.device_id, func.count(), func.coalesce(func.sum(b.c.rounds), 0),
               func.coalesce(func.sum(b.c.rated_ucny), 0), func.max(b.c.seq))
        .where(b.c.device_id.in_(ids)).group_by(b.c.device_id))}
    mis: dict[int, int] = dict(conn.execute(select(m.c.device_id, func.count()).where(m.c.device_id.in_(ids))
                            .group_by(m.c.device_id)).all())
    leases: dict[int, dict] = {}
    for lr in conn.execute(select(ls).where(ls.c.device_id.in_(ids), ls.c.state != PL.CLOSED)
                           .order_by(ls.c.id)).mappings():
        leases[lr["device_id"]] = lease_row(lr)   # the newest open lease of the device
    out = []
    for r in rows:
        st = _status(r["last_status"])
        sess = _status(r["session"])
        n, rounds, ucny, top = agg.get(r["id"], (0, 0, 0, 0))
        sent = max(int(st.get("seq", 0) or 0), int(sess.get("top", 0) or 0), int(top or 0))
        flags = int(st.get("flags", 0) or 0)
        out.append({
            "id": r["id"], "workspace_id": r["workspace_id"], "account_id": r["account_id"],
            "billing": r["billing"], "username": r["username"], "status": r["status"], "kid": r["kid"],
            "created_at": r["created_at"], "last_seen": r["last_seen_ms"] // 1000 if r["last_seen_ms"] else 0,
            "online": bool(r["last_seen_ms"]) and r["last_seen_ms"] >= cutoff_ms,
            "acked_seq": r["acked_seq"], "reported_seq": sent,
            "unsynced_batches": max(0, sent - r["acked_seq"]),
            "batches": int(n), "rounds": int(rounds), "rated_ucny": int(ucny),
            "mismatches": int(mis.get(r["id"], 0)),
            "lease": leases.get(r["id"]),
            "reported_remaining": int(st.get("remaining", 0) or 0) if st else None,
            "reported_used": int(st.get("used", 0) or 0) if st else None,
            "status_flags": int(flags),
            "firmware": r["firmware"],
        })
    return out


def device_detail(conn: Connection, dev: int, account: int | None, now_ms: int, online_s: int) -> dict[str, Any]:
    device_workspace(conn, dev, account)
    d, w = S.devices, S.workspaces
    rows = [dict(r) for r in conn.execute(
        select(d.c.id, d.c.workspace_id, w.c.account_id, w.c.billing, d.c.username, d.c.status, d.c.kid,
               d.c.created_at, d.c.last_seen_ms, d.c.acked_seq, d.c.session, d.c.last_status, d.c.firmware)
        .join(w, w.c.id == d.c.workspace_id).where(d.c.id == dev)).mappings()]
    return _fleet_rows(conn, rows, now_ms - online_s * 1000)[0]


# ------------------------------------------------------------------------------ leases
def lease_row(r: Any) -> dict[str, Any]:
    remaining = r["total"] - r["used"]
    return {"workspace_id": r["workspace_id"], "id": r["id"], "device_id": r["device_id"],
            "state": LEASE_STATES.get(r["state"], str(r["state"])), "total": r["total"], "allow": r["allow"],
            "used": r["used"], "remaining": max(0, remaining), "extra": r["extra"], "booked": r["booked"],
            "validity_s": r["validity"], "seen": r["seen"], "opened_at": r["opened_at"]}


def leases_page(conn: Connection, account: int | None, limit: int, offset: int, workspace_id: int | None = None,
                device_id: int | None = None, state: str | None = None) -> tuple[list[dict], int]:
    ls, w = S.leases, S.workspaces
    q = select(ls).join(w, w.c.id == ls.c.workspace_id).order_by(ls.c.workspace_id, ls.c.id)
    q = _ws_scope(q, account)
    if workspace_id is not None:
        q = q.where(ls.c.workspace_id == workspace_id)
    if device_id is not None:
        q = q.where(ls.c.device_id == device_id)
    if state is not None:
        q = q.where(ls.c.state == STATE_IDS[state])
    rows, total = page(conn, q, limit, offset)
    return [lease_row(r) for r in rows], total


# ------------------------------------------------------------------------------ licences
def purchases_page(conn: Connection, account: int | None, limit: int, offset: int,
                   workspace_id: int | None = None) -> tuple[list[dict], int]:
    p, w, a = S.license_purchases, S.workspaces, S.license_activations
    done = select(func.coalesce(func.sum(a.c.count), 0)).where(a.c.purchase_id == p.c.id).scalar_subquery()
    q = (select(p, w.c.account_id, done.label("activated")).join(w, w.c.id == p.c.workspace_id).order_by(p.c.id))
    q = _ws_scope(q, account)
    if workspace_id is not None:
        q = q.where(p.c.workspace_id == workspace_id)
    rows, total = page(conn, q, limit, offset)
    book = latest_book(conn)
    out = []
    for r in rows:
        tier = book["tiers"].get(r["tier"])
        out.append({"id": r["id"], "workspace_id": r["workspace_id"], "account_id": r["account_id"],
                    "tier": tier[1] if tier else str(r["tier"]), "devices": r["devices"],
                    "price_ucny": r["price_ucny"], "purchased_at": r["purchased_at"],
                    "activate_by": r["activate_by"], "addon": bool(r["addon"]), "activated": int(r["activated"]),
                    "unactivated": r["devices"] - int(r["activated"])})
    return out, total


def activations_page(conn: Connection, account: int | None, limit: int, offset: int, now: int,
                     workspace_id: int | None = None, expiring_within_days: int | None = None,
                     active: bool | None = None) -> tuple[list[dict], int]:
    a, w = S.license_activations, S.workspaces
    q = select(a, w.c.account_id).join(w, w.c.id == a.c.workspace_id).order_by(a.c.id)
    q = _ws_scope(q, account)
    if workspace_id is not None:
        q = q.where(a.c.workspace_id == workspace_id)
    if expiring_within_days is not None:
        q = q.where(a.c.period_end > now, a.c.period_end <= now + expiring_within_days * 86400)
    if active is True:
        q = q.where(a.c.period_end > now)
    elif active is False:
        q = q.where(a.c.period_end <= now)
    rows, total = page(conn, q, limit, offset)
    return [{"id": r["id"], "purchase_id": r["purchase_id"], "workspace_id": r["workspace_id"],
             "account_id": r["account_id"], "device_id": r["device_id"], "count": r["count"],
             "activated_at": r["activated_at"], "period_end": r["period_end"], "units": r["units"],
             "active": r["period_end"] > now, "days_left": max(0, (r["period_end"] - now) // 86400)}
            for r in rows], total


# ------------------------------------------------------------------------------ usage (rule Q3)
def _usage_filters(q: Select, account: int | None, since: int | None, until: int | None,
                   account_id: int | None, workspace_id: int | None, device_id: int | None) -> Select:
    b = S.usage_batches
    if account is not None:
        q = q.where(b.c.account_id == account)
    if account_id is not None:
        q = q.where(b.c.account_id == account_id)
    if workspace_id is not None:
        q = q.where(b.c.workspace_id == workspace_id)
    if device_id is not None:
        q = q.where(b.c.device_id == device_id)
    if since is not None:
        q = q.where(b.c.t0 >= since)
    if until is not None:
        q = q.where(b.c.t0 < until)
    return q


def usage_by_item(conn: Connection, account: int | None, since: int | None = None, until: int | None = None,
                  account_id: int | None = None, workspace_id: int | None = None,
                  device_id: int | None = None) -> list[dict]:
    """Calls and rated µCNY per billable item and multiplier."""
    b, u = S.usage_batches, S.usage_lines
    q = (select(u.c.item, u.c.multiplier, func.sum(u.c.calls), func.sum(u.c.ucny))
         .join(b, b.c.id == u.c.batch_id).group_by(u.c.item, u.c.multiplier).order_by(u.c.item, u.c.multiplier))
    q = _usage_filters(q, account, since, until, account_id, workspace_id, device_id)
    book = latest_book(conn)
    return [{"item": i, "name": item_name(book, i), "multiplier": m, "calls": int(c), "ucny": int(x)}
            for i, m, c, x in conn.execute(q)]


def usage_by_device(conn: Connection, account: int | None, limit: int, offset: int, since: int | None = None,
                    until: int | None = None, account_id: int | None = None, workspace_id: int | None = None,
                    device_id: int | None = None) -> tuple[list[dict], int]:
    """Batches, rounds, the cloud's rated µCNY and the devices' own deductions per device."""
    b = S.usage_batches
    q = (select(b.c.device_id, b.c.workspace_id, b.c.account_id, func.count().label("batches"),
                func.sum(b.c.rounds).label("rounds"), func.sum(b.c.rated_ucny).label("rated_ucny"),
                *wide_sum(b.c.device_ucny, "device_ucny"), func.min(b.c.t0).label("first_t0"),
                func.max(b.c.t0).label("last_t0"))
         .group_by(b.c.device_id, b.c.workspace_id, b.c.account_id).order_by(b.c.device_id))
    q = _usage_filters(q, account, since, until, account_id, workspace_id, device_id)
    rows, total = page(conn, q, limit, offset)
    for r in rows:
        r["device_ucny"] = wide(r.pop("device_ucny_hi"), r.pop("device_ucny_lo"))
        for k in ("batches", "rounds", "rated_ucny"):
            r[k] = int(r[k] or 0)
    return rows, total


def bucket_start(t: int, bucket: str) -> int:
    """Start of the hour/day/month holding t on the billing calendar (rule Q3)."""
    if bucket == "month":
        y, m = civil.from_unix(t)[:2]
        return civil.to_unix(y, m, 1)
    size = BUCKETS[bucket]
    return (t + TZ) // size * size - TZ


def usage_over_time(conn: Connection, account: int | None, bucket: str = "day", since: int | None = None,
                    until: int | None = None, account_id: int | None = None, workspace_id: int | None = None,
                    device_id: int | None = None) -> list[dict]:
    """Calls and rated µCNY per bucket and billable item (all multipliers together)."""
    b, u = S.usage_batches, S.usage_lines
    size = BUCKETS.get(bucket, BUCKETS["day"])      # months are summed from days
    key = ((b.c.t0 + TZ) // size).label("k")   # floor division on both back ends (SQLAlchemy 2 //)
    q = (select(key, u.c.item, func.sum(u.c.calls), func.sum(u.c.ucny)).join(b, b.c.id == u.c.batch_id)
         .group_by(key, u.c.item).order_by(key, u.c.item))
    q = _usage_filters(q, account, since, until, account_id, workspace_id, device_id)
    book = latest_book(conn)
    acc: dict[tuple[int, int], list[int]] = {}
    for k, item, calls, ucny in conn.execute(q):
        start = int(k) * size - TZ
        if bucket == "month":
            start = bucket_start(start, "month")
        a = acc.setdefault((start, item), [0, 0])
        a[0] += int(calls)
        a[1] += int(ucny)
    return [{"start": s, "item": i, "name": item_name(book, i), "calls": c, "ucny": x}
            for (s, i), (c, x) in sorted(acc.items())]


# ------------------------------------------------------------------------------ dead letters, mismatches
def dead_letters_page(conn: Connection, limit: int, offset: int, reason: str | None = None) -> tuple[list[dict], int]:
    t = S.dead_letters
    q = select(t.c.id, t.c.reason, t.c.topic, t.c.detail, t.c.count, t.c.first_seen_ms, t.c.last_seen_ms,
               t.c.digest, func.length(t.c.payload).label("size")).order_by(t.c.id)
    if reason is not None:
        q = q.where(t.c.reason == reason)
    rows, total = page(conn, q, limit, offset)
    for r in rows:
        r["digest"] = bytes(r["digest"]).hex()
        r["size"] = int(r["size"] or 0)
    return rows, total


def dead_letter_counts(conn: Connection) -> dict[str, int]:
    t = S.dead_letters
    return {r: int(n) for r, n in conn.execute(select(t.c.reason, func.sum(t.c.count)).group_by(t.c.reason)
                                               .order_by(t.c.reason))}


def mismatches_page(conn: Connection, account: int | None, limit: int, offset: int, device_id: int | None = None,
                    workspace_id: int | None = None, since_ms: int | None = None) -> tuple[list[dict], int]:
    m, b = S.mismatches, S.usage_batches
    q = (select(m, b.c.seq, b.c.workspace_id, b.c.account_id, b.c.t0, b.c.book_version, b.c.lease_id)
         .join(b, b.c.id == m.c.batch_id).order_by(m.c.id))
    if account is not None:
        q = q.where(b.c.account_id == account)
    if device_id is not None:
        q = q.where(m.c.device_id == device_id)
    if workspace_id is not None:
        q = q.where(b.c.workspace_id == workspace_id)
    if since_ms is not None:
        q = q.where(m.c.at_ms >= since_ms)
    rows, total = page(conn, q, limit, offset)
    for r in rows:
        r["difference_ucny"] = r["device_ucny"] - r["rated_ucny"]
    return rows, total


# ------------------------------------------------------------------------------ invoices
def invoice_months(conn: Connection, account_id: int, now: int) -> list[str]:
    """Every month (YYYY-MM, billing calendar) from the account's first charge or order to now, newest first."""
    e, o = S.account_entries, S.orders
    firsts = [conn.execute(select(func.min(t.c.at)).where(t.c.account_id == account_id)).scalar() for t in (e, o)]
    first = min((f for f in firsts if f is not None), default=None)
    start = bucket_start(int(first) if first is not None else now, "month")
    end = max(now, start)
    months: list[str] = []
    t = start
    while t <= end and len(months) < 240:
        y, m = civil.from_unix(t)[:2]
        months.append(f"{y:04d}-{m:02d}")
        t = civil.add_months(t, 1)
    return months[::-1]


def stored_invoices(conn: Connection, account_id: int) -> list[dict]:
    i = S.invoices
    return [dict(r) for r in conn.execute(select(i).where(i.c.account_id == account_id).order_by(i.c.month.desc()))
            .mappings()]


# ------------------------------------------------------------------------------ pool history (Q4, Q5)
class PoolHistory:
    """Replays of each workspace's pool entries, kept and extended (rule Q4). Thread-safe."""

    MAX_POINTS = 20_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[int, dict[str, Any]] = {}

    def series(self, conn: Connection, ws_id: int) -> list[tuple[int, int, int, int]]:
        """[(at, added, consumed, remaining)] after the last entry of each second (compacted)."""
        ws = pools.workspace(conn, ws_id)
        pe = S.pool_entries
        with self._lock:
            st = self._pools.get(ws_id)
            if st is None:
                st = self._pools[ws_id] = {"pool": PL.Pool(None, pools.terms(ws)), "last": 0, "n": 0, "pts": [],
                                           "res": 1}
            rows = conn.execute(select(pe.c.id, pe.c.at, pe.c.entry).where(pe.c.workspace_id == ws_id,
                                                                           pe.c.id > st["last"])
                                .order_by(pe.c.id)).all()
            upto = rows[-1][0] if rows else st["last"]
            count = conn.execute(select(func.count()).where(pe.c.workspace_id == ws_id, pe.c.id <= upto)).scalar_one()
            if count != st["n"] + len(rows):   # an entry committed behind one we saw: replay all
                st = self._pools[ws_id] = {"pool": PL.Pool(None, pools.terms(ws)), "last": 0, "n": 0, "pts": [],
                                           "res": 1}
                rows = conn.execute(select(pe.c.id, pe.c.at, pe.c.entry).where(pe.c.workspace_id == ws_id,
                                                                               pe.c.id <= upto)
                                    .order_by(pe.c.id)).all()
            pool, pts = st["pool"], st["pts"]
            for eid, at, text in rows:
                pool.apply(pools.parse_entry(text))
                pt = (int(at), pool.added, pool.consumed, pool.free + pool.out + pool.unrec)
                if pts and pts[-1][0] // st["res"] == pt[0] // st["res"]:
                    pts[-1] = pt
                else:
                    pts.append(pt)
                st["last"] = eid
                st["n"] += 1
            if len(pts) > self.MAX_POINTS:
                st["res"] *= 2
                st["pts"] = pts = _compact(pts, st["res"])
            return list(pts)


def _compact(pts: list[tuple], res: int) -> list[tuple]:
    out: list[tuple] = []
    for p in pts:
        if out and out[-1][0] // res == p[0] // res:
            out[-1] = p
        else:
            out.append(p)
    return out


def sample(pts: Sequence[tuple], n: int) -> list[tuple]:
    """At most n points: the last point of each of n equal time slices (the ends kept)."""
    if len(pts) <= n or n < 2:
        return list(pts)
    t0, t1 = pts[0][0], pts[-1][0]
    width = max(1, (t1 - t0 + n - 1) // (n - 1))
    out: list[tuple] = []
    for p in pts:
        if out and (out[-1][0] - t0) // width == (p[0] - t0) // width and p is not pts[-1]:
            out[-1] = p
        else:
            out.append(p)
    if out[0] != pts[0]:
        out.insert(0, pts[0])
    return out


def forecast(pts: Sequence[tuple[int, int, int, int]], now: int, remaining: int, window_s: int) -> dict[str, Any]:
    """Rule Q5: least-squares burn rate (units per day) and the exhaustion time, or None."""
    recent = [p for p in pts if p[0] >= now - window_s]
    if len({p[0] for p in recent}) < 2:
        recent = list(pts)
    out: dict[str, Any] = {"window_s": window_s, "points": len(recent), "burn_per_day": None,
                           "exhausted_at": None, "remaining": remaining}
    if len({p[0] for p in recent}) < 2:
        return out
    n = len(recent)
    mt = sum(p[0] for p in recent) / n
    mc = sum(p[2] for p in recent) / n
    sxx = sum((p[0] - mt) ** 2 for p in recent)
    sxy = sum((p[0] - mt) * (p[2] - mc) for p in recent)
    if sxx <= 0:
        return out
    slope = sxy / sxx   # units per second
    out["burn_per_day"] = int(round(slope * 86400))
    if slope > 0:
        base = max(now, recent[-1][0])
        out["exhausted_at"] = int(base + remaining / slope) if remaining > 0 else base
    return out


# ------------------------------------------------------------------------------ overview
def overview(conn: Connection, account: int | None, now_ms: int, online_s: int) -> dict[str, Any]:
    """Headline counts in scope; unsynced = sum over devices of (highest seq the device reported
    or sent) - (cloud's acked seq), read from the stored status and session (one pass)."""
    a, w, d, b, m = S.accounts, S.workspaces, S.devices, S.usage_batches, S.mismatches

    def one(q: Select) -> int:
        return int(conn.execute(q).scalar() or 0)

    accs = one(select(func.count()).select_from(a).where(a.c.id == account) if account is not None
               else select(func.count()).select_from(a))
    wsq = _ws_scope(select(func.count()).select_from(w), account)
    dq = _ws_scope(select(func.count()).select_from(d).join(w, w.c.id == d.c.workspace_id), account)
    cutoff = now_ms - online_s * 1000
    bq = select(func.count(), func.coalesce(func.sum(b.c.rounds), 0), func.coalesce(func.sum(b.c.rated_ucny), 0))
    mq = select(func.count()).select_from(m).join(b, b.c.id == m.c.batch_id)
    if account is not None:
        bq = bq.where(b.c.account_id == account)
        mq = mq.where(b.c.account_id == account)
    nb, rounds, ucny = conn.execute(bq).one()
    unsynced = 0
    sq = _ws_scope(select(d.c.acked_seq, d.c.session, d.c.last_status).join(w, w.c.id == d.c.workspace_id), account)
    for acked, sess, st in conn.execute(sq.execution_options(yield_per=5000)):
        sent = max(int(_status(st).get("seq", 0) or 0), int(_status(sess).get("top", 0) or 0))
        unsynced += max(0, sent - acked)
    return {"accounts": accs, "workspaces": one(wsq), "devices": one(dq),
            "online": one(dq.where(d.c.last_seen_ms > 0, d.c.last_seen_ms >= cutoff)),
            "unsynced_batches": unsynced, "batches": int(nb), "rounds": int(rounds), "rated_ucny": int(ucny),
            "mismatches": one(mq)}


# ------------------------------------------------------------------------------ change fingerprint
def fingerprint(conn: Connection, account: int | None) -> dict[str, int]:
    """Numbers that move whenever something the dashboard shows changes (for live updates)."""
    b, pe, ae, m, d, w, a = (S.usage_batches, S.pool_entries, S.account_entries, S.mismatches, S.devices,
                             S.workspaces, S.license_activations)

    def one(q: Select) -> int:
        return int(conn.execute(q).scalar() or 0)

    if account is None:
        return {"batch": one(select(func.max(b.c.id))), "pool": one(select(func.max(pe.c.id))),
                "charge": one(select(func.max(ae.c.id))), "mismatch": one(select(func.max(m.c.id))),
                "seen": one(select(func.max(d.c.last_seen_ms))), "devices": one(select(func.count()).select_from(d)),
                "activation": one(select(func.max(a.c.id))),
                "dead": one(select(func.max(S.dead_letters.c.last_seen_ms))),
                "payment": one(select(func.max(S.payments.c.id)))}
    wss = select(w.c.id).where(w.c.account_id == account)
    return {"batch": one(select(func.max(b.c.id)).where(b.c.account_id == account)),
            "pool": one(select(func.max(pe.c.id)).where(pe.c.workspace_id.in_(wss))),
            "charge": one(select(func.max(ae.c.id)).where(ae.c.account_id == account)),
            "mismatch": one(select(func.max(m.c.id)).join(b, b.c.id == m.c.batch_id).where(b.c.account_id == account)),
            "seen": one(select(func.max(d.c.last_seen_ms)).where(d.c.workspace_id.in_(wss))),
            "devices": one(select(func.count()).select_from(d).where(d.c.workspace_id.in_(wss))),
            "activation": one(select(func.max(a.c.id)).where(a.c.workspace_id.in_(wss))),
            "dead": 0,
            "payment": one(select(func.max(S.payments.c.id)).where(S.payments.c.account_id == account))}

