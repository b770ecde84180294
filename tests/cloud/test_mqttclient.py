"""cloud.mqttclient.RaterClient against a stock paho Client, both subscribed on a real Mosquitto:
every message either receives must come out identical (rules Q1, Q2), whichever path
decoded it, and acknowledgements must still work (automatic, manual, and Q3 ack_many)."""
from __future__ import annotations

import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgemeter.cloud.mqttclient import NO_PROPERTIES, RaterClient, StockClient, client_class, missing_hooks


def _props(msg: Any) -> dict[str, Any]:
    p = msg.properties
    return {} if p is None else {k: v for k, v in vars(p).items()
                                 if k not in ("packetType", "types", "names", "properties")}


def _connect(c: Any, host: str, port: int, login: tuple[str, str] | None = None, ca_file: Any = None,
             **kw: Any) -> Any:
    """Connect client c (credentials and TLS if given) and start its network thread."""
    if login:
        c.username_pw_set(*login)
    if ca_file:
        c.tls_set(ca_certs=str(ca_file))
    c.connect(host, port, **kw)
    c.loop_start()
    return c


def _publisher(host: str, port: int, cid: str, login: tuple[str, str] | None = None,
               ca_file: Any = None) -> mqtt.Client:
    """A stock publisher, returned once its CONNACK has come."""
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
    up = threading.Event()
    pub.on_connect = lambda *a: up.set()
    _connect(pub, host, port, login, ca_file)
    assert up.wait(10)
    return pub


