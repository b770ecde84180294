"""Accounts, workspaces and the postpaid method on the cloud side: the store around the core.

firmware_py.billing owns the rules (P1-P6: trial first, savings plans earliest end first at
their discount, pay-as-you-go from the cash balance, suspended == balance < 0); this module
rebuilds an account's billing state from the store, calls the core, and stores its decisions:

 A1. An account's state for the core is built from the store: the trial row with what is left
     of it, the savings plans not yet forfeited with their use, the cash balance and the flag
     (account_balances), all read under the balance row's lock.
 A2. Every charge the core returns (kind, ref, list µCNY, bp) is an immutable account entry
     tagged with the batch that caused it and the cloud's booking time; the projections
     (account_balances, plan_balances) move with it in the same transaction.
 A3. Postpaid usage is charged at the cloud's booking time, never the device's clock (a device
     may report 90-day-old rounds or have a wrong clock; the trial and plan windows are the
     cloud's).
 A5. A purchase (savings plan, licences) is an order (kind, ref, price, paid_by) recorded with
     it in the same transaction, paid by the core's P7: up front (paid_ucny grows by the price,
     the balance does not move) or from the balance (the balance falls by the price, and may
     not fall below zero: PurchaseRefused, nothing written). purchases_ucny sums the prices.
     No refunds: nothing takes an order back.
 A6. The free trial goes to new users (the core's P8): claim_trial refuses (TrialRefused, with
     the reason) an account that has claimed it, has booked usage (usage_batches, License or
     postpaid) or an order before the claim, or is older than the operator's new_days (meta key
     trial_new_days, `edgemeter admin trial-rule --new-days N`; default 30, 0 = no age limit).
 A4. Suspension is a projection too: `suspended` is the core's flag after the last charge or
     top-up. Devices follow it: `commands_due()` lists every device of the account's postpaid
     workspaces whose status differs from the account's, and `mark_commanded()` records that a
     command was sent. The rater pushes the commands; the admin command prints them.

Errors: AccountError(ValueError) for caller mistakes (unknown account, duplicate name); the
core's BillingError (trial-claimed, plan-table, ...) passes through.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import bindparam, func, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from edgemeter.cloud import ledger
from edgemeter.cloud import schema as S
from firmware_py import billing
from firmware_py import lease as L
from firmware_py import pool as PL


ENTRY_COLS = ("account_id", "batch_id", "at", "kind", "ref", "list_ucny", "bp")


class AccountError(ValueError):
    """A caller mistake about an account or workspace."""


class TrialRefused(Exception):
    """A business refusal (A6): the account is not a new user. .reason is billing P8's code."""

    def __init__(self, reason: str, text: str):
        super().__init__(f"{reason}: {text}")
        self.reason = reason


TRIAL_REASONS = {
    "trial-claimed": "the free trial is one-time and this account has claimed it",
    "not-new-usage": "the free trial is for new users; this account has usage already",
    "not-new-purchase": "the free trial is for new users; this account has bought a plan or licences",
    "not-new-age": "the free trial is for new users; claim it within %(days)d days of the account's creation",
}


class PurchaseRefused(Exception):
    """A business refusal (A5): the balance cannot pay a purchase. Nothing was written."""


def create_account(conn: Connection, name: str, now: int) -> int:
    if not name or len(name) > 200:
        raise AccountError("an account name is 1..200 characters")
    try:
        with conn.begin_nested():
            aid = ledger.new_id(conn.execute(insert(S.accounts).values(name=name, created_at=now)))
    except IntegrityError:
        raise AccountError(f"an account named {name!r} exists") from None
    conn.execute(insert(S.account_balances).values(account_id=aid))
    return aid


def account(conn: Connection, account_id: int) -> Any:
    row = conn.execute(select(S.accounts).where(S.accounts.c.id == account_id)).mappings().first()
    if row is None:
        raise AccountError(f"no account {account_id}")
    return row


