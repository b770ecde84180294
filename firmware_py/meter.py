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

Rules (the record formats and G1-G2 are in firmware_py.meter_log):
  M1. start_round answers from the account state (suspended), the lease and its offline policy
      (lease L3) for the caller's cost hint plus the hints of rounds already open, and from
      the journal's room (M3); a refused round gets no id. DEGRADED: serve with the light
      components only (LIGHT at the base model); other items are still billed as recorded,
      with an event "degrade_exceeded".
  M2. A round is accepted when end_round returns OK: rated by the core (rating.rate; an
      invalid round raises RatingError and stays open), deducted from the lease and its record
      journaled; nothing that end_round accepted is lost or counted twice across power cuts.
      The session's serial k of a round is its position among the journal's round records.
  M3. Room: start_round refuses JOURNAL_FULL unless the journal keeps cfg["reserve"] bytes
      for every open round plus cfg["headroom"] for seal records (so sealing, acks and hence
      compaction go on when rounds are refused). If an end_round's append is refused anyway
      (a larger round, ENOSPC) it returns JOURNAL_FULL/DISK_FULL, undoes the deduction and
      keeps the round open: the SDK may end it again; M6 settles it otherwise.
  M4. Persistence: the state store holds {0: DeviceSession.state(), 1: jp}, jp = the journal's
      next recno when it was written, so every round record below jp is in the state's counts
      and recovery re-deducts the ones from jp on (rule D6). A seal writes a seal record
      (before its publish) instead of the state; an ack's persist is deferred to the next
      checkpoint (every cfg["checkpoint"] rounds, when room runs low, at close): a lost ack
      only makes batches be resent, and the cloud books (dev, seq) once. The journal is
      compacted up to the round before the oldest unacked one, never past jp - 1.
  M5. Agent sessions (billing.txt special cases): a launch item (pricebook U_LAUNCH: voice
      translation, news radio, children's stories) recorded with launch=None launches its
      agent (count 1) unless its session is open, when the round continues it (count 0: no
      launch fee; TTS may still count one call per spoken sentence, rule R10). A session
      ends on leave_agent(), when a round records another LLM capability or agent, or after
      cfg["agent_idle"] seconds without a round recording it. launch=True/False overrides.
      Tour-guide image analyses are recorded as "tour-guide-image" calls (one per analysis).
  M6. Unended rounds: a round with no start/record activity for cfg["round_timeout"] seconds
      is settled at the next start_round, tick or drain (drain settles every open round): its
      recorded components are billed like an ended round and journaled as settled; a round
      with nothing recorded is dropped ("round_dropped"); one the core rejects is dropped
      ("round_invalid", rule). Open rounds live in RAM: a power cut loses them unbilled.
  M7. open() recovers: the journal's own recovery (report["journal"]), the state, unacked
      batches rebuilt from seal records and resent as retransmissions (G1-G2), rounds after
      jp re-deducted (D6), then DeviceSession.start (a boot counted, D5 gap fill).
Caller mistakes (unknown item or model names, a meter not open) raise ValueError.
"""
from firmware_py import meter_log as ML, pricebook as pb, proto as P, rating
from firmware_py import lease as L
from firmware_py.device_session import CFG as SESSION_CFG, DeviceSession
from firmware_py.journal import FULL, REFUSALS, Journal
from firmware_py.state import State

try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[no-redef,misc]
        return x

OK = const(0)
DEGRADED = const(1)
SUSPENDED = const(6)
JOURNAL_FULL = const(7)
DISK_FULL = const(8)
UNKNOWN_ROUND = const(9)
TOO_MANY_OPEN = const(10)
CLOSED = const(11)
REASONS = ("ok", "degraded") + L.VERDICTS[2:] + ("suspended", "journal full", "disk full",
                                                  "unknown round", "too many open rounds",
                                                  "meter closed")
LIGHT = (pb.ASR_LITE, pb.TTS_LITE, pb.CHAT)
CFG = {"round_timeout": 300, "agent_idle": 600, "max_open": 8, "reserve": 64, "headroom": 512,
       "checkpoint": 64, "ack_every": 32, "ram_rounds": 20, "max_bytes": 65536,
       "segment_bytes": 4096, "idle": 0, "max_events": 64}


class Meter:
    """One device's meter (rules M1-M7)."""

    def __init__(self, dirpath, ws, dev, kid, key, book=None, cfg=None, sync=None,
                 sync_dir=None, journal=None, state=None, books=None):
        c = dict(CFG)
        c.update(SESSION_CFG)
        cfg = cfg or {}
        for k in cfg:
            if k not in c:
                raise ValueError("meter cfg: unknown key %r" % (k,))
            c[k] = cfg[k]
        self.cfg = c
        if journal is None:
            if not dirpath:
                raise ValueError("Meter needs a directory or a Journal")
            journal = Journal(dirpath, c["max_bytes"], c["segment_bytes"], sync, sync_dir)
        self.j = journal
        d = journal.dir
        self.st = state or State(d + "/meter", sync, sync_dir)
        self.bs = books or State(d + "/book", sync, sync_dir)
        self.ws, self.dev, self.kid, self.key = ws, dev, kid, key
        self.book = book or pb.default()
        self.s: DeviceSession = None  # type: ignore[assignment]  # set by open()
        self.keep = max(c["ram_rounds"], c["batch"])
        self.out: list = []
        self.ev: list = []
        self.rounds: dict = {}  # rid -> [last activity, round dict, verdict, hint]
        self.agents: dict = {}  # launch item id -> last round time (M5)
        self.batches: dict = {}  # unacked seq -> recno of its first round
        self.pend: list = []  # head of the unsealed rounds: [(recno, rec)]
        self.npend = 0
        self.rd = 0
        self.jp = 0
        self.dirty = False
        self.since_cp = 0
        self.nrid = 0
        self.closing = False
        self.last_round = 0
        self.idled = False
        self.n_rounds = 0
        self.n_ucny = 0
        self.dropped_events = 0

    # ------------------------------------------------------------------ recovery
    def open(self, now):
        """Recover and start (M7): a report dict."""
        jrep = self.j.open()
        st = self.st.load() or {}
        book = self.book
        try:
            b = self.bs.load()
            if b and 0 in b:
                nb = pb.from_cbor(b[0])
                if nb["version"] > book["version"]:
                    book = nb
        except ValueError as exc:
            self._event("book_unreadable", str(exc))
        scfg = {}
        for k in SESSION_CFG:
            scfg[k] = self.cfg[k]
        s = self.s = DeviceSession(self.ws, self.dev, self.kid, self.key, book, st.get(0), (),
                                   scfg)
        self.book = s.book
        chunk: list = []
        rededucted = [0]

        def feed(rec):
            rec[0] = s.served + len(chunk) + 1
            chunk.append(rec)
            if len(chunk) >= 16:
                flush()

        def flush():
            for a in s.recover(chunk):
                if a[0] == "event":
                    self._event(a[1], a[2])
            rededucted[0] += len(chunk)
            del chunk[:]

        info = ML.scan(self.j, s.acked, st.get(1, 0), feed, self.keep)
        flush()
        for seq in sorted(info["seqs"]):
            boot, rs = info["seqs"][seq]
            s.outbox[seq] = self._rebuild(seq, boot, rs, now)
            if rs:
                self.batches[seq] = rs[0][0]
        s.next_seq = max(s.next_seq, info["top"] + 1)
        self.pend, self.npend, self.rd = info["pend"], info["npend"], info["rd"]
        self._run(s.start(now))
        if self.dirty or self.jp != self.j.next:
            self._write_state()
        self.last_round = now
        return {"journal": jrep, "state": self.st.report, "rededucted": rededucted[0],
                "resend": len(s.outbox), "unsealed": self.npend, "bad_records": info["bad"],
                "orphans": info["orphans"], "boot": s.boot}

    def _rebuild(self, seq, boot, rs, now):
        s = self.s
        if rs:
            t0 = min(r[1][1] for r in rs)
            ver, lid = rs[0][1][2], rs[0][1][3]
            rounds = [[r[1][1] - t0] + list(r[1][5]) for r in rs]
            ucny = sum(r[1][4] for r in rs)
        else:
            t0, ver, lid, rounds, ucny = max(now, 0), s.book["version"], 0, [], 0
        return P.seal(s.keys[s.kid], {"type": P.USAGE, "kid": s.kid, "dev": self.dev,
                                      "boot": boot or s.boot, "seq": seq, "ver": ver,
                                      "lease": lid, "t0": t0, "flags": P.RETX, "ucny": ucny,
                                      "rounds": rounds})

    # ------------------------------------------------------------------ executing actions
    def _write_state(self):
        self.st.save({0: self.s.state(), 1: self.j.next})
        self.jp = self.j.next
        self.dirty = False
        self.since_cp = 0

    def _event(self, name, detail):
        self.ev.append((name, detail))
        if len(self.ev) > self.cfg["max_events"]:
            self.ev.pop(0)
            self.dropped_events += 1

    def _run(self, acts):
        n = len(acts)
        for i in range(n):
            a = acts[i]
            k = a[0]
            if k == "publish":
                self.out.append((a[1], a[2]))
            elif k == "persist":
                if i + 1 < n and acts[i + 1][0] == "acked":
                    self.dirty = True  # M4: an ack's persist waits for the checkpoint
                else:
                    self._write_state()
            elif k == "acked":
                for seq in [q for q in self.batches if q <= a[1]]:
                    del self.batches[seq]
                self._compact(False)
            elif k == "event":
                self._event(a[1], a[2])
            elif k == "book":
                self.bs.save({0: a[1]})
                self.book = self.s.book
            # "outbox" comes only from start()'s empty re-seals (D5): redone at each start

    def _free(self):
        return self.j.max_bytes - self.j.used_bytes

    def _room(self, nopen):
        return self._free() >= self.cfg["headroom"] + self.cfg["reserve"] * nopen

    def _compact(self, force):
        j = self.j
        if self.batches:
            first = min(self.batches.values())
        elif self.pend:
            first = self.pend[0][0]
        else:
            first = j.next
        low = not self._room(len(self.rounds) + 1)
        if first - 1 > self.jp - 1 and (low or force):
            self._write_state()
        lim = min(first - 1, self.jp - 1)
        if lim > j.acked and (force or low or lim - j.acked >= self.cfg["ack_every"]):
            j.ack_through(lim)

    # ------------------------------------------------------------------ the round API
    def _check(self):
        if self.s is None:
            raise ValueError("meter not open: call open(now) first")
        return self.s

    def start_round(self, now, hint=None):
        """(allowed, code, round id) before a round (M1); the id is 0 when refused."""
        s = self._check()
        if hint is not None and (type(hint) is not int or hint < 0):
            raise ValueError("hint must be an estimated cost in uCNY (int >= 0)")
        if self.closing:
            return False, CLOSED, 0
        self._settle(now, False)
        if len(self.rounds) >= self.cfg["max_open"]:
            return False, TOO_MANY_OPEN, 0
        if not self._room(len(self.rounds) + 1):
            self._compact(True)
            if not self._room(len(self.rounds) + 1):
                return False, JOURNAL_FULL, 0
        cost = hint or 0
        for r in self.rounds.values():
            cost += r[3]
        v = s.allow(now, cost)
        if v != L.ALLOW and v != L.DEGRADED:
            if v == L.DENY_NO_LEASE or v == L.DENY_LAPSED or v == L.DENY_OFFLINE:
                self._run(s.tick(now))  # ask for a lease / renewal at once
            return False, v, 0
        self.nrid = (self.nrid + 1) & 0xFFFFF
        rid = ((s.boot & 0x3FF) << 20) | self.nrid
        self.rounds[rid] = [now, {}, v, hint or 0]
        return True, v, rid

    def record(self, rid, item, count=1, model=None, image=None, direct=False, launch=None,
               now=None):
        """Add components actually used to an open round: OK or UNKNOWN_ROUND (M5 for agents).
        item: a price-book item name or id; model: a model name or id (None: base)."""
        book = self._check().book
        r = self.rounds.get(rid)
        if r is None:
            return UNKNOWN_ROUND
        if type(item) is int:
            if item not in book["items"]:
                raise pb.PriceBookError("unknown item %r" % (item,))
            iid = item
        else:
            iid = pb.item_id(book, item)
        row = book["items"][iid]
        mid = 0
        if type(model) is int:
            mid = model
        elif model is not None:
            hit = pb.model_lookup(book, model)
            if hit is None:
                raise rating.RatingError("unknown-model", "unknown model %r" % (model,))
            mid = hit[0]
        if now is not None and now > r[0]:
            r[0] = now
        if row[3] == pb.U_LAUNCH:
            count = 0 if iid in r[1] else self._launch(iid, launch, r[0])
        elif row[4] == pb.G_LLM:
            self.agents = {}
        rating.add(r[1], iid, count, mid, image, direct)
        if r[2] == L.DEGRADED and (iid not in LIGHT or mid) and row[2]:
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
        round, which stays open (M2, M3). A round with nothing recorded costs 0."""
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

    def _serve(self, rnd, now, settled):
        s = self.s
        k0, u0 = s.served, s.lease.used
        rec, acts = s.serve(rnd, now)
        try:
            r = self.j.append(ML.enc_round(rec, settled))
        except OSError:
            s.served, s.lease.used = k0, u0
            raise
        if r < 0:
            s.served, s.lease.used = k0, u0
            self._event("round_refused", REFUSALS[r])
            return (JOURNAL_FULL if r == FULL else DISK_FULL), 0
        self.since_cp += 1
        if self.rd or len(self.pend) >= self.keep:
            if not self.rd:
                self.rd = r
        else:
            self.pend.append((r, rec))
        self.npend += 1
        self.n_rounds += 1
        self.n_ucny += rec[4]
        self.last_round = now
        self.idled = False
        self._run(acts)
        return OK, rec[4]

    def _settle(self, now, every):
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

    # ------------------------------------------------------------------ sealing and timers
    def _seal(self, now):
        s = self.s
        while self.npend:
            if self.rd and len(self.pend) < self.keep:
                got, self.rd = ML.head(self.j, self.rd, self.keep - len(self.pend))
                self.pend += got
            pend = self.pend
            if not s.seal_due(self.npend, pend[0][1][1], now):
                return
            force = s.force
            n, acts = s.seal([x[1] for x in pend], now)
            if not n:
                return
            seq = s.next_seq - 1
            r = self.j.append(ML.enc_seal(seq, s.boot, pend[0][0], pend[n - 1][0]))
            if r < 0:  # G2: no seal record, no publish; the rounds stay unsealed
                s.next_seq = seq
                del s.outbox[seq]
                s.force = force
                self._event("seal_refused", REFUSALS[r])
                return
            self.batches[seq] = pend[0][0]
            del pend[:n]
            self.npend -= n
            if self.npend and force:
                s.force = force
            self.dirty = True  # M4: the seal record stands for the seal's persist
            self.out.append((acts[2][1], acts[2][2]))

    def tick(self, now):
        """Timers: unended rounds (M6), batches due, retransmissions and lease messages,
        idle lease return (cfg["idle"] seconds, 0: never), checkpoint and compaction (M4)."""
        s = self._check()
        self._settle(now, False)
        self._seal(now)
        self._run(s.tick(now))
        idle = self.cfg["idle"]
        if (idle and not self.idled and not self.rounds and now - self.last_round >= idle
                and s.lease.st != L.NONE):
            self.idled = True
            self._run(s.idle(now))
        if self.since_cp >= self.cfg["checkpoint"]:
            self._write_state()
        self._compact(False)

    def connected(self, now):
        """The link is up (after every CONNACK): resend unacked batches (D4)."""
        self._run(self._check().connected(now))
        self._seal(now)

    def receive(self, suffix, data, now):
        """A message from a down topic (suffix "down/ack" etc.)."""
        self._run(self._check().receive(data, now, suffix))
        self._seal(now)

    def drain(self, now, release=True):
        """Before a clean shutdown: settle every open round (M6), seal every pending round,
        and, when release, return the lease (lease L8). Publish, wait for acks, then close()."""
        s = self._check()
        self.closing = True
        self._settle(now, True)
        s.force = 1
        self._seal(now)
        if release and not s.postpaid:
            self._run(s.idle(now))

    def close(self):
        """Checkpoint the state, compact, close the journal."""
        if self.s is not None:
            self._write_state()
            self._compact(True)
        self.j.close()

    # ------------------------------------------------------------------ outputs
    def publishes(self):
        """[(topic suffix, bytes)] to publish QoS 1, oldest first (taken: the list empties)."""
        out = self.out
        self.out = []
        return out

    def events(self):
        """[(name, detail)] since the last call (at most cfg["max_events"] kept)."""
        ev = self.ev
        self.ev = []
        return ev

    def topic(self, suffix):
        return P.topic(self.ws, self.dev, suffix)

    def status(self):
        """A dict for logs, the SDK and the local API."""
        s = self._check()
        ls = s.lease
        return {"dev": self.dev, "boot": s.boot, "served": s.served, "seq": s.next_seq - 1,
                "acked": s.acked, "unacked": len(s.outbox), "unsealed": self.npend,
                "open": len(self.rounds), "suspended": s.suspended, "postpaid": s.postpaid,
                "lease": ls.lease, "lease_state": L.STATES[ls.st], "remaining": ls.remaining(),
                "used": ls.used, "book": s.book["version"], "rounds": self.n_rounds,
                "ucny": self.n_ucny, "journal_free": self._free(),
                "journal_bytes": self.j.bytes_written, "state_bytes": self.st.bytes_written}
