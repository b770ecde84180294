"""Alerts computed from the ledger on demand (nothing is stored; each reading is current).

Kinds, each with the rule that raises it (thresholds in `Thresholds`, overridable per request):
 A1. pool_low           a License workspace with units added whose free units (what new grants
                        can draw, pool rule P2) are below the threshold: `pool_low_units` when
                        given, else the workspace's own `low_units` term (the level below which
                        grants already carry the final-unit flag, pool rule P4). Critical at 0.
 A2. license_expiring   an activation whose usage period ends within `expiring_days`; and a
                        purchase with licences not yet activated whose activation window
                        (billing L2: one year) closes within `expiring_days`.
 A3. account_suspended  account_balances.suspended (billing P5: the balance cannot cover use).
 A4. device_silent      a device seen at least once and not for `silent_minutes`.
 A5. rating_mismatch    a device with mismatch records (the cloud's re-rating differs from the
                        device's own deduction, or an invalid round / unknown lease) in the last
                        `mismatch_hours`.
Every alert is a dict: kind, severity (warning | critical), account_id, workspace_id,
device_id (or None), subject (readable), message, value, threshold, at (Unix seconds: the
moment the condition refers to).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.engine import Connection

from edgemeter.cloud import queries
from edgemeter.cloud import schema as S

KINDS = ("pool_low", "license_expiring", "account_suspended", "device_silent", "rating_mismatch")


@dataclass(frozen=True)
class Thresholds:
    pool_low_units: int | None = None   # None: each workspace's low_units term
    expiring_days: int = 30
    silent_minutes: int = 60
    mismatch_hours: int = 24


def _alert(kind: str, severity: str, subject: str, message: str, *, account_id: int, workspace_id: int | None = None,
           device_id: int | None = None, value: int = 0, threshold: int = 0, at: int = 0) -> dict[str, Any]:
    return {"kind": kind, "severity": severity, "account_id": account_id, "workspace_id": workspace_id,
            "device_id": device_id, "subject": subject, "message": message, "value": value,
            "threshold": threshold, "at": at}


def pool_low(conn: Connection, now: int, account: int | None, th: Thresholds) -> list[dict[str, Any]]:
    """A1."""
    w, p = S.workspaces, S.pools
    q = (select(w.c.id, w.c.account_id, w.c.name, w.c.low_units, p.c.added, p.c.free, p.c.out, p.c.unrec)
         .join(p, p.c.workspace_id == w.c.id).where(w.c.billing == "license", p.c.added > 0).order_by(w.c.id))
    if account is not None:
        q = q.where(w.c.account_id == account)
    out = []
    for ws, acc, name, low, added, free, out_, unrec in conn.execute(q):
        limit = th.pool_low_units if th.pool_low_units is not None else low
        if free < limit:
            out.append(_alert("pool_low", "critical" if free == 0 else "warning", f"workspace {ws} {name}",
                              f"pool of workspace {name!r} has {free} free units (below {limit}); "
                              f"{free + out_ + unrec} not yet consumed of {added} added",
                              account_id=acc, workspace_id=ws, value=free, threshold=limit, at=now))
    return out


def license_expiring(conn: Connection, now: int, account: int | None, th: Thresholds) -> list[dict[str, Any]]:
    """A2."""
    horizon = now + th.expiring_days * 86400
    a, w, p = S.license_activations, S.workspaces, S.license_purchases
    q = (select(a.c.id, a.c.workspace_id, w.c.account_id, w.c.name, a.c.count, a.c.period_end)
         .join(w, w.c.id == a.c.workspace_id).where(a.c.period_end > now, a.c.period_end <= horizon).order_by(a.c.id))
    if account is not None:
        q = q.where(w.c.account_id == account)
    out = []
    for aid, ws, acc, name, count, end in conn.execute(q):
        days = (end - now) // 86400
        out.append(_alert("license_expiring", "warning", f"activation {aid}",
                          f"{count} licence(s) of workspace {name!r} end in {days} day(s)",
                          account_id=acc, workspace_id=ws, value=days, threshold=th.expiring_days, at=end))
    done = select(func.coalesce(func.sum(a.c.count), 0)).where(a.c.purchase_id == p.c.id).scalar_subquery()
    q2 = (select(p.c.id, p.c.workspace_id, w.c.account_id, w.c.name, p.c.devices, done.label("done"), p.c.activate_by)
          .join(w, w.c.id == p.c.workspace_id).where(p.c.activate_by > now, p.c.activate_by <= horizon)
          .order_by(p.c.id))
    if account is not None:
        q2 = q2.where(w.c.account_id == account)
    for pid, ws, acc, name, devices, done_n, by in conn.execute(q2):
        left = devices - int(done_n)
        if left > 0:
            days = (by - now) // 86400
            out.append(_alert("license_expiring", "warning", f"purchase {pid}",
                              f"{left} licence(s) of workspace {name!r} must be activated within {days} day(s)",
                              account_id=acc, workspace_id=ws, value=days, threshold=th.expiring_days, at=by))
    return out


def account_suspended(conn: Connection, now: int, account: int | None, th: Thresholds) -> list[dict[str, Any]]:
    """A3."""
    a, b = S.accounts, S.account_balances
    q = (select(a.c.id, a.c.name, b.c.balance_ucny).join(b, b.c.account_id == a.c.id)
         .where(b.c.suspended == True).order_by(a.c.id))  # noqa: E712
    if account is not None:
        q = q.where(a.c.id == account)
    return [_alert("account_suspended", "critical", f"account {aid} {name}",
                   f"account {name!r} is suspended: balance {bal} µCNY cannot cover usage",
                   account_id=aid, value=bal, threshold=0, at=now) for aid, name, bal in conn.execute(q)]


def device_silent(conn: Connection, now: int, account: int | None, th: Thresholds) -> list[dict[str, Any]]:
    """A4."""
    d, w = S.devices, S.workspaces
    cutoff_ms = (now - th.silent_minutes * 60) * 1000
    q = (select(d.c.id, d.c.workspace_id, w.c.account_id, d.c.last_seen_ms).join(w, w.c.id == d.c.workspace_id)
         .where(d.c.last_seen_ms > 0, d.c.last_seen_ms < cutoff_ms).order_by(d.c.id))
    if account is not None:
        q = q.where(w.c.account_id == account)
    out = []
    for dev, ws, acc, seen in conn.execute(q):
        minutes = (now * 1000 - seen) // 60000
        out.append(_alert("device_silent", "warning", f"device {dev}", f"device {dev} silent for {minutes} minute(s)",
                          account_id=acc, workspace_id=ws, device_id=dev, value=minutes,
                          threshold=th.silent_minutes, at=seen // 1000))
    return out


def rating_mismatch(conn: Connection, now: int, account: int | None, th: Thresholds) -> list[dict[str, Any]]:
    """A5."""
    m, b = S.mismatches, S.usage_batches
    since_ms = (now - th.mismatch_hours * 3600) * 1000
    q = (select(m.c.device_id, b.c.workspace_id, b.c.account_id, func.count(), func.max(m.c.at_ms),
                *queries.wide_sum(m.c.device_ucny - m.c.rated_ucny, "diff"))
         .join(b, and_(b.c.id == m.c.batch_id)).where(m.c.at_ms >= since_ms)
         .group_by(m.c.device_id, b.c.workspace_id, b.c.account_id).order_by(m.c.device_id))
    if account is not None:
        q = q.where(b.c.account_id == account)
    out = []
    for dev, ws, acc, n, last, hi, lo in conn.execute(q):
        diff = queries.wide(hi, lo)
        out.append(_alert("rating_mismatch", "critical", f"device {dev}",
                          f"device {dev}: {n} batch(es) whose deduction differs from the cloud's rating "
                          f"(device minus cloud {int(diff or 0)} µCNY)",
                          account_id=acc, workspace_id=ws, device_id=dev, value=int(n), threshold=0, at=last // 1000))
    return out


RULES = {"pool_low": pool_low, "license_expiring": license_expiring, "account_suspended": account_suspended,
         "device_silent": device_silent, "rating_mismatch": rating_mismatch}


def compute(conn: Connection, now: int, account: int | None = None, th: Thresholds | None = None,
            kinds: tuple[str, ...] = KINDS) -> list[dict[str, Any]]:
    """Every current alert visible in scope (`account` None: all accounts), critical first."""
    th = th or Thresholds()
    out: list[dict[str, Any]] = []
    for k in kinds:
        out += RULES[k](conn, now, account, th)
    out.sort(key=lambda a: (a["severity"] != "critical", KINDS.index(a["kind"]), a["account_id"],
                            a["workspace_id"] or 0, a["device_id"] or 0, a["subject"]))
    return out
