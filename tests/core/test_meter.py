# The device meter (firmware_py.meter) on real files under build/tmp/<unique>, wired to the
# cloud's session and pool in memory (no broker): the round API, lease and account refusals,
# offline policies, agent sessions, unended rounds, a full journal, reboots and power cuts at
# every durable write. Runs on CPython (pytest) and on the MicroPython unix port.
import os

from firmware_py import lease as L
from firmware_py import meter as M
from firmware_py import meter_log as ML
from firmware_py import pool as PL
from firmware_py import pricebook, proto as P, rating
from firmware_py.cloud_session import CloudSession
from firmware_py.journal import Journal
import vec

WS = 7
DEV = 1042
KEY = bytes(range(32))
T0 = 1767225600
BOOK = pricebook.default()
TERMS = {"grant": 60000, "max": 200000, "validity": 900, "allowance": 20000, "low": 30000}
STD = 5450
LITE = 2340


class Cloud:
    """The rater's part, in memory: one CloudSession per message, a pool, booked batches."""

    def __init__(self, terms=None, units=10000000, postpaid=False):
        self.pool = None if postpaid else PL.Pool(terms=terms or TERMS)
        if self.pool:
            self.pool.add(units)
        self.state = None
        self.booked = {}
        self.online = True

    def session(self):
        return CloudSession(WS, DEV, {1: KEY}, self.state, {1: BOOK})

    def handle(self, suffix, data, now):
        cs = self.session()
        out = []

        def pred(seq):
            return seq in self.booked
        for a in cs.receive(data, now, pred, self.pool, suffix):
            if a[0] == "book":
                self.booked[a[1]["seq"]] = a[1]
                out.append(("down/ack", cs.ack(pred)))
            elif a[0] == "duplicate":
                out.append(("down/ack", cs.ack(pred)))
            elif a[0] == "publish":
                out.append((a[1], a[2]))
        self.state = cs.state()
        return out

    def command(self, op, arg=None):
        cs = self.session()
        b = cs.command(op, arg)
        self.state = cs.state()
        return ("down/cmd", b)

    def rounds(self):
        """[(t, wire)] of every booked round, in seq order."""
        out = []
        for seq in sorted(self.booked):
            for t, wire, u in self.booked[seq]["rounds"]:
                out.append((t, wire))
        return out

    def ucny(self):
        return sum(b["ucny"] for b in self.booked.values())


def pump(m, cloud, now):
    """Deliver everything the meter publishes and the cloud answers, until quiet."""
    for _ in range(50):
        pubs = m.publishes()
        if not pubs:
            return
        for suffix, data in pubs:
            if cloud.online:
                for s2, d2 in cloud.handle(suffix, data, now):
                    m.receive(s2, d2, now)


def meter(d, cfg=None, sync=None, postpaid=False):
    c = {"batch": 4, "age": 30, "rto": 20, "window": 3, "checkpoint": 8, "ack_every": 2}
    if postpaid:
        c["postpaid"] = 1
    if cfg:
        c.update(cfg)
    return M.Meter(d, WS, DEV, 1, KEY, BOOK, c, sync=sync)


def up(d, cloud, now, cfg=None, postpaid=False):
    m = meter(d, cfg, postpaid=postpaid)
    m.open(now)
    m.connected(now)
    pump(m, cloud, now)
    return m


def voice(m, rid, std=True):
    if std:
        m.record(rid, "asr-standard")
        m.record(rid, "intent")
        m.record(rid, "tts-standard")
    else:
        m.record(rid, "asr-lite")
        m.record(rid, "tts-lite")
    m.record(rid, "chat")


def one(m, now, std=True):
    ok, code, rid = m.start_round(now)
    assert ok, M.REASONS[code]
    voice(m, rid, std)
    code, u = m.end_round(rid, now)
    assert code == M.OK, M.REASONS[code]
    return u


