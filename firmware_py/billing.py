"""Billing methods over rated usage: pure functions on plain dicts, time (Unix seconds) a parameter.

Usage amounts are list-price uCNY aggregates (sums of rating.rate totals, which are also pool
units). Nothing here rates a round or touches a clock. Calendar rules are civil.py's (C1..C4:
UTC+8 calendar, month-end clamping, half-open intervals).

Rounding, rule R: round_fen is the one rounding function. It takes an exact amount num/den uCNY
to a whole fen (1 fen = 10,000 uCNY), half away from zero, and is used at invoice level only,
on aggregated amounts (the cloud's invoice rounds its list total with it once and shares that
total out to the fen so that every column adds up: cloud.rounding). Everything before it is
exact integer arithmetic.

Postpaid (a state dict: {"trial": None|{"claimed","end","left"}, "plans": [plan...],
"balance": uCNY, "suspended": bool}; plan = {"id","bought","end","commit","bp","cap","used"}):
  P1. The free trial, book["trial"] = CNY 10 for 3 months: claimable once per account, valid on
      [claimed, claimed + 3 months), consumed first, at list price; the rest is forfeited at its end.
  P2. A savings plan's commitment (whole fen) maps to (discount bp, months) by the book's table
      with its exact boundaries (20 <= v < 100 -> 9500 bp, 3 months; 100 <= v <= 2,000 -> 9000 bp,
      a year; ... 400,000 < v <= 500,000 -> 5000 bp); anything else is rejected (plan-table).
      The plan covers list-price usage up to cap = commit * 10000 // bp (its commitment spent at
      the discounted rate; the floor loses under 1 uCNY), on [bought, bought + months).
  P3. After the trial, live plans offset usage, earliest end first (ties: lower id); a plan's
      unused capacity is forfeited at its end.
  P4. The rest is pay-as-you-go at list price from the cash balance, which may go below zero.
  P5. suspended == (balance < 0) after every usage and top-up: the account's balance cannot
      cover its usage and the service should be suspended until it is topped up.
  P6. Charges are tuples (kind, ref, list_ucny, bp) worth list_ucny * bp / 10000 uCNY exactly;
      kinds: trial, plan, payg, forfeit-trial, forfeit-plan; ref is the plan id (else 0).
      invoice() sums them per (kind, ref) and rounds each sum once (rule R).
  P7. A purchase (a savings plan's commitment, licences' devices x tier price) is paid either
      up front (a charge outside the balance: PAY_UPFRONT) or from the cash balance
      (PAY_BALANCE), which a purchase may not take below zero: pay() refuses it with the
      outcome "insufficient-balance" and changes nothing. Paid is paid: there are no refunds.
  P8. "New users receive a one-time CNY 10 trial": an account is new, and may claim the trial,
      while it has no trial yet, no usage and no purchase before the claim, and (when the
      operator's rule sets new_days > 0) the claim falls within new_days days of the account's
      creation, [created, created + new_days x 86400). trial_eligible() returns the first
      reason it is not: "trial-claimed", "not-new-usage", "not-new-purchase", "not-new-age".
  P9. Amounts stay inside the ledger's 64-bit columns whatever a device claims: a usage, price
      or top-up amount is at most LIMIT = 2**60 uCNY (about CNY 1.15 trillion; "amount-range"
      otherwise), a top-up may not take the balance above LIMIT ("amount-range"), and usage whose
      pay-as-you-go rest would take the balance below -LIMIT is refused whole: over_limit() says
      so of apply_postpaid's result, which the caller then discards (the cloud books the batch
      uncharged with a definite verdict, cloud.ingest G5). P5 suspends an account long before.
License (prepaid; rules L1..L4, no refunds: nothing here takes a purchase back):
  L1. A purchase (first or add-on) is a tier of the book and at least book["license"][0] = 100
      devices; every purchase of a workspace feeds that workspace's one pool.
  L2. Each license is activated within [bought, bought + 12 months); later it cannot be.
  L3. An activation's usage period is [activated, activated + 12 months): the spec's order of
      2026-07-01 activated 2026-10-01 runs until 2026-10-01 + 1 year = 2027-10-01.
  L4. An activation of n licenses grants n * the tier's allowance (pool units, book data) for its
      period; the pool is the live grants' sum, drawn earliest end first, a grant's rest being
      forfeited at its end.
Calculator, rule K: a device-year of a tier buys floor(allowance * sum(w) / sum(w * cost))
interactions of a mix of (round or scenario name, integer weight).

Errors: BillingError(ValueError) with .rule for caller mistakes; business outcomes (suspension,
a closed activation window, an uncovered pool draw) are returned values.
"""
from firmware_py import civil
from firmware_py import pricebook as pb
from firmware_py import rating

