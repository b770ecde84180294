"""Device figures on the emulated Cortex-M3 board, counted in instructions (deterministic).

    python -m edgemeter.tools.bench_m3 [--json] [--quick]

The device image (tools/mpbuild.py, target cortex-m3: firmware_py frozen in flash, a 32 KiB heap, the journal on
littlefs in RAM) runs under QEMU with `-icount shift=0`: the emulated clock advances 1 ns per
instruction, so time.ticks_us() differences x 1000 are Cortex-M3 instructions, the same on
any host and under any load. The board runs a real firmware_py.meter.Meter; its cloud is
firmware_py.cloud_session.CloudSession and a Pool on the host (CPython), messages carried
through the raw REPL, so the lease is a real grant and the batches are really acked.
The instruction figures run the device image's frozen modules in a 256 KiB heap (build/fw-m3-bench):
the measuring scripts do not fit beside the meter in 32 KiB. Garbage collection is therefore
reported apart (bytes allocated per round, instructions per collection on the 32 KiB image).

Rows (keys are stable):
  fw.m3.insns_per_round     a metered standard voice-chat round: start_round, record x 4
                            (asr-standard, intent, chat, tts-standard), end_round (rating,
                            lease deduction, record encoding, journal framing and CRC), the
                            flash write excluded: the journal and state files are RAM files
                            (emboard.RamFS); per-round average over R rounds with no seal in
                            them, less the loop's own call overhead
  fw.m3.insns_per_flash_append  the flash write reported apart: f.write of the same framed
                            record + f.flush() to a file on littlefs (RAM block device)
  fw.m3.insns_per_batch     DeviceSession.seal of 10 of those rounds as the meter calls it
                            (state=False: its seal record persists the seq): the usage batch's
                            CBOR, its HMAC-SHA-256 tag and envelope
  fw.m3.insns.<part>        the breakdown: Meter.start_round, .record, .end_round (ticks_us
                            around each call, so they include the clock reads), and inside
                            end_round rating.rate_wire (memo hit), meter_log.enc_round,
                            jframe.encode; rating.rate and round_to_wire as a new round costs
  fw.m3.alloc_bytes_per_round  heap allocated per round (gc disabled): what drives collections
  fw.m3.insns_per_gc        one gc.collect() on the 32 KiB device image with the meter open
  fw.m3.min_heap_kib        the smallest heap the metered loop runs in: boot, littlefs mounted,
                            Meter.open, a lease granted, 30 rounds sealed in batches of 10 and
                            acked, the driving scripts included; found by taking B bytes of the
                            32 KiB heap with one bytearray at the start (bisected to 256 B)
  fw.m3.image_bytes         text + data of build/fw-m3/firmware.elf: the MicroPython VM,
                            littlefs and the frozen device image, what a board's flash holds
"""
from __future__ import annotations

import binascii
import sys
import time
from pathlib import Path
from typing import Any

from edgemeter.tools import benchrows, mpbuild, qemu_m3
from firmware_py import pricebook
from firmware_py.cloud_session import CloudSession
from firmware_py.pool import Pool

KEY = bytes(range(32))
BENCH_HEAP = 256 * 1024
NOW = 1767225600
WS, DEV, KID = 7, 9, 1

_SETUP = """
import binascii
from firmware_py.meter import Meter
m = Meter(%r, %d, %d, %d, bytes(range(32)), None, %r, None)
NOW = %d
m.open(NOW)
m.tick(NOW)
def out():
    for s, d in m.publishes():
        print("PUB", s, binascii.hexlify(d).decode())
def one(now):
    ok, code, rid = m.start_round(now)
    if not ok:
        raise ValueError("round refused: %%d" %% code)
    m.record(rid, "asr-standard")
    m.record(rid, "intent")
    m.record(rid, "chat")
    m.record(rid, "tts-standard")
    c, u = m.end_round(rid, now)
    if c or u != 5450:
        raise ValueError("end_round: code %%d, %%d uCNY" %% (c, u))
out()
"""