def test_round_lifecycle():
    d = vec.tmpdir('tm')
    cloud = Cloud()
    m = meter(d)
    rep = m.open(T0)
    assert rep["boot"] == 1 and rep["resend"] == 0
    ok, code, rid = m.start_round(T0)  # no lease yet: refused, and a request goes out
    assert (ok, code, rid) == (False, L.DENY_NO_LEASE, 0)
    m.connected(T0)
    pump(m, cloud, T0)
    assert m.status()["lease_state"] == "active"
    ok, code, rid = m.start_round(T0 + 1)
    assert ok and code == M.OK and rid
    assert m.record(rid, "asr-standard") == M.OK
    for it in ("intent", "tts-standard", "chat"):
        m.record(rid, it)
    assert m.end_round(rid, T0 + 1) == (M.OK, STD)
    assert m.end_round(rid, T0 + 1) == (M.UNKNOWN_ROUND, 0)
    assert m.record(rid, "chat") == M.UNKNOWN_ROUND
    st = m.status()
    assert st["used"] == STD and st["unsealed"] == 1
    m.tick(T0 + 40)  # aged: sealed and published
    pump(m, cloud, T0 + 40)
    assert cloud.ucny() == STD and m.status()["acked"] == 1 and m.status()["unacked"] == 0
    # an empty round costs nothing and journals nothing; a bad item is the caller's mistake
    ok, code, rid = m.start_round(T0 + 41)
    assert m.end_round(rid, T0 + 41) == (M.OK, 0)
    ok, code, rid = m.start_round(T0 + 42)
    assert isinstance(_raises(ValueError, m.record, rid, "no-such-item"), ValueError)
    m.record(rid, "asr-lite")
    m.record(rid, "asr-standard")
    e = _raises(rating.RatingError, m.end_round, rid, T0 + 42)
    assert e.rule == "one-asr" and m.status()["open"] == 1  # the round stays open
    m.close()
    vec.rmtree(d)


def _raises(exc, fn, *args):
    try:
        fn(*args)
    except exc as e:
        return e
    raise AssertionError("expected %s" % exc.__name__)


def test_denials_exhausted_suspended_and_stop_policy():
    d = vec.tmpdir('tm')
    cloud = Cloud(terms={"grant": 12000, "max": 12000, "validity": 900, "allowance": 0,
                         "low": 30000, "policy": L.STOP}, units=12000)
    m = up(d, cloud, T0)
    assert one(m, T0 + 1) == STD and one(m, T0 + 2) == STD
    ok, code, rid = m.start_round(T0 + 3, hint=STD)  # 1100 left, final grant: refused
    assert (ok, code) == (False, L.DENY_FINAL)
    ok, code, rid = m.start_round(T0 + 3, hint=500)
    assert ok
    m.end_round(rid, T0 + 3)
    pump(m, cloud, T0 + 3)
    # suspend / resume commands from the cloud
    cloud2 = Cloud()
    d2 = vec.tmpdir('tm')
    m2 = up(d2, cloud2, T0)
    s, b = cloud2.command(P.OP_SUSPEND)
    m2.receive(s, b, T0 + 5)
    assert m2.start_round(T0 + 6) == (False, M.SUSPENDED, 0)
    assert ("suspended", 0) in m2.events()
    s, b = cloud2.command(P.OP_RESUME)
    m2.receive(s, b, T0 + 7)
    assert m2.start_round(T0 + 8)[0]
    # policy stop: an expired lease refuses while offline
    cloud3 = Cloud(terms={"grant": 60000, "max": 60000, "validity": 100, "allowance": 0,
                          "low": 0, "policy": L.STOP})
    d3 = vec.tmpdir('tm')
    m3 = up(d3, cloud3, T0)
    assert one(m3, T0 + 1) == STD
    cloud3.online = False
    assert m3.start_round(T0 + 200)[:2] == (False, L.DENY_LAPSED)
    for mm, dd in ((m, d), (m2, d2), (m3, d3)):
        mm.close()
        vec.rmtree(dd)


