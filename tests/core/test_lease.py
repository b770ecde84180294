# Pool ledger (firmware_py/pool.py, rules P1-P9) and device lease cache (firmware_py/lease.py,
# rules L1-L8) on both runtimes.
import vec
from firmware_py import lease as L
from firmware_py import pool as PL

T = 1767225600


def _lcg(seed):
    s = [seed]

    def nxt(n):
        s[0] = (s[0] * 1103515245 + 12345) & 0x7FFFFFFF
        return s[0] % n
    return nxt


def test_pool_scripted_life_of_a_lease_conserves_units():
    p = PL.Pool(terms={"grant": 1000, "max": 5000, "validity": 100, "allowance": 50, "low": 200,
                       "renew_pct": 20})
    log = [p.add(3000)]
    es, g = p.open(42, 0, T)
    log += es
    assert g == {"lease": 1, "total": 1000, "validity": 100, "final": 0, "policy": L.CONTINUE,
                 "allowance": 50, "renew_at": 200, "units": 1000}
    assert (p.free, p.out) == (1950, 1050) and p.check()
    es, g = p.renew(1, 900, 2000, T + 10)
    log += es
    assert g["total"] == 2950 and p.consumed == 900  # capped: 3000 added - the 50 allowance
    assert p.free == 0 and g["final"] == 1 and g["units"] == 1950 and p.check()
    # no report for 2 x validity: reclaimed into unrec, not free (P6)
    assert p.reclaim_due(T + 10 + 199) == []
    log += p.reclaim_due(T + 10 + 200)
    assert p.leases[1][1] == PL.RECLAIMED and p.unrec == 2950 + 50 - 900 and p.free == 0
    assert p.check()
    # contact revives (P7), the return reconciles (P8)
    log.append(p.report(1, 2500, T + 400))
    assert p.leases[1][1] == PL.LIVE and p.unrec == 0 and p.consumed == 2500 and p.check()
    log.append(p.close(1, 2990, T + 401))
    assert p.leases[1][1] == PL.CLOSED and p.out == 0 and p.free == 3000 + 0 - 2990 - 0 + 0
    assert (p.consumed, p.overdraft) == (2990, 0) and p.check()
    # late use beyond the reservation after close: from free, then overdraft (P5)
    log.append(p.report(1, 3100, T + 500))
    assert (p.free, p.consumed, p.overdraft) == (0, 3100, 100) and p.check()
    vec.raises(L.LeaseError, p.renew, 1, 0, 0, T)
    # replaying the entries rebuilds the same ledger (P9)
    q = PL.Pool()
    for e in log:
        q.apply(list(e))
    assert q.state() == p.state()


def test_pool_is_never_overspent_under_random_operations():
    rnd = _lcg(7)
    p = PL.Pool(terms={"grant": 700, "max": 2000, "validity": 50, "allowance": 100, "low": 500})
    p.add(10000)
    live = []
    now = T
    for step in range(400):
        now += rnd(30)
        op = rnd(6)
        if op == 0 or not live:
            free = p.free
            es, g = p.open(rnd(5) + 1, rnd(3) * 400, now)
            assert g["units"] + g["allowance"] <= free  # P2
            live.append([g["lease"], 0])
        elif op == 1:
            lid, used = live[rnd(len(live))]
            free = p.free
            if p.leases[lid][1] != PL.CLOSED:
                es, g = p.renew(lid, used, rnd(3) * 500, now)
                assert g["units"] <= free + 0 or p.overdraft
        elif op == 2:
            x = live[rnd(len(live))]
            x[1] += rnd(400)
            p.report(x[0], x[1], now)
        elif op == 3:
            x = live.pop(rnd(len(live)))
            p.close(x[0], x[1] + rnd(50), now)
        elif op == 4:
            p.reclaim_due(now)
        else:
            p.add(rnd(500))
        assert p.check(), step
        assert p.free >= 0 and p.out >= 0 and p.unrec >= 0


