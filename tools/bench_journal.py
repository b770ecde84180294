"""Benchmark of the journal: bytes written per round, append cost against a bare append, heap.

    python -m edgemeter.tools.bench_journal [--json] [--quick]

`run()` returns rows {name, value, unit, how} (aggregated by `edgemeter bench`).

- Bytes written per round: every byte the journal writes (records, the ack slot written by
  each ack_through, quarantine copies) divided by the rounds, over many rounds with the
  compaction that acks trigger (deleting a segment writes no file bytes; the file system's
  own metadata is not counted).  Payloads are realistic 8-11 byte CBOR rounds, e.g.
  [37, [2, 5, 4, 6], 5450] (seconds into the batch, the compact round of
  rating.round_to_wire, its µCNY).
- Append cost: Journal.append(payload) divided by a bare append of the same payload bytes to
  the same kind of file (opened "ab", write, then the same sync), both timed in one run, best
  of several rounds.  With a real sync (fsync on CPython; MicroPython's unix-port flush()
  fsyncs too) the sync dominates; the "no sync" rows show the framing's CPU cost alone.
- MicroPython: the same measured in a `micropython` subprocess over the mpy-compiled modules
  (tools.build_firmware), plus the heap the journal modules take when imported as .mpy and the
  smallest -X heapsize that runs 500 appends, a power cut and the recovery.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from firmware_py import cbor
from firmware_py.journal import Journal
from edgemeter.tools import benchrows
from edgemeter.tools.fwmodules import dev_tool

ROUNDS = {8: [37, [2, 5, 4, 6]], 10: [37, 2, 5, 4, 6, 5450], 11: [37, [2, 5, 4, 6], 5450]}


def _fsync(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())


def _flush(f: Any) -> None:
    f.flush()


def bytes_rows(rounds: int) -> list[dict[str, Any]]:
    rows = []
    for size, rnd in ROUNDS.items():
        payload = cbor.dumps(rnd)
        if len(payload) != size:
            raise SystemExit("bench_journal: round shapes changed")
        for batch in (1, 10, 50):
            d = benchrows.scratch("bytes")
            j = Journal(str(d / "j"), max_bytes=64 * 1024, segment_bytes=4096)
            j.open()
            w0 = j.bytes_written  # the two ack slots made once when the journal is created
            for i in range(1, rounds + 1):
                if j.append(payload) < 0:
                    raise SystemExit("bench_journal: journal refused an append")
                if i % batch == 0:
                    j.ack_through(i)
            st = j.stats()
            j.close()
            shutil.rmtree(d)
            rows.append({
                "name": f"journal bytes written per round ({size} B round, ack every {batch})",
                "value": round((st["bytes_written"] - w0) / rounds, 2), "unit": "B",
                "how": f"{rounds} rounds, segment 4096 B, max 64 KiB, compaction on each ack; "
                       f"{st['segments']} segment(s) left; payload {payload.hex()}"})
    return rows


def _best(fn: Callable[[int], None], n: int, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn(n)
        best = min(best, time.perf_counter() - t)
    return best / n * 1e6


def ratio_rows(n: int, reps: int) -> list[dict[str, Any]]:
    payload = cbor.dumps(ROUNDS[11])
    rows = []
    for label, sync in (("fsync", _fsync), ("no sync", _flush)):
        d = benchrows.scratch("ratio")
        j = Journal(str(d / "j"), max_bytes=1 << 24, segment_bytes=4096, sync=sync)
        j.open()
        f = open(d / "bare.log", "ab")

        def journal(k: int) -> None:
            for _ in range(k):
                j.append(payload)
            j.ack_through(j.next - 1)  # keep the journal small; once per k appends

        def bare(k: int) -> None:
            for _ in range(k):
                f.write(payload)
                sync(f)

        a = b = float("inf")
        for _ in range(reps):  # interleaved, so both see the same disk and CPU weather
            a = min(a, _best(journal, n, 1))
            b = min(b, _best(bare, n, 1))
        j.close()
        f.close()
        shutil.rmtree(d)
        rows.append({"name": f"journal append / bare append, CPython, {label}",
                     "value": round(a / b, 2), "unit": "x",
                     "how": f"CPython {sys.version_info[0]}.{sys.version_info[1]}, 11 B round, "
                            f"best of {reps} x {n}; {a:.1f} us vs {b:.1f} us per append"})
    return rows


_MP_RATIO = r"""
import os, sys, time
from firmware_py.journal import Journal
d = sys.argv[1]
n = int(sys.argv[2])
reps = int(sys.argv[3])
payload = bytes.fromhex(sys.argv[4])
def flush(f):
    f.flush()
def nosync(f):
    pass
out = []
for label, sync in (("flush", flush), ("no sync", nosync)):
    j = Journal(d + "/j" + label[0], max_bytes=1 << 24, segment_bytes=4096, sync=sync)
    j.open()
    f = open(d + "/bare" + label[0], "ab")
    a = b = 1 << 60
    for _ in range(reps):
        t = time.ticks_us()
        for _ in range(n):
            j.append(payload)
        a = min(a, time.ticks_diff(time.ticks_us(), t))
        j.ack_through(j.next - 1)
        t = time.ticks_us()
        for _ in range(n):
            f.write(payload)
            sync(f)
        b = min(b, time.ticks_diff(time.ticks_us(), t))
    j.close()
    f.close()
    out.append("%s %d %d" % (label, a, b))
