"""Run the runtime-neutral core test modules (tests/core/test_*.py) on the emulated Cortex-M3
board (QEMU MPS2-AN385, MicroPython's qemu port), as tests/test_micropython.py does on the unix
port: the same modules through the same runner (tests/mp/run.py, frozen as `mprun`), with the
golden vectors frozen in as `em_vectors` and the journal and state files on a littlefs
filesystem in RAM outside the MicroPython heap (tools/board/emboard.py).

The test image (tests/mp/board.py, build/fw-m3-test/firmware.elf) is built here; make leaves
it alone when nothing changed. One QEMU process runs every module, each after
a soft reset (a fresh heap) with the filesystem remounted.

Not run on the board: test_fw_config, which checks firmware_py.main's configuration: main is
the socket shell (it imports the socket MQTT client) and the board has no network stack.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from edgemeter.tools import mpbuild, qemu_m3

from mp import board as test_image

ROOT = Path(__file__).resolve().parent.parent
NOT_ON_BOARD = {"test_fw_config": "firmware_py.main imports the socket MQTT client"}
CORE_TESTS = [p for p in sorted((ROOT / "tests" / "core").glob("test_*.py")) if p.stem not in NOT_ON_BOARD]


@pytest.fixture(scope="module")
def board() -> Iterator[qemu_m3.Board]:
    try:
        elf = test_image.build_test_image()
    except mpbuild.MpBuildError as exc:
        pytest.fail(f"cannot build the board firmware: {exc}")
    with qemu_m3.Board(elf, icount=False, timeout=300) as b:
        b.mount_fs()
        yield b


@pytest.mark.parametrize("module", CORE_TESTS, ids=[p.stem for p in CORE_TESTS])
def test_core_module_on_the_m3_board(board: qemu_m3.Board, module: Path) -> None:
    board.soft_reset()
    out, err = board.run_raw(f"import mprun\nmprun.main([{module.stem!r}])\n")
    tail = out.strip().splitlines()[-1:] or ["<no output>"]
    assert not err, f"{module.name} on the board raised:\n{out}\n{err}"
    assert tail[0].endswith(" 0 failed") and not tail[0].startswith("0 passed"), f"{tail[0]}\n{out}"


def test_board_errors_are_one_clear_line(board: qemu_m3.Board, tmp_path: Path) -> None:
    board.soft_reset()
    with pytest.raises(qemu_m3.BoardError, match=r"^the script raised ZeroDivisionError"):
        board.run("x = 1\nprint(x // 0)\n")
    assert board.run("print(6 * 7)\n").strip() == "42"      # still usable afterwards
    with pytest.raises(qemu_m3.BoardError, match=r"^no firmware at "):
        qemu_m3.Board(tmp_path / "missing.elf").start()
    with qemu_m3.Board(board.elf, icount=False) as hung:  # its own QEMU: a hung board is killed
        with pytest.raises(qemu_m3.BoardError, match=r"^timed out after 1 s waiting for the script to finish"):
            hung.run("while True:\n    pass\n", timeout=1)


def test_board_figures_have_their_keys_and_do_not_move_between_runs() -> None:
    """bench_m3's instruction counts come from -icount: two boots agree to the clock's
    resolution (each figure is a difference of two ticks_us readings, 1 us = 1000
    instructions, and where the tick boundaries fall depends on how long the board waited
    for the host's input)."""
    from edgemeter.tools import bench_m3
    elf = bench_m3.bench_image()
    runs = []
    for _ in range(2):
        with qemu_m3.Board(elf, icount=True, timeout=300) as b:
            b.mount_fs()
            runs.append({r["key"]: r["value"] for r in bench_m3.figure_rows(b, 10)})
    assert runs[0].keys() == runs[1].keys()
    assert all(abs(runs[0][k] - runs[1][k]) <= 2000 for k in runs[0]), runs
    assert {"fw.m3.insns_per_round", "fw.m3.insns_per_batch", "fw.m3.insns_per_flash_append"} <= set(runs[0])
    assert all(type(v) is int and v > 0 for v in runs[0].values()), runs[0]
