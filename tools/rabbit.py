"""A RabbitMQ cluster on loopback ports for tests, benchmarks and the simulator.

    with RabbitCluster(nodes=3) as rc:               # free ports, a temp dir per node
        rc.load(devices=[(ws, dev, password), ...])  # users and permissions (cloud.rabbitmq)
        ... devices: MQTT to 127.0.0.1:rc.mqtt_ports[i]; raters: rc.amqp_url (every node) ...
        rc.kill9(1); rc.start_node(1)               # a node lost and back (its data kept)
    python -m edgemeter.tools.rabbit --nodes 3       # run one in the foreground

Each node is Debian's RabbitMQ server (package rabbitmq-server, 3.10 here; its rabbitmq_mqtt
plugin) started from /usr/lib/rabbitmq/bin with its own node name (em<random>-<i>@localhost),
AMQP, MQTT and Erlang distribution ports on 127.0.0.1, data and log directories, configuration
file, enabled-plugins file and an empty rabbitmq-env.conf (so the system node's settings in
/etc/rabbitmq are not read); the nodes share an Erlang cookie in <workdir>/home (HOME for the
nodes and for rabbitmqctl). A system RabbitMQ on the standard ports is left alone.

The first node starts alone; the others are started with classic peer discovery naming it
and join its cluster. Their configuration: MQTT only with a password (no anonymous, no guest:
the default user is `admin` with a random password), subscription queues of persistent MQTT
sessions as quorum queues (`mqtt.durable_queue_type = quorum`, replicated on every node), one
scheduler per node with busy-waiting off (a small shared machine). Processes run in their own
session so that kill9() takes the Erlang VM and its helpers down together.

Errors: BrokerError when a node cannot be started or the cluster does not form (with the tail
of the node's log).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from edgemeter.cloud import rabbitmq
from edgemeter.cloud.mosquitto import BrokerError
from edgemeter.tools.broker import HOST, free_port

SBIN = Path("/usr/lib/rabbitmq/bin")
ERL_ARGS = "+S 1:1 +sbwt none +sbwtdcpu none +sbwtdio none -kernel inet_dist_use_interface {127,0,0,1}"


def accepts(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def server_exe() -> Path:
    exe = SBIN / "rabbitmq-server"
    if not exe.exists():
        raise BrokerError("RabbitMQ not found: apt-get install rabbitmq-server (tools/dev.sh does)")
    return exe


class RabbitCluster:
    """N RabbitMQ nodes clustered on 127.0.0.1 (see the module docstring)."""

    def __init__(self, nodes: int = 3, workdir: str | Path | None = None, management: bool = False) -> None:
        if nodes < 1:
            raise ValueError("a cluster has at least one node")
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="edgemeter-rabbit-"))
        self.tag = "em" + secrets.token_hex(3)
        self.names = [f"{self.tag}-{i + 1}@localhost" for i in range(nodes)]
        self.amqp_ports = [free_port() for _ in range(nodes)]
        self.mqtt_ports = [free_port() for _ in range(nodes)]
        self.dist_ports = [free_port() for _ in range(nodes)]
        self.api_ports = [free_port() for _ in range(nodes)] if management else []
        self.users = {"rater": secrets.token_hex(12), "admin": secrets.token_hex(12)}
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * nodes
        self.home = self.workdir / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(16).upper())
            cookie.chmod(0o400)
        plugins = "rabbitmq_mqtt,rabbitmq_management" if management else "rabbitmq_mqtt"
        (self.workdir / "enabled_plugins").write_text(f"[{plugins}].\n")
        (self.workdir / "rabbitmq-env.conf").write_text("")
        for i in range(nodes):
            self._write_config(i)

    host = HOST

    @property
    def amqp_url(self) -> str:
        """The raters' --broker: amqp://HOST:PORT,HOST:PORT,... (every node, tried in turn)."""
        return self.amqp_url_from(0)

    def amqp_url_from(self, first: int) -> str:
        """amqp_url listing node `first` first (a rater connects to it, then to the next ones)."""
        n = len(self.amqp_ports)
        return "amqp://" + ",".join(f"{HOST}:{self.amqp_ports[(first + k) % n]}" for k in range(n))

    def api_url(self, i: int = 0) -> str:
        """Node i's management API with the admin user (admin register-device --rabbitmq-api);
        only for a cluster started with management=True."""
        return f"http://admin:{self.users['admin']}@{HOST}:{self.api_ports[i]}"

    def node_dir(self, i: int) -> Path:
        return self.workdir / f"node{i + 1}"

    def log_text(self, i: int) -> str:
        """Node i's log files and its captured stdout, concatenated."""
        files = sorted((self.node_dir(i) / "log").glob("*.log")) + [self.node_dir(i) / "stdout.log"]
        return "".join(p.read_text(errors="replace") for p in files if p.exists())

    def _write_config(self, i: int) -> None:
        d = self.node_dir(i)
        (d / "log").mkdir(parents=True, exist_ok=True)
        (d / "mnesia").mkdir(exist_ok=True)
        lines = [f"mqtt.listeners.tcp.default = {HOST}:{self.mqtt_ports[i]}", "mqtt.allow_anonymous = false",
                 "mqtt.durable_queue_type = quorum", "mqtt.exchange = amq.topic", "mqtt.vhost = /",
                 "default_user = admin", f"default_pass = {self.users['admin']}", "loopback_users = none",
                 "disk_free_limit.absolute = 50MB", "log.console = false", "log.file.level = info",
                 "cluster_formation.peer_discovery_backend = classic_config",
                 f"cluster_formation.classic_config.nodes.1 = {self.names[0]}"]
        if self.api_ports:
            lines += [f"management.tcp.ip = {HOST}", f"management.tcp.port = {self.api_ports[i]}"]
        (d / "rabbitmq.conf").write_text("\n".join(lines) + "\n")

    def _env(self, i: int | None = None) -> dict[str, str]:
        env = dict(os.environ, HOME=str(self.home), RABBITMQ_CONF_ENV_FILE=str(self.workdir / "rabbitmq-env.conf"),
                   RABBITMQ_ENABLED_PLUGINS_FILE=str(self.workdir / "enabled_plugins"))
        if i is not None:
            d = self.node_dir(i)
            env.update(RABBITMQ_NODENAME=self.names[i], RABBITMQ_NODE_IP_ADDRESS=HOST,
                       RABBITMQ_NODE_PORT=str(self.amqp_ports[i]), RABBITMQ_DIST_PORT=str(self.dist_ports[i]),
                       RABBITMQ_MNESIA_BASE=str(d / "mnesia"), RABBITMQ_LOG_BASE=str(d / "log"),
                       RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"), RABBITMQ_PID_FILE=str(d / "pid"),
                       RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
                       RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=ERL_ARGS, RABBITMQ_ALLOW_INPUT="")
        return env

    # ---- processes ----
    def alive(self, i: int) -> bool:
        p = self.procs[i]
        return p is not None and p.poll() is None

    def start_node(self, i: int, wait: bool = True, timeout: float = 120.0) -> None:
        """Start node i (a fresh one joins the first node's cluster; a restarted one rejoins)."""
        if self.alive(i):
            return
        d = self.node_dir(i)
        with open(d / "stdout.log", "ab") as out:
            self.procs[i] = subprocess.Popen([str(server_exe())], env=self._env(i), cwd=d, stdout=out,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             start_new_session=True)
        if wait:
            self.wait_node(i, timeout)

    def wait_node(self, i: int, timeout: float = 120.0) -> None:
        """Until node i accepts AMQP and MQTT connections (its listeners start after it joined)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            p = self.procs[i]
            if p is None or p.poll() is not None:
                raise BrokerError(f"RabbitMQ node {self.names[i]} exited:\n" + self.log_text(i)[-3000:])
            if accepts(self.amqp_ports[i]) and accepts(self.mqtt_ports[i]):
                return
            time.sleep(0.2)
        raise BrokerError(f"RabbitMQ node {self.names[i]} not ready after {timeout}s:\n" + self.log_text(i)[-3000:])

    def start(self, timeout: float = 180.0) -> "RabbitCluster":
        """Start every node (the first alone, then the rest together) and check the cluster."""
        self.start_node(0, timeout=timeout)
        for i in range(1, len(self.names)):
            self.start_node(i, wait=False)
        for i in range(1, len(self.names)):
            self.wait_node(i, timeout)
        running = self.running_nodes()
        if sorted(running) != sorted(self.names):
            raise BrokerError(f"the cluster formed with {running}, expected {self.names}")
        return self

    def ctl(self, *args: str, node: int | None = None, timeout: float = 120.0) -> str:
        """rabbitmqctl ARGS against node (default: the first one alive); its stdout."""
        i = node if node is not None else next(k for k in range(len(self.names)) if self.alive(k))
        proc = subprocess.run([str(SBIN / "rabbitmqctl"), "-n", self.names[i], *args], env=self._env(),
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise BrokerError(f"rabbitmqctl {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    def running_nodes(self) -> list[str]:
        status = json.loads(self.ctl("cluster_status", "--formatter", "json"))
        return list(status.get("running_nodes", []))

    def load(self, devices: Iterable[tuple[int, int, str]] = ()) -> None:
        """Import the users and permissions of cloud.rabbitmq.definitions (rater, admin and every
        device [(ws, dev, password)]); repeatable (definitions are merged)."""
        path = self.workdir / "definitions.json"
        path.write_text(json.dumps(rabbitmq.definitions(devices, self.users["rater"], self.users["admin"])))
        self.ctl("import_definitions", str(path))

    def kill9(self, i: int) -> None:
        """SIGKILL node i's process group (the Erlang VM and its helpers): a crash."""
        p = self.procs[i]
        if p is not None and p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(30)
        self.procs[i] = None

    def stop_node(self, i: int, timeout: float = 60.0) -> None:
        """SIGTERM node i (a clean shutdown), SIGKILL after timeout."""
        p = self.procs[i]
        if p is None:
            return
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(30)
        self.procs[i] = None

    def close(self) -> None:
        """Stop every node (killed: the data is thrown away) and remove the working directory
        when this object created it."""
        for i in range(len(self.names)):
            try:
                self.kill9(i)
            except ProcessLookupError:
                self.procs[i] = None
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "RabbitCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgemeter.tools.rabbit", description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=3)
    args = ap.parse_args(argv)
    with RabbitCluster(args.nodes) as rc:
        rc.load()
        print(f"RabbitMQ cluster {rc.names}: MQTT ports {rc.mqtt_ports}, raters {rc.amqp_url}")
        for u, p in rc.users.items():
            print(f"  user {u} password {p}")
        print(f"  work directory {rc.workdir}; Ctrl-C stops it")
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
