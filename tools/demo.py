"""`edgemeter demo`: the whole system on one machine (the one you run it on), until Ctrl-C.

    edgemeter demo [--devices 300] [--rate 0.2] [--port 8080] [--duration S] [--workdir DIR]
                   [--keep] [--faults LIST] [--fault-every 30] [--pool-minutes 30]

Starts Mosquitto (the shipped configuration, passwords and ACL), one `edgemeter rater` on a
SQLite ledger, the dashboard and HTTP API (`edgemeter dashboard`), and a simulated fleet
(tools.sim): a few hundred devices running the real device meter, each with its own MQTT
connection and credentials, half in a License workspace, half on a postpaid account (trial,
savings plan, balance), serving billing.txt's typical rounds at --rate rounds per second each.
It prints where to look: the dashboard address with an operator token, the ledger's path, the
broker's port.

What an operator sees (rules D1-D3):
 D1. The License pool holds what the License half of the fleet uses in about --pool-minutes
     at --rate (list price; about ROUND_UCNY per round on average), so its burn-down moves
     within minutes; its low_units term is two thirds of that, so a pool_low alert appears
     after a few minutes. A second purchase, made 11.5 months ago and never activated, raises
     a license_expiring alert (its activation window closes within the month). When the pool
     is empty the License devices refuse rounds (counted, never lost) until licences are
     bought and activated (`edgemeter admin buy-license`, `activate`).
 D2. Faults (--faults, default partition,rater,tamper) fire one after another, one every
     --fault-every seconds (default 30) from the start of serving: devices cut off for a few seconds, a rater
     killed and restarted, corrupted copies of batches (dead letters with reason bad_mac in
     Operations). --faults '' runs without any.
 D3. Stopping: Ctrl-C (SIGINT to the terminal's foreground process group), SIGTERM or the end of
     --duration stop serving new rounds; every device seals and publishes what it holds and the
     cloud acks it (drain), the rater, the dashboard and the broker stop in that order, and the
     audit compares what every device served with the ledger, to the µCNY. The children run in
     their own sessions, so the terminal's Ctrl-C reaches only this process, which stops them
     after the drain. A second Ctrl-C (or SIGTERM) stops everything at once and says what was not
     drained (exit status 130; the work directory is kept). The scratch work directory is
     removed after a passing audit unless --keep or --workdir was given.
Exit status 0 when the audit passes, 1 when it finds a difference or a part could not start
(one line says which and why), 2 for bad arguments, 130 when stopped at once.
"""
from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from edgemeter.cloud import cliargs

ROUND_UCNY = 6_700        # the sim workload's average list price per round (campaign figures)
DEFAULT_FAULTS = "partition,rater,tamper"


def parser() -> argparse.ArgumentParser:
    ap = cliargs.Parser(prog="edgemeter demo", description=__doc__.split("\n")[0], types=cliargs.SIM_TYPES)
    ap.add_argument("--devices", type=int, default=300, help="simulated devices, half License, half postpaid (default 300)")
    ap.add_argument("--rate", type=float, default=0.2, help="rounds per second per device (default 0.2)")
    ap.add_argument("--port", type=int, default=8080, help="dashboard port on 127.0.0.1 (default 8080; 0: any free port)")
    ap.add_argument("--duration", type=float, help="stop by itself after this many seconds")
    ap.add_argument("--workdir", help="where the ledger, journals and logs go, kept (default: a new "
                                      "temporary directory, removed after a passing audit)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    ap.add_argument("--faults", default=DEFAULT_FAULTS,
                    help=f"tools.sim faults, one after another (default {DEFAULT_FAULTS}; '' for none)")
    ap.add_argument("--fault-every", type=float, default=30.0, help="seconds between the faults (default 30)")
    ap.add_argument("--pool-minutes", type=float, default=30.0,
                    help="the License pool lasts about this long at --rate (default 30)")
    ap.add_argument("--seed", type=int, default=1)
    return ap


class DemoError(RuntimeError):
    """A part of the demo could not start (the message says which and why)."""


class Interrupted(BaseException):
    """A second Ctrl-C or SIGTERM: stop at once (rule D3)."""