def _wait_until(done: Any, timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while not done() and time.monotonic() < end:
        time.sleep(0.02)


def _stop(*clients: Any) -> None:
    for c in clients:
        c.disconnect()
        c.loop_stop()


class Sink:
    def __init__(self, cls: type, host: str, port: int, cid: str, topic: str, manual: bool = False,
                 qos: int = 2, login: tuple[str, str] | None = None, ca_file: Any = None):
        self.got: list[tuple] = []
        self.msgs: list[Any] = []
        self.lock = threading.Lock()
        c = self.client = cls(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5, manual_ack=manual)
        self.manual = manual
        c.on_message = self._on
        sub = threading.Event()
        c.on_subscribe = lambda *a: sub.set()
        _connect(c, host, port, login, ca_file)
        c.subscribe(topic, qos=qos)
        assert sub.wait(10)

    def _on(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.lock:
            self.got.append((msg.topic, msg.payload, msg.qos, msg.retain, msg.dup, _props(msg)))
            self.msgs.append(msg)
        if self.manual and msg.qos:
            client.ack(msg.mid, msg.qos)

    def wait(self, n: int, timeout: float = 20) -> list[tuple]:
        _wait_until(lambda: len(self.got) >= n, timeout)
        return list(self.got)

    def close(self) -> None:
        _stop(self.client)


def _session(broker: Any, cid: str, topic: str, on_message: Any) -> RaterClient:
    """A RaterClient with manual acks in a persistent session (kept 600 s), subscribed to topic."""
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 600
    c = RaterClient(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5, manual_ack=True)
    c.on_message = on_message
    _connect(c, broker.host, broker.port, clean_start=False, properties=props)
    c.subscribe(topic, qos=1)
    return c


def _publish_all(host: str, port: int, base: str) -> int:
    pub = _publisher(host, port, "qpub")
    with_props = Properties(PacketTypes.PUBLISH)
    with_props.UserProperty = [("a", "1"), ("b", "2")]
    with_props.ContentType = "application/cbor"
    with_props.MessageExpiryInterval = 600
    sent = [
        (f"{base}/plain/q1", b"\x82\x01\x02", 1, None, False),
        (f"{base}/plain/q0", b"zero", 0, None, False),
        (f"{base}/empty/q1", b"", 1, None, False),
        (f"{base}/big/q1", bytes(range(256)) * 230, 1, None, False),        # 58 KiB: across read chunks
        (f"{base}/props/q1", b"p", 1, with_props, False),
        (f"{base}/qos2", b"two", 2, None, False),
        (f"{base}/utf8/\u00e9\u4e2d", b"u", 1, None, False),
    ]
    sent += [(f"{base}/burst/{i}", i.to_bytes(4, "big") * (i % 50), 1, None, False) for i in range(400)]
    for topic, payload, qos, props, retain in sent:
        pub.publish(topic, payload, qos=qos, properties=props, retain=retain).wait_for_publish(10)
    _stop(pub)
    return len(sent)


def test_rater_client_receives_exactly_what_stock_paho_receives(mosquitto: Any) -> None:
    base = "qtest/same"
    stock = Sink(mqtt.Client, mosquitto.host, mosquitto.port, "q-stock", base + "/#")
    ours = Sink(RaterClient, mosquitto.host, mosquitto.port, "q-ours", base + "/#", manual=True)
    try:
        n = _publish_all(mosquitto.host, mosquitto.port, base)
        a, b = stock.wait(n), ours.wait(n)
        assert len(a) == n and len(b) == n
        assert sorted(b) == sorted(a)     # same topics, payloads, QoS, flags and properties
        # in the same order, but for QoS 2 (delivered at PUBREL, whose timing varies)
        assert [x for x in b if x[2] < 2] == [x for x in a if x[2] < 2]
        kinds = {m.topic.split("/")[2]: m for m in ours.msgs}
        assert kinds["plain"].properties is NO_PROPERTIES        # Q2 path
        assert kinds["props"].properties is not NO_PROPERTIES    # paho's own path
        assert _props(kinds["props"])["UserProperty"] == [("a", "1"), ("b", "2")]
        assert kinds["qos2"].qos == 2
        assert not ours.client.buffered()
    finally:
        stock.close()
        ours.close()


def test_manual_acks_release_the_broker_window(make_broker: Any) -> None:
    """With manual_ack the broker redelivers what was not acked, and stops once it was."""
    broker = make_broker()
    got: list[int] = []

    def on(client: Any, userdata: Any, msg: Any) -> None:
        got.append(int(msg.payload))

    def on_ack(client: Any, userdata: Any, msg: Any) -> None:
        on(client, userdata, msg)
        client.ack(msg.mid, 1)

    c = _session(broker, "q-manual", "qtest/manual", on)
    time.sleep(0.3)
    pub = _publisher(broker.host, broker.port, "q-mpub")
    for i in range(20):
        pub.publish("qtest/manual", str(i).encode(), qos=1).wait_for_publish(10)
    _wait_until(lambda: len(got) >= 20)
    _stop(c)
    assert sorted(got) == list(range(20))
    got.clear()
    c = _session(broker, "q-manual", "qtest/manual", on_ack)   # not acked before: all redelivered, acked now
    _wait_until(lambda: len(got) >= 20)
    time.sleep(0.3)
    _stop(c)
    assert sorted(got) == list(range(20))
    got.clear()
    c = _session(broker, "q-manual", "qtest/manual", on_ack)   # acked: nothing comes again
    time.sleep(1.0)
    _stop(c, pub)
    assert got == []


def test_ack_many_acknowledges_a_group_in_one_write(make_broker: Any) -> None:
    """Q3: one ack_many() for a whole group (a 0 among the mids is skipped) releases every
    message: a new connection of the same session gets nothing again."""
    broker = make_broker()
    got: list[Any] = []

    def on(client: Any, userdata: Any, msg: Any) -> None:
        got.append(msg)

    c = _session(broker, "q-many", "qtest/many", on)
    time.sleep(0.3)
    pub = _publisher(broker.host, broker.port, "q-many-pub")
    for i in range(50):
        pub.publish("qtest/many", str(i).encode(), qos=1).wait_for_publish(10)
    _wait_until(lambda: len(got) >= 50)
    assert sorted(int(m.payload) for m in got) == list(range(50))
    c.ack_many([0] + [m.mid for m in got])
    time.sleep(0.5)
    _stop(c)
    got.clear()
    c = _session(broker, "q-many", "qtest/many", on)
    time.sleep(1.0)
    _stop(c, pub)
    assert got == []


def test_rater_client_over_tls_matches_stock_paho(secure_broker: Any) -> None:
    """Q1 over the production TLS listener: the buffered reads come from an SSL socket (records
    of up to 16 KiB); a burst of messages of many sizes arrives identical to a stock client's."""
    b = secure_broker
    # two devices on the TLS listener, each reading its own downlink (that listener admits only
    # devices, and makes each one's user name its client id); the rater, on the private
    # listener, sends every message to both
    (u1, p1), (u2, p2) = b.add_device(77, 7702), b.add_device(77, 7703)
    stock, ours = (Sink(cls, b.host, b.tls_port, u, f"em/{u}/down/#", qos=1, login=(u, pw), ca_file=b.ca_file)
                   for cls, u, pw in ((mqtt.Client, u1, p1), (RaterClient, u2, p2)))
    pub = _publisher(b.host, b.port, "q-tls-pub", ("rater", b.users["rater"]))
    try:
        sent = [bytes([i % 251]) * (i * 97 % 30000) for i in range(300)]
        infos = [pub.publish(f"em/{u}/down/x", p, qos=1) for p in sent for u in (u1, u2)]
        for x in infos:
            x.wait_for_publish(20)
        a, o = stock.wait(len(sent)), ours.wait(len(sent))
        assert len(a) == len(sent) and [x[1:] for x in o] == [x[1:] for x in a]
        assert [x[1] for x in o] == sent
    finally:
        _stop(pub)
        stock.close()
        ours.close()


def test_installed_paho_has_every_hook_the_fast_path_needs() -> None:
    """Q4: on the paho versions CI runs (pyproject's lowest and highest), nothing is missing."""
    assert missing_hooks() == []
    assert client_class() is RaterClient


def test_a_paho_without_a_hook_gets_the_stock_client_with_a_warning(caplog: Any) -> None:
    """Q4: a paho whose _sock_recv is gone, or whose _packet_queue takes other parameters, is
    named in a warning and the rater gets StockClient."""
    class Renamed(mqtt.Client):
        _sock_recv = None   # type: ignore[assignment]

        def _packet_queue(self, command: Any, packet: Any, mid: Any, qos: Any, info: Any = None,
                          extra: Any = None) -> Any:
            return super()._packet_queue(command, packet, mid, qos, info)

    class Reordered(mqtt.Client):
        def _packet_queue(self, packet: Any, command: Any, mid: Any, qos: Any, info: Any = None) -> Any:
            return super()._packet_queue(command, packet, mid, qos, info)

    assert missing_hooks(Renamed) == ["_sock_recv"]
    assert missing_hooks(Reordered) == ["_packet_queue(command, packet, mid, qos)"]
    with caplog.at_level("WARNING"):
        assert client_class(base=Reordered) is StockClient
    assert "_packet_queue(command, packet, mid, qos)" in caplog.text


def test_stock_client_receives_and_acks_groups_like_rater_client(make_broker: Any) -> None:
    """Q4: the fallback keeps the interface the rater uses (buffered, loop_read(n), ack_many) on a
    real Mosquitto: a manual-ack session acknowledges a group and the broker redelivers nothing."""
    broker = make_broker()
    got: list[Any] = []
    c = StockClient(CallbackAPIVersion.VERSION2, client_id="q4-stock", protocol=mqtt.MQTTv5, manual_ack=True)
    c.on_message = lambda client, userdata, msg: got.append(msg)
    sub = threading.Event()
    c.on_subscribe = lambda *a: sub.set()
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 600
    _connect(c, broker.host, broker.port, clean_start=False, properties=props)
    c.subscribe("q4/#", qos=1)
    assert sub.wait(10)
    pub = _publisher(broker.host, broker.port, "q4-pub")
    for i in range(20):
        pub.publish("q4/%d" % i, b"x%d" % i, qos=1).wait_for_publish(10)
    _wait_until(lambda: len(got) == 20)
    assert sorted(m.payload for m in got) == sorted(b"x%d" % i for i in range(20))
    assert not c.buffered()
    assert c.ack_many([0] + [m.mid for m in got]) == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
    time.sleep(0.5)
    _stop(c)
    again: list[Any] = []
    c2 = StockClient(CallbackAPIVersion.VERSION2, client_id="q4-stock", protocol=mqtt.MQTTv5, manual_ack=True)
    c2.on_message = lambda client, userdata, msg: again.append(msg)
    up = threading.Event()
    c2.on_connect = lambda *a: up.set()
    _connect(c2, broker.host, broker.port, clean_start=False, properties=props)
    assert up.wait(10)
    time.sleep(1.0)
    _stop(c2, pub)
    assert again == []   # every message of the group was acknowledged: nothing redelivered
