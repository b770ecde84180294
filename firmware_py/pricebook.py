"""The price book: every priced item, model multiplier and billing constant of billing.txt as data.

A book is a plain dict built by make() from tuples (the default one by default()), encoded to
deterministic CBOR by to_cbor() and decoded and validated by from_cbor(), so the cloud can push
a new version to devices. book["hash"] is sha256(to_cbor(book)): two books are the same iff
their hashes are. Rules of the book (rating.py applies them):

  B1. Money is integer uCNY. "CNY X per 1,000 calls" is X*1000 uCNY per call (0.75 -> 750).
  B2. Items have small stable uint ids (they travel on the wire). Each item row is
      (id, name, price_ucny, unit, group, comp, flags, min_count, max_count).
      unit: U_ROUND per interaction round, U_LAUNCH per agent launch, U_IMAGE per proactive
      image analysis, U_USE per use (counted; free or settled elsewhere). TTS is U_ROUND, but a
      round holding an F_SENT item (news radio, children's stories) counts one TTS call per
      spoken sentence. group: at most one item of G_ASR, of G_TTS and of G_LLM per round.
  B3. A multiplier applies to the standard price of its component: ASR 0.75, TTS 1.70, chat
      2.20, KB 3.70 per 1,000 calls. Only F_MODEL items take a model; knowledge-base Q&A takes
      the selected LLM's multiplier. Model 0 is the base model (1x) of every component.
  B4. Model rows are (id, comp, multiplier, names). A name ending in "*" is a family prefix
      (deepseek*: every name starting with "deepseek"). A name resolves to its exact entry,
      else to the family with the LONGEST prefix it starts with (character prefix, after
      norm()), else to nothing. A spec exception is therefore a longer family row, as data:
      "deepseek series except v4pro" is deepseek* (4x) beside deepseek-v4-pro* and
      deepseek-v4pro* (8x), so deepseek-v4-pro-0901 is 8x and deepseek-v4-flash 4x. Names are
      matched lower-case with hyphens for spaces; the first name of a row is its display name.
  B5. Flags: F_INTENT needs intent recognition in the round (when the item has calls: an agent
      round that continues a session has count 0); F_CHAT is covered by casual chat, which must
      be in the round; F_SENT allows TTS count > 1; F_PHOTO needs direct connection mode and an
      image within PHOTO (640x480, either orientation); F_MODEL accepts a model multiplier.
  B6. Tiers (id, name, price_ucny per device-year, allowance pool units per device-year);
      1 pool unit = 1 uCNY of rated list-price usage, multipliers included. The default
      allowance is the tier's price: a License device-year buys its price of list-price usage.
  B7. Savings plans (lo, lo_incl, hi, hi_incl, discount_bp, months) in uCNY, exact table
      boundaries; trial (amount_ucny, months); license (min_devices, activate_months,
      usage_months).

Errors: PriceBookError(ValueError) with .reason for a malformed book (from_cbor/make);
the CBOR layer's own CBORError passes through for bytes that are not CBOR at all.
"""
import hashlib

from firmware_py import cbor

try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[no-redef,misc]
        return x

VERSION = const(1)

# item ids (wire)
ASR_LITE = const(1)
ASR_STD = const(2)
TTS_LITE = const(3)
TTS_STD = const(4)
INTENT = const(5)
CHAT = const(6)
KB = const(7)
TRANSLATION = const(8)
RADIO = const(9)
STORIES = const(10)
PHOTO_BALANCED = const(11)
PHOTO_PREMIUM = const(12)
VIDEO = const(13)
PHOTO_TRANSLATION = const(14)
TOUR_GUIDE = const(15)
TOUR_IMAGE = const(16)
WEB_SEARCH = const(17)
MEMORY = const(18)
PLUGIN = const(19)
INSTRUCTION = const(20)
MS_AGENT = const(21)
MS_PLUGIN = const(22)
MINUTES = const(23)

