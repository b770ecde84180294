"""`edgemeter rater`: the MQTT shell around cloud.ingest.

    edgemeter rater --broker mqtt://HOST:PORT --db URL [--metrics-port P] [--client-id ID]
                    [--username U --password P | env EDGEMETER_MQTT_USER/EDGEMETER_MQTT_PASSWORD]
                    [--ca-file CA] [--group N] [--housekeeping S]

Rules:
 M1. One paho-mqtt 2.x client, MQTT 5, persistent session (clean_start false, session expiry a
     day) under a stable client id, QoS 1 shared subscription $share/raters/em/+/+/up/#
     (docs/protocol.md, Topics): several raters split the devices' messages; a restarted rater gets the
     messages it had not acknowledged.
 M2. Manual acknowledgement: a message's PUBACK goes to the broker only after the transaction
     that booked (or dead-lettered) it has committed and its downlink (device acks, grants,
     commands, all signed, QoS 1) has been handed to the client. A rater killed at any
     instant loses nothing: unacknowledged messages are redelivered (to it, or after session
     expiry the device resends them) and (device, seq) is booked once (cloud.ingest G3).
 M3. One thread drives the client (paho's external loop: loop_read, loop_write, loop_misc)
     and the store, so no lock is shared with the network: it reads every message already
     waiting, up to --group, then books them in one transaction (group commit) and
     acknowledges them; the broker's in-flight window bounds
     a group.
 M4. Every --housekeeping seconds: expire ended licences, reclaim silent leases, push
     suspend/resume commands that accounts now need (e.g. after a top-up), deliver new HMAC
     keys (ROTATE), refresh the pool and lease gauges.
 M5. SIGTERM/SIGINT: finish and commit the group in hand, publish and acknowledge it, then
     disconnect (the session stays for the next start) and exit 0.
 M6. Logs are JSON lines on stderr; metrics are Prometheus text at http://HOST:P/metrics.
 M7. A failing group never blocks the stream: the store is retried while it is unavailable; a
     message that fails on its own is dead-lettered as `internal` and acknowledged.
 M8. The process's start-up heap (modules, SQLAlchemy, paho, the price books) is moved out of
     the cyclic garbage collector's reach once the store and the client are set up
     (gc.freeze), and young collections run every GC_GEN0 net allocations instead of 700: a
     group keeps ~30 objects per message alive until its commit, and with the defaults the
     collector spent ~12 us per batch re-scanning them and the start-up heap. Reference
     counting still frees everything at once; cycles are still collected.
 M9. The client is cloud.mqttclient.RaterClient: paho's Client reading the socket in 64 KiB
     chunks, parsing property-less PUBLISHes without building paho's Properties tables and
     writing a group's PUBACKs at once (rules Q1-Q3 there); the loop does not wait on select()
     while bytes are buffered. Where paho lacks a hook it needs, StockClient (mqttclient rule Q4).
 M10. The rater never creates or upgrades a store: it starts only on a ledger at the newest
     schema (`edgemeter admin migrate` makes one; cloud.db rule 3), and only once its first
     connection to the broker succeeds; after that it reconnects for ever.
Exit status: 0 after a graceful stop; 2 for bad arguments or a malformed store/broker URL; 1 when
the store is missing or unreachable, the broker cannot be reached at start, or the metrics port
cannot be bound. Errors at start are one line on stderr.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import select as iosel
import signal
import socket
import ssl
import sys
import time
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import start_http_server
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from edgemeter.cloud import accounts, cliargs, db, ingest, pools
from edgemeter.cloud.metrics import Metrics
from edgemeter.cloud.mqttclient import client_class
from edgemeter.cloud import schema as S
from firmware_py import proto as P

SUBSCRIPTION = "$share/raters/em/+/+/up/#"
SESSION_EXPIRY_S = 86400
RECEIVE_MAXIMUM = 100    # the broker's Receive Maximum (deploy/mosquitto: max_inflight_messages)
GC_GEN0 = 50_000


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        d = {"ts": round(record.created, 3), "level": record.levelname.lower(), "msg": record.getMessage(),
             "logger": record.name}
        d.update(getattr(record, "fields", {}))
        if record.exc_info:
            d["exc"] = self.formatException(record.exc_info)
        return json.dumps(d, sort_keys=True, default=str)


def json_logger(name: str = "edgemeter.rater") -> logging.Logger:
    log = logging.getLogger(name)
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(JsonFormatter())
        log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log


def housekeeping(ing: ingest.Ingest, metrics: Metrics | None = None) -> ingest.Outcome:
    """Rule M4 in one transaction; returns the downlink to publish."""
    out = ingest.Outcome()
    now = ing.now_ms() // 1000
    with db.write_connect(ing.engine) as conn, conn.begin():
        hk = pools.housekeeping(conn, ing.latest, now)
        out.events += [("expired", w, (a, u)) for w, a, u in hk["expired"]]
        out.events += [("reclaimed", w, lid) for w, lid in hk["reclaimed"]]
        ing.send_commands(conn, accounts.commands_due(conn), out)
        _rotations(conn, ing, out)
        if metrics is not None:
            _gauges(conn, metrics)
    return out


def _rotations(conn: Any, ing: ingest.Ingest, out: ingest.Outcome) -> None:
    d = S.devices
    due = conn.execute(select(d.c.id, d.c.workspace_id, d.c.kid, d.c.kid_sent).where(d.c.kid > d.c.kid_sent)).all()
    for dev, ws, kid, _sent in due:
        rows, keys = ing._load_devices(conn, {dev})
        new_key = conn.execute(select(S.device_keys.c.key).where(S.device_keys.c.device_id == dev,
                                                                 S.device_keys.c.kid == kid)).scalar_one()
        sess = ing._session(rows[dev], keys[dev])
        data = sess.command(P.OP_ROTATE, kid, bytes(new_key))
        out.publish.append((P.topic(ws, dev, "down/cmd"), data))
        out.commands["rotate"] = out.commands.get("rotate", 0) + 1
        conn.execute(d.update().where(d.c.id == dev).values(kid_sent=kid, session=json.dumps(sess.state(),
                                                                                            sort_keys=True)))


def _gauges(conn: Any, m: Metrics) -> None:
    for r in conn.execute(select(S.pools)).mappings():
        for b in S.POOL_BUCKETS:
            m.pool.labels(str(r["workspace_id"]), b).set(r[b])
    names = {1: "live", 2: "reclaimed", 3: "closed"}
    L = S.leases
    for ws, st, n, out_ in conn.execute(select(L.c.workspace_id, L.c.state, func.count(),
                                               func.sum(L.c.total + L.c.allow + L.c.extra - L.c.used))
                                        .group_by(L.c.workspace_id, L.c.state)):
        m.leases.labels(str(ws), names.get(st, str(st))).set(n)
        if st == 1:
            m.lease_units.labels(str(ws)).set(int(out_ or 0))
    m.suspended.set(conn.execute(select(func.count()).select_from(S.account_balances)
                                 .where(S.account_balances.c.suspended == True)).scalar_one())  # noqa: E712
    m.dead_total.set(int(conn.execute(select(func.coalesce(func.sum(S.dead_letters.c.count), 0))).scalar_one()))


class Rater:
    """The MQTT shell (rules M1-M5)."""

    def __init__(self, broker_url: str, db_url: str, client_id: str, username: str | None = None,
                 password: str | None = None, ca_file: str | None = None, group: int = 500,
                 housekeeping_s: float = 5.0, metrics: Metrics | None = None, log: logging.Logger | None = None):
        self.log = log or json_logger()
        self.metrics = metrics or Metrics()
        self.engine = db.open_store(db_url)
        self.ing = ingest.Ingest(self.engine)
        self.group = group
        self.housekeeping_s = housekeeping_s
        u = urlparse(broker_url)
        if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not u.hostname:
            raise ValueError(f"broker URL must be mqtt://HOST:PORT or mqtts://HOST:PORT, got {broker_url!r}")
        self.host, self.port = u.hostname, u.port or (8883 if u.scheme in ("mqtts", "ssl") else 1883)
        self.client_id = client_id
        c = self.client = client_class(self.log)(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
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

    # ---- callbacks (run inside client.loop on our one thread) ----
    def _on_connect(self, client, userdata, flags, reason, props):  # type: ignore[no-untyped-def]
        if reason.is_failure:
            self.log.error("connect refused", extra={"fields": {"reason": str(reason)}})
            return
        self.connected = True
        client.subscribe(SUBSCRIPTION, qos=1)
        self.log.info("connected", extra={"fields": {"broker": f"{self.host}:{self.port}", "client_id": self.client_id,
                                                     "session_present": bool(flags.session_present)}})

    def _on_subscribe(self, client, userdata, mid, reasons, props):  # type: ignore[no-untyped-def]
        ok = all(not r.is_failure for r in reasons)
        (self.log.info if ok else self.log.error)("subscribed" if ok else "subscribe refused", extra={
            "fields": {"filter": SUBSCRIPTION, "reasons": [str(r) for r in reasons]}})

    def _on_disconnect(self, client, userdata, flags, reason, props):  # type: ignore[no-untyped-def]
        self.connected = False
        if not self.stopping:
            self.log.warning("disconnected", extra={"fields": {"reason": str(reason)}})

    def _on_message(self, client, userdata, msg):  # type: ignore[no-untyped-def]
        self.inbox.append(ingest.Incoming(msg.topic, msg.payload, time.time_ns() // 1_000_000, msg.mid))

    # ---- the loop ----
    def connect(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        self.client.connect(self.host, self.port, keepalive=30, clean_start=False, properties=props)

    def flush(self) -> int:
        """Book what is in the inbox (one transaction), publish the downlink, ack (rule M2)."""
        if not self.inbox:
            return 0
        msgs, self.inbox = self.inbox, []
        for out, done in self._book(msgs):
            self._send(out)
            self.client.ack_many([m.mid for m in done])
            self.metrics.record(out, len(done))
            for kind, dev, detail in out.events:
                self.log.info(kind, extra={"fields": {"device": dev, "detail": detail}})
        return len(msgs)

    def _book(self, msgs: list[ingest.Incoming]) -> list[tuple[ingest.Outcome, list[ingest.Incoming]]]:
        """Rule M7: the group in one transaction; when that fails, the store is retried with
        backoff (OperationalError: busy, connection lost), and any other failure is isolated
        message by message, a message that fails on its own being dead-lettered as `internal`
        (with the error) so that it cannot block the stream. Raises only when not even the
        dead letter can be written (the process exits; the broker redelivers)."""
        delay = 0.1
        for attempt in range(6):
            try:
                return [(self.ing.process(msgs), msgs)]
            except OperationalError as e:
                self.log.warning("store unavailable, retrying", extra={"fields": {"error": str(e)[:300],
                                                                                   "retry_s": delay}})
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
            except Exception:  # noqa: BLE001 - isolate below
                self.log.exception("group failed; booking its messages one by one",
                                   extra={"fields": {"messages": len(msgs)}})
                break
        else:
            raise RuntimeError("the store stayed unavailable")
        results = []
        for m in msgs:
            try:
                results.append((self.ing.process([m]), [m]))
            except Exception as e:  # noqa: BLE001 - a poison message: dead-letter it and go on
                self.log.error("message failed; dead-lettered", extra={"fields": {"topic": m.topic, "error": repr(e)}})
                results.append((self.ing.dead_letter(m, "internal", repr(e)[:2000]), [m]))
        return results

    def _send(self, out: ingest.Outcome) -> None:
        for topic, data in out.publish:
            self.client.publish(topic, data, qos=1)

    def run(self) -> int:
        """Rule M3 with paho's external-loop API: read every packet already waiting
        (loop_read until nothing new), book them, then write all queued packets at once."""
        c = self.client
        c.on_socket_register_write = _no_write_wakeup   # writes happen once per turn, below
        if c.socket() is None:
            self.connect()
        next_hk = time.monotonic()
        while not self.stopping:
            sock = c.socket()
            if sock is None:
                self._reconnect()
                continue
            try:
                readable, _, _ = iosel.select([sock], [sock] if c.want_write() else [], [],
                                               0.0 if self.inbox or c.buffered() else 0.2)[0:3]
            except (OSError, ValueError):
                readable = []
            if c.buffered():
                readable = [sock]
            rc = mqtt.MQTT_ERR_SUCCESS
            if readable:
                while len(self.inbox) < self.group:
                    before = len(self.inbox)
                    rc = c.loop_read(1)
                    if rc != mqtt.MQTT_ERR_SUCCESS or len(self.inbox) == before:
                        break
            if rc != mqtt.MQTT_ERR_SUCCESS and not self.stopping:
                self._reconnect()
                continue
            if self.inbox:
                self.flush()
            if c.want_write():
                c.loop_write()
            c.loop_misc()
            if time.monotonic() >= next_hk:
                next_hk = time.monotonic() + self.housekeeping_s
                self._housekeeping()
                if c.want_write():
                    c.loop_write()
        self.flush()
        for _ in range(100):          # let the last acks and downlink leave
            if not c.want_write():
                break
            c.loop_write()
            time.sleep(0.01)
        c.disconnect()
        c.loop_write()
        self.log.info("stopped", extra={"fields": {"client_id": self.client_id}})
        return 0

    def _housekeeping(self) -> None:
        self.ing.forget_workspaces()
        try:
            out = housekeeping(self.ing, self.metrics)
        except Exception:  # noqa: BLE001 - housekeeping must never stop ingest
            self.log.exception("housekeeping failed")
            return
        self._send(out)
        for kind, dev, detail in out.events:
            self.log.info(kind, extra={"fields": {"subject": dev, "detail": detail}})

    def _reconnect(self) -> None:
        self.inbox.clear()   # unacknowledged: the broker delivers them again (rule M2)
        delay = 0.2
        while not self.stopping:
            try:
                self.client.reconnect()
                return
            except OSError as e:
                self.log.warning("reconnect failed", extra={"fields": {"error": str(e), "retry_s": delay}})
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def stop(self, *_: Any) -> None:
        self.stopping = True


def tune_gc() -> None:
    """Rule M8 (call once the process is set up)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0, *gc.get_threshold()[1:])


