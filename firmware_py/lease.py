"""The device's lease on its workspace's License pool (after RFC 4006 credit control): the
lease cache the firmware and the Linux agent keep. The cloud's side is firmware_py/pool.py.
No I/O: integers and `now` (Unix seconds) in, verdicts, requests and events out.

Units: 1 pool unit = 1 uCNY of rated list-price usage (docs/rating.md, Money and units), so a round's
rated total is also the units it consumes. Grants are cumulative: `total` is the running sum
of every grant on the lease, so a repeated or reordered grant cannot add units twice.

Rules (DeviceLease, one slot):
  L1. States NONE -> REQUESTED -> ACTIVE <-> RENEWING, back to NONE on release; the table
      _DEVICE is the whole machine. A valid fresh grant is accepted in any state (the cloud
      is authoritative); a grant for another lease id replaces the current one, whose use is
      queued for return (L8).
  L2. Effective time t = max(now, high-water mark). A now below the mark is a clock rollback
      (one "clock_rollback" event per episode); it can never extend a lease. Validity counts
      from the grant's receipt on effective time, so device/cloud skew never enters the
      arithmetic.
  L3. remaining = total - used. Verdict before a round (cost = the caller's estimate, 0 when
      unknown): ALLOW while remaining >= max(cost, 1) and t < expires. Otherwise the lease
      has lapsed: final and exhausted -> DENY_FINAL (RFC 4006 final-unit indication);
      policy stop -> DENY_LAPSED; continue/degrade -> ALLOW/DEGRADED while
      used + max(cost, 1) <= min(used at lapse, total) + allowance (never past what the cloud
      reserved, pool rule P4), then DENY_OFFLINE. No lease -> DENY_NO_LEASE.
  L4. deduct() after the round by its rated total; a served round is never refused, so the
      last one may overshoot; the overshoot is in `used` and reported (pool rule P5).
  L5. Renew while still serving when remaining <= renew_at, time left <= validity // 5, or
      the lease has lapsed; a request or renewal is resent every `retry` seconds until a
      grant arrives. The resend timers (L5, L8) run on the raw clock, not on effective time: a
      clock set back below the high-water mark resends at once and then every `retry` seconds
      of the new clock, so a rollback can delay no lost request or return.
  L6. Grants carry increasing numbers gn: gn <= the last accepted is STALE (a replay), and so
      is a grant for the lease being returned.
  L7. A grant flagged closed confirms the return of the lease it names.
  L8. release() on idle or shutdown queues a return of the used units; it is resent every
      `retry` seconds until confirmed (L7). Only one return is queued: a second replaces it.
Caller mistakes (negative units, malformed state) raise LeaseError(ValueError).
"""
try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[no-redef,misc]
        return x

# offline policies (wire values)
STOP = const(0)
CONTINUE = const(1)
DEGRADE = const(2)
POLICIES = ("stop", "continue", "degrade")

# verdicts of DeviceLease.allow
ALLOW = const(0)
DEGRADED = const(1)
DENY_NO_LEASE = const(2)
DENY_FINAL = const(3)
DENY_LAPSED = const(4)
DENY_OFFLINE = const(5)
VERDICTS = ("allow", "degrade", "no lease", "final units used", "lease lapsed (policy stop)",
            "offline allowance used")



def _due(since, now, retry):
    """A resend timer (L5, L8) on the raw clock: never sent, `retry` seconds since the last send,
    or the clock set back before it (the time elapsed is unknown: resend at once)."""
    return not since or now - since >= retry or now < since


class LeaseError(ValueError):
    pass


_type, _int_t = type, int   # module names on the per-round path (see rating.py)


def check_units(v, what="units"):
    if _type(v) is not _int_t or v < 0:
        raise LeaseError("%s must be an integer >= 0, not %r" % (what, v))
    return v


# ---------------------------------------------------------------------------- device side
NONE = const(0)
REQUESTED = const(1)
ACTIVE = const(2)
RENEWING = const(3)
STATES = ("none", "requested", "active", "renewing")

# (state, event) -> next state; an event missing here is ignored in that state (L1)
_DEVICE = {
    (NONE, "request"): REQUESTED,
    (ACTIVE, "renew"): RENEWING,
    (RENEWING, "renew"): RENEWING,
    (NONE, "grant"): ACTIVE,
    (REQUESTED, "grant"): ACTIVE,
    (ACTIVE, "grant"): ACTIVE,
    (RENEWING, "grant"): ACTIVE,
    (REQUESTED, "return"): NONE,
    (ACTIVE, "return"): NONE,
    (RENEWING, "return"): NONE,
}

# grant outcomes
G_OK = const(0)
G_STALE = const(1)
G_CLOSED = const(2)

_FIELDS = ("st", "lease", "gn", "total", "used", "allowance", "policy", "final", "validity",
           "expires", "renew_at", "hw", "lapse", "asked", "ret_lease", "ret_used", "ret_at")