def create_workspace(conn: Connection, account_id: int, name: str, billing_method: str, now: int,
                     policy: str | int | None = None, **lease_terms: int) -> int:
    """A workspace billed 'license' (from its pool) or 'postpaid'; lease_terms as in
    firmware_py.pool.TERMS (grant, max, validity, allowance, low, renew_pct)."""
    account(conn, account_id)
    if billing_method not in ("license", "postpaid"):
        raise AccountError("a workspace is billed 'license' or 'postpaid'")
    t = dict(PL.TERMS)
    unknown = set(lease_terms) - set(t)
    if unknown:
        raise AccountError(f"unknown lease terms {sorted(unknown)}")
    t.update({k: v for k, v in lease_terms.items() if v is not None})
    if policy is not None:
        if isinstance(policy, str):
            if policy not in L.POLICIES:
                raise AccountError(f"offline policy {policy!r}; known: {', '.join(L.POLICIES)}")
            policy = L.POLICIES.index(policy)
        t["policy"] = policy
    for k, v in t.items():
        if type(v) is not int or v < 0:
            raise AccountError(f"lease term {k} must be an integer >= 0")
    if t["validity"] < 1 or t["policy"] not in (L.STOP, L.CONTINUE, L.DEGRADE):
        raise AccountError("validity must be >= 1 s and the policy stop/continue/degrade")
    try:
        with conn.begin_nested():
            return ledger.new_id(conn.execute(insert(S.workspaces).values(
                account_id=account_id, name=name, billing=billing_method, created_at=now,
                grant_units=t["grant"], max_units=t["max"], validity_s=t["validity"],
                offline_policy=t["policy"], offline_units=t["allowance"], low_units=t["low"],
                renew_pct=t["renew_pct"])))
    except IntegrityError:
        raise AccountError(f"account {account_id} has a workspace named {name!r}") from None