try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[no-redef,misc]
        return x

FEN = const(10000)
_BP = const(10000)
LIMIT = 1 << 60       # P9 (no const(): above MicroPython's small integers on 32-bit ports)


class BillingError(rating.RuleError):
    """A purchase, plan or account operation that breaks a rule; .rule names it."""


def _amount(v, what):
    if type(v) is not int or v < 0:
        raise BillingError("amount", "%s must be a non-negative integer, got %r" % (what, v))
    if v > LIMIT:
        raise BillingError("amount-range", "%s must be at most 2**60 uCNY, got %d" % (what, v))
    return v


def over_limit(state: dict) -> bool:
    """P9: whether the state's cash balance has left [-LIMIT, LIMIT] (the usage that led there
    is refused)."""
    return not -LIMIT <= state["balance"] <= LIMIT


def round_fen(num: int, den: int = 1) -> int:
    """num/den uCNY rounded to the fen, half away from zero, as uCNY (a multiple of 10,000).

    round_fen(14999) == 10000, round_fen(15000) == 20000, round_fen(-15000) == -20000,
    round_fen(5450 * 9000, 10000) == 0 (4905 uCNY is under half a fen).
    """
    if type(num) is not int or type(den) is not int or den <= 0:
        raise BillingError("amount", "round_fen needs integers and den > 0")
    if num < 0:
        return -round_fen(-num, den)
    return (2 * num + den * FEN) // (2 * den * FEN) * FEN


# ---- postpaid ---------------------------------------------------------------------------------

def new_account(balance: int = 0) -> dict:
    return {"trial": None, "plans": [], "balance": balance, "suspended": balance < 0}


def _copy(state):
    t = state["trial"]
    return {"trial": dict(t) if t else None, "plans": [dict(p) for p in state["plans"]],
            "balance": state["balance"], "suspended": state["suspended"]}


def claim_trial(book: dict, state: dict, now: int) -> dict:
    """P1: the state with the trial claimed at now; BillingError(trial-claimed) the second time."""
    if state["trial"] is not None:
        raise BillingError("trial-claimed", "the free trial is one-time")
    st = _copy(state)
    amount, months = book["trial"]
    st["trial"] = {"claimed": now, "end": civil.add_months(now, months), "left": amount}
    return st


TRIAL_NEW_DAYS = const(30)   # P8's default window; the operator's rule may change it (0: no limit)


def trial_eligible(state: dict, created: int, now: int, used: bool, purchased: bool,
                   new_days: int = TRIAL_NEW_DAYS):
    """P8: None when the account may claim the free trial at now, else the reason it may not."""
    if type(new_days) is not int or new_days < 0:
        raise BillingError("trial-rule", "new_days is an integer >= 0, got %r" % (new_days,))
    if state["trial"] is not None:
        return "trial-claimed"
    if used:
        return "not-new-usage"
    if purchased:
        return "not-new-purchase"
    if new_days and not created <= now < created + new_days * 86400:
        return "not-new-age"
    return None


def plan_terms(book: dict, commit_ucny: int) -> tuple:
    """P2: (discount_bp, months) of a commitment; BillingError(plan-table / plan-fen) otherwise."""
    _amount(commit_ucny, "commitment")
    if commit_ucny % FEN:
        raise BillingError("plan-fen", "a commitment is a whole number of fen")
    for lo, lo_in, hi, hi_in, bp, months in book["plans"]:
        if (lo < commit_ucny or (lo_in and lo == commit_ucny)) and \
                (commit_ucny < hi or (hi_in and hi == commit_ucny)):
            return (bp, months)
    raise BillingError("plan-table", "commitment of %d uCNY is outside the savings-plan table" % commit_ucny)


