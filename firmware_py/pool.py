"""The cloud's ledger of one workspace's License pool: leases granted to devices, after
RFC 4006 credit control (the device's side is firmware_py/lease.py). Runtime-neutral and
free of I/O so that the rater, the simulator and the in-memory session tests share it.

Buckets: free, out (reserved by live leases), unrec (reclaimed, unreconciled), consumed,
overdraft. A lease reserves R = total + allow; use beyond it is paid from free (or is
overdraft) and counted in the lease's `extra`, so its outstanding is R + extra - used >= 0.
  P1. Conservation: added + overdraft == free + out + unrec + consumed; every bucket >= 0.
  P2. Never overspent: a grant's units and the offline allowance it reserves come out of free
      only and never exceed it, so outstanding grants never exceed what remains.
  P3. Leases are cumulative (one Diameter credit-control session): a renewal adds units to
      the same lease id; `total` is the running sum.
  P4. Grant size: min(want or terms["grant"], terms["max"], free); the final-unit flag
      (RFC 4006 section 8.34) is set when the grant is smaller than asked or leaves free below
      terms["low"]. A new lease also reserves min(terms["allowance"], what is left) for its
      offline policy (continue or degrade up to that many units; none under stop).
  P5. Reports (renewal, return, status, booked batches) are lower bounds of the device's use:
      used = max(reported), so replays and reordering change nothing. New use comes out of
      the lease's outstanding first, then free; what neither covers is overdraft (served
      beyond the grant: counted, never hidden). A report is bounded by what the cloud
      granted: use above the lease's total + allowance + terms["overshoot"] (MAX_ROUND, the
      most the last round may overshoot, lease L3) is taken as that bound, so one device's
      claim can neither drain the pool nor overflow it; report() and close() return the
      entry with the use actually counted. Once the pool's overdraft has reached
      billing.LIMIT (2**60 units, billing P9) no lease may overshoot any more (its bound is
      its total + allowance), so however many leases devices open over the years the
      overdraft stays below LIMIT + one round.
  P6. Reclaim: a live lease with no report for 2 x its validity moves its outstanding into
      unrec, not into free (the device may still be serving offline from it).
  P7. Contact revives: a report or a grant on a reclaimed lease moves it back to live.
  P8. Return closes: final use reported (P5), the rest of the reservation back to free. A
      closed lease takes no grants; late use reported on it is consumed per P5.
  P9. Every change is an entry (a list of ints) decided by a method and applied by apply();
      replaying the stored entries in order rebuilds the ledger (balances are projections).
      A shell may load only the leases an entry touches: the buckets do not need the rest.
Caller mistakes and malformed entries raise LeaseError(ValueError) before anything changes.
"""
from firmware_py.billing import LIMIT
from firmware_py.lease import CONTINUE, STOP, LeaseError, check_units

try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[no-redef,misc]
        return x

# pool lease states
LIVE = const(1)
RECLAIMED = const(2)
CLOSED = const(3)

# pool entry ops
OP_ADD = const(1)
OP_WITHDRAW = const(2)
OP_OPEN = const(3)
OP_GRANT = const(4)
OP_REPORT = const(5)
OP_CLOSE = const(6)
OP_RECLAIM = const(7)

# The most one round may cost (uCNY = pool units) under any price book the protocol allows: far
# above max_round(book) of the shipped book (tests/core/test_lease.py checks it).
MAX_ROUND = const(1 << 32)

TERMS = {"grant": 545000, "max": 5450000, "validity": 86400, "policy": CONTINUE,
         "allowance": 54500, "low": 1090000, "renew_pct": 20, "overshoot": MAX_ROUND}



