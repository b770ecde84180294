"""The full firmware loop in a 32 KiB heap on the frozen 32-bit unix firmware
(build/fw-unix32/micropython from `edgemeter build-firmware --target unix32`: the device image
and the test driver frozen in, so bytecode, qstrs and constant tables are in the executable,
as in a board's flash). Rounds, journal, lease, sync to a real Mosquitto, acks, compaction,
and kill -9 at scheduled writes with recovery, all in `-X heapsize=32k`; the firmware reports
its heap high-water mark (rule F6: live heap after gc.collect() at named points).

SMALL is the configuration of a 32 KiB device (firmware_py/README.md, "A 32 KiB heap"):
1 KiB journal segments in an 8 KiB journal (recovery reads one segment at a time into one buffer), 5-round
batches kept in RAM until sealed, a 1 KiB packet buffer and 2 publishes in flight.
The firmware is built here when it is missing or stale (about 3 minutes on 2 cores); without
the MicroPython source the tests skip, except under CI=true.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgemeter.tools import fw_cloud, fw_proc
from test_firmware_powercut import campaign
from edgemeter.tools import mpbuild
from edgemeter.tools.broker import Broker

HEAP = "32k"
SMALL = {"segment_bytes": 1024, "journal_max_bytes": 8192, "max_packet": 1024, "rx_size": 128,
         "max_inflight": 2}
SMALL_METER = {"rto": 2, "rto_max": 4, "retry": 2, "age": 1, "batch": 5, "ram_rounds": 5,
               "window": 2, "checkpoint": 16, "ack_lag": 2}
KILLS = (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 34, 45, 57, 70, 84)  # in recovery, after round, seal, checkpoint, compaction


@pytest.fixture(scope="module")
def unix32() -> Path:
    if mpbuild.default_source() is None and mpbuild.firmware("unix32") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no MicroPython source for the unix32 firmware under CI=true")
        pytest.skip("no MicroPython source (../shared/micropython/) and no build/fw-unix32")
    exe = mpbuild.firmware("unix32", build_missing=True)
    assert exe is not None
    return exe


def test_full_loop_in_32k_on_the_frozen_unix32_firmware(unix32: Path, secure_broker: Broker,
                                                        tmp_path: Path) -> None:
    b = secure_broker
    ws, dev, n = 38, 3801, 300
    cloud = fw_cloud.Cloud(b, ws, {dev: fw_proc.KEY})
    cfg = fw_proc.config(b, ws, dev, tmp_path / "jnl", workload_args={"rounds": n},
                         meter=SMALL_METER, **SMALL)
    fw = fw_proc.Fw(None, cfg, tmp_path / "em.json", heap=HEAP, firmware=unix32)
    try:
        assert fw.wait(300) == 0, fw.lines[-20:] + [fw.stderr()]
    finally:
        fw.kill()
        cloud.close()
    served = fw.served()
    assert sorted(served) == list(range(n))
    assert {i: u for i, (u, _) in cloud.rounds(dev).items()} == served
    d = fw.done()
    heap = fw.heap_lines()
    assert d["hwm"] == max(int(h["live"]) for h in heap) and d["unacked"] == 0
    # compaction ran: far more was written than the journal's bound holds
    assert d["journal_bytes"] > cfg["journal_max_bytes"]
    boot = int(next(h for h in heap if h["point"] == "boot")["live"])
    print(f"unix32 -X heapsize={HEAP}: live heap at boot {boot} B, high-water mark {d['hwm']} B, "
          f"peak allocated {d['peak']} B, {n} rounds, {d['journal_bytes']} journal bytes")


def test_kill_9_recovery_in_32k_on_the_frozen_unix32_firmware(unix32: Path, secure_broker: Broker,
                                                               tmp_path: Path) -> None:
    def make(cfg: dict, path: Path, kill_at: int | None) -> fw_proc.Fw:
        return fw_proc.Fw(None, cfg, path, heap=HEAP, kill_at=kill_at, firmware=unix32)
    r = campaign(make, secure_broker, 39, 3901, tmp_path, KILLS, min_served=150,
                 meter=SMALL_METER, **SMALL)
    print(f"unix32 -X heapsize={HEAP}: {r['kills']} kill -9, {r['served']} rounds, high-water "
          f"mark over every run {r['hwm']} B")
