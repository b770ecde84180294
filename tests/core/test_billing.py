# Billing methods, calendar and calculator against the golden vectors (CPython and MicroPython).
import vec
from firmware_py import billing
from firmware_py import civil
from firmware_py import pricebook as pb
from firmware_py import rating

BOOK = pb.default()
T = civil.parse_iso


def test_calendar_add_months():
    v = vec.load("billing_calendar")
    for start, months, want in v["add_months"]:
        got = civil.add_months(T(start), months)
        assert got == T(want), (start, months, civil.iso(got), want)
    for text, unix in v["unix"]:
        assert T(text) == unix, text
    for bad in v["bad_iso"]:
        vec.raises(ValueError, T, bad)
    assert civil.iso(T("2026-10-01")) == "2026-10-01T00:00:00+08:00"
    vec.raises(ValueError, civil.add_months, 1, "2")


def test_calendar_days_round_trip():
    # days_from_civil and civil_from_days are inverse over 1600..2400, month by month
    prev = None
    for y in range(1600, 2401, 7):
        for m in range(1, 13):
            for d in (1, civil.days_in_month(y, m)):
                z = civil.days_from_civil(y, m, d)
                assert civil.civil_from_days(z) == (y, m, d)
                if prev is not None:
                    assert z > prev
                prev = z
    assert civil.days_from_civil(1970, 1, 1) == 0 and civil.days_from_civil(2000, 3, 1) == 11017


def test_round_fen():
    for num, den, want in vec.load("billing_postpaid")["round_fen"]:
        assert billing.round_fen(num, den) == want, (num, den)
    vec.raises(billing.BillingError, billing.round_fen, 1, 0)


def test_savings_plan_table_boundaries():
    v = vec.load("billing_plans")
    for row in v["terms"]:
        commit, want = row[0], row[1]
        if type(want) is str:
            e = vec.raises(billing.BillingError, billing.plan_terms, BOOK, commit)
            assert e.rule == want, (commit, e.rule)
            continue
        assert list(billing.plan_terms(BOOK, commit)) == want, commit
        if len(row) > 2:
            st = billing.buy_plan(BOOK, billing.new_account(), 1, commit, 0)
            assert st["plans"][0]["cap"] == row[2]
    for case in v["validity"]:
        st = billing.buy_plan(BOOK, billing.new_account(), 1, case["commit_ucny"], T(case["bought"]))
        assert st["plans"][0]["end"] == T(case["end"]), case


def _check_state(st, step):
    assert st["balance"] == step["balance"], (step, st["balance"])
    assert st["suspended"] is step["suspended"], step
    if "trial_left" in step:
        assert st["trial"]["left"] == step["trial_left"], step
    if "plans_used" in step:
        used = dict((str(p["id"]), p["used"]) for p in st["plans"])
        assert used == step["plans_used"], (step, used)


def test_postpaid_timelines():
    for case in vec.load("billing_postpaid")["cases"]:
        st = billing.new_account(case["balance"])
        before = repr(st)
        all_charges = []
        for step in case["steps"]:
            op = step["op"]
            if "rule" in step:
                if op == "claim_trial":
                    e = vec.raises(billing.BillingError, billing.claim_trial, BOOK, st, T(step["at"]))
                elif op == "pay":
                    e = vec.raises(billing.BillingError, billing.pay, st, step["ucny"], step["method"])
                else:
                    e = vec.raises(billing.BillingError, billing.buy_plan, BOOK, st, step["id"],
                                   step["commit_ucny"], T(step["at"]))
                assert e.rule == step["rule"], (case["name"], step, e.rule)
                continue
            before = repr(st)
            if op == "claim_trial":
                st = billing.claim_trial(BOOK, st, T(step["at"]))
                assert st["trial"]["end"] == T(step["trial_end"])
            elif op == "buy_plan":
                st = billing.buy_plan(BOOK, st, step["id"], step["commit_ucny"], T(step["at"]))
                p = [p for p in st["plans"] if p["id"] == step["id"]][0]
                assert p["end"] == T(step["plan_end"]) and p["cap"] == step["cap"]
            elif op == "pay":
                st, outcome = billing.pay(st, step["ucny"], step["method"])
                assert outcome == step["outcome"], (case["name"], step, outcome)
                _check_state(st, step)
            elif op == "top_up":
                st = billing.top_up(st, step["ucny"])
                _check_state(st, step)
            else:
                old = st
                st, charges = billing.apply_postpaid(st, step["ucny"], T(step["at"]))
                assert [list(c) for c in charges] == step["charges"], (case["name"], step, charges)
                _check_state(st, step)
                assert repr(old) == before, "apply_postpaid must not change its input"
                all_charges += charges
        inv = billing.invoice(all_charges)
        want = case["invoice"]
        assert [list(x) for x in inv["lines"]] == want["lines"], (case["name"], inv["lines"])
        assert inv["list_ucny"] == want["list_ucny"] and inv["due_ucny"] == want["due_ucny"], (case["name"], inv)
        for line in inv["lines"]:
            assert line[3] % billing.FEN == 0


def test_trial_goes_to_new_users():
    for created, at, claimed, used, purchased, days, want in vec.load("billing_postpaid")["trial_eligibility"]:
        st = billing.new_account()
        if claimed:
            st = billing.claim_trial(BOOK, st, T(created))
        got = billing.trial_eligible(st, T(created), T(at), used, purchased, days)
        assert got == want, (created, at, claimed, used, purchased, days, got)
    assert billing.trial_eligible(billing.new_account(), 0, 0, False, False) is None   # default rule: 30 days
    assert billing.trial_eligible(billing.new_account(), 0, 30 * 86400, False, False) == "not-new-age"
    e = vec.raises(billing.BillingError, billing.trial_eligible, billing.new_account(), 0, 0, False, False, -1)
    assert e.rule == "trial-rule"


