"""A minimal device fleet over one MQTT connection, for rater tests and benchmarks.

It plays many registered devices at once: signs usage batches (firmware_py.proto) with each
device's key, numbers them per device, keeps every unacknowledged batch and sends it again on
request (flagged as a retransmission, as a device does after a reconnect), and verifies the
signed acks, grants and commands the rater sends back. It is not a device agent (no journal,
no lease cache): the agent and the simulator are the real thing; this is a load and test
driver whose ledger expectations are exact.

    fleet = Fleet(host, port, devices=[(ws, dev, key), ...]).start()
    fleet.send(dev, rounds=10)          # one 10-round batch of the standard voice chat round
    fleet.wait_acked(timeout=30)        # every device's last seq acked
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from firmware_py import pricebook, proto as P, rating

BOOK = pricebook.default()
STANDARD_CHAT = rating.round_to_wire(rating.from_flags(BOOK, asr="standard", intent=True, tts="standard",
                                                       llm="chat"))
STANDARD_CHAT_UCNY = rating.total(BOOK, rating.round_from_wire(STANDARD_CHAT))
T0 = 1_800_000_000


class Device:
    def __init__(self, ws: int, dev: int, key: bytes, kid: int = 1):
        self.ws, self.dev, self.keys, self.kid = ws, dev, {kid: key}, kid
        self.seq = 0
        self.unacked: dict[int, dict[str, Any]] = {}
        self.acked = 0
        self.verdicts: dict[int, int] = {}
        self.boot = 1
        self.n = 0
        self.down: list[dict[str, Any]] = []     # verified downlink messages (grants, commands, books)
        self.bad_down = 0

    @property
    def key(self) -> bytes:
        return self.keys[self.kid]

    def usage(self, rounds: list[list], lease: int = 0, ucny: int | None = None, ver: int = 1) -> tuple[str, bytes]:
        self.seq += 1
        total = sum(rating.total(BOOK, rating.round_from_wire(r)) for r in rounds) if ucny is None else ucny
        msg = {"type": P.USAGE, "kid": self.kid, "dev": self.dev, "boot": self.boot, "seq": self.seq, "ver": ver,
               "lease": lease, "t0": T0 + self.seq, "flags": 0, "ucny": total,
               "rounds": [[i] + list(r) for i, r in enumerate(rounds)]}
        self.unacked[self.seq] = msg
        return P.topic(self.ws, self.dev, "up/usage"), P.seal(self.key, msg)

    def control(self, mtype: int, **fields: Any) -> tuple[str, bytes]:
        self.n += 1
        msg = {"type": mtype, "kid": self.kid, "dev": self.dev, "boot": self.boot, "n": self.n, **fields}
        return P.topic(self.ws, self.dev, P.suffix(mtype)), P.seal(self.key, msg)

    def resend(self) -> list[tuple[str, bytes]]:
        out = []
        for seq in sorted(self.unacked):
            msg = dict(self.unacked[seq], flags=P.RETX, kid=self.kid)
            out.append((P.topic(self.ws, self.dev, "up/usage"), P.seal(self.key, msg)))
        return out

    def on_down(self, data: bytes) -> None:
        code, msg = P.check(data, self.keys, self.dev)
        if code != P.OK:
            self.bad_down += 1
            return
        if msg["type"] == P.ACK:
            self.acked = max(self.acked, msg["acked"])
            self.verdicts.update(msg.get("verdicts", {}))
            for s in [s for s in self.unacked if s <= self.acked]:
                del self.unacked[s]
            return
        if msg["type"] == P.CMD and msg["op"] == P.OP_ROTATE:
            self.keys[msg["arg"]] = P.unwrap_key(self.key, self.dev, msg["cn"], msg["arg"], msg["key"])
            self.kid = msg["arg"]
        self.down.append(msg)


class Fleet:
    """Many devices over one paho connection (anonymous or with given credentials)."""

    def __init__(self, host: str, port: int, devices: Iterable[tuple[int, int, bytes]], username: str | None = None,
                 password: str | None = None, client_id: str = "fleet", ca_file: str | None = None):
        self.devices = {dev: Device(ws, dev, key) for ws, dev, key in devices}
        self.lock = threading.Lock()
        c = self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c.max_inflight_messages_set(1000)
        if username:
            c.username_pw_set(username, password)
        if ca_file:
            c.tls_set(ca_certs=str(ca_file))
        c.on_message = self._on_message
        self.host, self.port = host, port
        self._subscribed = threading.Event()
        c.on_subscribe = lambda *a: self._subscribed.set()
        self.pending: list[Any] = []

    def start(self, timeout: float = 10.0) -> "Fleet":
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        self.client.subscribe("em/+/+/down/#", qos=1)
        if not self._subscribed.wait(timeout):
            self.client.loop_stop()
            raise RuntimeError("fleet: no SUBACK")
        return self

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            _, dev, _ = P.parse_topic(msg.topic)
        except ValueError:
            return
        d = self.devices.get(dev)
        if d is not None:
            with self.lock:
                d.on_down(msg.payload)

    def publish(self, topic: str, data: bytes) -> None:
        info = self.client.publish(topic, data, qos=1)
        self.pending.append(info)
        if len(self.pending) >= 10_000:
            self.drain()

    def drain(self) -> None:
        """Wait until the broker has PUBACKed everything published so far."""
        for info in self.pending:
            info.wait_for_publish(30)
        self.pending = []

    def send(self, dev: int, rounds: int = 10, lease: int = 0, ucny: int | None = None,
             wire: list | None = None) -> int:
        d = self.devices[dev]
        with self.lock:
            topic, data = d.usage([wire or STANDARD_CHAT] * rounds, lease=lease, ucny=ucny)
        self.publish(topic, data)
        return d.seq

    def send_control(self, dev: int, mtype: int, **fields: Any) -> None:
        d = self.devices[dev]
        with self.lock:
            topic, data = d.control(mtype, **fields)
        self.publish(topic, data)

    def resend_unacked(self) -> int:
        with self.lock:
            msgs = [m for d in self.devices.values() for m in d.resend()]
        for topic, data in msgs:
            self.publish(topic, data)
        return len(msgs)

    def all_acked(self) -> bool:
        with self.lock:
            return all(d.acked == d.seq for d in self.devices.values())

    def wait_acked(self, timeout: float = 30.0, resend_every: float | None = None) -> bool:
        """Wait until every device's last batch is acked; resend unacked ones periodically."""
        deadline = time.monotonic() + timeout
        next_resend = time.monotonic() + (resend_every or timeout)
        while time.monotonic() < deadline:
            if self.all_acked():
                return True
            if resend_every and time.monotonic() >= next_resend:
                self.resend_unacked()
                next_resend = time.monotonic() + resend_every
            time.sleep(0.05)
        return self.all_acked()

    def wait_down(self, dev: int, pred: Any, timeout: float = 15.0) -> dict[str, Any] | None:
        """The first verified downlink message of dev matching pred, waiting up to timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for m in self.devices[dev].down:
                    if pred(m):
                        return m
            time.sleep(0.02)
        return None
