"""Power cuts of the real firmware process: `micropython -m firmware_py.main` (the mpy image)
is killed with SIGKILL at scheduled durable writes, restarted on the same journal, again and
again, against a real Mosquitto and the CloudSession responder; then served == booked exactly.

Deterministic kill points: with FW_LOCKSTEP=1 the test driver's sync(f) (the journal's and the
state store's flush) prints `sync <n>` after the n-th write of the process and waits for a
line on stdin; the test answers every line except the scheduled n, where it sends SIGKILL. So
each run dies right after a chosen write: during recovery (the boot counter's persist), after
a round's record, after a seal record, a state checkpoint or an ack's compaction.

The oracle is what the SDK was told, taken from the driver's line-buffered stdout:
  - `served i u`: end_round returned OK for round i (uCNY u): it must be booked, at u;
  - `begin i` with no `served i` when the process died: end_round was running. Its first
    durable write is the round's own record (Meter._serve appends before anything else is
    written), and the kill lands after a write, so such a round IS journaled: it must be
    booked too (the service was used; the power cut only hid the OK from the SDK);
  - nothing else may be booked, and nothing twice (rounds carry their number: fw_driver.mark).
Some runs also tear the journal's tail after the kill (a partial record appended, as a power
cut in the middle of the next write leaves it); the next boot must report and cut it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from firmware_py import jframe
from edgemeter.tools import fw_cloud, fw_proc
from edgemeter.tools.broker import Broker

SCHEDULE = tuple(range(1, 13)) + (14, 16, 19, 23, 27, 32, 38, 45, 53, 62, 72, 84, 97, 111)
TEAR = (3, 7, 12, 20)  # bytes of a 25-byte record left by the torn write, in turn


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fw_proc.make_image(tmp_path_factory.mktemp("fw") / "img")


def tear(jdir: Path, n: int, segment_bytes: int) -> None:
    """The first n bytes of the next record, as a power cut during its append leaves them:
    at the end of the newest segment, or where the append would have started a new one (a
    segment never grows past segment_bytes, journal rule J1)."""
    seg = max(jdir.glob("j*.log"))
    data = seg.read_bytes()
    base = int(seg.name[1:9], 16)
    recs = [e[3] for e in jframe.scan(data, base) if e[0] == jframe.REC]
    nxt = recs[-1] + 1 if recs else base
    rec = jframe.encode(nxt, bytes(range(15)))
    if len(data) + len(rec) > segment_bytes:
        seg = jdir / f"j{nxt:08x}.log"
    with open(seg, "ab") as f:
        f.write(rec[:n])


def test_kill_9_at_scheduled_writes_then_served_equals_booked(image: Path, secure_broker: Broker,
                                                              tmp_path: Path) -> None:
    def make(cfg: dict, path: Path, kill_at: int | None) -> fw_proc.Fw:
        return fw_proc.Fw(image, cfg, path, kill_at=kill_at)
    campaign(make, secure_broker, 36, 3601, tmp_path, SCHEDULE, min_served=150)


def campaign(make: Callable[[dict, Path, int | None], fw_proc.Fw], b: Broker, ws: int, dev: int,
             tmp_path: Path, schedule: tuple[int, ...], min_served: int,
             **cfg_kw: Any) -> dict[str, int]:
    """Kill the firmware (make(cfg, config path, kill_at)) at each scheduled write, tearing
    the journal's tail after every third kill, then run it to the end: booked == what the SDK
    was told plus the rounds whose OK the kill cut off, each once. Returns the figures, the
    last run's `fw done` line, and as "hwm" the heap high-water mark over every run."""
    cloud = fw_cloud.Cloud(b, ws, {dev: fw_proc.KEY})
    jdir = tmp_path / "jnl"
    cfg = fw_proc.config(b, ws, dev, jdir, **cfg_kw)
    served: dict[int, int] = {}
    journaled: set[int] = set()     # begun, killed before the OK reached the SDK
    nxt = 0
    torn_next = False
    tears = cut_seen = hwm = 0
    try:
        for run, k in enumerate(schedule):
            cfg["workload_args"] = {"first": nxt, "rounds": nxt + 1000}
            fw = make(cfg, tmp_path / "em.json", k)
            rc = fw.wait(60)
            assert fw.killed and rc == -9, (k, rc, fw.lines[-10:], fw.stderr())
            hwm = max([hwm] + [int(h["hwm"]) for h in fw.heap_lines()])
            boot = [x for x in fw.lines if x.startswith("fw boot ")]
            if torn_next and boot:  # (a kill inside recovery may come before the boot line)
                assert " torn=1 " in boot[0], boot  # recovery found the torn tail, cut it
                cut_seen += 1
            s = fw.served()
            assert not s.keys() & served.keys()
            served.update(s)
            inflight = fw.in_flight()
            if inflight is not None:
                journaled.add(inflight)
            nxt = max(fw.begun(), default=nxt - 1) + 1
            torn_next = run % 3 == 2 and any(jdir.glob("j*.log"))
            if torn_next:
                tear(jdir, TEAR[tears % len(TEAR)], cfg["segment_bytes"])
                tears += 1
        cfg["workload_args"] = {"first": nxt, "rounds": nxt + 25}
        fw = make(cfg, tmp_path / "em.json", None)
        assert fw.wait(120) == 0, [fw.stderr()] + fw.lines[-40:]
        served.update(fw.served())
    finally:
        fw.kill()
        cloud.close()
    booked = cloud.rounds(dev)
    assert tears >= 4 and cut_seen >= 2 and len(served) > min_served
    assert {i: n for i, (_, n) in booked.items() if n != 1} == {}, "a round booked twice"
    assert set(booked) == set(served) | journaled, (
        sorted(set(booked) ^ (set(served) | journaled)))
    assert {i: u for i, (u, _) in booked.items() if i in served} == served
    total = sum(u for u, _ in booked.values())
    assert sum(x["ucny"] for x in cloud.booked[dev].values()) == total
    done = fw.done()
    assert done["unacked"] == 0
    done["hwm"] = max(hwm, done["hwm"])  # over every run, recoveries included
    print(f"{len(schedule)} kills, {tears} torn tails: {len(served)} rounds the SDK was told, "
          f"{len(journaled)} journaled when the OK was cut off, {len(booked)} booked, {total} uCNY")
    return {**done, "kills": len(schedule), "tears": tears, "served": len(served),
            "booked": len(booked)}
