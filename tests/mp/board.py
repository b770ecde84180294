"""The core tests' image for the emulated Cortex-M3 board (tools/mpbuild.py, tools/qemu_m3.py):
every firmware_py module, the test modules of tests/core/, this folder's run.py as `mprun` and
the golden vectors (tests/vectors/*.json as string constants of the module `em_vectors`, which
tests/core/vec.py reads when it is importable), all frozen into flash.

Its heap is 1 MiB, not the device's 32 KiB: the tests, not the firmware, need it (whole vector
files parsed in RAM, 64 KiB payloads, many sessions side by side).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from edgemeter.tools import mpbuild

ROOT = Path(__file__).resolve().parent.parent.parent
HEAP = 1024 * 1024


def manifest(gen: Path) -> str:
    """The freeze lines; em_vectors.py and mprun.py are generated into gen."""
    gen.mkdir(parents=True, exist_ok=True)
    vec = {p.stem: p.read_text() for p in sorted((ROOT / "tests" / "vectors").glob("*.json"))}
    for text in vec.values():
        json.loads(text)  # a broken vector file fails here, not on the board
    body = "# tests/vectors/*.json as strings (tests/mp/board.py)\n" + "".join(
        f"{k} = {v!r}\n" for k, v in vec.items())
    target = gen / "em_vectors.py"
    if not target.exists() or target.read_text() != body:
        target.write_text(body)
    shutil.copyfile(ROOT / "tests" / "mp" / "run.py", gen / "mprun.py")
    core = ROOT / "tests" / "core"
    return mpbuild.variant_manifest(
        "".join(f'module("{p.name}", base_path="{core}")\n' for p in sorted(core.glob("*.py")))
        + f'module("em_vectors.py", base_path="{gen}")\nmodule("mprun.py", base_path="{gen}")\n')


def build_test_image() -> Path:
    """build/fw-m3-test/firmware.elf, rebuilt when its sources changed."""
    return mpbuild.board_image(HEAP, "test", manifest(mpbuild.ROOT / "build" / "fw-m3-test" / "frozen"))
