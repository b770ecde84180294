"""Wire sizes of the protocol: what a usage batch costs a device in bytes, MAC and envelope
included (issue 3 targets: a one-round batch <= 64 bytes, <= 20 bytes per round in a
10-round batch).

    python -m edgemeter.tools.bench_wire [--json]

`run()` returns rows {name, value, unit, how} (aggregated by `edgemeter bench`). Sizes are
exact byte counts of proto.seal() output, not timings. Realistic values: device id
1,000,000, seq 100,000, lease id 1,000,000, boot 12, t0 = now (Unix seconds), the standard
voice chat round (standard ASR + intent + standard TTS + casual chat, 5,450 uCNY), rounds
30 s apart unless said otherwise.
"""
from __future__ import annotations

import sys
import time
from typing import Any

from firmware_py import pricebook, proto as P, rating
from edgemeter.tools import benchrows

KEY = bytes(range(32))
DEV, SEQ, LEASE, BOOT = 1000000, 100000, 1000000, 12
TARGET_ONE, TARGET_PER_ROUND = 64, 20


def _round(kind: str) -> list:
    book = pricebook.default()
    if kind == "standard":
        rnd = rating.from_flags(book, asr="standard", intent=True, tts="standard", llm="chat")
    elif kind == "lightweight":
        rnd = rating.from_flags(book, asr="lite", tts="lite", llm="chat")
    else:  # knowledge-base Q&A on a 4x model with a 3x TTS: entries carry counts and models
        rnd = rating.from_flags(book, asr="lite", intent=True, tts_model="cosyvoice-v3-plus",
                                llm="kb", model="deepseek-v3")
    return rating.round_to_wire(rnd)


def batch(n: int, kind: str = "standard", spacing: int = 30, lease: int = LEASE,
          t0: int | None = None) -> bytes:
    """The signed usage batch of n rounds of one kind, `spacing` seconds apart."""
    book = pricebook.default()
    wire = _round(kind)
    ucny = rating.rate(book, rating.round_from_wire(wire))[1]
    msg = {"type": P.USAGE, "kid": 1, "dev": DEV, "boot": BOOT, "seq": SEQ, "ver": 1,
           "lease": lease, "t0": int(time.time()) if t0 is None else t0, "flags": 0,
           "ucny": ucny * n, "rounds": [[i * spacing] + wire for i in range(n)]}
    return P.seal(KEY, msg)


def run(quick: bool = False) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    one = len(batch(1))
    ten = len(batch(10))
    rows.append({"name": "usage batch, 1 standard voice chat round, MAC and envelope",
                 "value": one, "unit": "bytes",
                 "how": f"target <= {TARGET_ONE}: {'met' if one <= TARGET_ONE else 'MISSED'}"})
    rows.append({"name": "usage batch, 10 standard voice chat rounds, per round",
                 "value": round(ten / 10, 1), "unit": "bytes/round",
                 "how": f"{ten} bytes in all; target <= {TARGET_PER_ROUND}: "
                        f"{'met' if ten <= 10 * TARGET_PER_ROUND else 'MISSED'}"})
    for label, data in (
            ("usage batch, 1 round, postpaid (lease 0)", batch(1, lease=0)),
            ("usage batch, 1 lightweight voice chat round", batch(1, "lightweight")),
            ("usage batch, 1 KB Q&A round with models (4x LLM, 3x TTS)", batch(1, "models")),
            ("usage batch, 10 rounds 10 minutes apart, per round",
             batch(10, spacing=600)),
            ("usage batch, 64 standard rounds, per round", batch(64))):
        per = "per round" in label
        n = 10 if "10 rounds" in label else 64 if "64" in label else 1
        rows.append({"name": label, "value": round(len(data) / n, 1) if per else len(data),
                     "unit": "bytes/round" if per else "bytes", "how": f"{len(data)} bytes in all"})
    msgs = {
        "ack": {"type": P.ACK, "acked": SEQ},
        "grant": {"type": P.GRANT, "gn": 1000, "lease": LEASE, "total": 5450000,
                  "validity": 86400, "flags": 0, "policy": 1, "allowance": 54500,
                  "renew_at": 109000, "t": int(time.time())},
        "lease renewal": {"type": P.LEASE_RENEW, "boot": BOOT, "n": 40, "lease": LEASE,
                          "used": 4400000, "want": 0},
        "status": {"type": P.STATUS, "boot": BOOT, "n": 41, "t": int(time.time()), "seq": SEQ,
                   "acked": SEQ - 1, "lease": LEASE, "used": 4400000, "remaining": 1050000,
                   "ver": 1, "flags": 0},
    }
    for label, msg in msgs.items():
        msg.update(kid=1, dev=DEV)
        rows.append({"name": f"{label} message, MAC and envelope", "value": len(P.seal(KEY, msg)),
                     "unit": "bytes", "how": "same ids"})
    rows.append({"name": "envelope + MAC overhead of a batch", "value": one - len(P.encode(
        P.unseal(batch(1))[0])), "unit": "bytes", "how": "array head, bstr head, 16-byte tag"})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = benchrows.parser("edgemeter.tools.bench_wire", __doc__, quick=False)
    args = ap.parse_args(argv)
    return benchrows.emit(run(), args.json)


if __name__ == "__main__":
    sys.exit(main())
