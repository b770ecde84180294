"""`edgemeter demo` as a subprocess, started as a terminal starts a foreground job (its own
process group) and stopped as a terminal's Ctrl-C stops one: SIGINT to the whole group
(os.killpg). The broker, the rater and the dashboard run in sessions of their own, so only the
demo takes the signal; it drains, stops them and prints an audit that passes, at any moment of
the run. A second SIGINT stops at once and says what was not drained. No child is left running,
and the scratch work directory is removed after a passing audit unless --keep or --workdir."""
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
import pytest

ROOT = Path(__file__).resolve().parents[2]
READY = "Ctrl-C stops everything"


def children(tmp_path: Path) -> dict[int, str]:
    """Every live process whose command line names tmp_path (the demo's children all do:
    Mosquitto's configuration, the rater's and the dashboard's ledger URL)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(tmp_path) in cmd:
            found[int(pid)] = cmd
    return found


class Demo:
    """The demo in its own process group, its stdout read line by line."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.tmp = tmp_path
        port = [] if "--port" in args else ["--port", "0"]
        self.p = subprocess.Popen([sys.executable, "-m", "edgemeter.tools.cli", "demo", "--devices", "12", "--rate", "1",
                                   *port, "--duration", "300", *args],
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  process_group=0, env=dict(os.environ, PYTHONUNBUFFERED="1", TMPDIR=str(tmp_path)))
        self.lines: list[str] = []

    def until(self, text: str) -> str:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"the demo ended before printing {text!r}:\n" + self.text[-3000:])

    def ctrl_c(self) -> None:
        os.killpg(self.p.pid, signal.SIGINT)       # what a terminal does: the whole foreground group

    def finish(self, timeout: float = 240) -> int:
        out, _ = self.p.communicate(timeout=timeout)
        self.lines.append(out)
        return self.p.returncode

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def kill(self) -> None:
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()
        for pid in children(self.tmp):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def dashboard(d: Demo) -> tuple[str, str]:
    m = re.search(r"dashboard\s+(http://\S+/)#token=(\S+)", d.text)
    assert m, d.text
    return m.group(1), m.group(2)


