"""The cloud side of the protocol for one device, sans-io: what the rater runs per message.
Inputs: received bytes, `now`, a `booked(seq) -> bool` predicate over the ledger, the
workspace's pool (firmware_py.pool.Pool) for lease messages. Outputs: actions, tuples the
rater executes in order, inside one transaction with the session's state():

    ("book", booking)          commit this batch (unique (dev, seq)), then send ack(...)
    ("duplicate", seq)         already booked: change nothing, send ack(...)
    ("pool", entry)            a pool ledger entry, already applied to the given pool: store it
    ("publish", suffix, data)  publish on proto.topic(ws, dev, suffix) after the commit
    ("reject", reason, detail) dead-letter the message; nothing else changed. reason is a code
                               (proto.CHECK_REASONS or this module's REJECT_*), detail the
                               words for people (logs, the dead-letter table); nothing parses it
    ("event", name, detail)    "status" (the status dict), "rotated" (kid), "clock_skew" (s),
                               "firmware" (the version the device runs, bytes)

A booking is a dict: dev, seq, boot, ver, lease, t0, retx, kid, device_ucny (the device's
own deduction), ucny (what to book: the core's re-rating; the device's claim when the price
book version is unknown), verdict (proto.V_*), rounds [(t, wire, ucny or None), ...].
  C1. Nothing is acted on before the tag verifies under the kid's key and the body names this
      device (proto W1); malformed, unknown-kid, bad-MAC and wrong-topic input is rejected.
      A verified uplink goes to the method proto.MESSAGES names for its type (proto.handler).
  C2. Batches: seq <= acked or booked(seq) is a duplicate, else a booking (docs/protocol.md, Sequencing).
  C3. Every round is re-rated with the book of the batch's version (proto W4); a total different
      from the device's deduction is V_MISMATCH, a round the core rejects V_INVALID (booked
      at 0, kept), a version the cloud does not know V_UNKNOWN_BOOK.
  C4. ack(booked) acks the highest seq a such that every seq <= a is booked (cumulative).
  C5. Control messages must be fresh by (boot, n) (proto W3): a later boot, or in this boot an n
      above the highest seen or one of the 32 below it not seen yet (the sliding anti-replay
      window of RFC 4303 section 3.4.3, so reordering is no replay); else rejected.
  C6. Leases: a request while the device holds a live lease nothing was reported on re-sends
      that lease (its grant was lost); otherwise the held lease is reclaimed into unrec
      (pool P6) and a new one opened. A renewal of a closed or foreign lease opens a new one.
      A return closes the lease and is confirmed by a grant flagged CLOSED (lease L7).
  C7. Downlink numbers (gn, cn) increase by one per message; the rater persists state()
      with the message before publishing it. Key rotation: command(OP_ROTATE, kid, key)
      wraps the key (proto W5); the first uplink under the new kid switches downlink to it.
  C8. Claims are bounded by what the ledger can hold: every integer of an uplink must lie in
      the signed 64-bit range of the ledger's columns, and a batch's `ucny` may claim at most
      pool.MAX_ROUND per round. A verified batch that breaks this gets a definite verdict:
      booked as V_INVALID at 0 (the fields out of range stored as 0, listed in the booking's
      "range"; the payload keeps what was sent), so the cumulative ack passes it; a seq out
      of range, or more than SEQ_AHEAD above the acked mark (no device seals that many
      batches ahead of its acks), cannot be booked and is rejected (REJECT_OUT_OF_RANGE), the
      device told in an ack carrying V_INVALID for that seq. Any other uplink out of range
      (a status's seq included) is rejected.
"""
from firmware_py import pricebook, proto as P, rating
from firmware_py import pool as PL

REJECT_WRONG_TOPIC = "wrong_topic"       # not an uplink message, or not on its own topic
REJECT_REPLAY = "replay"                 # a control message that is not fresh (C5)
REJECT_NO_POOL = "no_pool"               # a lease message from a postpaid device
REJECT_FOREIGN_LEASE = "foreign_lease"   # a return of a lease the device does not hold
REJECT_OUT_OF_RANGE = "out_of_range"     # an integer the ledger cannot hold (C8)

STATE = {"kid": 0, "pending": 0, "gn": 0, "cn": 0, "boot": 0, "n": 0, "win": 0, "acked": 0,
         "top": 0, "lease": 0, "bv": 0}
_WINDOW = 32
_I63 = 1 << 63          # C8: the ledger's signed 64-bit columns hold -2**63 .. 2**63 - 1
SEQ_AHEAD = 1 << 32     # C8: the furthest a seq (batch or status) may run ahead of the ack


def out_of_range(msg):
    """C8: the names of msg's fields the ledger cannot hold (sorted; empty when none)."""
    bad = [k for k, v in msg.items() if type(v) is int and not -_I63 <= v < _I63]
    if msg["type"] == P.USAGE and "ucny" not in bad and \
            msg["ucny"] > len(msg["rounds"]) * PL.MAX_ROUND:
        bad.append("ucny")
    bad.sort()
    return bad


