"""Monthly postpaid invoices: one line per billable item, multiplier and price-book version (each
line shows its book version and unit price apart: cloud.books B5), rounded to the fen once.

Rules:
 I1. An invoice covers one account and one calendar month of the billing calendar (UTC+8,
     firmware_py.civil), by the cloud's booking time of the charges (accounts rule A3).
 I2. Each booked batch's charges (trial, plan, payg; firmware_py.billing P6) are attributed to
     its usage lines in a fixed order: lines by (item id, multiplier), charges in the order the
     core made them. The first line takes the first charge's list amount until it is used up,
     and so on. This is exactly what charging the lines one after another would have produced,
     so no amount is apportioned or rounded here.
 I3. Per line, exact sums are kept: list, trial, each plan's payment (list x bp / 10000),
     discount (list x (10000 - bp) / 10000) and pay-as-you-go. The invoice is then rounded
     to the fen ONCE as a table (cloud.rounding F1-F4): the list total is the exact list total
     rounded half away from zero (billing.round_fen), and every displayed line, column and
     per-plan total is its exact value rounded down or up, chosen together (largest
     remainder) so that each column of lines adds up to its total and, on every line and in
     total, list - discount = trial + plan + pay-as-you-go. The trial and each plan never show
     more than they paid. Exact µCNY figures stay beside the rounded ones (`*_ucny`; the
     discount and plan payments as exact decimal strings, a discount leaving up to four
     decimals of a µCNY); every `*_fen` has its `*_cny` two-decimal string.
 I4. Forfeits (an ended trial's or plan's unused rest) are reported beside the lines; they are
     not billable items and owe nothing. by_kind and plans summarise the column totals.
 I5. License (prepaid) workspaces are not invoiced monthly: their usage draws on the pool.
     Purchases (savings plans, licences: accounts A5) made in the month are listed on the
     statement beside the usage invoice, each with its price and how it was paid; their prices
     are whole fen (commitments are whole fen, tier prices whole CNY).
 I6. An invoice is regenerated whole (delete + insert in one transaction), never edited.
 I7. The trial and each savings plan are funds spent over several months: a month's invoice
     shows of each at most what its cumulative exact spending up to the month's end, rounded
     to the fen, exceeds that up to the month's start, rounded the same way (cloud.rounding
     F6). The months' invoices together thus never show more than the fund held (the CNY 10.00
     trial shows 10.00 at most over its three months), and each month's figure is still its
     exact value rounded down or up. When several plans pay in one month, their caps, each
     rounded alone, can sum to less than the plan column's exact floor (by less than a fen per
     plan): the caps win, the column shows their sum, and a line's plan figure and list, and
     the list total, may then show up to those fen less than their exact values rounded down
     (never more: the customer is not charged for what a plan already showed).
"""
from __future__ import annotations

import csv
import io
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.engine import Connection

from edgemeter.cloud import accounts, ledger, rounding
from edgemeter.cloud import schema as S
from firmware_py import billing, civil
from firmware_py import pricebook as pb

FEN = billing.FEN
BP = 10000


class InvoiceError(ValueError):
    """A caller mistake: a month that is not YYYY-MM, an unknown account."""


def month_bounds(month: str) -> tuple[int, int]:
    """[start, end) Unix seconds of YYYY-MM on the billing calendar (rule I1)."""
    try:
        y, m = (int(v) for v in month.split("-"))
        if len(month) != 7 or not month[:4].isdigit() or not 1 <= m <= 12:
            raise ValueError
    except ValueError:
        raise InvoiceError(f"a month is YYYY-MM, got {month!r}") from None
    if y < 1970:
        raise InvoiceError(f"a month is YYYY-MM from 1970-01 on (Unix time), got {month!r}")
    start = civil.to_unix(y, m, 1)
    return start, civil.add_months(start, 1)


def _fen(num: int, den: int = 1) -> int:
    return billing.round_fen(num, den) // FEN


