"""`edgemeter sim`: a simulated fleet on real parts, with faults, and an exact audit.

    edgemeter sim [--devices N] [--rounds M | --duration S] [--rate R] [--micropython K]
                  [--mp-heap SIZE] [--mp-firmware auto|unix32|wheel] [--raters R] [--faults LIST|all] [--seed S] [--db URL]
                  [--broker mosquitto|rabbitmq|URL] [--broker-nodes K] [--report FILE] [--workdir DIR]

What runs (see tools/sim/README.md for the design and each fault):
  * Mosquitto from the shipped configuration with passwords and ACL (tools.broker), or with
    --broker rabbitmq a RabbitMQ cluster of --broker-nodes nodes (tools.rabbit; per-device
    users and topic permissions, devices spread over the nodes), unless --broker points at a
    running one; R `edgemeter rater` processes sharing the subscription (or the cluster's
    quorum queue) on --db (SQLite in the work directory by default; a PostgreSQL URL for
    scale-out).
  * One account with the postpaid trial, a savings plan and a balance, a License workspace
    (a pool of activated licences) and a postpaid workspace: devices alternate between them,
    so every run exercises both billing methods. Devices are registered by the registry that
    `edgemeter admin register-device` uses; the broker's passwd/ACL come from it.
  * N devices: the real device meter (firmware_py.meter) on its own journal directory, each
    with its own MQTT connection, client id and password, multiplexed in this process
    (tools.sim.net); plus K real MicroPython firmware processes (firmware_py.main in
    `micropython -X heapsize=SIZE`, tools.sim.mp: by default the 32-bit unix firmware with
    the image frozen in, in 32 KiB, when `edgemeter build-firmware --target unix32` built it).
  * A workload drawn from billing.txt's scenarios (tools.sim.workload), M rounds in total
    (or for S seconds), R rounds/s per device (default: as fast as acks allow).
  * Faults (tools.sim.faults), then drain: every device seals, publishes and waits for its
    acks; then the audit (tools.sim.audit): ground truth vs ledger per device and in total,
    pool, leases and postpaid charges, `admin rebuild --check`.
Exit status 0 when the audit finds no difference, 1 otherwise, 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgemeter.cloud import cliargs

FAULTS = ("power", "partition", "broker", "rater", "dup", "clock", "lease", "book", "full", "tamper", "node")


def _parse_size(text: str) -> str:
    t = text.strip().lower()
    if not t.rstrip("km").isdigit():
        raise argparse.ArgumentTypeError(f"heap size like 32k or 1m, not {text!r}")
    return t


def faults_arg(text: str) -> str:
    """An argparse type: a comma list of FAULTS, or `all`."""
    bad = {f.strip() for f in text.split(",") if f.strip()} - set(FAULTS) if text.strip() != "all" else set()
    if bad:
        raise argparse.ArgumentTypeError(f"unknown faults {sorted(bad)}; known: {', '.join(FAULTS)}, or all")
    return text


faults_arg.__name__ = "fault list"


def parser() -> argparse.ArgumentParser:
    ap = cliargs.Parser(prog="edgemeter sim", description=__doc__.split("\n")[0],
                        types={**cliargs.SIM_TYPES, "faults": faults_arg})
    ap.add_argument("--devices", type=int, default=50, help="simulated meter devices in this process")
    ap.add_argument("--rounds", type=int, default=5000, help="rounds to serve in total (all devices)")
    ap.add_argument("--duration", type=float, help="serve for this many seconds instead of --rounds")
    ap.add_argument("--rate", type=float, help="rounds per second per device (default: as fast as acks allow)")
    ap.add_argument("--micropython", type=int, default=0, metavar="K", help="real MicroPython firmware processes")
    ap.add_argument("--mp-heap", type=_parse_size, default=None,
                    help="their heap (-X heapsize): default 32k on the unix32 firmware, 256k on the "
                         "wheel's (its bytecode in ROMFS as in flash)")
    ap.add_argument("--mp-firmware", choices=("auto", "unix32", "wheel"), default="auto",
                    help="unix32: build/fw-unix32/micropython, the image frozen in (edgemeter "
                         "build-firmware --target unix32; rebuilt when firmware_py changed); wheel: "
                         "the 64-bit micropython wheel with the image in ROMFS; auto: unix32 when built")
    ap.add_argument("--mp-rounds", type=int, default=200, help="rounds per MicroPython device")
    ap.add_argument("--raters", type=int, default=1, help="rater processes sharing the subscription")
    ap.add_argument("--faults", default="", help="comma list of %s, or all" % ",".join(FAULTS))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--db", help="store URL, created or migrated by the simulator (default: SQLite in the work directory)")
    ap.add_argument("--broker", default="mosquitto",
                    help="mosquitto (default: start one with auth), rabbitmq (start a RabbitMQ cluster of "
                         "--broker-nodes nodes with per-device users and topic permissions; raters consume its "
                         "quorum queue over AMQP) or mqtt://HOST:PORT of a running broker that lets the devices "
                         "in (anonymous, e.g. `python -m edgemeter.tools.broker`; the raters use "
                         "EDGEMETER_MQTT_USER/_PASSWORD; no broker faults)")
    ap.add_argument("--broker-nodes", type=int, default=3, help="RabbitMQ nodes with --broker rabbitmq")
    ap.add_argument("--report", help="write the JSON report here")
    ap.add_argument("--workdir", help="keep journals, logs and the store here (default: a temp dir, removed)")
    ap.add_argument("--lease-validity", type=int, default=20, help="License lease validity, seconds")
    ap.add_argument("--drain-timeout", type=float, default=180.0)
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def raise_nofile(want: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit towards want (capped by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, want), hard) if hard != resource.RLIM_INFINITY else max(soft, want)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    faults = set(FAULTS) if args.faults.strip() == "all" else {f for f in args.faults.split(",") if f.strip()}
    bad = faults - set(FAULTS)
    if bad or args.devices < 2 or args.raters < 1 or args.rounds < 1:
        print(f"edgemeter sim: unknown faults {sorted(bad)}" if bad else
              "edgemeter sim: need --devices >= 2, --raters >= 1, --rounds >= 1", file=sys.stderr)
        return 2
    if args.broker not in ("mosquitto", "rabbitmq") and not args.broker.startswith(("mqtt://", "tcp://")):
        print(f"edgemeter sim: --broker must be mosquitto, rabbitmq or mqtt://HOST:PORT, not {args.broker!r}",
              file=sys.stderr)
        return 2
    if args.broker_nodes < 1 or (args.broker == "rabbitmq" and "node" in faults and args.broker_nodes < 3):
        print("edgemeter sim: --broker-nodes must be >= 1, and >= 3 for the node fault (a quorum survives one loss)",
              file=sys.stderr)
        return 2
    from edgemeter.tools.sim.run import Simulation
    own = args.workdir is None
    # absolute: the MicroPython devices run in their image folder and are given paths in it
    work = Path(args.workdir or tempfile.mkdtemp(prefix="edgemeter-sim-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    sim = Simulation(args, faults, work)
    try:
        report = sim.run()
        report["simulator"] = resources()
    finally:
        sim.close()
        if own and not os.environ.get("EDGEMETER_SIM_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1, sort_keys=True, default=str))
    print(summary(report))
    return 0 if report["audit"]["ok"] else 1


def resources() -> dict[str, float]:
    """The simulator process's own cost so far: peak resident MB and CPU seconds (getrusage)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"max_rss_mb": round(ru.ru_maxrss / 1024, 1), "user_s": round(ru.ru_utime, 1),
            "system_s": round(ru.ru_stime, 1)}


