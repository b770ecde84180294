"""The cloud side of a simulation: the store with a License workspace and a postpaid account
set up through the admin CLI's own code, the devices registered by cloud.devices (what `edgemeter
admin register-device` runs) with their Mosquitto password and ACL files written by the
registry (cloud.devices.write_mosquitto_files) into the broker's directory, Mosquitto with auth
(tools.broker) or a RabbitMQ cluster (tools.rabbit: the same users and topic confinement as
definitions, cloud.rabbitmq), and R `edgemeter rater` processes sharing the subscription or the
quorum queue.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from edgemeter.cloud import accounts, db, devices, ledger, pools
from edgemeter.cloud import schema as S
from firmware_py import billing, civil, pricebook
from edgemeter.tools.broker import Broker



def setup_store(url: str, n_license: int, n_postpaid: int, *, validity: int, grant: int,
                units: int = 0, now: int | None = None, exact: bool = False, low: int | None = None,
                expiring: bool = False) -> dict[str, Any]:
    """Account "sim" with the postpaid trial, a savings plan and a large top-up (never
    suspended), a License workspace with a pool (standard licences, activated a month ago)
    and a postpaid workspace; n_license + n_postpaid devices registered. The pool holds at
    least `units` (pool units = µCNY of list-price use); with `exact`, only as many licences
    are activated as `units` needs, now (the rest of the purchase stays unactivated), so the
    pool's history starts now and runs down visibly. low: the workspace's low_units term
    (pool_low alerts below it). expiring: also a purchase made 11.5 months ago and never
    activated, whose activation window closes within the month (a license_expiring alert)."""
    now = now or int(time.time())
    engine = db.open_store(url, create=True)
    out: dict[str, Any] = {"license": [], "postpaid": []}
    with db.write_connect(engine) as conn, conn.begin():
        book = ledger.latest_book(ledger.ensure_books(conn, now))
        acc = accounts.create_account(conn, "sim-%d" % now, now)
        accounts.claim_trial(conn, book, acc, now)
        accounts.buy_plan(conn, book, acc, 1_000_000_000, now)          # CNY 1,000 commitment
        accounts.top_up(conn, acc, 10**13, now, "sim")
        lic = accounts.create_workspace(conn, acc, "sim-license", "license", now, policy="continue",
                                        grant=grant, max=grant * 10, validity=validity, low=low)
        pp = accounts.create_workspace(conn, acc, "sim-postpaid", "postpaid", now)
        per = billing.allowance(book, "standard")
        need = max(1, -(-units // per))                    # licences enough for `units` of use
        n_lic_buy = max(100, n_license, need)
        back = civil.add_months(now, -1)
        p = pools.buy_license(conn, book, lic, "standard", n_lic_buy, back)
        _, why = pools.activate(conn, book, p, need if exact else n_lic_buy, now if exact else back)
        if why:
            raise RuntimeError("activation refused: %s" % why)
        if expiring:
            pools.buy_license(conn, book, lic, "standard", 100, civil.add_months(now, -12) + 15 * 86400)
        for _ in range(n_license):
            out["license"].append(devices.register(conn, lic, now))
        for _ in range(n_postpaid):
            out["postpaid"].append(devices.register(conn, pp, now))
    engine.dispose()
    out.update(account=acc, license_ws=lic, postpaid_ws=pp)
    return out


def write_broker_files(url: str, broker: Broker) -> dict[str, Any]:
    """The registry's passwd and ACL into the broker's directory, then SIGHUP (rule D4)."""
    engine = db.make_engine(url)
    with engine.connect() as conn:
        r = devices.write_mosquitto_files(conn, broker.workdir)
    engine.dispose()
    if broker.running:
        broker.reload()
    return r


def load_rabbit_users(cluster: Any, regs: list[dict[str, Any]]) -> None:
    """Every registered device's user and permissions into the RabbitMQ cluster (cloud.rabbitmq
    rules R1-R3), from the registrations (the passwords are shown once, at registration)."""
    cluster.load([(r["workspace"], r["id"], r["password"]) for r in regs])


def new_price_book(url: str, workdir: Path) -> int:
    """Publish the next price-book version (chat 2.20 -> 2.30 per 1,000 calls, in force at
    once) the way an operator does: `edgemeter admin book export`, edit the file, `edgemeter
    admin book publish FILE --effective now`. Running raters load it with their next group
    and push it to every device that reports an older version (cloud.books B4, B5)."""
    path = workdir / f"book-{time.time_ns()}.json"
    admin = [sys.executable, "-m", "edgemeter.tools.cli", "admin", "book"]
    subprocess.run(admin + ["export", str(path), "--db", url], check=True, capture_output=True, timeout=120)
    doc = json.loads(path.read_text())
    chat = doc["items"]["columns"].index("price_ucny")
    for row in doc["items"]["rows"]:
        if row[0] == pricebook.CHAT:
            row[chat] += 100
    path.write_text(json.dumps(doc))
    p = subprocess.run(admin + ["publish", str(path), "--effective", "now", "--db", url, "--json"],
                       capture_output=True, text=True, timeout=120)
    if p.returncode:
        raise RuntimeError(f"book publish failed: {p.stderr.strip()}")
    return int(json.loads(p.stdout)["version"])


def book_versions(url: str) -> list[int]:
    engine = db.make_engine(url)
    with engine.connect() as conn:
        v = [r[0] for r in conn.execute(select(S.price_books.c.version))]
    engine.dispose()
    return sorted(v)


class Rater:
    """One `edgemeter rater` process (kill -9 able), in a session of its own so that a terminal's
    Ctrl-C reaches only the simulation, which stops it after the drain."""

    def __init__(self, broker: Any, url: str, name: str, workdir: Path, node: int = 0) -> None:
        """broker: our Broker or RabbitCluster (its rater user; on a cluster the rater connects
        to `node` first), or the URL of a running one (the rater's credentials, if it needs
        any, from EDGEMETER_MQTT_USER / EDGEMETER_MQTT_PASSWORD)."""
        burl = broker if isinstance(broker, str) else \
            broker.amqp_url_from(node) if hasattr(broker, "amqp_url_from") else broker.url
        self.args = [sys.executable, "-m", "edgemeter.tools.cli", "rater", "--broker", burl, "--db", url,
                     "--client-id", name, "--housekeeping", "1"]
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        if not isinstance(broker, str):
            self.env.update(EDGEMETER_MQTT_USER="rater", EDGEMETER_MQTT_PASSWORD=broker.users.get("rater", ""))
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self, wait: float = 30.0) -> "Rater":
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if '"subscribed"' in self.log_path.read_text(errors="replace")[offset:]:
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"rater {self.name} exited:\n" + self.log_path.read_text()[-3000:])
            time.sleep(0.05)
        raise RuntimeError(f"rater {self.name} did not subscribe:\n" + self.log_path.read_text()[-3000:])

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.kills += 1

    def stop(self, timeout: float = 30.0) -> int | None:
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.proc = None
        return p.returncode

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
