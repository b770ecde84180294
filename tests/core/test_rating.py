# Rating core and price book against the golden vectors (runs on CPython and MicroPython).
import vec
from firmware_py import cbor
from firmware_py import pricebook as pb
from firmware_py import rating

BOOK = pb.default()


def cny_per_1000_to_ucny(text):
    """'5.45' CNY per 1,000 calls -> 5450 uCNY per call, without floats."""
    whole, _, frac = text.partition(".")
    return int(whole) * 1000 + int((frac + "000")[:3])


def build(spec):
    """A round from a vector: {"flags": {...}} | {"wire": [...]} | {"items": [[name, count, model]]}."""
    if "flags" in spec:
        return rating.from_flags(BOOK, **spec["flags"])
    if "wire" in spec:
        return rating.round_from_wire(spec["wire"])
    rnd = rating.round_new()
    for name, count, model in spec["items"]:
        mid = pb.model_lookup(BOOK, model)[0] if model else 0
        rating.add(rnd, pb.item_id(BOOK, name), count, mid)
    return rnd


def calls_by_name(lines):
    return dict((BOOK["items"][ln[0]][1], ln[1]) for ln in lines)


def test_book_items_match_the_spec():
    v = vec.load("rating_book")
    assert sorted(BOOK["items"]) == [row[1] for row in v["items"]]
    for name, iid, price, unit in v["items"]:
        row = pb.item(BOOK, iid)
        assert row[1] == name and row[2] == price, (name, row)
        assert pb.UNIT_NAMES[row[3]] == unit, (name, unit)
        assert pb.item_id(BOOK, name.upper()) == iid
    for name, tid, price, allowance in v["tiers"]:
        assert BOOK["tiers"][tid] == (tid, name, price, allowance)
    assert list(BOOK["trial"]) == v["trial"] and list(BOOK["license"]) == v["license"]
    assert list(BOOK["photo"]) == v["photo_max"] and BOOK["version"] == v["version"]


def test_book_cbor_round_trip_and_hash():
    data = pb.to_cbor(BOOK)
    assert len(data) < 1536
    again = pb.from_cbor(data)
    assert again["hash"] == BOOK["hash"] and len(BOOK["hash"]) == 32
    assert pb.to_cbor(again) == data
    import hashlib
    assert hashlib.sha256(data).digest() == BOOK["hash"]
    # the default book's hash is a constant (no encoding and hashing at a device's boot)
    assert pb.content_hash(pb.make(items=list(pb.ITEMS))) == pb.DEFAULT_HASH, (
        "the default tables changed: set pricebook.DEFAULT_HASH to content_hash(default())")
    # a new version (or any price change) is a different hash
    v2 = pb.make(version=2)
    assert v2["hash"] != BOOK["hash"]
    items = [list(r) for r in pb.ITEMS]
    items[5][2] = 2300
    assert pb.make(items=items)["hash"] != BOOK["hash"]


def test_book_from_cbor_rejects_malformed():
    good = cbor.loads(pb.to_cbor(BOOK))
    bad = []
    m = dict(good)
    del m[7]
    bad.append(m)
    m = dict(good)
    m[1] = [list(r) for r in good[1]] + [list(good[1][0])]          # duplicate item id
    bad.append(m)
    m = dict(good)
    m[1] = [r for r in good[1]][::-1]                                 # rows out of order
    bad.append(m)
    m = dict(good)
    m[2] = [[1, 3, 0, ["fun-asr"]]]                                   # multiplier 0
    bad.append(m)
    m = dict(good)
    m[4] = [list(good[4][1]), list(good[4][0])]                       # plan rows out of order
    bad.append(m)
    m = dict(good)
    m[0] = -1
    bad.append(m)
    m = dict(good)
    m[2] = [[1, 1, 3, ["Fun-ASR"]]]                                   # names are stored normalised
    bad.append(m)
    for b in bad:
        vec.raises(pb.PriceBookError, pb.from_cbor, cbor.dumps(b))
    vec.raises(ValueError, pb.from_cbor, b"\xff")
    vec.raises(pb.PriceBookError, pb.from_cbor, cbor.dumps([1, 2]))


def test_scenario_table_rows_are_exact():
    v = vec.load("rating_scenarios")
    for row in v["scenarios"]:
        rnd = build(row)
        lines, total = rating.rate(BOOK, rnd)
        assert total == row["total_ucny"], (row["name"], total)
        parts = [[BOOK["items"][ln[0]][1], ln[3]] for ln in lines]
        assert parts == row["parts"], (row["name"], parts)
        assert total == sum(p[1] for p in row["parts"]) == sum(ln[3] for ln in lines)
        stated = cny_per_1000_to_ucny(row["spec_cny_per_1000"])
        # Component prices are normative. The spec's lightweight row states 2.3 while its
        # parts 0.05 + 0.09 + 2.2 add to 2.34: the rated total follows the parts.
        assert total - stated == row.get("spec_differs_ucny", 0), (row["name"], total, stated)
        wire = rating.round_to_wire(rnd)
        assert wire == row["wire"], (row["name"], wire)
        assert vec.unhex(row["wire_hex"]) == cbor.dumps(wire)
        assert rating.round_from_wire(cbor.loads(cbor.dumps(wire))) == rnd