U_ROUND = const(0)
U_LAUNCH = const(1)
U_IMAGE = const(2)
U_USE = const(3)
UNIT_NAMES = ("round", "agent launch", "proactive image analysis", "use")

G_ASR = const(1)
G_TTS = const(2)
G_INTENT = const(3)
G_LLM = const(4)
G_EXTRA = const(5)

C_NONE = const(0)
C_ASR = const(1)
C_TTS = const(2)
C_LLM = const(3)
COMP_NAMES = ("none", "asr", "tts", "llm")

F_INTENT = const(1)
F_CHAT = const(2)
F_SENT = const(4)
F_PHOTO = const(8)
F_MODEL = const(16)
_FLAGS = const(31)

MAX_SENTENCES = const(10000)
MAX_IMAGES = const(1000)
MAX_USES = const(100)

# The tables below are made only of literals and const() names, so the compiler folds each into
# one constant tuple: in a frozen firmware they stay in flash, not in the heap.
_I = const(F_INTENT)
ITEMS = (
    (ASR_LITE, "asr-lite", 50, U_ROUND, G_ASR, C_ASR, 0, 1, 1),
    (ASR_STD, "asr-standard", 750, U_ROUND, G_ASR, C_ASR, F_MODEL, 1, 1),
    (TTS_LITE, "tts-lite", 90, U_ROUND, G_TTS, C_TTS, 0, 1, MAX_SENTENCES),
    (TTS_STD, "tts-standard", 1700, U_ROUND, G_TTS, C_TTS, F_MODEL, 1, MAX_SENTENCES),
    (INTENT, "intent", 800, U_ROUND, G_INTENT, C_NONE, 0, 1, 1),
    (CHAT, "chat", 2200, U_ROUND, G_LLM, C_LLM, F_MODEL, 1, 1),
    (KB, "kb", 3700, U_ROUND, G_LLM, C_LLM, F_MODEL, 1, 1),
    (TRANSLATION, "translation", 5700, U_LAUNCH, G_LLM, C_NONE, _I, 0, 1),
    (RADIO, "radio", 20, U_LAUNCH, G_LLM, C_NONE, _I | F_SENT, 0, 1),
    (STORIES, "stories", 20, U_LAUNCH, G_LLM, C_NONE, _I | F_SENT, 0, 1),
    (PHOTO_BALANCED, "photo-balanced", 180, U_ROUND, G_LLM, C_NONE, _I | F_PHOTO, 1, 1),
    (PHOTO_PREMIUM, "photo-premium", 12000, U_ROUND, G_LLM, C_NONE, _I, 1, 1),
    (VIDEO, "video", 12000, U_ROUND, G_LLM, C_NONE, _I, 1, 1),
    (PHOTO_TRANSLATION, "photo-translation", 12000, U_ROUND, G_LLM, C_NONE, _I, 1, 1),
    (TOUR_GUIDE, "tour-guide", 1200, U_ROUND, G_LLM, C_NONE, _I, 1, 1),
    (TOUR_IMAGE, "tour-guide-image", 1200, U_IMAGE, G_EXTRA, C_NONE, 0, 1, MAX_IMAGES),
    (WEB_SEARCH, "web-search", 0, U_USE, G_EXTRA, C_NONE, _I, 1, MAX_USES),
    (MEMORY, "memory", 0, U_USE, G_EXTRA, C_NONE, 0, 1, MAX_USES),
    (PLUGIN, "plugin", 0, U_USE, G_EXTRA, C_NONE, _I | F_CHAT, 1, MAX_USES),
    (INSTRUCTION, "instruction", 0, U_USE, G_EXTRA, C_NONE, _I | F_CHAT, 1, MAX_USES),
    (MS_AGENT, "ms-agent", 0, U_USE, G_LLM, C_NONE, _I, 1, 1),
    (MS_PLUGIN, "ms-plugin", 0, U_USE, G_EXTRA, C_NONE, _I, 1, MAX_USES),
    (MINUTES, "minutes", 0, U_USE, G_LLM, C_NONE, _I, 1, 1),
)

