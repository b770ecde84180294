"""The fleet on a 3-node RabbitMQ cluster (tools.rabbit): devices over MQTT to every node, two
raters consuming the quorum queue over AMQP into PostgreSQL, every fault including a node
killed with kill -9 (devices move to the other nodes, a rater reconnects) and a rater killed;
the audit stays exact. Skipped with the reason where RabbitMQ or PostgreSQL is missing, never
under CI=true."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgemeter.tools.rabbit import SBIN
from test_campaign_ci import run_sim
from test_sim_scaleout_pg import pg_db  # noqa: F401 - the fixture (a scratch PostgreSQL database)

pytestmark = pytest.mark.skipif(not (SBIN / "rabbitmq-server").exists() and os.environ.get("CI") != "true",
                                reason="RabbitMQ not installed (apt-get install rabbitmq-server; tools/dev.sh does)")


def check(r: dict, rounds: int) -> None:
    a = r["audit"]
    assert a["served"]["rounds"] == rounds == a["ledger"]["rounds"]
    assert a["served"]["ucny"] == a["ledger"]["ucny"] > 0
    assert a["lost_rounds"] == 0 and a["duplicated_rounds"] == 0 and a["devices_differing"] == 0
    assert a["rebuild"]["differences"] == 0 and a["mismatches"] == 0
    assert a["license"]["pool_conserved"] and a["postpaid"]["charged_list_ucny"] == a["postpaid"]["booked_ucny"] > 0
    assert r["faults"].get("node") == 1 and r["faults"].get("rater", 0) >= 1 and r["faults"].get("broker") == 1
    assert r["links"]["drops"] > 0 and r["links"]["auth_refused"] == 0
    assert r["drain"]["not_acked"] == 0


def test_cluster_campaign_with_a_node_killed(pg_db: str, tmp_path: Path) -> None:  # noqa: F811
    r = run_sim(tmp_path, "--devices", "30", "--rounds", "3000", "--broker", "rabbitmq", "--broker-nodes", "3",
                "--raters", "2", "--db", pg_db, "--faults", "all", "--seed", "5", timeout=900)
    check(r, 3000)


@pytest.mark.full
def test_full_cluster_campaign(pg_db: str, tmp_path: Path) -> None:  # noqa: F811
    r = run_sim(tmp_path, "--devices", "100", "--rounds", "20000", "--broker", "rabbitmq", "--broker-nodes", "3",
                "--raters", "2", "--db", pg_db, "--faults", "all", "--seed", "11", "--drain-timeout", "600",
                timeout=3600)
    check(r, 20000)
