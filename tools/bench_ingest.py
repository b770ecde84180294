"""Ingest benchmark: publishers -> Mosquitto -> `edgemeter rater` -> SQLite, 10-round batches.

    python -m edgemeter.tools.bench_ingest [--json] [--quick] [--devices N] [--batches N] [--repeats N]

`run()` returns rows {name, value, unit, how} (aggregated by `edgemeter bench`). One run:

 1. A Mosquitto from the shipped configuration (tools.broker; anonymous, plain listener, the
    in-flight window of 100 and queue limits raised only so a whole run can be queued) and a
    SQLite ledger with N postpaid devices (registered through cloud.devices).
 2. Every device's batches are signed in advance (firmware_py.proto, the standard voice chat
    round, 10 rounds per batch, a round every 30 s).
 3. Drain: the rater's persistent session (shared subscription $share/raters/...) and a
    receive-only paho subscriber's persistent session ($share/baseline/..., same messages)
    are created; then, repeats + 1 times: the publishers publish a set of batches (QoS 1)
    while all are offline, the receive-only subscriber drains its queue, a second receive-only
    subscriber ($share/same/...) on the rater's own client class (cloud.mqttclient.RaterClient,
    paho with a cheaper receive path) drains its own, and the rater process is started and
    drains its own. Each of the first `repeats` rater drains is compared with the mean of the
    subscriber drains just before and just after it (a machine whose speed drifts during the
    run cancels out); the rows are medians, and the ratio row lists every comparison. The
    same-client ratio is reported, not the target.
    Rates: messages / (last - first receive) for the subscribers; batches / (the moment the
    last batch is seen committed - the rater's first receive) for the rater (its
    usage_batches.received_ms; the ledger is polled every 10 ms). The ratio is rater /
    stock subscriber.
 4. Concurrent: a fresh rater and subscriber online while the publishers publish a second
    set of batches as fast as they can; same measures. On a small machine the publishers
    share the CPU with both, so this row is bounded by the publishers.
Every booking is checked afterwards (count, rounds, µCNY), so a fast wrong run cannot pass.
 5. Breakdown: the rater's ingest step alone (cloud.ingest.Ingest.process in groups of 500,
    the rater's GC settings, no broker) books the same number of fresh batches into a fresh
    store; its CPU per batch is split into verifying and strictly decoding (proto.check), the
    session's re-rating (memoised as in the rater) and the rest (SQL and bookkeeping); the
    rater's CPU per batch beyond the ingest step is its MQTT loop (paho, acks, metrics).
"""
from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from edgemeter.cloud.mqttclient import RaterClient
from edgemeter.cloud.mosquitto import rater_subscription
from edgemeter.tools import benchrows

ROUNDS = 10
QUEUE_LINES = ["max_queued_messages 0", "max_queued_bytes 0"]


def session_props() -> Properties:
    p = Properties(PacketTypes.CONNECT)
    p.SessionExpiryInterval = 3600
    return p


