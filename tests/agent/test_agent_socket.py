"""The agent's Unix-socket API end to end: a real `edgemeter agent` process, a real Mosquitto
with per-device credentials and ACL, the in-test responder booking what the device reports."""
from __future__ import annotations

import json

import pytest

from agent_harness import SDK, AgentProcess, Responder, start_allowed, wait_for, write_config

DEV = 4101


@pytest.fixture
def setup(make_broker, tmp_path):
    broker = make_broker(auth=True)
    _, pw = broker.add_device(7, DEV)
    resp = Responder(broker)
    cfg = write_config(tmp_path, broker, DEV, pw)
    proc = AgentProcess(cfg)
    yield broker, resp, proc
    proc.kill()
    resp.close()


def test_socket_api_rounds_and_errors(setup):
    broker, resp, proc = setup
    sdk = SDK(proc.sock)
    assert sdk.call(op="ping", id=1) == {"ok": True, "id": 1}
    r = start_allowed(sdk)
    assert r["ok"] and r["code"] == 0 and r["reason"] == "ok" and r["round"] > 0
    rid = r["round"]
    for item in ("asr-standard", "intent", "tts-standard"):
        assert sdk.call(op="record", round=rid, item=item) == {"ok": True, "code": 0,
                                                               "reason": "ok"}
    assert sdk.call(op="record", round=rid, item="chat", model="qwen-max")["code"] == 0
    e = sdk.call(op="end", round=rid, id="x")
    assert e == {"ok": True, "code": 0, "reason": "ok", "ucny": 750 + 800 + 1700 + 4400,
                 "id": "x"}
    # business outcomes: ok with a code
    assert sdk.call(op="end", round=rid)["reason"] == "unknown round"
    assert sdk.call(op="record", round=rid, item="chat")["code"] == 9
    # agent session over the socket: translation launched once per entry
    totals = []
    for _ in range(2):
        rid = sdk.call(op="start")["round"]
        for item in ("asr-lite", "intent", "tts-standard", "translation"):
            sdk.call(op="record", round=rid, item=item)
        totals.append(sdk.call(op="end", round=rid)["ucny"])
    assert totals == [50 + 800 + 1700 + 5700, 50 + 800 + 1700]
    # errors: the request was wrong, nothing changed
    assert sdk.raw(b"{not json\n")["error"] == "bad_json"
    assert sdk.call(op="fly")["error"] == "bad_request"
    assert "round" in sdk.call(op="end")["message"]
    assert "round" in sdk.call(op="end", round=-1)["message"]
    assert sdk.raw(b"[1, 2]\n")["error"] == "bad_request"
    rid = sdk.call(op="start")["round"]
    bad = sdk.call(op="record", round=rid, item="warp-drive")
    assert bad["ok"] is False and bad["error"] == "invalid" and "warp-drive" in bad["message"]
    assert "image" in sdk.call(op="record", round=rid, item="chat", image="big")["message"]
    assert "colour" in sdk.call(op="record", round=rid, item="chat", colour=1)["message"]
    sdk.call(op="record", round=rid, item="asr-lite")
    sdk.call(op="record", round=rid, item="asr-standard")
    inv = sdk.call(op="end", round=rid)
    assert inv["error"] == "invalid" and inv["rule"] == "one-asr"
    st = sdk.call(op="status")["status"]
    assert st["open"] == 1 and st["rounds"] == 3 and st["dev"] == DEV and st["ws"] == 7
    # the books agree with what the SDK was told
    served = 750 + 800 + 1700 + 4400 + 50 + 800 + 1700 + 5700 + 50 + 800 + 1700
    wait_for(lambda: sum(u for t, w, u in resp.rounds(DEV)) == served, what="booking")
    wait_for(lambda: sdk.call(op="status")["status"]["unacked"] == 0, what="acks")
    # a line over api.max_line: an error, then the connection is closed
    long = sdk.raw(json.dumps({"op": "ping", "pad": "x" * 70000}).encode() + b"\n")
    assert long["error"] == "line_too_long"
    sdk.close()
    sdk2 = SDK(proc.sock)  # other connections are unaffected
    assert sdk2.call(op="ping") == {"ok": True}
    sdk2.close()
    assert proc.terminate() == 0
