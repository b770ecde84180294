"""The device side of the protocol, sans-io: the one object the MicroPython firmware loop and
the Linux agent drive. Inputs: rounds served, message bytes received, `now` (Unix seconds).
Outputs: actions, tuples the shell executes IN ORDER:

    ("persist", state)         store the state bytes durably (atomic replace) before going on
    ("outbox", seq, data)      store the sealed batch durably until ("acked", a >= seq)
    ("publish", suffix, data)  publish QoS 1 on proto.topic(ws, dev, suffix); dropping it
                               while offline is fine (retransmission covers it)
    ("acked", seq)             every batch <= seq is booked: drop it from the outbox
    ("book", data)             store the new price book (pricebook.from_cbor at next start)
    ("event", name, detail)    for logs and the SDK (names in the README's Protocol section);
                               "rejected" carries (reason code, words for people): the codes
                               are REJECTED's indexes, 1-4 those of proto.CHECKS

A served round is a record rec = [k, t, ver, lease, ucny, wire] (serial, effective time,
price-book version, lease id or 0, rated uCNY, rating.round_to_wire) that the shell journals;
seal() turns journaled records into a batch.
  D1. Sequence numbers start at 1 and never repeat: next_seq travels in the "persist" that
      precedes the batch's "outbox" and "publish" (docs/protocol.md, Sequencing).
  D2. At most cfg["window"] batches are unacked; seal() seals nothing beyond (the journal
      keeps the rounds), and one batch holds one (price-book version, lease) pair (proto W4).
  D3. Acks are cumulative: ack a drops every batch <= a; an ack above the last sealed seq is
      bogus (event "bad_ack") and changes nothing.
  D4. Unacked batches are resent, flagged RETX and re-signed, after cfg["rto"] seconds,
      doubling to cfg["rto_max"] while no ack advances, and at once on connected().
  D5. start() counts a boot (persisted) and re-seals every seq between acked and next_seq
      missing from the outbox (lost between persist and store) as an empty batch, so the
      cloud's cumulative ack never stalls; its rounds, still unsealed in the journal, go out
      again under a new seq.
  D6. recover(recs) after a power cut deducts again every journaled round served after the
      last persist (serial k above the persisted count), so the lease is exact.
  D7. Downlink is acted on only after its tag verifies (proto W1) and when fresh (W3): grants
      by gn (lease L6), commands by cn, price books by version; otherwise an event.
  D8. suspend stops every round (verdict SUSPENDED) until resume; postpaid devices (cfg
      "postpaid") send batches with lease 0 and never ask for a lease.
  D9. Key rotation: the unwrapped key is persisted before its first use; the old key still
      verifies downlink until a downlink signed with the new kid arrives.
  D10. The firmware version the shell gives (firmware=...) is reported once per boot, in a
      FIRMWARE message after the first connect (a control message: fresh by boot and n).
Errors: a state or outbox that is not ours raises SessionError(ValueError); rating.RatingError
from serve() is the caller's (validate rounds first); bad received bytes only make events.
"""
from firmware_py import cbor, pricebook, proto as P, rating
from firmware_py import lease as L

try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[no-redef,misc]
        return x

SUSPENDED = const(6)  # a verdict beyond lease.VERDICTS: the account is suspended
CFG = {"batch": 10, "age": 60, "window": 4, "rto": 30, "rto_max": 480, "retry": 60,
       "want": 0, "postpaid": 0, "skew": 300}
_FORMAT = const(1)


# Why a received downlink was refused: ("event", "rejected", (code, text)). Codes 1-4 are
# proto.check's (malformed, unknown key id, bad MAC, wrong device); text is for people only.
R_WRONG_TOPIC = const(5)      # an uplink type, or a type on another type's topic
R_POSTPAID_GRANT = const(6)   # a grant to a device billed postpaid
R_KID_IN_USE = const(7)       # a key rotation to a key id the device already holds
R_BAD_BOOK = const(8)         # a pushed price book that does not decode or names another version
REJECTED = P.CHECK_REASONS + ("wrong_topic", "postpaid_grant", "kid_in_use", "bad_book")


class SessionError(ValueError):
    pass