class Dashboard:
    def __init__(self, url: str, port: int, token: str, log: Path) -> None:
        self.url, self.port, self.token, self.log = url, port, token, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""

    def start(self) -> "Dashboard":
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", "edgemeter.tools.cli", "dashboard", "--db", self.url,
                                          "--port", str(self.port), "--token", self.token], stdout=f,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if "serving http://" in text:
                self.address = text.split("serving ", 1)[1].split()[0]
                return self
            if self.proc.poll() is not None:
                last = (text.strip().splitlines() or ["(no output)"])[-1]
                raise DemoError(f"the dashboard did not start: {last} (log: {self.log})")
            time.sleep(0.1)
        raise DemoError(f"the dashboard did not answer within 60 s (log: {self.log})")

    def get(self, path: str) -> bytes:
        req = urllib.request.Request(self.address.rstrip("/") + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read()

    def stop(self, timeout: float = 15.0) -> int | None:
        p = self.proc
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return None if p is None else p.returncode


class Stopper:
    """The demo's SIGINT/SIGTERM handler (rule D3): the first asks the simulation to stop
    serving and drain, the second raises Interrupted wherever the demo is."""

    def __init__(self) -> None:
        self.sim: Any = None
        self.count = 0
        self.old = {sig: signal.signal(sig, self) for sig in (signal.SIGINT, signal.SIGTERM)}

    def __call__(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count > 1:
            raise Interrupted()
        if self.sim is not None:
            self.sim.stop = True
        sys.stderr.write("\nedgemeter demo: stopping: no new rounds; the devices drain, then the audit "
                         "(Ctrl-C again stops at once)\n")
        sys.stderr.flush()

    def attach(self, sim: Any) -> None:
        self.sim = sim
        sim.stop = self.count > 0

    def restore(self) -> None:
        for sig, h in self.old.items():
            signal.signal(sig, h)


def ignore_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def not_drained(s: Any) -> str:
    """What a stop at once left behind, from the devices' meters (ground truth: the simulator)."""
    f = s.fleet
    if f is None:
        return "stopped during set-up: no device had served a round"
    waiting = [d for d in f.devices if d.meter.s.outbox or d.meter.npend or d.meter.rounds]
    batches = sum(len(d.meter.s.outbox) for d in waiting)
    served = sum(d.rounds for d in f.devices)
    if not waiting:
        return f"every device had drained ({served} rounds served); the audit did not run"
    return (f"{len(waiting)} of {len(f.devices)} devices had not drained ({batches} batch(es) not acknowledged); "
            f"{served} rounds served in all; their journals are in {s.work / 'devices'}; no audit ran")


def demo_simulation(args: argparse.Namespace, work: Path) -> Any:
    """The tools.sim Simulation the demo runs: open-ended, paced, its pool and faults per D1-D2."""
    from edgemeter.tools import sim
    from edgemeter.tools.sim.run import Simulation

    duration = args.duration if args.duration is not None else 10.0 ** 9
    expect_rounds = int(min(duration, 30 * 86400) * args.rate * args.devices) + 1000
    sargs = sim.parser().parse_args(["--devices", str(args.devices), "--rate", str(args.rate),
                                     "--duration", str(duration), "--seed", str(args.seed),
                                     "--rounds", str(min(expect_rounds, 10_000_000)), "--faults", args.faults,
                                     "--lease-validity", "300"])
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    s = Simulation(sargs, set(faults), work)
    units = int(args.pool_minutes * 60 * args.rate * (args.devices // 2) * ROUND_UCNY)
    s.store_opts = {"units": units, "exact": True, "low": units * 2 // 3, "expiring": True}
    s.fault_times = [(args.fault_every * (i + 1), f) for i, f in enumerate(faults)]
    return s


def check_args(args: argparse.Namespace) -> str | None:
    from edgemeter.tools import sim

    if args.devices < 2 or args.rate <= 0:
        return "need --devices >= 2 and --rate > 0"
    if args.pool_minutes <= 0 or args.fault_every <= 0:
        return "need --pool-minutes > 0 and --fault-every > 0"
    bad = {f.strip() for f in args.faults.split(",") if f.strip()} - set(sim.FAULTS)
    if bad:
        return f"unknown faults {sorted(bad)}; known: {', '.join(sim.FAULTS)}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    why = check_args(args)
    if why:
        print(f"edgemeter demo: {why}", file=sys.stderr)
        return 2
    stopper = Stopper()
    own = args.workdir is None
    work = Path(args.workdir or tempfile.mkdtemp(prefix="edgemeter-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"edgemeter demo: starting in {work} (Ctrl-C stops it)", flush=True)
    s: Any = None
    dash: list[Dashboard] = []
    report = None
    failed = False
    try:
        s = demo_simulation(args, work)
        stopper.attach(s)
        s.on_ready = lambda sim_: ready(sim_, args, dash)
        report = s.run()
    except Interrupted:
        ignore_signals()
        print("\nedgemeter demo: stopped at once: " + (not_drained(s) if s is not None else "before set-up"),
              file=sys.stderr, flush=True)
    except DemoError as e:
        print(f"\nedgemeter demo: {e}", file=sys.stderr, flush=True)
        failed = True
    finally:
        ignore_signals()      # the clean-up is bounded; a Ctrl-C now would leave children behind
        for d in dash:
            d.stop(5 if report is None else 15)
        if s is not None:
            if report is not None and s.broker is not None:
                s.broker.stop()                          # a clean stop: Mosquitto saves its state
            s.close()
        stopper.restore()
    if report is None:
        print(f"work directory kept: {work}")
        return 1 if failed else 130
    from edgemeter.tools import sim

    print(sim.summary(report))
    ok = report["audit"]["ok"]
    if ok and own and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
        print(f"work directory {work} removed (--keep keeps it)")
    else:
        print(f"work directory kept: {work}")
    return 0 if ok else 1


def ready(s: Any, args: argparse.Namespace, dash: list[Dashboard]) -> None:
    """Every device link is up: start the dashboard and say where to look (not when stopping)."""
    if s.stop:
        return
    token = "demo-" + secrets.token_urlsafe(24)
    d = Dashboard(s.url, args.port, token, s.work / "dashboard.log")
    dash.append(d)
    d.start()
    assert s.broker is not None
    faults = ", ".join(f"{k} at {t:.0f} s" for t, k in s.fault_times) or "none"
    print("\n".join([
        "",
        "edgemeter demo is running:",
        f"  dashboard   {d.address}#token={token}",
        f"              (API: curl -H 'Authorization: Bearer {token}' {d.address}api/v1/overview)",
        f"  ledger      {s.url}",
        f"  broker      {s.broker.url} (Mosquitto with passwords and ACL; its files in {s.broker.workdir})",
        f"  raters      {len(s.raters)} process(es), logs in {s.work}",
        f"  fleet       {len(s.fleet.devices) if s.fleet else 0} devices, "
        f"License workspace {s.ids['license_ws']} and postpaid workspace {s.ids['postpaid_ws']}"
        f" of account {s.ids['account']}, {args.rate} rounds/s each",
        f"  pool        lasts about {args.pool_minutes:g} minutes at this rate; faults: {faults}",
        "  Ctrl-C stops everything and prints the audit.",
        ""]), flush=True)


if __name__ == "__main__":
    sys.exit(main())