MODELS = (
    (1, C_ASR, 3, ("fun-asr",)),
    (2, C_ASR, 3, ("qwen3-asr-flash-realtime",)),
    (3, C_TTS, 3, ("cosyvoice-v3-plus",)),
    (4, C_TTS, 3, ("qwen3-tts*",)),
    (5, C_LLM, 2, ("qwen3.7-plus",)),
    (6, C_LLM, 2, ("qwen3.6-plus",)),
    (7, C_LLM, 2, ("qwen-max",)),
    (8, C_LLM, 2, ("qwen3-coder-plus",)),
    (9, C_LLM, 4, ("deepseek*",)),
    (10, C_LLM, 4, ("glm*",)),
    (11, C_LLM, 4, ("kimi*",)),
    (12, C_LLM, 4, ("minimax*",)),
    (13, C_LLM, 4, ("qwen3.5-omni-flash",)),
    (14, C_LLM, 6, ("qwen3.6-max",)),
    (15, C_LLM, 8, ("qwen3.7-max",)),
    (16, C_LLM, 8, ("qwen3.5-omni-plus", "qwen3.5-omni-plus-text")),
    (17, C_LLM, 8, ("deepseek-v4-pro", "deepseek-v4-pro*", "deepseek-v4pro*")),   # B4: the exception
    (18, C_LLM, 13, ("qwen3.5-omni-plus-audio",)),
    (19, C_LLM, 13, ("farui-plus",)),
    (20, C_LLM, 32, ("qwen-deep-research",)),
)

TIERS = (
    (1, "trial", 2000000, 2000000),
    (2, "basic", 5000000, 5000000),
    (3, "standard", 10000000, 10000000),
)

_M = const(1000000)
PLANS = (
    (20 * _M, True, 100 * _M, False, 9500, 3),
    (100 * _M, True, 2000 * _M, True, 9000, 12),
    (2000 * _M, False, 5000 * _M, True, 8500, 12),
    (5000 * _M, False, 20000 * _M, True, 8000, 12),
    (20000 * _M, False, 50000 * _M, True, 7500, 12),
    (50000 * _M, False, 100000 * _M, True, 7000, 12),
    (100000 * _M, False, 200000 * _M, True, 6500, 12),
    (200000 * _M, False, 300000 * _M, True, 6000, 12),
    (300000 * _M, False, 400000 * _M, True, 5500, 12),
    (400000 * _M, False, 500000 * _M, True, 5000, 12),
)
TRIAL = (10 * _M, 3)
LICENSE = (100, 12, 12)
PHOTO = (640, 480)


class PriceBookError(ValueError):
    def __init__(self, reason: str):
        super().__init__("price book: " + reason)
        self.reason = reason

    def __str__(self):
        return "price book: " + self.reason


def norm(name: str) -> str:
    """The matching form of a user-given name: stripped, lower-case, spaces and '_' as '-'."""
    return "-".join(name.strip().lower().replace("_", " ").split())


def _uint(v, what, lo=0, hi=0xFFFFFFFFFFFF):
    if type(v) is not int or v < lo or v > hi:
        raise PriceBookError("%s: %r is not an integer in %d..%d" % (what, v, lo, hi))
    return v


def _tup(v, n, what):
    if not isinstance(v, (list, tuple)) or (n and len(v) != n):
        raise PriceBookError("%s: expected an array of %d" % (what, n))
    return tuple(v)


