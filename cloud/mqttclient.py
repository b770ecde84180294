"""The rater's MQTT client: paho-mqtt 2.x's Client with a cheaper receive path.

A paho Client spends most of its receive time outside the protocol itself; profiling the
rater draining a queue (`python -m edgemeter.tools.bench_ingest`, breakdown rows) showed, per PUBLISH:
three or more recv() calls (the command byte, each remaining-length byte, then the rest), and
a new MQTT 5 `Properties` object whose constructor rebuilds paho's property tables (27 list
lookups, two dict literals) and whose unpack() clears every property name by string
replacement, even when the packet carries no property at all. Together about half of the
rater's MQTT CPU. RaterClient changes only those two things:

 Q1. Reads: the socket is read in 64 KiB chunks and paho's packet reader is served from that
     buffer (Client._sock_recv, paho's one read hook). The buffer belongs to one socket and is
     dropped with it; loop_read() goes on until it is empty (so paho's own loop_forever /
     loop_start, which select() on the socket, never leave packets waiting in it), and
     `buffered()` tells an external loop the same.
 Q2. PUBLISH without properties (QoS 0 or 1, MQTT 5, a non-empty topic; what devices send):
     parsed here into the same MQTTMessage paho builds (topic, payload, mid, qos, dup, retain,
     timestamp), its `properties` a shared empty Properties(PUBLISH) that must not be
     modified; then paho's own dispatch (_handle_on_message) and QoS 1 acknowledgement
     (automatic or manual_ack) run unchanged. Anything else (properties present, QoS 2, a
     topic alias, a short or malformed packet, MQTT 3, a logger attached) goes to paho's own
     Client._handle_publish, which decodes (or rejects) it as always.
 Q3. ack_many(mids): the manual acknowledgements of a whole group as one queued write of
     their PUBACKs (the same 4 bytes each that paho's ack() queues one by one, in order); mid 0,
     which only a QoS 0 message has, is skipped. With a logger attached, paho's ack() per mid.
Everything else (sessions, keepalive, TLS, reconnects, publishing) is paho's.
tests/cloud/test_mqttclient.py checks both paths against a stock Client on a real Mosquitto.

 Q4. Q1-Q3 lean on paho's private names (HOOKS). They are checked once, when the rater picks its
     client class (client_class()): where one is missing or its parameters changed (a paho
     release outside the range CI tests: pyproject pins it, tools/dev.sh runs these tests on the
     lowest and highest allowed versions), the rater logs a warning naming them and uses
     StockClient, paho's public paths only (same interface: buffered() is always False, ack_many
     acknowledges one message at a time); EDGEMETER_RATER_CLIENT=stock asks for it outright.
"""
from __future__ import annotations

import inspect
import logging
import os
import struct
from collections.abc import Sequence
from importlib.metadata import version
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

READ_CHUNK = 65536
NO_PROPERTIES = Properties(PacketTypes.PUBLISH)   # shared by every Q2 message: read-only


