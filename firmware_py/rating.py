"""Rating: one interaction round in, rated lines and a total in integer uCNY out, exact.

The round in memory is a dict {item_id: [count, model, w, h, direct]} (pricebook ids):
count = calls of that item in the round (TTS: spoken sentences under radio/stories; launch
items: 1 = this round launched the agent, 0 = it continues an agent session and carries no
launch call), model = model id (0 = base, 1x), w/h = image size and direct = 1 in direct
connection mode (photo balanced only; 0 elsewhere). Build it with round_new() and add(), or
from_flags() (the names `edgemeter quote` takes, shared with the agent).

rate(book, rnd) -> (lines, total_ucny); a line is (item, calls, multiplier, ucny, model),
ucny = price * calls * multiplier, lines ordered by item id, total = sum of the lines.
Discounts never apply here: they act on aggregates (billing.py). An invalid round raises
RatingError whose .rule is one of:
  R1  empty-round          a round rates at least one item
  R2  unknown-item         every item id is in the book
  R3  count-range          min_count <= count <= max_count (integers; no bools, no negatives)
  R4  unknown-model        every model id is in the book
  R5  model-scope          a model only on F_MODEL items: standard ASR/TTS, chat, KB
  R6  model-component      the model belongs to the item's component (ASR/TTS/LLM)
  R7  one-asr / one-tts / one-llm   at most one item of each of those groups per round
  R8  needs-intent         an F_INTENT item with calls needs intent recognition in the round
  R9  needs-chat           built-in plugins and instructions are covered by casual chat
  R10 sentences-need-agent TTS count > 1 only with news radio / children's stories
  R11 photo-scope          image size / direct flag only on photo balanced
  R12 photo-direct         photo balanced only in direct connection mode
  R13 photo-size           photo balanced needs its image size, at most 640x480 (either way)
  R14 wire                 round_from_wire: the array is not a canonical round
  R15 memo                 rate_wire() keeps the last few results (at most _MEMO_MAX rounds; 0: off)
                           with the price book's hash and a copy of the round: a round whose
                           entries are ints by type (True is not 1) and equal to a kept one's
                           under the same book gets its total and wire form, not rated again
Building a round adds: add-conflict (an item added again with another model/image/mode),
sentences-need-tts (from_flags: sentences without a TTS tier), images-need-tour-guide
(from_flags: proactive image analyses without the tour guide).

Wire form (docs/rating.md, Wire form): an array of entries in increasing item id, each in its
shortest form: `item` (count 1, base model), `[item, count]`, `[item, count, model]`, or
`[item, count, model, w, h, direct]`. The standard voice chat round is [2, 4, 5, 6] (5 bytes
of CBOR), the lightweight one [1, 3, 6] (4 bytes).
"""
from firmware_py import pricebook as pb

try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[no-redef,misc]
        return x

_MAX_ENTRIES = const(64)
# Builtins bound to module names: on MicroPython a builtin is found by a search of the builtins
# table after a miss in the module's globals (~1,000 Cortex-M3 instructions for `type(v) is
# int`), a module name by one hash lookup (~250). Used on the per-round path.
_type, _int_t, _list_t, _len, _sorted = type, int, list, len, sorted
_GROUP_RULE = {pb.G_ASR: "one-asr", pb.G_TTS: "one-tts", pb.G_LLM: "one-llm"}
# flags of items that carry a rule across items (R8, R9, R11-R13); R10 applies to any TTS
# count above 1
_CROSS = pb.F_INTENT | pb.F_CHAT | pb.F_PHOTO | pb.F_SENT


class RuleError(ValueError):
    """A value that breaks a named billing rule: .rule names it, str() is 'rule: detail'.
    The base of RatingError here and billing.BillingError."""

    def __init__(self, rule: str, detail: str = ""):
        self.msg = rule + ": " + detail if detail else rule
        super().__init__(self.msg)
        self.rule = rule

    def __str__(self):
        return self.msg


class RatingError(RuleError):
    """An invalid round; .rule names the broken rule (R1..R14)."""


def _int(v) -> bool:
    return type(v) is int