def buy_plan(book: dict, state: dict, plan_id: int, commit_ucny: int, now: int) -> dict:
    """P2: the state with a savings plan bought at now (its payment is pay(), P7)."""
    bp, months = plan_terms(book, commit_ucny)
    if any(p["id"] == plan_id for p in state["plans"]):
        raise BillingError("plan-id", "plan %r already held" % (plan_id,))
    st = _copy(state)
    st["plans"].append({"id": plan_id, "bought": now, "end": civil.add_months(now, months),
                        "commit": commit_ucny, "bp": bp, "cap": commit_ucny * _BP // bp, "used": 0})
    return st


def top_up(state: dict, ucny: int) -> dict:
    """P5: the state with ucny added to the cash balance and the flag recomputed."""
    st = _copy(state)
    st["balance"] += _amount(ucny, "top-up")
    if st["balance"] > LIMIT:
        raise BillingError("amount-range", "a top-up may not take the balance above 2**60 uCNY")
    st["suspended"] = st["balance"] < 0
    return st


PAY_UPFRONT = "upfront"
PAY_BALANCE = "balance"


def pay(state: dict, price_ucny: int, method: str) -> tuple:
    """P7: (new_state, None) with the purchase paid, or (state, "insufficient-balance")."""
    _amount(price_ucny, "price")
    if method == PAY_UPFRONT:
        return _copy(state), None
    if method != PAY_BALANCE:
        raise BillingError("pay-method", "a purchase is paid %r or %r, got %r" % (PAY_UPFRONT, PAY_BALANCE, method))
    if state["balance"] < price_ucny:
        return state, "insufficient-balance"
    st = _copy(state)
    st["balance"] -= price_ucny
    st["suspended"] = st["balance"] < 0
    return st, None


def apply_postpaid(state: dict, usage_ucny: int, now: int) -> tuple:
    """P1-P6: (new_state, charges) after list-price usage usage_ucny at time now.

    Expired trial/plans are forfeited first (and plans leave the state); then trial, plans
    (earliest end first), pay-as-you-go.
    """
    rest = _amount(usage_ucny, "usage")
    st = _copy(state)
    charges = []
    t = st["trial"]
    if t and now >= t["end"] and t["left"]:
        charges.append(("forfeit-trial", 0, t["left"], _BP))
        t["left"] = 0
    live = []
    for p in st["plans"]:
        if now >= p["end"]:
            if p["cap"] > p["used"]:
                charges.append(("forfeit-plan", p["id"], p["cap"] - p["used"], p["bp"]))
        else:
            live.append(p)
    live.sort(key=lambda p: (p["end"], p["id"]))
    st["plans"] = live
    if rest and t and t["claimed"] <= now < t["end"] and t["left"]:
        take = min(t["left"], rest)
        t["left"] -= take
        rest -= take
        charges.append(("trial", 0, take, _BP))
    for p in live:
        if rest and p["bought"] <= now:
            take = min(p["cap"] - p["used"], rest)
            if take:
                p["used"] += take
                rest -= take
                charges.append(("plan", p["id"], take, p["bp"]))
    if rest:
        st["balance"] -= rest
        charges.append(("payg", 0, rest, _BP))
    st["suspended"] = st["balance"] < 0
    return st, charges


def invoice(charges: list) -> dict:
    """P6 + R: {"lines": [(kind, ref, list_ucny, amount_ucny)], "list_ucny", "due_ucny"}.

    amount = round_fen(sum(list) * bp, 10000) per (kind, ref); due = the pay-as-you-go amount.
    """
    sums: dict = {}
    for kind, ref, lst, bp in charges:
        key = (kind, ref, bp)
        sums[key] = sums.get(key, 0) + lst
    lines = []
    list_total = due = 0
    for key in sorted(sums):
        kind, ref, bp = key
        amount = round_fen(sums[key] * bp, _BP)
        lines.append((kind, ref, sums[key], amount))
        if not kind.startswith("forfeit"):
            list_total += sums[key]
        if kind == "payg":
            due += amount
    return {"lines": lines, "list_ucny": list_total, "due_ucny": due}


# ---- License ----------------------------------------------------------------------------------

def _tier(book, tier):
    if type(tier) is str:
        try:
            return book["tiers"][pb.tier_id(book, tier)]
        except pb.PriceBookError as e:
            raise BillingError("unknown-tier", str(e))
    row = book["tiers"].get(tier)
    if row is None:
        raise BillingError("unknown-tier", "tier %r; known: %s" % (tier, ", ".join(sorted(book["tier_names"]))))
    return row


def allowance(book: dict, tier) -> int:
    """Pool units one license of tier grants for its year (L4; tier by name or id)."""
    return _tier(book, tier)[3]


def purchase(book: dict, tier, devices: int, now: int) -> dict:
    """L1: an order {"tier", "devices", "bought", "activate_by", "activated", "price_ucny"}."""
    row = _tier(book, tier)
    minimum, window, _ = book["license"]
    if type(devices) is not int or devices < minimum:
        raise BillingError("min-devices", "a purchase is at least %d devices, got %r" % (minimum, devices))
    return {"tier": row[0], "devices": devices, "bought": now,
            "activate_by": civil.add_months(now, window), "activated": 0, "price_ucny": devices * row[2]}


def usage_period(book: dict, activated: int) -> tuple:
    """L3: (start, end) of the usage period of a license activated at `activated`."""
    return (activated, civil.add_months(activated, book["license"][2]))


def activate(book: dict, order: dict, count: int, now: int) -> tuple:
    """L2-L4: (order, grant, reason). grant = {"start", "end", "units", "used"} or None.

    reason is None on success, "window-closed" at or after activate_by, "not-bought" before the
    purchase; activating more than the order's unactivated rest raises BillingError.
    """
    if type(count) is not int or count < 1 or order["activated"] + count > order["devices"]:
        raise BillingError("activate-count", "%r licenses; %d of %d left to activate"
                           % (count, order["devices"] - order["activated"], order["devices"]))
    if now < order["bought"]:
        return order, None, "not-bought"
    if now >= order["activate_by"]:
        return order, None, "window-closed"
    o = dict(order)
    o["activated"] += count
    start, end = usage_period(book, now)
    return o, {"start": start, "end": end, "units": count * allowance(book, order["tier"]), "used": 0}, None


def pool_available(grants: list, now: int) -> int:
    """L4: the units the live grants still hold at now."""
    return sum(g["units"] - g["used"] for g in grants if g["start"] <= now < g["end"])


def pool_draw(grants: list, units: int, now: int) -> tuple:
    """L4: (grants, taken, shortfall, forfeited): draw units earliest end first.

    Grants whose period ended leave the list; their unused units are `forfeited`.
    """
    rest = _amount(units, "units")
    live = []
    forfeited = 0
    for g in grants:
        if now >= g["end"]:
            forfeited += g["units"] - g["used"]
        else:
            live.append(dict(g))
    live.sort(key=lambda g: (g["end"], g["start"]))
    for g in live:
        if rest and g["start"] <= now:
            take = min(g["units"] - g["used"], rest)
            g["used"] += take
            rest -= take
    return live, units - rest, rest, forfeited


# ---- calculator -------------------------------------------------------------------------------

SCENARIOS = (
    ("standard-chat", {"asr": "standard", "intent": True, "tts": "standard", "llm": "chat"}),
    ("lite-chat", {"asr": "lite", "tts": "lite", "llm": "chat"}),
    ("text-chat", {"intent": True, "llm": "chat"}),
    ("kb", {"asr": "lite", "intent": True, "tts": "standard", "llm": "kb"}),
    ("translation", {"asr": "lite", "intent": True, "tts": "standard", "llm": "translation"}),
    ("video", {"asr": "lite", "intent": True, "tts": "standard", "llm": "video"}),
    ("radio", {"asr": "lite", "intent": True, "tts": "standard", "llm": "radio", "sentences": 10}),
)


def scenario(book: dict, name: str) -> dict:
    """The round of a named typical scenario (billing.txt's table; radio with 10 sentences)."""
    for n, flags in SCENARIOS:
        if n == name:
            return rating.from_flags(book, **flags)
    raise BillingError("unknown-mix", "scenario %r; known: %s" % (name, ", ".join(n for n, _ in SCENARIOS)))


def mix_cost(book: dict, mix: list) -> tuple:
    """(sum(w * cost), sum(w)) of a mix [(round or scenario name, weight), ...]."""
    num = den = 0
    for what, w in mix:
        if type(w) is not int or w < 0:
            raise BillingError("mix-weight", "weights are non-negative integers, got %r" % (w,))
        rnd = scenario(book, what) if type(what) is str else what
        num += w * rating.total(book, rnd)
        den += w
    if not num:
        raise BillingError("mix-free", "the mix costs nothing: interactions are unbounded")
    return num, den


def estimate(book: dict, tier, mix: list) -> int:
    """K: interactions one device-year of tier buys with the mix (for reference, like the
    purchase page's calculator: actual use depends on the real feature distribution)."""
    num, den = mix_cost(book, mix)
    return allowance(book, tier) * den // num