def test_postpaid_rejects_bad_amounts():
    st = billing.new_account()
    for bad in (-1, "5", None, True):
        e = vec.raises(billing.BillingError, billing.apply_postpaid, st, bad, 0)
        assert e.rule == "amount"
        vec.raises(billing.BillingError, billing.top_up, st, bad)


def test_discount_applies_to_aggregates_not_rounds():
    # 1,000 standard voice chat rounds against a 100 CNY plan (0.90): the per-round discounted
    # value 4905 uCNY would round to 0 fen each; the aggregate is 4,905,000 uCNY = CNY 4.905 -> 4.91.
    st = billing.buy_plan(BOOK, billing.new_account(), 1, 100000000, 0)
    usage = 1000 * rating.total(BOOK, billing.scenario(BOOK, "standard-chat"))
    st, charges = billing.apply_postpaid(st, usage, 10)
    assert charges == [("plan", 1, 5450000, 9000)]
    assert billing.invoice(charges)["lines"] == [("plan", 1, 5450000, 4910000)]


def test_license_purchases():
    v = vec.load("billing_license")
    for p in v["purchases"]:
        if "rule" in p:
            e = vec.raises(billing.BillingError, billing.purchase, BOOK, p["tier"], p["devices"], T(p["at"]))
            assert e.rule == p["rule"], p
            continue
        o = billing.purchase(BOOK, p["tier"], p["devices"], T(p["at"]))
        assert o["activate_by"] == T(p["activate_by"]) and o["price_ucny"] == p["price_ucny"], p
        assert o["activated"] == 0 and o["tier"] == pb.tier_id(BOOK, p["tier"])


def test_license_activation_windows_and_periods():
    for a in vec.load("billing_license")["activations"]:
        o = billing.purchase(BOOK, a["tier"], a["devices"], T(a["bought"]))
        if "rule" in a:
            e = vec.raises(billing.BillingError, billing.activate, BOOK, o, a["count"], T(a["at"]))
            assert e.rule == a["rule"], a
            continue
        o2, grant, reason = billing.activate(BOOK, o, a["count"], T(a["at"]))
        if "reason" in a:
            assert grant is None and reason == a["reason"] and o2 == o, a
            continue
        assert reason is None and o2["activated"] == a["count"] and o["activated"] == 0
        assert grant["start"] == T(a["at"]) and grant["end"] == T(a["end"]), (a["name"], civil.iso(grant["end"]))
        assert grant["units"] == a["units"] and grant["used"] == 0
        assert billing.usage_period(BOOK, T(a["at"])) == (grant["start"], grant["end"])


def test_activations_add_up_to_the_order():
    o = billing.purchase(BOOK, "standard", 100, 0)
    grants = []
    for n in (30, 30, 40):
        o, g, reason = billing.activate(BOOK, o, n, 1000)
        assert reason is None
        grants.append(g)
    assert o["activated"] == 100 and sum(g["units"] for g in grants) == 100 * 10000000
    e = vec.raises(billing.BillingError, billing.activate, BOOK, o, 1, 1000)
    assert e.rule == "activate-count"


def test_pool_combines_add_ons_and_draws_earliest_end_first():
    v = vec.load("billing_license")["pool"]
    grants = []
    for g in v["grants"]:
        o = billing.purchase(BOOK, g["tier"], g["devices"], T(g["bought"]))
        grants.append(billing.activate(BOOK, o, g["count"], T(g["at"]))[1])
    for step in v["steps"]:
        now = T(step["at"])
        assert billing.pool_available(grants, now) == step["available_before"], step
        grants, taken, short, forfeited = billing.pool_draw(grants, step["draw"], now)
        assert (taken, short, forfeited) == (step["taken"], step["shortfall"], step["forfeited"]), step
        assert [g["used"] for g in grants] == step["used"], (step, grants)


def test_allowance_defaults_to_the_tier_price():
    for name, tid, price, allowance in vec.load("rating_book")["tiers"]:
        assert billing.allowance(BOOK, name) == billing.allowance(BOOK, tid) == allowance == price
    e = vec.raises(billing.BillingError, billing.allowance, BOOK, 9)
    assert e.rule == "unknown-tier"


def test_calculator():
    for case in vec.load("billing_license")["estimate"]:
        mix = [(n, w) for n, w in case["mix"]]
        if "rule" in case:
            e = vec.raises(billing.BillingError, billing.estimate, BOOK, case["tier"], mix)
            assert e.rule == case["rule"], case
            continue
        assert billing.estimate(BOOK, case["tier"], mix) == case["interactions"], case
    # rounds are accepted as mix entries too, and equal their scenario names
    rnd = billing.scenario(BOOK, "kb")
    assert billing.estimate(BOOK, "standard", [(rnd, 2)]) == billing.estimate(BOOK, "standard", [("kb", 5)])
    names = [n for n, _ in billing.SCENARIOS]
    for n in ("standard-chat", "lite-chat", "text-chat", "kb", "translation", "video", "radio"):
        assert n in names
    assert billing.scenario(BOOK, "radio")[pb.TTS_STD][0] == 10