def round_new() -> dict:
    return {}


def add(rnd: dict, item: int, count: int = 1, model: int = 0, image=None, direct=False) -> dict:
    """Add count calls of item to rnd (counts of the same item accumulate); returns rnd.

    image is (w, h) or None; a repeated item must repeat its model, image and direct flag.
    """
    if not (_int(item) and item > 0 and _int(model) and model >= 0):
        raise ValueError("add: item > 0 and model >= 0 must be integers")
    if not (_int(count) and count >= 0):
        raise RatingError("count-range", "count %r of item %d is not a non-negative integer" % (count, item))
    w, h = image if image else (0, 0)
    if not (_int(w) and _int(h) and w >= 0 and h >= 0):
        raise ValueError("add: image must be (w, h) integers")
    entry = [count, model, w, h, 1 if direct else 0]
    old = rnd.get(item)
    if old is None:
        rnd[item] = entry
    elif old[1:] != entry[1:]:
        raise RatingError("add-conflict", "item %d added again with another model/image/mode" % item)
    else:
        old[0] += count
    return rnd


def _entry(rnd, iid):
    e = rnd[iid]
    # the per-round hot path: inline checks, no generator (MicroPython allocates one per call)
    if not (_type(e) is _list_t and _len(e) == 5 and _type(e[0]) is _int_t and _type(e[1]) is _int_t
            and _type(e[2]) is _int_t and _type(e[3]) is _int_t and _type(e[4]) is _int_t):
        raise RatingError("count-range", "item %r: entry must be [count, model, w, h, direct] ints" % (iid,))
    return e


def validate(book: dict, rnd: dict) -> None:
    """Raise RatingError for the first broken rule (checked in R order per item id)."""
    _validated(book, rnd)


def _validated(book: dict, rnd: dict) -> list:
    """validate(); returns the round's item ids in increasing order."""
    if _type(rnd) is not dict or not rnd:
        raise RatingError("empty-round", "a round rates at least one item")
    seen: dict = {}
    has: dict = {}
    tts_many = 0
    for iid in rnd:
        if _type(iid) is not _int_t:
            raise RatingError("unknown-item", "item ids are integers, got %r" % (iid,))
    ids = _sorted(rnd)
    items = book["items"]
    for iid in ids:
        row = items.get(iid)
        if row is None:
            raise RatingError("unknown-item", "item %r is not in price book v%d" % (iid, book["version"]))
        count, model, w, h, direct = _entry(rnd, iid)
        if not row[7] <= count <= row[8]:
            raise RatingError("count-range", "%s count %d outside %d..%d" % (row[1], count, row[7], row[8]))
        if model:
            m = book["models"].get(model)
            if m is None:
                raise RatingError("unknown-model", "model id %d is not in price book v%d" % (model, book["version"]))
            if not row[6] & pb.F_MODEL:
                raise RatingError("model-scope", "%s takes no model (multipliers apply to standard ASR/TTS, chat, kb)" % row[1])
            if m[1] != row[5]:
                raise RatingError("model-component", "%s is a %s model, %s needs %s"
                                  % (m[3][0], pb.COMP_NAMES[m[1]], row[1], pb.COMP_NAMES[row[5]]))
        if (w or h or direct) and not row[6] & pb.F_PHOTO:
            raise RatingError("photo-scope", "%s carries no image size or direct flag" % row[1])
        g = row[4]
        if g == pb.G_TTS and count > 1:
            tts_many = 1
        if g in _GROUP_RULE:
            if g in seen:
                raise RatingError(_GROUP_RULE[g], "%s and %s in one round" % (seen[g], row[1]))
            seen[g] = row[1]
        has[iid] = row
    flags = 0
    for row in has.values():
        flags |= row[6]
    if not flags & _CROSS and not tts_many:
        return ids                   # no rule across items (R8-R13) can apply to this round
    for iid in ids:                  # MicroPython dicts are unordered: fix the check order
        row = has[iid]
        f = row[6]
        if f & pb.F_INTENT and rnd[iid][0] and pb.INTENT not in has:
            raise RatingError("needs-intent", "%s needs intent recognition in the round" % row[1])
        if f & pb.F_CHAT and pb.CHAT not in has:
            raise RatingError("needs-chat", "%s is covered by casual chat, which the round lacks" % row[1])
        if row[4] == pb.G_TTS and rnd[iid][0] > 1 and not flags & pb.F_SENT:
            raise RatingError("sentences-need-agent", "%s count %d > 1 without news radio/stories" % (row[1], rnd[iid][0]))
        if f & pb.F_PHOTO:
            _, _, w, h, direct = rnd[iid]
            if not direct:
                raise RatingError("photo-direct", "%s is valid only in direct connection mode" % row[1])
            pw, ph = book["photo"]
            if not w or not h or max(w, h) > max(pw, ph) or min(w, h) > min(pw, ph):
                raise RatingError("photo-size", "%s needs an image of at most %dx%d, got %dx%d" % (row[1], pw, ph, w, h))
    return ids