def summary(r: dict[str, Any]) -> str:
    a = r["audit"]
    lines = [
        "",
        "edgemeter sim: %d devices (%d meter + %d MicroPython), %d rater(s), seed %d, %.1f s"
        % (r["devices"], r["meter_devices"], r["mp_devices"], r["raters"], r["seed"], r["seconds"]),
        "  served  %d rounds, %d uCNY (ground truth, recorded by the simulator)" % (a["served"]["rounds"], a["served"]["ucny"]),
        "  ledger  %d rounds, %d uCNY in %d batches" % (a["ledger"]["rounds"], a["ledger"]["ucny"], a["ledger"]["batches"]),
        "  lost %d, duplicated %d, devices differing %d, rating mismatches %d"
        % (a["lost_rounds"], a["duplicated_rounds"], a["devices_differing"], a["mismatches"]),
        "  License pool %s; leases booked %d = License bookings on leases %d"
        % (", ".join(f"{k} {v}" for k, v in a["license"]["pool"].items()), a["license"]["leases_booked"],
           a["license"]["on_leases_ucny"]),
        "  postpaid: booked %d uCNY, charged %d (%s)" % (a["postpaid"]["booked_ucny"], a["postpaid"]["charged_list_ucny"],
                                                      ", ".join(f"{k} {v}" for k, v in a["postpaid"]["entries"].items())),
        "  rebuild --check: %d difference(s) over %d rounds in %.2f s" % (a["rebuild"]["differences"],
                                                                       a["rebuild"]["rounds"], a["rebuild"]["seconds"]),
        "  refused rounds (never lost): %s" % (", ".join(f"{k} {v}" for k, v in sorted(r["refused"].items())) or "none"),
        "  dead letters: %s" % (", ".join(f"{k} {v}" for k, v in a["dead_letters"].items()) or "none"),
        "  faults: %s" % (", ".join(f"{k} x{v}" for k, v in sorted(r["faults"].items())) or "none"),
        "  throughput: %.0f rounds/s booked end to end" % r["rounds_per_s"],
    ]
    if "simulator" in r:
        u = r["simulator"]
        lines.append("  simulator process: peak RSS %.0f MB, CPU %.0f s user + %.0f s system (%.0f%% of wall time)"
                     % (u["max_rss_mb"], u["user_s"], u["system_s"],
                        100 * (u["user_s"] + u["system_s"]) / max(r["seconds"], 1e-9)))
    for p in a["problems"]:
        lines.append("  DIFFERENCE: " + p)
    lines.append("AUDIT " + ("PASSED: zero lost, zero duplicated, every balance equal" if a["ok"] else "FAILED"))
    return "\n".join(lines)
