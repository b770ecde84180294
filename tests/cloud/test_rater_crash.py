"""Crash and scale-out: kill -9 raters while devices publish; the ledger stays exact.

SQLite: one rater killed -9 twice mid-stream and restarted under the same client id.
PostgreSQL: two raters share the subscription; one is killed -9 for good while devices
publish; the survivor (and the devices' retransmissions) complete the ledger.
"""
from __future__ import annotations

import re
import threading
import time
import urllib.request

import pytest
from sqlalchemy import func, select

from edgemeter.cloud import admin, db
from edgemeter.cloud import schema as S
from rater_helpers import RaterProc, fleet_devices, ledger_summary, setup_store, wait_for
from edgemeter.tools.broker import free_port
from edgemeter.tools.fleetpub import STANDARD_CHAT_UCNY, Fleet

pytestmark = pytest.mark.timeout(300)

DEVICES, BATCHES, ROUNDS = 20, 40, 10


def _publish_all(fleet: Fleet, devs: list[int], pace_s: float) -> threading.Thread:
    def run() -> None:
        for _ in range(BATCHES):
            for d in devs:
                fleet.send(d, rounds=ROUNDS)
            time.sleep(pace_s)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _booked(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return float(re.search(r"^edgemeter_batches_booked_total (\S+)$", text, re.M).group(1))


def _exact(url: str, devs: list[int]) -> None:
    s = ledger_summary(url)
    assert s["batches"] == s["distinct"] == DEVICES * BATCHES
    assert s["per_device"] == {d: BATCHES for d in devs}
    assert s["rounds"] == DEVICES * BATCHES * ROUNDS
    assert s["ucny"] == DEVICES * BATCHES * ROUNDS * STANDARD_CHAT_UCNY
    engine = db.make_engine(url)
    with engine.connect() as conn:
        seqs = conn.execute(select(S.usage_batches.c.device_id, func.min(S.usage_batches.c.seq),
                                   func.max(S.usage_batches.c.seq)).group_by(S.usage_batches.c.device_id)).all()
        payg = conn.execute(select(func.sum(S.account_entries.c.list_ucny))).scalar_one()
        acked = dict(conn.execute(select(S.devices.c.id, S.devices.c.acked_seq)).all())
    engine.dispose()
    assert all((lo, hi) == (1, BATCHES) for _, lo, hi in seqs)
    assert payg == s["ucny"]                     # every booked batch charged exactly once
    assert all(acked[d] == BATCHES for d in devs)
    assert admin.main(["rebuild", "--db", url, "--check"]) == 0


def test_rater_killed_mid_stream_restarts_with_an_exact_ledger(make_broker, tmp_path):
    broker = make_broker()
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    reg = setup_store(url, postpaid_devices=DEVICES)
    devs = [d["id"] for d in reg["postpaid"]]
    rater = RaterProc(broker.url, url, "rater-crash", tmp_path).start()
    fleet = Fleet(broker.host, broker.port, fleet_devices(reg, ("postpaid",))).start()
    try:
        pub = _publish_all(fleet, devs, 0.05)
        for kill_at in (DEVICES * BATCHES // 4, DEVICES * BATCHES // 2):
            assert wait_for(lambda: ledger_summary(url)["batches"] >= kill_at, 60)
            rater.kill9()
            time.sleep(0.5)                       # devices keep publishing into the broker
            rater.start()
        pub.join(60)
        assert fleet.wait_acked(90, resend_every=3.0)
        _exact(url, devs)
        assert rater.log().count('"subscribed"') == 3
    finally:
        fleet.stop()
        rater.kill9()


@pytest.mark.postgres
def test_two_raters_on_postgres_one_killed_the_ledger_stays_exact(make_broker, pg_url, tmp_path):
    broker = make_broker()
    reg = setup_store(pg_url, postpaid_devices=DEVICES)
    devs = [d["id"] for d in reg["postpaid"]]
    ports = [free_port(), free_port()]
    a = RaterProc(broker.url, pg_url, "rater-a", tmp_path, "--metrics-port", str(ports[0])).start()
    b = RaterProc(broker.url, pg_url, "rater-b", tmp_path, "--metrics-port", str(ports[1])).start()
    fleet = Fleet(broker.host, broker.port, fleet_devices(reg, ("postpaid",))).start()
    try:
        pub = _publish_all(fleet, devs, 0.05)
        assert wait_for(lambda: ledger_summary(pg_url)["batches"] >= DEVICES * BATCHES // 3, 60)
        # the shared subscription split the work: both raters booked batches
        assert wait_for(lambda: all(_booked(p) > 0 for p in ports), 30), [_booked(p) for p in ports]
        b.kill9()                                 # gone for good: its session's messages are the devices' to resend
        pub.join(60)
        assert fleet.wait_acked(120, resend_every=3.0)
        _exact(pg_url, devs)
    finally:
        fleet.stop()
        a.kill9()
        b.kill9()
