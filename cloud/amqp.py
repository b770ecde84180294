"""The rater on a RabbitMQ cluster: AMQP 0-9-1 (pika) behind the transport interface of
cloud.transport (rules T1-T5 there).

    edgemeter rater --broker amqp://127.0.0.1:5672,127.0.0.1:5673,127.0.0.1:5674 --db URL \\
                    --username rater --password ...

Rules:
 A1. Devices publish over MQTT to any node; the plugin routes em/<ws>/<dev>/up/<kind> into
     amq.topic as em.<ws>.<dev>.up.<kind>. Every rater declares (idempotently) the quorum queue
     cloud.rabbitmq.UP_QUEUE, bound with em.*.*.up.#, and consumes it with manual
     acknowledgements and a prefetch of --group messages: the raters are competing consumers
     of one replicated queue, as they are members of one $share group on an MQTT 5 broker.
 A2. Acknowledgement after the commit (rater rule M2): one basic.ack with multiple=true for
     the last delivery tag of a committed group; delivery tags of a connection that has since
     been lost are never acknowledged (the broker has already requeued those messages).
 A3. Downlink: basic.publish to amq.topic with the routing key of the device's MQTT topic,
     persistent (delivery mode 2), which the MQTT plugin delivers at QoS 1 to the device's
     persistent session (a quorum queue bound to em.<ws>.<dev>.down.#). No x-mqtt-publish-qos
     header: the 3.10 plugin reads it only as an AMQP byte, which pika cannot write (it writes
     a signed int, and the plugin's connection process crashed on it).
 A4. Failover: the URL lists every node; a lost connection (a node killed, a network fault)
     is re-established with the next node in the list, with backoff, and nothing received on
     the old one is acknowledged (the queue redelivers it: ingest books a (device, seq) once).
 A5. Downlink that a lost connection did not take (the group was committed: its grants and
     acks exist nowhere else) is kept, at most UNSENT_MAX messages, and published on the next
     connection. A device takes a repeated ack, grant or command as a duplicate (cumulative
     acks, grant and command counters), and a redelivered request is a replay that gets no
     second grant, so without this a device whose grant was lost waits for its next retry.
"""
from __future__ import annotations

import logging
import ssl
import time
from typing import Any
from urllib.parse import unquote, urlparse

import pika
import pika.exceptions

from edgemeter.cloud import ingest, rabbitmq

UNSENT_MAX = 100_000
# What a lost node or connection raises out of pika's blocking API.
LOST = (pika.exceptions.AMQPError, OSError)


def parse_url(url: str) -> tuple[list[tuple[str, int]], str | None, str | None, bool]:
    """amqp[s]://[user:pass@]HOST:PORT[,HOST:PORT...] -> ([(host, port)], user, password, tls)."""
    u = urlparse(url)
    if u.scheme not in ("amqp", "amqps") or not u.netloc:
        raise ValueError(f"broker URL must be amqp://HOST:PORT[,HOST:PORT...], got {url!r}")
    creds, _, hosts = u.netloc.rpartition("@")
    user, _, pw = creds.partition(":")
    nodes = []
    for part in hosts.split(","):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"broker URL: {part!r} is not HOST:PORT")
        nodes.append((host, int(port)))
    return nodes, unquote(user) or None, unquote(pw) or None, u.scheme == "amqps"