class Receiver:
    """A receive-only paho subscriber (QoS 1, persistent session, auto-ack): paho's stock Client,
    or with cls=RaterClient the rater's own client class (cloud.mqttclient)."""

    def __init__(self, host: str, port: int, client_id: str, topic: str, cls: type = mqtt.Client):
        self.host, self.port, self.topic = host, port, topic
        self.n = 0
        self.first = self.last = 0.0
        self.cpu_first = self.cpu_last = 0.0
        self.target = 0
        self.done = threading.Event()
        c = self.client = cls(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c.on_message = self._on_message
        self._sub = threading.Event()
        c.on_subscribe = lambda *a: self._sub.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        now = time.perf_counter()
        if not self.n:
            self.first = now
            self.cpu_first = time.thread_time()
        self.n += 1
        self.last = now
        self.cpu_last = time.thread_time()
        if self.n >= self.target:
            self.done.set()

    def subscribe_offline(self) -> None:
        """Create the persistent session with its subscription, then leave."""
        c = self.client
        c.connect(self.host, self.port, clean_start=False, properties=session_props())
        c.loop_start()
        c.subscribe(self.topic, qos=1)
        self._sub.wait(10)
        c.disconnect()
        c.loop_stop()

    def cpu_per_message(self) -> float:
        """CPU seconds of the network thread per message, between the first and the last."""
        return (self.cpu_last - self.cpu_first) / max(self.n - 1, 1)

    def drain(self, target: int, timeout: float) -> float:
        self.target, self.n = target, 0
        self.done.clear()
        c = self.client
        c.connect(self.host, self.port, clean_start=False, properties=session_props())
        c.loop_start()
        self.done.wait(timeout)
        c.disconnect()
        c.loop_stop()
        return self.n / (self.last - self.first) if self.n > 1 and self.last > self.first else 0.0


def publish(host: str, port: int, msgs: list[tuple[str, bytes]], clients: int = 2) -> float:
    """Publish msgs over `clients` connections (QoS 1, all PUBACKed); messages per second."""
    parts = [msgs[i::clients] for i in range(clients)]
    t0 = time.perf_counter()

    def one(i: int, part: list[tuple[str, bytes]]) -> None:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{i}", protocol=mqtt.MQTTv5)
        c.max_inflight_messages_set(1000)
        c.connect(host, port)
        c.loop_start()
        infos = []
        for topic, data in part:
            infos.append(c.publish(topic, data, qos=1))
            if len(infos) >= 20000:
                for x in infos:
                    x.wait_for_publish(60)
                infos = []
        for x in infos:
            x.wait_for_publish(60)
        c.disconnect()
        c.loop_stop()

    ts = [threading.Thread(target=one, args=(i, p)) for i, p in enumerate(parts)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return len(msgs) / (time.perf_counter() - t0)


def make_store(url: str, devices: int, name: str = "bench") -> list[tuple[int, int, bytes]]:
    """N postpaid devices of one new account `name` (topped up far beyond the run) in the store."""
    from edgemeter.cloud import accounts, db
    from edgemeter.cloud import devices as reg

    engine = db.open_store(url, create=True)
    now = int(time.time())
    with db.write_connect(engine) as conn, conn.begin():
        acc = accounts.create_account(conn, name, now)
        ws = accounts.create_workspace(conn, acc, name, "postpaid", now)
        accounts.top_up(conn, acc, 10**15, now)
        out = [(ws, r["id"], r["key"]) for r in (reg.register(conn, ws, now) for _ in range(devices))]
    engine.dispose()
    return out


def messages(devs: list[tuple[int, int, bytes]], batches: int, first_seq: int) -> list[tuple[str, bytes]]:
    from firmware_py import proto as P
    from edgemeter.tools.fleetpub import STANDARD_CHAT, STANDARD_CHAT_UCNY, T0

    rounds = [[30 * i] + STANDARD_CHAT for i in range(ROUNDS)]    # a round every 30 s
    out = []
    for seq in range(first_seq, first_seq + batches):
        for ws, dev, key in devs:
            m = {"type": P.USAGE, "kid": 1, "dev": dev, "boot": 1, "seq": seq, "ver": 1, "lease": 0,
                 "t0": T0 + seq, "flags": 0, "ucny": ROUNDS * STANDARD_CHAT_UCNY, "rounds": rounds}
            out.append((P.topic(ws, dev, "up/usage"), P.seal(key, m)))
    return out


def ledger_totals(url: str, since_id: int = 0) -> dict[str, int]:
    from sqlalchemy import func, select

    from edgemeter.cloud import db
    from edgemeter.cloud import schema as S

    engine = db.make_engine(url)
    b = S.usage_batches
    with engine.connect() as conn:
        r = conn.execute(select(func.count(), func.coalesce(func.sum(b.c.rounds), 0),
                                func.coalesce(func.sum(b.c.rated_ucny), 0), func.min(b.c.received_ms),
                                func.max(b.c.booked_ms), func.max(b.c.id)).where(b.c.id > since_id)).one()
    engine.dispose()
    return {"batches": r[0], "rounds": int(r[1]), "ucny": int(r[2]), "first_ms": r[3] or 0, "last_ms": r[4] or 0,
            "max_id": r[5] or since_id}


class RaterProc:
    """One `edgemeter rater` process for a benchmark (its log in workdir/<client id>.log)."""

    def __init__(self, broker_url: str, url: str, workdir: Path, client_id: str = "bench-rater"):
        self.log = workdir / f"{client_id}.log"
        self.args = [sys.executable, "-m", "edgemeter.tools.cli", "rater", "--broker", broker_url, "--db", url,
                     "--client-id", client_id, "--housekeeping", "60"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.offset = 0

    def start(self) -> None:
        self.offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(self.args, stdout=f, stderr=subprocess.STDOUT)

    def wait_for(self, word: str, timeout: float = 30) -> None:
        start = self.offset
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if f'"{word}"' in self.log.read_text()[start:]:
                return
            time.sleep(0.05)
        raise RuntimeError(f"rater did not log {word!r}: " + self.log.read_text()[-2000:])

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the rater (its watchdog and worker) has used so far."""
        return 0.0 if self.proc is None else benchrows.proc_cpu_s(self.proc.pid, tree=True)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _breakdown(work: Path, devices: int, batches: int, group: int = 500) -> dict[str, float]:
    """Step 5: CPU seconds per batch of the ingest step alone and of its parts."""
    import gc

    from edgemeter.cloud import db, ingest
    from edgemeter.cloud.rater import tune_gc
    from firmware_py import proto as P

    url = f"sqlite:///{work / 'breakdown.db'}"
    devs = make_store(url, devices)
    keys = {dev: {1: key} for _, dev, key in devs}
    msgs = messages(devs, batches, 1)
    n = len(msgs)
    engine = db.open_store(url)
    ing = ingest.Ingest(engine)
    inc = [ingest.Incoming(t, data, 0, i) for i, (t, data) in enumerate(msgs)]
    thresholds = gc.get_threshold()
    tune_gc()
    try:
        t0 = time.process_time()
        decoded = [P.check(data, keys[int(t.split("/")[2])], int(t.split("/")[2]))[1] for t, data in msgs]
        t1 = time.process_time()
        sessions = {dev: ingest.MemoSession(ws, dev, keys[dev], None, ing.books, ing) for ws, dev, _ in devs}
        t2 = time.process_time()
        for msg in decoded:
            sess = sessions[msg["dev"]]
            sess.rated = []
            sess.rate(msg)
        t3 = time.process_time()
        ing.clear_memo()
        for k in range(0, n, group):
            ing.process(inc[k:k + group])
        t4 = time.process_time()
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        engine.dispose()
    led = ledger_totals(url)
    if led["batches"] != n:
        raise RuntimeError(f"breakdown store not exact: {led}")
    return {"total": (t4 - t3) / n, "check": (t1 - t0) / n, "rate": (t3 - t2) / n}


def wait_booked(url: str, target: int, since_id: int, timeout: float) -> dict[str, int]:
    """Poll the ledger (plain sqlite3 or psycopg, every 10 ms) until `target` batches after
    since_id are committed; the ledger's figures plus done_ms, the wall clock (ms) when that was
    first seen: the end of the rater's span (its booked_ms is stamped when a group starts, so
    the last group's own processing would be missed)."""
    if url.startswith("sqlite:///"):
        import sqlite3
        conn: Any = sqlite3.connect(url.split("sqlite:///", 1)[1], timeout=30)
        query = "SELECT count(*) FROM usage_batches WHERE id > ?"
    else:
        import psycopg
        conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
        query = "SELECT count(*) FROM usage_batches WHERE id > %s"
    deadline = time.monotonic() + timeout
    try:
        while True:
            (count,) = conn.execute(query, (since_id,)).fetchone()
            if count >= target or time.monotonic() > deadline:
                done_ms = time.time_ns() // 1_000_000
                break
            time.sleep(0.01)
    finally:
        conn.close()
    led = ledger_totals(url, since_id)
    led["done_ms"] = done_ms
    return led


def run(quick: bool = False, devices: int = 100, batches: int | None = None,
        repeats: int | None = None) -> list[dict[str, Any]]:
    """Every ingest figure as rows {name, value, unit, how}."""
    from edgemeter.tools.broker import Broker

    batches = batches or (30 if quick else 200)
    repeats = repeats or (1 if quick else 4)
    work = Path(tempfile.mkdtemp(prefix="edgemeter-bench-ingest-"))
    url = f"sqlite:///{work / 'ledger.db'}"
    broker = Broker(extra=QUEUE_LINES, workdir=work / "mq").start()
    rater = RaterProc(broker.url, url, work)
    try:
        devs = make_store(url, devices)
        n = devices * batches
        load = os.getloadavg()[0]
        runs, ok, since, led = _drains(broker, rater, url, devs, batches, repeats)
        rows = _drain_rows(runs, repeats, n, devices, ok, load)
        if not ok:
            raise RuntimeError(f"ledger not exact after the drain: {led}")
        rows += _concurrent_rows(broker, rater, url, devs, batches, repeats, since)
        rows += _breakdown_rows(work, devices, batches, runs[-1]["rater_cpu"], n)
    finally:
        rater.stop()
        broker.close()
        shutil.rmtree(work, ignore_errors=True)
    return rows


def _drains(broker: Any, rater: RaterProc, url: str, devs: list, batches: int,
            repeats: int) -> tuple[list[dict[str, float]], bool, int, dict[str, Any]]:
    """Everything queued while the receivers are offline, drained repeats + 1 times in a row
    (subscriber, same-client subscriber, rater): (the runs' figures, ledger exact, the last
    booked id, the last drain's ledger)."""
    from edgemeter.tools.fleetpub import STANDARD_CHAT_UCNY

    n = len(devs) * batches
    base = Receiver(broker.host, broker.port, "bench-baseline", "$share/baseline/em/+/+/up/#")
    base.subscribe_offline()
    same = Receiver(broker.host, broker.port, "bench-same", "$share/same/em/+/+/up/#", RaterClient)
    same.subscribe_offline()
    pre = Receiver(broker.host, broker.port, "bench-rater", rater_subscription(None))
    pre.subscribe_offline()          # the rater's own session, created under its client id
    since = 0
    ok = True
    runs: list[dict[str, float]] = []
    for k in range(repeats + 1):     # one more than paired: its subscriber drain closes the last pair
        msgs = messages(devs, batches, k * batches + 1)
        pub_rate = publish(broker.host, broker.port, msgs)
        base_rate = base.drain(n, 300)
        base_cpu = base.cpu_per_message()
        same_rate = same.drain(n, 300)
        same_cpu = same.cpu_per_message()
        rater.start()
        rater.wait_for("connected")
        cpu0 = rater.cpu_s()
        led = wait_booked(url, n, since, 600)
        rater_cpu = (rater.cpu_s() - cpu0) / max(led["batches"], 1)
        rater.stop()
        ok = ok and (led["batches"] == n and led["rounds"] == n * ROUNDS
                     and led["ucny"] == n * ROUNDS * STANDARD_CHAT_UCNY)
        since = led["max_id"]
        rate = led["batches"] / (max(led["done_ms"] - led["first_ms"], 1) / 1000)
        runs.append({"rater": rate, "base": base_rate, "same": same_rate, "pub": pub_rate,
                     "rater_cpu": rater_cpu, "base_cpu": base_cpu, "same_cpu": same_cpu})
    return runs, ok, since, led


def _drain_rows(runs: list[dict[str, float]], repeats: int, n: int, devices: int, ok: bool,
                load: float) -> list[dict[str, Any]]:
    """The drain rows: each rater drain against the mean of the subscriber drains before and
    after it, medians reported."""
    reps: list[dict[str, float]] = []
    for k in range(repeats):
        # each rater drain against the mean of the subscriber drains just before and just
        # after it, so that a machine speeding up or slowing down during the run cancels out
        r, nxt = runs[k], runs[k + 1]
        b_rate, b_cpu = (r["base"] + nxt["base"]) / 2, (r["base_cpu"] + nxt["base_cpu"]) / 2
        s_rate = (r["same"] + nxt["same"]) / 2
        reps.append(dict(r, ratio=r["rater"] / b_rate if b_rate else 0.0,
                         cpu_ratio=b_cpu / r["rater_cpu"] if r["rater_cpu"] else 0.0,
                         same_ratio=r["rater"] / s_rate if s_rate else 0.0))
    med = {key: statistics.median(r[key] for r in reps) for key in reps[0]}
    each = ", ".join(f"{r['ratio']:.2f}" for r in reps)
    how = (f"{n} batches x {ROUNDS} rounds from {devices} devices queued in Mosquitto, then drained, "
           f"{repeats + 1} times (medians of {repeats}); rater = batches / (last commit seen - first "
           f"receive); "
           f"ledger exact: {ok}")
    return [
        {"name": "ingest drain: rounds booked per second (one rater, SQLite)", "value": round(med["rater"] * ROUNDS),
         "unit": "rnd/s", "how": how},
        {"name": "ingest drain: receive-only paho subscriber, rounds per second", "value": round(med["base"] * ROUNDS),
         "unit": "rnd/s", "how": "the same messages through a QoS 1 shared subscription, receive only, same run"},
        {"name": "ingest drain: rater / receive-only ratio", "value": round(med["ratio"], 2),
         "unit": "x", "how": f"target >= 0.7; median of {repeats} rater drains, each against the mean of "
                             f"the subscriber drains before and after it ({each}); load average "
                             f"{load:.1f} on {os.cpu_count()} CPUs at the start"},
        {"name": "ingest drain: rater CPU per batch", "value": round(med["rater_cpu"] * 1e6), "unit": "us",
         "how": "user+system CPU of the rater process while draining / batches booked (load-independent)"},
        {"name": "ingest drain: receive-only subscriber CPU per message", "value": round(med["base_cpu"] * 1e6),
         "unit": "us", "how": "CPU time of its network thread between the first and the last message"},
        {"name": "ingest drain: rater / receive-only ratio by CPU per message",
         "value": round(med["cpu_ratio"], 2), "unit": "x",
         "how": "the ratio the wall clock converges to when each has a CPU; stable under load"},
        {"name": "ingest drain: receive-only subscriber on the rater's client class, rounds per second",
         "value": round(med["same"] * ROUNDS), "unit": "rnd/s",
         "how": "as the receive-only subscriber, with cloud.mqttclient.RaterClient instead of paho's Client"},
        {"name": "ingest drain: rater / receive-only ratio, both on the rater's client class",
         "value": round(med["same_ratio"], 2), "unit": "x",
         "how": f"by CPU per message: {med['same_cpu'] / med['rater_cpu']:.2f}x; the share of "
                "the rater's time that is receiving at all"},
        {"name": "ingest drain: rounds per rater CPU-second",
         "value": round(ROUNDS / med["rater_cpu"]) if med["rater_cpu"] else 0,
         "unit": "rnd/s", "how": "what one rater process books with a whole CPU to itself"},
        {"name": "ingest: publishers' rate (2 paho clients, QoS 1)", "value": round(med["pub"] * ROUNDS),
         "unit": "rnd/s", "how": f"{n} messages, all PUBACKed"},
    ]


def _concurrent_rows(broker: Any, rater: RaterProc, url: str, devs: list, batches: int, repeats: int,
                     since: int) -> list[dict[str, Any]]:
    """Receivers online while the publishers publish."""
    from edgemeter.tools.fleetpub import STANDARD_CHAT_UCNY

    n = len(devs) * batches
    msgs2 = messages(devs, batches, (repeats + 1) * batches + 1)
    base2 = Receiver(broker.host, broker.port, "bench-baseline", "$share/baseline/em/+/+/up/#")
    base2.target = n
    base2.client.connect(broker.host, broker.port, clean_start=False, properties=session_props())
    base2.client.loop_start()
    rater.start()
    rater.wait_for("subscribed")
    publish(broker.host, broker.port, msgs2)
    base2.done.wait(300)
    led2 = wait_booked(url, n, since, 600)
    base2.client.disconnect()
    base2.client.loop_stop()
    rater.stop()
    b2 = base2.n / (base2.last - base2.first) if base2.last > base2.first else 0
    r2 = led2["batches"] / (max(led2["done_ms"] - led2["first_ms"], 1) / 1000)
    ok2 = led2["batches"] == n and led2["ucny"] == n * ROUNDS * STANDARD_CHAT_UCNY
    return [
        {"name": "ingest concurrent: rounds booked per second while publishing", "value": round(r2 * ROUNDS),
         "unit": "rnd/s", "how": f"rater, subscriber and 2 publishers online together on {os.cpu_count()} CPUs; "
                                 f"ledger exact: {ok2}"},
        {"name": "ingest concurrent: rater / receive-only ratio", "value": round(r2 / b2, 2) if b2 else 0, "unit": "x",
         "how": "both bounded by the publishers when they are the slowest part"},
    ]


def _breakdown_rows(work: Path, devices: int, batches: int, rater_cpu: float, n: int) -> list[dict[str, Any]]:
    """The rater's CPU per batch taken apart (no broker)."""
    bd = _breakdown(work, devices, batches)
    sql = bd["total"] - bd["check"] - bd["rate"]
    what = f"{n} fresh batches, Ingest.process in groups of 500 with the rater's GC settings, no broker"
    return [
        {"name": "breakdown: ingest step alone, CPU per batch", "value": round(bd["total"] * 1e6), "unit": "us",
         "how": what},
        {"name": "breakdown: of which MAC verify + strict decode (proto.check)", "value": round(bd["check"] * 1e6),
         "unit": "us", "how": "the core's CBOR codec and mac (hmac.digest on CPython), measured alone"},
        {"name": "breakdown: of which session re-rating (memoised)", "value": round(bd["rate"] * 1e6),
         "unit": "us", "how": "CloudSession.rate with the rater's memo, measured alone"},
        {"name": "breakdown: of which SQL and bookkeeping (the rest)", "value": round(sql * 1e6), "unit": "us",
         "how": "batch row, usage lines, charge, acks and session state, one transaction per group"},
        {"name": "breakdown: rater's MQTT loop (paho, acks, metrics), CPU per batch",
         "value": round((rater_cpu - bd["total"]) * 1e6), "unit": "us",
         "how": "drain CPU per batch minus the ingest step alone"},
    ]


def main(argv: list[str] | None = None) -> int:
    ap = benchrows.parser("edgemeter.tools.bench_ingest", __doc__)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--batches", type=int)
    ap.add_argument("--repeats", type=int, help="rater drains compared (default 4, --quick 1)")
    args = ap.parse_args(argv)
    return benchrows.emit(run(args.quick, args.devices, args.batches, args.repeats), args.json)


if __name__ == "__main__":
    sys.exit(main())
