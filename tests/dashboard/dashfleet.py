"""A small simulated fleet for the dashboard tests: real device sessions (firmware_py's
DeviceSession, the code the firmware and the agent run) wired in memory to the rater's real
booking step (cloud.ingest.Ingest, the code `edgemeter rater` runs per group of MQTT
messages). Only the broker is left out; every batch, lease and status message is sealed,
verified, re-rated and booked exactly as in production.

    fleet = Fleet(url)                       # a migrated store
    acc = fleet.account("acme", trial=True)
    ws = fleet.workspace(acc, "shops", "license", licenses=100, activate=1)
    d = fleet.device(ws)                      # registered with cloud.devices.register
    fleet.serve(d, 20, "standard")            # 20 rounds of standard voice chat, sealed and booked
    fleet.status(d)

The same fleet can then go on over a real broker to a real `edgemeter rater` process
(fleet.attach_mqtt(host, port)): the devices publish their batches, lease and status messages
to Mosquitto and act on the acks and grants the rater publishes back, on the real clock.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgemeter.cloud import accounts, db, devices, ingest, ledger, pools, tokens
from firmware_py import pricebook, proto as P, rating
from firmware_py import lease as L
from firmware_py.device_session import DeviceSession

BOOK = pricebook.default()

ROUNDS = {   # the billing.txt scenarios the simulated devices serve
    "standard": dict(asr="standard", intent=True, tts="standard", llm="chat"),    # 5450 µCNY
    "lite": dict(asr="lite", tts="lite", llm="chat"),                             # 2340
    "text": dict(intent=True, llm="chat"),                                         # 3000
    "kb": dict(asr="lite", intent=True, tts="standard", llm="kb"),                 # 6250
    "premium": dict(asr="standard", asr_model="fun-asr", intent=True, tts="standard", llm="chat",
                    model="qwen-max"),
}


_skewed = [list(r) for r in pricebook.ITEMS]
_skewed[pricebook.CHAT - 1][2] = 2400
SKEWED_BOOK = pricebook.make(version=1, items=[tuple(r) for r in _skewed])   # price-book skew: chat 2.40


class SimDevice:
    def __init__(self, fleet: "Fleet", ws: int, dev: int, key: bytes, postpaid: bool, book: dict | None = None):
        self.fleet, self.ws, self.dev, self.postpaid, self.key = fleet, ws, dev, postpaid, key
        self.s = DeviceSession(ws, dev, 1, key, book or BOOK, cfg={"postpaid": 1 if postpaid else 0, "batch": 10,
                                                                     "window": 64})
        self.journal: list[list] = []
        self.served_ucny = 0
        self.events: list[tuple] = []
        self.run(self.s.start(fleet.now()))

    def run(self, acts: list) -> None:
        out = []
        for a in acts:
            if a[0] == "publish":
                out.append((P.topic(self.ws, self.dev, a[1]), a[2]))
            elif a[0] == "event":
                self.events.append(a[1:])
        if out:
            self.fleet.deliver(out)


class Fleet:
    def __init__(self, url: str, clock: Any = None):
        self.url = url
        self.engine = db.open_store(url, create=True)
        self.clock = clock or time.time
        self.ingest = ingest.Ingest(self.engine, now_ms=lambda: int(self.clock() * 1000))
        self.devices: dict[int, SimDevice] = {}
        self.outcomes: list[ingest.Outcome] = []
        self.link: MqttLink | None = None

    def now(self) -> int:
        return int(self.clock())

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link = None
        self.engine.dispose()

    def attach_mqtt(self, host: str, port: int) -> None:
        """From now on, uplink goes to the broker (a rater books it) and time is the real clock."""
        self.link = MqttLink(host, port, "dash-fleet-%d" % id(self))
        self.clock = time.time

    def pump(self, until: Any, timeout: float) -> bool:
        """Act on the downlink the rater publishes until `until()` holds (MQTT mode)."""
        deadline = time.monotonic() + timeout
        while not until():
            if self.link is None or time.monotonic() >= deadline:
                return bool(until())
            got = self.link.get(0.05)
            if got is not None:
                self._downlink(*got)
        return True

    def _downlink(self, topic: str, data: bytes) -> None:
        _, dev, suffix = P.parse_topic(topic)
        d = self.devices.get(dev)
        if d is not None:
            d.run(d.s.receive(data, self.now(), suffix))

    # ------------------------------------------------------------------ set-up (admin's services)
    def tx(self):  # type: ignore[no-untyped-def]
        return db.write_connect(self.engine)

    def account(self, name: str, trial: bool = False, top_up_ucny: int = 0, plan_ucny: int = 0) -> int:
        with self.tx() as conn, conn.begin():
            book = ledger.latest_book(ledger.ensure_books(conn, self.now()))
            aid = accounts.create_account(conn, name, self.now())
            if trial:
                accounts.claim_trial(conn, book, aid, self.now())
            if plan_ucny:
                accounts.buy_plan(conn, book, aid, plan_ucny, self.now())
            if top_up_ucny:
                accounts.top_up(conn, aid, top_up_ucny, self.now(), "test")
        return aid

    def workspace(self, acc: int, name: str, billing: str, licenses: int = 0, activate: int = 0,
                  tier: str = "basic", **terms: int) -> int:
        with self.tx() as conn, conn.begin():
            ws = accounts.create_workspace(conn, acc, name, billing, self.now(), **terms)
            if licenses:
                pid = pools.buy_license(conn, BOOK, ws, tier, licenses, self.now())
                if activate:
                    _, why = pools.activate(conn, BOOK, pid, activate, self.now())
                    if why:
                        raise RuntimeError(why)
        return ws

    def device(self, ws: int, book: dict | None = None) -> SimDevice:
        with self.tx() as conn, conn.begin():
            r = devices.register(conn, ws, self.now())
            billing = pools.workspace(conn, ws)["billing"]
        d = SimDevice(self, ws, r["id"], r["key"], billing == "postpaid", book)
        self.devices[d.dev] = d
        d.run(d.s.connected(self.now()))
        return d

    # ------------------------------------------------------------------ traffic
    def deliver(self, msgs: list[tuple[str, bytes]]) -> None:
        """Uplink through the rater's booking step, then its downlink back to the devices (or,
        in MQTT mode, to the broker; the downlink comes back through pump())."""
        if self.link is not None:
            for topic, data in msgs:
                self.link.publish(topic, data)
            return
        now_ms = int(self.clock() * 1000)
        out = self.ingest.process([ingest.Incoming(t, p, now_ms) for t, p in msgs])
        self.outcomes.append(out)
        for topic, data in out.publish:
            self._downlink(topic, data)

    def serve(self, d: SimDevice, n: int, kind: str = "standard") -> int:
        """Serve up to n rounds on d (as its lease allows), seal and book them; rounds served."""
        served = 0
        rnd = rating.from_flags(d.s.book, **ROUNDS[kind])
        ok = (L.ALLOW, L.DEGRADED)
        for _ in range(n):
            if d.s.allow(self.now()) not in ok:
                d.run(d.s.tick(self.now()))
                self.pump(lambda: d.s.allow(self.now()) in ok, 10)
                if d.s.allow(self.now()) not in ok:
                    break
            rec, acts = d.s.serve(rnd, self.now())
            d.journal.append(rec)
            d.served_ucny += rec[4]
            served += 1
            d.run(acts)
        self.flush(d)
        return served

    def flush(self, d: SimDevice) -> None:
        while d.journal:
            n, acts = d.s.seal(d.journal, self.now())
            if not n:
                break
            del d.journal[:n]
            d.run(acts)
        if not self.pump(lambda: d.s.acked >= d.s.next_seq - 1, 30):
            raise TimeoutError(f"device {d.dev}: batches up to {d.s.next_seq - 1} not acked (acked {d.s.acked})")

    def status(self, d: SimDevice) -> None:
        d.run(d.s.status(self.now()))

    def send_raw(self, topic: str, payload: bytes) -> None:
        self.deliver([(topic, payload)])


class MqttLink:
    """One MQTT 5 connection for the whole fleet: publishes QoS 1, queues the downlink."""

    def __init__(self, host: str, port: int, client_id: str):
        self.q: queue.Queue[tuple[str, bytes]] = queue.Queue()
        c = self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        subscribed = threading.Event()
        c.on_subscribe = lambda *a: subscribed.set()
        c.on_message = lambda _c, _u, m: self.q.put((m.topic, bytes(m.payload)))
        c.connect(host, port, keepalive=30)
        c.loop_start()
        c.subscribe("em/+/+/down/#", qos=1)
        if not subscribed.wait(10):
            self.close()
            raise RuntimeError("no SUBACK from the broker")

    def publish(self, topic: str, data: bytes) -> None:
        self.client.publish(topic, data, qos=1).wait_for_publish(10)

    def get(self, timeout: float) -> tuple[str, bytes] | None:
        try:
            return self.q.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Clock:
    """A settable clock for the fleet (the dashboard itself runs on the real one)."""

    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


def populate(url: str, days: int = 3, end: float | None = None) -> dict[str, Any]:
    """A ledger with three tenants and every kind of alert, booked through the rater's real
    booking step by real device sessions over `days` days ending at `end` (default now).

      acme     trial + savings plan + top-up; License workspace "shops" (100 basic licences,
               2 activated = 10,000,000 units) with 3 devices, postpaid workspace "kiosks" with 2
               (past the CNY 10 trial into the savings plan), License workspace "legacy" whose one
               activation ends in 15 days
      globex   License workspace "labs" (trial tier, 1 licence = 2,000,000 units) burnt to below
               its low_units: a low-pool alert; one device on a skewed price book: mismatches;
               one device silent since the first day
      initech  postpaid, no trial, no money: suspended after its first batch
    plus dead letters (garbage, a bad MAC, an unknown device).
    """
    end = time.time() if end is None else end
    clock = Clock(end - days * 86400)
    fleet = Fleet(url, clock)
    ids: dict[str, Any] = {}
    try:
        acme = fleet.account("acme", trial=True, top_up_ucny=50_000_000, plan_ucny=100_000_000)
        globex = fleet.account("globex")
        initech = fleet.account("initech")
        shops = fleet.workspace(acme, "shops", "license", licenses=100, activate=2)
        kiosks = fleet.workspace(acme, "kiosks", "postpaid")
        labs = fleet.workspace(globex, "labs", "license", licenses=100, activate=1, tier="trial")
        desks = fleet.workspace(initech, "desks", "postpaid")
        start = clock.t
        clock.t = end - 350 * 86400      # a licence bought and activated 350 days ago: expiring soon
        legacy = fleet.workspace(acme, "legacy", "license", licenses=100, activate=1)
        clock.t = start
        ids.update(acme=acme, globex=globex, initech=initech, shops=shops, kiosks=kiosks, labs=labs, desks=desks,
                   legacy=legacy)
        shop_devs = [fleet.device(shops) for _ in range(3)]
        kiosk_devs = [fleet.device(kiosks) for _ in range(2)]
        lab_devs = [fleet.device(labs) for _ in range(2)]
        skewed = fleet.device(labs, SKEWED_BOOK)
        silent = fleet.device(labs)
        fleet.serve(silent, 5, "text")
        desk = fleet.device(desks)
        steps = days * 8
        for i in range(steps):
            clock.advance(days * 86400 / steps - 60)
            for j, d in enumerate(shop_devs):
                fleet.serve(d, 6 + 3 * j, ("standard", "lite", "kb")[j])
            for d in kiosk_devs:
                fleet.serve(d, 40, "kb")
            for d in lab_devs:
                fleet.serve(d, 30, "premium")
            if i % 4 == 0:
                fleet.serve(skewed, 3, "standard")
            for d in shop_devs + kiosk_devs + lab_devs + [skewed]:
                fleet.status(d)
        fleet.serve(desk, 5, "standard")
        fleet.status(desk)
        clock.t = end
        for d in shop_devs + kiosk_devs:
            fleet.status(d)
        ws, dev = labs, lab_devs[0].dev
        fleet.send_raw(f"em/{ws}/{dev}/up/usage", b"\x9f\xff")                 # malformed CBOR
        fleet.send_raw(f"em/{ws}/{dev}/up/usage", P.seal(bytes(32), {            # a MAC under the wrong key
            "type": P.USAGE, "kid": 1, "dev": dev, "boot": 1, "seq": 999, "ver": 1, "lease": 0, "t0": 0,
            "flags": 0, "ucny": 0, "rounds": []}))
        fleet.send_raw("em/1/424242/up/usage", b"\x80")                          # unknown device
        ids.update(shop_devs=[d.dev for d in shop_devs], kiosk_devs=[d.dev for d in kiosk_devs],
                   lab_devs=[d.dev for d in lab_devs], skewed=skewed.dev, silent=silent.dev, desk=desk.dev,
                   end=int(end))
        ids["fleet"] = fleet
        return ids
    except BaseException:
        fleet.close()
        raise


def make_tokens(engine: Any, ids: dict[str, Any]) -> dict[str, str]:
    """An operator token and one tenant token per account, stored as create-token stores them."""
    out = {}
    with db.write_connect(engine) as conn, conn.begin():
        out["operator"] = tokens.create(conn, "operator", None, "ops", ids["end"])["token"]
        for name in ("acme", "globex", "initech"):
            out[name] = tokens.create(conn, "tenant", ids[name], name, ids["end"])["token"]
        revoked = tokens.create(conn, "operator", None, "old", ids["end"])
        tokens.revoke(conn, revoked["id"], ids["end"])
        out["revoked"] = revoked["token"]
    return out