def _no_write_wakeup(client: Any, userdata: Any, sock: Any) -> None:
    """Registered as on_socket_register_write so that paho queues outgoing packets instead of
    writing each at once; Rater.run writes them all once per turn (paho's external-loop API)."""


def _parser() -> argparse.ArgumentParser:
    ap = cliargs.Parser(prog="edgemeter rater", description=__doc__.split("\n")[0])
    ap.add_argument("--broker", type=cliargs.broker_url, required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    ap.add_argument("--db", type=cliargs.db_url, default=db.default_url(), required=db.default_url() is None,
                    help="database URL (a store made by `edgemeter admin migrate`)")
    ap.add_argument("--metrics-port", type=cliargs.port, help="serve Prometheus metrics on this port (1 .. 65535)")
    ap.add_argument("--metrics-host", default="127.0.0.1")
    ap.add_argument("--client-id", default=f"rater-{socket.gethostname()}", help="stable MQTT client id")
    ap.add_argument("--username", default=os.environ.get("EDGEMETER_MQTT_USER"))
    ap.add_argument("--password", default=os.environ.get("EDGEMETER_MQTT_PASSWORD"))
    ap.add_argument("--ca-file", type=cliargs.in_file, help="CA certificate for mqtts://")
    ap.add_argument("--group", type=cliargs.int_in(1, 100_000, "a message count"), default=500,
                    help="most messages per transaction (1 .. 100,000)")
    ap.add_argument("--housekeeping", type=cliargs.float_in(0, 86400, "a number of seconds", lo_open=True),
                    default=5.0, help="seconds between housekeeping runs (above 0, at most 86400)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    log = json_logger()
    try:
        rater = Rater(args.broker, args.db, args.client_id, args.username, args.password, args.ca_file,
                      args.group, args.housekeeping, log=log)
    except (ValueError, db.StoreError, OSError) as e:   # OSError: an unreadable --ca-file
        return cliargs.fail("rater", e)
    try:
        rater.connect()
    except OSError as e:
        rater.engine.dispose()
        print(f"edgemeter rater: cannot connect to the broker at {db.redact(args.broker)}: {e.strerror or e}",
              file=sys.stderr)
        return 1
    if args.metrics_port:
        try:
            start_http_server(args.metrics_port, args.metrics_host, registry=rater.metrics.registry)
        except OSError as e:
            rater.engine.dispose()
            print(f"edgemeter rater: cannot serve metrics on {args.metrics_host}:{args.metrics_port}: "
                  f"{e.strerror or e}", file=sys.stderr)
            return 1
    tune_gc()
    signal.signal(signal.SIGTERM, rater.stop)
    signal.signal(signal.SIGINT, rater.stop)
    log.info("starting", extra={"fields": {"broker": db.redact(args.broker), "db": db.redact(args.db),
                                           "pid": os.getpid(), "metrics_port": args.metrics_port}})
    return rater.run()
