"""The agent process through a network drop (Mosquitto stopped and restarted on the same port),
a clean SIGTERM shutdown, TLS, and the in-process Python API from many threads."""
from __future__ import annotations

import os
import signal
import threading
import time

from agent_harness import (SDK, AgentProcess, Responder, key_of, start_allowed, wait_for,
                           write_config)
from edgemeter.agent.api import Agent, RoundRefused


def serve(sdk, counts):
    for c in counts:
        r = start_allowed(sdk)
        sdk.call(op="record", round=r["round"], item="tour-guide-image", count=c)
        assert sdk.call(op="end", round=r["round"])["code"] == 0


def test_network_drop_and_broker_restart_resend(make_broker, tmp_path):
    broker = make_broker(auth=True)
    dev = 4301
    _, pw = broker.add_device(7, dev)
    resp = Responder(broker)
    proc = AgentProcess(write_config(tmp_path, broker, dev, pw))
    sdk = SDK(proc.sock)
    serve(sdk, [1, 2, 3])
    wait_for(lambda: resp.counts(dev) == [1, 2, 3], what="first rounds booked")
    broker.stop()  # the network is gone: the device keeps serving from its lease
    serve(sdk, [4, 5, 6, 7, 8])
    time.sleep(1.5)  # aged: sealed and "published" into the void
    st = sdk.call(op="status")["status"]
    assert st["unacked"] >= 1 and st["acked"] == 1
    broker.start()  # same port; the agent reconnects with backoff and re-sends
    wait_for(lambda: sorted(resp.counts(dev)) == [1, 2, 3, 4, 5, 6, 7, 8], timeout=20,
             what="rounds served offline booked")
    assert resp.retx(dev) >= 1  # at least one batch arrived as a retransmission
    wait_for(lambda: sdk.call(op="status")["status"]["unacked"] == 0, what="acks")
    assert sorted(resp.counts(dev)) == [1, 2, 3, 4, 5, 6, 7, 8]  # and nothing twice
    sdk.close()
    assert proc.terminate() == 0
    assert "connected to" in proc.log()
    resp.close()


def test_sigterm_clean_shutdown(make_broker, tmp_path):
    broker = make_broker(auth=True)
    dev = 4302
    _, pw = broker.add_device(7, dev)
    resp = Responder(broker)
    cfg = write_config(tmp_path, broker, dev, pw, **{"meter.age": 600})
    proc = AgentProcess(cfg)
    sdk = SDK(proc.sock)
    serve(sdk, [1, 2])  # not yet due (age 600 s, batch 3): sealed by the shutdown
    r = start_allowed(sdk)  # left open: settled by the shutdown (meter rule M6)
    sdk.call(op="record", round=r["round"], item="tour-guide-image", count=3)
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(20) == 0   # (a hang fails here; how fast it stops is no test's business)
    assert sorted(resp.counts(dev)) == [1, 2, 3]
    assert resp.lease_returns(dev) >= 1  # the lease went back to the pool (lease rule L8)
    log = proc.log()
    assert "stopping" in log and "stopped: 3 rounds this run, 0 batches unacked" in log
    assert not os.path.exists(proc.sock)
    # the journal is clean: a new start has nothing to resend and nothing unsealed
    a = Agent(str(tmp_path / "journal"), 7, dev, 1, key_of(dev), cfg={"postpaid": 0})
    assert a.report["resend"] == 0 and a.report["unsealed"] == 0
    st = a.status()
    assert st["lease"] == 0 and st["lease_state"] == "requested" and st["served"] == 3
    a.close()
    resp.close()


def test_tls_connection(make_broker, tmp_path):
    broker = make_broker(auth=True, tls=True)
    dev = 4303
    _, pw = broker.add_device(7, dev)
    resp = Responder(broker)
    cfg = write_config(tmp_path, broker, dev, pw, **{
        "mqtt.url": "mqtts://127.0.0.1:%d" % broker.tls_port, "mqtt.ca_file": str(broker.ca_file)})
    proc = AgentProcess(cfg)
    sdk = SDK(proc.sock)
    serve(sdk, [5])
    wait_for(lambda: resp.counts(dev) == [5], what="booked over TLS")
    sdk.close()
    assert proc.terminate() == 0
    resp.close()


