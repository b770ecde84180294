# Device and cloud sessions wired in memory (no broker) through a deterministic lossy network:
# loss, duplication, reordering, power cuts between actions, reboots, clock skew and rollback,
# offline periods longer than the lease, a price-book change mid-lease, key rotation, suspend.
# Whatever happens, what the cloud booked equals what the device served, to the uCNY.
from firmware_py import pricebook, proto as P, rating
from firmware_py import lease as L
from firmware_py import pool as PL
from firmware_py.cloud_session import CloudSession
from firmware_py.device_session import SUSPENDED, DeviceSession

WS = 7
T0 = 1767225600
KEY = bytes(range(32))
BOOK1 = pricebook.default()
_items = [list(r) for r in pricebook.ITEMS]
_items[pricebook.CHAT - 1][2] = 2400  # v2: casual chat at CNY 2.40 per 1,000 calls
BOOK2 = pricebook.make(version=2, items=[tuple(r) for r in _items])
BOOKS = {1: BOOK1, 2: BOOK2}
TERMS = {"grant": 60000, "max": 200000, "validity": 900, "allowance": 20000, "low": 30000}


class Rng:
    def __init__(self, seed):
        self.s = seed

    def __call__(self, n):
        self.s = (self.s * 1103515245 + 12345) & 0x7FFFFFFF
        return (self.s >> 8) % n


class Device:
    """A device shell: durable state, outbox and journal; everything else dies at a power cut."""

    def __init__(self, dev, postpaid, rng):
        self.dev, self.postpaid, self.rng = dev, postpaid, rng
        self.state = None
        self.outbox = {}
        self.journal = []
        self.book_bytes = None
        self.served = []
        self.skew = 0
        self.events = []
        self.s = None

    def clock(self, now):
        return now + self.skew

    def boot(self, now):
        book = pricebook.from_cbor(self.book_bytes) if self.book_bytes else BOOK1
        self.s = DeviceSession(WS, self.dev, 1, KEY, book, self.state, list(self.outbox.values()),
                               {"postpaid": self.postpaid, "batch": 4, "age": 40, "rto": 20,
                                "rto_max": 160, "retry": 30, "window": 3}, "0.1.0 test")
        self.run(self.s.start(self.clock(now)))
        self.run(self.s.recover(self.journal))

    def run(self, acts, net=None, sealed=0, cut=-1):
        """Execute actions in order; a power cut after `cut` actions loses the rest."""
        for i, a in enumerate(acts):
            if i == cut:
                return False
            k = a[0]
            if k == "persist":
                self.state = a[1]
            elif k == "outbox":
                self.outbox[a[1]] = a[2]
                del self.journal[:sealed]  # one atomic journal record with the batch
            elif k == "acked":
                for seq in [s for s in self.outbox if s <= a[1]]:
                    del self.outbox[seq]
            elif k == "book":
                self.book_bytes = a[1]
            elif k == "publish":
                if net is not None:
                    net.send(self.dev, a[1], a[2])
            else:
                self.events.append(a[1:])
        return True

    def step_or_reboot(self, now, net, serve):
        """step(); after a power cut inside a seal, the device restarts (as it would)."""
        if not self.step(now, net, serve):
            self.boot(now)
            if net.online:
                self.run(self.s.connected(self.clock(now)), net)

    def step(self, now, net, serve):
        s, t = self.s, self.clock(now)
        if serve:
            v = s.allow(t)
            if v == L.ALLOW or v == L.DEGRADED:
                if v == L.DEGRADED or self.rng(3) == 0:
                    rnd = rating.from_flags(s.book, asr="lite", tts="lite", llm="chat")
                else:
                    rnd = rating.from_flags(s.book, asr="standard", intent=True, tts="standard",
                                            llm="chat")
                rec, acts = s.serve(rnd, t)
                self.journal.append(rec)  # the journal append is the commit point of a round
                self.served.append(rec)
                self.run(acts, net)
        while self.journal and s.seal_due(len(self.journal), self.journal[0][1], t):
            n, acts = s.seal(self.journal, t)
            if not n:
                break
            cut = 1 + self.rng(2) if self.rng(40) == 0 else -1  # power cut inside a seal
            if not self.run(acts, net, n, cut):
                return False
        self.run(s.tick(t), net)
        return True