def test_pool_counts_a_report_only_up_to_the_lease_bound():
    """P5: a report beyond total + allowance + overshoot counts as that bound, so a single
    device's claim cannot drain the pool; the shipped book's dearest round is within MAX_ROUND."""
    from firmware_py import pricebook
    over = PL.max_round(pricebook.default())
    assert 0 < over <= PL.MAX_ROUND
    p = PL.Pool(terms={"grant": 1000, "max": 1000, "allowance": 50, "overshoot": 300})
    p.add(10 ** 9)
    p.open(7, 0, T)
    e = p.report(1, 1 << 62, T + 1)
    assert e[2] == p.bound(1) == 1000 + 50 + 300 and p.check()
    assert (p.consumed, p.overdraft, p.free) == (1350, 0, 10 ** 9 - 1350)
    e = p.close(1, (1 << 63) - 101, T + 2)
    assert e[2] == 1350 and p.consumed == 1350 and p.check()


def test_pool_overdraft_stops_growing_at_the_limit():
    """P5: once the overdraft has reached billing.LIMIT, a lease counts at most its
    reservation (no overshoot), so leases opened without end cannot overflow it."""
    from firmware_py import billing
    terms = {"grant": 1000, "max": 1000, "allowance": 50, "overshoot": 300}
    p = PL.Pool(terms=terms)
    p.open(7, 0, T)                                # an empty pool: nothing granted, 0 reserved
    e = p.report(1, 1 << 62, T + 1)
    assert e[2] == 300 and p.overdraft == 300 and p.check()     # one round beyond the grant
    # a pool whose earlier leases (not loaded) overshot until the overdraft is a unit short
    p = PL.Pool(state={"consumed": billing.LIMIT - 1, "overdraft": billing.LIMIT - 1, "next_lease": 2},
                terms=terms)
    assert p.check()
    p.open(8, 0, T + 2)
    e = p.report(2, 1 << 62, T + 3)
    assert e[2] == 300 and p.overdraft == billing.LIMIT - 1 + 300    # the last overshoot
    p.open(9, 0, T + 4)
    assert p.bound(3) == 0
    e = p.report(3, 1 << 62, T + 5)
    assert e[2] == 0 and p.overdraft == billing.LIMIT - 1 + 300 and p.check()


def test_pool_open_on_an_empty_pool_is_final_and_caller_mistakes_raise():
    p = PL.Pool(terms={"policy": L.STOP})
    es, g = p.open(1, 0, T)
    assert g["units"] == 0 and g["final"] == 1 and g["allowance"] == 0 and p.check()
    vec.raises(L.LeaseError, p.add, -1)
    vec.raises(L.LeaseError, p.report, 99, 1, T)
    vec.raises(L.LeaseError, p.apply, [99])
    vec.raises(L.LeaseError, p.apply, [PL.OP_OPEN, 5, 1, 10, 0, 60, T])  # more than free
    assert p.check() and p.withdraw(10) == [PL.OP_WITHDRAW, 0]


def _dev(total=1000, validity=100, policy=L.CONTINUE, allowance=50, final=0, renew_at=200):
    d = L.DeviceLease()
    assert d.allow(T - 120) == L.DENY_NO_LEASE
    d.request()
    assert d.poll(T - 120, 60, 0) == [("request", 0)] and d.poll(T - 119, 60, 0) == []
    assert d.poll(T - 60, 60, 0) == [("request", 0)]  # resent every retry (L5)
    assert d.accept(1, 7, total, validity, final, 0, policy, allowance, renew_at, T) == L.G_OK
    return d


def test_device_lease_verdicts_follow_the_offline_policy():
    d = _dev()
    assert d.allow(T, 300) == L.ALLOW
    assert d.deduct(790, T + 1) == 7 and d.remaining() == 210
    assert d.poll(T + 2, 60, 0) == []
    d.deduct(20, T + 2)
    assert d.poll(T + 3, 60, 0) == [("renew", 7, 810, 0)]  # remaining <= renew_at (L5)
    assert d.st == L.RENEWING and d.poll(T + 4, 60, 0) == []
    d.deduct(185, T + 5)  # offline: no grant comes; serve from what remains
    assert d.allow(T + 6, 10) == L.ALLOW  # lapsed at 995 used: allowance 50 more (L3)
    assert ("lapsed", 7) in d.ev
    d.deduct(40, T + 6)
    assert d.allow(T + 7, 11) == L.DENY_OFFLINE and d.allow(T + 7, 10) == L.ALLOW
    # a fresh grant ends the lapse
    assert d.accept(2, 7, 3000, 100, 0, 0, L.CONTINUE, 50, 400, T + 8) == L.G_OK
    assert d.allow(T + 8, 10) == L.ALLOW and d.st == L.ACTIVE


