"""The device meter: the SDK's round API over one DeviceSession, a Journal and a State store.
Runtime-neutral (MicroPython and CPython) and without sockets: the shell (firmware_py.main,
agent/) passes `now` (Unix seconds) in, publishes what publishes() returns on
proto.topic(ws, dev, suffix) with QoS 1, and feeds what arrives on the down topics to receive().

    m = Meter("/flash/em", ws, dev, kid, key, book, cfg)   # or journal=Journal(..), state=State(..)
    report = m.open(now)                    # recovery after a power cut; call once
    ok, code, rid = m.start_round(now, hint=0)     # before the SDK calls any cloud service
    m.record(rid, "asr-standard"); m.record(rid, "chat", model="qwen-max")
    code, ucny = m.end_round(rid, now)      # rated, deducted, journaled: OK, or a refusal
    m.tick(now); m.connected(now); m.receive(suffix, data, now)
    for suffix, data in m.publishes(): ...  # m.events() -> [(name, detail)]
    m.drain(now); ...publish, wait for acks...; m.close()

Codes (start_round, record, end_round; REASONS[code] is the text): OK and DEGRADED allow a
round; 2-6 are the lease's and the account's refusals (lease.VERDICTS, SUSPENDED);
JOURNAL_FULL, DISK_FULL, UNKNOWN_ROUND, TOO_MANY_OPEN, CLOSED.

Rules (M2-M4 and M7, storage and recovery, are in firmware_py.meter_base):
  M1. start_round answers from the account state (suspended), the lease and its offline policy
      (lease L3) for the caller's cost hint plus the hints of rounds already open, and from
      the journal's room (meter_base M3); a refused round gets no id. DEGRADED: serve with the light
      components only (LIGHT at the base model); other items are still billed as recorded,
      with an event "degrade_exceeded". end_round rates, deducts and journals (meter_base M2); an
      invalid round raises RatingError and stays open; a refused append keeps it open too.
      record refuses at once (RatingError count-range, nothing changed) a count that would
      take the item's calls in the round beyond the price book's max_count, which end_round
      could never bill: the components already recorded stay billable.
  M5. Agent sessions (billing.txt special cases): a launch item (pricebook U_LAUNCH: voice
      translation, news radio, children's stories) recorded with launch=None launches its
      agent (count 1) unless its session is open, when the round continues it (count 0: no
      launch fee; TTS may still count one call per spoken sentence, rating rule R10). A session
      ends on leave_agent(), when a round records another LLM capability or agent, or after
      cfg["agent_idle"] seconds without a round recording it. launch=True/False overrides.
      Tour-guide image analyses are recorded as "tour-guide-image" calls (one per analysis).
  M6. Unended rounds: a round with no start/record activity for cfg["round_timeout"] seconds
      is settled at the next start_round, tick or drain (drain settles every open round): its
      recorded components are billed like an ended round and journaled as settled; a round
      with nothing recorded is dropped ("round_dropped"); one the core rejects is dropped
      ("round_invalid", rule). A power cut loses open rounds (they live in RAM).
Caller mistakes (unknown item or model names, a meter not open) raise ValueError.
"""
from firmware_py import pricebook as pb, rating
from firmware_py import lease as L
from firmware_py.meter_base import (CFG, CLOSED, DEGRADED, DISK_FULL, JOURNAL_FULL, OK, REASONS,
                                    SUSPENDED, TOO_MANY_OPEN, UNKNOWN_ROUND, MeterBase)

__all__ = ("Meter", "CFG", "REASONS", "LIGHT", "OK", "DEGRADED", "SUSPENDED", "JOURNAL_FULL",
           "DISK_FULL", "UNKNOWN_ROUND", "TOO_MANY_OPEN", "CLOSED")
LIGHT = (pb.ASR_LITE, pb.TTS_LITE, pb.CHAT)
# module names for what start_round() and record() compare on every call: a builtin or another module's
# attribute costs MicroPython a table search (see rating.py)
_type, _int_t, _str_t = type, int, str
_U_LAUNCH, _G_LLM, _ALLOW, _DEGRADED = pb.U_LAUNCH, pb.G_LLM, L.ALLOW, L.DEGRADED