class Cloud:
    """A rater: sessions rebuilt from stored state for every message, a ledger of bookings."""

    def __init__(self):
        self.pool = PL.Pool(terms=TERMS)
        self.pool.add(10000000)
        self.keys = {}
        self.states = {}
        self.booked = {}
        self.rejects = []
        self.log = []
        self.latest = {}  # (dev, suffix) -> the last command / book bytes, republished

    def session(self, dev):
        return CloudSession(WS, dev, self.keys.setdefault(dev, {1: KEY}), self.states.get(dev),
                            BOOKS)

    def handle(self, dev, suffix, data, now, net):
        cs = self.session(dev)
        mine = self.booked.setdefault(dev, {})
        def pred(seq):
            return seq in mine
        for a in cs.receive(data, now, pred, self.pool, suffix):
            if a[0] == "book":
                b = a[1]
                mine[b["seq"]] = b
                v = {b["seq"]: b["verdict"]} if b["verdict"] else None
                net.send(dev, "down/ack", cs.ack(pred, v))
            elif a[0] == "duplicate":
                net.send(dev, "down/ack", cs.ack(pred))
            elif a[0] == "publish":
                net.send(dev, a[1], a[2])
            elif a[0] == "pool":
                self.log.append(a[1])
            elif a[0] == "reject":
                self.rejects.append(a[1])
        self.states[dev] = cs.state()

    def command(self, dev, net, op, arg=None, key=None):
        cs = self.session(dev)
        self.latest[(dev, "down/cmd")] = cs.command(op, arg, key)
        self.states[dev] = cs.state()
        self.republish(net)

    def push_book(self, dev, net, book):
        cs = self.session(dev)
        self.latest[(dev, "down/book")] = cs.push_book(book)
        self.states[dev] = cs.state()
        self.republish(net)

    def republish(self, net):
        """Downlink that is numbered (cn, book version) is safe to resend until confirmed:
        a device drops what it has already seen (W3)."""
        for (dev, suffix), data in sorted(self.latest.items()):
            net.send(dev, suffix, data)


class Net:
    """In flight messages; delivery drops, duplicates and reorders them pseudo-randomly."""

    def __init__(self, rng, loss=10, dup=10):
        self.rng, self.loss, self.dup = rng, loss, dup
        self.up = []
        self.down = []
        self.online = True
        self.sent = None  # a list to record every message published (the schema test reads it)

    def send(self, dev, suffix, data):
        if self.sent is not None:
            self.sent.append((suffix, data))
        if not self.online or self.rng(100) < self.loss:
            return
        q = self.up if suffix.startswith("up/") else self.down
        q.append((dev, suffix, data))
        if self.rng(100) < self.dup:
            q.append((dev, suffix, data))

    def deliver(self, devices, cloud, now):
        for _ in range(len(self.up) + len(self.down)):
            q = self.up if (self.up and (not self.down or self.rng(2))) else self.down
            if not q:
                break
            dev, suffix, data = q.pop(self.rng(len(q)))  # any order
            if q is self.up:
                cloud.handle(dev, suffix, data, now, self)
            else:
                d = devices[dev]
                d.run(d.s.receive(data, d.clock(now), suffix), self)


def _each(devs):
    # sorted: MicroPython's dicts do not keep insertion order, and the run must be the same
    return [devs[k] for k in sorted(devs)]


def _stats(devs, cloud):
    return [(len(d.served), len(cloud.booked.get(k, ())), d.s.boot) for k, d in sorted(devs.items())]