def test_degrade_policy_and_offline_allowance():
    d = vec.tmpdir('tm')
    cloud = Cloud(terms={"grant": 60000, "max": 60000, "validity": 100, "allowance": 5000,
                         "low": 0, "policy": L.DEGRADE})
    m = up(d, cloud, T0)
    cloud.online = False
    ok, code, rid = m.start_round(T0 + 200)  # lapsed, degrade within the allowance
    assert ok and code == M.DEGRADED
    voice(m, rid, std=False)
    assert m.end_round(rid, T0 + 200) == (M.OK, LITE)
    assert not [e for e in m.events() if e[0] == "degrade_exceeded"]
    ok, code, rid = m.start_round(T0 + 201)
    assert code == M.DEGRADED
    voice(m, rid, std=True)  # standard components in a degraded round: billed, and flagged
    assert m.end_round(rid, T0 + 201) == (M.OK, STD)
    assert [e for e in m.events() if e[0] == "degrade_exceeded"]
    assert m.start_round(T0 + 202)[:2] == (False, L.DENY_OFFLINE)  # allowance used
    m.close()
    vec.rmtree(d)


def test_agent_sessions():
    d = vec.tmpdir('tm')
    cloud = Cloud()
    m = up(d, cloud, T0)

    def rnd(now, items, **kw):
        ok, code, rid = m.start_round(now)
        assert ok
        for it in items:
            if type(it) is tuple:
                m.record(rid, it[0], count=it[1], **kw)
            else:
                m.record(rid, it, **kw)
        return m.end_round(rid, now)[1]
    # voice translation: the agent launch once per entry, whatever the number of turns
    tr = ["asr-lite", "intent", "tts-standard", "translation"]
    assert rnd(T0 + 1, tr) == 50 + 800 + 1700 + 5700
    assert rnd(T0 + 2, tr) == 50 + 800 + 1700
    assert rnd(T0 + 3, ["asr-lite", "intent", "tts-lite", "chat"]) == 50 + 800 + 90 + 2200
    assert rnd(T0 + 4, tr) == 50 + 800 + 1700 + 5700  # re-entered after leaving for chat
    m.leave_agent("translation")
    assert rnd(T0 + 5, tr) == 50 + 800 + 1700 + 5700
    assert rnd(T0 + 5 + 600, tr) == 50 + 800 + 1700 + 5700  # idle timeout ends the session
    assert rnd(T0 + 606, tr, launch=True) == 50 + 800 + 1700 + 5700
    # news radio: launch fee once, one TTS call per spoken sentence
    ok, code, rid = m.start_round(T0 + 700)
    for it in ("asr-lite", "intent", "radio"):
        m.record(rid, it)
    for _ in range(3):
        m.record(rid, "tts-standard")
    assert m.end_round(rid, T0 + 700) == (M.OK, 50 + 800 + 20 + 3 * 1700)
    ok, code, rid = m.start_round(T0 + 710)  # the broadcast goes on: sentences only
    m.record(rid, "radio")
    m.record(rid, "tts-standard", count=2)
    assert m.end_round(rid, T0 + 710) == (M.OK, 2 * 1700)
    # stories is another agent: entering it launches it
    assert rnd(T0 + 720, ["intent", "stories", ("tts-lite", 4)]) == 800 + 20 + 4 * 90
    # proactive tour guide: the round, and one call per image analysis
    assert rnd(T0 + 730, ["asr-lite", "intent", "tts-lite", "tour-guide",
                          ("tour-guide-image", 2)]) == 50 + 800 + 90 + 1200 + 2 * 1200
    assert rnd(T0 + 731, [("tour-guide-image", 1)]) == 1200
    # a premium model multiplies its component
    ok, code, rid = m.start_round(T0 + 740)
    m.record(rid, "intent")
    m.record(rid, "chat", model="qwen-max")
    assert m.end_round(rid, T0 + 740) == (M.OK, 800 + 2 * 2200)
    served = m.status()["ucny"]
    m.drain(T0 + 800)
    pump(m, cloud, T0 + 800)
    assert cloud.ucny() == served and m.status()["unacked"] == 0
    m.close()
    vec.rmtree(d)


