"""RabbitMQ as the clustered broker: per-device users and topic permissions confine a device to
its own topics (cloud.rabbitmq R1-R3, the same rule as the Mosquitto ACL), on a real 3-node
cluster started by tools.rabbit, and the raters' AMQP side delivers downlink at QoS 1."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import pika
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgemeter.cloud import rabbitmq
from edgemeter.tools.rabbit import SBIN, RabbitCluster, accepts

pytestmark = pytest.mark.skipif(not (SBIN / "rabbitmq-server").exists() and os.environ.get("CI") != "true",
                                reason="RabbitMQ not installed (apt-get install rabbitmq-server; tools/dev.sh does)")

A, B = (7, 1001, "pw-a-" + "x" * 8), (7, 1002, "pw-b-" + "y" * 8)


@pytest.fixture(scope="module")
def cluster() -> Any:
    rc = RabbitCluster(3, management=True).start()
    try:
        rc.load([A, B])
        yield rc
    finally:
        rc.close()


class Client:
    """A paho MQTT 3.1.1 client (what devices speak to RabbitMQ) recording what it sees."""

    def __init__(self, rc: RabbitCluster, node: int, user: str | None, password: str | None,
                 client_id: str | None = None) -> None:
        self.got: list[tuple[str, bytes, int]] = []
        self.subacks: list[list[int]] = []
        self.connack: int | None = None
        self.lost = threading.Event()
        self.event = threading.Event()
        c = self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or user or "anon",
                                 protocol=mqtt.MQTTv311, clean_session=False)
        if user is not None:
            c.username_pw_set(user, password)
        c.on_connect = lambda cl, u, f, rc_, p: (setattr(self, "connack", rc_.value), self.event.set())
        c.on_message = lambda cl, u, m: self.got.append((m.topic, m.payload, m.qos))
        c.on_subscribe = lambda cl, u, mid, codes, p: (self.subacks.append([x.value for x in codes]), self.event.set())
        c.on_disconnect = lambda *a: (self.lost.set(), self.event.set())
        c.connect(rc.host, rc.mqtt_ports[node], keepalive=10)
        c.loop_start()
        assert self.event.wait(10), "no CONNACK"

    def subscribe(self, topic: str) -> list[int] | None:
        self.event.clear()
        self.c.subscribe(topic, qos=1)
        self.event.wait(10)
        return self.subacks[-1] if self.subacks else None

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _wait(pred: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return bool(pred())


def _rater_publish(rc: RabbitCluster, node: int, topic: str, body: bytes) -> None:
    """What the rater's AMQP transport does for a downlink (cloud.amqp rule A3), as user rater."""
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        rc.host, rc.amqp_ports[node], credentials=pika.PlainCredentials("rater", rc.users["rater"])))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish(rabbitmq.EXCHANGE, rabbitmq.routing_key(topic), body, pika.BasicProperties(delivery_mode=2))
    finally:
        conn.close()


def test_a_device_reaches_only_its_own_topics(cluster: RabbitCluster) -> None:
    rc = cluster
    admin = Client(rc, 0, "admin", rc.users["admin"], "observer")     # sees everything under em/
    assert admin.subscribe("em/#") == [1]
    a = Client(rc, 1, "7/1001", A[2])
    assert a.connack == 0
    assert a.subscribe("em/7/1001/down/#") == [1]
    b = Client(rc, 2, "7/1002", B[2])
    assert b.subscribe("em/7/1002/down/#") == [1]
    # its own uplink goes through (any node: the observer is on another one)
    a.c.publish("em/7/1001/up/usage", b"mine", qos=1).wait_for_publish(10)
    assert _wait(lambda: ("em/7/1001/up/usage", b"mine") in [(t, p) for t, p, _ in admin.got])
    # the rater's downlink for B reaches B at QoS 1, and A does not see it
    _rater_publish(rc, 0, "em/7/1002/down/ack", b"for-b")
    assert _wait(lambda: ("em/7/1002/down/ack", b"for-b", 1) in b.got)
    # A cannot subscribe to B's downlink, nor to everyone's
    bad = a.subscribe("em/7/1002/down/#")
    assert a.lost.is_set() or bad == [0x80], bad
    _rater_publish(rc, 0, "em/7/1002/down/ack", b"for-b-again")
    assert _wait(lambda: ("em/7/1002/down/ack", b"for-b-again", 1) in b.got)
    assert not [m for m in a.got if m[0] != "em/7/1001/down/ack"]
    a.close()
    for topic in ("em/7/1002/up/usage", "em/8/1001/up/usage", "em/7/1001/down/ack", "em/7/1001"):
        a = Client(rc, 1, "7/1001", A[2])
        a.c.publish(topic, b"forged " + topic.encode(), qos=1)
        assert _wait(a.lost.is_set), f"publishing on {topic} did not end the connection"
        a.close()
    time.sleep(0.5)
    assert not [p for _, p, _ in admin.got if p.startswith(b"forged")], admin.got
    assert not [p for _, p, _ in b.got if p.startswith(b"forged")]
    admin.close()
    b.close()


