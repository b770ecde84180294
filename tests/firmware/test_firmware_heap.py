"""The firmware's heap and image: the full loop (rounds, journal, lease, sync to Mosquitto) run
from the `tools.build_firmware --image` .mpy files in a bounded MicroPython heap, with the
high-water mark the firmware itself prints (rule F6: live heap after gc.collect() at named
points). On the unix port the .mpy bytecode and the modules' tables are loaded INTO the heap,
so the heap needed is dominated by code (see firmware_py/README.md, Firmware); the part the
loop itself allocates (above the heap at boot) is what this test bounds.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgemeter.tools import fw_cloud, fw_proc
from edgemeter.tools.broker import Broker
from edgemeter.tools.fwmodules import ROOT, image_modules

HEAP = "256k"
WORKING_SET = 16 * 1024  # bytes the loop may hold above the heap at boot


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fw_proc.make_image(tmp_path_factory.mktemp("fw") / "img")


def test_image_holds_exactly_what_the_firmware_imports(image: Path) -> None:
    code = ("import sys, firmware_py.main, firmware_py.mqtt_tls; "
            "print(' '.join(sorted(m[12:] for m in sys.modules if m.startswith('firmware_py.'))))")
    got = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    assert got == image_modules()
    assert sorted(p.stem for p in (image / "firmware_py").glob("*.mpy")) == sorted(
        ["__init__"] + got)
    assert not (image / "firmware_py" / "cbor_diag.mpy").exists()


def test_full_loop_in_a_bounded_heap(image: Path, secure_broker: Broker, tmp_path: Path) -> None:
    b = secure_broker
    ws, dev, n = 37, 3701, 100
    cloud = fw_cloud.Cloud(b, ws, {dev: fw_proc.KEY})
    cfg = fw_proc.config(b, ws, dev, tmp_path / "jnl", max_inflight=2,
                         workload_args={"rounds": n},
                         meter={"rto": 2, "rto_max": 4, "retry": 2, "age": 1, "ram_rounds": 10})
    fw = fw_proc.Fw(image, cfg, tmp_path / "em.json", heap=HEAP)
    try:
        assert fw.wait(180) == 0, fw.lines[-20:]
    finally:
        fw.kill()
        cloud.close()
    served = fw.served()
    assert sorted(served) == list(range(n))
    assert {i: u for i, (u, _) in cloud.rounds(dev).items()} == served
    heap = fw.heap_lines()
    boot = int(next(h for h in heap if h["point"] == "boot")["live"])
    d = fw.done()
    assert d["hwm"] == max(int(h["live"]) for h in heap)
    print(f"heapsize={HEAP}: live heap at boot {boot} B, high-water mark {d['hwm']} B "
          f"(loop working set {d['hwm'] - boot} B), peak allocated {d['peak']} B")
    assert d["hwm"] - boot < WORKING_SET