def make(version=VERSION, items=ITEMS, models=MODELS, tiers=TIERS, plans=PLANS,
         trial=TRIAL, lic=LICENSE, photo=PHOTO) -> dict:
    """Validate the tables and build the book dict with its name indexes and content hash."""
    b: dict = {"version": _uint(version, "version"), "items": {}, "item_names": {}, "models": {},
         "model_names": {}, "families": [], "tiers": {}, "tier_names": {}}
    for row in items:
        row = _tup(row, 9, "item")
        iid = _uint(row[0], "item id", 1, 65535)
        name = row[1]
        if type(name) is not str or not name or norm(name) != name or name in b["item_names"]:
            raise PriceBookError("item %d: bad or duplicate name %r" % (iid, name))
        _uint(row[2], "item %d price" % iid)
        _uint(row[3], "item %d unit" % iid, 0, U_USE)
        _uint(row[4], "item %d group" % iid, 1, G_EXTRA)
        _uint(row[5], "item %d comp" % iid, 0, C_LLM)
        _uint(row[6], "item %d flags" % iid, 0, _FLAGS)
        _uint(row[8], "item %d max" % iid, _uint(row[7], "item %d min" % iid, 0, 1), 1000000)
        if iid in b["items"] or (row[6] & F_MODEL and row[5] == C_NONE):
            raise PriceBookError("item %d: duplicate id or model flag without component" % iid)
        b["items"][iid] = row
        b["item_names"][name] = iid
    for row in models:
        row = _tup(row, 4, "model")
        mid = _uint(row[0], "model id", 1, 65535)
        _uint(row[1], "model %d comp" % mid, 1, C_LLM)
        _uint(row[2], "model %d multiplier" % mid, 1, 1000)
        names = _tup(row[3], 0, "model %d names" % mid)
        if mid in b["models"] or not names:
            raise PriceBookError("model %d: duplicate id or no name" % mid)
        for n in names:
            if type(n) is not str or not n or norm(n) != n or n in b["model_names"] or n == "base":
                raise PriceBookError("model %d: bad or duplicate name %r" % (mid, n))
            if n.endswith("*"):
                b["families"].append((n[:-1], mid))
            b["model_names"][n] = mid
        b["models"][mid] = row if names is row[3] else (mid, row[1], row[2], names)
    b["families"].sort(key=lambda f: (-len(f[0]), f[0]))   # B4: longest prefix first
    for row in tiers:
        row = _tup(row, 4, "tier")
        tid = _uint(row[0], "tier id", 1, 255)
        if tid in b["tiers"] or type(row[1]) is not str or row[1] in b["tier_names"]:
            raise PriceBookError("tier %d: duplicate id or bad name" % tid)
        _uint(row[2], "tier %d price" % tid)
        _uint(row[3], "tier %d allowance" % tid)
        b["tiers"][tid] = row
        b["tier_names"][row[1]] = tid
    prev = -1
    out = []
    for row in plans:
        row = _tup(row, 6, "plan")
        lo, lo_in, hi, hi_in = _uint(row[0], "plan lo"), row[1], _uint(row[2], "plan hi"), row[3]
        if (type(lo_in) is not bool or type(hi_in) is not bool or lo > hi or lo < prev
                or (lo == prev and lo_in)):
            raise PriceBookError("plan rows must be ordered, non-overlapping ranges")
        _uint(row[4], "plan discount bp", 1, 10000)
        _uint(row[5], "plan months", 1, 120)
        prev = hi if hi_in else hi - 1
        out.append(row)
    b["plans"] = tuple(out)
    b["trial"] = (_uint(trial[0], "trial amount"), _uint(trial[1], "trial months", 1, 120))
    b["license"] = tuple(_uint(v, "license", 1, 100000) for v in _tup(lic, 3, "license"))
    b["photo"] = (_uint(photo[0], "photo w", 1, 65535), _uint(photo[1], "photo h", 1, 65535))
    dflt = (version == VERSION and items is ITEMS and models is MODELS and tiers is TIERS
            and plans is PLANS and trial is TRIAL and lic is LICENSE and photo is PHOTO)
    b["hash"] = DEFAULT_HASH if dflt else content_hash(b)
    return b


