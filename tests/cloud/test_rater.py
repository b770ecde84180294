"""The rater against a real Mosquitto and a real SQLite store: booking once, acks after commit,
dead letters, leases, postpaid suspension, key rotation, mismatches, metrics, shutdown."""
from __future__ import annotations

import urllib.request

import pytest
from sqlalchemy import select

from edgemeter.cloud import admin, db
from edgemeter.cloud import schema as S
from firmware_py import proto as P
from rater_helpers import RaterProc, fleet_devices, ledger_summary, setup_store, wait_for
from edgemeter.tools.fleetpub import STANDARD_CHAT, STANDARD_CHAT_UCNY, Fleet

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def broker(make_broker):
    return make_broker()


@pytest.fixture
def store(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    return url, setup_store(url, postpaid_devices=3, license_devices=2)


@pytest.fixture
def rater(broker, store, tmp_path):
    r = RaterProc(broker.url, store[0], "rater-a", tmp_path).start()
    yield r
    r.kill9()


@pytest.fixture
def fleet(broker, store):
    f = Fleet(broker.host, broker.port, fleet_devices(store[1])).start()
    yield f
    f.stop()


def test_batches_are_booked_once_and_acked_cumulatively(rater, fleet, store):
    url, reg = store
    devs = [d["id"] for d in reg["postpaid"]]
    for _ in range(5):
        for d in devs:
            fleet.send(d, rounds=10)
    assert fleet.wait_acked(30)
    s = ledger_summary(url)
    assert (s["batches"], s["distinct"], s["rounds"]) == (15, 15, 150)
    assert s["ucny"] == 150 * STANDARD_CHAT_UCNY
    # a redelivered batch and a retransmission of an acked one change nothing but are acked
    fleet.devices[devs[0]].unacked[3] = {"type": P.USAGE, "kid": 1, "dev": devs[0], "boot": 1, "seq": 3, "ver": 1,
                                         "lease": 0, "t0": 1, "flags": 0, "ucny": 0, "rounds": [[0, 5]]}
    fleet.resend_unacked()
    assert wait_for(lambda: 3 not in fleet.devices[devs[0]].unacked)
    assert ledger_summary(url) == s
    engine = db.make_engine(url)
    with engine.connect() as conn:
        acked = dict(conn.execute(select(S.devices.c.id, S.devices.c.acked_seq)).all())
        lines = conn.execute(select(S.usage_lines.c.item, S.usage_lines.c.calls)
                             .where(S.usage_lines.c.batch_id == 1).order_by(S.usage_lines.c.item)).all()
    engine.dispose()
    assert all(acked[d] == 5 for d in devs)
    assert [tuple(x) for x in lines] == [(2, 10), (4, 10), (5, 10), (6, 10)]
    assert admin.main(["rebuild", "--db", url, "--check"]) == 0


def test_bad_input_goes_to_dead_letters_and_changes_nothing(rater, fleet, store, broker):
    url, reg = store
    d0, d1 = reg["postpaid"][0], reg["postpaid"][1]
    ws = d0["workspace"]
    pub = fleet.publish
    pub(P.topic(ws, d0["id"], "up/usage"), b"\xff\x00garbage")                      # malformed CBOR
    topic, data = fleet.devices[d0["id"]].usage([STANDARD_CHAT])
    fleet.devices[d0["id"]].seq -= 1
    del fleet.devices[d0["id"]].unacked[1]
    pub(topic, data[:-1] + bytes([data[-1] ^ 1]))                                   # bad MAC
    pub(topic, data[:-1] + bytes([data[-1] ^ 1]))                                   # ... counted twice
    pub(P.topic(ws, 999_999, "up/usage"), data)                                     # unknown device
    pub(P.topic(ws, d1["id"], "up/usage"), data)                                    # d0's batch on d1's topic:
    #                                                 d1's key does not verify it, so it is a bad MAC
    forged = P.seal(d1["key"], {"type": P.USAGE, "kid": 1, "dev": d0["id"], "boot": 1, "seq": 1, "ver": 1,
                                "lease": 0, "t0": 1, "flags": 0, "ucny": 50, "rounds": [[0, 1]]})
    pub(P.topic(ws, d1["id"], "up/usage"), forged)                                  # d1 speaking for d0
    pub(P.topic(ws + 50, d0["id"], "up/usage"), data)                               # another workspace's tree
    pub(P.topic(ws, d0["id"], "up/lease"), data)                                    # usage on the lease topic
    pub(P.topic(ws, d0["id"], "up/usage"), b"\x00" * (P.MAX_MSG + 1))               # oversized
    pub("em/x/y/up/usage", data)                                                    # not our topic tree
    fleet.send_control(d0["id"], P.STATUS, t=1, seq=0, acked=0, lease=0, used=0, remaining=0, ver=1, flags=0)
    d = fleet.devices[d0["id"]]
    d.n -= 1
    fleet.send_control(d0["id"], P.STATUS, t=1, seq=0, acked=0, lease=0, used=0, remaining=0, ver=1, flags=0)  # replay
    expected = {"malformed": 1, "bad_mac": 3, "wrong_device": 1, "unknown_device": 1, "wrong_topic": 3,
                "oversized": 1, "replay": 1}
    assert wait_for(lambda: ledger_summary(url)["dead"] == expected, 20), ledger_summary(url)["dead"]
    assert ledger_summary(url)["batches"] == 0
    # the rater keeps going
    fleet.send(d0["id"])
    assert fleet.wait_acked(20)
    assert ledger_summary(url)["batches"] == 1
    assert admin.main(["dead-letters", "--db", url]) == 0


def test_leases_over_mqtt_and_usage_against_them(rater, fleet, store):
    url, reg = store
    dev = reg["license"][0]["id"]
    fleet.send_control(dev, P.LEASE_REQUEST, want=0)
    g = fleet.wait_down(dev, lambda m: m["type"] == P.GRANT)
    assert g is not None and g["total"] == 5_450_000 and g["validity"] == 3600 and not g["flags"] & P.CLOSED
    for _ in range(3):
        fleet.send(dev, rounds=10, lease=g["lease"])
    assert fleet.wait_acked(20)
    engine = db.make_engine(url)
    with engine.connect() as conn:
        ls = conn.execute(select(S.leases)).mappings().one()
        pool = conn.execute(select(S.pools)).mappings().one()
    assert ls["booked"] == 30 * STANDARD_CHAT_UCNY and ls["used"] == 30 * STANDARD_CHAT_UCNY
    assert pool["consumed"] == 30 * STANDARD_CHAT_UCNY
    fleet.send_control(dev, P.LEASE_RETURN, lease=g["lease"], used=30 * STANDARD_CHAT_UCNY)
    closed = fleet.wait_down(dev, lambda m: m["type"] == P.GRANT and m["flags"] & P.CLOSED)
    assert closed is not None and closed["lease"] == g["lease"]
    with engine.connect() as conn:
        pool = conn.execute(select(S.pools)).mappings().one()
    engine.dispose()
    assert pool["out"] == 0 and pool["free"] == pool["added"] - 30 * STANDARD_CHAT_UCNY
    # usage of a License device without a lease is booked, and flagged
    fleet.send(reg["license"][1]["id"], rounds=1)
    assert fleet.wait_acked(20)
    assert admin.main(["rebuild", "--db", url, "--check"]) == 0


def test_mismatch_is_booked_at_the_cloud_rating_and_reported_in_the_ack(rater, fleet, store):
    url, reg = store
    dev = reg["postpaid"][0]["id"]
    seq = fleet.send(dev, rounds=2, ucny=1)   # the device claims 1 µCNY for two 5450 µCNY rounds
    assert fleet.wait_acked(20)
    assert fleet.devices[dev].verdicts == {seq: P.V_MISMATCH}
    engine = db.make_engine(url)
    with engine.connect() as conn:
        b = conn.execute(select(S.usage_batches)).mappings().one()
        m = conn.execute(select(S.mismatches)).mappings().one()
    engine.dispose()
    assert (b["device_ucny"], b["rated_ucny"], b["mismatch"]) == (1, 2 * STANDARD_CHAT_UCNY, True)
    assert m["reason"] == "mismatch"


def test_suspension_and_resumption_are_pushed(broker, tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    reg = setup_store(url, postpaid_devices=2, balance_ucny=20_000)
    r = RaterProc(broker.url, url, "rater-s", tmp_path).start()
    f = Fleet(broker.host, broker.port, fleet_devices(reg, ("postpaid",))).start()
    try:
        a, b = (d["id"] for d in reg["postpaid"])
        f.send(a, rounds=3)            # 16350 µCNY: covered
        assert f.wait_acked(20)
        assert f.devices[a].down == [] and f.devices[b].down == []
        f.send(a, rounds=1)            # 5450 more: the balance goes below zero
        suspended = {}
        for d in (a, b):
            cmd = f.wait_down(d, lambda m: m["type"] == P.CMD and m["op"] == P.OP_SUSPEND)
            assert cmd is not None
            suspended[d] = cmd["cn"]
        assert admin.main(["top-up", "--db", url, "--account", str(reg["account"]), "--cny", "1"]) == 0
        for d in (a, b):
            cmd = f.wait_down(d, lambda m: m["type"] == P.CMD and m["op"] == P.OP_RESUME)
            assert cmd is not None
            # a device obeys a command only with a higher cn than the last (device_session):
            # device a, whose batch tipped the balance, must not be sent its suspend's cn again
            assert cmd["cn"] > suspended[d], (d, suspended[d], cmd["cn"])
        assert admin.main(["rebuild", "--db", url, "--check"]) == 0
    finally:
        f.stop()
        r.kill9()


def test_key_rotation_is_delivered_and_used(rater, fleet, store):
    url, reg = store
    dev = reg["postpaid"][0]["id"]
    assert admin.main(["rotate-key", "--db", url, "--device", str(dev)]) == 0
    cmd = fleet.wait_down(dev, lambda m: m["type"] == P.CMD and m["op"] == P.OP_ROTATE)
    assert cmd is not None and fleet.devices[dev].kid == 2
    fleet.send(dev)                     # signed with the new key
    assert fleet.wait_acked(20)
    assert ledger_summary(url)["batches"] == 1


def test_metrics_and_graceful_shutdown(broker, store, tmp_path):
    url, reg = store
    from edgemeter.tools.broker import free_port
    port = free_port()
    r = RaterProc(broker.url, url, "rater-m", tmp_path, "--metrics-port", str(port)).start()
    f = Fleet(broker.host, broker.port, fleet_devices(reg, ("postpaid",))).start()
    try:
        for d in reg["postpaid"]:
            f.send(d["id"], rounds=10)
        assert f.wait_acked(20)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "edgemeter_rounds_booked_total 30.0" in text
        assert f"edgemeter_ucny_booked_total {30 * STANDARD_CHAT_UCNY}.0" in text
        assert "edgemeter_ingest_lag_seconds_bucket" in text and 'edgemeter_pool_units{' in text
        assert r.term() == 0
        assert '"stopped"' in r.log()
    finally:
        f.stop()
        r.kill9()


def test_a_message_that_cannot_be_booked_is_isolated_and_dead_lettered(rater, fleet, store):
    url, reg = store
    bad, good = reg["postpaid"][0]["id"], reg["postpaid"][1]["id"]
    engine = db.make_engine(url)
    with engine.begin() as conn:      # a device whose stored session state is corrupt
        conn.execute(S.devices.update().where(S.devices.c.id == bad).values(session="{not json"))
    engine.dispose()
    fleet.send(bad)
    fleet.send(good)
    assert wait_for(lambda: fleet.devices[good].acked == 1, 20)
    assert wait_for(lambda: ledger_summary(url)["dead"] == {"internal": 1}, 20)
    s = ledger_summary(url)
    assert s["per_device"] == {good: 1}
    assert '"message failed; dead-lettered"' in rater.log()
