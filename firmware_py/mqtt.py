"""MQTTClient: the device's own MQTT 3.1.1 client over `socket` (TLS through `ssl`), no threads.
TLS: pass ssl=firmware_py.mqtt_tls.tls_context(cafile) (kept apart: a TCP image leaves it out).

A thin shell around the sans-io codec (firmware_py/mqtt_codec.py). The socket is non-blocking
after the (TLS) handshake; poll() waits with select.poll, so one loop serves keepalive, incoming
messages and acks. Buffers are allocated once: a receive chunk (rx_size) and the body (max_packet).

Errors (the three channels of paho-mqtt):
    ValueError           our caller's mistake (bad topic, QoS 2, full inflight window): at once
    MQTTConnectionError  the connection is gone or was refused; .reason (str), .rc (the CONNACK
                         return code 1-5 when refused, else -1). Every OSError of the socket or
                         TLS layer, every MQTTError (malformed bytes from the broker), a timeout
                         or a missing PINGRESP becomes this one exception at the public methods;
                         the socket is then closed.
    anything the message callback raises propagates unchanged (the message is not acknowledged,
    so the broker redelivers it after the next connect with clean_session=False).

Rules:
 C1 publish(qos=1) keeps the encoded PUBLISH until its PUBACK; at most max_inflight wait at once
    (a full window is a ValueError: poll() to drain it). A publish whose send fails stays in
    flight.
 C2 connect() re-sends every unacknowledged QoS 1 PUBLISH, oldest first, with DUP=1 and its
    original packet identifier (§4.4), whatever clean_session: duplicates are the application's
    to drop (the cloud books each (device, seq) once).
 C3 an incoming QoS 1 PUBLISH is acknowledged after the callback returns (at least once).
 C4 keepalive (§3.1.2.10): poll() sends PINGREQ when nothing was sent for `keepalive` seconds and
    declares the connection dead when the PINGRESP is not back within timeout_ms.
 C5 the broker's first packet must be CONNACK (§3.2); client-to-server packet types, QoS 2 and
    a second CONNACK are protocol errors.
 C6 no reconnect policy here: the caller's supervisor reconnects after a backoff.py delay.
 C7 a PUBLISH over max_packet is skipped unbuffered (mqtt_codec R11): not for the callback, but
    counted in .oversized and told to .on_oversized(topic or None, length) if set; QoS 1 is acked
    as in C3 (no redelivery). Any other packet over max_packet is a protocol error (mqtt_codec R1)."""
import errno
import select
import socket
import time

from firmware_py import mqtt_codec as mc
from firmware_py.mqtt_codec import MQTTError

try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[no-redef,misc]
        return x

_OVERSIZED = const(0)  # packet types, as in mqtt_codec (inlined here)
_CONNACK = const(2)
_PUBLISH = const(3)
_PUBACK = const(4)
_SUBACK = const(9)
_UNSUBACK = const(11)
_PINGRESP = const(13)

try:
    from time import ticks_diff, ticks_ms
except ImportError:  # CPython: the same millisecond ticks from the monotonic clock
    _mono = getattr(time, "monotonic_ns")

    def ticks_ms():  # type: ignore[misc,no-redef]
        return _mono() // 1000000

    def ticks_diff(a, b):  # type: ignore[misc,no-redef]
        return a - b


class MQTTConnectionError(Exception):
    """The connection is gone or was refused (see the module docstring)."""

    def __init__(self, reason, rc=-1):
        super().__init__(reason)
        self.reason = reason
        self.rc = rc


def _again(e):
    """True for 'try again later' from a non-blocking socket: EAGAIN, or CPython's
    SSLWantReadError/SSLWantWriteError."""
    return getattr(e, "errno", None) == errno.EAGAIN or type(e).__name__[:7] == "SSLWant"


def _no_io(buf):
    raise OSError(errno.ENOTCONN)


def _edge(fn):
    """Translate OSError and MQTTError into MQTTConnectionError at a public method."""
    def edge(self, *args, **kw):
        self._in_cb = False
        try:
            return fn(self, *args, **kw)
        except (OSError, MQTTError) as e:
            if self._in_cb:
                raise
            if isinstance(e, MQTTError):
                raise self._lost("protocol error from the broker: %s" % e)
            raise self._lost("%s %s" % (type(e).__name__, e))
    return edge