def _scenario(seed, steps, sent=None):
    rng = Rng(seed)
    net = Net(rng)
    net.sent = sent
    cloud = Cloud()
    devs = {1000001: Device(1000001, 0, rng), 1000002: Device(1000002, 1, rng)}
    now = T0
    for d in _each(devs):
        d.boot(now)
        d.run(d.s.connected(d.clock(now)), net)
    for i in range(steps):
        now += 1 + rng(20)
        phase = i * 10 // steps
        if phase == 3 and net.online and rng(8) == 0:
            net.online = False  # a long outage: the lease lapses, the cloud reclaims it
        if not net.online and phase >= 3:
            now += 60
            if phase >= 5:
                net.online = True
                for d in _each(devs):
                    d.run(d.s.connected(d.clock(now)), net)
        if i == steps // 2:
            for dev in sorted(devs):
                cloud.push_book(dev, net, BOOK2)  # a new price book mid-lease
        if i == steps // 3:
            cloud.command(1000001, net, P.OP_ROTATE, 2, bytes(range(64, 96)))
        if i == steps // 4:
            cloud.command(1000002, net, P.OP_SUSPEND, 1)
        if i == steps // 4 + 20:
            cloud.command(1000002, net, P.OP_RESUME)
        if i == steps * 6 // 10:
            devs[1000001].skew = -3600  # the device clock goes back an hour
        if i == steps * 7 // 10:
            devs[1000001].skew = 0
        if i == steps // 5:
            devs[1000002].skew = 400  # a device clock ahead of the cloud's
        for d in _each(devs):
            if not d.step(now, net, rng(3) != 0) or rng(60) == 0:
                d.boot(now)  # reboot, after a power cut or not
                d.run(d.s.connected(d.clock(now)), net)
        if i % 15 == 0:
            cloud.republish(net)
        net.deliver(devs, cloud, now)
        cloud.log += cloud.pool.reclaim_due(now)
        assert cloud.pool.check()
    # the network heals; the devices idle and return their leases; everything drains
    net.loss = net.dup = 0
    net.online = True
    for d in _each(devs):
        d.run(d.s.connected(d.clock(now)), net)
    for _ in range(200):
        now += 30
        for d in _each(devs):
            d.s.force = 1
            d.step_or_reboot(now, net, False)
            if not d.journal and not d.outbox and d.s.lease.st != L.NONE:
                d.run(d.s.idle(d.clock(now)), net)
        net.deliver(devs, cloud, now)
        if all(not d.journal and not d.outbox and not d.s.lease.ret_lease
               and d.s.lease.st == L.NONE for d in _each(devs)):
            break
    return devs, cloud


def _check(devs, cloud):
    total_served = 0
    for dev, d in devs.items():
        assert not d.journal and not d.outbox, (dev, len(d.journal), len(d.outbox))
        booked = cloud.booked.get(dev, {})
        seqs = sorted(booked)
        assert seqs == list(range(1, len(seqs) + 1)), dev
        rounds = []
        for b in booked.values():
            assert b["verdict"] == P.V_OK, b
            assert b["ucny"] == b["device_ucny"] == sum(r[2] for r in b["rounds"])
            rounds += [(r[0], r[1], r[2]) for r in b["rounds"]]
        served = [(r[1], r[5], r[4]) for r in d.served]
        assert sorted(rounds) == sorted(served), dev
        assert sum(r[2] for r in rounds) == sum(r[4] for r in d.served)
        total_served += sum(r[4] for r in d.served if r[3])
        assert d.s.acked == len(seqs)
    p = cloud.pool
    assert p.check() and p.out == 0 and p.unrec == 0 and p.overdraft == 0
    assert p.consumed == total_served  # every lease reconciled to the unit
    assert p.free + p.consumed == p.added
    replay = PL.Pool()
    replay.add(10000000)
    for e in cloud.log:
        replay.apply(list(e))
    assert replay.state() == p.state()


def _run(seed, steps):
    devs, cloud = _scenario(seed, steps)
    _check(devs, cloud)
    return devs, cloud


def test_booked_equals_served_under_faults():
    devs, cloud = _run(3, 300)   # a seed whose random faults include a power cut inside a seal
    d1, d2 = devs[1000001], devs[1000002]
    assert len(d1.served) > 50 and len(d2.served) > 50
    names = [e[0] for e in d1.events]
    for must in ("granted", "rotated", "book", "clock_rollback"):
        assert must in names, must
    assert "suspended" in [e[0] for e in d2.events] and "resumed" in [e[0] for e in d2.events]
    assert d1.s.kid == 2 and cloud.states[1000001]["kid"] == 2
    assert {r[2] for r in d1.served} == {1, 2}  # rounds under both price books
    # the faults did happen: retransmissions booked once, a gap re-sealed after a power cut,
    # reboots, a lapse and a reclaim, replays turned away
    every = list(cloud.booked[1000001].values()) + list(cloud.booked[1000002].values())
    assert sum(1 for b in every if b["retx"]) > 10
    assert "gap_filled" in [e[0] for e in d2.events] and d1.s.boot > 3 and d2.s.boot > 3
    assert "lapsed" in names and [e for e in cloud.log if e[0] == PL.OP_RECLAIM]
    assert [r for r in cloud.rejects if r.startswith("replay")]


def test_booked_equals_served_under_faults_seed_2():
    _run(2, 300)


def test_booked_equals_served_under_faults_seed_3():
    _run(3, 300)