_TIMERS = """
import gc, time
from firmware_py import jframe, rating, meter_log
T = [0, 0, 0]
def split(now):
    us, d = time.ticks_us, time.ticks_diff
    t0 = us()
    ok, code, rid = m.start_round(now)
    t1 = us()
    m.record(rid, "asr-standard")
    m.record(rid, "intent")
    m.record(rid, "chat")
    m.record(rid, "tts-standard")
    t2 = us()
    c, u = m.end_round(rid, now)
    t3 = us()
    T[0] += d(t1, t0)
    T[1] += d(t2, t1)
    T[2] += d(t3, t2)
def nop(now):
    pass
def bare(rec):
    f.write(rec)
    f.flush()
def seal10():
    recs = [x[1] for x in m.pend[-10:]]
    gc.collect()
    t0 = time.ticks_us()
    n, acts = m.s.seal(recs, NOW, False)
    return time.ticks_diff(time.ticks_us(), t0), n
def timed(fn, n, *a):
    gc.collect()
    t0 = time.ticks_us()
    for i in range(n):
        fn(*a)
    return time.ticks_diff(time.ticks_us(), t0)
"""

_ROUNDS = [  # short scripts: the raw REPL buffers a script in the heap (doubling from 32 B)
    "r = %d\nrec = [1, NOW, 1, m.s.lease.lease, 5450, [2, 4, 5, 6]]\n"
    "pay = meter_log.enc_round(rec)\nframed = jframe.encode(m.j.next, pay)\n",
    "f = open('/bare.log', 'ab')\nprint('FIG', timed(bare, r, framed), len(framed))\nf.close()\n",
    "rnd = {2: [1, 0, 0, 0, 0], 4: [1, 0, 0, 0, 0], 5: [1, 0, 0, 0, 0], 6: [1, 0, 0, 0, 0]}\n",
    "print('FIG', timed(rating.rate, r, m.s.book, rnd), timed(rating.round_to_wire, r, rnd))\n",
    "print('FIG', timed(rating.rate_wire, r, m.s.book, rnd))\n",
    "print('FIG', timed(meter_log.enc_round, r, rec), timed(jframe.encode, r, 1000, pay))\n",
    "print('FIG', timed(one, r, NOW), timed(nop, r, NOW))\n",
    "print('FIG', *seal10())\n",
    "del rnd, rec, pay, framed\ntimed(split, r, NOW)\nprint('FIG', T[0], T[1], T[2])\n",
    "gc.collect()\ngc.disable()\na0 = gc.mem_alloc()\nfor i in range(r):\n    one(NOW)\n"
    "print('FIG', gc.mem_alloc() - a0)\ngc.enable()\n",
]


class HostCloud:
    """The device's cloud on the host: CloudSession + Pool, answering what the board publishes."""

    def __init__(self) -> None:
        book = pricebook.default()
        self.cs = CloudSession(WS, DEV, {KID: KEY}, books={book["version"]: book})
        self.pool = Pool()
        self.pool.add(10 ** 12)
        self.booked: dict[int, Any] = {}

    def answer(self, out: str) -> str:
        """A board script delivering the replies to the PUB lines of out ('' when none)."""
        lines = []
        for ln in out.splitlines():
            if not ln.startswith("PUB "):
                continue
            _, sfx, hx = ln.split()
            ack = False
            for a in self.cs.receive(binascii.unhexlify(hx), NOW, self.booked.__contains__, self.pool, sfx):
                if a[0] in ("book", "duplicate"):
                    if a[0] == "book":
                        self.booked[a[1]["seq"]] = a[1]
                    ack = True
                elif a[0] == "publish":
                    lines.append((a[1], a[2]))
                elif a[0] == "reject":
                    raise RuntimeError(f"the host cloud rejected the board's {sfx}: {a[1:]}")
            if ack:
                lines.append(("down/ack", self.cs.ack(self.booked.__contains__)))
        return "".join(f"m.receive({s!r}, binascii.unhexlify({binascii.hexlify(d).decode()!r}), NOW)\n"
                       for s, d in lines)


def _converse(board: qemu_m3.Board, cloud: HostCloud, out: str) -> None:
    for _ in range(20):
        script = cloud.answer(out)
        if not script:
            return
        out = board.run(script + "out()\n")
    raise RuntimeError("the board and the host cloud are still talking after 20 exchanges")


def _setup(board: qemu_m3.Board, path: str, cfg: dict[str, int], prefix: str = "") -> HostCloud:
    cloud = HostCloud()
    out = board.run(prefix + _SETUP % (path, WS, DEV, KID, cfg, NOW))
    _converse(board, cloud, out)
    return cloud


