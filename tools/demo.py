"""`edgemeter demo`: the whole system on this machine, running until Ctrl-C.

    edgemeter demo [--devices 300] [--rate 0.2] [--port 8080] [--duration S] [--workdir DIR]
                   [--faults LIST]

Starts Mosquitto (the shipped configuration, passwords and ACL), one `edgemeter rater` on a
SQLite ledger, the dashboard and HTTP API (`edgemeter dashboard`), and a simulated fleet
(tools.sim): a few hundred devices running the real device meter, each with its own MQTT
connection and credentials, half in a License workspace (a pool of activated licences), half
on a postpaid account (trial, savings plan, balance), serving billing.txt's typical rounds at
--rate rounds per second each. It prints where to look: the dashboard address with an
operator token, the ledger's path, the broker's port. Ctrl-C (SIGINT) or SIGTERM, or the end
of --duration, stops it cleanly: the devices seal and publish everything, the cloud acks it,
the rater, dashboard and broker stop, and the audit compares what every device served with
the ledger, to the µCNY. The work directory (ledger, journals, logs) is kept and printed.
Exit status 0 when the audit passes, 1 when it finds a difference, 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edgemeter demo", description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=300, help="simulated devices (half License, half postpaid)")
    ap.add_argument("--rate", type=float, default=0.2, help="rounds per second per device")
    ap.add_argument("--port", type=int, default=8080, help="dashboard port (0: any free port)")
    ap.add_argument("--duration", type=float, help="stop by itself after this many seconds")
    ap.add_argument("--workdir", help="where the ledger, journals and logs go (default: a new temp dir, kept)")
    ap.add_argument("--faults", default="", help="tools.sim faults to inject, e.g. partition,dup (default none)")
    ap.add_argument("--seed", type=int, default=1)
    return ap


class Dashboard:
    def __init__(self, url: str, port: int, token: str, log: Path) -> None:
        self.log = log
        with open(log, "ab") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", "edgemeter.tools.cli", "dashboard", "--db", url, "--port",
                                          str(port), "--token", token], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.address = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            if "serving http://" in text:
                self.address = text.split("serving ", 1)[1].split()[0]
                break
            if self.proc.poll() is not None:
                raise RuntimeError("the dashboard exited:\n" + text[-2000:])
            time.sleep(0.1)
        if not self.address:
            raise RuntimeError("the dashboard did not start:\n" + log.read_text()[-2000:])
        self.token = token

    def get(self, path: str) -> bytes:
        req = urllib.request.Request(self.address.rstrip("/") + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read()

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.devices < 2 or args.rate <= 0:
        print("edgemeter demo: need --devices >= 2 and --rate > 0", file=sys.stderr)
        return 2
    from edgemeter.tools import sim
    from edgemeter.tools.sim.run import Simulation

    work = Path(args.workdir or tempfile.mkdtemp(prefix="edgemeter-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    duration = args.duration if args.duration is not None else 10.0 ** 9
    expect_rounds = int(min(duration, 30 * 86400) * args.rate * args.devices) + 1000
    sargs = sim.parser().parse_args(["--devices", str(args.devices), "--rate", str(args.rate),
                                     "--duration", str(duration), "--seed", str(args.seed),
                                     "--rounds", str(min(expect_rounds, 10_000_000)), "--faults", args.faults,
                                     "--lease-validity", "300"])
    faults = set(sim.FAULTS) if args.faults == "all" else {f for f in args.faults.split(",") if f}
    s = Simulation(sargs, faults, work)
    token = "demo-" + secrets.token_urlsafe(24)
    dash: dict[str, Any] = {}

    def stop(signum: int, frame: Any) -> None:
        if not s.stop:
            sys.stderr.write("\nedgemeter demo: stopping (devices drain, then the audit)...\n")
        s.stop = True

    def ready(sim_: Simulation) -> None:
        d = Dashboard(sim_.url, args.port, token, work / "dashboard.log")
        dash["d"] = d
        assert sim_.broker is not None
        print("\n".join([
            "",
            "edgemeter demo is running:",
            f"  dashboard   {d.address}#token={token}",
            f"              (API: curl -H 'Authorization: Bearer {token}' {d.address}api/v1/overview)",
            f"  ledger      {sim_.url}",
            f"  broker      {sim_.broker.url} (Mosquitto with passwords and ACL; its files in {sim_.broker.workdir})",
            f"  raters      {len(sim_.raters)} process(es), logs in {work}",
            f"  fleet       {len(sim_.fleet.devices) if sim_.fleet else 0} devices, "
            f"License workspace {sim_.ids['license_ws']} and postpaid workspace {sim_.ids['postpaid_ws']}"
            f" of account {sim_.ids['account']}, {args.rate} rounds/s each",
            "  Ctrl-C stops everything and prints the audit.",
            ""]), flush=True)

    s.on_ready = ready
    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    report = None
    try:
        report = s.run()
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        if "d" in dash:
            dash["d"].stop()
        s.close()
    print(sim.summary(report))
    print(f"work directory kept: {work}")
    return 0 if report["audit"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
