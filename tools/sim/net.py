"""Many device MQTT connections in one select loop, over the firmware's sans-io MQTT 3.1.1 codec
(firmware_py.mqtt_codec): each simulated device has its own TCP connection, client id and
credentials ("<ws>/<dev>" and its own password), a persistent session (clean_session false) and a
QoS 1 subscription to em/<ws>/<dev>/down/#, exactly what the firmware and the agent do.

A Link is one device's connection; Net owns the selector. Sans-io parsing keeps a connection
at a few kilobytes, so 10,000 of them fit one process on a small machine (paho's Client holds
threads, locks and buffers per connection). What the device publishes while its link is down
is dropped, as agent.sync rule Y5 says: the meter resends unacked batches on connect. On a
clustered broker a link that loses its node connects to the next one (Net.ports), as a device
configured with several broker addresses, or behind a load balancer, does.
"""
from __future__ import annotations

import errno
import selectors
import socket
import time
from typing import Callable

from firmware_py import mqtt_codec as C

DOWN, TCP, CONNACK, UP = 0, 1, 2, 3
RX = 65536


class Link:
    def __init__(self, net: "Net", ws: int, dev: int, user: str, password: str,
                 on_up: Callable[[], None], on_msg: Callable[[str, bytes], None]) -> None:
        self.net, self.ws, self.dev = net, ws, dev
        self.user, self.password = user, password
        self.base = "em/%d/%d/" % (ws, dev)
        self.on_up, self.on_msg = on_up, on_msg
        self.state = DOWN
        self.sock: socket.socket | None = None
        self.parser = C.Parser(4096)   # a pushed price book is ~1.3 KB
        self.wbuf = bytearray()
        self.pid = 0
        self.last_tx = 0.0
        self.connects = 0
        self.refused = 0
        self.drops = 0
        self.retry_at = 0.0      # monotonic time of the next connect attempt
        self.ep = dev             # which of the broker's nodes (Net.ports) it connects to
        self.blocked_until = 0.0  # a network partition: no connection before this

    # ---------------------------------------------------------------- connection
    def connect(self) -> None:
        if self.state != DOWN:
            return
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ports = self.net.ports
        rc = s.connect_ex((self.net.host, ports[self.ep % len(ports)]))
        if rc not in (0, errno.EINPROGRESS):
            s.close()
            self._failed()
            return
        self.sock = s
        self.state = TCP
        self.parser.reset()
        self.wbuf = bytearray()
        self.net.sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, self)

    def _failed(self) -> None:
        """A connect failed or the connection broke: next time try the next broker node."""
        self.ep += 1
        self.retry_at = time.monotonic() + self.net.backoff()

    def close(self, reconnect_after: float | None = None) -> None:
        """Drop the connection (a lost link); reconnect after the given delay or a backoff."""
        s = self.sock
        if s is not None:
            try:
                self.net.sel.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()
        self.sock = None
        if self.state == UP:
            self.drops += 1
        self.state = DOWN
        self.wbuf = bytearray()
        if reconnect_after is None:
            self._failed()
        else:
            self.retry_at = time.monotonic() + reconnect_after

    def _send(self, data: bytes) -> None:
        self.wbuf += data
        self.last_tx = time.monotonic()

    def publish(self, suffix: str, payload: bytes) -> bool:
        if self.state != UP:
            return False
        self.pid = self.pid % 65535 + 1
        self._send(C.encode_publish(self.base + suffix, payload, 1, self.pid))
        return True

    def publish_raw(self, topic: str, payload: bytes) -> bool:
        """Publish bytes verbatim on a topic (duplicate deliveries)."""
        if self.state != UP:
            return False
        self.pid = self.pid % 65535 + 1
        self._send(C.encode_publish(topic, payload, 1, self.pid))
        return True

    # ---------------------------------------------------------------- events
    def writable(self) -> None:
        s = self.sock
        if s is None:
            return
        if self.state == TCP:
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.close()
                return
            self.state = CONNACK
            self._send(C.encode_connect(self.user, self.net.keepalive, False, self.user, self.password))
        self.flush()

    def flush(self) -> None:
        s = self.sock
        if s is None or not self.wbuf or self.state == TCP:
            return
        try:
            n = s.send(self.wbuf)
        except BlockingIOError:
            n = 0
        except OSError:
            self.close()
            return
        del self.wbuf[:n]
        self.net.want_write(self, bool(self.wbuf))

    def readable(self) -> None:
        s = self.sock
        if s is None:
            return
        try:
            data = s.recv(RX)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()
            return
        pos, end = 0, len(data)
        try:
            while pos < end:
                pkt, pos = self.parser.feed(data, pos, end)
                if pkt is not None:
                    self._packet(pkt)
                    if self.sock is None:
                        return
        except C.MQTTError:
            self.close()
            return
        self.flush()

    def _packet(self, pkt: tuple) -> None:
        t = pkt[0]
        if t == C.PUBLISH:
            topic, payload, qos, pid = pkt[1], bytes(pkt[2]), pkt[3], pkt[4]
            if qos:
                self._send(C.encode_puback(pid))
            if topic.startswith(self.base):
                self.on_msg(topic[len(self.base):], payload)
        elif t == C.CONNACK:
            if pkt[2] != 0:
                self.refused += 1
                self.close(self.net.backoff() + 5.0)
                return
            self.state = UP
            self.connects += 1
            self.pid = self.pid % 65535 + 1
            self._send(C.encode_subscribe(self.pid, [(self.base + "down/#", 1)]))
            self.on_up()


