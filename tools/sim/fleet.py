"""Simulated devices: the real device meter (firmware_py.meter.Meter, the code the Linux agent
and the firmware run) on a real journal directory, each with its own MQTT link (tools.sim.net),
driven by a seeded SDK workload (tools.sim.workload).

Ground truth is kept here, independently of the journal and of the ledger: a device's served
rounds and µCNY are the rounds whose end_round() returned OK, with the amount it returned.

Power cut (in-process; the documented stand-in for kill -9 of a device process): when armed,
the journal's sync hook tears the round record being appended at a random byte between its
first byte and its end (a third of them just after its last byte; ftruncate of the
segment), then raises PowerCut out of
end_round(); the device's objects are dropped without any further write and a new Meter is
opened on the same directory (recovery, meter_base rule M7). The simulator chose the byte, so it knows
independently whether the record is complete (the round was served: the SDK just never heard
OK) or torn (it was not). Open rounds and agent sessions in RAM are lost, as on a real cut.
"""
from __future__ import annotations

import os
import random
import time
from collections import Counter
from typing import Any

from firmware_py import VERSION, meter as fm, rating
from edgemeter.tools.sim import workload as W
from edgemeter.tools.sim.net import UP, Link, Net


class PowerCut(BaseException):
    """Raised by the sync hook: the device lost power mid-append (not an OSError)."""

    def __init__(self, complete: bool) -> None:
        super().__init__("power cut")
        self.complete = complete


class SimDevice:
    def __init__(self, fleet: "Fleet", reg: dict[str, Any], postpaid: bool, cfg: dict) -> None:
        self.fleet = fleet
        self.ws, self.dev, self.key, self.kid = reg["workspace"], reg["id"], reg["key"], reg["kid"]
        self.postpaid = postpaid
        self.dir = os.path.join(fleet.root, "d%d" % self.dev)
        os.makedirs(self.dir, exist_ok=True)
        self.cfg = dict(cfg)
        self.offset = 0          # clock skew, seconds (rollback makes it smaller)
        self.rng = random.Random(fleet.seed * 1_000_003 + self.dev)
        self.quota = 0           # rounds still to serve
        self.rounds = 0          # ground truth
        self.ucny = 0
        self.refused: Counter[str] = Counter()
        self.cuts = 0
        self.cut_armed = False
        self.cut_complete: list[bool] = []
        self.pending_end: list[tuple[int, int]] = []   # (rid, uCNY if it goes through)
        self.events: Counter[str] = Counter()
        self.next_at = 0.0
        self.meter: fm.Meter = self._open()
        self.link = fleet.net.add(Link(fleet.net, self.ws, self.dev, reg["username"], reg["password"],
                                       self._up, self._msg))

    # ---------------------------------------------------------------- meter
    def now(self) -> int:
        return int(time.time()) + self.offset

    def _sync(self, f: Any) -> None:
        f.flush()
        if self.cut_armed and f.name.endswith(".log"):
            self.cut_armed = False
            start = self.meter.j.tail_size()   # the segment's good size before this record
            end = f.tell()
            # a third of the cuts land just after the record's last byte (complete: served)
            at = end if self.rng.random() < 0.33 else self.rng.randrange(start, end)
            f.truncate(at)
            f.flush()
            raise PowerCut(at == end)

    def _open(self) -> fm.Meter:
        m = fm.Meter(self.dir, self.ws, self.dev, self.kid, self.key, self.fleet.book, self.cfg,
                     sync=self._sync, firmware=VERSION + " sim")
        self.meter = m
        rep = m.open(self.now())
        if rep["journal"].get("torn") or rep.get("rededucted"):
            self.events["recovered"] += 1
        return m

    def _up(self) -> None:
        self.meter.connected(self.now())
        self.push()

    def _msg(self, suffix: str, data: bytes) -> None:
        self.meter.receive(suffix, data, self.now())
        self.push()

    def push(self) -> None:
        for suffix, data in self.meter.publishes():
            if self.link.publish(suffix, data) and suffix == "up/usage":
                self.fleet.sent_usage(self, suffix, data)
        self.link.flush()
        if self.fleet.spare_fds:   # many devices: do not keep a journal segment open each
            self.meter.j.release()   # (the next append reopens it; nothing else changes)

    def drain_events(self) -> None:
        for name, _ in self.meter.events():
            self.events[name] += 1

    # ---------------------------------------------------------------- the SDK's round
    def serve_one(self, cut: bool = False) -> bool:
        """One round of the workload; True when it was served (ground truth)."""
        m, now = self.meter, self.now()
        if self.pending_end:
            return self._retry_end(now)
        ok, code, rid = m.start_round(now, W.HINT)
        if not ok:
            self.refused[fm.REASONS[code]] += 1
            return False
        W.record(m, rid, W.pick(self.rng), now)
        expect = rating.total(m.s.book, m.rounds[rid][1])
        self.cut_armed = cut
        try:
            code, u = m.end_round(rid, now)
        except PowerCut as pc:
            self._power_cut(pc, expect)
            return pc.complete
        finally:
            self.cut_armed = False
        if code != fm.OK:
            self.refused[fm.REASONS[code]] += 1
            self.pending_end.append((rid, expect))  # M2: the round stays open; end it later
            return False
        self._served(u)
        return True

    def _retry_end(self, now: int) -> bool:
        rid, _ = self.pending_end[0]
        code, u = self.meter.end_round(rid, now)
        if code == fm.UNKNOWN_ROUND:      # settled by the meter's timeout (M6): an event says so
            self.pending_end.pop(0)
            return False
        if code != fm.OK:
            self.refused[fm.REASONS[code]] += 1
            return False
        self.pending_end.pop(0)
        self._served(u)
        return True

    def _served(self, u: int) -> None:
        self.rounds += 1
        self.ucny += u
        self.quota -= 1
        self.fleet.served_rounds += 1

    def _power_cut(self, pc: PowerCut, expect: int) -> None:
        self.cuts += 1
        self.cut_complete.append(pc.complete)
        if pc.complete:
            self._served(expect)
        old = self.meter
        old.j.release()                  # the dead process's file handles; nothing is written
        self.pending_end = []            # open rounds die with the RAM
        self.link.close(0.5 + self.rng.random())   # the device reboots: its connection drops
        self._open()
        del old

    def tick(self) -> None:
        self.meter.tick(self.now())
        self.push()
        self.drain_events()


