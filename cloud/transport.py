"""The rater's broker side: how messages come in and go out, behind one small interface.

The rater (cloud/rater.py) books what a transport hands it and gives back what to send and
what to acknowledge; cloud.ingest never sees the broker. Two transports:

 * MqttTransport (mqtt://, mqtts://): paho-mqtt 2 on one MQTT 5 broker or an MQTT 5 cluster,
   the raters sharing `$share/<group>/em/+/+/up/#` (the group named from the rater password) (Mosquitto as shipped; EMQX, HiveMQ and
   VerneMQ speak the same protocol).
 * AmqpTransport (amqp://HOST:PORT[,HOST:PORT...], cloud/amqp.py): a RabbitMQ cluster whose
   MQTT plugin the devices connect to; the raters are competing AMQP 0-9-1 consumers of one
   quorum queue (cloud.rabbitmq.UP_QUEUE).

A transport (rules T1-T5):
 T1. start(retry=True): connect (and subscribe or consume); retries until the broker answers or
     stop(), or with retry=False raises OSError when it does not; `started` is then true.
 T2. receive(limit) -> [ingest.Incoming]: what has arrived, at most about `limit`, waiting a
     short while (at most ~0.2 s) when nothing has; [] after a lost connection, which it has
     already re-established (messages in hand then are dropped unacknowledged: the broker
     delivers them again).
 T3. send(topic, data): queue one downlink message (QoS 1 / persistent) to a device topic.
 T4. ack(msgs): acknowledge messages handed out by receive(), in the order received, after
     their group committed and its downlink was queued with send() (rater rule M2).
 T5. pump(): write what is queued; close(): flush the writes, leave (persistent sessions and
     queues stay for the next start).
"""
from __future__ import annotations

import logging
import select as iosel
import ssl
import time
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgemeter.cloud import ingest
from edgemeter.cloud.mosquitto import rater_subscription
from edgemeter.cloud.mqttclient import client_class

SESSION_EXPIRY_S = 86400
RECEIVE_MAXIMUM = 100    # the broker's Receive Maximum (deploy/mosquitto: max_inflight_messages)


def open_transport(broker_url: str, client_id: str, log: logging.Logger, username: str | None = None,
                   password: str | None = None, ca_file: str | None = None, prefetch: int = 500) -> Any:
    """The transport for broker_url's scheme; ValueError for a URL it cannot use."""
    scheme = broker_url.split("://", 1)[0] if "://" in broker_url else ""
    if scheme in ("amqp", "amqps"):
        from edgemeter.cloud.amqp import AmqpTransport
        return AmqpTransport(broker_url, client_id, log, username, password, ca_file, prefetch)
    return MqttTransport(broker_url, client_id, log, username, password, ca_file)


