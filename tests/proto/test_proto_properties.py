"""Hypothesis: every well-formed message round-trips byte-exactly; any bytes at all, and any
mutation of a valid envelope, give a check() outcome and never an exception or a forgery."""
from __future__ import annotations

import json
from pathlib import Path

import cbor2
from hypothesis import given, settings, strategies as st

from firmware_py import proto as P

ROOT = Path(__file__).resolve().parents[2]
V = json.loads((ROOT / "tests" / "vectors" / "proto.json").read_text())
KEY = bytes.fromhex(V["key"])
KEYS = {1: KEY, 2: bytes.fromhex(V["new_key"])}
ENVELOPES = [bytes.fromhex(m["envelope"]) for m in V["messages"]]

u64 = st.integers(0, 2 ** 64 - 1)
small = st.integers(0, 2 ** 32)
entry = st.one_of(st.integers(1, 65535), st.lists(small, min_size=2, max_size=3),
                  st.lists(small, min_size=6, max_size=6))
rounds = st.lists(st.builds(lambda dt, es: [dt] + es, small, st.lists(entry, min_size=1, max_size=5)),
                  max_size=12)


@st.composite
def messages(draw: st.DrawFn) -> dict:
    mt = draw(st.sampled_from(sorted(P.MESSAGES)))
    name, _, fields, opt = P.MESSAGES[mt][:4]
    msg: dict = {"type": mt}
    for k in fields:
        if k == "rounds":
            msg[k] = draw(rounds)
        elif k == "verdicts":
            if draw(st.booleans()):
                msg[k] = draw(st.dictionaries(u64, st.integers(0, 255), max_size=4))
        elif k == "book":
            msg[k] = draw(st.binary(max_size=64))
        elif k == "version":
            msg[k] = draw(st.binary(max_size=P.MAX_VERSION))
        elif k == "remaining":
            msg[k] = draw(st.integers(-(2 ** 64), 2 ** 64 - 1))
        elif k == "flags":
            msg[k] = draw(st.integers(0, (1 << len(P.flag_names(mt))) - 1))
        elif k == "policy":
            msg[k] = draw(st.integers(0, 2))
        elif k in ("op", "arg", "key"):
            pass
        else:
            msg[k] = draw(u64)
    if mt == P.CMD:
        op = draw(st.integers(1, 4))
        msg["op"] = op
        if op == P.OP_ROTATE:
            msg["arg"], msg["key"] = draw(u64), draw(st.binary(min_size=32, max_size=32))
        elif op == P.OP_SUSPEND and draw(st.booleans()):
            msg["arg"] = draw(u64)
    return msg


@settings(max_examples=400, deadline=None)
@given(messages())
def test_messages_round_trip_and_match_cbor2(msg: dict) -> None:
    body = P.encode(msg)
    arr = cbor2.loads(body)
    assert arr[0] == msg["type"] and cbor2.dumps(arr, canonical=True) == body
    msg["kid"] = 1
    data = P.seal(KEY, msg)
    code, got = P.check(data, KEYS, msg["dev"])
    assert code == P.OK and got == msg


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_give_an_outcome(data: bytes) -> None:
    code, _ = P.check(data, KEYS, 1000000)
    assert code in (P.MALFORMED, P.UNKNOWN_KID, P.BAD_MAC, P.WRONG_DEVICE)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(ENVELOPES), st.data())
def test_mutated_envelopes_are_never_accepted(env: bytes, data: st.DataObject) -> None:
    b = bytearray(env)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(b) - 1))
        b[i] = data.draw(st.integers(0, 255))
    if bytes(b) == env:
        return
    code, _ = P.check(bytes(b), KEYS, 1000000)
    assert code != P.OK
