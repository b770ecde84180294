"""The cloud side of the firmware bench and tests: a paho-mqtt 2.x client with the broker's "rater"
credentials running the real firmware_py.cloud_session.CloudSession per device and a real
firmware_py.pool.Pool for the workspace. It books usage batches once per (dev, seq), acks
cumulatively, grants leases and confirms returns: what cloud/rater.py does around
cloud.ingest, without the database, so the tests see every booking directly.

Persistent session (clean_session=False, a stable client id): what devices publish while it
is away (a broker restart) is queued by Mosquitto and delivered when it is back.
"""
from __future__ import annotations

import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from firmware_py import pricebook, rating
from firmware_py import proto as P
from firmware_py.cloud_session import CloudSession
from firmware_py.pool import Pool
from edgemeter.tools.sim import fw_driver
from edgemeter.tools.broker import Broker


class Cloud:
    def __init__(self, broker: Broker, ws: int, devices: dict[int, bytes], kid: int = 1, *,
                 units: int = 10**9, terms: dict[str, int] | None = None) -> None:
        self.ws = ws
        self.book = pricebook.default()
        self.sessions = {dev: CloudSession(ws, dev, {kid: key}, books={self.book["version"]: self.book})
                         for dev, key in devices.items()}
        self.pool = Pool(terms=terms)
        self.pool.add(units)
        self.booked: dict[int, dict[int, dict[str, Any]]] = {dev: {} for dev in devices}
        self.duplicates = 0
        self.rejects: list[tuple[int, str]] = []
        self.statuses: list[dict[str, Any]] = []
        self.grants = 0
        self.lock = threading.Lock()
        self.connected = threading.Event()
        c = self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fwcloud-{ws}",
                                      protocol=mqtt.MQTTv311, clean_session=False)
        c.username_pw_set("rater", broker.users["rater"])
        c.reconnect_delay_set(0.1, 1)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.connect(broker.host, broker.port, keepalive=5)
        c.loop_start()
        if not self.connected.wait(10):
            raise RuntimeError("cloud responder did not connect")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        client.subscribe(f"em/{self.ws}/+/up/#", qos=1)
        self.connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        parts = msg.topic.split("/")
        dev = int(parts[2])
        cs = self.sessions.get(dev)
        if cs is None:
            return
        with self.lock:
            booked = self.booked[dev]
            acts = cs.receive(msg.payload, int(time.time()), booked.__contains__, self.pool,
                              "/".join(parts[3:]))
            ack = False
            for a in acts:
                if a[0] == "book":
                    booked[a[1]["seq"]] = a[1]
                    ack = True
                elif a[0] == "duplicate":
                    self.duplicates += 1
                    ack = True
                elif a[0] == "publish":
                    self.grants += a[1] == "down/grant"
                    client.publish(P.topic(self.ws, dev, a[1]), a[2], qos=1)
                elif a[0] == "reject":
                    self.rejects.append((dev, a[1]))
                elif a[0] == "event" and a[1] == "status":
                    self.statuses.append(a[2])
            if ack:
                client.publish(P.topic(self.ws, dev, "down/ack"), cs.ack(booked.__contains__), qos=1)

    def command(self, dev: int, op: int, arg: Any = None) -> None:
        with self.lock:
            data = self.sessions[dev].command(op, arg)
            self.client.publish(P.topic(self.ws, dev, "down/cmd"), data, qos=1)

    def rounds(self, dev: int) -> dict[int, tuple[int, int]]:
        """Booked rounds by the number they carry (fw_driver.mark): {i: (uCNY, times booked)}."""
        got: dict[int, tuple[int, int]] = {}
        with self.lock:
            batches = list(self.booked[dev].values())
        for b in batches:
            assert b["verdict"] == P.V_OK, b
            for _, wire, ucny in b["rounds"]:
                rnd = rating.round_from_wire(wire)
                m = rnd[pricebook.MEMORY][0]
                w = rnd[pricebook.WEB_SEARCH][0]
                i = (w - 1) * 100 + (m - 1)
                assert fw_driver.mark(i) == (m, w)
                u, n = got.get(i, (0, 0))
                got[i] = (ucny, n + 1)
        return got

    def acked(self, dev: int) -> int:
        with self.lock:
            return self.sessions[dev].s["acked"]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
