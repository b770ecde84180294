"""firmware_py.mqtt.MQTTClient's rules C1-C5 on CPython, against the real Mosquitto of the
`mosquitto` fixture, and against a scripted TCP peer for what Mosquitto never does (malformed
packets, silence after CONNECT)."""
from __future__ import annotations

import socket
import threading

import pytest

import mqttprobe
from firmware_py import mqtt_codec as mc
from firmware_py.mqtt import MQTTClient, MQTTConnectionError
from edgemeter.tools.broker import Broker


def client(b: Broker, cid: str, **kw) -> MQTTClient:
    return MQTTClient(cid, b.host, b.port, timeout_ms=3000, **kw)


def test_caller_mistakes_are_value_errors_and_need_no_connection(mosquitto: Broker) -> None:
    c = client(mosquitto, "rules-1", max_inflight=2)
    with pytest.raises(MQTTConnectionError):
        c.publish("t/x", b"x")                       # not connected yet
    c.connect()
    try:
        with pytest.raises(ValueError):
            c.publish("t/+", b"x")                   # wildcard in a topic name
        with pytest.raises(ValueError):
            c.publish("t/x", b"x", qos=2)
        with pytest.raises(ValueError):
            c.subscribe("t/#/x")
        mosquitto.pause()                            # no PUBACKs: fill the window
        try:
            c.publish("t/x", b"1")
            c.publish("t/x", b"2")
            with pytest.raises(ValueError, match="inflight window full"):
                c.publish("t/x", b"3")
        finally:
            mosquitto.resume()
        for _ in range(20):
            if not c.inflight:
                break
            c.poll(100)
        assert c.inflight == {} and c.connected
    finally:
        c.disconnect()


def test_callback_exception_propagates_and_the_message_comes_back(mosquitto: Broker) -> None:
    seen: list[bytes] = []

    def fail_once(topic: str, payload: bytes) -> None:
        seen.append(payload)
        if len(seen) == 1:
            raise OSError(28, "journal full")        # the app's own OSError, not the socket's

    c = client(mosquitto, "rules-cb", callback=fail_once)
    c.connect(clean_session=False)
    assert c.subscribe("rules/cb/#", 1) == 1
    p = mqttprobe.Probe(mosquitto)
    try:
        p.publish("rules/cb/1", b"first")
        with pytest.raises(OSError, match="journal full"):
            for _ in range(50):
                c.poll(100)
        assert c.connected                           # the connection is not blamed
        c.close()                                    # unacked -> redelivered on reconnect
        assert c.connect(clean_session=False) is True
        for _ in range(50):
            if len(seen) == 2:
                break
            c.poll(100)
        assert seen == [b"first", b"first"]
    finally:
        p.close()
        c.disconnect()


def test_will_is_published_when_the_device_vanishes(mosquitto: Broker) -> None:
    p = mqttprobe.Probe(mosquitto)
    p.subscribe("rules/will/#")
    c = client(mosquitto, "rules-will", will=("rules/will/d1", b"offline", 1, False))
    c.connect()
    c.close()                                        # no DISCONNECT: the broker sends the will
    try:
        m = p.get()
        assert (m.topic, m.payload) == ("rules/will/d1", b"offline")
    finally:
        p.close()


def test_second_connect_replaces_the_connection(mosquitto: Broker) -> None:
    c = client(mosquitto, "rules-re")
    assert c.connect() is False
    assert c.connect() is False
    c.publish("rules/re", b"x")
    for _ in range(20):
        if not c.inflight:
            break
        c.poll(100)
    assert not c.inflight
    c.disconnect()
    assert not c.connected


class Peer:
    """A TCP peer on 127.0.0.1 that reads the CONNECT and answers with scripted bytes (None:
    stays silent; b"": hangs up)."""

    def __init__(self, reply: bytes | None) -> None:
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(1)
        self.port = self.srv.getsockname()[1]
        self.reply = reply
        self.conn: socket.socket | None = None
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.conn, _ = self.srv.accept()
        self.conn.recv(1024)
        if self.reply:
            self.conn.sendall(self.reply)
        elif self.reply == b"":
            self.conn.close()
            self.conn = None

    def close(self) -> None:
        if self.conn:
            self.conn.close()
        self.srv.close()


@pytest.mark.parametrize("reply,reason", [
    (b"\x20\x02\x02\x00", "protocol error"),          # CONNACK reserved flag
    (b"\x30\x05\x00\x03a/b", "protocol error"),       # PUBLISH before CONNACK (C5)
    (b"\x20\x02\x00\x00\x82\x06\x00\x01\x00\x01a\x01", "protocol error"),  # SUBSCRIBE to us
    (b"\x20\x02\x00\x03", "refused"),                 # server unavailable
    (None, "no reply"),                               # silence
    (b"", "closed by the broker"),
])
def test_broken_peers_end_in_one_connection_error(reply: bytes | None, reason: str) -> None:
    peer = Peer(reply)
    c = MQTTClient("peer", "127.0.0.1", peer.port, timeout_ms=500)
    try:
        with pytest.raises(MQTTConnectionError, match=reason) as e:
            c.connect()
            c.poll(1000)                             # the SUBSCRIBE arrives after CONNACK
        assert not c.connected
        if reason == "refused":
            assert e.value.rc == 3
    finally:
        c.close()
        peer.close()


def test_unreachable_broker_is_a_connection_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]                    # bound, not listening: refused
    c = MQTTClient("nobody", "127.0.0.1", port, timeout_ms=500)
    with pytest.raises(MQTTConnectionError, match="ConnectionRefusedError|ECONNREFUSED|111"):
        c.connect()