class DeviceLease:
    """The device's lease cache (rules L1-L8). `ev` collects (name, detail) events."""

    def __init__(self, state=None):
        vals = list(state) if state else [0] * len(_FIELDS)
        if len(vals) != len(_FIELDS):
            raise LeaseError("lease state has %d fields, expected %d" % (len(vals), len(_FIELDS)))
        (self.st, self.lease, self.gn, self.total, self.used, self.allowance, self.policy,
         self.final, self.validity, self.expires, self.renew_at, self.hw, self.lapse,
         self.asked, self.ret_lease, self.ret_used, self.ret_at) = vals
        if not state:
            self.lapse = -1
        self.behind = 0
        self.ev: list = []

    def state(self) -> list:
        """The persistent fields as a list of ints (the session persists it)."""
        return [self.st, self.lease, self.gn, self.total, self.used, self.allowance, self.policy,
                self.final, self.validity, self.expires, self.renew_at, self.hw, self.lapse,
                self.asked, self.ret_lease, self.ret_used, self.ret_at]

    def _go(self, event):
        nxt = _DEVICE.get((self.st, event))
        if nxt is not None:
            self.st = nxt
        return nxt

    def clock(self, now):
        """Effective time (L2); one "clock_rollback" event per episode of a clock behind."""
        if now < self.hw:
            if not self.behind:
                self.behind = 1
                self.ev.append(("clock_rollback", self.hw - now))
            return self.hw
        if now > self.hw:  # effective times passed back in (== hw) keep the episode open
            self.behind = 0
            self.hw = now
        return now

    def remaining(self):
        return self.total - self.used

    def allow(self, now, cost=0):
        """The verdict for serving one more round (L3)."""
        t = self.clock(now)
        if self.st == NONE or self.st == REQUESTED:
            return DENY_NO_LEASE
        need = cost if cost > 1 else 1
        if self.remaining() >= need and t < self.expires:
            return ALLOW
        if self.lapse < 0:
            self.lapse = self.used
            self.ev.append(("lapsed", self.lease))
        if self.final and self.remaining() < need:
            return DENY_FINAL
        if self.policy == STOP:
            return DENY_LAPSED
        if self.used + need <= min(self.lapse, self.total) + self.allowance:
            return DEGRADED if self.policy == DEGRADE else ALLOW
        return DENY_OFFLINE

    def deduct(self, units, now):
        """Deduct a served round's rated total (L4); the lease it was charged to (0: none)."""
        check_units(units)
        self.clock(now)
        if self.st == NONE or self.st == REQUESTED:
            return 0
        self.used += units
        return self.lease

    def request(self):
        """Ask for a lease (NONE -> REQUESTED); the next poll() sends the request."""
        if self._go("request") is not None and self.st == REQUESTED:
            self.asked = 0

    def poll(self, now, retry, want):
        """Messages the lease wants sent now (L5, L8): a list of
        ("request", want) | ("renew", lease, used, want) | ("return", lease, used).
        A request or renewal not answered is resent every `retry` seconds; retry=0 resends
        at once (after a reconnect)."""
        t = self.clock(now)
        out: list = []
        if self.ret_lease and _due(self.ret_at, now, retry):
            self.ret_at = now
            out.append(("return", self.ret_lease, self.ret_used))
        due = _due(self.asked, now, retry)
        if self.st == REQUESTED and due:
            self.asked = now
            out.append(("request", want))
        elif self.st == ACTIVE:
            if (self.remaining() <= self.renew_at or self.expires - t <= self.validity // 5
                    or self.lapse >= 0):
                self._go("renew")
                self.asked = now
                out.append(("renew", self.lease, self.used, want))
        elif self.st == RENEWING and due:
            self.asked = now
            out.append(("renew", self.lease, self.used, want))
        return out

    def accept(self, gn, lease, total, validity, final, closed, policy, allowance, renew_at, now):
        """Apply a verified grant (L1, L6, L7): G_OK, G_STALE or G_CLOSED."""
        t = self.clock(now)
        if gn <= self.gn:
            return G_STALE
        self.gn = gn
        if not closed and lease == self.ret_lease:
            return G_STALE  # a grant for the lease we are giving back (L8)
        if closed:
            if lease == self.ret_lease:
                self.ret_lease = self.ret_used = self.ret_at = 0
                self.ev.append(("returned", lease))
            return G_CLOSED
        if lease != self.lease and self.lease and self.st != NONE:
            self._queue_return(t)
        if lease != self.lease:
            self.used = 0
        self._go("grant")
        self.lease, self.total, self.validity, self.final = lease, total, validity, final
        self.policy, self.allowance, self.renew_at = policy, allowance, renew_at
        self.expires = t + validity
        self.lapse = -1
        self.ev.append(("granted", self.total - self.used))
        return G_OK

    def _queue_return(self, t):
        self.ret_lease, self.ret_used, self.ret_at = self.lease, self.used, 0

    def release(self, now):
        """Give the lease back on idle or shutdown (L8): the lease id returned (0: none)."""
        t = self.clock(now)
        lid = self.lease if self.st in (ACTIVE, RENEWING) else 0
        if lid:
            self._queue_return(t)
        self._go("return")
        self.lease = self.total = self.used = self.expires = 0
        self.lapse = -1
        return lid
