"""Scale-out: three rater processes sharing the subscription on one PostgreSQL ledger, with a
rater kill -9, duplicates, power cuts and a broker restart; the audit stays exact. Skipped
with the reason when no PostgreSQL answers (tools/pgcheck.py; CI starts one)."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from edgemeter.tools import pgcheck

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def pg_db() -> str:
    why = pgcheck.reachable()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL required under CI: {why}")
        pytest.skip(f"no PostgreSQL: {why}")
    import psycopg
    base = pgcheck.pg_url()
    name = "edgemeter_sim_" + secrets.token_hex(4)
    with psycopg.connect(base, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    u = urlsplit(base)
    yield urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))
    with psycopg.connect(base, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_three_raters_on_postgresql(pg_db: str, tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "edgemeter.tools.cli", "sim", "--devices", "100", "--rounds", "10000",
                           "--raters", "3", "--db", pg_db, "--faults", "rater,dup,power,broker,partition",
                           "--seed", "4", "--quiet", "--report", str(report)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    import json
    r = json.loads(report.read_text())
    a = r["audit"]
    assert r["raters"] == 3 and r["faults"]["rater"] >= 1
    assert a["served"] == {"rounds": 10000, "ucny": a["ledger"]["ucny"]} and a["ledger"]["rounds"] == 10000
    assert a["lost_rounds"] == 0 and a["duplicated_rounds"] == 0 and a["rebuild"]["differences"] == 0