print("|".join(out))
"""

_MP_HEAP = r"""
import gc, sys
gc.collect()
a0 = gc.mem_alloc()
from firmware_py import cbor
gc.collect()
a1 = gc.mem_alloc()
from firmware_py.journal import Journal
gc.collect()
a2 = gc.mem_alloc()
d = sys.argv[2]
j = Journal(d, max_bytes=4096, segment_bytes=256)
j.open()
if sys.argv[1] == "write":
    for i in range(500):
        r = j.append(b"\x83\x18\x25\x84\x02\x05\x04\x06\x19\x15\x4a")
        if r != i + 1:
            raise SystemExit("append %d" % r)
        if i % 25 == 24:
            j.ack_through(r - 5)
else:
    n = 0
    for r, p in j.records():
        n += 1
    if n != 4:  # 496..500 unacked, 500 cut
        raise SystemExit("recovered %d" % n)
j.close()
print("OK", a1 - a0, a2 - a1)
"""


def _micropython() -> str | None:
    return dev_tool("micropython")


def micropython_rows(n: int, reps: int) -> list[dict[str, Any]]:
    exe = _micropython()
    if exe is None:
        return [{"name": "journal on MicroPython", "value": None, "unit": "",
                 "how": "skipped: micropython not installed"}]
    from edgemeter.tools import build_firmware
    d = benchrows.scratch("mp")
    fw = d / "fw"
    build_firmware.build(fw)
    env = dict(os.environ, MICROPYPATH=str(fw))
    (d / "ratio.py").write_text(_MP_RATIO)  # a script file, run from "/": sys.path[0] is its
    (d / "heap.py").write_text(_MP_HEAP)  # folder, so firmware_py comes from the .mpy build
    payload = cbor.dumps(ROUNDS[11])
    proc = subprocess.run([exe, "-X", "heapsize=64k", str(d / "ratio.py"), str(d), str(n), str(reps),
                           payload.hex()], env=env, cwd="/", capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"bench_journal: micropython failed:\n{proc.stderr}")
    rows = []
    for part in proc.stdout.strip().split("|"):
        label, a, b = part.rsplit(" ", 2)
        rows.append({"name": f"journal append / bare append, MicroPython, {label}",
                     "value": round(int(a) / int(b), 2), "unit": "x",
                     "how": f"MicroPython unix port, .mpy, -X heapsize=64k, 11 B round, best of {reps} x {n}; "
                            f"{int(a) / n:.1f} us vs {int(b) / n:.1f} us per append"
                            + ("; unix-port flush() is write + fsync" if label == "flush" else "")})

    def heap_run(k: int, phase: str, jd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([exe, "-X", f"heapsize={k}k", str(d / "heap.py"), phase, str(jd)],
                              env=env, cwd="/", capture_output=True, text=True, timeout=120)

    def fits(k: int) -> bool:
        jd = d / f"heap{k}"
        if heap_run(k, "write", jd).returncode != 0:
            return False
        segs = sorted(x for x in os.listdir(jd) if x.startswith("j"))
        p = jd / segs[-1]
        p.write_bytes(p.read_bytes()[:-5])  # power cut in the last record
        return heap_run(k, "read", jd).returncode == 0

    lo, hi = 8, 64  # smallest heapsize (KiB) that runs write + cut + recovery
    if not fits(hi):
        raise SystemExit("bench_journal: the heap script fails even in 64 KiB")
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    out = heap_run(64, "write", d / "heapx").stdout.split()
    shutil.rmtree(d)
    how = "MicroPython unix port (64-bit: 32-byte GC blocks), modules imported as .mpy into the heap"
    rows += [
        {"name": "journal+jframe+state import heap on MicroPython", "value": int(out[2]),
         "unit": "bytes", "how": how + ", gc.mem_alloc() delta after gc.collect(); cbor not included"},
        {"name": "cbor import heap on MicroPython (needed by state)", "value": int(out[1]),
         "unit": "bytes", "how": how},
        {"name": "smallest MicroPython heap for 500 appends, a cut and recovery", "value": lo,
         "unit": "KiB", "how": how + "; segment 256 B, max 4 KiB, ack every 25; -X heapsize search"},
    ]
    return rows


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Every journal figure as rows {name, value, unit, how}."""
    n, reps = (300, 3) if quick else (2000, 5)
    return bytes_rows(2000 if quick else 20000) + ratio_rows(n, reps) + micropython_rows(n, reps)


def main(argv: list[str] | None = None) -> int:
    ap = benchrows.parser("edgemeter.tools.bench_journal", __doc__)
    args = ap.parse_args(argv)
    return benchrows.emit(run(quick=args.quick), args.json)


if __name__ == "__main__":
    sys.exit(main())
