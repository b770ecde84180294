"""Failpoints: named places in the agent where a fault campaign may kill the process, the way
FoundationDB's simulation and etcd's gofail inject faults into the real binary.

    EDGEMETER_FAILPOINTS="append:3"            SIGKILL at the 3rd pass through `append`
    EDGEMETER_FAILPOINTS="persist:1,publish:2" several points (the first one reached kills)

The points (each reached right after what it names has happened, or is about to):
 F1. persist: the meter's state file is on disk (fsync returned).
 F2. append: a journal record is on disk.
 F3. sync: any other file is on disk (the journal's ack slots, the price book).
 F4. publish: a message was handed to the MQTT client.
 F5. before_ack / after_ack: around handing a received ack to the meter.
Unset (the default), every check is one dictionary lookup. A malformed value is refused when
the agent starts (`edgemeter agent` exits 2 naming it), never silently ignored. The kill -9
tests (tests/agent/test_agent_kill9.py) run the real agent with one point at a time and check
that the rounds the SDK was told were accepted and the rounds the cloud booked agree.
"""
from __future__ import annotations

import os
import signal

ENV = "EDGEMETER_FAILPOINTS"
POINTS = ("persist", "append", "sync", "publish", "before_ack", "after_ack")
_armed: dict[str, list[int]] = {}     # point -> [pass that kills, passes so far]
_loaded = [False]


class FailpointError(ValueError):
    """EDGEMETER_FAILPOINTS is not "point:n[,point:n...]" with known points and n >= 1."""


def parse(spec: str) -> dict[str, int]:
    """{point: n} of a failpoint spec; FailpointError naming what is wrong."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        point, _, n = part.partition(":")
        if point not in POINTS:
            raise FailpointError(f"{ENV}: unknown point {point!r} (known: {', '.join(POINTS)})")
        if not n.isdigit() or int(n) < 1:
            raise FailpointError(f"{ENV}: {part!r}: the pass is a whole number >= 1")
        out[point] = int(n)
    return out


def load(environ: dict[str, str] | None = None) -> None:
    """Arm the points of the environment (once, at start); FailpointError when malformed."""
    spec = (environ if environ is not None else os.environ).get(ENV, "")
    _armed.clear()
    _armed.update({p: [n, 0] for p, n in parse(spec).items()})
    _loaded[0] = True


def hit(point: str) -> None:
    """A pass through `point`: SIGKILL this process when it is the armed pass."""
    if not _loaded[0]:
        load()
    a = _armed.get(point)
    if a is not None:
        a[1] += 1
        if a[1] == a[0]:
            os.kill(os.getpid(), signal.SIGKILL)
