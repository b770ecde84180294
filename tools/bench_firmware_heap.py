"""Heap of the device firmware with its bytecode in flash (ROMFS), on the MicroPython unix port.

    python -m edgemeter.tools.bench_firmware_heap [--json] [--quick]

`run()` returns rows {name, value, unit, how} (aggregated by `edgemeter bench`). The image is
tools/romfs.py's (the device modules, a preload list, plus the measuring loop
tools/romfs_loop.py as romfs_loop.mpy); tools/romboot.py reads it into one heap buffer, mounts it with
vfs.VfsRom and imports from it in place, so the figures below are the heap BEYOND that buffer
(what a board whose flash holds the image needs). The loop: every device module imported,
the meter on a real journal (32 KiB bound, 2 KiB segments) and an MQTTClient's buffers
(max_packet 1024, rx_size 128), rounds of the standard voice chat, each synced to a
CloudSession + Pool in this process over stdin/stdout (acks, grants, compaction), then drain.

- ROMFS image: bytes of the image (= flash); the heap buffer holding it on the unix port.
- After imports: live heap (gc.collect()) once every module is imported and the default
  price book built (romboot's preload), minus the buffer; the qstr pool part of it
  (micropython.qstr_info), which a frozen build keeps in flash.
- High-water mark: the most live heap after gc.collect() at each round and each sync, minus
  the buffer; the peak: gc.mem_alloc() just before those collections (garbage included).
- Smallest board heap: the smallest budget B (KiB) such that the loop serves every round with
  -X heapsize = usable(B) + the buffer (romfs_run.heapsize), by bisection; with and without
  the preload (without: `import firmware_py.main`'s own import order, garbage in between).
All on a 64-bit build (32-byte GC blocks): a 32-bit board needs less for the same objects.

unix32 rows (unix32_rows(), when build/fw-unix32/micropython is built: tools/mpbuild.py): the
frozen 32-bit firmware, every module and constant table in the executable. Boot: live heap
after importing firmware_py.main and building the default price book. Loop: `edgemeter sim
--devices 2 --micropython 1 --faults power` (firmware_py.main against Mosquitto and a real
rater, the simulator's 32 KiB device configuration, kill -9 and recovery included), the
high-water mark its firmware reports (rule F6) in -X heapsize=32k, and the smallest heap
(1 KiB steps, bisection from 20k) in which that run passes its audit.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from edgemeter.tools import benchrows

QSTR = re.compile(r"n_qstr=(\d+), n_str_data_bytes=(\d+), n_total_bytes=(\d+)")
_QSTR_SCRIPT = "import micropython\nmicropython.qstr_info()\n"


def _helpers() -> Any:
    from edgemeter.tools import romfs_run  # the shim's runner
    return romfs_run


def _qstr(R: Any, img: Path, work: Path, preload: bool) -> tuple[int, int]:
    """(qstrs, pool bytes) after the shim (and its preload, if on)."""
    script = work / "q.py"
    script.write_text(_QSTR_SCRIPT)
    pre = [] if preload else ["--no-preload"]
    out = subprocess.run(R.shim_argv(img, 1 << 20, *pre, str(script)), capture_output=True,
                         text=True, env=R.shim_env(), cwd="/", check=True).stdout
    m = QSTR.search(out)
    if not m:
        raise RuntimeError(out)
    return int(m.group(1)), int(m.group(3))


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Every figure as rows {name, value, unit, how}."""
    try:
        R = _helpers()
        R.micropython()
    except (RuntimeError, ImportError) as exc:
        return [{"name": "firmware heap (ROMFS)", "value": "-", "unit": "",
                 "how": f"skipped: {exc}"}]
    from edgemeter.tools import romfs
    rounds = 40 if quick else 200
    work = Path(tempfile.mkdtemp(prefix="fwheap"))
    try:
        device = romfs.build_romfs(work / "device" / "romfs.img")["romfs.img"]
        img = R.image(work / "img")
        r = R.run_loop(img, 1 << 20, work / "j", rounds)
        if r["rc"] != 0:
            raise RuntimeError(f"loop failed: {r['stderr'][-2000:]}")
        buf, done = r["rom"]["buf"], r["done"]
        q0 = _qstr(R, img, work, preload=False)
        q1 = _qstr(R, img, work, preload=True)
        best = R.min_budget(img, work, rounds, step=1024)
        best_np = R.min_budget(img, work, rounds, step=1024, preload=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mp = "MicroPython unix port 1.29 (64-bit), tools/romboot.py"
    loop = f"{rounds} voice-chat rounds synced and acked, then drain"
    return [
        {"name": "ROMFS image of the device modules", "value": device, "unit": "B",
         "how": "python -m edgemeter.tools.build_firmware -> build/firmware/romfs.img (flash on a board)"},
        {"name": "heap taken by the image buffer (unix port only)", "value": buf, "unit": "B",
         "how": f"{mp}: gc.mem_alloc() delta of bytearray(image), test image "
                f"{r['rom']['image']} B (with romfs_loop.mpy)"},
        {"name": "heap after imports, beyond the image", "value": r["mods"]["live"] - buf,
         "unit": "B", "how": f"{mp}: every device module from ROMFS + default price book, "
                             "after gc.collect(); interpreter and shim included"},
        {"name": "  of it: qstr pools interned at import", "value": q1[1] - q0[1], "unit": "B",
         "how": f"micropython.qstr_info() n_total_bytes, {q1[0] - q0[0]} qstrs; a frozen "
                "build keeps them in flash"},
        {"name": "heap high-water mark beyond the image", "value": done["hwm"] - buf,
         "unit": "B", "how": f"{mp}: live after gc.collect() at every round and sync, {loop}"},
        {"name": "heap peak before collections beyond the image", "value": done["peak"] - buf,
         "unit": "B", "how": "gc.mem_alloc() just before those collections (garbage included)"},
        {"name": "smallest board heap the loop runs in", "value": best // 1024, "unit": "KiB",
         "how": f"bisection, 1 KiB steps, -X heapsize = that heap + the buffer; {loop}; "
                "romboot preload (leaf-first imports, gc.collect() after each)"},
        {"name": "  the same without the preload", "value": best_np // 1024, "unit": "KiB",
         "how": "romboot --no-preload: modules imported by the loop's own imports"},
        {"name": "  target", "value": 32, "unit": "KiB", "how": "the full firmware loop in a 32 KiB heap"},
    ]


_BOOT = ("import gc\ngc.collect()\nimport firmware_py.main\nfrom firmware_py import pricebook\n"
         "pricebook.default()\ngc.collect()\nprint(gc.mem_alloc())\n")


def _sim_hwm(heap_kib: int, rounds: int) -> int:
    """The MicroPython device's heap high-water mark in a passing sim run, or 0 if it failed."""
    with tempfile.TemporaryDirectory(prefix="fwheap32") as tmp:
        rep = Path(tmp) / "r.json"
        p = subprocess.run([sys.executable, "-m", "edgemeter.tools.cli", "sim", "--devices", "2",
                            "--micropython", "1", "--mp-firmware", "unix32", "--mp-heap",
                            f"{heap_kib}k", "--rounds", "50", "--mp-rounds", str(rounds),
                            "--faults", "power", "--quiet", "--report", str(rep)],
                           capture_output=True, text=True, timeout=900)
        if p.returncode != 0 or not rep.exists():
            return 0
        import json
        return int(json.loads(rep.read_text())["micropython"]["heap_hwm_max"])


def unix32_rows(quick: bool = False) -> list[dict[str, Any]]:
    """Heap figures of the frozen 32-bit unix firmware (rows with keys fw.unix32.*; reported by `edgemeter bench --only firmware`)."""
    from edgemeter.tools import mpbuild
    exe = mpbuild.firmware("unix32")
    if exe is None:
        return [{"name": "firmware heap (unix32)", "value": "-", "unit": "", "key": "fw.unix32",
                 "how": "skipped: no build/fw-unix32 (edgemeter build-firmware --target unix32)"}]
    boot = int(subprocess.run([str(exe), "-X", "heapsize=64k", "-c", _BOOT], capture_output=True,
                              text=True, check=True, cwd="/",
                              env={"MICROPYPATH": ".frozen"}).stdout.split()[-1])
    rounds = 60 if quick else 200
    hwm = _sim_hwm(32, rounds)
    how = (f"edgemeter sim --devices 2 --micropython 1 --mp-firmware unix32 --faults power "
           f"--mp-rounds {rounds} (kill -9 and recovery included)")
    rows = [
        {"name": "unix32: live heap after imports and the default book", "value": boot,
         "unit": "B", "key": "fw.unix32.boot_bytes",
         "how": f"{exe} -X heapsize=64k: gc.mem_alloc() after import firmware_py.main, "
                "pricebook.default(), gc.collect(); interpreter included"},
        {"name": "unix32: full loop heap high-water mark in 32k", "value": hwm or "failed",
         "unit": "B", "key": "fw.unix32.hwm_bytes", "how": how + ", --mp-heap 32k"},
    ]
    if not quick:
        lo, hi = 20, 32
        if hwm:
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if _sim_hwm(mid, rounds) else (mid, hi)
        rows.append({"name": "unix32: smallest heap the full loop runs in", "value": hi if hwm
                     else "-", "unit": "KiB", "key": "fw.unix32.min_heap_kib",
                     "how": how + ", bisection over --mp-heap, 1 KiB steps; target 32, stretch 24"})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = benchrows.parser("edgemeter.tools.bench_firmware_heap", __doc__)
    args = ap.parse_args(argv)
    return benchrows.emit(run(quick=args.quick), args.json)


if __name__ == "__main__":
    sys.exit(main())
