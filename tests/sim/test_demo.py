"""`edgemeter demo` as a subprocess: it starts the broker, the rater, the dashboard and a fleet,
prints where to look; the dashboard answers with the printed operator token while devices
publish; SIGINT stops everything cleanly and the audit it prints passes."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_answers_and_audits_on_sigint(tmp_path: Path) -> None:
    p = subprocess.Popen([sys.executable, "-m", "edgemeter.tools.cli", "demo", "--devices", "24", "--rate", "1",
                          "--port", "0", "--duration", "120", "--workdir", str(tmp_path)],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines: list[str] = []
    try:
        assert p.stdout is not None
        url = token = None
        for line in p.stdout:
            lines.append(line)
            m = re.search(r"dashboard\s+(http://\S+/)#token=(\S+)", line)
            if m:
                url, token = m.group(1), m.group(2)
            if "Ctrl-C stops everything" in line:
                break
        assert url and token, "".join(lines)
        booked = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and booked < 20:
            req = urllib.request.Request(url + "api/v1/usage/devices",
                                         headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(req, timeout=10) as r:
                assert r.status == 200
                body = json.loads(r.read())
            booked = sum(int(row.get("rounds", 0)) for row in body["items"])
            time.sleep(0.5)
        assert booked >= 20, body          # the dashboard's API shows rounds the fleet published
        with urllib.request.urlopen(url, timeout=10) as r:   # the dashboard page itself
            assert r.status == 200 and b"<html" in r.read().lower()
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=180)
        lines.append(out)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    text = "".join(lines)
    assert p.returncode == 0, text[-3000:]
    assert "AUDIT PASSED" in text
    m = re.search(r"served\s+(\d+) rounds, (\d+) uCNY.*\n\s+ledger\s+(\d+) rounds, (\d+) uCNY", text)
    assert m and m.group(1) == m.group(3) and m.group(2) == m.group(4) and int(m.group(1)) >= booked
