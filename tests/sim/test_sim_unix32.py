"""The simulator's MicroPython devices on the frozen 32-bit unix firmware in a 32 KiB heap
(`edgemeter sim --micropython 4 --mp-heap 32k`, tools/sim/mp.py): every fault, the devices'
kill -9s (mp-power) included, and the audit finds nothing lost or duplicated. Built first
when missing or stale; without the MicroPython source the test skips, except under CI=true.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgemeter.tools import mpbuild
from test_campaign_ci import run_sim


def test_micropython_devices_in_32k_on_unix32(tmp_path: Path) -> None:
    if mpbuild.default_source() is None and mpbuild.firmware("unix32") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no MicroPython source for the unix32 firmware under CI=true")
        pytest.skip("no MicroPython source (../shared/micropython/) and no build/fw-unix32")
    assert mpbuild.firmware("unix32", build_missing=True) is not None
    r = run_sim(tmp_path, "--devices", "4", "--micropython", "4", "--mp-heap", "32k",
                "--mp-firmware", "unix32", "--rounds", "2000", "--faults", "all", "--seed", "3",
                timeout=600)
    mp = r["micropython"]
    assert mp["firmware"] == "unix32" and mp["heap"] == "32k"
    assert mp["exit_codes"] == [0, 0, 0, 0] and mp["kills"] >= 4
    assert 0 < mp["heap_hwm_max"] < 32 * 1024
    a = r["audit"]
    assert a["lost_rounds"] == 0 and a["duplicated_rounds"] == 0 and a["devices_differing"] == 0
    print(f"4 MicroPython devices in 32k: {mp['kills']} kill -9, heap high-water mark "
          f"{mp['heap_hwm_max']} B; {a['ledger']['rounds']} rounds booked")