class Fleet:
    """Devices, their links and the ground truth."""

    def __init__(self, root: str, host: str, port: int | list[int], seed: int, book: dict | None = None) -> None:
        self.root, self.seed = root, seed
        self.book = book
        self.rng = random.Random(seed)
        self.net = Net(host, port, self.rng)
        self.devices: list[SimDevice] = []
        self.by_dev: dict[int, SimDevice] = {}
        self.served_rounds = 0
        self.recent: list[tuple[SimDevice, str, bytes]] = []   # for duplicate deliveries
        self.dups_sent = 0
        self.spare_fds = False

    def add(self, reg: dict[str, Any], postpaid: bool, cfg: dict) -> SimDevice:
        d = SimDevice(self, reg, postpaid, cfg)
        self.devices.append(d)
        self.by_dev[d.dev] = d
        return d

    def sent_usage(self, d: SimDevice, suffix: str, data: bytes) -> None:
        if len(self.recent) < 512:
            self.recent.append((d, suffix, data))
        else:
            self.recent[self.rng.randrange(512)] = (d, suffix, data)

    def duplicate(self, n: int) -> int:
        """Republish n already-sent usage batches verbatim (each on its own device's link)."""
        sent = 0
        for d, suffix, data in self.rng.sample(self.recent, min(n, len(self.recent))):
            if d.link.state == UP and d.link.publish(suffix, data):
                d.link.flush()
                sent += 1
        self.dups_sent += sent
        return sent

    def tamper(self, n: int) -> int:
        """Republish n already-sent usage batches with the last byte of their MAC tag flipped
        (a corrupted or forged message, on the device's own link): the rater dead-letters each
        as bad_mac and books nothing."""
        sent = 0
        for d, suffix, data in self.rng.sample(self.recent, min(n, len(self.recent))):
            if d.link.state == UP and d.link.publish(suffix, data[:-1] + bytes([data[-1] ^ 0x5A])):
                d.link.flush()
                sent += 1
        return sent

    def totals(self) -> dict[str, int]:
        return {"rounds": sum(d.rounds for d in self.devices), "ucny": sum(d.ucny for d in self.devices)}