def rate(book: dict, rnd: dict):
    """(lines, total_ucny) of a valid round; RatingError otherwise (see R1..R13)."""
    lines = []
    total = 0
    items = book["items"]
    for iid in _validated(book, rnd):
        e = rnd[iid]
        count, model = e[0], e[1]
        mult = 1 if model == 0 else book["models"][model][2]   # pricebook.multiplier
        ucny = items[iid][2] * count * mult
        lines.append((iid, count, mult, ucny, model))
        total += ucny
    return lines, total


_MEMO: list = []   # [book hash, copy of the round, total, wire], the newest last
_MEMO_MAX = const(0)   # off: each kept round costs ~350 B, which the 32 KiB loop cannot spare


def rate_wire(book: dict, rnd: dict):
    """(total uCNY, round_to_wire(rnd)) of a valid round, the same as rate() and
    round_to_wire() give (R15); RatingError otherwise."""
    if _type(rnd) is not dict:
        rate(book, rnd)
    for iid in rnd:
        e = rnd[iid]
        if not (_type(iid) is _int_t and _type(e) is _list_t and _len(e) == 5 and _type(e[0]) is _int_t
                and _type(e[1]) is _int_t and _type(e[2]) is _int_t and _type(e[3]) is _int_t
                and _type(e[4]) is _int_t):
            return rate(book, rnd)[1], round_to_wire(rnd)  # raises the rule that is broken
    h = book["hash"]
    for m in _MEMO:   # entries are ints by type, so == is exact (no True == 1, 1.0 == 1)
        if m[1] == rnd and m[0] == h:
            return m[2], _list_t(m[3])
    total = rate(book, rnd)[1]
    wire = round_to_wire(rnd)
    if _MEMO_MAX:
        if _len(_MEMO) >= _MEMO_MAX:
            _MEMO.pop(0)
        _MEMO.append([h, {k: _list_t(rnd[k]) for k in rnd}, total, wire])
    return total, _list_t(wire)


def total(book: dict, rnd: dict) -> int:
    return rate(book, rnd)[1]


def round_to_wire(rnd: dict) -> list:
    """The canonical wire array of rnd (see the module docstring); no timestamp."""
    out: list = []
    for iid in _sorted(rnd):
        e = _entry(rnd, iid)
        count, model = e[0], e[1]
        if e[2] or e[3] or e[4]:
            w, h, direct = e[2], e[3], e[4]
            out.append([iid, count, model, w, h, direct])
        elif model:
            out.append([iid, count, model])
        elif count != 1:
            out.append([iid, count])
        else:
            out.append(iid)
    return out