def compute(conn: Connection, account_id: int, month: str, book: dict | None = None) -> dict[str, Any]:
    """The invoice of an account and month (rules I1-I4), not stored."""
    book = book or pb.default()
    if conn.execute(select(S.accounts.c.id).where(S.accounts.c.id == account_id)).first() is None:
        raise InvoiceError(f"no account {account_id}")
    start, end = month_bounds(month)
    e = S.account_entries
    charges = conn.execute(select(e.c.batch_id, e.c.kind, e.c.ref, e.c.list_ucny, e.c.bp)
                           .where(e.c.account_id == account_id, e.c.at >= start, e.c.at < end)
                           .order_by(e.c.batch_id, e.c.id)).all()
    batch_ids = select(e.c.batch_id).where(e.c.account_id == account_id, e.c.at >= start, e.c.at < end,
                                           e.c.batch_id.is_not(None))
    u, ub = S.usage_lines, S.usage_batches
    lines_q = (select(u.c.batch_id, u.c.item, u.c.multiplier, ub.c.book_version, u.c.calls, u.c.ucny)
               .join(ub, ub.c.id == u.c.batch_id)
               .where(u.c.batch_id.in_(batch_ids)).order_by(u.c.batch_id, u.c.item, u.c.multiplier))
    lines_by_batch: dict[int, list] = {}
    for b, item, mult, ver, calls, ucny in conn.execute(lines_q):
        lines_by_batch.setdefault(b, []).append(((item, mult, ver), calls, ucny))
    acc: dict[tuple[int, int, int], dict[str, Any]] = {}
    forfeits = []
    per_batch: dict[int, list] = {}
    for batch_id, kind, ref, lst, bp in charges:
        if kind.startswith("forfeit"):
            forfeits.append({"kind": kind, "ref": ref, "list_ucny": lst, "bp": bp,
                             "cny": cny(billing.round_fen(lst * bp, BP) // FEN)})
        elif batch_id is not None:
            per_batch.setdefault(batch_id, []).append([kind, lst, bp, ref])
    for batch_id, chs in per_batch.items():
        _attribute(lines_by_batch.get(batch_id, []), chs, acc, batch_id)
    inv = {"account_id": account_id, "month": month, "from": start, "to": end, "forfeits": forfeits}
    inv.update(_rounded(acc, {**(ledger.books_since(conn, 0) or {book["version"]: book})},
                        fund_caps(conn, account_id, start, end)))
    inv["purchases"] = [{"order": o["id"], "kind": o["kind"], "ref": o["ref"], "at": o["at"], "paid_by": o["paid_by"],
                         "price_ucny": o["price_ucny"], "price_fen": billing.round_fen(o["price_ucny"]) // FEN,
                         "price_cny": accounts.cny2(o["price_ucny"])}
                        for o in accounts.orders(conn, account_id, start, end)]
    inv["purchases_fen"] = sum(p["price_fen"] for p in inv["purchases"])
    inv["purchases_cny"] = cny(inv["purchases_fen"])
    return inv


def fund_caps(conn: Connection, account_id: int, start: int, end: int) -> dict[Any, int]:
    """Rule I7: {"trial": fen, plan id: fen} that the month [start, end) may show of each fund."""
    e = S.account_entries

    def spent(before: int) -> dict[Any, int]:
        q = (select(e.c.kind, e.c.ref, func.sum(e.c.list_ucny * e.c.bp))
             .where(e.c.account_id == account_id, e.c.at < before, e.c.kind.in_(("trial", "plan")))
             .group_by(e.c.kind, e.c.ref))
        return {("trial" if kind == "trial" else ref): billing.round_fen(int(num), BP) // FEN
                for kind, ref, num in conn.execute(q)}
    upto, before = spent(end), spent(start)
    return {k: v - before.get(k, 0) for k, v in upto.items()}


def _rounded(acc: dict[tuple[int, int, int], dict[str, Any]], books: dict[int, dict],
             caps: dict[Any, int]) -> dict[str, Any]:
    """Rules I3, I4: the lines and column totals rounded together (one savings-plan column),
    then the plan column's total split among the plans (cloud.rounding F5); caps (fen) on the
    trial ("trial") and on each plan (its id) per rule I7."""
    keys = sorted(acc)
    plans = sorted({ref for a in acc.values() for ref in a["plan"]})
    plan_nums = {ref: sum(acc[k]["plan"].get(ref, (0, 0))[0] for k in keys) for ref in plans}
    den = FEN * BP
    plan_caps = [caps.get(ref) for ref in plans]
    col_caps = {1: caps["trial"]} if "trial" in caps else {}
    if plans:
        col_caps[2] = sum(rounding.split_bounds(plan_nums[ref], den, c)[1] for ref, c in zip(plans, plan_caps))
    table = [[acc[k]["disc_num"], acc[k]["trial"] * BP, sum(v[0] for v in acc[k]["plan"].values()),
              acc[k]["payg"] * BP] for k in keys]
    cells, grand = rounding.controlled(table, den, col_caps)
    out_lines = []
    for k, row in zip(keys, cells):
        a, (item, mult, ver) = acc[k], k
        it = books[ver]["items"].get(item) if ver in books else None
        ln = {"item": item, "name": it[1] if it else f"item-{item}", "multiplier": mult, "calls": a["calls"],
              "book_version": ver, "unit_ucny": it[2] * mult if it else 0,
              "list_fen": sum(row), "discount_fen": row[0], "trial_fen": row[1], "plan_fen": row[2],
              "due_fen": row[3], "list_ucny": a["list"], "trial_ucny": a["trial"], "payg_ucny": a["payg"],
              "plan_ucny": exact_ucny(table[len(out_lines)][2]), "discount_ucny": exact_ucny(a["disc_num"])}
        out_lines.append(_with_cny(ln))
    col = [sum(row[j] for row in cells) for j in range(4)]
    paid = rounding.split(col[2], [plan_nums[ref] for ref in plans], den, plan_caps)
    plan_rows = [{"plan": ref, "list_ucny": sum(acc[k]["plan"].get(ref, (0, 0))[1] for k in keys),
                  "paid_ucny": exact_ucny(plan_nums[ref]), "paid_fen": f, "paid_cny": cny(f)}
                 for ref, f in zip(plans, paid)]
    totals = _with_cny({"list_fen": grand, "discount_fen": col[0], "trial_fen": col[1],
                        "plan_fen": col[2], "due_fen": col[3]})
    by_kind = ([{"kind": "payg", "ref": 0, "list_ucny": sum(acc[k]["payg"] for k in keys), "amount_fen": col[3]}]
               + [{"kind": "plan", "ref": p["plan"], "list_ucny": p["list_ucny"], "amount_fen": p["paid_fen"]}
                  for p in plan_rows]
               + [{"kind": "trial", "ref": 0, "list_ucny": sum(acc[k]["trial"] for k in keys), "amount_fen": col[1]}])
    return {"lines": out_lines, **totals, "list_ucny": sum(acc[k]["list"] for k in keys), "plans": plan_rows,
            "by_kind": [k for k in by_kind if k["list_ucny"]]}


MONEY = ("list", "discount", "trial", "plan", "due")


def _with_cny(d: dict[str, Any]) -> dict[str, Any]:
    """d with a '<x>_cny' two-decimal string beside every '<x>_fen' figure."""
    for m in MONEY:
        d[m + "_cny"] = cny(d[m + "_fen"])
    return d


def exact_ucny(num: int) -> str:
    """num / 10000 µCNY exactly, as a decimal string ('4905', '4905.5')."""
    whole, frac = divmod(num, BP)
    return f"{whole}.{frac:04d}".rstrip("0") if frac else str(whole)


def _attribute(lines: list, charges: list, acc: dict, batch_id: int) -> None:
    """Rule I2: walk the batch's lines and charges in order, splitting list amounts at boundaries."""
    ci = 0
    for key, calls, ucny in lines:
        a = acc.setdefault(key, {"calls": 0, "list": 0, "trial": 0, "plan": {}, "disc_num": 0, "payg": 0})
        a["calls"] += calls
        a["list"] += ucny
        need = ucny
        while need:
            if ci >= len(charges):
                raise InvoiceError(f"batch {batch_id}: charges cover less than its usage lines")
            kind, left, bp, ref = charges[ci]
            take = min(need, left)
            if kind == "trial":
                a["trial"] += take
            elif kind == "plan":
                num, lst = a["plan"].get(ref, (0, 0))
                a["plan"][ref] = (num + take * bp, lst + take)
                a["disc_num"] += take * (BP - bp)
            else:
                a["payg"] += take
            need -= take
            charges[ci][1] -= take
            if charges[ci][1] == 0:
                ci += 1


def generate(conn: Connection, account_id: int, month: str, now: int, book: dict | None = None) -> dict[str, Any]:
    """Compute and store the invoice, replacing any earlier one of the same month (rule I6)."""
    inv = compute(conn, account_id, month, book)
    old = conn.execute(select(S.invoices.c.id).where(S.invoices.c.account_id == account_id,
                                                     S.invoices.c.month == month)).scalar()
    if old is not None:
        conn.execute(delete(S.invoice_lines).where(S.invoice_lines.c.invoice_id == old))
        conn.execute(delete(S.invoices).where(S.invoices.c.id == old))
    iid = ledger.new_id(conn.execute(insert(S.invoices).values(
        account_id=account_id, month=month, created_at=now, list_fen=inv["list_fen"], due_fen=inv["due_fen"])))
    if inv["lines"]:
        cols = [c.name for c in S.invoice_lines.c if c.name not in ("id", "invoice_id")]
        conn.execute(insert(S.invoice_lines), [{"invoice_id": iid, **{c: ln[c] for c in cols}} for ln in inv["lines"]])
    inv["id"] = iid
    return inv


CSV_FIELDS = ("item", "name", "multiplier", "book_version", "unit_ucny", "calls", "list_cny", "discount_cny", "trial_cny", "plan_cny", "due_cny",
              "list_ucny", "discount_ucny", "trial_ucny", "plan_ucny", "payg_ucny")


def cny(fen: int) -> str:
    """'12.34' for 1234 fen (exact, no floats)."""
    sign = "-" if fen < 0 else ""
    fen = abs(fen)
    return f"{sign}{fen // 100}.{fen % 100:02d}"


def to_csv(inv: dict[str, Any]) -> str:
    """The invoice's lines as CSV: the displayed amounts in CNY with two decimals (each column
    adds up to the TOTAL row), then the exact µCNY behind them; then a total row."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for ln in inv["lines"]:
        w.writerow([ln[f] for f in CSV_FIELDS])
    lines = inv["lines"]
    exact = [sum(ln[f] for ln in lines) for f in ("list_ucny", "trial_ucny", "payg_ucny")]
    w.writerow(["", "TOTAL", "", "", "", sum(ln["calls"] for ln in lines), inv["list_cny"], inv["discount_cny"],
                inv["trial_cny"], inv["plan_cny"], inv["due_cny"], exact[0],
                exact_ucny(sum(_num(ln["discount_ucny"]) for ln in lines)), exact[1],
                exact_ucny(sum(_num(ln["plan_ucny"]) for ln in lines)), exact[2]])
    return buf.getvalue()


def _num(exact: str) -> int:
    """The numerator (in 1/10000 µCNY) of an exact_ucny() string."""
    whole, _, frac = exact.partition(".")
    return int(whole) * BP + int((frac + "0000")[:4])


def to_text(inv: dict[str, Any]) -> str:
    out = [f"Invoice account {inv['account_id']} month {inv['month']} (billing calendar UTC+8)",
           f"{'item':<20} {'x':>3} {'book':>4} {'µCNY/call':>10} {'calls':>10} {'list':>12} {'discount':>10} {'trial':>10} {'plan':>10} {'due':>12}"]
    for ln in inv["lines"] + [dict(inv, name="TOTAL (CNY)", multiplier="", book_version="", unit_ucny="",
                                   calls=sum(x["calls"] for x in inv["lines"]))]:
        out.append(f"{ln['name']:<20} {ln['multiplier']:>3} {ln['book_version']:>4} {ln['unit_ucny']:>10} {ln['calls']:>10} {ln['list_cny']:>12} "
                   f"{ln['discount_cny']:>10} {ln['trial_cny']:>10} {ln['plan_cny']:>10} {ln['due_cny']:>12}")
    out.append("list - discount = trial + plan + due, on every line and in total")
    for p in inv.get("plans", []):
        out.append(f"  savings plan {p['plan']}: paid {p['paid_cny']} for {accounts.cny2(p['list_ucny'])} list")
    for o in inv.get("purchases", []):
        out.append(f"purchase: order {o['order']} {o['kind']} {o['ref']} on {civil.iso(o['at'])}: {o['price_cny']} CNY"
                   f" paid {o['paid_by']}")
    if inv.get("purchases"):
        out.append(f"purchases this month: {inv['purchases_cny']} CNY (besides the usage above)")
    for f in inv["forfeits"]:
        out.append(f"  forfeited: {f['kind']} {f['ref'] or ''} {accounts.cny2(f['list_ucny'])} CNY of list-price cover"
                   " (nothing owed)")
    return "\n".join(out)