class MQTTClient:
    """One MQTT 3.1.1 session with one broker. ssl: None for plain TCP, or an SSL context (an
    object with wrap_socket(sock, server_hostname=...), e.g. tls_context(cafile)). will: None or
    (topic, payload, qos, retain). callback(topic: str, payload: bytes) gets each message."""

    def __init__(self, client_id, host, port=1883, user=None, password=None, keepalive=60,
                 ssl=None, server_hostname=None, callback=None, will=None, max_packet=2048,
                 rx_size=256, max_inflight=8, timeout_ms=10000):
        if not 0 <= keepalive <= 65535 or timeout_ms <= 0 or max_inflight < 1 or rx_size < 1:
            raise ValueError("bad keepalive, timeout_ms, max_inflight or rx_size")
        self.client_id = client_id
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.keepalive = keepalive
        self.ssl = ssl
        self.server_hostname = server_hostname
        self.callback = callback
        self.will = will
        self.max_inflight = max_inflight
        self.timeout_ms = timeout_ms
        self.inflight = {}  # pid -> encoded PUBLISH awaiting its PUBACK (C1)
        self._order = []    # the same pids, oldest first (dict order is not relied on)
        self.resent = 0     # PUBLISH packets re-sent with DUP by connect() (C2)
        self.oversized = 0  # incoming PUBLISH packets skipped for their size (C7)
        self.on_oversized = None
        self.connected = False
        self._parser = mc.Parser(max_packet)
        self._rx = bytearray(rx_size)
        self._rxmv = memoryview(self._rx)
        self._rxn = self._rxpos = 0
        self._sock = None
        self._poller = select.poll()
        self._rd = _no_io   # the socket's recv_into (CPython) or readinto (MicroPython)
        self._wr = _no_io   # its send (CPython) or write (MicroPython)
        self._pid = 0
        self._in_cb = False
        self._want = self._want_pid = 0
        self._reply = None
        self._last_tx = self._ping_at = ticks_ms()
        self._pinging = False

    # ---- public API -------------------------------------------------------------------------

    @_edge
    def connect(self, clean_session=True):
        """Open the connection, CONNECT, wait for CONNACK and re-send what is in flight (C2).
        Returns the broker's session-present flag; MQTTConnectionError with .rc when refused."""
        pkt = mc.encode_connect(self.client_id, self.keepalive, clean_session, self.user,
                                self.password, self.will)
        self._close()
        self._open()
        self._send(pkt)
        r = self._await(_CONNACK, 0)
        if r[2]:
            raise self._lost("connection refused, CONNACK return code %d" % r[2], r[2])
        self.connected = True
        for pid in self._order:
            dup = bytearray(self.inflight[pid])
            dup[0] |= 0x08
            self.inflight[pid] = bytes(dup)
            self._send(dup)
            self.resent += 1
        return r[1]

    @_edge
    def publish(self, topic, payload, qos=1, retain=False):
        """Send a PUBLISH; returns its packet id (0 for QoS 0). QoS 1 stays in flight (C1)."""
        if qos not in (0, 1):
            raise ValueError("QoS %r not supported (0 or 1)" % (qos,))
        if qos and len(self.inflight) >= self.max_inflight:
            raise ValueError("inflight window full (%d): poll() for PUBACKs" % self.max_inflight)
        if not self.connected:
            raise MQTTConnectionError("not connected")
        if not qos:
            self._send(mc.encode_publish(topic, payload, 0, 0, False, retain))
            return 0
        pid = self._next_pid()
        pkt = mc.encode_publish(topic, payload, 1, pid, False, retain)
        self.inflight[pid] = pkt
        self._order.append(pid)
        self._send(pkt)
        return pid

    @_edge
    def subscribe(self, topic, qos=1):
        """SUBSCRIBE one filter and wait for SUBACK; returns the granted QoS, or 0x80 when the
        broker refused it (e.g. by ACL). Messages arriving meanwhile go to the callback."""
        if not self.connected:
            raise MQTTConnectionError("not connected")
        pid = self._next_pid()
        self._send(mc.encode_subscribe(pid, [(topic, qos)]))
        return self._await(_SUBACK, pid)[2][0]

    @_edge
    def unsubscribe(self, topic):
        """UNSUBSCRIBE one filter and wait for UNSUBACK."""
        if not self.connected:
            raise MQTTConnectionError("not connected")
        pid = self._next_pid()
        self._send(mc.encode_unsubscribe(pid, [topic]))
        self._await(_UNSUBACK, pid)

    @_edge
    def poll(self, timeout_ms=0):
        """Process incoming packets (callback, PUBACK bookkeeping) and keepalive (C4). Waits up
        to timeout_ms for the first packet, then takes whatever else is already there and
        returns the number of packets processed."""
        if not self.connected:
            raise MQTTConnectionError("not connected")
        return self._poll(timeout_ms)

    def disconnect(self):
        """Send DISCONNECT (best effort) and close. In-flight publishes are kept (C2)."""
        if self.connected:
            try:
                self._send(mc.DISCONNECT_PACKET)
            except (OSError, MQTTConnectionError):
                pass
        self._close()

    def close(self):
        """Drop the connection without DISCONNECT (the broker then publishes the will)."""
        self._close()

    # ---- internals ----------------------------------------------------------------------------

    def _lost(self, reason, rc=-1):
        self._close()
        return MQTTConnectionError(reason, rc)

    def _close(self):
        self.connected = False
        s, self._sock = self._sock, None
        self._rd = self._wr = _no_io
        if s is not None:
            try:
                self._poller.unregister(s)
            except (OSError, KeyError, ValueError):
                pass
            try:
                s.close()
            except OSError:
                pass

    def _open(self):
        self._parser.reset()
        self._rxn = self._rxpos = 0
        self._pinging = False
        self._want = 0
        ai = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)[0]
        s = socket.socket(ai[0], ai[1], ai[2])
        self._sock = s
        s.settimeout(max(1, self.timeout_ms // 1000))  # connect and TLS handshake
        s.connect(ai[-1])
        if self.ssl is not None:
            try:
                s = self.ssl.wrap_socket(s, server_hostname=self.server_hostname or self.host)
            except ValueError as e:  # MicroPython's mbedtls: a certificate that does not verify
                raise self._lost("TLS handshake: %s" % str(e).strip())
            self._sock = s
        s.setblocking(False)
        if hasattr(s, "recv_into"):  # CPython socket or SSLSocket
            self._rd = getattr(s, "recv_into")
            self._wr = s.send
        else:  # MicroPython streams
            self._rd = s.readinto
            self._wr = s.write
        self._poller.register(s, select.POLLIN)

    def _send(self, data):
        mv = memoryview(data)
        pos = 0
        t0 = ticks_ms()
        while pos < len(mv):
            try:
                n = self._wr(mv[pos:])
            except OSError as e:
                if not _again(e):
                    raise
                n = None
            if n:
                pos += n
                continue
            if ticks_diff(ticks_ms(), t0) >= self.timeout_ms:
                raise self._lost("send timed out after %d ms" % self.timeout_ms)
            self._poller.modify(self._sock, select.POLLOUT)
            self._poller.poll(10)
            self._poller.modify(self._sock, select.POLLIN)
        self._last_tx = ticks_ms()

    def _recv(self):
        """Read what the socket has into the receive chunk; 0 when nothing is there yet."""
        try:
            n = self._rd(self._rxmv)
        except OSError as e:
            if _again(e):
                return 0
            raise
        if n is None:
            return 0
        if n == 0:
            raise self._lost("connection closed by the broker")
        self._rxn = n
        self._rxpos = 0
        return n

    def _poll(self, timeout_ms):
        t0 = ticks_ms()
        done = 0
        while True:
            while self._rxpos < self._rxn:
                pkt, self._rxpos = self._parser.feed(self._rxmv, self._rxpos, self._rxn)
                if pkt is not None:
                    done += 1
                    self._handle(pkt)
                    if self._reply is not None:  # _await's packet: hand it over first
                        return done
            left = timeout_ms - ticks_diff(ticks_ms(), t0)
            if (left > 0 or not done) and self._recv():
                continue
            if self.connected:
                self._keepalive()
            if done or left <= 0:
                return done
            self._poller.poll(min(left, self._due()))

    def _due(self):
        """Milliseconds until the keepalive needs attention (C4)."""
        now = ticks_ms()
        if self._pinging:
            return max(0, self.timeout_ms - ticks_diff(now, self._ping_at))
        if not self.keepalive:
            return self.timeout_ms
        return max(0, self.keepalive * 1000 - ticks_diff(now, self._last_tx))

    def _keepalive(self):
        now = ticks_ms()
        if self._pinging:
            if ticks_diff(now, self._ping_at) >= self.timeout_ms:
                raise self._lost("no PINGRESP within %d ms" % self.timeout_ms)
        elif self.keepalive and ticks_diff(now, self._last_tx) >= self.keepalive * 1000:
            self._send(mc.PINGREQ_PACKET)
            self._ping_at = self._last_tx
            self._pinging = True

    def _await(self, ptype, pid):
        self._want = ptype
        self._want_pid = pid
        self._reply = None
        t0 = ticks_ms()
        while self._reply is None:
            left = self.timeout_ms - ticks_diff(ticks_ms(), t0)
            if left <= 0:
                raise self._lost("no reply (packet type %d) within %d ms" % (ptype, self.timeout_ms))
            self._poll(left)
        r = self._reply
        self._reply = None
        self._want = 0
        return r

    def _handle(self, pkt):
        t = pkt[0]
        if not self.connected:  # C5: before CONNACK only CONNACK
            if t != _CONNACK or self._want != _CONNACK:
                raise MQTTError(0, "packet type %d before CONNACK" % t)
            self._reply = pkt
            self._want = 0
        elif t == _PUBLISH or t == _OVERSIZED:  # the same places: topic, payload|length, qos, pid
            if pkt[3] == 2:
                raise MQTTError(0, "QoS 2 PUBLISH (never subscribed above QoS 1)")
            if t == _OVERSIZED:
                self.oversized += 1
            fn = self.callback if t == _PUBLISH else self.on_oversized
            if fn is not None:
                self._in_cb = True
                fn(pkt[1], pkt[2])
                self._in_cb = False
            if pkt[4]:  # QoS 1 with a known packet id (C3, C7)
                self._send(mc.encode_puback(pkt[4]))
        elif t == _PUBACK:
            if self.inflight.pop(pkt[1], None) is not None:
                self._order.remove(pkt[1])
        elif t == _PINGRESP:
            self._pinging = False
        elif t == _SUBACK or t == _UNSUBACK:
            if t == self._want and pkt[1] == self._want_pid:
                self._reply = pkt
        else:
            raise MQTTError(0, "unexpected packet type %d from the broker" % t)

    def _next_pid(self):
        pid = self._pid
        while True:
            pid = pid % 65535 + 1
            if pid not in self.inflight:
                self._pid = pid
                return pid
