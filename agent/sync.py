"""The Linux agent's MQTT shell: one paho-mqtt 2.x client driven by one thread.

Rules:
 Y1. Per-device credentials: user name and client id "<ws>/<dev>" (docs/protocol.md, Topics; the broker
     ACL's pattern on %u confines it to em/<ws>/<dev>/), MQTT 3.1.1 with a persistent session
     (clean_session false), so the broker keeps the QoS 1 downlink (acks, grants, commands,
     price books) of em/<ws>/<dev>/down/# while the device is away.
 Y2. QoS 1 both ways; keepalive from mqtt.keepalive. TLS when the URL is mqtts:// or
     mqtt.ca_file is set (the CA verifies the broker; host names are checked).
 Y3. Reconnect: after a failed connect or a lost connection the thread waits
     firmware_py.backoff delays (capped exponential, equal jitter, mqtt.backoff_base_ms ..
     mqtt.backoff_cap_ms, os.urandom as the random source) and tries again; a CONNACK resets
     the backoff. paho's own reconnect is off, so this is the one supervisor.
 Y4. After every CONNACK: subscribe to the down topics, then Meter.connected() re-sends every
     unacked batch (flagged RETX, device_session rule D4) and pending lease messages; the cloud books each
     (dev, seq) once, so re-sends and broker redeliveries are harmless.
 Y5. What the meter publishes while the link is down is dropped here (the session re-sends it,
     D4); the journal, not the MQTT client, is what keeps usage.
 Y6. All paho calls happen on this thread; the meter is reached through agent.api.Agent's lock.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from firmware_py.backoff import Backoff

from edgemeter.agent import failpoints
from edgemeter.agent.api import Agent

log = logging.getLogger("edgemeter.agent")


class Sync:
    """The network thread of one agent (rules Y1-Y6)."""

    def __init__(self, agent: Agent, mcfg: dict[str, Any]) -> None:
        self.agent = agent
        u = urlsplit(mcfg["url"])
        tls = u.scheme == "mqtts" or bool(mcfg["ca_file"])
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or (8883 if tls else 1883)
        self.keepalive = mcfg["keepalive"]
        self.base = "em/%d/%d/" % (agent.ws, agent.dev)
        self.backoff = Backoff(mcfg["backoff_base_ms"], mcfg["backoff_cap_ms"])
        c = self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=mcfg["username"],
                                      clean_session=False, protocol=mqtt.MQTTv311,
                                      reconnect_on_failure=False)
        c.username_pw_set(mcfg["username"], mcfg["password"] or None)
        if tls:
            c.tls_set(ca_certs=mcfg["ca_file"] or None)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        self.up = False
        self.sock = False
        self.connects = 0
        self.published = 0
        self.stop_ev = threading.Event()
        self.wake = threading.Event()
        agent.wake = self.wake.set
        self.thread = threading.Thread(target=self.run, name="edgemeter-sync", daemon=True)

    def start(self) -> "Sync":
        self.thread.start()
        return self

    # ---------------------------------------------------------------- paho callbacks
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.warning("broker refused the connection: %s", reason)
            return
        self.backoff.success()
        self.connects += 1
        client.subscribe(self.base + "down/#", qos=1)
        self.up = True
        log.info("connected to %s:%d (%s)", self.host, self.port,
                 "session kept" if flags.session_present else "new session")
        self.agent.connected()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                       props: Any) -> None:
        if self.up:
            log.warning("disconnected: %s", reason)
        self.up = False

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        if not msg.topic.startswith(self.base):
            log.warning("message on a foreign topic %r dropped", msg.topic)
            return
        self.agent.receive(msg.topic[len(self.base):], bytes(msg.payload))

    # ---------------------------------------------------------------- the thread
    def _delay(self) -> None:
        self.up = False
        self.sock = False
        ms = self.backoff.failure(int.from_bytes(os.urandom(4), "big"))
        self.stop_ev.wait(ms / 1000)

    def _publish(self) -> None:
        for suffix, data in self.agent.publishes():
            if not self.up:
                continue  # Y5
            info = self.client.publish(self.base + suffix, data, qos=1)
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self.published += 1
                failpoints.hit("publish")

    def run(self) -> None:
        c = self.client
        while not self.stop_ev.is_set():
            if not self.sock:
                try:
                    c.connect(self.host, self.port, self.keepalive)
                    self.sock = True
                except (OSError, ValueError) as exc:
                    log.info("connect to %s:%d failed: %s", self.host, self.port, exc)
                    self._delay()
                    continue
            rc = c.loop(timeout=0.05)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._delay()
                continue
            self._publish()
            if self.wake.is_set():
                self.wake.clear()
                self._publish()
        if self.up:
            self._publish()
            for _ in range(10):
                c.loop(timeout=0.02)
        if self.sock:
            c.disconnect()
            c.loop(timeout=0.05)
        self.up = False

    def stop(self, timeout: float = 5.0) -> None:
        """Publish what is queued, disconnect and end the thread."""
        self.stop_ev.set()
        self.thread.join(timeout)
