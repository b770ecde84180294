"""The command line every benchmark module shares: `python -m edgemeter.tools.bench_X [--json] [--quick]`.

A benchmark module's run(...) returns rows {name, value, unit, how}; `edgemeter bench`
aggregates them, and each module's own main() prints them through emit().
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

from edgemeter.tools.paths import build_dir


def proc_cpu_s(pid: int, tree: bool = False) -> float:
    """CPU seconds (user + system) process pid has used so far, with its live descendants when
    tree (the rater's worker runs in a child of its watchdog, cloud.supervise); 0.0 for a
    process that is gone (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split() if tree else []
    except OSError:
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(proc_cpu_s(int(k), True) for k in kids)


def parser(module: str, doc: str | None, quick: bool = True) -> argparse.ArgumentParser:
    """An ArgumentParser for `python -m MODULE` with --json (and --quick unless quick=False)."""
    ap = argparse.ArgumentParser(prog=f"python -m {module}", description=(doc or "").split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    if quick:
        ap.add_argument("--quick", action="store_true", help="fewer rounds and repeats")
    return ap


def emit(rows: list[dict[str, Any]], as_json: bool) -> int:
    """Print rows as JSON or as a readable list with how each was measured; exit status 0."""
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['value']!s:>9} {r['unit']:<5} {r['name']}\n{'':16}({r['how']})")
    return 0


def scratch(tag: str) -> Path:
    """An empty directory ./build/tmp/bench-<tag>-<pid> for a benchmark's files (made anew;
    tools/paths.py says why ./build)."""
    d = build_dir("tmp", f"bench-{tag}-{os.getpid()}")
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d