def figure_rows(board: qemu_m3.Board, r: int) -> list[dict[str, Any]]:
    """Round, batch and breakdown rows from one fresh boot's meter (r >= 10 rounds)."""
    if r < 10:
        raise ValueError("figure_rows needs r >= 10: the batch seals 10 of the measured rounds")
    _setup(board, "/ram/em", {"batch": 64, "ram_rounds": 64},
           "import vfs, emboard\nvfs.mount(emboard.RamFS(keep=False), '/ram')\n")
    board.run(_TIMERS)
    f: list[int] = []
    for i, script in enumerate(_ROUNDS):
        out = board.run(script % r if i == 0 else script, timeout=600)
        if "FIG" in out:
            f += [int(x) for x in out.split("FIG", 1)[1].split()]
    t_bare, flen, t_rate, t_wire, t_memo, t_enc, t_frame, t_round, t_nop, t_seal, n, t_start, t_rec, t_end, alloc = f
    if n != 10:
        raise RuntimeError(f"the seal took {n} rounds, not 10")
    per = lambda t: round((t - t_nop) * 1000 / r)  # noqa: E731 - insns per call, loop removed
    rnd = per(t_round)
    how = (f"QEMU mps2-an385 -icount shift=0 (1 insn = 1 ns of ticks_us), the device image's "
           f"frozen modules in a {BENCH_HEAP // 1024} KiB heap (the measuring scripts do not fit "
           f"beside the meter in 32 KiB; garbage collection is reported apart); average over "
           f"{r} calls, loop overhead removed")
    return [
        {"key": "fw.m3.insns_per_round", "name": "M3 instructions per metered round (target <= 40,000)",
         "value": rnd, "unit": "insns",
         "how": how + "; start_round + 4 x record + end_round with the journal in a RAM file "
                      f"(emboard.RamFS(keep=False): sizes kept, bytes dropped); the flash append of its {flen}-byte record is reported apart"},
        {"key": "fw.m3.insns_per_batch", "name": "M3 instructions to seal and MAC a 10-round batch "
         "(target <= 150,000)", "value": t_seal * 1000, "unit": "insns",
         "how": how.replace(f"average over {r} calls, loop overhead removed", "one call")
                + "; DeviceSession.seal(recs, now, state=False) as the meter calls it: batch CBOR, "
                  "HMAC-SHA-256 tag, envelope"},
        {"key": "fw.m3.insns_per_flash_append", "name": "M3 instructions per journal record "
         "flash append (excluded above)", "value": per(t_bare), "unit": "insns",
         "how": how + f"; f.write of the {flen}-byte framed record + f.flush() on littlefs2 "
                      "(512-byte blocks in RAM via a Python block device)"},
        {"key": "fw.m3.alloc_bytes_per_round", "name": "M3 heap allocated per metered round (GC pressure)",
         "value": round(alloc / r), "unit": "bytes", "how": how.replace("loop overhead removed", "gc disabled, gc.mem_alloc() before and after")},
        {"key": "fw.m3.insns.start_round", "name": "  of which Meter.start_round",
         "value": round(t_start * 1000 / r), "unit": "insns", "how": how.replace("loop overhead removed", "ticks_us around the call")},
        {"key": "fw.m3.insns.record", "name": "  of which Meter.record (one call of the four)",
         "value": round(t_rec * 1000 / r / 4), "unit": "insns", "how": how.replace("loop overhead removed", "ticks_us around the four calls")},
        {"key": "fw.m3.insns.end_round", "name": "  of which Meter.end_round (the rest below is inside it)",
         "value": round(t_end * 1000 / r), "unit": "insns", "how": how.replace("loop overhead removed", "ticks_us around the call")},
        {"key": "fw.m3.insns.rate_wire", "name": "  of which rating.rate_wire (a round rated before: R15 memo)",
         "value": per(t_memo), "unit": "insns", "how": how},
        {"key": "fw.m3.insns.rate", "name": "  rating.rate of a round not rated before (memo miss)",
         "value": per(t_rate), "unit": "insns", "how": how},
        {"key": "fw.m3.insns.round_to_wire", "name": "  rating.round_to_wire (memo miss)",
         "value": per(t_wire), "unit": "insns", "how": how},
        {"key": "fw.m3.insns.enc_round", "name": "  of which meter_log.enc_round (record CBOR)",
         "value": per(t_enc), "unit": "insns", "how": how},
        {"key": "fw.m3.insns.jframe", "name": "  of which jframe.encode (framing, 2 x CRC-32)",
         "value": per(t_frame), "unit": "insns", "how": how},
    ]


