"""`edgemeter agent --config FILE`: the Linux device agent as a daemon.

    edgemeter agent --config /etc/edgemeter/agent.toml [--check]

Runs the meter (agent.api.Agent over firmware_py.meter, journal directory with fsync), the
MQTT supervisor (agent.sync) and the local Unix-socket API (agent.sockapi). Logs go to stderr
(journald under systemd). --check validates the configuration and exits.

Lifecycle:
 A1. Start: validate the configuration (every problem printed with its key, exit 2), open the
     journal (recovery after a power cut or kill -9: meter_base rule M7), then the socket API and
     the network thread. The report of the recovery is logged.
 A2. Run: Meter.tick every agent.tick_ms (unended rounds, batches due, resends, lease renewal,
     checkpoints and compaction); events are logged.
 A3. SIGTERM / SIGINT: stop accepting socket requests, drain the meter (settle open rounds,
     seal everything, return the lease when agent.return_lease, as lease rule L8 says), keep
     the link up to agent.shutdown_wait_s seconds for the acks of what is unacked, then
     disconnect, checkpoint and close the journal, exit 0. What is not acked by then stays in
     the journal and is re-sent at the next start.
Exit status: 0 after a clean shutdown, 2 for a bad configuration or command line, 1 when the
journal directory or the socket cannot be set up.
"""
from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from typing import Any

from edgemeter.agent import config as C
from edgemeter.agent import failpoints
from edgemeter.cloud import cliargs   # the command line's one-line errors (stdlib only)

log = logging.getLogger("edgemeter.agent")


def main(argv: list[str] | None = None) -> int:
    ap = cliargs.Parser(prog="edgemeter agent", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, metavar="FILE", help="site file (TOML or .json)")
    ap.add_argument("--check", action="store_true", help="validate the configuration and exit")
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        cfg = C.load(args.config)
    except C.ConfigError as exc:
        for p in exc.problems:
            print("edgemeter agent: %s: %s" % (args.config, p), file=sys.stderr)
        return 2
    try:
        failpoints.load()   # a malformed EDGEMETER_FAILPOINTS is refused before anything runs
    except failpoints.FailpointError as exc:
        print("edgemeter agent: %s" % exc, file=sys.stderr)
        return 2
    if args.check:
        print("edgemeter agent: %s: configuration OK" % args.config)
        return 0
    logging.basicConfig(level=cfg["agent"]["log_level"].upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(cfg)


def run(cfg: dict[str, Any], ready: threading.Event | None = None,
        stop: threading.Event | None = None) -> int:
    """The daemon body (A1-A3); `stop` may be set by the caller instead of a signal."""
    from edgemeter.agent.api import Agent
    from edgemeter.agent.sockapi import SocketAPI
    from edgemeter.agent.sync import Sync

    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    try:
        agent = Agent.from_config(cfg)
    except OSError as exc:
        log.error("journal directory %s: %s", cfg["journal"]["dir"], exc)
        return 1
    rep = agent.report
    j = rep["journal"]
    log.info("meter open: boot %d, %d records (%d unacked), %d batches to resend, %d rounds "
             "unsealed, %d re-deducted, torn %s, damaged %s", rep["boot"], j["records"],
             j["unacked"], rep["resend"], rep["unsealed"], rep["rededucted"], j["torn"],
             j["damaged"])
    if j["damaged"] or rep["bad_records"]:
        log.warning("journal damage: %d damaged span(s) (%d quarantined as .bad files in %s), %d "
                    "unreadable record(s); the rest was recovered", len(j["damaged"]), j["quarantined"],
                    cfg["journal"]["dir"], rep["bad_records"])
    if rep.get("state_lost"):
        log.warning("both state files were missing: boot counter taken from the journal and the clock "
                    "(boot %d); see agent/README.md, lost state", rep["boot"])
    api = None
    if cfg["api"]["socket"]:
        try:
            api = SocketAPI(cfg["api"]["socket"], agent, cfg["api"]["socket_mode"],
                            cfg["api"]["max_line"], cfg["api"]["max_connections"]).serve()
        except OSError as exc:
            log.error("socket %s: %s", cfg["api"]["socket"], exc)
            agent.close()
            return 1
    sync = Sync(agent, cfg["mqtt"]).start()
    if ready is not None:
        ready.set()
    tick = cfg["agent"]["tick_ms"] / 1000
    while not stop.wait(tick):
        agent.tick()
        sync.wake.set()
        _log_events(agent)
    log.info("stopping")
    if api is not None:
        api.stop()
    agent.drain(cfg["agent"]["return_lease"])
    sync.wake.set()
    deadline = time.monotonic() + cfg["agent"]["shutdown_wait_s"]
    while time.monotonic() < deadline:
        st = agent.status()
        if not st["unacked"] and not st["unsealed"] and sync.up:
            break
        agent.tick()
        sync.wake.set()
        time.sleep(0.05)
    time.sleep(0.1)  # the lease return's grant, if it is on its way
    sync.stop()
    _log_events(agent)
    st = agent.status()
    agent.close()
    log.info("stopped: %d rounds this run, %d batches unacked, %d rounds unsealed",
             st["rounds"], st["unacked"], st["unsealed"])
    return 0


def _log_events(agent: Any) -> None:
    for name, detail in agent.events():
        log.info("event %s %s", name, detail)