def test_wrong_credentials_and_borrowed_client_ids_are_refused(cluster: RabbitCluster) -> None:
    rc = cluster
    assert Client(rc, 0, "7/1001", "wrong").connack != 0
    assert Client(rc, 0, None, None).connack != 0                    # no anonymous access
    assert Client(rc, 0, "guest", "guest").connack != 0              # no guest
    # A under B's client id: its session queue would be B's (mqtt-subscription-7/1002qos1),
    # which A may not declare or read
    x = Client(rc, 1, "7/1001", A[2], client_id="7/1002")
    if x.connack == 0:
        r = x.subscribe("em/7/1001/down/#")
        assert x.lost.is_set() or r == [0x80], r
    x.close()


def test_the_rater_user_reads_only_uplink_and_writes_only_downlink(cluster: RabbitCluster) -> None:
    rc = cluster
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        rc.host, rc.amqp_ports[2], credentials=pika.PlainCredentials("rater", rc.users["rater"])))
    try:
        ch = conn.channel()
        ch.queue_declare(rabbitmq.UP_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
        ch.queue_bind(rabbitmq.UP_QUEUE, rabbitmq.EXCHANGE, rabbitmq.UP_BINDING)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            ch.queue_bind(rabbitmq.UP_QUEUE, rabbitmq.EXCHANGE, "em.7.1001.down.#")   # not its to read
        ch = conn.channel()
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            ch.basic_publish(rabbitmq.EXCHANGE, "em.7.1001.up.usage", b"forged uplink")   # not its to write
    finally:
        conn.close()


def _admin(url: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgemeter.tools.cli", "admin", *args, "--db", url, "--json"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


def test_a_device_registered_while_the_cluster_runs_can_connect_at_once(cluster: RabbitCluster, tmp_path) -> None:
    """cloud.rabbitmq R4: admin register-device pushes the device's user and permissions through
    one node's management API; the device then connects to another node, reaches its own
    topics only; a registration the API refuses is not kept."""
    rc = cluster
    assert _wait(lambda: accepts(rc.api_ports[0]), 60), "management API not up"
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    assert _admin(url, "migrate").returncode == 0
    acc = json.loads(_admin(url, "create-account", "--name", "t").stdout)["account"]
    ws = json.loads(_admin(url, "create-workspace", "--account", str(acc), "--name", "w",
                           "--billing", "postpaid").stdout)["workspace"]
    out = _admin(url, "register-device", "--workspace", str(ws), "--rabbitmq-api", rc.api_url(0))
    assert out.returncode == 0, out.stderr
    reg = json.loads(out.stdout)
    assert reg["rabbitmq"]["user"] == reg["username"] and rc.users["admin"] not in out.stdout
    admin = Client(rc, 0, "admin", rc.users["admin"], "observer-r4")
    assert admin.subscribe("em/#") == [1]
    d = Client(rc, 2, reg["username"], reg["password"])
    assert d.connack == 0
    d.c.publish(f"em/{ws}/{reg['device']}/up/usage", b"new device", qos=1).wait_for_publish(10)
    assert _wait(lambda: (f"em/{ws}/{reg['device']}/up/usage", b"new device") in [(t, p) for t, p, _ in admin.got])
    d.c.publish("em/7/1001/up/usage", b"not mine", qos=1)
    time.sleep(1)
    assert b"not mine" not in [p for _, p, _ in admin.got]
    d.close()
    admin.close()
    # a refused push (wrong admin password) keeps no registration, and says why in one line
    bad = rc.api_url(1).replace(rc.users["admin"], "wrong")
    out = _admin(url, "register-device", "--workspace", str(ws), env={"EDGEMETER_RABBITMQ_API": bad})
    assert out.returncode == 1 and "401" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "wrong" not in out.stderr
    show = _admin(url, "register-device", "--workspace", str(ws), "--id", str(reg["device"] + 1))
    assert show.returncode == 0, show.stderr   # the id the refused registration would have taken is free


def test_topic_and_routing_key_mapping() -> None:
    assert rabbitmq.routing_key("em/7/1042/up/usage") == "em.7.1042.up.usage"
    assert rabbitmq.mqtt_topic("em.7.1042.down.ack") == "em/7/1042/down/ack"
    defs = rabbitmq.device_definitions(7, 1042, "pw")
    tp = defs["topic_permissions"][0]
    import re
    assert re.match(tp["write"], "em.7.1042.up.usage") and not re.match(tp["write"], "em.7.10421.up.usage")
    assert not re.match(tp["write"], "em.7.1042.down.ack") and not re.match(tp["write"], "em.71.042.up.usage")
    assert re.match(tp["read"], "em.7.1042.down.#") and not re.match(tp["read"], "em.*.*.down.#")
    h = defs["users"][0]["password_hash"]
    import base64
    import hashlib
    raw = base64.b64decode(h)
    assert raw[4:] == hashlib.sha256(raw[:4] + b"pw").digest()
