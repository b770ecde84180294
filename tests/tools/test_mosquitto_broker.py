"""tools/broker.py and deploy/mosquitto/: the shipped configuration, rendered, run by a real
Mosquitto, enforces the roles of docs/protocol.md, Topics (devices, raters, admin) and reloads users live."""
from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

import mqttprobe
from firmware_py import mqtt_codec as mc
from edgemeter.tools import broker as tb

SITE_KEYS = {"password_file", "acl_file", "persistence_location", "user", "certfile", "keyfile",
             "log_dest", "listener", "allow_anonymous"}


def directives(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def test_rendered_config_keeps_every_shipped_directive(tmp_path: Path) -> None:
    conf = tb.render_config(tb.TEMPLATE, port=1, tls_port=2, workdir=tmp_path, auth=True)
    got = directives(conf)
    for ln in directives(tb.TEMPLATE.read_text()):
        key = ln.split(" ", 1)[0]
        if key not in SITE_KEYS:
            assert ln in got, ln
        else:
            assert any(g.startswith(key + " ") for g in got), key
    assert f"password_file {tmp_path / 'passwd'}" in got
    assert "listener 2 127.0.0.1" in got and "listener 1 127.0.0.1" in got
    assert got.index("listener 2 127.0.0.1") < got.index(f"certfile {tmp_path / 'server.crt'}")
    anon = directives(tb.render_config(tb.TEMPLATE, port=1, tls_port=None, workdir=tmp_path,
                                       auth=False))
    assert "allow_anonymous true" in anon
    assert not [d for d in anon if d.startswith(("password_file", "acl_file", "certfile"))]


def test_acl_is_the_shipped_template_with_two_device_patterns(tmp_path: Path) -> None:
    acl = tb.render_acl()
    assert acl == tb.ACL_TEMPLATE.read_text()
    lines = directives(acl)
    assert [ln for ln in lines if ln.startswith("pattern ")] == list(tb.DEVICE_PATTERNS)
    assert [ln for ln in lines if ln.startswith("user ")] == ["user rater", "user admin"]
    assert tb.device_user(7, 1042) == "7/1042" and tb.device_user(8, 5) == "8/5"
    for bad in ((-1, 5), (7, -2), (7, True), ("7", 5)):
        with pytest.raises(ValueError):
            tb.device_user(*bad)   # type: ignore[arg-type]
    stale = tmp_path / "acl.example"
    stale.write_text("user rater\ntopic read em/+/+/up/#\n")
    with pytest.raises(tb.BrokerError, match="pattern write"):
        tb.render_acl(stale)


def test_plain_broker_round_trip(mosquitto: tb.Broker) -> None:
    a = mqttprobe.Probe(mosquitto)
    b = mqttprobe.Probe(mosquitto)
    try:
        assert a.subscribe("t/roundtrip/#") == [1]
        b.publish("t/roundtrip/x", b"\x00\x01")
        m = a.get()
        assert (m.topic, m.payload) == ("t/roundtrip/x", b"\x00\x01")
    finally:
        a.close()
        b.close()


def test_roles_and_acl(secure_broker: tb.Broker) -> None:
    b = secure_broker
    dev, _ = b.add_device(7, 9001)
    other, _ = b.add_device(7, 9002)
    rater = mqttprobe.Probe(b, "rater", v5=True)
    admin = mqttprobe.Probe(b, "admin")
    d1 = mqttprobe.Probe(b, dev, client_id=dev, tls=True)
    d2 = mqttprobe.Probe(b, other, client_id=other)
    try:
        rater.subscribe("$share/raters/em/+/+/up/#")
        admin.subscribe("em/#")
        d2.subscribe("em/7/9001/down/#")  # someone else's downlink: never delivered
        d1.subscribe("em/7/9001/down/#")
        d1.publish("em/7/9002/up/usage", b"forged")   # foreign uplink: dropped by the ACL
        d1.publish("em/7/9001/up/usage", b"mine")
        m = rater.get()
        assert (m.topic, m.payload) == ("em/7/9001/up/usage", b"mine")
        assert [x.payload for x in admin.drain()] == [b"mine"]
        rater.publish("em/7/9001/down/ack", b"ack")
        assert d1.get().payload == b"ack"
        assert d2.drain() == [] and rater.drain() == []
    finally:
        for p in (rater, admin, d1, d2):
            p.close()


def test_refusals(secure_broker: tb.Broker) -> None:
    b = secure_broker
    user, pw = b.add_device(7, 9003)
    for creds in ((None, None), (user, "wrong"), ("nobody", "x")):
        with socket.create_connection((b.host, b.port), timeout=5) as s:
            s.sendall(mc.encode_connect("x1", 30, True, creds[0], creds[1]))
            pkt = mc.decode_packet(s.recv(4))
            assert pkt[0] == mc.CONNACK and pkt[2] == 5, (creds, pkt)  # not authorized
    # each listener has its own users: a device's valid credentials open only the device
    # listener, so on the private one it can take no client id (a rater's, another device's)
    _connect_as(b, user, pw)
    for cid in (user, "rater-1", "7/9004"):
        with pytest.raises(ConnectionRefusedError):
            _connect_as(b, user, pw, port=b.port, cid=cid)
    with pytest.raises(ConnectionRefusedError):
        _connect_as(b, "rater", b.users["rater"])     # nor a rater's the device listener
    _connect_as(b, "rater", b.users["rater"], port=b.port)


def test_device_added_and_removed_while_running(secure_broker: tb.Broker) -> None:
    b = secure_broker
    admin = mqttprobe.Probe(b, "admin")
    acl = (b.workdir / "acl").read_text()
    try:
        admin.subscribe("em/3/#")
        user, pw = b.add_device(3, 9100)   # passwd rewritten, SIGHUP, reloaded; ACL unchanged
        assert user == "3/9100" and (b.workdir / "acl").read_text() == acl
        d = mqttprobe.Probe(b, user, client_id=user)
        d.publish("em/3/9100/up/usage", b"new")
        assert admin.get().payload == b"new"
        d.close()
        with socket.create_connection((b.host, b.device_port), timeout=5) as s:
            s.sendall(mc.encode_connect(user, 30, True, user, pw))
            assert mc.decode_packet(s.recv(4)) == (mc.CONNACK, False, 0)
            b.remove_device(9100)
            assert s.recv(4) == b""    # observed: the reload drops a connected user it no longer has
        with pytest.raises(ConnectionRefusedError):
            _connect_as(b, user, pw)
    finally:
        admin.close()


def _connect_as(b: tb.Broker, user: str, pw: str, port: int = 0, cid: str = "") -> None:
    with socket.create_connection((b.host, port or b.device_port), timeout=5) as s:
        s.sendall(mc.encode_connect(cid or user, 30, True, user, pw))
        pkt = mc.decode_packet(s.recv(4))
        if pkt[2] != 0:
            raise ConnectionRefusedError(pkt[2])


def test_tls_listener_needs_the_ca(secure_broker: tb.Broker, tmp_path: Path) -> None:
    import ssl
    ctx = ssl.create_default_context(cafile=str(secure_broker.ca_file))
    with socket.create_connection((secure_broker.host, secure_broker.tls_port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            assert s.version() in ("TLSv1.2", "TLSv1.3")
    other = tb.make_certs(tmp_path)  # a different CA: the broker's certificate must not verify
    ctx2 = ssl.create_default_context(cafile=str(other))
    with socket.create_connection((secure_broker.host, secure_broker.tls_port), timeout=5) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            ctx2.wrap_socket(raw, server_hostname="localhost")


def test_restart_keeps_port_and_persistent_sessions(make_broker) -> None:
    b = make_broker()
    port = b.port
    sub = mqttprobe.Probe(b, client_id="keeper", clean=False)
    sub.subscribe("keep/#")
    sub.close()
    pub = mqttprobe.Probe(b)
    pub.publish("keep/1", b"queued")
    pub.close()
    b.restart()                        # SIGTERM saves the queue to the persistence file
    assert b.port == port
    sub = mqttprobe.Probe(b, client_id="keeper", clean=False)
    try:
        assert sub.get().payload == b"queued"
    finally:
        sub.close()
    assert "Saving in-memory database" in b.log_text()


def test_pause_stalls_clients_and_resume_answers(make_broker) -> None:
    b = make_broker()
    b.pause()
    try:
        with socket.create_connection((b.host, b.port), timeout=5) as s:  # the kernel accepts
            s.sendall(mc.encode_connect("stalled", 30))
            s.settimeout(0.5)
            with pytest.raises(socket.timeout):
                s.recv(4)
            b.resume()
            s.settimeout(5)
            assert mc.decode_packet(s.recv(4)) == (mc.CONNACK, False, 0)
    finally:
        b.resume()


def test_kill_and_start_again(make_broker) -> None:
    b = make_broker()
    b.kill()
    assert not b.running
    b.start()
    p = mqttprobe.Probe(b)
    p.close()
