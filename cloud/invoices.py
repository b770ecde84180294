"""Monthly postpaid invoices: one line per billable item and multiplier, rounded to the fen once.

Rules:
 I1. An invoice covers one account and one calendar month of the billing calendar (UTC+8,
     firmware_py.civil), by the cloud's booking time of the charges (accounts rule A3).
 I2. Each booked batch's charges (trial, plan, payg; firmware_py.billing P6) are attributed to
     its usage lines in a fixed order: lines by (item id, multiplier), charges in the order the
     core made them. The first line takes the first charge's list amount until it is used up,
     and so on. This is exactly what charging the lines one after another would have produced,
     so no amount is apportioned or rounded here.
 I3. Per line, exact sums are kept: list, trial, plan (sum of list x bp / 10000 over the plans
     that paid), discount (list x (10000 - bp) / 10000) and pay-as-you-go. Each is rounded to
     the fen ONCE, by billing.round_fen (half away from zero), on the line's aggregate. The
     invoice's totals are the sums of its rounded lines, as printed.
 I4. Forfeits (an ended trial's or plan's unused rest) and billing.invoice()'s per-kind summary
     are reported beside the lines; they are not billable items and owe nothing.
 I5. License (prepaid) workspaces are not invoiced monthly: their usage draws on the pool.
 I6. An invoice is regenerated whole (delete + insert in one transaction), never edited.
"""
from __future__ import annotations

import csv
import io
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection

from edgemeter.cloud import ledger
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
        if len(month) != 7 or not 1 <= m <= 12:
            raise ValueError
    except ValueError:
        raise InvoiceError(f"a month is YYYY-MM, got {month!r}") from None
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
    u = S.usage_lines
    lines_q = (select(u.c.batch_id, u.c.item, u.c.multiplier, u.c.calls, u.c.ucny)
               .where(u.c.batch_id.in_(batch_ids)).order_by(u.c.batch_id, u.c.item, u.c.multiplier))
    lines_by_batch: dict[int, list] = {}
    for b, item, mult, calls, ucny in conn.execute(lines_q):
        lines_by_batch.setdefault(b, []).append((item, mult, calls, ucny))
    acc: dict[tuple[int, int], dict[str, int]] = {}
    forfeits = []
    core_charges = []
    per_batch: dict[int, list] = {}
    for batch_id, kind, ref, lst, bp in charges:
        core_charges.append((kind, ref, lst, bp))
        if kind.startswith("forfeit"):
            forfeits.append({"kind": kind, "ref": ref, "list_ucny": lst, "bp": bp})
        elif batch_id is not None:
            per_batch.setdefault(batch_id, []).append([kind, lst, bp])
    for batch_id, chs in per_batch.items():
        _attribute(lines_by_batch.get(batch_id, []), chs, acc, batch_id)
    out_lines = []
    for (item, mult), a in sorted(acc.items()):
        row = book["items"].get(item)
        out_lines.append({
            "item": item, "name": row[1] if row else f"item-{item}", "multiplier": mult, "calls": a["calls"],
            "list_ucny": a["list"], "list_fen": _fen(a["list"]),
            "discount_fen": _fen(a["disc_num"], BP), "trial_fen": _fen(a["trial"]),
            "plan_fen": _fen(a["plan_num"], BP), "due_fen": _fen(a["payg"])})
    summary = billing.invoice(core_charges)
    return {
        "account_id": account_id, "month": month, "from": start, "to": end, "lines": out_lines,
        "list_fen": sum(x["list_fen"] for x in out_lines), "discount_fen": sum(x["discount_fen"] for x in out_lines),
        "trial_fen": sum(x["trial_fen"] for x in out_lines), "plan_fen": sum(x["plan_fen"] for x in out_lines),
        "due_fen": sum(x["due_fen"] for x in out_lines), "forfeits": forfeits,
        "by_kind": [{"kind": k, "ref": r, "list_ucny": lst, "amount_fen": amt // FEN}
                    for k, r, lst, amt in summary["lines"]],
    }


def _attribute(lines: list, charges: list, acc: dict, batch_id: int) -> None:
    """Rule I2: walk the batch's lines and charges in order, splitting list amounts at boundaries."""
    ci = 0
    for item, mult, calls, ucny in lines:
        a = acc.setdefault((item, mult), {"calls": 0, "list": 0, "trial": 0, "plan_num": 0, "disc_num": 0, "payg": 0})
        a["calls"] += calls
        a["list"] += ucny
        need = ucny
        while need:
            if ci >= len(charges):
                raise InvoiceError(f"batch {batch_id}: charges cover less than its usage lines")
            kind, left, bp = charges[ci]
            take = min(need, left)
            if kind == "trial":
                a["trial"] += take
            elif kind == "plan":
                a["plan_num"] += take * bp
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
        conn.execute(insert(S.invoice_lines), [{"invoice_id": iid, **ln} for ln in inv["lines"]])
    inv["id"] = iid
    return inv


CSV_FIELDS = ("item", "name", "multiplier", "calls", "list_ucny", "list_cny", "discount_cny", "trial_cny",
              "plan_cny", "due_cny")


def cny(fen: int) -> str:
    """'12.34' for 1234 fen (exact, no floats)."""
    sign = "-" if fen < 0 else ""
    fen = abs(fen)
    return f"{sign}{fen // 100}.{fen % 100:02d}"


def to_csv(inv: dict[str, Any]) -> str:
    """The invoice's lines as CSV (amounts in CNY with two decimals), then a total row."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for ln in inv["lines"]:
        w.writerow([ln["item"], ln["name"], ln["multiplier"], ln["calls"], ln["list_ucny"], cny(ln["list_fen"]),
                    cny(ln["discount_fen"]), cny(ln["trial_fen"]), cny(ln["plan_fen"]), cny(ln["due_fen"])])
    w.writerow(["", "TOTAL", "", sum(ln["calls"] for ln in inv["lines"]), sum(ln["list_ucny"] for ln in inv["lines"]),
                cny(inv["list_fen"]), cny(inv["discount_fen"]), cny(inv["trial_fen"]), cny(inv["plan_fen"]),
                cny(inv["due_fen"])])
    return buf.getvalue()


def to_text(inv: dict[str, Any]) -> str:
    out = [f"Invoice account {inv['account_id']} month {inv['month']} (billing calendar UTC+8)",
           f"{'item':<20} {'x':>3} {'calls':>10} {'list':>12} {'discount':>10} {'trial':>10} {'plan':>10} {'due':>12}"]
    for ln in inv["lines"]:
        out.append(f"{ln['name']:<20} {ln['multiplier']:>3} {ln['calls']:>10} {cny(ln['list_fen']):>12} "
                   f"{cny(ln['discount_fen']):>10} {cny(ln['trial_fen']):>10} {cny(ln['plan_fen']):>10} "
                   f"{cny(ln['due_fen']):>12}")
    out.append(f"{'TOTAL (CNY)':<20} {'':>3} {sum(ln['calls'] for ln in inv['lines']):>10} {cny(inv['list_fen']):>12} "
               f"{cny(inv['discount_fen']):>10} {cny(inv['trial_fen']):>10} {cny(inv['plan_fen']):>10} "
               f"{cny(inv['due_fen']):>12}")
    for f in inv["forfeits"]:
        out.append(f"  forfeited: {f['kind']} {f['ref'] or ''} {f['list_ucny']} µCNY of list-price cover (nothing owed)")
    return "\n".join(out)