def test_lite_row_states_less_than_its_parts():
    row = [r for r in vec.load("rating_scenarios")["scenarios"] if r["name"] == "lite-chat"][0]
    assert cny_per_1000_to_ucny(row["spec_cny_per_1000"]) == 2300
    assert rating.total(BOOK, build(row)) == 50 + 90 + 2200 == 2340


def test_radio_and_stories_bill_one_tts_call_per_sentence():
    for r in vec.load("rating_scenarios")["radio_sentences"]:
        rnd = rating.from_flags(BOOK, asr="lite", intent=True, tts="standard", llm=r["llm"], sentences=r["n"])
        lines, total = rating.rate(BOOK, rnd)
        assert total == r["total_ucny"] == 50 + 800 + 1700 * r["n"] + 20
        assert calls_by_name(lines)["tts-standard"] == r["n"]


def test_every_multiplier():
    v = vec.load("rating_multipliers")
    base = v["base_ucny"]
    for name, comp, mult, canonical in v["models"]:
        mid, c = pb.model_lookup(BOOK, name)
        assert pb.model_name(BOOK, mid) == canonical, (name, mid)
        assert pb.multiplier(BOOK, mid) == mult, (name, mult)
        if comp == "asr":
            rnd = rating.from_flags(BOOK, asr_model=name)
            assert rating.rate(BOOK, rnd)[0] == [(pb.ASR_STD, 1, mult, base["asr"] * mult, mid)]
        elif comp == "tts":
            rnd = rating.from_flags(BOOK, tts_model=name)
            assert rating.total(BOOK, rnd) == base["tts"] * mult
        elif comp == "llm":
            assert rating.total(BOOK, rating.from_flags(BOOK, llm="chat", model=name)) == base["chat"] * mult
            # knowledge-base Q&A takes the selected LLM's multiplier on its own 3.70
            assert rating.total(BOOK, rating.from_flags(BOOK, llm="kb", model=name)) == base["kb"] * mult
        else:
            assert mid == 0 and mult == 1
    for name in v["unknown"]:
        assert pb.model_lookup(BOOK, name) is None, name
        def go():
            return rating.from_flags(BOOK, llm="chat", model=name)
        e = vec.raises(rating.RatingError, go)
        assert e.rule == "unknown-model" and "qwen-max" in str(e) and "deepseek*" in str(e)
    for name, mult, canonical in v["family_boundaries"]:
        hit = pb.model_lookup(BOOK, name)
        if mult is None:
            assert hit is None, (name, hit)
            continue
        assert hit is not None, name
        assert pb.multiplier(BOOK, hit[0]) == mult, (name, mult)
        assert pb.model_name(BOOK, hit[0]) == canonical, (name, canonical)
    for ex in v["examples"]:
        assert rating.total(BOOK, build(ex)) == ex["total_ucny"], ex


def test_every_rule_rejects():
    v = vec.load("rating_rules")
    seen = set()
    for case in v["reject"]:
        def go():
            return rating.rate(BOOK, build(case["round"]))
        e = vec.raises(rating.RatingError, go)
        assert e.rule == case["rule"], (case, e.rule, str(e))
        assert str(e).startswith(case["rule"])
        seen.add(e.rule)
    for rule in ("empty-round", "unknown-item", "count-range", "unknown-model", "model-scope",
                 "model-component", "one-asr", "one-tts", "one-llm", "needs-intent", "needs-chat",
                 "sentences-need-agent", "photo-scope", "photo-direct", "photo-size"):
        assert rule in seen, rule


def test_valid_edge_rounds():
    for case in vec.load("rating_rules")["valid"]:
        rnd = build(case["round"])
        lines, total = rating.rate(BOOK, rnd)
        assert total == case["total_ucny"], (case, total)
        calls = calls_by_name(lines)
        for name, n in case.get("calls", {}).items():
            assert calls[name] == n, (case, name, calls)
        if "wire" in case:
            assert rating.round_to_wire(rnd) == case["wire"], (case, rating.round_to_wire(rnd))
        assert total >= 0 and all(ln[3] >= 0 for ln in lines)