class DeviceSession:
    """One device's protocol session (rules D1-D9)."""

    def __init__(self, ws, dev, kid, key, book, state=None, outbox=(), cfg=None, firmware=""):
        c = dict(CFG)
        self.firmware = firmware   # reported once per boot at the first connect (D10); "": never
        self.firmware_told = 0
        if cfg:
            c.update(cfg)
        self.cfg, self.ws, self.dev, self.book = c, ws, dev, book
        self.postpaid = 1 if c["postpaid"] else 0
        if state:
            try:
                s = cbor.loads(state, max_depth=3)
                if type(s) is not list or len(s) != 10 or s[0] != _FORMAT:
                    raise ValueError("not a device session state")
                (_, self.boot, self.next_seq, self.acked, self.served, self.cn,
                 self.suspended, self.kid, self.keys, ls) = s
                self.lease = L.DeviceLease(ls)
            except ValueError as exc:
                raise SessionError("state: %s" % exc)
        else:
            self.boot, self.next_seq, self.acked, self.served, self.cn = 0, 1, 0, 0, 0
            self.suspended, self.kid, self.keys = 0, kid, {kid: bytes(key)}
            self.lease = L.DeviceLease()
        self.outbox: dict = {}
        for data in outbox:
            try:
                msg = P.unseal(data)[0]
            except ValueError as exc:
                raise SessionError("outbox: %s" % exc)
            if msg["type"] != P.USAGE:
                raise SessionError("outbox: not a usage batch")
            if msg["seq"] > self.acked:
                self.outbox[msg["seq"]] = bytes(data)
        self.n = 0
        self.tx_at = 0
        self.rto = c["rto"]
        self.force = 0
        self.rolled = 0
        self.ev: list = []

    # ------------------------------------------------------------------ state and signing
    def state(self):
        """The persistent state as bytes (what "persist" carries)."""
        return cbor.dumps([_FORMAT, self.boot, self.next_seq, self.acked, self.served,
                           self.cn, self.suspended, self.kid, self.keys, self.lease.state()])

    def _persist(self):
        return ("persist", self.state())

    def _sign(self, msg):
        msg["kid"] = self.kid
        msg["dev"] = self.dev
        return P.seal(self.keys[self.kid], msg)

    def _ctl(self, msg):
        self.n += 1
        msg["boot"] = self.boot
        msg["n"] = self.n
        return ("publish", P.suffix(msg["type"]), self._sign(msg))

    def _events(self):
        if not self.lease.ev and not self.ev:
            return []
        out = []
        for e in self.lease.ev + self.ev:
            if e[0] == "clock_rollback":
                self.rolled = 1
            out.append(("event", e[0], e[1]))
        self.lease.ev = []
        self.ev = []
        return out

    # ------------------------------------------------------------------ lifecycle
    def start(self, now):
        """Count a boot (D5); call once after construction, before anything else."""
        t = self.lease.clock(now)
        self.boot += 1
        acts = [self._persist()]
        for seq in range(self.acked + 1, self.next_seq):
            if seq not in self.outbox:
                b = self._sign({"type": P.USAGE, "boot": self.boot, "seq": seq,
                                "ver": self.book["version"], "lease": 0, "t0": t,
                                "flags": P.RETX, "ucny": 0, "rounds": []})
                self.outbox[seq] = b
                acts.append(("outbox", seq, b))
                self.ev.append(("gap_filled", seq))
        if not self.postpaid and self.lease.st == L.NONE:
            self.lease.request()
        return acts + self._events()

    def recover(self, recs):
        """Re-deduct the journaled rounds served after the last persist (D6)."""
        for r in recs:
            if r[0] > self.served:
                self.served = r[0]
                if r[3] and r[3] == self.lease.lease:
                    self.lease.used += r[4]
                self.lease.hw = max(self.lease.hw, r[1])
        return [self._persist()] + self._events()

    def connected(self, now):
        """The link is up: resend every unacked batch and pending lease message (D4)."""
        t = self.lease.clock(now)
        self.rto = self.cfg["rto"]
        acts = self._resend(t) + self._poll(t, 0) + self.status(now)
        if self.firmware and not self.firmware_told:   # D10
            self.firmware_told = 1
            acts.append(self._ctl({"type": P.FIRMWARE, "version": self.firmware.encode()}))
        return acts

    def idle(self, now):
        """Return the lease on idle or shutdown (lease L8)."""
        t = self.lease.clock(now)
        if self.postpaid or not self.lease.release(t):
            return self._events()
        return self._poll(t, 0) + [self._persist()] + self._events()

    # ------------------------------------------------------------------ rounds and batches
    def allow(self, now, cost=0):
        """lease.ALLOW / DEGRADED / DENY_* or SUSPENDED, before a round (lease L3, D8)."""
        t = self.lease.clock(now)
        if self.suspended:
            return SUSPENDED
        if self.postpaid:
            return L.ALLOW
        v = self.lease.allow(t, cost)
        if v == L.DENY_NO_LEASE and self.lease.st == L.NONE:
            self.lease.request()
        return v

    def serve(self, rnd, now):
        """Rate and deduct one served round: (rec to journal, actions)."""
        total, wire = rating.rate_wire(self.book, rnd)
        t = self.lease.clock(now)
        lid = 0 if self.postpaid else self.lease.deduct(total, t)
        self.served += 1
        rec = [self.served, t, self.book["version"], lid, total, wire]
        return rec, self._poll(t, self.cfg["retry"]) + self._events()

    def seal_due(self, pending, oldest, now):
        """Whether the shell should seal now: `pending` unsealed rounds, the oldest at time
        `oldest` (a forced report, a full batch, or one aged cfg["age"] seconds)."""
        if not pending:
            return False
        cfg = self.cfg
        if pending < cfg["batch"] and now - oldest < cfg["age"] and not self.force:
            return False   # the common case, decided without len() (a builtin lookup)
        return len(self.outbox) < cfg["window"]

    def seal(self, recs, now, state=True):
        """Seal a batch from the head of recs (journal order): (rounds taken, actions).
        state=False: the "persist" action carries None instead of the state bytes, for a shell
        that makes the new seq durable another way (the meter journals a seal record,
        meter_base M4) and would only throw the encoding away."""
        if not recs or len(self.outbox) >= self.cfg["window"]:
            return 0, []
        t = self.lease.clock(now)
        ver, lid = recs[0][2], recs[0][3]
        lim = min(len(recs), self.cfg["batch"])
        n = 0
        while n < lim and recs[n][2] == ver and recs[n][3] == lid:
            n += 1
        head = recs[:n]
        t0 = head[0][1]
        ucny = 0
        for r in head:   # one pass, no generators: the earliest time and the total
            if r[1] < t0:
                t0 = r[1]
            ucny += r[4]
        rows = []
        for r in head:
            row = [r[1] - t0]
            row += r[5]
            rows.append(row)
        seq = self.next_seq
        self.next_seq += 1
        b = self._sign({"type": P.USAGE, "boot": self.boot, "seq": seq, "ver": ver,
                        "lease": lid, "t0": t0, "flags": 0, "ucny": ucny, "rounds": rows})
        if not self.outbox:
            self.tx_at = t
        self.outbox[seq] = b
        if n == len(recs):
            self.force = 0
        return n, [self._persist() if state else ("persist", None), ("outbox", seq, b),
                   ("publish", "up/usage", b)]

    # ------------------------------------------------------------------ timers
    def tick(self, now):
        """Retransmissions and lease messages that are due (D4, lease L5/L8)."""
        t = self.lease.clock(now)
        acts = []
        if self.outbox and t - self.tx_at >= self.rto:
            acts = self._resend(t)
            self.rto = min(self.rto * 2, self.cfg["rto_max"])
        return acts + self._poll(t, self.cfg["retry"]) + self._events()

    def _resend(self, t):
        acts = []
        for seq in sorted(self.outbox):
            b = self.outbox[seq]
            msg = P.unseal(b)[0]
            if not msg["flags"] & P.RETX or msg["kid"] != self.kid:
                msg["flags"] |= P.RETX
                b = self.outbox[seq] = self._sign(msg)
            acts.append(("publish", "up/usage", b))
        self.tx_at = t
        return acts

    def _poll(self, t, retry):
        if self.postpaid:
            return []
        acts = []
        for q in self.lease.poll(t, retry, self.cfg["want"]):
            if q[0] == "request":
                acts.append(self._ctl({"type": P.LEASE_REQUEST, "want": q[1]}))
            elif q[0] == "renew":
                acts.append(self._ctl({"type": P.LEASE_RENEW, "lease": q[1], "used": q[2],
                                       "want": q[3]}))
            else:
                acts.append(self._ctl({"type": P.LEASE_RETURN, "lease": q[1], "used": q[2]}))
        return acts

    def status(self, now):
        """A status message for the cloud (also confirms a rotated key, D9)."""
        t = self.lease.clock(now)
        ls = self.lease
        lapsed = ls.lapse >= 0
        flags = ((P.S_SUSPENDED if self.suspended else 0) | (P.S_LAPSED if lapsed else 0)
                 | (P.S_DEGRADED if lapsed and ls.policy == L.DEGRADE else 0)
                 | (P.S_ROLLBACK if self.rolled else 0) | (P.S_FINAL if ls.final else 0)
                 | (P.S_POSTPAID if self.postpaid else 0))
        return [self._ctl({"type": P.STATUS, "t": t, "seq": self.next_seq - 1,
                           "acked": self.acked, "lease": ls.lease, "used": ls.used,
                           "remaining": ls.remaining(), "ver": self.book["version"],
                           "flags": flags})]

    # ------------------------------------------------------------------ downlink
    def receive(self, data, now, suffix=None):
        """Handle one received message (D3, D7-D9): actions."""
        t = self.lease.clock(now)
        code, msg = P.check(data, self.keys, self.dev)
        if code != P.OK:
            return [("event", "rejected", (code, P.CHECKS[code] + ": " + msg))] + self._events()
        mt = msg["type"]
        if P.uplink(mt) or (suffix and suffix != P.suffix(mt)):
            return [("event", "rejected", (R_WRONG_TOPIC, "%s on %s" % (P.name(mt), suffix or "downlink")))]
        acts = []
        if msg["kid"] == self.kid and len(self.keys) > 1:
            self.keys = {self.kid: self.keys[self.kid]}  # D9: the cloud uses the new key
            acts.append(self._persist())
        acts += getattr(self, P.handler(mt))(msg, t, now)   # the handler proto.MESSAGES names
        return acts + self._events()

    def _ack(self, msg, t, now):
        a = msg["acked"]
        acts: list = [("event", "verdict", (s, c))
                      for s, c in sorted(msg.get("verdicts", {}).items())]
        if a >= self.next_seq:
            return acts + [("event", "bad_ack", a)]
        if a > self.acked:
            for seq in [s for s in self.outbox if s <= a]:
                del self.outbox[seq]
            self.acked = a
            self.rto = self.cfg["rto"]
            self.tx_at = t
            acts += [self._persist(), ("acked", a)]
        return acts

    def _grant(self, msg, t, now):
        if self.postpaid:
            return [("event", "rejected", (R_POSTPAID_GRANT, "grant to a postpaid device"))]
        f = msg["flags"]
        r = self.lease.accept(msg["gn"], msg["lease"], msg["total"], msg["validity"],
                              f & P.FINAL, f & P.CLOSED, msg["policy"], msg["allowance"],
                              msg["renew_at"], t)
        if r == L.G_STALE:
            return [("event", "stale_grant", msg["gn"])]
        acts = [self._persist()]
        if abs(msg["t"] - now) > self.cfg["skew"]:
            acts.append(("event", "clock_skew", msg["t"] - now))
        return acts

    def _cmd(self, msg, t, now):
        cn, op = msg["cn"], msg["op"]
        if cn <= self.cn:
            return [("event", "stale_cmd", cn)]
        self.cn = cn
        if op == P.OP_REPORT:
            self.force = 1
            return [self._persist(), ("event", "report", cn)] + self.status(now)
        if op == P.OP_SUSPEND:
            self.suspended = 1
            return [self._persist(), ("event", "suspended", msg.get("arg", 0))]
        if op == P.OP_RESUME:
            self.suspended = 0
            return [self._persist(), ("event", "resumed", cn)]
        new_kid = msg["arg"]
        if new_kid in self.keys:
            return [self._persist(), ("event", "rejected", (R_KID_IN_USE, "rotate to a kid in use"))]
        self.keys[new_kid] = P.unwrap_key(self.keys[msg["kid"]], self.dev, cn, new_kid,
                                          msg["key"])
        self.kid = new_kid
        return [self._persist(), ("event", "rotated", new_kid)] + self.status(now)

    def _book(self, msg, t, now):
        ver = msg["ver"]
        if ver <= self.book["version"]:
            return [("event", "stale_book", ver)]
        try:
            b = pricebook.from_cbor(msg["book"])
        except ValueError as exc:
            return [("event", "rejected", (R_BAD_BOOK, "price book: %s" % exc))]
        if b["version"] != ver:
            return [("event", "rejected", (R_BAD_BOOK, "price book version %d != %d" % (b["version"], ver)))]
        self.book = b
        return [("book", msg["book"]), ("event", "book", ver)]