class Meter(MeterBase):
    """One device's meter: MeterBase(dirpath, ws, dev, kid, key, book, cfg, sync, sync_dir,
    journal, state, books) plus the round API (rules M1, M5, M6)."""

    def start_round(self, now, hint=None):
        """(allowed, code, round id) before a round (M1); the id is 0 when refused."""
        s = self._check()
        if hint is not None and (_type(hint) is not _int_t or hint < 0):
            raise ValueError("hint must be an estimated cost in uCNY (int >= 0)")
        if self.closing:
            return False, CLOSED, 0
        rounds = self.rounds
        if rounds:
            self._settle(now, False)
        nopen = len(rounds)
        if nopen >= self.cfg["max_open"]:
            return False, TOO_MANY_OPEN, 0
        if not self._room(nopen + 1):
            if self.npend:  # seal what waits (its age may never come: a clock set back)
                s.force = 1
                self._seal(now)
            self._compact(True)
            if not self._room(len(self.rounds) + 1):
                return False, JOURNAL_FULL, 0
        cost = hint or 0
        if rounds:
            for r in rounds.values():
                cost += r[3]
        v = s.allow(now, cost)
        if v != _ALLOW and v != _DEGRADED:
            if v == L.DENY_NO_LEASE or v == L.DENY_LAPSED or v == L.DENY_OFFLINE:
                self._run(s.tick(now))  # ask for a lease / renewal at once
            return False, v, 0
        self.nrid = (self.nrid + 1) & 0xFFFFF
        rid = ((s.boot & 0x3FF) << 20) | self.nrid
        rounds[rid] = [now, {}, v, hint or 0]
        return True, v, rid

    def record(self, rid, item, count=1, model=None, image=None, direct=False, launch=None,
               now=None):
        """Add components actually used to an open round: OK or UNKNOWN_ROUND (M5 for agents).
        item: a price-book item name or id; model: a model name or id (None: base)."""
        r = self.rounds.get(rid)
        if r is None:
            self._check()
            return UNKNOWN_ROUND
        book = self.s.book
        if _type(item) is _str_t:
            iid = book["item_names"].get(item)  # a name as the book spells it needs no norm()
            row = book["items"][pb.item_id(book, item) if iid is None else iid]
        else:
            row = book["items"].get(item) if _type(item) is _int_t else None
            if row is None:
                raise pb.PriceBookError("unknown item %r" % (item,))
        iid = row[0]
        mid = 0
        if _type(model) is _int_t:
            mid = model
        elif model is not None:
            hit = pb.model_lookup(book, model)
            if hit is None:
                raise rating.RatingError("unknown-model", "unknown model %r" % (model,))
            mid = hit[0]
        if now is not None and now > r[0]:
            r[0] = now
        if row[3] == _U_LAUNCH:
            count = 0 if iid in r[1] else self._launch(iid, launch, r[0])
        elif row[4] == _G_LLM and self.agents:
            self.agents = {}
        rnd = r[1]
        e = rnd.get(iid)
        if _type(count) is _int_t and (e[0] if e else 0) + count > row[8]:
            # M1: refused now, not at end: the round's other components stay billable
            raise rating.RatingError("count-range", "%s: %d in one round, at most %d" % (
                row[1], (e[0] if e else 0) + count, row[8]))
        if (e is None and image is None and not direct and _type(count) is _int_t and count >= 0
                and mid >= 0):
            rnd[iid] = [count, mid, 0, 0, 0]  # what rating.add does, on the per-round path
        else:
            rating.add(rnd, iid, count, mid, image, direct)
        if r[2] == _DEGRADED and (iid not in LIGHT or mid) and row[2]:
            self._event("degrade_exceeded", (rid, row[1]))
        return OK

    def _launch(self, iid, launch, t):
        last = self.agents.get(iid)
        if launch is None:
            new = last is None or t - last >= self.cfg["agent_idle"]
        else:
            new = bool(launch)
        self.agents = {iid: t}
        return 1 if new else 0

    def leave_agent(self, item=None):
        """End the open agent session of item (a launch item's name or id), or all (M5)."""
        if item is None:
            self.agents = {}
        else:
            iid = item if type(item) is int else pb.item_id(self._check().book, item)
            self.agents.pop(iid, None)

    def end_round(self, rid, now):
        """(code, uCNY): OK and the rated total, or a refusal; RatingError for an invalid
        round, which stays open (meter_base M2, M3). A round with nothing recorded costs 0."""
        self._check()
        r = self.rounds.get(rid)
        if r is None:
            return UNKNOWN_ROUND, 0
        if not r[1]:
            del self.rounds[rid]
            return OK, 0
        code, u = self._serve(r[1], now, False)
        if code == OK:
            del self.rounds[rid]
            self._seal(now)
        return code, u

    def _settle(self, now, every):
        if not self.rounds:
            return
        to = self.cfg["round_timeout"]
        for rid in [x for x in self.rounds if every or now - self.rounds[x][0] >= to]:
            rnd = self.rounds[rid][1]
            if not rnd:
                del self.rounds[rid]
                self._event("round_dropped", rid)
                continue
            try:
                code, u = self._serve(rnd, now, True)
            except rating.RatingError as exc:
                del self.rounds[rid]
                self._event("round_invalid", (rid, exc.rule))
                continue
            if code == OK:
                del self.rounds[rid]
                self._event("round_settled", (rid, u))