def test_in_process_api_threads(tmp_path):
    a = Agent(str(tmp_path / "j"), 7, 4304, 1, key_of(4304),
              cfg={"postpaid": 1, "batch": 10, "window": 1000, "max_open": 16}, fsync=True)
    errors = []
    totals = []

    def worker(k):
        try:
            for i in range(25):
                with a.round() as r:
                    r.record("asr-lite")
                    r.record("tts-lite")
                    r.record("chat")
                totals.append(r.end.ucny)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors and totals == [2340] * 200
    st = a.status()
    assert st["rounds"] == 200 and st["ucny"] == 200 * 2340 and st["served"] == 200
    a.close()
    b = Agent(str(tmp_path / "j"), 7, 4304, 1, key_of(4304), cfg={"postpaid": 1})
    assert b.status()["served"] == 200 and b.report["resend"] == 20  # all kept, to resend
    s = b.start_round()
    b.drain(release=False)
    assert b.start_round().reason == "meter closed" and s.allowed
    b.close()


def test_round_refused_context(tmp_path):
    a = Agent(str(tmp_path / "j"), 7, 4305, 1, key_of(4305))  # prepaid, no lease yet
    try:
        with a.round() as r:
            r.record("chat")
        raise AssertionError("allowed without a lease")
    except RoundRefused as exc:
        assert exc.start.reason == "no lease" and not exc.start.allowed
    assert [p[0] for p in a.publishes()] == ["up/lease"]  # the request went out at once
    a.close()


def test_commands_and_price_book_over_mqtt(make_broker, tmp_path):
    from firmware_py import pricebook, proto as P
    broker = make_broker(auth=True)
    dev = 4306
    _, pw = broker.add_device(7, dev)
    resp = Responder(broker)
    proc = AgentProcess(write_config(tmp_path, broker, dev, pw,
                                     **{"meter.age": 600, "meter.batch": 50}))
    sdk = SDK(proc.sock)
    serve(sdk, [1])
    time.sleep(0.3)
    assert resp.counts(dev) == []  # neither full nor aged
    resp.command(dev, P.OP_REPORT)  # force a report
    wait_for(lambda: resp.counts(dev) == [1], what="forced report")
    resp.command(dev, P.OP_SUSPEND)
    wait_for(lambda: sdk.call(op="start")["reason"] == "suspended", what="suspension")
    resp.command(dev, P.OP_RESUME)
    wait_for(lambda: sdk.call(op="start")["allowed"], what="resumption")
    resp.command(dev, P.OP_ROTATE, 2, bytes(range(100, 132)))  # a new HMAC key, kid 2
    items = [list(r) for r in pricebook.ITEMS]
    items[pricebook.TOUR_IMAGE - 1][2] = 1500  # v2: tour-guide image analysis at CNY 1.50
    resp.push_book(dev, pricebook.make(version=2, items=[tuple(r) for r in items]))
    wait_for(lambda: sdk.call(op="status")["status"]["book"] == 2, what="price book v2")
    r = start_allowed(sdk)
    sdk.call(op="record", round=r["round"], item="tour-guide-image", count=2)
    assert sdk.call(op="end", round=r["round"])["ucny"] == 3000
    resp.command(dev, P.OP_REPORT)
    wait_for(lambda: sorted(resp.counts(dev)) == [1, 2], what="rounds under the new key")
    assert resp.states[dev]["kid"] == 2  # the cloud saw the device use the rotated key
    b = [x for x in resp.booked[dev].values() if x["ver"] == 2]
    assert b and b[0]["ucny"] == 3000 and b[0]["verdict"] == P.V_OK
    sdk.close()
    assert proc.terminate() == 0
    resp.close()


def test_refused_credentials_retry_with_backoff(make_broker, tmp_path):
    broker = make_broker(auth=True)
    dev = 4307
    broker.add_device(7, dev, password="the-right-one")
    resp = Responder(broker)
    proc = AgentProcess(write_config(tmp_path, broker, dev, "not-yet-valid"))
    wait_for(lambda: proc.log().count("broker refused the connection") >= 2, what="retries")
    sdk = SDK(proc.sock)
    assert sdk.call(op="start")["reason"] == "no lease"  # still answering, from the journal
    broker.add_device(7, dev, password="not-yet-valid")  # the operator fixes the credentials
    serve(sdk, [9])
    wait_for(lambda: resp.counts(dev) == [9], what="booked after the fix")
    sdk.close()
    assert proc.terminate() == 0
    resp.close()
