"""Benchmark of the core CBOR codec: speed against cbor2 on CPython, heap and speed on MicroPython.

    python -m edgemeter.tools.bench_codec [--json] [--quick]

`run()` returns rows {name, value, unit, how} (aggregated by `edgemeter bench`). Speeds are
only reported as ratios measured in the same run (firmware_py.cbor time / cbor2 time, so 3.0
means three times as long as cbor2's C extension); the absolute microseconds are printed
beside them for context. Messages are the shapes of docs/protocol.cddl: a usage batch body
[1, kid, dev, boot, seq, ver, lease, t0, flags, ucny, rounds] whose rounds are
[dt, 2, 5, 4, 6] (dt seconds since t0, then the compact round of rating.round_to_wire), and
its signed envelope [body, tag16]. MicroPython rows run the unix port in a subprocess.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import timeit
from typing import Any, Callable

import cbor2

from firmware_py import cbor
from edgemeter.tools import benchrows
from edgemeter.tools.fwmodules import dev_tool
from edgemeter.tools.paths import FIRMWARE_SRC, build_dir



def usage_body(rounds: int) -> list[Any]:
    rs = [[37 * i + 5, 2, 5, 4, 6] for i in range(rounds)]
    return [1, 1, 1042, 3, 123456, 7, 99, 1767225600, 0, 5450 * rounds, rs]


def messages() -> dict[str, Any]:
    b10 = usage_body(10)
    return {
        "usage batch, 1 round": usage_body(1),
        "usage batch, 10 rounds": b10,
        "signed envelope of the 10-round batch": [cbor.dumps(b10), bytes(range(16))],
    }


def _best_us(fn: Callable[[], Any], budget_s: float) -> float:
    """Best-of-5 time of one call in microseconds; each repeat runs for about budget_s."""
    n, t = 1, 0.0
    while t < budget_s / 5:
        n *= 4
        t = timeit.timeit(fn, number=n)
    return min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6


def speed_rows(budget_s: float = 0.25) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    how = "CPython %d.%d, timeit best of 5, cbor2 %s (C extension), same run" % (
        sys.version_info[0], sys.version_info[1], importlib.metadata.version("cbor2"))
    for name, v in messages().items():
        data = cbor.dumps(v)
        if data != cbor2.dumps(v, canonical=True):
            raise SystemExit(f"bench_codec: {name}: encodings differ from cbor2")
        pairs = {
            "encode": (lambda: cbor.dumps(v), lambda: cbor2.dumps(v, canonical=True)),
            "decode": (lambda: cbor.loads(data), lambda: cbor2.loads(data)),
        }
        for op, (ours, ref) in pairs.items():
            a, b = _best_us(ours, budget_s), _best_us(ref, budget_s)
            rows.append({"name": f"cbor {op} {name} ({len(data)} B): firmware_py.cbor / cbor2",
                         "value": round(a / b, 2), "unit": "x",
                         "how": f"{how}; {a:.2f} us vs {b:.2f} us per message"})
    return rows


_MP_SCRIPT = r"""
import gc, sys, time, json
gc.collect(); gc.disable()
a0 = gc.mem_alloc()
from firmware_py import cbor
gc.enable(); gc.collect(); gc.disable()
a1 = gc.mem_alloc()
data = bytes.fromhex(sys.argv[1])
gc.collect()
a2 = gc.mem_alloc()
v = cbor.loads(data)
a3 = gc.mem_alloc()
gc.collect()
a4 = gc.mem_alloc()
e = cbor.dumps(v)
a5 = gc.mem_alloc()
gc.enable()
n = 2000
t = time.ticks_us()
for _ in range(n):
    cbor.loads(data)
td = time.ticks_diff(time.ticks_us(), t)
t = time.ticks_us()
for _ in range(n):
    cbor.dumps(v)
te = time.ticks_diff(time.ticks_us(), t)
print(json.dumps({"import": a1 - a0, "decode_alloc": a3 - a2, "decode_kept": a4 - a2,
                  "encode_alloc": a5 - a4, "dec_us": td / n, "enc_us": te / n, "ok": e == data}))
"""


def micropython_rows() -> list[dict[str, Any]]:
    exe = dev_tool("micropython")
    if exe is None:
        return [{"name": "cbor on MicroPython", "value": None, "unit": "",
                 "how": "skipped: micropython not installed"}]
    data = cbor.dumps(usage_body(10))
    rows: list[dict[str, Any]] = []
    variants = [("source .py", str(FIRMWARE_SRC.parent))]
    mpy = build_dir("firmware")   # `edgemeter build-firmware`'s output, when it was run here
    if (mpy / "firmware_py" / "cbor.mpy").exists():
        variants.append(("mpy-cross .mpy", str(mpy)))
    for label, path in variants:
        proc = subprocess.run([exe, "-X", "heapsize=1M", "-c", _MP_SCRIPT, data.hex()],
                              env=dict(os.environ, MICROPYPATH=path), cwd="/", capture_output=True,
                              text=True, timeout=300)
        if proc.returncode != 0:
            raise SystemExit(f"bench_codec: micropython failed:\n{proc.stderr}")
        m = json.loads(proc.stdout.strip().splitlines()[-1])
        if not m["ok"]:
            raise SystemExit("bench_codec: MicroPython re-encoding differs")
        how = f"MicroPython unix port, gc.mem_alloc() deltas, imported from {label}"
        rows.append({"name": f"cbor import heap on MicroPython ({label})", "value": m["import"],
                     "unit": "bytes", "how": how})
        if label != "source .py":
            continue
        rows += [
            {"name": f"cbor decode 10-round batch ({len(data)} B) on MicroPython: allocated",
             "value": m["decode_alloc"], "unit": "bytes", "how": how + ", gc disabled while decoding"},
            {"name": "cbor decode 10-round batch on MicroPython: kept (the value)",
             "value": m["decode_kept"], "unit": "bytes", "how": how + ", after gc.collect()"},
            {"name": "cbor encode 10-round batch on MicroPython: allocated",
             "value": m["encode_alloc"], "unit": "bytes", "how": how + ", gc disabled"},
            {"name": "cbor decode 10-round batch on MicroPython (x86-64 host, not a board)",
             "value": round(m["dec_us"], 1), "unit": "us", "how": "time.ticks_us over 2000 calls"},
            {"name": "cbor encode 10-round batch on MicroPython (x86-64 host, not a board)",
             "value": round(m["enc_us"], 1), "unit": "us", "how": "time.ticks_us over 2000 calls"},
        ]
    return rows


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Every codec figure as rows {name, value, unit, how}."""
    return speed_rows(0.05 if quick else 0.25) + micropython_rows()


def main(argv: list[str] | None = None) -> int:
    ap = benchrows.parser("edgemeter.tools.bench_codec", __doc__)
    args = ap.parse_args(argv)
    return benchrows.emit(run(quick=args.quick), args.json)


if __name__ == "__main__":
    sys.exit(main())
