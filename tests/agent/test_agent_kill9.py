"""kill -9 of the real agent process at every step of the publish/ack cycle, then a restart on
the same journal: the rounds the SDK was told were accepted and the rounds the cloud booked
agree exactly (none lost, none twice, none invented; the one round in flight at the kill may
go either way). Each round is identified by its tour-guide-image count."""
from __future__ import annotations

import time

import pytest

from agent_harness import SDK, AgentDied, AgentProcess, Responder, write_config

ROUNDS = 7
# (crash point, n-th pass): after the meter state is on disk, after a journal record is,
# after a publish is handed to MQTT, before and after the meter takes an ack
CASES = [("persist", 1), ("persist", 2), ("append", 1), ("append", 3), ("append", 5),
         ("append", 8), ("publish", 1), ("publish", 2), ("publish", 4), ("before_ack", 1),
         ("before_ack", 2), ("after_ack", 1), ("after_ack", 2), ("sync", 3)]


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    from edgemeter.tools.broker import Broker
    with Broker(auth=True) as broker:
        resp = Responder(broker)
        yield broker, resp
        resp.close()


def drive(cfg, crash):
    """Serve ROUNDS rounds through the socket API, restarting the agent after each death;
    returns (accepted counts, in-flight counts, kills)."""
    accepted, inflight, kills = [], [], 0
    try:
        proc = AgentProcess(cfg, crash)
    except AgentDied as exc:  # the crash point lies in the recovery at start
        assert exc.returncode == -9, str(exc)
        kills += 1
        proc = AgentProcess(cfg)
    i = 1
    sdk = SDK(proc.sock)
    serve_by = time.monotonic() + 60
    while i <= ROUNDS:
        assert time.monotonic() < serve_by, "rounds never allowed (no lease?): " + proc.log()
        try:
            r = sdk.call(op="start")
            if not r["allowed"]:
                time.sleep(0.02)
                continue
            sdk.call(op="record", round=r["round"], item="tour-guide-image", count=i)
            inflight.append(i)
            e = sdk.call(op="end", round=r["round"])
            inflight.remove(i)
            assert e["code"] == 0, e
            accepted.append(i)
            i += 1
        except (ConnectionError, OSError):
            sdk.close()
            proc.proc.wait(10)
            assert proc.proc.returncode == -9, proc.log()
            kills += 1
            if i in inflight:
                i += 1  # the SDK does not know: this round may or may not be journaled
            proc = AgentProcess(cfg)  # restart without the crash point
            sdk = SDK(proc.sock)
    sdk.close()
    # let every batch be acked, then stop cleanly; the crash point may still lie ahead (an ack,
    # the compaction at shutdown): then the agent dies here and is started once more
    deadline = time.monotonic() + 30
    while True:
        assert time.monotonic() < deadline, "never settled"
        try:
            c = SDK(proc.sock)
            st = c.call(op="status")["status"]
            c.close()
            if st["unacked"] or st["unsealed"]:
                time.sleep(0.05)
                continue
            rc = proc.terminate()
        except (ConnectionError, OSError):
            rc = proc.proc.wait(10)
        if rc == 0:
            break
        assert rc == -9, proc.log()
        kills += 1
        proc = AgentProcess(cfg)
    return accepted, inflight, kills


@pytest.mark.parametrize("point,n", CASES)
def test_kill9_at_every_step(cloud, tmp_path, point, n):
    broker, resp = cloud
    dev = 4200 + CASES.index((point, n))
    _, pw = broker.add_device(7, dev)
    cfg = write_config(tmp_path, broker, dev, pw)
    accepted, inflight, kills = drive(cfg, "%s:%d" % (point, n))
    assert kills == 1, "the crash point %s:%d was never reached" % (point, n)
    booked = resp.counts(dev)
    assert len(booked) == len(set(booked)), "a round booked twice: %r" % booked
    assert [c for c in accepted if c not in booked] == [], "accepted but not booked"
    assert [c for c in booked if c not in accepted + inflight] == [], "booked, never served"
    # the pool charged the device exactly what was booked
    total = sum(u for t, w, u in resp.rounds(dev))
    assert total == 1200 * sum(booked)
