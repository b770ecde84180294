"""Property tests for the rating core and postpaid billing (hypothesis, CPython only)."""
from __future__ import annotations

import json
from pathlib import Path

import cbor2
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from firmware_py import billing, cbor, rating
from firmware_py import pricebook as pb

BOOK = pb.default()
VECTORS = Path(__file__).resolve().parents[2] / "tests" / "vectors"
_BOOKV = json.loads((VECTORS / "rating_book.json").read_text())
_MULTV = json.loads((VECTORS / "rating_multipliers.json").read_text())
# reference prices and multipliers straight from the spec-derived vectors, not from the book
REF_PRICE = {iid: price for _, iid, price, _ in _BOOKV["items"]}
REF_MULT = {canonical: mult for _, _, mult, canonical in _MULTV["models"]}

ASR_MODELS = [m for m in BOOK["models"] if BOOK["models"][m][1] == pb.C_ASR]
TTS_MODELS = [m for m in BOOK["models"] if BOOK["models"][m][1] == pb.C_TTS]
LLM_MODELS = [m for m in BOOK["models"] if BOOK["models"][m][1] == pb.C_LLM]
LLM_ITEMS = sorted(i for i, r in BOOK["items"].items() if r[4] == pb.G_LLM)
EXTRAS = sorted(i for i, r in BOOK["items"].items() if r[4] == pb.G_EXTRA)


@st.composite
def valid_rounds(draw, llms=(None,) + tuple(LLM_ITEMS), ttss=(None, pb.TTS_LITE, pb.TTS_STD)) -> dict:
    """Rounds valid by construction: every rule of rating.py respected."""
    rnd: dict = {}
    intent = draw(st.booleans())
    if intent:
        rating.add(rnd, pb.INTENT)
    asr = draw(st.sampled_from([None, pb.ASR_LITE, pb.ASR_STD]))
    if asr:
        rating.add(rnd, asr, 1, draw(st.sampled_from([0] + ASR_MODELS)) if asr == pb.ASR_STD else 0)
    llm = draw(st.sampled_from(llms))
    if llm:
        row = BOOK["items"][llm]
        count = draw(st.integers(row[7], row[8]))
        if row[6] & pb.F_INTENT and count and not intent:
            intent = True                     # an agent with calls is routed by intent
            rating.add(rnd, pb.INTENT)
        model = draw(st.sampled_from([0] + LLM_MODELS)) if row[6] & pb.F_MODEL else 0
        image = None
        if row[6] & pb.F_PHOTO:
            w, h = draw(st.integers(1, 640)), draw(st.integers(1, 480))
            image = draw(st.sampled_from([(w, h), (h, w)]))
        rating.add(rnd, llm, count, model, image, bool(image))
    tts = draw(st.sampled_from(ttss))
    if tts:
        sent = llm in (pb.RADIO, pb.STORIES)
        count = draw(st.integers(1, pb.MAX_SENTENCES)) if sent else 1
        rating.add(rnd, tts, count, draw(st.sampled_from([0] + TTS_MODELS)) if tts == pb.TTS_STD else 0)
    for iid in draw(st.lists(st.sampled_from(EXTRAS), unique=True, max_size=4)):
        row = BOOK["items"][iid]
        if (row[6] & pb.F_INTENT and not intent) or (row[6] & pb.F_CHAT and llm != pb.CHAT):
            continue
        rating.add(rnd, iid, draw(st.integers(row[7], row[8])))
    assume(rnd)
    return rnd


def reference_total(rnd: dict) -> int:
    return sum(REF_PRICE[i] * e[0] * REF_MULT[pb.model_name(BOOK, e[1])] if e[1] else REF_PRICE[i] * e[0]
               for i, e in rnd.items())


@settings(max_examples=400)
@given(valid_rounds())
def test_total_is_the_sum_of_spec_prices_and_never_negative(rnd: dict) -> None:
    lines, total = rating.rate(BOOK, rnd)
    assert total == sum(ln[3] for ln in lines) == reference_total(rnd)
    assert total >= 0 and all(ln[3] >= 0 and ln[1] >= 0 and ln[2] >= 1 for ln in lines)
    assert [ln[0] for ln in lines] == sorted(rnd)


def prerequisites(rnd: dict, iid: int) -> dict:
    """The smallest valid context item iid needs: intent, chat, a (non-launching) radio."""
    row, ctx = BOOK["items"][iid], {}
    if row[6] & pb.F_INTENT and rnd[iid][0]:
        ctx[pb.INTENT] = [1, 0, 0, 0, 0]
    if row[6] & pb.F_CHAT:
        ctx[pb.CHAT] = [1, 0, 0, 0, 0]
    if row[4] == pb.G_TTS and rnd[iid][0] > 1:
        ctx[pb.RADIO] = [0, 0, 0, 0, 0]
    return ctx