class AmqpTransport:
    """Competing consumer of the raters' quorum queue (rules A1-A4)."""

    def __init__(self, broker_url: str, client_id: str, log: logging.Logger, username: str | None = None,
                 password: str | None = None, ca_file: str | None = None, prefetch: int = 500) -> None:
        self.nodes, user, pw, tls = parse_url(broker_url)
        self.log = log
        self.client_id = client_id
        self.prefetch = prefetch
        creds = pika.PlainCredentials(username or user or "guest", password or pw or "guest")
        ssl_opts = pika.SSLOptions(ssl.create_default_context(cafile=ca_file)) if tls else None
        self.params = [pika.ConnectionParameters(host=h, port=p, credentials=creds, heartbeat=10,
                                                 blocked_connection_timeout=30, connection_attempts=1,
                                                 ssl_options=ssl_opts, client_properties={"connection_name": client_id})
                       for h, p in self.nodes]
        self.next_node = 0
        self.conn: Any = None
        self.chan: Any = None
        self.inbox: list[ingest.Incoming] = []
        self.stopping = False
        self.broken = False     # a send or ack failed: reconnect at the next receive (A4)
        self.unsent: list[tuple[str, bytes]] = []    # rule A5
        self.props = pika.BasicProperties(delivery_mode=2)

    def _on_message(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        self.inbox.append(ingest.Incoming(rabbitmq.mqtt_topic(method.routing_key), body,
                                          time.time_ns() // 1_000_000, method.delivery_tag))

    def start(self, retry: bool = True) -> None:
        """Connect to a node (A4) and consume the queue (A1); retries until one answers, or
        with retry=False raises OSError once every node has been tried."""
        self.started = True
        delay = 0.2
        tried = 0
        while not self.stopping:
            i = self.next_node % len(self.params)
            self.next_node += 1
            try:
                self._open(self.params[i])
                self.log.info("connected", extra={"fields": {"broker": "%s:%d" % self.nodes[i],
                                                             "client_id": self.client_id}})
                self.log.info("subscribed", extra={"fields": {"queue": rabbitmq.UP_QUEUE,
                                                              "binding": rabbitmq.UP_BINDING}})
                return
            except LOST as e:
                tried += 1
                if not retry and tried >= len(self.params):
                    self._drop()
                    raise OSError(f"no node of {len(self.params)} answered: {e!r}") from None
                self.log.warning("connect failed", extra={"fields": {"broker": "%s:%d" % self.nodes[i],
                                                                     "error": repr(e)[:300], "retry_s": delay}})
                self._drop()
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _open(self, params: Any) -> None:
        self.conn = pika.BlockingConnection(params)
        ch = self.chan = self.conn.channel()
        ch.basic_qos(prefetch_count=self.prefetch)
        ch.queue_declare(rabbitmq.UP_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
        ch.queue_bind(rabbitmq.UP_QUEUE, rabbitmq.EXCHANGE, rabbitmq.UP_BINDING)
        ch.basic_consume(rabbitmq.UP_QUEUE, self._on_message, auto_ack=False)
        self.broken = False

    def _drop(self) -> None:
        self.inbox = []
        conn, self.conn, self.chan = self.conn, None, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - already dead
                pass

    def _reconnect(self, why: str) -> None:
        if not self.stopping:
            self.log.warning("disconnected", extra={"fields": {"reason": why[:300]}})
        self._drop()
        self.start()
        if self.chan is not None:
            self._resend()

    def receive(self, limit: int) -> list[ingest.Incoming]:
        if self.broken or self.conn is None:
            self._reconnect("a send or acknowledgement failed" if self.broken else "not connected")
            return []
        try:
            self.conn.process_data_events(time_limit=0 if self.inbox else 0.2)
        except LOST as e:
            self._reconnect(repr(e))
            return []
        msgs, self.inbox = self.inbox, []
        return msgs

    def send(self, topic: str, data: bytes) -> None:
        if self.broken or self.chan is None:
            self._keep(topic, data)
            return
        try:
            self.chan.basic_publish(rabbitmq.EXCHANGE, rabbitmq.routing_key(topic), data, self.props)
        except LOST:
            self.broken = True
            self._keep(topic, data)

    def _keep(self, topic: str, data: bytes) -> None:
        """Rule A5: downlink of a committed group that the lost connection did not take."""
        if len(self.unsent) < UNSENT_MAX:
            self.unsent.append((topic, data))

    def _resend(self) -> None:
        """Rule A5: publish what a lost connection did not take, on the new one."""
        unsent, self.unsent = self.unsent, []
        for topic, data in unsent:
            self.send(topic, data)
        if unsent:
            self.log.info("downlink resent", extra={"fields": {"messages": len(unsent) - len(self.unsent)}})

    def ack(self, msgs: list[ingest.Incoming]) -> None:
        if not msgs or self.broken or self.chan is None:
            return
        try:
            self.chan.basic_ack(delivery_tag=msgs[-1].mid, multiple=True)
        except LOST:
            self.broken = True

    def pump(self) -> None:
        """pika's blocking channel writes each frame when it is made: nothing waits."""

    def close(self) -> None:
        self._drop()
