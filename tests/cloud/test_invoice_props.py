"""Invoices add up (cloud.invoices I3, cloud.rounding F1-F4), as properties over random usage.

Hundreds of random postpaid histories (a trial or not, savings plans of several sizes bought
at several times, batches of real billable items and multipliers, a month boundary) are booked
into a real SQLite store through cloud.accounts, and every invoice is checked: each displayed
column of lines adds up to its displayed total; on every line and in total list - discount =
trial + plan + pay-as-you-go; every displayed figure is its exact value rounded down or up; the
list total is the exact one rounded once; the trial and each plan show no more than they hold;
the two-decimal strings and the CSV say the same.
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert

from edgemeter.cloud import accounts, db, invoices, ledger, rounding
from edgemeter.cloud import schema as S
from firmware_py import billing, civil, pricebook

BOOK = pricebook.default()
T0 = civil.to_unix(2026, 7, 1)
DAY = 86400
FEN = billing.FEN
PRICED = sorted(i for i, row in BOOK["items"].items() if row[2])
MULTS = (1, 1, 1, 2, 3, 4, 8, 13, 32)
COLUMNS = ("list", "discount", "trial", "plan", "due")

line_st = st.tuples(st.sampled_from(PRICED), st.sampled_from(MULTS), st.integers(1, 3000))
MONTHS = ("2026-07", "2026-08", "2026-09", "2026-10")
batch_st = st.tuples(st.integers(0, 110), st.lists(line_st, min_size=1, max_size=5))
plan_st = st.tuples(st.sampled_from([2000, 3750, 9999, 10000, 10001, 25000]), st.integers(0, 40))
history_st = st.fixed_dictionaries({
    "trial": st.booleans(), "plans": st.lists(plan_st, max_size=3),
    "batches": st.lists(batch_st, min_size=1, max_size=10)})

_counter = itertools.count()


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('inv') / 'ledger.db'}"
    db.migrate(url)
    e = db.open_store(url)
    yield e
    e.dispose()


def _book(conn, acc, ws, dev, seq, lines, now):
    merged: dict = {}
    for item, mult, calls in lines:
        m = merged.setdefault((item, mult), [0, 0])
        m[0] += calls
        m[1] += BOOK["items"][item][2] * calls * mult
    total = sum(v[1] for v in merged.values())
    ids = ledger.insert_batches(conn, [dict(device_id=dev, seq=seq, boot=1, book_version=1, lease_id=0, t0=now,
                                            rounds=1, device_ucny=total, rated_ucny=total, mismatch=False,
                                            payload=b"", workspace_id=ws, account_id=acc, received_ms=now * 1000,
                                            booked_ms=now * 1000)])
    bid = ids[(dev, seq)]
    ledger.insert_rows(conn, S.usage_lines, [dict(batch_id=bid, item=i, multiplier=m, calls=c, ucny=u)
                                              for (i, m), (c, u) in sorted(merged.items())])
    accounts.charge(conn, [(acc, bid, total)], now)


def _history(conn, h):
    n = next(_counter)
    acc = accounts.create_account(conn, f"prop{n}", T0)
    ws = accounts.create_workspace(conn, acc, "w", "postpaid", T0)
    dev = 100000 + n
    conn.execute(insert(S.devices).values(id=dev, workspace_id=ws, username=f"{ws}/{dev}", password_hash="x",
                                          kid=1, created_at=T0))
    if h["trial"]:
        accounts.claim_trial(conn, BOOK, acc, T0)
    plans = {}
    for commit_fen, day in h["plans"]:
        pid = accounts.buy_plan(conn, BOOK, acc, commit_fen * FEN, T0 + day * DAY)
        plans[pid] = commit_fen
    for seq, (day, lines) in enumerate(sorted(h["batches"], key=lambda b: b[0]), start=1):
        _book(conn, acc, ws, dev, seq, lines, T0 + day * DAY + seq)
    return acc, plans


def _within(shown: int, exact_num: int, den: int) -> bool:
    """shown (fen) is exact_num / den fen rounded down or up."""
    return exact_num // den <= shown <= -(-exact_num // den)


def check_invoice(inv: dict, plans: dict, caps: dict) -> None:
    lines = inv["lines"]
    for c in COLUMNS:
        assert sum(ln[c + "_fen"] for ln in lines) == inv[c + "_fen"], c
        for x in lines + [inv]:
            assert x[c + "_cny"] == invoices.cny(x[c + "_fen"]) and x[c + "_cny"].count(".") == 1
            assert len(x[c + "_cny"].split(".")[1]) == 2
    for x in lines + [inv]:
        assert x["list_fen"] - x["discount_fen"] == x["trial_fen"] + x["plan_fen"] + x["due_fen"]
        assert min(x[c + "_fen"] for c in COLUMNS) >= 0
    den = FEN * 10000
    exact_list = sum(ln["list_ucny"] for ln in lines)
    # F6 over F2: where the plans' caps (rule I7) sum below the plan column's exact floor, the
    # column shows those caps, `short` fen below its floor, and lines lose at most those fen
    plan_exact = sum(invoices._num(ln["plan_ucny"]) for ln in lines)
    plan_caps = sum(rounding.split_bounds(invoices._num(p["paid_ucny"]), den, caps.get(p["plan"]))[1]
                    for p in inv["plans"])
    short = max(0, plan_exact // den - inv["plan_fen"])
    assert short == 0 or inv["plan_fen"] == plan_caps
    assert _within(inv["plan_fen"] + short, plan_exact, den)
    assert exact_list * 10000 // den - short <= inv["list_fen"] <= -(-exact_list * 10000 // den)
    at_cap = inv["trial_fen"] == caps.get("trial") or any(p["paid_fen"] == caps.get(p["plan"]) for p in inv["plans"])
    # rounded once, half away from zero (F1), unless a fund at its cap left no room (F6)
    assert inv["list_fen"] * FEN == billing.round_fen(exact_list) or at_cap
    line_short = {"list": 0, "plan": 0}
    for ln in lines:
        for c, num in (("list", ln["list_ucny"] * 10000), ("plan", invoices._num(ln["plan_ucny"]))):
            line_short[c] += max(0, num // den - ln[c + "_fen"])
            assert ln[c + "_fen"] <= -(-num // den)
        assert _within(ln["trial_fen"], ln["trial_ucny"] * 10000, den)
        assert _within(ln["due_fen"], ln["payg_ucny"] * 10000, den)
        assert _within(ln["discount_fen"], invoices._num(ln["discount_ucny"]), den)
        assert ln["trial_ucny"] + ln["payg_ucny"] + (invoices._num(ln["plan_ucny"])
                                                     + invoices._num(ln["discount_ucny"])) // 10000 == ln["list_ucny"]
    assert line_short["list"] <= short and line_short["plan"] <= short
    assert _within(inv["trial_fen"], sum(ln["trial_ucny"] for ln in lines) * 10000, den)
    assert inv["trial_fen"] <= BOOK["trial"][0] // FEN
    assert sum(p["paid_fen"] for p in inv["plans"]) == inv["plan_fen"]
    for p in inv["plans"]:
        assert p["paid_fen"] <= plans[p["plan"]]
        assert p["paid_fen"] <= caps.get(p["plan"], p["paid_fen"])
        assert _within(p["paid_fen"], invoices._num(p["paid_ucny"]), den)
    rows = list(csv.DictReader(io.StringIO(invoices.to_csv(inv))))
    assert [r["due_cny"] for r in rows] == [ln["due_cny"] for ln in lines] + [inv["due_cny"]]
    assert rows[-1]["list_cny"] == inv["list_cny"] and rows[-1]["list_ucny"] == str(exact_list)


# EDGEMETER_INVOICE_EXAMPLES=5000 runs a longer search than the suite's 200
@settings(max_examples=int(os.environ.get("EDGEMETER_INVOICE_EXAMPLES", 200)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=history_st)
def test_every_invoice_adds_up(engine, h):
    with db.write_connect(engine) as conn:
        tx = conn.begin()
        try:
            acc, plans = _history(conn, h)
            invs = [invoices.compute(conn, acc, month, BOOK) for month in MONTHS]
            for inv in invs:
                check_invoice(inv, plans, invoices.fund_caps(conn, acc, inv["from"], inv["to"]))
            # the funds over all months (rule I7): never more than they held
            assert sum(inv["trial_fen"] for inv in invs) <= BOOK["trial"][0] // FEN
            for pid, commit_fen in plans.items():
                assert sum(p["paid_fen"] for inv in invs for p in inv["plans"] if p["plan"] == pid) <= commit_fen
        finally:
            tx.rollback()


cells_st = st.integers(1, 6).flatmap(lambda nc: st.lists(
    st.lists(st.integers(0, 10 ** 9), min_size=nc, max_size=nc), min_size=1, max_size=12))


@settings(max_examples=500, deadline=None)
@given(cells=cells_st, den=st.sampled_from([1, 3, 10000, 10 ** 8]))
def test_controlled_rounding_keeps_every_sum_within_a_fen(cells, den):
    out, grand = rounding.controlled(cells, den)
    total = sum(map(sum, cells))
    assert grand * FEN == billing.round_fen(total * FEN, den)
    assert sum(map(sum, out)) == grand
    for row, orow in zip(cells, out):
        assert _within(sum(orow), sum(row), den)
        for v, o in zip(row, orow):
            assert _within(o, v, den) and (v % den or o == v // den)
    for j in range(len(cells[0])):
        assert _within(sum(r[j] for r in out), sum(r[j] for r in cells), den)
    assert rounding.controlled(cells, den) == (out, grand)      # deterministic


def test_controlled_rounding_picks_the_largest_remainders():
    # one column, three lines of 0.3, 0.45 and 0.6 fen: the total 1.35 rounds to 1 fen, which the
    # largest remainder (0.6) shows
    assert rounding.controlled([[30], [45], [60]], 100) == ([[0], [0], [1]], 1)
    # the total 1.5 rounds to 2 fen; the first line's exact 0.9 may show 1 fen, not 2, so one of
    # its 0.45 cells rises with a 0.3 of another line in the other column (remainders 0.75 in all)
    out, grand = rounding.controlled([[45, 45], [30, 0], [0, 30]], 100)
    assert grand == 2 and sum(out[0]) == 1 and [sum(c) for c in zip(*out)] == [1, 1]
    with pytest.raises(ValueError):
        rounding.controlled([[1, -1]], 100)


def test_a_cap_below_a_columns_cells_takes_fen_off_them():
    # F6: one line of 0.95 + 14.05 fen, its second column capped at 13 (below the cell's floor of
    # 14): the cell shows 13, the line asks its other cell for the fen back (0.95 -> 1) and the
    # grand total yields to 14
    assert rounding.controlled([[95, 1405]], 100, {1: 13}) == ([[1, 13]], 14)
    # two lines of 3.6 and 10.45 fen under a cap of 13: the floors make 13, nothing is taken off,
    # and the lines' other cells (0.4, 0.55) take the grand total's rounding where they can
    assert rounding.controlled([[40, 360], [55, 1045]], 100, {1: 13}) == ([[0, 3], [1, 10]], 14)
    # a cap below several cells' floors takes a fen off each, smallest remainders first, then again
    assert rounding.controlled([[250], [310], [120]], 100, {0: 3}) == ([[1], [2], [0]], 3)
    assert rounding.controlled([[250], [310], [120]], 100, {0: 5})[0] == [[2], [2], [1]]


def test_invoice_rounding_vectors():
    """tests/vectors/billing_invoice.json: the readings table's rounding row, pinned."""
    doc = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "billing_invoice.json").read_text())
    for case in doc["cases"]:
        out, grand = rounding.controlled(case["cells"], case["den"])
        assert (out, grand) == (case["out"], case["grand"]), case["name"]
        alone = sum(billing.round_fen(sum(r) * FEN, case["den"]) // FEN for r in case["cells"])
        assert sum(map(sum, out)) == grand and (alone != grand or len(case["cells"][0]) > 1), case["name"]



@pytest.mark.parametrize("august_mult", [1, 2])
def test_two_plans_capped_below_their_columns_floor(engine, august_mult):
    """Two plans pay in one month, each capped at its own floor (rule I7) while their exact sum
    is a fen above those caps: the caps win (rounding F6 over F2). Plan B (CNY 100, bp 9000,
    bought 1 July) pays 3.6 fen in July (shown 4) and 3.6 fen in early August, capped at
    7 - 4 = 3; plan A (CNY 20, bp 9500, bought 10 August, ending first) then pays 10.45 fen,
    capped at 10. August's plan column is exactly 14.05 fen, its caps 13. With one usage line
    (august_mult 1) that line's plan cell (14.05) shows 13; with two lines (3.6 and 10.45) the
    cells' floors already make 13."""
    asr_lite = 1
    july = (4, [(asr_lite, 1, 800)])                       # list 40,000 uCNY: B pays 3.6 fen
    aug_b = (33, [(asr_lite, 1, 800)])                     # B pays 3.6 fen
    aug_a = (45, [(asr_lite, august_mult, 2200 // august_mult)])   # list 110,000: A pays 10.45 fen
    with db.write_connect(engine) as conn:
        tx = conn.begin()
        try:
            acc, plans = _history(conn, {"trial": False, "plans": [(10000, 0), (2000, 40)],
                                         "batches": [july, aug_b, aug_a]})
            invs = [invoices.compute(conn, acc, month, BOOK) for month in MONTHS[:2]]
            for inv in invs:
                check_invoice(inv, plans, invoices.fund_caps(conn, acc, inv["from"], inv["to"]))
            aug = invs[1]
            assert sorted(p["paid_ucny"] for p in aug["plans"]) == ["104500", "36000"]
            assert sorted(p["paid_fen"] for p in aug["plans"]) == [3, 10]
            assert aug["plan_fen"] == 13 and [ln["plan_fen"] for ln in aug["lines"]] == ([13] if august_mult == 1
                                                                                         else [3, 10])
            assert aug["list_fen"] - aug["discount_fen"] == aug["trial_fen"] + aug["plan_fen"] + aug["due_fen"]
        finally:
            tx.rollback()