# content_hash(default()), kept as a constant so a device does not encode and hash the default
# book at boot; tests/core/test_rating.py checks it against content_hash of the tables above.
DEFAULT_HASH = b"\x56\x3e\x73\xe7\x8c\x4f\xd2\x07\xce\x10\xde\x89\x92\xd9\xb3\xc0\x3a\xe8\x2e\xc9\xd1\x11\xfb\xe5\xb7\xda\xb5\x0a\x14\x38\x2d\x7b"


def content_hash(book: dict) -> bytes:
    """sha256 of the book's deterministic CBOR (to_cbor): the identity of its contents."""
    return hashlib.sha256(to_cbor(book)).digest()


def to_cbor(book: dict) -> bytes:
    """Deterministic CBOR of the book: {0: version, 1: items, 2: models, 3: tiers, 4: plans,
    5: trial, 6: license, 7: photo}; rows sorted by id, as arrays in their tuple order."""
    # rows go in as the book's own tuples (CBOR arrays like lists): no copies, less heap
    items = [book["items"][k] for k in sorted(book["items"])]
    models = [book["models"][k] for k in sorted(book["models"])]
    tiers = [book["tiers"][k] for k in sorted(book["tiers"])]
    return cbor.dumps({0: book["version"], 1: items, 2: models, 3: tiers, 4: book["plans"],
                       5: book["trial"], 6: book["license"], 7: book["photo"]})


def from_cbor(data) -> dict:
    """The book encoded in data; PriceBookError when it is CBOR but not a valid book."""
    m = cbor.loads(data, max_depth=4, max_items=4096)
    if type(m) is not dict or sorted(m) != list(range(8)):
        raise PriceBookError("expected a map with keys 0..7")
    for k in (1, 2, 3, 4):
        _tup(m[k], 0, "table %d" % k)
    b = make(m[0], m[1], m[2], m[3], m[4], _tup(m[5], 2, "trial"), _tup(m[6], 3, "license"),
             _tup(m[7], 2, "photo"))
    if to_cbor(b) != bytes(data):
        raise PriceBookError("rows are not in canonical order")
    return b


_DEFAULT = None


def default() -> dict:
    """The book of billing.txt (built once)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = make()
    return _DEFAULT


def item(book: dict, iid: int) -> tuple:
    """The item row of iid; KeyError-free: PriceBookError when unknown."""
    row = book["items"].get(iid)
    if row is None:
        raise PriceBookError("unknown item %r" % (iid,))
    return row


def item_id(book: dict, name: str) -> int:
    """The id of the item called name (see norm); PriceBookError listing known names."""
    iid = book["item_names"].get(norm(name))
    if iid is None:
        raise PriceBookError("unknown item %r; known: %s" % (name, ", ".join(sorted(book["item_names"]))))
    return iid


def model_lookup(book: dict, name: str):
    """(model id, component) of name by rule B4, or None. 'base' is (0, C_NONE)."""
    n = norm(name)
    if n == "base":
        return (0, C_NONE)
    mid = book["model_names"].get(n)
    if mid is None:
        for prefix, fid in book["families"]:
            if n.startswith(prefix):
                mid = fid
                break
    if mid is None:
        return None
    return (mid, book["models"][mid][1])


def model_names(book: dict, comp: int = 0) -> list:
    """Sorted known model names (of one component when comp is given), families as 'prefix*'."""
    return sorted(n for n, mid in book["model_names"].items() if not comp or book["models"][mid][1] == comp)


def model_name(book: dict, mid: int) -> str:
    """The canonical name of model mid ('base' for 0, 'deepseek*' for the family)."""
    if mid == 0:
        return "base"
    row = book["models"].get(mid)
    return row[3][0] if row else "model-%d" % mid


def multiplier(book: dict, mid: int) -> int:
    return 1 if mid == 0 else book["models"][mid][2]


def tier_id(book: dict, name: str) -> int:
    tid = book["tier_names"].get(norm(name))
    if tid is None:
        raise PriceBookError("unknown tier %r; known: %s" % (name, ", ".join(sorted(book["tier_names"]))))
    return tid
