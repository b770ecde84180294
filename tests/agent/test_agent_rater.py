"""The Linux agent with the real cloud: `edgemeter rater` (MQTT 5 shared subscription, SQLite
ledger, pool leases) and `edgemeter agent` processes on one Mosquitto. A License device and a
postpaid device serve rounds through the socket API; the agent is killed -9 once and
restarted; the ledger books exactly the rounds the SDK was told were accepted."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from sqlalchemy import func, select

from agent_harness import ROOT, SDK, AgentDied, AgentProcess, write_config
from edgemeter.cloud import accounts, db, devices, pools, queries
from edgemeter.cloud import schema as S
from firmware_py import VERSION, civil, pricebook

pytestmark = pytest.mark.timeout(180)
BOOK = pricebook.default()


def ledger(url, dev):
    engine = db.make_engine(url)
    b = S.usage_batches
    with engine.connect() as conn:
        n, u, k = conn.execute(select(func.coalesce(func.sum(b.c.rounds), 0),
                                      func.coalesce(func.sum(b.c.rated_ucny), 0), func.count())
                               .where(b.c.device_id == dev)).one()
    engine.dispose()
    return int(n), int(u), int(k)


@pytest.fixture
def cloud(make_broker, tmp_path):
    broker = make_broker()
    url = "sqlite:///%s" % (tmp_path / "ledger.db")
    now = int(time.time())
    engine = db.open_store(url, create=True)
    with db.write_connect(engine) as conn, conn.begin():
        acc = accounts.create_account(conn, "tenant", now)
        accounts.top_up(conn, acc, 10**12, now)
        lic = accounts.create_workspace(conn, acc, "license", "license", now, grant=5_450_000,
                                        validity=3600)
        pp = accounts.create_workspace(conn, acc, "postpaid", "postpaid", now)
        p = pools.buy_license(conn, BOOK, lic, "standard", 100, civil.add_months(now, -1))
        pools.activate(conn, BOOK, p, 100, civil.add_months(now, -1))
        devs = [devices.register(conn, lic, now), devices.register(conn, pp, now)]
    engine.dispose()
    log = tmp_path / "rater.log"
    with open(log, "ab") as f:
        rater = subprocess.Popen([sys.executable, "-m", "edgemeter.tools.cli", "rater", "--broker",
                                  broker.url, "--db", url, "--client-id", "rater-a",
                                  "--housekeeping", "0.5"], cwd=str(ROOT), stdout=f,
                                 stderr=subprocess.STDOUT, env=dict(os.environ,
                                                                    PYTHONUNBUFFERED="1"))
    deadline = time.monotonic() + 20
    while '"subscribed"' not in log.read_text():
        assert rater.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    yield broker, url, devs
    rater.terminate()
    rater.wait(20)


@pytest.mark.parametrize("kind", [0, 1], ids=["license", "postpaid"])
def test_agent_and_rater_book_exactly_what_was_served(cloud, tmp_path, kind):
    broker, url, devs = cloud
    d = devs[kind]
    over = {"device.ws": d["workspace"], "device.key": d["key"].hex()}
    if kind:
        over["meter.postpaid"] = 1
    cfg = write_config(tmp_path, broker, d["id"], d["password"], **over)
    proc = AgentProcess(cfg, crash="after_ack:2")
    sdk = SDK(proc.sock)
    accepted = []
    kills = 0
    i = 1
    deadline = time.monotonic() + 60
    while i <= 12:
        assert time.monotonic() < deadline
        try:
            r = sdk.call(op="start")
            if not r["allowed"]:
                time.sleep(0.05)
                continue
            sdk.call(op="record", round=r["round"], item="tour-guide-image", count=i)
            e = sdk.call(op="end", round=r["round"])
            assert e["code"] == 0, e
            accepted.append(i)
            i += 1
            time.sleep(0.1)
        except (ConnectionError, OSError):
            sdk.close()
            kills += 1
            try:
                proc = AgentProcess(cfg)
            except AgentDied:
                raise
            sdk = SDK(proc.sock)
    sdk.close()
    assert proc.terminate() == 0, proc.log()
    assert kills == 1
    want = (len(accepted), 1200 * sum(accepted))
    deadline = time.monotonic() + 20
    while ledger(url, d["id"])[:2] != want and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ledger(url, d["id"])[:2] == want
    # the device reported the firmware it runs (protocol message FIRMWARE, once per boot), and
    # the fleet API's device view shows it
    engine = db.make_engine(url)
    with engine.connect() as conn:
        shown = queries.device_detail(conn, d["id"], None, int(time.time() * 1000), 60)
    engine.dispose()
    assert shown["firmware"] == VERSION + " agent"