@settings(max_examples=400)
@given(valid_rounds())
def test_rating_is_additive_over_components(rnd: dict) -> None:
    # each component rates the same alone (in its minimal valid context, whose cost is taken
    # off) as inside the round, and the round's total is the sum of its components
    parts = 0
    for iid in rnd:
        ctx = prerequisites(rnd, iid)
        alone = dict(ctx)
        alone[iid] = list(rnd[iid])
        parts += rating.total(BOOK, alone) - (rating.total(BOOK, ctx) if ctx else 0)
    assert rating.total(BOOK, rnd) == parts


@settings(max_examples=300)
@given(valid_rounds(llms=(pb.RADIO, pb.STORIES), ttss=(pb.TTS_LITE, pb.TTS_STD)), st.integers(1, 50))
def test_each_sentence_is_one_more_tts_call(rnd: dict, extra: int) -> None:
    (t,) = [i for i in rnd if BOOK["items"][i][4] == pb.G_TTS]
    assume(rnd[t][0] + extra <= pb.MAX_SENTENCES)
    more = {i: list(e) for i, e in rnd.items()}
    more[t][0] += extra
    per = BOOK["items"][t][2] * pb.multiplier(BOOK, rnd[t][1])
    assert rating.total(BOOK, more) == rating.total(BOOK, rnd) + extra * per


@settings(max_examples=400)
@given(valid_rounds())
def test_wire_round_trip_and_cbor2_agrees(rnd: dict) -> None:
    wire = rating.round_to_wire(rnd)
    data = cbor.dumps(wire)
    assert cbor2.loads(data) == wire
    assert cbor2.dumps(wire, canonical=True) == data
    back = rating.round_from_wire(cbor.loads(data))
    assert back == rnd
    assert rating.rate(BOOK, back) == rating.rate(BOOK, rnd)


_ints = st.integers(-(2 ** 40), 2 ** 40)
_entry = st.lists(st.one_of(_ints, st.booleans()), min_size=5, max_size=5)


@settings(max_examples=500)
@given(st.dictionaries(st.one_of(st.integers(-3, 30), st.text(max_size=2)), _entry, max_size=6))
def test_any_round_is_rated_non_negative_or_rejected(rnd: dict) -> None:
    try:
        lines, total = rating.rate(BOOK, rnd)
    except rating.RatingError as exc:
        assert exc.rule and str(exc).startswith(exc.rule)
        return
    assert total >= 0 and all(ln[3] >= 0 for ln in lines)


_json = st.recursive(st.one_of(st.none(), st.booleans(), _ints, st.text(max_size=3)),
                     lambda inner: st.lists(inner, max_size=7), max_leaves=30)


@settings(max_examples=500)
@given(_json)
def test_round_from_wire_never_crashes(obj) -> None:
    try:
        rnd = rating.round_from_wire(obj)
    except rating.RatingError as exc:
        assert exc.rule == "wire"
        return
    assert rating.round_to_wire(rnd) == obj      # only canonical arrays are accepted


_money = st.integers(0, 10 ** 9)


@st.composite
def accounts(draw) -> tuple[dict, int]:
    s = billing.new_account(draw(st.integers(-10 ** 7, 10 ** 8)))
    t0 = 1_780_000_000
    if draw(st.booleans()):
        s = billing.claim_trial(BOOK, s, t0 + draw(st.integers(0, 10 ** 7)))
    for pid in range(draw(st.integers(0, 3))):
        commit = draw(st.sampled_from([20, 99, 100, 2000, 2001, 5000, 20000])) * 1_000_000
        s = billing.buy_plan(BOOK, s, pid, commit, t0 + draw(st.integers(0, 10 ** 7)))
    return s, t0 + draw(st.integers(0, 4 * 10 ** 7))


@settings(max_examples=300)
@given(accounts(), _money)
def test_postpaid_charges_conserve_usage(acct: tuple[dict, int], usage: int) -> None:
    state, now = acct
    new, charges = billing.apply_postpaid(state, usage, now)
    assert sum(c[2] for c in charges if not c[0].startswith("forfeit")) == usage
    payg = sum(c[2] for c in charges if c[0] == "payg")
    assert new["balance"] == state["balance"] - payg
    assert new["suspended"] == (new["balance"] < 0)
    assert all(c[2] > 0 for c in charges)
    assert all(0 <= p["used"] <= p["cap"] and now < p["end"] for p in new["plans"])


@settings(max_examples=300)
@given(accounts(), _money, _money)
def test_postpaid_is_additive_over_aggregates(acct: tuple[dict, int], u1: int, u2: int) -> None:
    state, now = acct
    one, c_one = billing.apply_postpaid(state, u1 + u2, now)
    mid, c_a = billing.apply_postpaid(state, u1, now)
    two, c_b = billing.apply_postpaid(mid, u2, now)
    assert one == two

    def by_source(charges):
        out: dict = {}
        for kind, ref, lst, bp in charges:
            out[(kind, ref, bp)] = out.get((kind, ref, bp), 0) + lst
        return out
    assert by_source(c_one) == by_source(c_a + c_b)
    assert billing.invoice(c_one) == billing.invoice(c_a + c_b)