class CloudSession:
    """One device as the rater sees it (rules C1-C7). keys: {kid: key}; books: {ver: book}."""

    def __init__(self, ws, dev, keys, state=None, books=None, skew=300):
        self.ws, self.dev, self.keys = ws, dev, keys
        self.books = books if books is not None else {}
        s = dict(STATE)
        if state:
            s.update(state)
        if not s["kid"]:
            s["kid"] = max(keys)
        self.s = s
        self.skew = skew

    def state(self) -> dict:
        return dict(self.s)

    def _sign(self, msg):
        msg["kid"] = self.s["kid"]
        msg["dev"] = self.dev
        return P.seal(self.keys[self.s["kid"]], msg)

    # ------------------------------------------------------------------ uplink
    def receive(self, data, now, booked, pool=None, suffix=None):
        code, msg = P.check(data, self.keys, self.dev)
        if code != P.OK:
            return [("reject", P.CHECK_REASONS[code], P.CHECKS[code] + ": " + msg)]
        acts: list = []
        mt = msg["type"]
        if not P.uplink(mt):
            return [("reject", REJECT_WRONG_TOPIC, "%s is not an uplink message" % P.name(mt))]
        if suffix and suffix != P.suffix(mt):
            return [("reject", REJECT_WRONG_TOPIC, "%s on topic %s" % (P.name(mt), suffix))]
        if msg["kid"] == self.s["pending"]:
            self.s["kid"] = msg["kid"]
            self.s["pending"] = 0
            acts.append(("event", "rotated", msg["kid"]))
        # the message's handler (proto.MESSAGES): (msg, now, booked, pool, out-of-range fields)
        return acts + getattr(self, P.handler(mt))(msg, now, booked, pool, out_of_range(msg))

    def _control(self, msg, bad):
        """The rejection of a control message (lease, status) out of range (C8) or not fresh
        (C5), or None."""
        if bad:
            return [("reject", REJECT_OUT_OF_RANGE, "out of range: %s" % ", ".join(bad))]
        if not self._fresh(msg["boot"], msg["n"]):
            return [("reject", REJECT_REPLAY, "replay: boot %d n %d" % (msg["boot"], msg["n"]))]
        return None

    def _status(self, msg, now, booked, pool, bad):
        if msg["seq"] - self.s["acked"] > SEQ_AHEAD:
            bad.append("seq")
        no = self._control(msg, bad)
        if no:
            return no
        acts: list = [("event", "status", msg)]
        if abs(msg["t"] - now) > self.skew:
            acts.append(("event", "clock_skew", msg["t"] - now))
        r = pool.leases.get(msg["lease"]) if pool is not None else None
        if r is not None and r[0] == self.dev:
            acts.append(("pool", pool.report(msg["lease"], msg["used"], now)))
        return acts

    def _firmware(self, msg, now, booked, pool, bad):
        no = self._control(msg, bad)
        if no:
            return no
        return [("event", "firmware", bytes(msg["version"]))]

    def _lease_msg(self, msg, now, booked, pool, bad):
        no = self._control(msg, bad)
        if no:
            return no
        if pool is None:
            return [("reject", REJECT_NO_POOL, "%s: no pool (postpaid device)" % P.name(msg["type"]))]
        return self._lease(msg, now, pool)

    def _fresh(self, boot, n):
        s = self.s
        if boot > s["boot"]:
            s["boot"], s["n"], s["win"] = boot, n, 1
            return True
        if boot < s["boot"]:
            return False
        if n > s["n"]:
            shift = n - s["n"]
            s["win"] = ((s["win"] << shift) | 1) & ((1 << _WINDOW) - 1) if shift < _WINDOW else 1
            s["n"] = n
            return True
        back = s["n"] - n
        if back >= _WINDOW or s["win"] >> back & 1:
            return False
        s["win"] |= 1 << back
        return True

    def _usage(self, msg, now, booked, pool, bad):
        seq = msg["seq"]
        if "seq" in bad or seq - self.s["acked"] > SEQ_AHEAD:     # C8: the device is told
            return [("reject", REJECT_OUT_OF_RANGE, "out of range: seq %d" % seq),
                    ("publish", "down/ack", self.ack(booked, {seq: P.V_INVALID}))]
        if seq > self.s["top"]:
            self.s["top"] = seq
        if seq <= self.s["acked"] or booked(seq):
            return [("duplicate", seq)]
        if bad:
            b = self.rate(dict(msg, rounds=[]))
            b.update(("device_ucny" if k == "ucny" else k, 0) for k in bad)
            b.update(ucny=0, verdict=P.V_INVALID, range=bad,
                     rounds=[(0, r[1:], None) for r in msg["rounds"]])
            return [("book", b)]
        return [("book", self.rate(msg))]

    def rate_round(self, book, wire):
        """The rated total of one round's wire form under book (C3); ValueError (RatingError)
        when the round is invalid. Rating is pure, so a shell may override this to memoise."""
        return rating.rate(book, rating.round_from_wire(wire))[1]

    def rate(self, msg):
        """The booking of a verified usage message (C3)."""
        book = self.books.get(msg["ver"])
        verdict = P.V_OK if book is not None else P.V_UNKNOWN_BOOK
        rounds = []
        total = 0
        t0 = msg["t0"]
        for r in msg["rounds"]:
            w = r[1:]
            u = None
            if book is not None:
                try:
                    u = self.rate_round(book, w)
                    total += u
                except ValueError:
                    verdict = P.V_INVALID
            rounds.append((t0 + r[0], w, u))
        if book is None:
            total = msg["ucny"]
        elif verdict == P.V_OK and total != msg["ucny"]:
            verdict = P.V_MISMATCH
        return {"dev": self.dev, "seq": msg["seq"], "boot": msg["boot"], "ver": msg["ver"],
                "lease": msg["lease"], "t0": msg["t0"], "retx": bool(msg["flags"] & P.RETX),
                "kid": msg["kid"], "device_ucny": msg["ucny"], "ucny": total,
                "verdict": verdict, "rounds": rounds}

    def _lease(self, msg, now, pool):
        mt = msg["type"]
        held = self.s["lease"]
        r = pool.leases.get(msg.get("lease", held))
        mine = r is not None and r[0] == self.dev
        es = []
        if mt == P.LEASE_RETURN:
            if not mine:
                return [("reject", REJECT_FOREIGN_LEASE, "return of lease %d: not this device's" % msg["lease"])]
            op = pool.report if r[1] == PL.CLOSED else pool.close
            es.append(op(msg["lease"], msg["used"], now))
            if held == msg["lease"]:
                self.s["lease"] = 0
            return [("pool", e) for e in es] + [self._grant_msg(
                {"lease": msg["lease"], "total": msg["used"], "validity": 0, "final": 0,
                 "policy": 0, "allowance": 0, "renew_at": 0}, now, P.CLOSED)]
        if mt == P.LEASE_RENEW and mine and r[1] != PL.CLOSED:
            es, g = pool.renew(msg["lease"], msg["used"], msg["want"], now)
        elif mt == P.LEASE_REQUEST and mine and r[1] == PL.LIVE and r[4] == 0:
            g = pool.grant_info(held)  # C6: the grant was lost; send it again
        else:
            if mt == P.LEASE_RENEW and mine:
                es.append(pool.report(msg["lease"], msg["used"], now))
            if held and held in pool.leases and pool.leases[held][1] == PL.LIVE:
                es.append(pool.apply([PL.OP_RECLAIM, held, now]))
            es2, g = pool.open(self.dev, msg["want"], now)
            es += es2
        self.s["lease"] = g["lease"]
        return [("pool", e) for e in es] + [self._grant_msg(g, now, 0)]

    def _grant_msg(self, g, now, flags):
        self.s["gn"] += 1
        b = self._sign({"type": P.GRANT, "gn": self.s["gn"], "lease": g["lease"],
                        "total": g["total"], "validity": g["validity"],
                        "flags": flags | (P.FINAL if g["final"] else 0), "policy": g["policy"],
                        "allowance": g["allowance"], "renew_at": g["renew_at"], "t": now})
        return ("publish", "down/grant", b)

    # ------------------------------------------------------------------ downlink
    def ack(self, booked, verdicts=None):
        """The cumulative ack (C4) as bytes to publish on down/ack; verdicts {seq: V_*}."""
        a = self.s["acked"]
        while a < self.s["top"] and booked(a + 1):
            a += 1
        self.s["acked"] = a
        msg = {"type": P.ACK, "acked": a}
        if verdicts:
            msg["verdicts"] = verdicts
        return self._sign(msg)

    def command(self, op, arg=None, key=None):
        """A signed command (C7): OP_REPORT, OP_SUSPEND (arg: reason), OP_RESUME, or
        OP_ROTATE (arg: new kid, key: the new 32-byte key, which this adds to keys)."""
        self.s["cn"] += 1
        msg = {"type": P.CMD, "cn": self.s["cn"], "op": op}
        if op == P.OP_ROTATE:
            if arg is None or key is None or arg in self.keys:
                raise P.ProtoError(-1, "rotate needs a new kid and a key")
            msg["arg"] = arg
            msg["key"] = P.wrap_key(self.keys[self.s["kid"]], self.dev, self.s["cn"], arg, key)
            b = self._sign(msg)
            self.keys[arg] = bytes(key)
            self.s["pending"] = arg
            return b
        if arg is not None:
            msg["arg"] = arg
        return self._sign(msg)

    def push_book(self, book):
        """A signed price-book push; the book is added to books for re-rating (C3)."""
        self.books[book["version"]] = book
        self.s["bv"] = max(self.s["bv"], book["version"])
        return self._sign({"type": P.BOOK, "ver": book["version"],
                           "book": pricebook.to_cbor(book)})
