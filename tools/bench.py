"""`edgemeter bench [--json FILE] [--quick] [--only NAME,...]`: every benchmark of the project.

Runs each benchmark module's run(quick) -> [{key, name, value, unit, how}] and prints one table of
figures and ratios, each with how it was measured. Ratios are measured within one run (both
sides timed back to back on this machine), never asserted in tests. Modules:

  rating     core rating speed (rating.rate of the typical-scenario mix) on CPython and on
             MicroPython, rounds/s, and the ratio between the two runtimes (this module)
  codec      firmware_py.cbor vs cbor2 (tools/bench_codec.py)
  wire       bytes on the wire per round (tools/bench_wire.py)
  journal    journal bytes per round, append ratio (tools/bench_journal.py)
  firmware   metering cost per round vs a bare append on MicroPython (device overhead
             ratio), heap high-water mark, image size (tools/bench_firmware.py), and the
             Cortex-M3 board's instruction counts under QEMU (tools/bench_m3.py)
  firmware_heap  heap beyond a ROMFS image (bytecode in flash), high-water mark, smallest
             heap the device loop runs in (tools/bench_firmware_heap.py)
  ingest     rounds booked per second end to end, ratio to a receive-only subscriber
             (tools/bench_ingest.py)
  ingest_pg  ingest into PostgreSQL: one rater's rounds/s and CPU per batch, against SQLite
             per CPU-second, and 1, 2, 3 raters sharing the queue (tools/bench_ingest_pg.py;
             runs when a server answers at --pg URL or EDGEMETER_PG_URL, default
             127.0.0.1:5432/test, else its rows say why they were skipped)
  rebuild    seconds per million rounds to rebuild and check every projection
             (tools/bench_rebuild.py)
  cluster    devices on a 3-node RabbitMQ cluster: memory per device per node, connects per
             second (tools/bench_cluster.py; rows say why when RabbitMQ is not installed)
A module that fails is reported as such in the table (exit status 1). A module whose
prerequisites (NEEDS) are not installed is reported as skipped with what to install, and the
others run (exit status 0): a plain `pip install edgemeter` lacks cbor2 (the `dev` extra) and
the MicroPython unix port (the `micropython` extra); modules that only lose some rows without
the port (codec, journal, rating) say so in those rows.
Every row of --json carries a stable `key` (the module's own, e.g. fw.m3.insns_per_round; rows
without one get <module>.<name slug>).
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from edgemeter.cloud import cliargs

from edgemeter.tools.fwmodules import dev_tool
from edgemeter.tools.paths import FIRMWARE_SRC
MODULES = [("rating", "edgemeter.tools.bench"), ("codec", "edgemeter.tools.bench_codec"), ("wire", "edgemeter.tools.bench_wire"),
           ("journal", "edgemeter.tools.bench_journal"), ("firmware", "edgemeter.tools.bench_firmware"),
           ("firmware_heap", "edgemeter.tools.bench_firmware_heap"),
           ("ingest", "edgemeter.tools.bench_ingest"), ("ingest_pg", "edgemeter.tools.bench_ingest_pg"),
           ("rebuild", "edgemeter.tools.bench_rebuild"),
           ("cluster", "edgemeter.tools.bench_cluster")]

# What a module cannot run at all without: ("package", import name, extra) or ("tool", command,
# extra). The extras are pyproject's.
NEEDS = {"codec": [("package", "cbor2", "dev")],
         "firmware": [("tool", "micropython", "micropython")],
         "firmware_heap": [("tool", "micropython", "micropython")]}


def missing(name: str) -> str | None:
    """Why benchmark module `name` cannot run here (a prerequisite is not installed), or None."""
    for kind, what, extra in NEEDS.get(name, ()):
        absent = importlib.util.find_spec(what) is None if kind == "package" else dev_tool(what) is None
        if absent:
            label = f"the Python package {what}" if kind == "package" else f"the `{what}` command"
            return (f"needs {label}: pip install 'edgemeter[{extra}]' "
                    f"(from a source checkout: pip install '.[{extra}]')")
    return None


# the MicroPython half of the rating benchmark: the same mix, the same loop
_MP_RATING = """
import time
from firmware_py import pricebook, rating, billing
book = pricebook.default()
mix = [billing.scenario(book, n) for n, _ in billing.SCENARIOS]
n = %d
t0 = time.ticks_us()
for i in range(n):
    rating.rate(book, mix[i %% len(mix)])
