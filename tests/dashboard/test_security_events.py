"""Revoking a token ends the event streams it opened: a real `edgemeter dashboard` process
(uvicorn) over a SQLite ledger, a stream read over a real HTTP connection, the token revoked
by the real `edgemeter admin revoke-token`."""
from __future__ import annotations

import http.client
import json
import subprocess
import sys
from pathlib import Path

from edgemeter.cloud import accounts, db, tokens

ROOT = Path(__file__).resolve().parents[2]


def _admin(*args: str) -> dict:
    p = subprocess.run([sys.executable, "-m", "edgemeter.tools.cli", "admin", *args, "--json"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_revoking_a_token_ends_its_open_event_stream(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    engine = db.open_store(url, create=True)
    with db.write_connect(engine) as conn, conn.begin():
        acc = accounts.create_account(conn, "acme", 1_800_000_000)
        tok = tokens.create(conn, "tenant", acc, "stream test", 1_800_000_000)
    engine.dispose()
    proc = subprocess.Popen([sys.executable, "-m", "edgemeter.tools.cli", "dashboard", "--db", url, "--port", "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=15)   # the stream lasts 300 s unrevoked
        c.request("GET", "/api/v1/events", headers={"Authorization": f"Bearer {tok['token']}"})
        r = c.getresponse()
        assert r.status == 200
        first = b""
        while b"event: change" not in first:
            first += r.readline()
        _admin("revoke-token", "--db", url, "--id", str(tok["id"]))
        rest = r.read()              # returns once the server ends the stream
        assert b"event: revoked" in rest
        c.close()
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        c.request("GET", "/api/v1/events", headers={"Authorization": f"Bearer {tok['token']}"})
        assert c.getresponse().status == 401
    finally:
        proc.terminate()
        proc.wait(10)