def test_quote_done_when():
    rnd = rating.from_flags(BOOK, asr="standard", intent=True, tts="standard", llm="chat")
    lines, total = rating.rate(BOOK, rnd)
    assert total == 5450
    assert lines == [(2, 1, 1, 750, 0), (4, 1, 1, 1700, 0), (5, 1, 1, 800, 0), (6, 1, 1, 2200, 0)]


def test_wire_good_vectors_and_budgets():
    v = vec.load("rating_wire")
    for g in v["good"]:
        data = cbor.dumps(g["wire"])
        assert data == vec.unhex(g["hex"]), g["name"]
        if "max_bytes" in g:
            assert len(data) <= g["max_bytes"], (g["name"], len(data))
        rnd = rating.round_from_wire(cbor.loads(data))
        assert rating.round_to_wire(rnd) == g["wire"]


def test_wire_rejects_non_canonical():
    v = vec.load("rating_wire")
    for bad in v["bad"]:
        e = vec.raises(rating.RatingError, rating.round_from_wire, bad)
        assert e.rule == "wire", (bad, e.rule)
    for h in v["bad_cbor_hex"]:
        def go():
            return rating.round_from_wire(cbor.loads(vec.unhex(h)))
        vec.raises(ValueError, go)
    e = vec.raises(rating.RatingError, rating.round_from_wire, list(range(1, 1 + v["too_many_entries"])))
    assert e.rule == "wire"


def test_builder_accumulates_and_conflicts():
    rnd = rating.round_new()
    rating.add(rnd, pb.ASR_LITE)
    rating.add(rnd, pb.INTENT)
    rating.add(rnd, pb.RADIO)
    for _ in range(12):
        rating.add(rnd, pb.TTS_STD)
    assert rating.total(BOOK, rnd) == 50 + 800 + 20 + 12 * 1700
    assert rating.round_to_wire(rnd) == [1, [4, 12], 5, 9]
    e = vec.raises(rating.RatingError, rating.add, rnd, pb.TTS_STD, 1, 3)
    assert e.rule == "add-conflict"
    vec.raises(ValueError, rating.add, rnd, 0)
    vec.raises(ValueError, rating.add, rnd, pb.CHAT, 1, -1)
    e = vec.raises(rating.RatingError, rating.add, rnd, pb.CHAT, -1)
    assert e.rule == "count-range"
    # a continuing translation round: the agent is on, no launch call
    cont = rating.add(rating.add(rating.round_new(), pb.ASR_LITE), pb.TRANSLATION, 0)
    lines, total = rating.rate(BOOK, cont)
    assert total == 50 and lines[-1] == (pb.TRANSLATION, 0, 1, 0, 0)
    assert rating.round_to_wire(cont) == [1, [8, 0]]


def test_parse_size():
    assert rating.parse_size("640x480") == (640, 480)
    assert rating.parse_size("1920X1080") == (1920, 1080)
    for bad in ("640", "x480", "640x", "-1x2", "6.4x4", "axb", "1x2x3"):
        vec.raises(ValueError, rating.parse_size, bad)


def test_rating_never_reads_a_missing_key():
    # malformed in-memory rounds raise RatingError, never KeyError/TypeError
    for rnd in ({6: [1]}, {6: "x"}, {"chat": [1, 0, 0, 0, 0]}, {6: [1, 0, 0, 0, True]}, [], None):
        vec.raises(rating.RatingError, rating.rate, BOOK, rnd)


def test_rate_wire_memo_gives_what_rating_gives():
    """rating.rate_wire (R15): the total and wire form of rate() and round_to_wire(), on a
    first call and on the memo's hits, every rule still enforced, per price book."""
    v = vec.load("rating_rules")
    for _ in range(2):
        for case in v["valid"]:
            rnd = build(case["round"])
            assert rating.rate_wire(BOOK, rnd) == (case["total_ucny"], rating.round_to_wire(rnd)), case
        for case in v["reject"]:
            def go():
                return rating.rate_wire(BOOK, build(case["round"]))
            assert vec.raises(rating.RatingError, go).rule == case["rule"], case
    std = rating.from_flags(BOOK, asr="standard", intent=True, tts="standard", llm="chat")
    assert rating.rate_wire(BOOK, std) == (5450, [2, 4, 5, 6])
    bad = {k: list(e) for k, e in std.items()}
    bad[pb.CHAT][0] = True                       # True == 1, but a bool is no count (R3)
    assert vec.raises(rating.RatingError, rating.rate_wire, BOOK, bad).rule == "count-range"
    book2 = pb.from_cbor(pb.to_cbor(BOOK))
    assert book2["hash"] == BOOK["hash"] and rating.rate_wire(book2, std) == (5450, [2, 4, 5, 6])
    w = rating.rate_wire(BOOK, std)[1]
    w.append(99)                                 # a caller's copy: the memo is not touched
    assert rating.rate_wire(BOOK, std)[1] == [2, 4, 5, 6]