def round_from_wire(obj) -> dict:
    """The round of a wire array; RatingError(rule 'wire') unless it is canonical (R14).

    Structure only: rate() applies the price book's rules.
    """
    if not isinstance(obj, (list, tuple)) or not obj or len(obj) > _MAX_ENTRIES:
        raise RatingError("wire", "a round is a non-empty array of at most %d entries" % _MAX_ENTRIES)
    rnd: dict = {}
    prev = 0
    for i, e in enumerate(obj):
        if _int(e):
            v = [e, 1, 0, 0, 0, 0]
        elif isinstance(e, (list, tuple)) and len(e) in (2, 3, 6):
            v = list(e) + [0, 0, 0, 0][:6 - len(e)]
        else:
            raise RatingError("wire", "entry %d is neither an item id nor [item, count, ...]" % i)
        if not all(_int(x) and 0 <= x <= 0xFFFFFFFF for x in v) or v[0] <= prev or v[5] > 1:
            raise RatingError("wire", "entry %d: unsigned ints, item ids increasing, direct 0/1" % i)
        canon = round_to_wire({v[0]: v[1:]})[0]
        if canon != (list(e) if not _int(e) else e):
            raise RatingError("wire", "entry %d is not in its shortest form" % i)
        prev = v[0]
        rnd[v[0]] = v[1:]
    return rnd


def _model(book, name, comp, what):
    if name is None:
        return 0
    hit = pb.model_lookup(book, name)
    if hit is None:
        raise RatingError("unknown-model", "unknown %s model %r; known: %s"
                          % (what, name, ", ".join(["base"] + pb.model_names(book, comp))))
    if hit[0] and hit[1] != comp:
        raise RatingError("model-component", "%r is a %s model, not %s" % (name, pb.COMP_NAMES[hit[1]], what))
    return hit[0]


def from_flags(book: dict, asr=None, asr_model=None, tts=None, tts_model=None, intent=False,
               llm=None, model=None, sentences=None, images=None, image=None, direct=False) -> dict:
    """The round described by `edgemeter quote` flags (names per pricebook.norm).

    asr/tts: 'lite' | 'standard' (a model name implies 'standard'); llm: a G_LLM item name;
    model: the LLM's model; sentences: TTS calls (radio/stories); images: proactive image
    analyses of the tour guide (tour-guide-image calls); image (w, h) and direct matter only to
    photo balanced and are dropped for other items. Unknown names raise RatingError
    (unknown-model / unknown-item) listing the known names.
    """
    rnd: dict = {}
    for tier, mname, comp, ids in ((asr, asr_model, pb.C_ASR, (pb.ASR_LITE, pb.ASR_STD)),
                                   (tts, tts_model, pb.C_TTS, (pb.TTS_LITE, pb.TTS_STD))):
        what = pb.COMP_NAMES[comp]
        if tier is None and mname is None:
            if comp == pb.C_TTS and sentences is not None:
                raise RatingError("sentences-need-tts", "spoken sentences are TTS calls: choose a TTS tier")
            continue
        t = pb.norm(tier) if tier else "standard"
        if t not in ("lite", "standard"):
            raise RatingError("unknown-item", "%s tier %r; known: lite, standard" % (what, t))
        count = sentences if comp == pb.C_TTS and sentences is not None else 1
        add(rnd, ids[t == "standard"], count, _model(book, mname, comp, what))
    if intent:
        add(rnd, pb.INTENT)
    if llm is None:
        if model is not None:
            raise RatingError("model-scope", "a model needs an LLM capability (chat or kb)")
    else:
        iid = book["item_names"].get(pb.norm(llm))
        if iid is None or book["items"][iid][4] != pb.G_LLM:
            names = sorted(n for n, i in book["item_names"].items() if book["items"][i][4] == pb.G_LLM)
            raise RatingError("unknown-item", "LLM capability %r; known: %s" % (llm, ", ".join(names)))
        photo = book["items"][iid][6] & pb.F_PHOTO
        add(rnd, iid, 1, _model(book, model, pb.C_LLM, "llm"), image if photo else None, direct and photo)
    if images:
        if llm is None or pb.norm(llm) != "tour-guide":
            raise RatingError("images-need-tour-guide", "proactive image analyses belong to the tour guide")
        add(rnd, pb.TOUR_IMAGE, images)
    return rnd


def parse_size(text: str) -> tuple:
    """(w, h) of 'WxH' (e.g. '640x480'); ValueError otherwise."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not parts[0].isdigit() or not parts[1].isdigit():
        raise ValueError("image size must be WxH, e.g. 640x480: %r" % (text,))
    return (int(parts[0]), int(parts[1]))