def test_unended_round_settled_by_timeout():
    d = vec.tmpdir('tm')
    cloud = Cloud()
    m = up(d, cloud, T0, {"round_timeout": 60})
    ok, code, rid = m.start_round(T0 + 1)
    voice(m, rid)
    ok, code, empty = m.start_round(T0 + 2)
    m.tick(T0 + 30)
    assert m.status()["open"] == 2
    m.tick(T0 + 70)  # both idle for 60 s: the recorded one is billed, the empty one dropped
    ev = m.events()
    assert ("round_settled", (rid, STD)) in ev and ("round_dropped", empty) in ev
    assert m.status()["open"] == 0 and m.status()["used"] == STD
    assert m.end_round(rid, T0 + 71) == (M.UNKNOWN_ROUND, 0)
    kinds = [ML.decode(p)[0] for r, p in m.j.records()]
    assert kinds == [ML.SETTLED]
    m.tick(T0 + 200)
    pump(m, cloud, T0 + 200)
    assert cloud.ucny() == STD
    # drain settles whatever is open at shutdown
    ok, code, rid = m.start_round(T0 + 300)
    m.record(rid, "intent")
    m.record(rid, "chat")
    m.drain(T0 + 301)
    pump(m, cloud, T0 + 301)
    assert cloud.ucny() == STD + 3000
    m.close()
    vec.rmtree(d)


def test_journal_full_refuses_and_recovers():
    d = vec.tmpdir('tm')
    cloud = Cloud(postpaid=True)
    cfg = {"max_bytes": 1024, "segment_bytes": 256, "headroom": 128, "reserve": 40,
           "ack_every": 1, "checkpoint": 4}
    m = up(d, cloud, T0, cfg, postpaid=True)
    cloud.online = False
    served = 0
    now = T0
    while True:
        now += 1
        ok, code, rid = m.start_round(now)
        if not ok:
            break
        voice(m, rid)
        assert m.end_round(rid, now)[0] == M.OK
        served += 1
        m.tick(now)
    assert code == M.JOURNAL_FULL and served > 20
    assert m.status()["journal_free"] >= 0
    cloud.online = True
    for i in range(30):  # back online: batches go, acks compact, rounds are served again
        now += 31
        m.connected(now)
        m.tick(now)
        pump(m, cloud, now)
    assert len(cloud.rounds()) == served
    assert m.start_round(now + 1)[0]
    m.close()
    vec.rmtree(d)


class Cut(Exception):
    pass


class Power:
    """A sync that counts durable writes and cuts the power (raises Cut) after the n-th."""

    def __init__(self, n):
        self.n = n
        self.count = 0

    def __call__(self, f):
        f.flush()
        self.count += 1
        if self.count == self.n:
            raise Cut()


def _scenario(d, cloud, power, log):
    """Serve 12 rounds with reboots at any power cut; log: t -> "accepted" | "inflight"."""
    now = T0
    m = None
    i = 0
    while i < 12 or m is None or m.status()["unacked"] + m.status()["unsealed"]:
        now += 7
        try:
            if m is None:
                m = meter(d, sync=power)
                m.open(now)
                m.connected(now)
            pump(m, cloud, now)
            if i < 12:
                ok, code, rid = m.start_round(now)
                if ok:
                    voice(m, rid, std=i % 3 != 0)
                    log[now] = "inflight"
                    code, u = m.end_round(rid, now)
                    if code == M.OK:
                        log[now] = "accepted"
                    else:
                        del log[now]
                    i += 1
            m.tick(now)
            pump(m, cloud, now)
        except Cut:
            m = None  # power cut: everything in RAM is gone
        if now > T0 + 5000:
            raise AssertionError("no progress")
    try:
        m.close()
    except Cut:
        pass