class MqttTransport:
    """paho-mqtt 2 in its external-loop mode (rater rules M1, M3, M9)."""

    def __init__(self, broker_url: str, client_id: str, log: logging.Logger, username: str | None = None,
                 password: str | None = None, ca_file: str | None = None) -> None:
        u = urlparse(broker_url)
        if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not u.hostname:
            raise ValueError(f"broker URL must be mqtt://HOST:PORT, mqtts://HOST:PORT or "
                             f"amqp://HOST:PORT[,HOST:PORT...], got {broker_url!r}")
        self.log = log
        self.host, self.port = u.hostname, u.port or (8883 if u.scheme in ("mqtts", "ssl") else 1883)
        self.client_id = client_id
        # the shared group is named from the rater password (cloud.mosquitto.share_group): no
        # device can join it and be dealt other tenants' uplink
        self.subscription = rater_subscription(password or u.password)
        c = self.client = client_class(log)(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                                            manual_ack=True)
        # Our own QoS 1 publishes (acks, grants, commands) in flight at once: the shipped broker
        # announces Receive Maximum 100 (max_inflight_messages in deploy/mosquitto) and MQTT 5
        # (3.3.4) forbids exceeding it; paho does not read it from CONNACK, so it is set here.
        # The rest waits in paho's unbounded queue, in order.
        c.max_inflight_messages_set(RECEIVE_MAXIMUM)
        c.max_queued_messages_set(0)
        if username or u.username:
            c.username_pw_set(username or u.username, password or u.password)
        if u.scheme in ("mqtts", "ssl"):
            c.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        self.inbox: list[ingest.Incoming] = []
        self.stopping = False
        self.connected = False
        self.started = False

    # ---- callbacks (run inside client.loop on the rater's one thread) ----
    def _on_connect(self, client, userdata, flags, reason, props):  # type: ignore[no-untyped-def]
        if reason.is_failure:
            self.log.error("connect refused", extra={"fields": {"reason": str(reason)}})
            return
        self.connected = True
        client.subscribe(self.subscription, qos=1)
        self.log.info("connected", extra={"fields": {"broker": f"{self.host}:{self.port}", "client_id": self.client_id,
                                                     "session_present": bool(flags.session_present)}})

    def _on_subscribe(self, client, userdata, mid, reasons, props):  # type: ignore[no-untyped-def]
        ok = all(not r.is_failure for r in reasons)
        (self.log.info if ok else self.log.error)("subscribed" if ok else "subscribe refused", extra={
            "fields": {"filter": self.subscription.split("/", 2)[2], "shared": True, "reasons": [str(r) for r in reasons]}})

    def _on_disconnect(self, client, userdata, flags, reason, props):  # type: ignore[no-untyped-def]
        self.connected = False
        if not self.stopping:
            self.log.warning("disconnected", extra={"fields": {"reason": str(reason)}})

    def _on_message(self, client, userdata, msg):  # type: ignore[no-untyped-def]
        self.inbox.append(ingest.Incoming(msg.topic, msg.payload, time.time_ns() // 1_000_000, msg.mid))

    # ---- T1-T5 ----
    def start(self, retry: bool = True) -> None:
        """Connect (OSError when the broker does not answer; the rater's loop reconnects later)."""
        self.started = True
        self.client.on_socket_register_write = _no_write_wakeup   # writes happen once per turn (pump)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        self.client.connect(self.host, self.port, keepalive=30, clean_start=False, properties=props)

    def receive(self, limit: int) -> list[ingest.Incoming]:
        """Read every packet already waiting (loop_read until nothing new), up to limit."""
        c = self.client
        sock = c.socket()
        if sock is None:
            self._reconnect()
            return []
        try:
            readable, _, _ = iosel.select([sock], [sock] if c.want_write() else [], [],
                                          0.0 if c.buffered() else 0.2)[0:3]
        except (OSError, ValueError):
            readable = []
        if c.buffered():
            readable = [sock]
        rc = mqtt.MQTT_ERR_SUCCESS
        if readable:
            while len(self.inbox) < limit:
                before = len(self.inbox)
                rc = c.loop_read(1)
                if rc != mqtt.MQTT_ERR_SUCCESS or len(self.inbox) == before:
                    break
        if rc != mqtt.MQTT_ERR_SUCCESS and not self.stopping:
            self._reconnect()
            return []
        msgs, self.inbox = self.inbox, []
        return msgs

    def send(self, topic: str, data: bytes) -> None:
        self.client.publish(topic, data, qos=1)

    def ack(self, msgs: list[ingest.Incoming]) -> None:
        self.client.ack_many([m.mid for m in msgs])

    def pump(self) -> None:
        c = self.client
        if c.want_write():
            c.loop_write()
        c.loop_misc()

    def close(self) -> None:
        c = self.client
        for _ in range(100):          # let the last acks and downlink leave
            if not c.want_write():
                break
            c.loop_write()
            time.sleep(0.01)
        c.disconnect()
        c.loop_write()

    def _reconnect(self) -> None:
        self.inbox.clear()   # unacknowledged: the broker delivers them again (rule T2)
        delay = 0.2
        while not self.stopping:
            try:
                self.client.reconnect()
                return
            except OSError as e:
                self.log.warning("reconnect failed", extra={"fields": {"error": str(e), "retry_s": delay}})
                time.sleep(delay)
                delay = min(delay * 2, 5.0)


def _no_write_wakeup(client: Any, userdata: Any, sock: Any) -> None:
    """Registered as on_socket_register_write so that paho queues outgoing packets instead of
    writing each at once; MqttTransport.pump writes them all once per turn (paho's external loop)."""