_LOOP = """
for i in range(10):
    one(NOW)
out()
"""


def _loop_fits(board: qemu_m3.Board, ballast: int) -> bool:
    """Whether the metered loop completes with ballast bytes of the heap taken."""
    board.soft_reset()
    board.mount_fs(fresh=True)  # a new device each attempt
    try:
        cloud = _setup(board, "em", {}, f"_ballast = bytearray({ballast})\n")
        for _ in range(3):
            _converse(board, cloud, board.run(_LOOP))
    except qemu_m3.BoardError as exc:
        if "MemoryError" in str(exc):
            return False
        raise
    return cloud.cs.s["acked"] >= 3


def heap_row(board: qemu_m3.Board, heap: int) -> dict[str, Any]:
    lo, hi = 0, heap  # ballast that fits, ballast that does not
    if not _loop_fits(board, 0):
        raise RuntimeError(f"the metered loop does not run in the board's whole {heap} B heap")
    while hi - lo > 256:
        mid = (lo + hi) // 2
        if _loop_fits(board, mid):
            lo = mid
        else:
            hi = mid
    return {"key": "fw.m3.min_heap_kib", "name": "M3 smallest heap running the metered loop (target 32)",
            "value": round((heap - lo) / 1024, 2), "unit": "KiB",
            "how": f"device image with a {heap} B heap; a bytearray of {lo} B taken first still "
                   "lets boot + littlefs mount + Meter.open + lease grant + 30 rounds sealed in "
                   "batches of 10 and acked complete (bisected to 256 B; driving scripts included)"}


def gc_row(board: qemu_m3.Board, heap: int) -> dict[str, Any]:
    """What one garbage collection costs on the device image with the meter open and leased."""
    board.soft_reset()
    board.mount_fs(fresh=True)
    # the measuring code is compiled before the meter opens: compiling it afterwards needs a
    # contiguous block that the open meter's heap may not leave
    _setup(board, "em", {}, "import gc, time\ndef _gc():\n    gc.collect()\n    t0 = time.ticks_us()\n"
           "    gc.collect()\n    print(time.ticks_diff(time.ticks_us(), t0), gc.mem_alloc(), gc.mem_free())\n")
    out = board.run("_gc()\n")
    us, live, free = (int(x) for x in out.split())
    return {"key": "fw.m3.insns_per_gc", "name": "M3 instructions per garbage collection",
            "value": us * 1000, "unit": "insns",
            "how": f"gc.collect() on the device image ({heap} B heap) with a Meter open and leased: "
                   f"{live} B live, {free} B free; a collection comes every free / allocated-per-round "
                   "rounds"}


def bench_image() -> Path:
    """build/fw-m3-bench/firmware.elf: the device image's frozen modules, a BENCH_HEAP heap."""
    return mpbuild.board_image(BENCH_HEAP, "bench", mpbuild.manifest_text(*mpbuild.frozen_sources("cortex-m3")))


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Every board figure as rows {key, name, value, unit, how}."""
    bench = bench_image()
    elf = mpbuild.board_image()
    heap = int((elf.parent / "heap").read_text())
    rows: list[dict[str, Any]] = []
    with qemu_m3.Board(bench, icount=True, timeout=300) as board:
        board.mount_fs()
        rows += figure_rows(board, 10 if quick else 20)
    with qemu_m3.Board(elf, icount=True, timeout=300) as board:
        board.mount_fs()
        rows.append(heap_row(board, heap))
        rows.append(gc_row(board, heap))
    rows.append({"key": "fw.m3.image_bytes", "name": "M3 flash image (VM + littlefs + frozen device image)",
                 "value": mpbuild.image_bytes(elf), "unit": "bytes",
                 "how": f"arm-none-eabi-size text + data of {elf.relative_to(mpbuild.ROOT)} "
                        "(edgemeter build-firmware --target cortex-m3)"})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = benchrows.parser("edgemeter.tools.bench_m3", __doc__)
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    rows = run(quick=args.quick)
    status = benchrows.emit(rows, args.json)
    if not args.json:
        print(f"({time.monotonic() - t0:.0f} s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