def test_power_cut_at_every_write_served_equals_booked():
    d = vec.tmpdir('tm')
    cloud = Cloud()
    _scenario(d, cloud, Power(0), {})
    writes = 0
    # count the durable writes of an uncut run, then cut after each of them in turn
    p = Power(0)
    d2 = vec.tmpdir('tm')
    _scenario(d2, Cloud(), p, {})
    writes = p.count
    vec.rmtree(d)
    vec.rmtree(d2)
    assert writes > 20
    step = 1 if writes < 80 else 3
    for n in range(1, writes + 1, step):
        d = vec.tmpdir('tm')
        cloud = Cloud()
        log = {}
        _scenario(d, cloud, Power(n), log)
        booked = [t for t, w in cloud.rounds()]
        assert len(booked) == len(set(booked)), "a round booked twice (cut %d)" % n
        acc = sorted(t for t in log if log[t] == "accepted")
        assert [t for t in acc if t not in booked] == [], "an accepted round lost (cut %d)" % n
        assert [t for t in booked if t not in log] == [], "a round invented (cut %d)" % n
        vec.rmtree(d)


def test_reboot_recovery_nothing_lost_or_doubled():
    d = vec.tmpdir('tm')
    cloud = Cloud()
    m = up(d, cloud, T0)
    total = 0
    for i in range(10):
        total += one(m, T0 + 1 + i)
    m.tick(T0 + 20)
    cloud.online = False  # batches published into the void; two rounds unsealed
    pump(m, cloud, T0 + 20)
    used = m.status()["used"]
    m = None  # no close(): as after a power cut
    m = meter(d)
    rep = m.open(T0 + 30)
    assert rep["boot"] == 2 and rep["resend"] == 2 and rep["unsealed"] == 2
    assert m.status()["used"] == used  # the lease is exact: re-deducted, not twice
    cloud.online = True
    m.connected(T0 + 30)
    pump(m, cloud, T0 + 30)
    m.drain(T0 + 31, release=False)
    pump(m, cloud, T0 + 31)
    assert cloud.ucny() == total and len(cloud.rounds()) == 10
    assert sorted(t for t, w in cloud.rounds()) == list(range(T0 + 1, T0 + 11))
    m.close()
    m = meter(d)
    rep = m.open(T0 + 40)
    assert rep["resend"] == 0 and rep["unsealed"] == 0 and m.status()["used"] == used
    m.close()
    vec.rmtree(d)


def test_ack_lag_bounds_what_recovery_resends():
    """M4 with ack_lag: acks are persisted once 2 batches wait, so after a power cut recovery
    resends at most ack_lag + window batches (without it, what compaction left of the batches
    acked since the last checkpoint comes back); every round is still booked once."""
    resent = []
    for lag in (0, 1):
        d = vec.tmpdir('tm')
        cloud = Cloud()
        m = up(d, cloud, T0, {"checkpoint": 1000, "ack_lag": lag})
        for i in range(40):   # 10 batches, each acked as it goes
            one(m, T0 + 1 + i)
            m.tick(T0 + 1 + i)
            pump(m, cloud, T0 + 1 + i)
        assert len(cloud.booked) == 10 and m.status()["acked"] == 10
        m = None  # a power cut: no close()
        m = meter(d, {"checkpoint": 1000, "ack_lag": lag})
        rep = m.open(T0 + 60)
        resent.append(rep["resend"])
        m.connected(T0 + 60)
        pump(m, cloud, T0 + 60)
        assert len(cloud.booked) == 10 and cloud.ucny() == 40 * STD  # resent, booked once
        m.close()
        vec.rmtree(d)
    assert resent[1] <= 1 < resent[0], resent


def test_journal_bytes_per_round():
    d = vec.tmpdir('tm')
    cloud = Cloud(terms={"grant": 2000000, "max": 2000000, "validity": 86400,
                         "allowance": 0, "low": 0})
    m = up(d, cloud, T0, {"batch": 10, "checkpoint": 64, "ack_every": 32, "window": 4})
    j0 = m.j.bytes_written
    s0 = m.st.bytes_written
    n = 300
    for i in range(n):
        one(m, T0 + 1 + i, std=i % 2 == 0)
        m.tick(T0 + 1 + i)
        pump(m, cloud, T0 + 1 + i)
    per = (m.j.bytes_written - j0) // n
    assert per <= 32, per
    assert (m.st.bytes_written - s0) // n <= 8
    assert len(cloud.rounds()) >= n - 10
    m.close()
    vec.rmtree(d)


