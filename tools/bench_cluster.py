"""Devices on a RabbitMQ cluster: memory per connected device per node, connect rate.

    python -m edgemeter.tools.bench_cluster [--json] [--quick] [--devices N] [--nodes K]

`run()` returns rows {key, name, value, unit, how} (module `cluster` of `edgemeter bench`; its
rows say why when RabbitMQ is not installed). One run: a K-node cluster (tools.rabbit), N device
users loaded (cloud.rabbitmq), then N device connections as the simulator makes them
(tools.sim.net: the firmware's MQTT codec, user and client id "<ws>/<dev>", clean_session false,
QoS 1 subscription to em/<ws>/<dev>/down/#; device i on node i mod K). Measured: the resident
memory of every node's Erlang VM (/proc, VmRSS of the process group) before and after, per
device on each node; the time until every link is up and subscribed. Each persistent session
is a quorum queue (mqtt.durable_queue_type = quorum) with a member on every node, so each node
holds a queue member for every device, whichever node it is connected to.
"""
from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from edgemeter.tools import benchrows


def _rss_mb(pid: int) -> float:
    """Resident MB of pid and its descendants (the Erlang VM under the rabbitmq-server script)."""
    total = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += next(int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmRSS:"))
            pids += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total / 1024


def _skipped(why: str) -> list[dict[str, Any]]:
    return [{"key": "cluster.mb_per_device_per_node", "name": "RabbitMQ cluster: memory per device per node",
             "value": "skipped", "unit": "", "how": why}]


def run(quick: bool = False, devices: int | None = None, nodes: int = 3) -> list[dict[str, Any]]:
    from edgemeter.tools.rabbit import SBIN, RabbitCluster
    from edgemeter.tools.sim.net import Link, Net

    if not (SBIN / "rabbitmq-server").exists():
        return _skipped("RabbitMQ not installed (apt-get install rabbitmq-server)")
    n = devices or (200 if quick else 1000)
    ws = 1
    regs = [(ws, 1001 + i, "pw%06d" % i) for i in range(n)]
    rc = RabbitCluster(nodes)
    try:
        t = time.monotonic()
        rc.start()
        start_s = time.monotonic() - t
        rc.load(regs)
        time.sleep(2)
        before = [_rss_mb(p.pid) for p in rc.procs if p is not None]
        net = Net(rc.host, rc.mqtt_ports, random.Random(1))
        for w, dev, pw in regs:
            net.add(Link(net, w, dev, "%d/%d" % (w, dev), pw, _nothing, _nothing))
        t = time.monotonic()
        while net.up() < n and time.monotonic() - t < 900:
            net.scan()
            net.poll(0.02)
        connect_s = time.monotonic() - t
        for _ in range(100):     # the SUBACKs (queue declarations) settle
            net.poll(0.05)
        time.sleep(3)
        after = [_rss_mb(p.pid) for p in rc.procs if p is not None]
        up = net.up()
        net.close()
    finally:
        rc.close()
    per = [(a - b) / n for a, b in zip(after, before)]
    how = (f"{nodes} nodes (RabbitMQ {_version()}), {up} of {n} devices connected and subscribed, device i on node "
           f"i mod {nodes}; a quorum-queue session per device with a member on every node")
    return [
        {"key": "cluster.mb_per_device_per_node", "name": "RabbitMQ cluster: memory per connected device per node",
         "value": round(max(per), 3), "unit": "MB",
         "how": how + "; node RSS grew by " + ", ".join(f"{a - b:.0f}" for a, b in zip(after, before)) + " MB"},
        {"key": "cluster.node_base_mb", "name": "RabbitMQ cluster: node memory with no device",
         "value": round(max(before)), "unit": "MB", "how": "RSS of each node's Erlang VM after start: "
                                                            + ", ".join(f"{b:.0f}" for b in before)},
        {"key": "cluster.connects_per_s", "name": "RabbitMQ cluster: devices connected and subscribed per second",
         "value": round(up / max(connect_s, 1e-9)), "unit": "dev/s",
         "how": f"{up} devices in {connect_s:.1f} s (the simulator's links, 200 new TCP connections per scan), "
                f"CONNECT + SUBSCRIBE at QoS 1 on a persistent session"},
        {"key": "cluster.start_s", "name": "RabbitMQ cluster: start and join", "value": round(start_s, 1), "unit": "s",
         "how": f"first node alone, then the other {nodes - 1} together, until every listener answers; "
                f"load average {os.getloadavg()[0]:.1f}"},
    ]


def _nothing(*_: Any) -> None:
    """A link's callbacks: these devices only connect and subscribe."""


def _version() -> str:
    for p in Path("/usr/lib/rabbitmq/lib").glob("rabbitmq_server-*"):
        return p.name.split("-", 1)[1]
    return "?"


def main(argv: list[str] | None = None) -> int:
    ap = benchrows.parser("edgemeter.tools.bench_cluster", __doc__)
    ap.add_argument("--devices", type=int, help="device connections (default 1000, --quick 200)")
    ap.add_argument("--nodes", type=int, default=3)
    args = ap.parse_args(argv)
    return benchrows.emit(run(args.quick, args.devices, args.nodes), args.json)


if __name__ == "__main__":
    sys.exit(main())
