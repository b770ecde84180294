"""The ledger fails closed: a rater whose SQLite file is unlinked or replaced under it, or whose
shared-memory index (-shm) faults, stops acknowledging at once with a clear error instead of
booking into a file no one will read. Real Mosquitto, real `edgemeter rater` processes, real
SQLite files."""
from __future__ import annotations

import os
import shutil
import time

import pytest

from rater_helpers import RaterProc, fleet_devices, ledger_summary, setup_store, wait_for
from edgemeter.tools.fleetpub import Fleet

pytestmark = pytest.mark.timeout(120)


def _rig(make_broker, tmp_path):
    broker = make_broker()
    path = tmp_path / "ledger" / "ledger.db"
    path.parent.mkdir(mode=0o700)
    url = f"sqlite:///{path}"
    reg = setup_store(url, postpaid_devices=1)
    rater = RaterProc(broker.url, url, "rater-fc", tmp_path).start()
    fleet = Fleet(broker.host, broker.port, fleet_devices(reg, ("postpaid",))).start()
    dev = reg["postpaid"][0]["id"]
    for _ in range(3):
        fleet.send(dev, rounds=1)
    assert fleet.wait_acked(20)
    return url, path, rater, fleet, dev


def _stops_without_acking(rater: RaterProc, fleet: Fleet, dev: int, words: str) -> None:
    acked = fleet.devices[dev].acked
    for _ in range(3):
        fleet.send(dev, rounds=1)
    assert wait_for(lambda: rater.proc.poll() is not None, 20), "the rater went on"
    assert rater.proc.returncode == 3, rater.log()[-2000:]
    time.sleep(0.5)
    assert fleet.devices[dev].acked == acked, "a batch was acked after the ledger was lost"
    assert words in rater.log() and "Traceback" not in rater.log()


@pytest.mark.parametrize("how", ["unlink the directory", "replace the file"])
def test_a_lost_ledger_file_stops_the_rater_before_any_ack(make_broker, tmp_path, how):
    url, path, rater, fleet, dev = _rig(make_broker, tmp_path)
    try:
        if how == "unlink the directory":
            shutil.rmtree(path.parent)
        else:
            shutil.copy(path, tmp_path / "copy.db")
            os.replace(tmp_path / "copy.db", path)
        _stops_without_acking(rater, fleet, dev, "ledger file")
    finally:
        fleet.stop()
        rater.kill9()


def test_a_faulting_shared_memory_index_is_logged_and_nothing_is_lost(make_broker, tmp_path):
    url, path, rater, fleet, dev = _rig(make_broker, tmp_path)
    try:
        booked = ledger_summary(url)["batches"]
        os.truncate(str(path) + "-shm", 0)      # the rater's mapping of it now faults (SIGBUS)
        acked = fleet.devices[dev].acked
        for _ in range(3):
            fleet.send(dev, rounds=1)
        assert wait_for(lambda: rater.proc.poll() is not None or fleet.devices[dev].acked > acked, 20)
        # the worker faulted (SIGBUS); its watchdog said so, exited cleanly, and nothing unbooked was acked
        assert rater.proc.poll() is not None, "the rater went on with a faulting shared-memory index"
        assert rater.proc.returncode == 3, rater.log()[-2000:]
        assert "rater process ended by SIGBUS" in rater.log(), rater.log()[-2000:]
        assert fleet.devices[dev].acked == acked
        rater.start()
        assert fleet.wait_acked(30)
        assert ledger_summary(url)["batches"] == booked + 3
    finally:
        fleet.stop()
        rater.kill9()


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


def test_the_rater_worker_dies_with_its_watchdog_and_stops_gracefully_through_it(make_broker, tmp_path):
    """cloud.supervise W2, W3: kill -9 of the watchdog leaves no worker consuming from the
    broker; SIGTERM to the watchdog is the worker's graceful stop and its exit status."""
    url, path, rater, fleet, dev = _rig(make_broker, tmp_path)
    try:
        workers = _children(rater.proc.pid)
        assert len(workers) == 1, workers
        rater.proc.kill()
        rater.proc.wait()
        assert wait_for(lambda: not os.path.exists(f"/proc/{workers[0]}") or
                        open(f"/proc/{workers[0]}/stat").read().rsplit(")", 1)[1].split()[0] == "Z", 10), \
            "the worker outlived its watchdog"
        rater.start()
        fleet.send(dev, rounds=1)
        assert fleet.wait_acked(30)
        rater.proc.terminate()
        assert rater.proc.wait(30) == 0, rater.log()[-2000:]
        assert "Traceback" not in rater.log()
    finally:
        fleet.stop()
        rater.kill9()