# ------------------------------------------------------------------------------ state (A1)
def load_state(conn: Connection, account_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """The core's postpaid state of each account, rows locked (rule A1)."""
    ids = sorted(set(account_ids))
    if not ids:
        return {}
    bal = {r["account_id"]: r for r in conn.execute(
        select(S.account_balances).where(S.account_balances.c.account_id.in_(ids))
        .order_by(S.account_balances.c.account_id).with_for_update()).mappings()}   # id order: no deadlock
    missing = set(ids) - set(bal)
    if missing:
        raise AccountError(f"no account(s) {sorted(missing)}")
    out = {i: {"trial": None, "plans": [], "balance": bal[i]["balance_ucny"],
               "suspended": bool(bal[i]["suspended"])} for i in ids}
    for t in conn.execute(select(S.trials).where(S.trials.c.account_id.in_(ids))).mappings():
        out[t["account_id"]]["trial"] = {"claimed": t["claimed_at"], "end": t["ends_at"],
                                         "left": bal[t["account_id"]]["trial_left_ucny"]}
    p, pb_ = S.savings_plans, S.plan_balances
    q = (select(p, pb_.c.used_ucny).join(pb_, pb_.c.plan_id == p.c.id)
         .where(p.c.account_id.in_(ids), pb_.c.closed == False).order_by(p.c.id))  # noqa: E712
    for r in conn.execute(q).mappings():
        out[r["account_id"]]["plans"].append({
            "id": r["id"], "bought": r["bought_at"], "end": r["ends_at"], "commit": r["commit_ucny"],
            "bp": r["bp"], "cap": r["cap_ucny"], "used": r["used_ucny"]})
    return out


def state(conn: Connection, account_id: int) -> dict[str, Any]:
    return load_state(conn, [account_id])[account_id]


# ------------------------------------------------------------------------------ purchases
TRIAL_RULE_KEY = "trial_new_days"


def trial_rule(conn: Connection) -> int:
    """A6: the operator's new_days for the trial (billing P8; default billing.TRIAL_NEW_DAYS)."""
    v = conn.execute(select(S.meta.c.value).where(S.meta.c.key == TRIAL_RULE_KEY)).scalar()
    return billing.TRIAL_NEW_DAYS if v is None else int(v)


def set_trial_rule(conn: Connection, new_days: int) -> int:
    """A6: set new_days (an integer >= 0; 0 = no age limit); returns it."""
    if type(new_days) is not int or not 0 <= new_days <= 36500:
        raise AccountError(f"new_days is an integer in 0..36500, got {new_days!r}")
    if conn.execute(select(S.meta.c.key).where(S.meta.c.key == TRIAL_RULE_KEY)).first() is None:
        conn.execute(insert(S.meta).values(key=TRIAL_RULE_KEY, value=str(new_days)))
    else:
        conn.execute(update(S.meta).where(S.meta.c.key == TRIAL_RULE_KEY).values(value=str(new_days)))
    return new_days


def trial_eligibility(conn: Connection, account_id: int, now: int, st: dict[str, Any] | None = None) -> str | None:
    """A6: None when the account is a new user who may claim the trial at now, else the reason."""
    acc = account(conn, account_id)
    st = st if st is not None else state(conn, account_id)
    b = S.usage_batches
    used = conn.execute(select(b.c.id).where(b.c.account_id == account_id, b.c.booked_ms < (now + 1) * 1000)
                        .limit(1)).first() is not None
    purchased = conn.execute(select(S.orders.c.id).where(S.orders.c.account_id == account_id,
                                                         S.orders.c.at <= now).limit(1)).first() is not None
    return billing.trial_eligible(st, acc["created_at"], now, used, purchased, trial_rule(conn))


def claim_trial(conn: Connection, book: dict, account_id: int, now: int) -> dict[str, int]:
    """P1 + A6: the one-time trial, for a new user only (TrialRefused with the reason otherwise)."""
    st = state(conn, account_id)
    why = trial_eligibility(conn, account_id, now, st)
    if why is not None:
        raise TrialRefused(why, TRIAL_REASONS[why] % {"days": trial_rule(conn)})
    st = billing.claim_trial(book, st, now)
    t = st["trial"]
    conn.execute(insert(S.trials).values(account_id=account_id, amount_ucny=t["left"], claimed_at=t["claimed"],
                                         ends_at=t["end"]))
    conn.execute(update(S.account_balances).where(S.account_balances.c.account_id == account_id)
                 .values(trial_left_ucny=t["left"]))
    return dict(t)


def buy_plan(conn: Connection, book: dict, account_id: int, commit_ucny: int, now: int,
             paid_by: str = billing.PAY_UPFRONT) -> int:
    """P2 + A5: a savings plan, its commitment paid up front or from the balance; returns its id
    (PurchaseRefused, nothing written, when the balance cannot pay it)."""
    st = state(conn, account_id)
    next_id = conn.execute(select(func.coalesce(func.max(S.savings_plans.c.id), 0))).scalar_one() + 1
    plan = billing.buy_plan(book, st, next_id, commit_ucny, now)["plans"][-1]
    check_payment(conn, account_id, plan["commit"], paid_by)
    pid = ledger.new_id(conn.execute(insert(S.savings_plans).values(
        account_id=account_id, commit_ucny=plan["commit"], bp=plan["bp"], cap_ucny=plan["cap"],
        bought_at=plan["bought"], ends_at=plan["end"])))
    conn.execute(insert(S.plan_balances).values(plan_id=pid))
    record_order(conn, account_id, "savings-plan", pid, plan["commit"], paid_by, now)
    return pid


def check_payment(conn: Connection, account_id: int, price_ucny: int, paid_by: str) -> None:
    """A5: raise PurchaseRefused unless the purchase can be paid as asked (the core's P7)."""
    _, why = billing.pay(state(conn, account_id), price_ucny, paid_by)
    if why is not None:
        bal = conn.execute(select(S.account_balances.c.balance_ucny)
                           .where(S.account_balances.c.account_id == account_id)).scalar_one()
        raise PurchaseRefused(f"{why}: account {account_id} has {cny2(bal)} CNY, the purchase costs "
                              f"{cny2(price_ucny)} CNY (a purchase may not take the balance below zero)")


def record_order(conn: Connection, account_id: int, kind: str, ref: int, price_ucny: int, paid_by: str,
                 now: int) -> int:
    """A5: the order of a purchase, paid by the core's P7; moves the balance projections."""
    st, why = billing.pay(state(conn, account_id), price_ucny, paid_by)
    if why is not None:
        raise PurchaseRefused(f"{why}: the balance cannot pay {cny2(price_ucny)} CNY")
    oid = ledger.new_id(conn.execute(insert(S.orders).values(
        account_id=account_id, kind=kind, ref=ref, price_ucny=price_ucny, paid_by=paid_by, at=now)))
    b = S.account_balances
    upfront = price_ucny if paid_by == billing.PAY_UPFRONT else 0
    conn.execute(update(b).where(b.c.account_id == account_id).values(
        paid_ucny=b.c.paid_ucny + upfront, purchases_ucny=b.c.purchases_ucny + price_ucny,
        balance_ucny=st["balance"], suspended=st["suspended"]))
    return oid


def orders(conn: Connection, account_id: int, start: int = 0, end: int | None = None) -> list[dict[str, Any]]:
    """The account's orders with at in [start, end), oldest first."""
    o = S.orders
    q = select(o).where(o.c.account_id == account_id, o.c.at >= start)
    if end is not None:
        q = q.where(o.c.at < end)
    return [dict(r) for r in conn.execute(q.order_by(o.c.at, o.c.id)).mappings()]


def cny2(ucny: int) -> str:
    """µCNY as CNY with two decimals, rounded once to the fen (billing.round_fen)."""
    sign = "-" if ucny < 0 else ""
    fen = billing.round_fen(abs(ucny)) // billing.FEN
    return f"{sign}{fen // 100}.{fen % 100:02d}"


def top_up(conn: Connection, account_id: int, ucny: int, now: int, ref: str = "") -> dict[str, Any]:
    """P5: add to the cash balance; returns the new state (its flag may now be clear)."""
    st = billing.top_up(state(conn, account_id), ucny)
    conn.execute(insert(S.payments).values(account_id=account_id, amount_ucny=ucny, at=now, ref=ref[:128]))
    b = S.account_balances
    conn.execute(update(b).where(b.c.account_id == account_id).values(
        paid_ucny=b.c.paid_ucny + ucny, balance_ucny=st["balance"], suspended=st["suspended"]))
    return st


# ------------------------------------------------------------------------------ usage (A2, A3)
def charge(conn: Connection, usage: Sequence[tuple[int, int, int]], now: int,
           states: dict[int, dict[str, Any]] | None = None) -> tuple[dict[int, dict[str, Any]], list[int]]:
    """Charge postpaid usage [(account id, batch id, list µCNY)] in order at booking time now.

    Returns the accounts' new states and the batch ids refused whole because they would take
    their account's balance below the debt limit (billing P9: nothing written for them). Writes
    one account entry per charge (rule A2).
    """
    if not usage:
        return {}, []
    states = states if states is not None else load_state(conn, (a for a, _, _ in usage))
    rows: list[tuple] = []     # account entries in ENTRY_COLS order
    refused: list[int] = []
    for acc, batch_id, ucny in usage:
        st, charges = billing.apply_postpaid(states[acc], ucny, now)
        if billing.over_limit(st):
            refused.append(batch_id)
            continue
        states[acc] = st
        for kind, ref, lst, bp in charges:
            rows.append((acc, batch_id, now, kind, ref, lst, bp))
    if rows:   # straight through the driver: the rater charges one entry per batch
        ledger.insert_tuples(conn, S.account_entries, ENTRY_COLS, rows)
    _project(conn, rows, states)
    return states, refused


def _project(conn: Connection, rows: list[tuple], after: Mapping[int, dict[str, Any]]) -> None:
    payg: dict[int, int] = {}
    per_plan: dict[int, list[int]] = {}
    for acc, _batch, _at, kind, ref, lst, _bp in rows:
        if kind == "payg":
            payg[acc] = payg.get(acc, 0) + lst
        elif kind in ("plan", "forfeit-plan"):
            pp = per_plan.setdefault(ref, [0, 0])
            pp[0 if kind == "plan" else 1] += lst
    b = S.account_balances
    upd = []
    for acc, st in after.items():
        t = st["trial"]
        upd.append({"b_id": acc, "b_payg": payg.get(acc, 0), "b_bal": st["balance"],
                    "b_trial": t["left"] if t else 0, "b_susp": st["suspended"]})
    conn.execute(update(b).where(b.c.account_id == bindparam("b_id")).values(
        payg_ucny=b.c.payg_ucny + bindparam("b_payg"), balance_ucny=bindparam("b_bal"),
        trial_left_ucny=bindparam("b_trial"), suspended=bindparam("b_susp")), upd)
    pb_ = S.plan_balances
    pupd = [{"b_id": pid, "b_used": v[0], "b_forf": v[1], "b_closed": _forfeited(rows, pid)}
            for pid, v in per_plan.items()]
    if pupd:
        conn.execute(update(pb_).where(pb_.c.plan_id == bindparam("b_id")).values(
            used_ucny=pb_.c.used_ucny + bindparam("b_used"),
            forfeited_ucny=pb_.c.forfeited_ucny + bindparam("b_forf"),
            closed=or_(pb_.c.closed, bindparam("b_closed"))), pupd)


def _forfeited(rows: list[tuple], pid: int) -> bool:
    return any(r[3] == "forfeit-plan" and r[4] == pid for r in rows)


def settle(conn: Connection, account_id: int, now: int) -> dict[str, Any]:
    """Apply the passage of time (forfeit an ended trial's or plans' rest) with no usage."""
    return charge(conn, [(account_id, None, 0)], now)[0][account_id]  # type: ignore[list-item]


# ------------------------------------------------------------------------------ suspension (A4)
def commands_due(conn: Connection, account_ids: Iterable[int] | None = None) -> list[tuple[int, int, str]]:
    """[(device id, workspace id, 'suspend' | 'resume')] for devices of postpaid workspaces whose
    status differs from their account's flag."""
    d, w, b = S.devices, S.workspaces, S.account_balances
    q = (select(d.c.id, d.c.workspace_id, d.c.status, b.c.suspended)
         .join(w, w.c.id == d.c.workspace_id).join(b, b.c.account_id == w.c.account_id)
         .where(w.c.billing == "postpaid"))
    if account_ids is not None:
        q = q.where(w.c.account_id.in_(sorted(set(account_ids))))
    out = []
    for dev, ws, status, susp in conn.execute(q.order_by(d.c.id)):
        want = "suspended" if susp else "active"
        if status != want:
            out.append((dev, ws, "suspend" if susp else "resume"))
    return out


def mark_commanded(conn: Connection, cmds: Sequence[tuple[int, int, str]]) -> None:
    """Record that the commands were sent: the devices' status follows (rule A4)."""
    if cmds:
        conn.execute(update(S.devices).where(S.devices.c.id == bindparam("b_id")).values(
            status=bindparam("b_status")),
            [{"b_id": dev, "b_status": "suspended" if op == "suspend" else "active"} for dev, _, op in cmds])


def balances(conn: Connection, account_id: int) -> dict[str, Any]:
    """Readable postpaid position of an account (projections)."""
    b = conn.execute(select(S.account_balances).where(S.account_balances.c.account_id == account_id)).mappings().first()
    if b is None:
        raise AccountError(f"no account {account_id}")
    t = conn.execute(select(S.trials).where(S.trials.c.account_id == account_id)).mappings().first()
    p, pb_ = S.savings_plans, S.plan_balances
    plans = [dict(r) for r in conn.execute(select(p, pb_.c.used_ucny, pb_.c.forfeited_ucny, pb_.c.closed)
                                           .join(pb_, pb_.c.plan_id == p.c.id)
                                           .where(p.c.account_id == account_id).order_by(p.c.id)).mappings()]
    return {"account_id": account_id, "paid_ucny": b["paid_ucny"], "payg_ucny": b["payg_ucny"],
            "purchases_ucny": b["purchases_ucny"],
            "balance_ucny": b["balance_ucny"], "suspended": bool(b["suspended"]),
            "trial": ({"amount_ucny": t["amount_ucny"], "claimed_at": t["claimed_at"], "ends_at": t["ends_at"],
                       "left_ucny": b["trial_left_ucny"]} if t else None),
            "plans": plans, "orders": [{**o, "price_cny": cny2(o["price_ucny"])} for o in orders(conn, account_id)]}
