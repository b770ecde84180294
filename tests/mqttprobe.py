"""A paho-mqtt 2.x client (CallbackAPIVersion.VERSION2) for tests: connect, subscribe and wait for
the SUBACK, publish and wait for the PUBACK, collect messages in a queue. Importable from any
test as `import mqttprobe` (tests/ is on sys.path through tests/conftest.py)."""
from __future__ import annotations

import itertools
import queue
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgemeter.tools.broker import Broker


_ids = itertools.count(1)


class Probe:
    def __init__(self, broker: Broker, user: str | None = None, *, client_id: str = "",
                 tls: bool = False, v5: bool = False, clean: bool = True,
                 port: int | None = None) -> None:
        proto = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        kw: dict[str, Any] = {} if v5 else {"clean_session": clean}
        client_id = client_id or f"probe-{next(_ids)}-{id(self)}"  # the broker refuses empty ids
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=proto, **kw)
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connects: queue.Queue[Any] = queue.Queue()
        self.subacks: queue.Queue[list[Any]] = queue.Queue()
        self._subs: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_subscribe = lambda c, u, mid, rcs, props: self.subacks.put(rcs)
        if user is not None:
            self.client.username_pw_set(user, broker.users[user])
        if tls:
            self.client.tls_set(ca_certs=str(broker.ca_file))
        self.client.reconnect_delay_set(1, 1)
        port = port or (broker.tls_port if tls else broker.port_for(user))
        host = "localhost" if tls else broker.host
        self.client.connect(host, port or 0, keepalive=30,
                            clean_start=clean if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY)
        self.client.loop_start()
        rc = self.connects.get(timeout=10)
        if rc != 0:
            self.close()
            raise ConnectionRefusedError(f"CONNACK {rc}")

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connects.put(rc)
        with self._lock:
            subs = list(self._subs)
        for f, q in subs:  # after a broker restart, subscribe again (clean sessions)
            c.subscribe(f, q)

    def subscribe(self, topic_filter: str, qos: int = 1) -> list[Any]:
        with self._lock:
            self._subs.append((topic_filter, qos))
        self.client.subscribe(topic_filter, qos)
        return self.subacks.get(timeout=10)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        info = self.client.publish(topic, payload, qos)
        info.wait_for_publish(timeout=10)
        if not info.is_published():
            raise TimeoutError(f"no PUBACK for {topic}")

    def get(self, timeout: float = 10.0) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=timeout)

    def drain(self, quiet: float = 0.3) -> list[mqtt.MQTTMessage]:
        """Every message that arrives until none came for `quiet` seconds."""
        out = []
        while True:
            try:
                out.append(self.messages.get(timeout=quiet))
            except queue.Empty:
                return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_until(pred: Any, timeout: float = 10.0, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())
