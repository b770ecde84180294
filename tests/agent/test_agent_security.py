"""The agent against hostile or careless local callers and lost files: a real `edgemeter agent`
process, a real Mosquitto, the in-test cloud responder.

 - `record` refuses at once what the round could never bill (a count beyond the item's
   range), and the round's valid parts are still billed at `end`;
 - a JSON integer of thousands of digits is a bad request, not an unknown item;
 - the socket server serves a bounded number of connections and refuses the rest;
 - journal damage is logged at WARNING and counted in `status`;
 - after both state files are lost the boot counter still goes forward (the cloud would
   refuse a smaller one's control messages as replays), with a WARNING.
"""
from __future__ import annotations

import json
import os
import socket

import pytest

from agent_harness import SDK, AgentProcess, Responder, start_allowed, wait_for, write_config
from firmware_py import proto as P

DEV = 4601


@pytest.fixture
def setup(make_broker, tmp_path):
    broker = make_broker(auth=True)
    _, pw = broker.add_device(7, DEV)
    resp = Responder(broker)
    made: list[AgentProcess] = []

    def agent(**over):
        p = AgentProcess(write_config(tmp_path, broker, DEV, pw, **over))
        made.append(p)
        return p
    yield resp, agent, tmp_path
    for p in made:
        p.kill()
    resp.close()


def test_record_refuses_what_the_round_could_never_bill(setup):
    resp, agent, _ = setup
    proc = agent()
    sdk = SDK(proc.sock)
    rid = start_allowed(sdk)["round"]
    assert sdk.call(op="record", round=rid, item="asr-lite")["code"] == 0
    for count in (20_000, 10 ** 9):
        r = sdk.call(op="record", round=rid, item="tts-standard", count=count)
        assert r["ok"] is False and r["error"] == "invalid" and r["rule"] == "count-range", r
    # counts of one item add up: the second record would take it past the range
    assert sdk.call(op="record", round=rid, item="tour-guide", count=1)["code"] == 0
    assert sdk.call(op="record", round=rid, item="tour-guide-image", count=600)["code"] == 0
    r = sdk.call(op="record", round=rid, item="tour-guide-image", count=600)
    assert r["error"] == "invalid" and r["rule"] == "count-range"
    huge = b'{"op":"record","round":%d,"item":"chat","count":%s}\n' % (rid, b"9" * 5000)
    r = sdk.raw(huge)
    assert r["error"] == "bad_request" and "count" in r["message"], r
    for item in ("intent", "tts-lite"):
        assert sdk.call(op="record", round=rid, item=item)["code"] == 0
    e = sdk.call(op="end", round=rid)
    assert e["code"] == 0 and e["ucny"] == 50 + 800 + 90 + 1200 + 600 * 1200, e
    wait_for(lambda: sum(u for _, _, u in resp.rounds(DEV)) == e["ucny"], what="booking")
    sdk.close()


def test_socket_connections_are_bounded(setup):
    _, agent, _ = setup
    proc = agent(**{"api.max_connections": 4})
    held = [SDK(proc.sock) for _ in range(4)]
    assert all(s.call(op="ping") == {"ok": True} for s in held)
    for _ in range(20):         # the server would otherwise start a thread for each
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(proc.sock)
            assert json.loads(s.makefile("rb").readline())["error"] == "busy"
    assert all(s.call(op="ping") == {"ok": True} for s in held)
    held.pop().close()
    wait_for(lambda: _pings(proc.sock), what="a freed slot")
    for s in held:
        s.close()


def _pings(path: str) -> bool:
    s = SDK(path)
    try:
        return s.call(op="ping") == {"ok": True}
    except (ConnectionError, json.JSONDecodeError):
        return False
    finally:
        s.close()


def _serve(sdk: SDK, n: int) -> None:
    for _ in range(n):
        rid = start_allowed(sdk)["round"]
        for item in ("asr-lite", "tts-lite", "chat"):
            sdk.call(op="record", round=rid, item=item)
        assert sdk.call(op="end", round=rid)["code"] == 0


def test_journal_damage_is_a_warning_and_counted(setup):
    resp, agent, tmp = setup
    proc = agent(**{"meter.batch": 100, "meter.age": 3600})
    sdk = SDK(proc.sock)
    _serve(sdk, 5)
    sdk.close()
    assert proc.terminate() == 0
    jdir = tmp / "journal"
    seg = sorted(p for p in jdir.iterdir() if p.name.endswith(".log"))[0]
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0xFF
    seg.write_bytes(bytes(data))
    proc = agent()
    st = SDK(proc.sock).call(op="status")["status"]
    assert st["journal_damaged"] >= 1, st
    assert any("WARNING" in ln and "damage" in ln for ln in proc.log().splitlines()), proc.log()[-2000:]


def test_boot_counter_survives_the_loss_of_both_state_files(setup):
    resp, agent, tmp = setup
    boots = []
    for _ in range(2):
        proc = agent()
        sdk = SDK(proc.sock)
        _serve(sdk, 2)
        boots.append(sdk.call(op="status")["status"]["boot"])
        sdk.close()
        assert proc.terminate() == 0
    for name in ("meter.a", "meter.b"):
        os.unlink(tmp / "journal" / name)
    proc = agent()
    sdk = SDK(proc.sock)
    boot = sdk.call(op="status")["status"]["boot"]
    assert boot > boots[-1], (boots, boot)
    assert any("WARNING" in ln and "state" in ln for ln in proc.log().splitlines()), proc.log()[-2000:]
    _serve(sdk, 1)      # the cloud takes its lease messages: no replay of an old boot
    wait_for(lambda: sdk.call(op="status")["status"]["unacked"] == 0, what="acks")
    assert resp.states[DEV]["boot"] == boot
    sdk.close()
    assert proc.terminate() == 0