dt = time.ticks_diff(time.ticks_us(), t0)
print(n, dt)
"""


def _cpython_rating(n: int) -> float:
    from firmware_py import billing, pricebook, rating
    book = pricebook.default()
    mix = [billing.scenario(book, name) for name, _ in billing.SCENARIOS]
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        for i in range(n):
            rating.rate(book, mix[i % len(mix)])
        best = max(best, n / (time.perf_counter() - t0))
    return best


def _micropython_rating(n: int) -> float | None:
    exe = dev_tool("micropython")
    if exe is None:
        return None
    best = 0.0
    for _ in range(3):
        out = subprocess.run([exe, "-X", "heapsize=4m", "-c", _MP_RATING % n], capture_output=True, text=True,
                             env=dict(os.environ, MICROPYPATH=str(FIRMWARE_SRC.parent)), cwd="/", timeout=300)
        if out.returncode != 0:
            raise RuntimeError("micropython: " + out.stderr.strip()[-500:])
        k, us = map(int, out.stdout.split())
        best = max(best, k * 1e6 / us)
    return best


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Core rating speed on both runtimes (the 7 typical scenarios in turn)."""
    n = 5000 if quick else 30000
    cp = _cpython_rating(n)
    mp = _micropython_rating(n)
    how = f"rating.rate(book, round) over billing.SCENARIOS in turn, {n} rounds, best of 3"
    rows = [{"key": "rating.cpython_rounds_per_s", "name": "rating speed, CPython", "value": round(cp), "unit": "rounds/s",
             "how": how + f" (CPython {platform.python_version()})"}]
    if mp is None:
        rows.append({"key": "rating.micropython_rounds_per_s", "name": "rating speed, MicroPython", "value": "skipped", "unit": "",
                     "how": "needs the `micropython` command: pip install 'edgemeter[micropython]'"})
    else:
        rows.append({"key": "rating.micropython_rounds_per_s", "name": "rating speed, MicroPython", "value": round(mp), "unit": "rounds/s",
                     "how": how + " (micropython unix port, -X heapsize=4m, sources from firmware_py/)"})
        rows.append({"key": "rating.cpython_over_micropython", "name": "rating speed ratio CPython / MicroPython", "value": round(cp / mp, 2), "unit": "x",
                     "how": "the two figures above, measured back to back in this run"})
    return rows


def with_keys(module: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with a machine-readable `key` each: the module's own, else <module>.<name as a
    slug> (stable while the name is); a key used twice in one module is an error."""
    seen: set[str] = set()
    for r in rows:
        if not r.get("key"):
            slug = "".join(c if c.isalnum() else "_" for c in r["name"].lower().strip())
            r["key"] = module + "." + "_".join(w for w in slug.split("_") if w)
        if r["key"] in seen:
            raise ValueError(f"benchmark {module}: key {r['key']} used twice")
        seen.add(r["key"])
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}".rstrip("0").rstrip(".") if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def table(results: list[dict[str, Any]]) -> str:
    lines = []
    for res in results:
        lines.append(f"\n## {res['module']} ({res['source']}, {res['seconds']:.1f} s)")
        if res.get("error"):
            lines.append(f"  FAILED: {res['error']}")
            continue
        if res.get("skipped"):
            lines.append(f"  SKIPPED: {res['skipped']}")
            continue
        w = max((len(r["name"]) for r in res["rows"]), default=10)
        for r in res["rows"]:
            lines.append(f"  {r['name']:<{w}}  {_fmt(r['value']):>14} {r['unit']:<12}  {r['how']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = cliargs.Parser(prog="edgemeter bench", description=__doc__.split("\n")[0])
    ap.add_argument("--json", metavar="FILE", type=cliargs.out_file, help="also write every row as JSON")
    ap.add_argument("--quick", action="store_true", help="shorter runs (smoke test; figures are noisier)")
    ap.add_argument("--only", help="comma list of modules: " + ",".join(m for m, _ in MODULES))
    ap.add_argument("--pg", metavar="URL", help="PostgreSQL for the ingest_pg module (a scratch database is "
                                                "created beside this one; default EDGEMETER_PG_URL)")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if args.pg:
        os.environ["EDGEMETER_PG_URL"] = args.pg
    only = set(args.only.split(",")) if args.only else None
    if only and only - {m for m, _ in MODULES}:
        ap.error(f"unknown modules {sorted(only - {m for m, _ in MODULES})}")
    results = []
    status = 0
    print(f"edgemeter bench: {platform.node()} {platform.machine()}, {os.cpu_count()} CPU(s), "
          f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
          + (" (--quick)" if args.quick else ""))
    for name, modname in MODULES:
        if only and name not in only:
            continue
        t0 = time.monotonic()
        res: dict[str, Any] = {"module": name, "source": modname.replace(".", "/") + ".py", "rows": []}
        why = missing(name)
        try:
            if why:
                res["skipped"] = why
            else:
                mod = sys.modules[__name__] if modname == "edgemeter.tools.bench" else importlib.import_module(modname)
                res["rows"] = with_keys(name, mod.run(quick=args.quick))
        except (Exception, SystemExit) as exc:   # noqa: BLE001 - one failing benchmark must not hide the others
            res["error"] = str(exc) if isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}"
            res["trace"] = traceback.format_exc()[-2000:]
            status = 1
        res["seconds"] = time.monotonic() - t0
        results.append(res)
        print(table([res]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"quick": args.quick, "results": results}, indent=1, default=str))
    return status


if __name__ == "__main__":
    sys.exit(main())
