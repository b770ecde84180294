"""The in-process Python API of the Linux agent: a thread-safe wrapper around firmware_py.meter.

    from edgemeter.agent.api import Agent
    agent = Agent.from_config(agent.config.load("/etc/edgemeter/agent.toml"))
    s = agent.start_round(hint=5450)           # Start(allowed, code, reason, round_id)
    if s.allowed:
        agent.record(s.round_id, "asr-standard")
        agent.record(s.round_id, "chat", model="qwen-max")
        e = agent.end_round(s.round_id)         # End(code, reason, ucny)
    with agent.round() as r:                    # the same, ended on leaving the block
        r.record("asr-lite"); r.record("chat")  # r.start, r.end; RoundRefused if not allowed

One lock serializes every call into the meter (the network thread of agent.sync, the Unix-socket
threads of agent.sockapi and the SDK's own threads share it). Time is int(time.time()) unless a
clock is given. The journal directory is written with fsync: every record and state slot is
os.fsync'ed before the call that wrote it returns, and the directory is fsync'ed when a file
is created in it, so a round reported OK survives a power cut (meter_base rule M2).

Fault campaigns can kill the process at named points (agent/failpoints.py,
EDGEMETER_FAILPOINTS); the file writes and the ack hand-over here pass through them.
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, NamedTuple

from firmware_py import meter as fm
from firmware_py import VERSION, pricebook

from edgemeter.agent import config as C
from edgemeter.agent import failpoints


class Start(NamedTuple):
    allowed: bool
    code: int
    reason: str
    round_id: int


class End(NamedTuple):
    code: int
    reason: str
    ucny: int


class RoundRefused(Exception):
    """Agent.round(): the meter did not allow the round; .start is the Start."""

    def __init__(self, start: Start) -> None:
        super().__init__("round refused: %s" % start.reason)
        self.start = start


def _point(f: Any) -> str:
    name = str(getattr(f, "name", ""))
    return "persist" if "/meter." in name else "append" if name.endswith(".log") else "sync"


def fsync_file(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())
    failpoints.hit(_point(f))


def fsync_dir(path: str) -> None:
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def flush_only(f: Any) -> None:
    f.flush()
    failpoints.hit(_point(f))


class Agent:
    """One device's meter behind a lock (see the module docstring)."""

    def __init__(self, dirpath: str, ws: int, dev: int, kid: int, key: bytes,
                 book: dict | None = None, cfg: dict | None = None, fsync: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        os.makedirs(dirpath, exist_ok=True)
        self.clock = clock
        self.lock = threading.RLock()
        self.meter = fm.Meter(dirpath, ws, dev, kid, key, book, cfg,
                              sync=fsync_file if fsync else flush_only,
                              sync_dir=fsync_dir if fsync else None, firmware=VERSION + " agent")
        with self.lock:
            self.report = self.meter.open(self.now())
        self.ws, self.dev = ws, dev
        self.wake: Callable[[], None] = lambda: None  # agent.sync sets it: publish soon

    @classmethod
    def from_config(cls, cfg: dict, clock: Callable[[], float] = time.time) -> "Agent":
        d = cfg["device"]
        book = None
        if cfg["meter"]["book_file"]:
            with open(cfg["meter"]["book_file"], "rb") as f:
                book = pricebook.from_cbor(f.read())
        return cls(cfg["journal"]["dir"], d["ws"], d["dev"], d["kid"], bytes.fromhex(d["key"]),
                   book, C.meter_cfg(cfg), cfg["journal"]["fsync"], clock)

    def now(self) -> int:
        return int(self.clock())

    # ---------------------------------------------------------------- the round API
    def start_round(self, hint: int | None = None) -> Start:
        with self.lock:
            ok, code, rid = self.meter.start_round(self.now(), hint)
        self.wake()
        return Start(ok, code, fm.REASONS[code], rid)

    def record(self, round_id: int, item: str | int, count: int = 1, model: str | int | None = None,
               image: tuple[int, int] | None = None, direct: bool = False,
               launch: bool | None = None) -> int:
        """OK or UNKNOWN_ROUND; ValueError (RatingError, PriceBookError) for a bad component."""
        with self.lock:
            return self.meter.record(round_id, item, count, model, image, direct, launch,
                                     self.now())

    def end_round(self, round_id: int) -> End:
        """End(code, reason, ucny); RatingError for an invalid round (it stays open)."""
        with self.lock:
            code, u = self.meter.end_round(round_id, self.now())
        self.wake()
        return End(code, fm.REASONS[code], u)

    def leave_agent(self, item: str | int | None = None) -> None:
        with self.lock:
            self.meter.leave_agent(item)

    @contextmanager
    def round(self, hint: int | None = None) -> Iterator["Round"]:
        s = self.start_round(hint)
        if not s.allowed:
            raise RoundRefused(s)
        r = Round(self, s)
        yield r
        r.end = self.end_round(s.round_id)

    def status(self) -> dict:
        with self.lock:
            st = self.meter.status()
        st["ws"] = self.ws
        j = self.report["journal"]     # what recovery found at open (meter M7, journal J4)
        st["journal_damaged"] = len(j["damaged"])
        st["journal_quarantined"] = j["quarantined"]
        st["journal_bad_records"] = self.report["bad_records"]
        st["state_lost"] = bool(self.report.get("state_lost"))
        return st

    # ---------------------------------------------------------------- for the shell
    def tick(self) -> None:
        with self.lock:
            self.meter.tick(self.now())

    def connected(self) -> None:
        with self.lock:
            self.meter.connected(self.now())

    def receive(self, suffix: str, data: bytes) -> None:
        ack = suffix == "down/ack"
        if ack:
            failpoints.hit("before_ack")
        with self.lock:
            self.meter.receive(suffix, data, self.now())
        if ack:
            failpoints.hit("after_ack")

    def publishes(self) -> list[tuple[str, bytes]]:
        with self.lock:
            return self.meter.publishes()

    def events(self) -> list[tuple[str, Any]]:
        with self.lock:
            return self.meter.events()

    def drain(self, release: bool = True) -> None:
        with self.lock:
            self.meter.drain(self.now(), release)

    def close(self) -> None:
        with self.lock:
            self.meter.close()


class Round:
    """One open round inside `with agent.round() as r:`."""

    def __init__(self, agent: Agent, start: Start) -> None:
        self.agent = agent
        self.start = start
        self.id = start.round_id
        self.end: End | None = None

    def record(self, item: str | int, count: int = 1, model: str | int | None = None,
               image: tuple[int, int] | None = None, direct: bool = False,
               launch: bool | None = None) -> int:
        return self.agent.record(self.id, item, count, model, image, direct, launch)
