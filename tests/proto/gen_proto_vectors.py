"""Regenerate tests/vectors/proto.json (golden protocol vectors) from firmware_py.proto.

    .venv/bin/python tests/proto/gen_proto_vectors.py

Run only when the wire format changes on purpose; the vectors pin every message's bytes.
Fields are JSON: byte strings as "hex:..." strings, verdict-map keys as decimal strings.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from firmware_py import cbor, pricebook, proto as P  # noqa: E402

KEY = bytes(range(32))
NEW_KEY = bytes(range(100, 132))
DEV, T = 1000000, 1767225600  # 2026-01-01T00:00:00Z
SMALL_BOOK = pricebook.make(version=2, items=pricebook.ITEMS[:6], models=pricebook.MODELS[:2])


def j(v):
    if isinstance(v, (bytes, bytearray)):
        return "hex:" + bytes(v).hex()
    if isinstance(v, dict):
        return {str(k): j(x) for k, x in v.items()}
    if isinstance(v, list):
        return [j(x) for x in v]
    return v


MSGS = [
    ("usage-1-round", {"type": P.USAGE, "kid": 1, "dev": DEV, "boot": 3, "seq": 100000, "ver": 1,
                       "lease": 70000, "t0": T, "flags": 0, "ucny": 5450,
                       "rounds": [[0, 2, 4, 5, 6]]}),
    ("usage-retx-3-rounds", {"type": P.USAGE, "kid": 1, "dev": DEV, "boot": 3, "seq": 100001,
                             "ver": 1, "lease": 0, "t0": T, "flags": P.RETX, "ucny": 5450 + 2340 + 2290,
                             "rounds": [[0, 2, 4, 5, 6], [31, 1, 3, 6], [95, 1, 3, [9, 1], [3, 2]]]}),
    ("usage-empty-gap-fill", {"type": P.USAGE, "kid": 1, "dev": DEV, "boot": 4, "seq": 99999,
                              "ver": 1, "lease": 0, "t0": T, "flags": P.RETX, "ucny": 0, "rounds": []}),
    ("ack", {"type": P.ACK, "kid": 1, "dev": DEV, "acked": 100000}),
    ("ack-verdicts", {"type": P.ACK, "kid": 1, "dev": DEV, "acked": 100001,
                      "verdicts": {100001: P.V_MISMATCH}}),
    ("lease-request", {"type": P.LEASE_REQUEST, "kid": 1, "dev": DEV, "boot": 3, "n": 1, "want": 0}),
    ("lease-renew", {"type": P.LEASE_RENEW, "kid": 1, "dev": DEV, "boot": 3, "n": 2, "lease": 70000,
                     "used": 436000, "want": 545000}),
    ("lease-return", {"type": P.LEASE_RETURN, "kid": 1, "dev": DEV, "boot": 3, "n": 3, "lease": 70000,
                      "used": 441450}),
    ("grant", {"type": P.GRANT, "kid": 1, "dev": DEV, "gn": 12, "lease": 70000, "total": 1090000,
               "validity": 86400, "flags": 0, "policy": 1, "allowance": 54500, "renew_at": 109000,
               "t": T}),
    ("grant-final", {"type": P.GRANT, "kid": 1, "dev": DEV, "gn": 13, "lease": 70000, "total": 1100000,
                     "validity": 86400, "flags": P.FINAL, "policy": 2, "allowance": 0, "renew_at": 2000,
                     "t": T + 60}),
    ("grant-closed", {"type": P.GRANT, "kid": 1, "dev": DEV, "gn": 14, "lease": 70000, "total": 441450,
                      "validity": 0, "flags": P.CLOSED, "policy": 0, "allowance": 0, "renew_at": 0,
                      "t": T + 120}),
    ("book", {"type": P.BOOK, "kid": 1, "dev": DEV, "ver": 2, "book": pricebook.to_cbor(SMALL_BOOK)}),
    ("cmd-report", {"type": P.CMD, "kid": 1, "dev": DEV, "cn": 5, "op": P.OP_REPORT}),
    ("cmd-suspend", {"type": P.CMD, "kid": 1, "dev": DEV, "cn": 6, "op": P.OP_SUSPEND, "arg": 1}),
    ("cmd-resume", {"type": P.CMD, "kid": 1, "dev": DEV, "cn": 7, "op": P.OP_RESUME}),
    ("cmd-rotate", {"type": P.CMD, "kid": 1, "dev": DEV, "cn": 8, "op": P.OP_ROTATE, "arg": 2,
                    "key": P.wrap_key(KEY, DEV, 8, 2, NEW_KEY)}),
    ("status", {"type": P.STATUS, "kid": 2, "dev": DEV, "boot": 3, "n": 4, "t": T + 180, "seq": 100001,
                "acked": 100000, "lease": 70000, "used": 441450, "remaining": -1450, "ver": 1,
                "flags": P.S_LAPSED | P.S_FINAL}),
    ("firmware", {"type": P.FIRMWARE, "kid": 1, "dev": DEV, "boot": 3, "n": 5, "version": b"0.1.0 micropython"}),
]


def invalid():
    """(name, hex, offset, reason fragment) for malformed envelopes and bodies."""
    good = P.encode(MSGS[0][1])
    tag = bytes(16)
    rows = []

    def env(body, t=tag):
        return cbor.dumps([body, t])

    def row(name, data):
        try:
            P.unseal(data)
        except P.ProtoError as exc:
            own = name not in ("trailing-bytes", "body-float")  # reasons worded by the codec
            rows.append({"name": name, "hex": data.hex(), "offset": exc.offset,
                         "reason": exc.reason if own else None})
            return
        raise SystemExit("vector %s decodes" % name)

    row("not-an-envelope", cbor.dumps([1, 2]))
    row("short-tag", env(good, bytes(15)))
    row("trailing-bytes", env(good) + b"\x00")
    row("unknown-type", env(cbor.dumps([42, 1, DEV])))
    row("usage-missing-field", env(cbor.dumps(cbor.loads(good)[:-1])))
    row("usage-negative-seq", env(cbor.dumps([1, 1, DEV, 3, -5, 1, 0, T, 0, 0, []])))
    row("usage-round-not-array", env(cbor.dumps([1, 1, DEV, 3, 5, 1, 0, T, 0, 0, [7]])))
    row("usage-unknown-flag", env(cbor.dumps([1, 1, DEV, 3, 5, 1, 0, T, 4, 0, []])))
    row("grant-bad-policy", env(cbor.dumps([6, 1, DEV, 1, 1, 10, 60, 0, 3, 0, 1, T])))
    row("rotate-without-key", env(cbor.dumps([8, 1, DEV, 9, 4, 2])))
    row("rotate-short-key", env(cbor.dumps([8, 1, DEV, 9, 4, 2, bytes(31)])))
    row("body-float", env(bytes.fromhex("8301f97e00")))
    row("firmware-version-too-long", env(cbor.dumps([10, 1, DEV, 3, 5, b"v" * 33])))
    return rows


def main() -> None:
    out = {
        "key": KEY.hex(), "new_key": NEW_KEY.hex(), "dev": DEV,
        "messages": [{"name": n, "msg": j(m), "body": P.encode(m).hex(),
                      "envelope": P.seal(KEY if m["kid"] == 1 else NEW_KEY, m).hex()}
                     for n, m in MSGS],
        "wrap": {"old": KEY.hex(), "dev": DEV, "cn": 8, "kid": 2, "new": NEW_KEY.hex(),
                 "wrapped": P.wrap_key(KEY, DEV, 8, 2, NEW_KEY).hex()},
        "invalid": invalid(),
    }
    path = ROOT / "tests" / "vectors" / "proto.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", path, len(out["messages"]), "messages,", len(out["invalid"]), "invalid")


if __name__ == "__main__":
    main()