class Net:
    """The selector and its links; poll() does one round of I/O and due reconnects."""

    def __init__(self, host: str, port: int | list[int], rng, keepalive: int = 60) -> None:
        """port: the broker's MQTT port, or every node's of a cluster (each link starts on node
        dev % len(ports) and moves to the next one whenever its connection fails or breaks)."""
        self.host, self.keepalive = host, keepalive
        self.ports = list(port) if isinstance(port, (list, tuple)) else [port]
        self.port = self.ports[0]
        self.sel = selectors.DefaultSelector()
        self.links: list[Link] = []
        self.rng = rng
        self.connect_budget = 200   # new TCP connections per poll (a connect storm is gentle)

    def backoff(self) -> float:
        return 0.2 + self.rng.random() * 1.5

    def add(self, link: Link) -> Link:
        self.links.append(link)
        return link

    def want_write(self, link: Link, on: bool) -> None:
        if link.sock is None:
            return
        ev = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
        try:
            if self.sel.get_key(link.sock).events != ev:
                self.sel.modify(link.sock, ev, link)
        except (KeyError, ValueError):
            pass

    def scan(self) -> None:
        """Due reconnects, unsent bytes and keepalive pings (call a few times a second)."""
        now = time.monotonic()
        budget = self.connect_budget
        for ln in self.links:
            if ln.state == DOWN and now >= ln.retry_at and now >= ln.blocked_until and budget:
                ln.connect()
                budget -= 1
            elif ln.wbuf and ln.state != TCP:
                ln.flush()
            elif ln.state == UP and now - ln.last_tx > self.keepalive / 2:
                ln._send(b"\xc0\x00")  # PINGREQ
                ln.flush()

    def poll(self, timeout: float) -> None:
        """One round of socket I/O."""
        for key, ev in self.sel.select(timeout):
            ln = key.data
            if ev & selectors.EVENT_READ:
                ln.readable()
            if ev & selectors.EVENT_WRITE and ln.sock is not None:
                ln.writable()

    def up(self) -> int:
        return sum(1 for ln in self.links if ln.state == UP)

    def close(self) -> None:
        for ln in self.links:
            if ln.sock is not None:
                ln.state = DOWN      # the end of the run, not a dropped link
                ln.close(1e9)
        self.sel.close()