def test_device_lease_stop_degrade_final_and_expiry():
    d = _dev(policy=L.STOP)
    assert d.allow(T + 99) == L.ALLOW and d.allow(T + 100) == L.DENY_LAPSED  # expired
    d = _dev(policy=L.DEGRADE)
    assert d.allow(T + 100) == L.DEGRADED
    d.deduct(1050, T + 100)
    assert d.allow(T + 101) == L.DENY_OFFLINE
    d = _dev(final=1)
    d.deduct(1000, T)
    assert d.allow(T + 1) == L.DENY_FINAL


def test_clock_rollback_never_extends_a_lease():
    d = _dev(policy=L.STOP)
    assert d.allow(T + 150) == L.DENY_LAPSED
    assert d.allow(T - 3600) == L.DENY_LAPSED  # the clock went back an hour
    assert d.ev.count(("clock_rollback", 3750)) == 1
    d.allow(T - 3500)
    assert len([e for e in d.ev if e[0] == "clock_rollback"]) == 1  # one per episode
    assert d.hw == T + 150


def test_a_lost_request_is_resent_while_the_clock_is_behind():
    d = L.DeviceLease()
    d.request()
    d.allow(T + 3600)  # the clock was an hour ahead, then is set right (back) while asking
    assert d.poll(T, 60, 0) == [("request", 0)]  # behind the mark: sent at once (L5)
    assert d.poll(T + 30, 60, 0) == []
    assert d.poll(T + 60, 60, 0) == [("request", 0)]  # still behind, resent every retry
    assert d.poll(T + 120, 60, 0) == [("request", 0)] and d.hw == T + 3600
    d.accept(1, 7, 1000, 100, 0, 0, L.CONTINUE, 50, 200, T + 121)
    d.deduct(900, T + 122)
    assert d.poll(T + 123, 60, 0) == [("renew", 7, 900, 0)]
    assert d.poll(T + 150, 60, 0) == [] and d.poll(T + 183, 60, 0) == [("renew", 7, 900, 0)]
    d.release(T + 184)
    assert d.poll(T + 184, 60, 0) == [("return", 7, 900)]
    assert d.poll(T + 200, 60, 0) == [] and d.poll(T + 244, 60, 0) == [("return", 7, 900)]


def test_grants_stale_replaced_and_returns_confirmed():
    d = _dev()
    d.deduct(100, T)
    assert d.accept(1, 7, 9999, 100, 0, 0, 1, 0, 0, T) == L.G_STALE  # replay (L6)
    assert d.total == 1000
    # another lease id replaces the current one; the old one's use is queued for return
    assert d.accept(2, 8, 500, 100, 0, 0, 1, 0, 100, T) == L.G_OK
    assert (d.lease, d.used, d.ret_lease, d.ret_used) == (8, 0, 7, 100)
    assert d.poll(T, 60, 0) == [("return", 7, 100)]
    assert d.poll(T + 30, 60, 0) == [] and d.poll(T + 60, 60, 0) == [("return", 7, 100)]
    assert d.accept(3, 7, 100, 0, 0, 1, 0, 0, 0, T) == L.G_CLOSED  # confirmed (L7)
    assert d.ret_lease == 0 and d.poll(T + 70, 60, 0) == []
    # release on idle (L8); a late grant for the returned lease is stale
    d.deduct(10, T)
    assert d.release(T) == 8 and d.st == L.NONE and d.allow(T) == L.DENY_NO_LEASE
    assert d.accept(4, 8, 900, 100, 0, 0, 1, 0, 0, T) == L.G_STALE
    assert d.poll(T, 60, 0) == [("return", 8, 10)]
    # the state survives a round trip
    e = L.DeviceLease(d.state())
    assert e.state() == d.state()
    vec.raises(L.LeaseError, L.DeviceLease, [1, 2])