class RaterClient(mqtt.Client):
    """paho's Client with rules Q1-Q3."""

    _rsock: Any = None
    _rbuf = b""
    _rpos = 0

    def _logging(self) -> bool:
        """A logger or on_log is attached: paho's own paths then, so that its log stays whole."""
        return self._logger is not None or self._on_log is not None

    # ---- Q1
    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rsock is not self._sock:          # a new (or no) socket: nothing is buffered
            self._rsock, self._rbuf, self._rpos = self._sock, b"", 0
        pos = self._rpos
        if pos >= len(self._rbuf):
            data = super()._sock_recv(READ_CHUNK)  # raises as paho expects (BlockingIOError, ...)
            if len(data) <= bufsize:
                self._rbuf, self._rpos = b"", 0
                return data
            self._rbuf, pos = data, 0
        end = pos + bufsize
        self._rpos = end
        return self._rbuf[pos:end]

    def buffered(self) -> bool:
        """True when bytes already read from the current socket wait in the buffer."""
        return self._rsock is self._sock and self._rpos < len(self._rbuf)

    def loop_read(self, max_packets: int = 0) -> mqtt.MQTTErrorCode:
        """paho's loop_read, repeated while bytes wait in the buffer (the socket may have
        nothing more to say about them, so a select() on it, paho's own loop or a caller's,
        would not come back for them), at most max_packets times when that is positive (an
        external loop's batch bound; paho's own loop passes nothing: until the buffer is empty)."""
        rc = super().loop_read()
        k = 1
        while rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS and self.buffered() and (max_packets <= 0 or k < max_packets):
            rc = super().loop_read()
            k += 1
        return rc

    # ---- Q2
    def _handle_publish(self) -> mqtt.MQTTErrorCode:
        header = self._in_packet["command"]
        pkt = self._in_packet["packet"]
        qos = (header & 0x06) >> 1
        n = len(pkt)
        if qos > 1 or self._protocol != mqtt.MQTTv5 or n < 3 or self._logging():
            return super()._handle_publish()
        tlen = (pkt[0] << 8) | pkt[1]
        pos = 2 + tlen
        mid = 0
        if qos:
            if pos + 2 > n:
                return super()._handle_publish()
            mid = (pkt[pos] << 8) | pkt[pos + 1]
            pos += 2
        if tlen == 0 or pos >= n or pkt[pos] != 0:   # alias, properties or a short packet: paho's path
            return super()._handle_publish()
        message = mqtt.MQTTMessage(mid=mid, topic=bytes(pkt[2:2 + tlen]))
        message.dup = (header & 0x08) != 0
        message.qos = qos
        message.retain = (header & 0x01) != 0
        message.properties = NO_PROPERTIES
        message.payload = bytes(pkt[pos + 1:])
        message.timestamp = mqtt.time_func()
        self._handle_on_message(message)
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    # ---- Q3
    def ack_many(self, mids: Sequence[int]) -> mqtt.MQTTErrorCode:
        """Acknowledge the QoS 1 messages `mids` (manual_ack), in order, in one write; like
        paho's ack(), nothing without manual_ack (paho acknowledged them already)."""
        ids = [m for m in mids if m]
        if not ids or not self._manual_ack:
            return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        if self._logging():
            for m in ids:
                self.ack(m, 1)
            return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        packet = b"".join([_PUBACK.pack(mqtt.PUBACK, 2, m) for m in ids])
        return self._packet_queue(mqtt.PUBACK, packet, 0, 1)


_PUBACK = struct.Struct("!BBH")


class StockClient(mqtt.Client):
    """paho's Client through its public API only, with RaterClient's interface (rule Q4)."""

    def buffered(self) -> bool:
        return False

    def loop_read(self, max_packets: int = 0) -> mqtt.MQTTErrorCode:
        return super().loop_read()

    def ack_many(self, mids: Sequence[int]) -> mqtt.MQTTErrorCode:
        """paho's ack() for each QoS 1 message of mids, in order (nothing without manual_ack)."""
        if self._manual_ack:
            for m in mids:
                if m:
                    self.ack(m, 1)
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS


# Rule Q4: the private methods RaterClient overrides or calls, with the parameters it passes,
# and the private attributes it reads on a connected-or-not Client.
HOOKS = {"_sock_recv": ("bufsize",), "_handle_publish": (), "_handle_on_message": ("message",),
         "_send_puback": ("mid",), "_packet_queue": ("command", "packet", "mid", "qos")}
ATTRIBUTES = ("_sock", "_in_packet", "_protocol", "_manual_ack", "_logger", "_on_log")


def missing_hooks(base: type = mqtt.Client) -> list[str]:
    """The names of HOOKS and ATTRIBUTES that `base` lacks or whose parameters differ (rule Q4)."""
    missing = []
    for name, params in HOOKS.items():
        fn = getattr(base, name, None)
        if not callable(fn):
            missing.append(name)
            continue
        try:
            have = tuple(inspect.signature(fn).parameters)[1:1 + len(params)]
        except (TypeError, ValueError):
            have = ()
        if have != params:
            missing.append("%s(%s)" % (name, ", ".join(params)))
    try:
        probe = base(mqtt.CallbackAPIVersion.VERSION2, client_id="edgemeter-probe", protocol=mqtt.MQTTv5)
    except Exception as e:  # a constructor that changed is itself a reason not to patch it
        return missing + ["%s() (%s)" % (base.__name__, e)]
    missing += [a for a in ATTRIBUTES if not hasattr(probe, a)]
    return missing


def client_class(log: logging.Logger | None = None, base: type = mqtt.Client) -> type:
    """RaterClient when paho has every hook it needs, else StockClient with a warning (rule Q4)."""
    log = log or logging.getLogger("edgemeter.rater")
    if os.environ.get("EDGEMETER_RATER_CLIENT", "") == "stock":
        return StockClient
    missing = missing_hooks(base)
    if missing:
        log.warning("paho-mqtt %s lacks what the rater's fast receive path needs (%s): using paho's "
                    "public paths (slower, same guarantees)", version("paho-mqtt"), ", ".join(missing))
        return StockClient
    return RaterClient