def api(url: str, token: str, path: str) -> dict:
    req = urllib.request.Request(url + "api/v1" + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
        return json.loads(r.read())


def own_sessions(d: Demo) -> dict[int, str]:
    """The demo's children (the demo itself excluded), each checked to be outside the demo's
    session: the terminal's SIGINT cannot reach them."""
    kids = {pid: cmd for pid, cmd in children(d.tmp).items() if pid != d.p.pid}
    for pid in kids:
        assert os.getsid(pid) != os.getsid(d.p.pid) and os.getpgid(pid) != d.p.pid, kids[pid]
    return kids


def audit_passed(text: str) -> int:
    assert "AUDIT PASSED" in text, text[-3000:]
    m = re.search(r"served\s+(\d+) rounds, (\d+) uCNY.*\n\s+ledger\s+(\d+) rounds, (\d+) uCNY", text)
    assert m and m.group(1) == m.group(3) and m.group(2) == m.group(4), text[-3000:]
    return int(m.group(1))


@pytest.mark.parametrize("moment", ["set-up", "ready", "serving"])
def test_ctrl_c_to_the_foreground_group_drains_and_audits(tmp_path: Path, moment: str) -> None:
    """set-up: during the store and broker set-up (default scratch directory: removed after);
    ready: the moment the demo says it runs (--keep: kept); serving: while the dashboard shows
    booked rounds, after a partition of some devices and corrupted messages (--workdir: kept)."""
    work = tmp_path / "work"
    args = {"set-up": [], "ready": ["--keep"],
            "serving": ["--workdir", str(work), "--faults", "partition,tamper", "--fault-every", "2"]}
    d = Demo(tmp_path, *args[moment])
    try:
        d.until("edgemeter demo: starting in")
        booked = 0
        if moment != "set-up":
            d.until(READY)
            kids = own_sessions(d)
            assert any("mosquitto" in c for c in kids.values()) and any(" rater " in c for c in kids.values()) \
                and any(" dashboard " in c for c in kids.values()), kids
        if moment == "serving":
            url, token = dashboard(d)
            deadline = time.monotonic() + 90
            dead: list = []
            while time.monotonic() < deadline and (booked < 20 or not dead):
                booked = sum(int(r["rounds"]) for r in api(url, token, "/usage/devices")["items"])
                dead = api(url, token, "/dead-letters")["items"]
                time.sleep(0.5)
            assert booked >= 20          # the dashboard's API shows rounds the fleet published
            # what the operator looks at: the tampered copies as dead letters, the alerts
            assert {r["reason"] for r in dead} == {"bad_mac"}, dead
            kinds = {a["kind"] for a in api(url, token, "/alerts")["items"]}
            assert "license_expiring" in kinds, kinds
            with urllib.request.urlopen(url, timeout=10) as r:   # the dashboard page itself
                assert r.status == 200 and b"<html" in r.read().lower()
        d.ctrl_c()
        rc = d.finish()
    finally:
        d.kill()
    assert rc == 0, d.text[-3000:]
    assert audit_passed(d.text) >= booked and "Traceback" not in d.text
    assert children(tmp_path) == {}, "a child outlived the demo"
    scratch = list(tmp_path.glob("edgemeter-demo-*"))
    if moment == "set-up":
        assert scratch == [] and "removed" in d.text
    elif moment == "ready":
        assert len(scratch) == 1 and (scratch[0] / "ledger.db").exists() and "kept" in d.text
    else:
        assert scratch == [] and (work / "ledger.db").exists() and "kept" in d.text


def test_a_second_ctrl_c_stops_at_once_and_says_what_was_not_drained(tmp_path: Path) -> None:
    d = Demo(tmp_path)
    try:
        d.until(READY)
        assert own_sessions(d)
        d.until("rounds")                 # the first progress line: serving
        d.ctrl_c()
        time.sleep(0.2)
        d.ctrl_c()
        rc = d.finish(timeout=120)
    finally:
        d.kill()
    assert rc == 130, d.text[-3000:]
    m = re.search(r"edgemeter demo: stopped at once: (.+)", d.text)
    assert m and ("drained" in m.group(1) or "audit" in m.group(1)), d.text[-3000:]
    assert "Traceback" not in d.text and "AUDIT PASSED" not in d.text
    assert children(tmp_path) == {}, "a child outlived the demo"
    kept = list(tmp_path.glob("edgemeter-demo-*"))      # nothing audited: the work directory stays
    assert len(kept) == 1 and f"work directory kept: {kept[0]}" in d.text


def test_bad_arguments_are_refused_before_anything_starts(tmp_path: Path) -> None:
    for args, what in ((["--faults", "partition,nosuch"], "unknown faults ['nosuch']"),
                       (["--devices", "1"], "a device count must be from 2"), (["--pool-minutes", "0"], "--pool-minutes > 0")):
        p = subprocess.run([sys.executable, "-m", "edgemeter.tools.cli", "demo", *args], cwd=ROOT,
                           capture_output=True, text=True, env=dict(os.environ, TMPDIR=str(tmp_path)), timeout=60)
        assert p.returncode == 2 and what in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
    assert list(tmp_path.iterdir()) == []


def test_a_busy_dashboard_port_is_one_line_and_leaves_nothing_running(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        d = Demo(tmp_path, "--port", str(port), "--faults", "")
        try:
            rc = d.finish(timeout=120)
        finally:
            d.kill()
    assert rc == 1 and "Traceback" not in d.text, d.text[-3000:]
    m = re.search(r"edgemeter demo: the dashboard did not start: (.+)", d.text)
    assert m and str(port) in m.group(1), d.text[-3000:]     # the dashboard's own one-line reason
    assert children(tmp_path) == {}, "a child outlived the demo"