def test_lapse_while_offline_uses_only_the_allowance_then_reconciles():
    rng = Rng(9)
    net = Net(rng, 0, 0)
    cloud = Cloud()
    d = Device(1000001, 0, rng)
    devs = {1000001: d}
    now = T0
    d.boot(now)
    d.run(d.s.connected(now), net)
    net.deliver(devs, cloud, now)
    net.deliver(devs, cloud, now)
    assert d.s.lease.st == L.ACTIVE and d.s.lease.total == 60000
    net.online = False
    verdicts = []
    for _ in range(60):  # 60 x 40 s offline: past validity (900 s) and reclaim (1800 s)
        now += 40
        verdicts.append(d.s.allow(now))
        d.step_or_reboot(now, net, True)
        cloud.log += cloud.pool.reclaim_due(now)
    assert L.DENY_OFFLINE in verdicts
    used = d.s.lease.used
    assert 60000 < used <= 60000 + 20000 + 5450  # the grant + the allowance (+ last round)
    assert cloud.pool.leases[1][1] == PL.RECLAIMED and cloud.pool.unrec == 80000
    net.online = True
    d.run(d.s.connected(now), net)
    for _ in range(20):
        now += 30
        net.deliver(devs, cloud, now)
        d.s.force = 1
        d.step_or_reboot(now, net, False)
    assert cloud.pool.leases[1][1] == PL.LIVE and cloud.pool.leases[1][4] >= used
    assert cloud.pool.check() and cloud.pool.unrec == 0
    assert d.s.allow(now) == L.ALLOW


def test_postpaid_suspend_and_resume():
    rng = Rng(4)
    net = Net(rng, 0, 0)
    cloud = Cloud()
    d = Device(1000002, 1, rng)
    devs = {1000002: d}
    d.boot(T0)
    assert d.s.allow(T0) == L.ALLOW
    cloud.command(1000002, net, P.OP_SUSPEND, 1)
    net.deliver(devs, cloud, T0)
    assert d.s.allow(T0) == SUSPENDED
    d.boot(T0 + 1)  # survives a reboot
    assert d.s.allow(T0 + 1) == SUSPENDED
    cloud.command(1000002, net, P.OP_RESUME)
    net.deliver(devs, cloud, T0 + 2)
    assert d.s.allow(T0 + 2) == L.ALLOW
    assert not [a for a in net.up if a[1] == "up/lease"]  # postpaid: never asks for a lease


def test_a_device_back_after_90_days_offline_is_booked_exactly():
    rng = Rng(11)
    net = Net(rng, 0, 0)
    cloud = Cloud()
    d = Device(1000002, 1, rng)
    devs = {1000002: d}
    now = T0
    d.boot(now)
    net.online = False
    for i in range(120):  # a round every 18 hours for 90 days, a reboot every 10 days
        now += 64800
        d.step_or_reboot(now, net, True)
        if i % 13 == 12:
            d.boot(now)
    assert len(d.served) > 70 and len(d.outbox) == 3 and len(d.journal) > 50  # window full
    net.online = True
    d.run(d.s.connected(now), net)
    for _ in range(60):
        now += 30
        net.deliver(devs, cloud, now)
        d.s.force = 1
        d.step_or_reboot(now, net, False)
        if not d.journal and not d.outbox:
            break
    _check(devs, cloud)
    first = cloud.booked[1000002][1]
    assert first["retx"] and first["rounds"][0][0] == T0 + 64800  # booked with its own time


def test_seal_without_the_state_bytes_seals_the_same_batch():
    """seal(recs, now, state=False), the meter's call (its seal record persists the seq): the
    same batch, outbox entry and next seq; only the "persist" action carries None."""
    out = []
    for state in (True, False):
        s = DeviceSession(WS, 42, 1, KEY, BOOK1, None, [], {"postpaid": 1, "batch": 4})
        s.start(T0)
        rnd = rating.from_flags(BOOK1, asr="standard", intent=True, tts="standard", llm="chat")
        recs = [s.serve(rnd, T0 + i)[0] for i in range(5)]
        n, acts = s.seal(recs, T0 + 9, state)
        out.append((n, acts, s.next_seq, dict(s.outbox)))
    (n1, a1, q1, o1), (n2, a2, q2, o2) = out
    assert n1 == n2 == 4 and q1 == q2 and o1 == o2 and a1[1:] == a2[1:]
    assert a1[0][0] == a2[0][0] == "persist" and type(a1[0][1]) is bytes and a2[0][1] is None
