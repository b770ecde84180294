"""`edgemeter rater`: the broker shell around cloud.ingest.

    edgemeter rater --broker mqtt://HOST:PORT | amqp://HOST:PORT[,HOST:PORT...] --db URL
                    [--metrics-port P] [--client-id ID]
                    [--username U --password P | env EDGEMETER_MQTT_USER/EDGEMETER_MQTT_PASSWORD]
                    [--ca-file CA] [--group N] [--housekeeping S]

Rules:
 M1. The broker is behind a transport (cloud.transport, rules T1-T5): mqtt:// is one paho-mqtt
     2.x client, MQTT 5, persistent session (clean_start false, session expiry a day) under a
     stable client id, QoS 1 shared subscription $share/<group>/em/+/+/up/# (docs/protocol.md,
     Topics); amqp:// is a competing consumer of the raters' quorum queue on a RabbitMQ
     cluster (cloud.amqp). Either way several raters split the devices' messages and a
     restarted rater, or another one, gets the messages that were not acknowledged.
 M2. Manual acknowledgement: a message's PUBACK (basic.ack) goes to the broker only after the
     transaction that booked (or dead-lettered) it has committed and its downlink (device
     acks, grants, commands, all signed, QoS 1 / persistent) has been handed to the
     transport. A rater killed at any instant loses nothing: unacknowledged messages are
     redelivered (to it or another rater, or after session expiry the device resends them)
     and (device, seq) is booked once (cloud.ingest G3).
 M3. One thread drives the transport and the store, so no lock is shared with the network:
     it takes every message already waiting, up to --group, then books them in one
     transaction (group commit) and acknowledges them; the broker's in-flight window (MQTT
     Receive Maximum, AMQP prefetch = --group) bounds a group.
 M4. Every --housekeeping seconds: expire ended licences, reclaim silent leases, push
     suspend/resume commands that accounts now need (e.g. after a top-up), deliver new HMAC
     keys (ROTATE), refresh the pool and lease gauges.
 M5. SIGTERM/SIGINT: finish and commit the group in hand, publish and acknowledge it, then
     disconnect (the session or queue stays for the next start) and exit 0.
 M6. Logs are JSON lines on stderr; metrics are Prometheus text at http://HOST:P/metrics.
 M7. A failing group never blocks the stream: the store is retried while it is unavailable; a
     message that fails on its own is dead-lettered as `internal` and acknowledged.
 M8. The process's start-up heap (modules, SQLAlchemy, paho, the price books) is moved out of
     the cyclic garbage collector's reach once the store and the client are set up
     (gc.freeze), and young collections run every GC_GEN0 net allocations instead of 700: a
     group keeps ~30 objects per message alive until its commit, and with the defaults the
     collector spent ~12 us per batch re-scanning them and the start-up heap. Reference
     counting still frees everything at once; cycles are still collected.
 M9. The MQTT client is cloud.mqttclient.RaterClient: paho's Client reading the socket in 64
     KiB chunks, parsing property-less PUBLISHes without building paho's Properties tables and
     writing a group's PUBACKs at once (rules Q1-Q3 there); the loop does not wait on select()
     while bytes are buffered. Where paho lacks a hook it needs, StockClient (mqttclient rule Q4).
 M10. The rater never creates or upgrades a store: it starts only on a ledger at the newest
     schema (`edgemeter admin migrate` makes one; cloud.db rule 3), and only once its first
     connection to the broker succeeds; after that it reconnects for ever.
 M11. The store fails closed: when the ledger file is unlinked or replaced under the rater
     (cloud.db rule 5), a device key cannot be unwrapped (no KEK, or another one: cloud.keystore
     K2) or the store stays unusable (disk full, I/O errors), the group is not
     committed and not acknowledged; the rater logs one error line naming the fault and
     exits with status 3, leaving the messages to the broker. A memory fault on SQLite's
     shared-memory index (SIGBUS), which no process survives, ends the rater's worker process
     (faulthandler reports where on stderr); its watchdog parent logs one error line naming
     the signal and exits with status 3 (cloud.supervise W1-W4); nothing the worker had not
     committed was acknowledged.
Exit status: 0 after a graceful stop; 2 for bad arguments or a malformed store/broker URL; 1 when
the store is missing or unreachable, the broker cannot be reached at start, or the metrics port
cannot be bound; 3 when the store failed while running (rule M11). Errors at start are one line
on stderr.
"""
from __future__ import annotations

