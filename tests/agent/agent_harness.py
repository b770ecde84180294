"""Test parts for the Linux agent: an in-test cloud responder on a real Mosquitto, the agent as
a real `edgemeter agent` process, and a Unix-socket SDK client.

The responder is the rater's protocol half (firmware_py.cloud_session.CloudSession with a
firmware_py.pool.Pool) on a paho client logged in as the broker's "rater" user: it books
batches (dev, seq) once, acks cumulatively, grants and closes leases. Bookings live in memory
for the test to compare with what the SDK was told.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from firmware_py import pool as PL
from firmware_py import pricebook, proto as P
from firmware_py.cloud_session import CloudSession

ROOT = Path(__file__).resolve().parents[2]
WS = 7
BOOK = pricebook.default()
TERMS = {"grant": 1000000, "max": 2000000, "validity": 3600, "allowance": 200000,
         "low": 0, "policy": 1}


def key_of(dev: int) -> bytes:
    return bytes((dev + i) & 0xFF for i in range(32))


class Responder:
    """The cloud side for the tests (see the module docstring)."""

    def __init__(self, broker: Any, terms: dict | None = None, units: int = 10**9) -> None:
        self.pool = PL.Pool(terms=dict(TERMS, **(terms or {})))
        self.pool.add(units)
        self.states: dict[int, dict] = {}
        self.keys: dict[int, dict[int, bytes]] = {}
        self.books: dict[int, dict] = {1: BOOK}
        self.booked: dict[int, dict[int, dict]] = {}
        self.seen: list[tuple[int, int, bool]] = []  # (dev, message type, retx)
        self.lock = threading.Lock()
        self.online = True
        c = self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="rater-test",
                                      clean_session=False)
        c.username_pw_set("rater", broker.users["rater"])
        c.reconnect_delay_set(0.05, 0.3)
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("em/+/+/up/#", qos=1)
        c.on_message = self._on_message
        c.connect(broker.host, broker.port, 30)
        c.loop_start()
        deadline = time.monotonic() + 10
        while not c.is_connected():
            if time.monotonic() > deadline:
                raise RuntimeError("responder cannot connect")
            time.sleep(0.02)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        ws, dev, suffix = P.parse_topic(msg.topic)
        with self.lock:
            cs = self._session(ws, dev)
            mine = self.booked.setdefault(dev, {})

            def pred(seq: int) -> bool:
                return seq in mine
            try:
                m = P.unseal(msg.payload)[0]
                self.seen.append((dev, m["type"], bool(m.get("flags", 0) & P.RETX)
                                  if m["type"] == P.USAGE else False))
            except ValueError:
                pass
            out = []
            for a in cs.receive(bytes(msg.payload), int(time.time()), pred, self.pool, suffix):
                if a[0] == "book":
                    mine[a[1]["seq"]] = a[1]
                    out.append(("down/ack", cs.ack(pred)))
                elif a[0] == "duplicate":
                    out.append(("down/ack", cs.ack(pred)))
                elif a[0] == "publish":
                    out.append((a[1], a[2]))
            self.states[dev] = cs.state()
        for s, data in out:
            client.publish(P.topic(ws, dev, s), data, qos=1)

    def _session(self, ws: int, dev: int) -> CloudSession:
        keys = self.keys.setdefault(dev, {1: key_of(dev)})
        return CloudSession(ws, dev, keys, self.states.get(dev), self.books)

    def command(self, dev: int, op: int, arg: Any = None, key: bytes | None = None) -> None:
        """Sign and publish a command (suspend, resume, report, rotate) to dev."""
        with self.lock:
            cs = self._session(WS, dev)
            data = cs.command(op, arg, key)
            self.states[dev] = cs.state()
        self.client.publish(P.topic(WS, dev, "down/cmd"), data, qos=1)

    def push_book(self, dev: int, book: dict) -> None:
        with self.lock:
            cs = self._session(WS, dev)
            data = cs.push_book(book)
            self.states[dev] = cs.state()
        self.client.publish(P.topic(WS, dev, "down/book"), data, qos=1)

    def rounds(self, dev: int) -> list[tuple[int, list, int]]:
        """[(t, wire, ucny)] booked for dev, in seq order."""
        with self.lock:
            b = self.booked.get(dev, {})
            return [r for seq in sorted(b) for r in b[seq]["rounds"]]

    def counts(self, dev: int) -> list[int]:
        """The tour-guide-image count of each booked round (the tests' round identity)."""
        return [1 if type(w[0]) is int else w[0][1] for t, w, u in self.rounds(dev)]

    def retx(self, dev: int) -> int:
        """Usage batches received for dev flagged as retransmissions (booked or duplicates)."""
        with self.lock:
            return sum(1 for d, t, r in self.seen if d == dev and t == P.USAGE and r)

    def lease_returns(self, dev: int) -> int:
        with self.lock:
            return sum(1 for d, t, _ in self.seen if d == dev and t == P.LEASE_RETURN)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def write_config(dirpath: Path, broker: Any, dev: int, password: str, **over: Any) -> Path:
    """An agent site file (TOML) for device dev on broker; over: {"section.key": value}."""
    sock = tempfile.mkdtemp(prefix="em") + "/agent.sock"  # short: sun_path is 108 bytes
    cfg: dict[str, dict[str, Any]] = {
        "device": {"ws": WS, "dev": dev, "kid": 1, "key": key_of(dev).hex()},
        "mqtt": {"url": "mqtt://%s:%d" % (broker.host, broker.device_port), "password": password,
                 "keepalive": 10, "backoff_base_ms": 50, "backoff_cap_ms": 400},
        "journal": {"dir": str(dirpath / "journal")},
        "meter": {"batch": 3, "age": 1, "rto": 2, "rto_max": 4, "retry": 2, "window": 4},
        "api": {"socket": sock},
        "agent": {"tick_ms": 50, "shutdown_wait_s": 5, "log_level": "debug"},
    }
    for k, v in over.items():
        sec, key = k.split(".")
        cfg[sec][key] = v
    lines = []
    for sec, vals in cfg.items():
        lines.append("[%s]" % sec)
        for k, v in vals.items():
            lines.append("%s = %s" % (k, json.dumps(v)))
    path = dirpath / "agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def socket_path(config: Path) -> str:
    import tomllib
    return tomllib.loads(config.read_text())["api"]["socket"]


class AgentDied(RuntimeError):
    def __init__(self, returncode: int, log: str) -> None:
        super().__init__("agent exited %s:\n%s" % (returncode, log))
        self.returncode = returncode


class AgentProcess:
    """`edgemeter agent --config FILE` as a child process (stderr in a log file)."""

    def __init__(self, config: Path, crash: str = "") -> None:
        env = dict(os.environ)
        env.pop("EDGEMETER_FAILPOINTS", None)
        if crash:
            env["EDGEMETER_FAILPOINTS"] = crash
        self.log_path = config.parent / "agent.log"
        self.sock = socket_path(config)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "edgemeter.tools.cli", "agent", "--config",
                                          str(config)], cwd=str(ROOT), env=env,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise AgentDied(self.proc.returncode, self.log())
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(self.sock)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("agent socket never came up:\n" + self.log())
                time.sleep(0.02)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self, timeout: float = 20) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait(10)


class SDK:
    """A line-JSON client of the agent's Unix socket."""

    def __init__(self, path: str) -> None:
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(10)
        self.s.connect(path)
        self.f = self.s.makefile("rwb")

    def raw(self, line: bytes) -> dict:
        self.f.write(line)
        self.f.flush()
        resp = self.f.readline()
        if not resp:
            raise ConnectionError("agent closed the connection")
        return json.loads(resp)

    def call(self, **req: Any) -> dict:
        return self.raw(json.dumps(req).encode() + b"\n")

    def close(self) -> None:
        try:
            self.f.close()
            self.s.close()
        except OSError:
            pass


def wait_for(pred: Any, timeout: float = 15, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.05)


def start_allowed(sdk: SDK, timeout: float = 15) -> dict:
    """start until allowed (the first rounds wait for the lease grant)."""
    deadline = time.monotonic() + timeout
    while True:
        r = sdk.call(op="start")
        if r["allowed"]:
            return r
        if time.monotonic() > deadline:
            raise AssertionError("never allowed: %r" % r)
        time.sleep(0.05)
