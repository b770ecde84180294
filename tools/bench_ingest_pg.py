"""Ingest on PostgreSQL: one rater draining a queue, and 1, 2, 3 raters sharing it.

    python -m edgemeter.tools.bench_ingest_pg [--json] [--quick] [--pg URL] [--devices N] [--batches N]

`run()` returns rows {key, name, value, unit, how} (aggregated by `edgemeter bench`, module
`ingest_pg`). It runs when a PostgreSQL server answers at --pg (default EDGEMETER_PG_URL, else
127.0.0.1:5432/test); otherwise its rows say why they were skipped. One run:

 1. A Mosquitto from the shipped configuration (as tools.bench_ingest: queue limits raised so a
    whole phase can be queued), a scratch database created on the server (dropped at the end)
    and a SQLite file, each with N postpaid devices registered through cloud.devices.
 2. Phases, each with R rater processes (`edgemeter rater`, the shipped command) on one
    ledger: the raters' persistent sessions are created with the shared subscription
    (cloud.mosquitto.rater_subscription: the broker has no passwords, so $share/raters/em/+/+/up/#), the publishers queue N x batches signed 10-round batches
    (QoS 1) while every rater is offline (Mosquitto spreads a shared subscription's messages
    over its sessions, offline ones included), then the R raters start together and drain.
    Phases: SQLite with 1 rater (the reference, same harness), PostgreSQL with 1, 2, 3 raters.
    The sessions of a phase are ended (clean start, expiry 0) before the next one.
 3. Per phase: rounds booked per wall second (batches / (the moment the last is seen committed
    - the first receive), as tools.bench_ingest), each rater's CPU (user + system, /proc) and
    the CPU of the PostgreSQL backends serving the scratch database (/proc of the pids in
    pg_stat_activity; the server's shared WAL writer and checkpointer are not counted, so
    this is a lower bound of the server's cost). Every phase checks the ledger: batch count,
    rounds and µCNY exact.
 4. The ingest step alone (cloud.ingest, no broker) on PostgreSQL with groups holding one batch
    of each device, as a large fleet's groups do: its CPU per batch.
The scale rows divide wall-clock rates, so they show what the machine allows: on 2 CPUs the
raters, Mosquitto and PostgreSQL share them; the per-rater-CPU-second rows are what each rater
achieves per CPU it gets, which is what adding CPUs buys.
"""
from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgemeter.cloud.mosquitto import rater_subscription
from edgemeter.tools import benchrows
from edgemeter.tools.bench_ingest import (QUEUE_LINES, ROUNDS, RaterProc, Receiver,
                                          make_store, messages, publish, wait_booked)

SUBSCRIPTION = rater_subscription(None)   # the bench broker has no passwords