import argparse
import faulthandler
import gc
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from prometheus_client import start_http_server
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from edgemeter.cloud import accounts, cliargs, db, devices, ingest, keystore, pools, supervise
from edgemeter.cloud.metrics import Metrics
from edgemeter.cloud.transport import open_transport
from edgemeter.cloud import schema as S
from firmware_py import proto as P

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
        ing.refresh_books(conn, now)          # a published book comes into force (ingest G10)
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
        rows, keys = ing.load_devices(conn, {dev})
        new_key = devices.keys(conn, dev)[kid]
        sess = ing.session(rows[dev], keys[dev])
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
    """The broker shell (rules M1-M7) over a transport (cloud.transport: MQTT 5 or AMQP)."""

    def __init__(self, broker_url: str, db_url: str, client_id: str, username: str | None = None,
                 password: str | None = None, ca_file: str | None = None, group: int = 500,
                 housekeeping_s: float = 5.0, metrics: Metrics | None = None, log: logging.Logger | None = None):
        self.log = log or json_logger()
        self.metrics = metrics or Metrics()
        self.transport = open_transport(broker_url, client_id, self.log, username, password, ca_file, group)
        self.engine = db.open_store(db_url)
        self.ing = ingest.Ingest(self.engine)
        self.group = group
        self.housekeeping_s = housekeeping_s
        self.client_id = client_id
        self.stopping = False

    def flush(self, msgs: list[ingest.Incoming]) -> int:
        """Book msgs (one transaction), send the downlink, then acknowledge them (rule M2)."""
        if not msgs:
            return 0
        for out, done in self._book(msgs):
            self._send(out)
            self.transport.ack(done)
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
            except (db.StoreGone, keystore.KeyStoreError):
                raise           # rule M11: nothing committed, nothing acked
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
            except (db.StoreGone, keystore.KeyStoreError):
                raise
            except Exception as e:  # noqa: BLE001 - a poison message: dead-letter it and go on
                self.log.error("message failed; dead-lettered", extra={"fields": {"topic": m.topic, "error": repr(e)}})
                results.append((self.ing.dead_letter(m, "internal", repr(e)[:2000]), [m]))
        return results

    def _send(self, out: ingest.Outcome) -> None:
        for topic, data in out.publish:
            self.transport.send(topic, data)

    def run(self) -> int:
        """Rule M3: take what has arrived (up to --group), book it, send and acknowledge, then
        write everything queued at once; housekeeping every --housekeeping seconds."""
        t = self.transport
        if not t.started:
            t.start()
        next_hk = time.monotonic()
        while not self.stopping:
            msgs = t.receive(self.group)
            if msgs:
                self.flush(msgs)
            t.pump()
            if time.monotonic() >= next_hk:
                next_hk = time.monotonic() + self.housekeeping_s
                self._housekeeping()
                t.pump()
        t.close()
        self.log.info("stopped", extra={"fields": {"client_id": self.client_id}})
        return 0

    def _housekeeping(self) -> None:
        self.ing.forget_workspaces()
        try:
            out = housekeeping(self.ing, self.metrics)
        except (db.StoreGone, keystore.KeyStoreError):
            raise
        except Exception:  # noqa: BLE001 - housekeeping must never stop ingest
            self.log.exception("housekeeping failed")
            return
        self._send(out)
        for kind, dev, detail in out.events:
            self.log.info(kind, extra={"fields": {"subject": dev, "detail": detail}})

    def connect(self) -> None:
        """The first connection to the broker (rule M10): OSError when no node answers."""
        self.transport.start(retry=False)

    def stop(self, *_: Any) -> None:
        self.stopping = True
        self.transport.stopping = True


def tune_gc() -> None:
    """Rule M8 (call once the process is set up)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0, *gc.get_threshold()[1:])


def _parser() -> argparse.ArgumentParser:
    ap = cliargs.Parser(prog="edgemeter rater", description=__doc__.split("\n")[0])
    ap.add_argument("--broker", type=cliargs.broker_url, required=True,
                    help="mqtt://HOST:PORT, mqtts://HOST:PORT (MQTT 5) or amqp://HOST:PORT[,HOST:PORT...] (RabbitMQ)")
    ap.add_argument("--db", type=cliargs.db_url, default=db.default_url(), required=db.default_url() is None,
                    help="database URL (a store made by `edgemeter admin migrate`)")
    ap.add_argument("--metrics-port", type=cliargs.port, help="serve Prometheus metrics on this port (1 .. 65535)")
    ap.add_argument("--metrics-host", default="127.0.0.1")
    ap.add_argument("--client-id", default=f"rater-{socket.gethostname()}",
                    help="stable MQTT client id (with amqp://, the connection's name)")
    ap.add_argument("--username", default=os.environ.get("EDGEMETER_MQTT_USER"))
    ap.add_argument("--password", default=os.environ.get("EDGEMETER_MQTT_PASSWORD"))
    ap.add_argument("--ca-file", type=cliargs.in_file, help="CA certificate for mqtts://")
    ap.add_argument("--group", type=cliargs.int_in(1, 100_000, "a message count"), default=500,
                    help="most messages per transaction (1 .. 100,000)")
    ap.add_argument("--housekeeping", type=cliargs.float_in(0, 86400, "a number of seconds", lo_open=True),
                    default=5.0, help="seconds between housekeeping runs (above 0, at most 86400)")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    log = json_logger()
    status = supervise.supervised("edgemeter.cloud.rater", argv, log, "rater")   # rule M11
    if status is not None:
        return status
    try:
        clear = keystore.ring() is None
        rater = Rater(args.broker, args.db, args.client_id, args.username, args.password, args.ca_file,
                      args.group, args.housekeeping, log=log)
    except (ValueError, db.StoreError, keystore.KeyStoreError, OSError) as e:   # OSError: an unreadable --ca-file
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
    open_dir = db.open_directory(args.db)
    if open_dir:
        log.warning(open_dir)
    if clear:
        log.warning("device keys are stored in clear: set EDGEMETER_KEK_FILE (cloud/keystore.py)")
    faulthandler.enable()     # rule M11: a SIGBUS on SQLite's shared memory is reported
    try:
        return rater.run()
    except (db.StoreGone, keystore.KeyStoreError, RuntimeError, OperationalError) as e:
        log.error("store failed; stopped without acknowledging the group in hand",
                  extra={"fields": {"error": str(e)[:500]}})
        return 3


if __name__ == "__main__":
    sys.exit(main())