def test_round_records_decode():
    rec = [5, T0, 1, 3, STD, [2, 4, 5, 6]]
    p = ML.enc_round(rec)
    assert len(p) == 15 and ML.decode(p) == (ML.ROUND, [0, T0, 1, 3, STD, [2, 4, 5, 6]])
    assert ML.decode(ML.enc_round(rec, True))[0] == ML.SETTLED
    assert ML.decode(ML.enc_seal(9, 2, 100, 110)) == (ML.SEAL, (9, 2, 100, 110))
    for bad in (b"", b"\x80", b"\x83\x01\x02\x03", b"\x85\x00\x01\x02\x03\xff"):
        _raises(ML.MeterLogError, ML.decode, bad)
    j = Journal  # referenced so the import documents where records live
    assert j is not None


def test_clock_rollback_and_lease_across_reboot():
    d = vec.tmpdir('tm')
    cloud = Cloud(terms={"grant": 60000, "max": 60000, "validity": 900, "allowance": 0,
                         "low": 0, "policy": L.STOP})
    m = up(d, cloud, T0)
    one(m, T0 + 100)
    assert one(m, T0 + 50) == STD  # the wall clock went back 50 s: the high-water mark holds
    assert ("clock_rollback", 50) in m.events()
    remaining = m.status()["remaining"]
    m = None  # power cut; the clock is still behind at the next boot
    m = meter(d)
    m.open(T0 + 60)
    assert m.status()["remaining"] == remaining  # the lease survived, deductions exact
    one(m, T0 + 70)
    m.connected(T0 + 70)
    m.tick(T0 + 200)
    pump(m, cloud, T0 + 200)
    ts = [t for t, w in cloud.rounds()]
    assert ts == [T0 + 100, T0 + 100, T0 + 100]  # never before the high-water mark
    assert m.status()["remaining"] == remaining - STD
    # validity counts on effective time: a clock set back cannot stretch the lease
    cloud.online = False
    assert m.start_round(T0 + 100 + 900)[1] == L.DENY_LAPSED
    assert m.start_round(T0 + 500)[1] == L.DENY_LAPSED
    m.close()
    vec.rmtree(d)


def test_newest_state_slot_damaged_no_seq_reused():
    d = vec.tmpdir('tm')
    cloud = Cloud()
    m = up(d, cloud, T0, {"checkpoint": 3, "ack_every": 1, "segment_bytes": 128})
    now = T0
    served = []
    for i in range(14):
        now += 11
        one(m, now)
        served.append(now)
        m.tick(now + 40)
        pump(m, cloud, now + 40)
        now += 40
    slot = m.st._slot
    m = None  # power cut, then a bit flip at rest in the newest state slot
    path = d + "/meter." + "ab"[slot]
    with open(path, "rb") as f:
        b = bytearray(f.read())
    b[len(b) // 2] ^= 0x10
    with open(path, "wb") as f:
        f.write(b)
    m = meter(d, {"checkpoint": 3, "ack_every": 1, "segment_bytes": 128})
    rep = m.open(now)
    assert rep["state"]["ab"[slot]] == "crc" and rep["boot"] == 3  # boot skipped ahead
    assert m.status()["used"] == len(served) * STD  # every round since the older slot re-deducted
    m.connected(now)
    pump(m, cloud, now)
    for i in range(6):
        now += 11
        one(m, now)
        served.append(now)
        m.tick(now + 40)
        pump(m, cloud, now + 40)
        now += 40
    booked = [t for t, w in cloud.rounds()]
    assert sorted(booked) == served, (len(booked), len(served))
    m.close()
    vec.rmtree(d)
