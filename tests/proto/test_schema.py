"""Every message the protocol code produces validates against docs/protocol.cddl (checked with
tools/cddl.py), invalid ones fail, and the strict decoder and the schema agree on the shape of
every message field by field."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from firmware_py import cbor, proto as P
from edgemeter.tools.cddl import Schema

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "core"))
import test_sessions as TS  # noqa: E402  (the in-memory wiring of device and cloud sessions)

SCHEMA = Schema.from_file(str(ROOT / "docs" / "protocol.cddl"))
VECTORS = json.loads((ROOT / "tests" / "vectors" / "proto.json").read_text())
NAMES = {spec[0]: mt for mt, spec in P.MESSAGES.items()}


def test_golden_messages_validate_as_envelope_and_as_their_own_rule() -> None:
    for m in VECTORS["messages"]:
        env = bytes.fromhex(m["envelope"])
        SCHEMA.validate_cbor(env, "envelope")
        body = cbor.loads(bytes.fromhex(m["body"]))
        assert SCHEMA.check(body, P.name(body[0])) is None, m["name"]
        for other in NAMES:
            if other != P.name(body[0]):
                assert SCHEMA.check(body, other) is not None, (m["name"], other)


def test_invalid_vectors_fail_the_schema() -> None:
    for r in VECTORS["invalid"]:
        try:
            value = cbor.loads(bytes.fromhex(r["hex"]))
        except cbor.CBORError:
            continue  # not even CBOR of our subset
        assert SCHEMA.check(value, "envelope") is not None, r["name"]


@pytest.mark.parametrize("seed", [1, 2])
def test_everything_the_sessions_publish_validates(seed: int) -> None:
    sent: list[tuple[str, bytes]] = []
    devs, cloud = TS._scenario(seed, 300, sent)
    TS._check(devs, cloud)
    kinds = set()
    for suffix, data in sent:
        SCHEMA.validate_cbor(data, "envelope")
        msg = P.unseal(data)[0]
        assert P.suffix(msg["type"]) == suffix
        kinds.add(P.name(msg["type"]))
        if msg["type"] == P.CMD:
            kinds.add("cmd-%d" % msg["op"])
    assert kinds >= set(NAMES) | {"cmd-2", "cmd-3", "cmd-4"}, kinds


_CANDIDATES = [0, 1, 2, 3, 4, 63, 64, 255, 256, 2 ** 32, 2 ** 64 - 1, -1, -(2 ** 64), b"",
               bytes(16), bytes(32), "x", [], [0], [[0, 2]], {}, {1: 0}, {1: 256}, True, None]


def test_decoder_and_schema_agree_field_by_field() -> None:
    """Replace, drop and add top-level fields of every golden body: the strict decoder accepts
    exactly what the schema accepts. Round contents and the pushed book are left out on
    purpose: the decoder takes any [dt, ...] round so that a verified batch with a round the
    core rejects is still booked (verdict invalid) and the cumulative ack never stalls; the
    device checks a pushed book with pricebook.from_cbor."""
    checked = 0
    for m in VECTORS["messages"]:
        body = cbor.loads(bytes.fromhex(m["body"]))
        fields = P.MESSAGES[body[0]][2]
        variants = [body[:i] for i in range(1, len(body))] + [body + [0]]
        for i in range(1, len(body)):
            if fields[i - 1] in ("rounds", "book"):
                continue
            variants += [body[:i] + [v] + body[i + 1:] for v in _CANDIDATES]
        for arr in variants:
            try:
                data = cbor.dumps(arr)
            except ValueError:
                continue
            try:
                P.decode_body(data)
                ok = True
            except P.ProtoError:
                ok = False
            assert ok == (SCHEMA.check(arr, "message") is None), (m["name"], arr)
            checked += 1
    assert checked > 2000