class Pool:
    """The ledger of one workspace pool (rules P1-P9)."""

    def __init__(self, state=None, terms=None):
        t = dict(TERMS)
        if terms:
            t.update(terms)
        self.terms = t
        s = state or {}
        self.added = s.get("added", 0)
        self.free = s.get("free", 0)
        self.out = s.get("out", 0)
        self.unrec = s.get("unrec", 0)
        self.consumed = s.get("consumed", 0)
        self.overdraft = s.get("overdraft", 0)
        self.next_lease = s.get("next_lease", 1)
        # lease id -> [dev, state, total, allow, used, validity, seen, extra]
        self.leases = dict((k, list(v)) for k, v in s.get("leases", {}).items())

    def state(self) -> dict:
        return {"added": self.added, "free": self.free, "out": self.out, "unrec": self.unrec,
                "consumed": self.consumed, "overdraft": self.overdraft,
                "next_lease": self.next_lease,
                "leases": dict((k, list(v)) for k, v in self.leases.items())}

    def check(self) -> bool:
        """P1 holds (and, when every lease is loaded, out and unrec match the leases)."""
        if min(self.free, self.out, self.unrec, self.consumed, self.overdraft) < 0:
            return False
        if self.added + self.overdraft != self.free + self.out + self.unrec + self.consumed:
            return False
        o = u = 0
        for r in self.leases.values():
            if r[1] == LIVE:
                o += _outstanding(r)
            elif r[1] == RECLAIMED:
                u += _outstanding(r)
        return o == self.out and u == self.unrec

    def lease(self, lid):
        r = self.leases.get(lid)
        if r is None:
            raise LeaseError("unknown lease %r" % (lid,))
        return r

    # ------------------------------------------------------------------ decisions (-> entries)
    def add(self, units):
        return self.apply([OP_ADD, check_units(units)])

    def withdraw(self, units):
        """Take up to `units` out of free (a license year ended); never below zero (P2)."""
        return self.apply([OP_WITHDRAW, min(check_units(units), self.free)])

    def _size(self, want):
        t = self.terms
        ask = min(check_units(want, "want") or t["grant"], t["max"])
        return ask, min(ask, self.free)

    def grant_info(self, lid, ask=0, units=0):
        """The grant dict of a lease as it stands (what a grant message carries); `units` is
        what the last grant added, `ask` what was asked (P4 final-unit flag)."""
        r = self.lease(lid)
        t = self.terms
        final = 1 if (units < ask or self.free < t["low"]) else 0
        base = units or r[2]
        renew_at = max(base * t["renew_pct"] // 100, 1) if base else 0
        return {"lease": lid, "total": r[2], "validity": r[5], "final": final,
                "policy": t["policy"],
                "allowance": r[3], "renew_at": renew_at, "units": units}

    def open(self, dev, want, now):
        """A new lease for dev (P2, P4): (entries, grant dict)."""
        ask, units = self._size(want)
        allow = min(self.terms["allowance"], self.free - units)
        if self.terms["policy"] == STOP:
            allow = 0
        lid = self.next_lease
        e = self.apply([OP_OPEN, lid, check_units(dev, "dev"), units, allow, self.terms["validity"],
                        now])
        return [e], self.grant_info(lid, ask, units)

    def renew(self, lid, used, want, now):
        """Report use and grant more on a lease of this pool (P3-P5, P7): (entries, grant)."""
        r = self.lease(lid)
        if r[1] == CLOSED:
            raise LeaseError("lease %d is closed" % lid)
        es = [self.report(lid, used, now)]
        ask, units = self._size(want)
        es.append(self.apply([OP_GRANT, lid, units, now]))
        return es, self.grant_info(lid, ask, units)

    def bound(self, lid):
        """The most use a report on lease lid may count (P5): total + allowance + overshoot
        (no overshoot once the overdraft has reached LIMIT)."""
        r = self.lease(lid)
        return r[2] + r[3] + (self.terms["overshoot"] if self.overdraft < LIMIT else 0)

    def report(self, lid, used, now):
        return self.apply([OP_REPORT, lid, min(check_units(used, "used"), self.bound(lid)), now])

    def close(self, lid, used, now):
        return self.apply([OP_CLOSE, lid, min(check_units(used, "used"), self.bound(lid)), now])

    def reclaim_due(self, now):
        """Entries reclaiming every live lease silent for 2 x its validity (P6)."""
        due = [k for k, r in self.leases.items() if r[1] == LIVE and now - r[6] >= 2 * r[5]]
        return [self.apply([OP_RECLAIM, k, now]) for k in sorted(due)]

    # ------------------------------------------------------------------ the one mutator
    def apply(self, e):
        """Apply one entry (P9); returns it. Entries are trusted ledger data, but a malformed
        one raises LeaseError before anything changes."""
        if type(e) is not list or not e or type(e[0]) is not int:
            raise LeaseError("bad entry %r" % (e,))
        op = e[0]
        if op == OP_ADD:
            self.added += e[1]
            self.free += e[1]
        elif op == OP_WITHDRAW:
            if e[1] > self.free:
                raise LeaseError("withdraw beyond free")
            self.added -= e[1]
            self.free -= e[1]
        elif op == OP_OPEN:
            lid, dev, units, allow, validity, now = e[1:7]
            if lid in self.leases or units + allow > self.free:
                raise LeaseError("open: lease exists or pool too small")
            self.free -= units + allow
            self.out += units + allow
            self.leases[lid] = [dev, LIVE, units, allow, 0, validity, now, 0]
            self.next_lease = max(self.next_lease, lid + 1)
        elif op == OP_GRANT:
            r = self.lease(e[1])
            if r[1] == CLOSED or e[2] > self.free:
                raise LeaseError("grant: lease closed or pool too small")
            self._revive(r)
            self.free -= e[2]
            self.out += e[2]
            r[2] += e[2]
            r[6] = max(r[6], e[3])
        elif op == OP_REPORT or op == OP_CLOSE:
            r = self.lease(e[1])
            if r[1] != CLOSED:
                self._revive(r)
                r[6] = max(r[6], e[3])
            self._use(r, e[2])
            if op == OP_CLOSE and r[1] == LIVE:
                o = _outstanding(r)
                self.out -= o
                self.free += o
                r[1] = CLOSED
        elif op == OP_RECLAIM:
            r = self.lease(e[1])
            if r[1] == LIVE:
                o = _outstanding(r)
                self.out -= o
                self.unrec += o
                r[1] = RECLAIMED
        else:
            raise LeaseError("unknown entry op %r" % (op,))
        return e

    def _revive(self, r):
        if r[1] == RECLAIMED:
            o = _outstanding(r)
            self.unrec -= o
            self.out += o
            r[1] = LIVE

    def _use(self, r, used):
        if used <= r[4]:
            return
        delta = used - r[4]
        take = min(delta, _outstanding(r)) if r[1] == LIVE else 0
        r[4] = used
        self.out -= take
        rest = delta - take
        r[7] += rest
        f = min(rest, self.free)
        self.free -= f
        self.overdraft += rest - f
        self.consumed += delta


def max_round(book):
    """The most one round can rate under book (P5's overshoot): the dearest item of each of the
    ASR, TTS and LLM groups (one of each per round, rating R7) plus every other item, each at
    its max_count and its component's largest model multiplier."""
    mult: dict = {}
    for _mid, comp, m, _names in book["models"].values():
        mult[comp] = max(mult.get(comp, 1), m)
    best: dict = {}
    other = 0
    for row in book["items"].values():
        cost = row[2] * row[8] * (mult.get(row[5], 1) if row[6] & 16 else 1)   # 16: F_MODEL
        if row[4] in (1, 2, 4):      # G_ASR, G_TTS, G_LLM
            best[row[4]] = max(best.get(row[4], 0), cost)
        else:
            other += cost
    return other + sum(best.values())


def _outstanding(r):
    return r[2] + r[3] + r[7] - r[4]