def _end_session(host: str, port: int, client_id: str) -> None:
    """Remove a persistent session: connect with clean start (and no expiry), then leave."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.connect(host, port, clean_start=True)
    c.loop_start()
    time.sleep(0.2)
    c.disconnect()
    c.loop_stop()


def _backends(admin_url: str, dbname: str) -> dict[int, float]:
    """CPU seconds so far of every server process connected to dbname, by pid."""
    import psycopg
    with psycopg.connect(admin_url, autocommit=True) as c:
        pids = [r[0] for r in c.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (dbname,))]
    return {p: benchrows.proc_cpu_s(p) for p in pids}


def phase(broker: Any, url: str, work: Path, devs: list, raters: int, batches: int, first_seq: int,
          since: int, tag: str, pg: tuple[str, str] | None = None) -> dict[str, Any]:
    """One drain with `raters` processes on one ledger; returns its figures (module docstring)."""
    from edgemeter.tools.fleetpub import STANDARD_CHAT_UCNY

    ids = [f"bench-{tag}-{raters}-{i + 1}" for i in range(raters)]
    for cid in ids:
        Receiver(broker.host, broker.port, cid, SUBSCRIPTION).subscribe_offline()
    msgs = messages(devs, batches, first_seq)
    n = len(msgs)
    publish(broker.host, broker.port, msgs)
    procs = [RaterProc(broker.url, url, work, cid) for cid in ids]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.wait_for("connected", 60)
        cpu0 = [p.cpu_s() for p in procs]
        pg0 = _backends(*pg) if pg else {}
        led = wait_booked(url, n, since, 900)
        cpu = [p.cpu_s() - c for p, c in zip(procs, cpu0)]
        pg1 = _backends(*pg) if pg else {}
    finally:
        for p in procs:
            p.stop()
    for cid in ids:
        _end_session(broker.host, broker.port, cid)
    exact = led["batches"] == n and led["rounds"] == n * ROUNDS and led["ucny"] == n * ROUNDS * STANDARD_CHAT_UCNY
    if not exact:
        raise RuntimeError(f"ledger not exact after the {tag} phase with {raters} rater(s): {led}, expected {n} batches")
    wall = max(led["done_ms"] - led["first_ms"], 1) / 1000
    pg_cpu = sum(pg1.get(p, c0) - c0 for p, c0 in pg0.items()) + sum(c for p, c in pg1.items() if p not in pg0)
    return {"batches": n, "wall": wall, "rate": n * ROUNDS / wall, "cpu": cpu, "cpu_total": sum(cpu),
            "per_cpu_s": n * ROUNDS / max(sum(cpu), 1e-9), "cpu_us_per_batch": sum(cpu) / n * 1e6,
            "pg_cpu": pg_cpu, "max_id": led["max_id"]}


def one_per_device(url: str, devices: int, batches: int) -> float:
    """CPU seconds per batch of the ingest step alone (no broker) when every group holds one
    batch of each device, as in a large fleet (groups of `devices` messages, each device once):
    the per-device work of a group (row lock and load, session, signed ack, session save) is
    then paid by every batch. A fresh set of devices in the same database."""
    import gc

    from edgemeter.cloud import db, ingest
    from edgemeter.cloud.rater import tune_gc

    devs = make_store(url, devices, "bench-one-per-device")
    inc = [ingest.Incoming(t, data, 0, i) for i, (t, data) in enumerate(messages(devs, batches, 1))]
    engine = db.open_store(url)
    ing = ingest.Ingest(engine)
    thresholds = gc.get_threshold()
    tune_gc()
    try:
        t0 = time.process_time()
        for k in range(0, len(inc), devices):
            ing.process(inc[k:k + devices])
        return (time.process_time() - t0) / len(inc)
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        engine.dispose()


def _skipped(why: str) -> list[dict[str, Any]]:
    return [{"key": k, "name": name, "value": "skipped", "unit": "", "how": f"PostgreSQL not reachable: {why}"}
            for k, name in (("ingest.pg.rounds_per_s", "ingest on PostgreSQL: rounds booked per second, one rater"),
                            ("ingest.pg.cpu_us_per_batch", "ingest on PostgreSQL: rater CPU per batch"),
                            ("ingest.pg.scale_3_over_1", "ingest on PostgreSQL: 3 raters / 1 rater"))]


def run(quick: bool = False, pg_url: str | None = None, devices: int = 100,
        batches: int | None = None) -> list[dict[str, Any]]:
    """The rows of the module docstring; skipped rows when no PostgreSQL answers."""
    from edgemeter.tools import pgcheck
    from edgemeter.tools.broker import Broker

    admin_url = pg_url or pgcheck.pg_url()
    why = pgcheck.reachable(admin_url)
    if why:
        return _skipped(why)
    import psycopg

    batches = batches or (30 if quick else 200)
    dbname = f"em_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{dbname}"')
    url = admin_url.rsplit("/", 1)[0] + "/" + dbname
    work = Path(tempfile.mkdtemp(prefix="edgemeter-bench-ingest-pg-"))
    broker = Broker(extra=QUEUE_LINES, workdir=work / "mq").start()
    try:
        lite = f"sqlite:///{work / 'ledger.db'}"
        sq = phase(broker, lite, work, make_store(lite, devices), 1, batches, 1, 0, "sqlite")
        devs = make_store(url, devices)
        res: dict[int, dict[str, Any]] = {}
        since, seq = 0, 1
        for k in (1, 2, 3):
            res[k] = phase(broker, url, work, devs, k, batches, seq, since, "pg", (admin_url, dbname))
            since, seq = res[k]["max_id"], seq + batches
        res[1]["one_per_device"] = one_per_device(url, devices, 10 if quick else 50)
        load = os.getloadavg()[0]
    finally:
        broker.close()
        shutil.rmtree(work, ignore_errors=True)
        with psycopg.connect(admin_url, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    return _rows(sq, res, devices, batches, load)


def _rows(sq: dict[str, Any], res: dict[int, dict[str, Any]], devices: int, batches: int,
          load: float) -> list[dict[str, Any]]:
    one = res[1]
    n = one["batches"]
    what = (f"{n} batches x {ROUNDS} rounds from {devices} devices queued in Mosquitto, then drained by "
            f"`edgemeter rater` into PostgreSQL; ledger exact")
    per = ", ".join(f"{k}: {r['per_cpu_s']:,.0f}" for k, r in res.items())
    walls = ", ".join(f"{k}: {r['rate']:,.0f}" for k, r in res.items())
    pg_core = n * ROUNDS / one["pg_cpu"] if one["pg_cpu"] else 0
    return [
        {"key": "ingest.pg.rounds_per_s", "name": "ingest on PostgreSQL: rounds booked per second, one rater",
         "value": round(one["rate"]), "unit": "rnd/s", "how": what},
        {"key": "ingest.pg.cpu_us_per_batch", "name": "ingest on PostgreSQL: rater CPU per batch",
         "value": round(one["cpu_us_per_batch"]), "unit": "us",
         "how": "user+system CPU of the rater process while draining / batches booked"},
        {"key": "ingest.pg.rounds_per_cpu_s", "name": "ingest on PostgreSQL: rounds per rater CPU-second",
         "value": round(one["per_cpu_s"]), "unit": "rnd/s", "how": "one rater; what it books with a CPU to itself"},
        {"key": "ingest.pg.cpu_us_per_batch_one_per_device",
         "name": "ingest on PostgreSQL: CPU per batch, groups of one batch per device (step alone)",
         "value": round(one["one_per_device"] * 1e6), "unit": "us",
         "how": f"cloud.ingest in-process, groups of {devices} messages from {devices} devices (each once), as a "
                f"large fleet's groups are: the per-device work (row lock and load, session, signed ack, save) "
                f"is paid by every batch, where the drains above share it between several batches of a device"},
        {"key": "ingest.sqlite.rounds_per_cpu_s", "name": "ingest on SQLite (same harness): rounds per rater CPU-second",
         "value": round(sq["per_cpu_s"]), "unit": "rnd/s",
         "how": f"the same drain into a SQLite file, {sq['cpu_us_per_batch']:.0f} us of rater CPU per batch, "
                f"{sq['rate']:,.0f} rounds/s wall"},
        {"key": "ingest.pg.over_sqlite_per_cpu", "name": "ingest: PostgreSQL / SQLite, rounds per rater CPU-second",
         "value": round(one["per_cpu_s"] / sq["per_cpu_s"], 2), "unit": "x", "how": "target >= 0.5"},
        {"key": "ingest.pg.rounds_per_pg_cpu_s", "name": "ingest on PostgreSQL: rounds per server CPU-second (backends)",
         "value": round(pg_core), "unit": "rnd/s",
         "how": f"one rater; CPU of the backends serving the database ({one['pg_cpu']:.2f} s for {n} batches; "
                f"the WAL writer and checkpointer not counted)"},
        {"key": "ingest.pg.scale_2_over_1", "name": "ingest on PostgreSQL: 2 raters / 1 rater, rounds per wall second",
         "value": round(res[2]["rate"] / one["rate"], 2), "unit": "x", "how": f"rounds/s by raters: {walls}"},
        {"key": "ingest.pg.scale_3_over_1", "name": "ingest on PostgreSQL: 3 raters / 1 rater, rounds per wall second",
         "value": round(res[3]["rate"] / one["rate"], 2), "unit": "x",
         "how": f"target >= 2 where CPUs allow; {os.cpu_count()} CPUs shared by the raters, Mosquitto and "
                f"PostgreSQL (load average {load:.1f} at the end)"},
        {"key": "ingest.pg.per_rater_cpu_3_over_1",
         "name": "ingest on PostgreSQL: rounds per rater CPU-second, 3 raters / 1 rater",
         "value": round(res[3]["per_cpu_s"] / one["per_cpu_s"], 2), "unit": "x",
         "how": f"1.0 = no contention between raters on the store; rounds per rater CPU-second by raters: {per}"},
    ]


def main(argv: list[str] | None = None) -> int:
    ap = benchrows.parser("edgemeter.tools.bench_ingest_pg", __doc__)
    ap.add_argument("--pg", help="PostgreSQL URL of a database to connect to (a scratch database is created "
                                 "beside it); default EDGEMETER_PG_URL or 127.0.0.1:5432/test")
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--batches", type=int, help="batches per device per phase (default 200, --quick 30)")
    args = ap.parse_args(argv)
    return benchrows.emit(run(args.quick, args.pg, args.devices, args.batches), args.json)


if __name__ == "__main__":
    sys.exit(main())
