"""A real Mosquitto for tests, the simulator and the demo, rendered from the shipped configuration.

    with Broker(auth=True, tls=True) as b:          # free ports, temp dir, users, CA
        user, pw = b.add_device(ws=7, dev=1042)      # "7/1042": rewrites passwd, SIGHUP
        ... raters and operators connect to b.host:b.port (the private listener), devices to
        b.tls_port with b.ca_file, or b.device_port (the device listener without TLS) ...
        b.restart()                                  # same ports; persistence kept
    python -m edgemeter.tools.broker --auth --tls              # run one in the foreground (demo, debugging)

The configuration is deploy/mosquitto/mosquitto.conf with only site values rewritten (file
paths, ports, bind address 127.0.0.1, log to stderr captured in <workdir>/mosquitto.log, `user`
set to whoever runs the tests); auth=False drops password_file/acl_file and allows anonymous
clients, tls=False drops the TLS listener. With auth the device listener is also rendered a
second time without TLS (b.device_port), keeping its users, ACL and client-id binding, for test
devices that do not speak TLS; each listener has its own users (per_listener_settings): devices
in passwd, the roles (rater, admin) in passwd.services. The ACL is deploy/mosquitto/acl.example as shipped:
the raters' and operators' blocks and two `pattern` lines on the user name that confine every
device ("<ws>/<dev>", docs/protocol.md, Topics) to its own topics, so adding a device adds only its password.
Passwords are hashed by `mosquitto_passwd -U` (Debian package `mosquitto`).

Mosquitto 2.0 reloads password_file and acl_file on SIGHUP (mosquitto.conf(5): "Reloaded on
reload signal"); reload() waits for the broker's "Reloading config." log line, after which
the single-threaded broker serves no client before the new files are in force.

Mosquitto (and mosquitto_passwd) run in a session of their own: a terminal's Ctrl-C reaches
only the process that started them, which stops them when it is done with them (the demo
drains its devices first).

Errors: BrokerError(RuntimeError) when Mosquitto cannot be started or configured (the message
carries the tail of its log); ValueError for caller mistakes.
"""
from __future__ import annotations

import argparse
import datetime
import getpass
import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable

from edgemeter.cloud.mosquitto import (ACL_TEMPLATE, DEVICE_PATTERNS, TEMPLATE, BrokerError,  # noqa: F401 (re-exported)
                                        device_user, render_acl)

HOST = "127.0.0.1"
ROLES = ("rater", "admin")


def mosquitto_exe() -> str:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        raise BrokerError("mosquitto not found: apt-get install mosquitto (tools/dev.sh does)")
    return exe


def mosquitto_passwd_exe() -> str:
    exe = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(exe).exists():
        raise BrokerError("mosquitto_passwd not found: it ships in Debian's `mosquitto` package")
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


TLS_KEYS = ("certfile", "keyfile", "cafile", "capath", "tls_version", "ciphers", "ciphers_tls1.3",
            "require_certificate", "crlfile", "dhparamfile", "keyform", "tls_engine")


def render_config(template: Path, *, port: int, tls_port: int | None, workdir: Path,
                  auth: bool, extra: Iterable[str] = (), device_port: int | None = None) -> str:
    """The shipped mosquitto.conf with its site values rewritten (see the module docstring),
    line for line in the template's order. The template must hold exactly one TLS listener (a
    listener section with certfile: the devices') and one plain listener (the services'); extra
    lines go before the first. With device_port, the device listener is rendered a second
    time without its TLS lines on that port, every other line of it kept (its users, ACL and
    client-id binding), for test devices that do not speak TLS."""
    lines = template.read_text().splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith("listener ")]
    sections = [lines[a:b] for a, b in zip(starts, starts[1:] + [len(lines)])]
    is_tls = [any(x.startswith("certfile ") for x in sec) for sec in sections]
    if sorted(is_tls) != [False, True]:
        raise BrokerError(f"{template}: expected one TLS and one plain listener")
    out = [f"# rendered by tools/broker.py from {template}"]
    out += _site_lines(lines[:starts[0]], workdir, auth)
    out += list(extra)
    for sec, tls in zip(sections, is_tls):
        body = _site_lines(sec[1:], workdir, auth)
        if not tls:
            out += [f"listener {port} {HOST}"] + body
            continue
        if tls_port is None:
            out.append("# (TLS listener left out: Broker(tls=False))")
        else:
            out += [f"listener {tls_port} {HOST}"] + body
        if device_port is not None:
            out += ["", "# the device listener again, without TLS (tools/broker.py, device_port)",
                    f"listener {device_port} {HOST}"]
            out += [ln for ln in body if ln.split(" ", 1)[0] not in TLS_KEYS]
    return "\n".join(out) + "\n"


def _site_lines(lines: list[str], workdir: Path, auth: bool) -> list[str]:
    """Lines of the template with their site values rewritten: file paths into workdir (by
    the file's name), log to stderr, `user` the caller; without auth, no password_file or
    acl_file and anonymous clients allowed."""
    out: list[str] = []
    for ln in lines:
        key, _, value = ln.partition(" ")
        if key in ("password_file", "acl_file") and not auth:
            continue
        if key == "allow_anonymous" and not auth:
            out.append("allow_anonymous true")
        elif key == "log_dest":
            if "log_dest stderr" not in out:
                out.append("log_dest stderr")
        elif key == "pid_file":
            continue
        elif key in ("password_file", "acl_file", "certfile", "keyfile"):
            out.append(f"{key} {workdir / Path(value).name}")
        elif key == "persistence_location":
            out.append(f"{key} {workdir / 'data'}/")
        elif key == "user":
            out.append(f"user {getpass.getuser()}")
        else:
            out.append(ln)
    return out


def make_certs(workdir: Path, hosts: Iterable[str] = ("localhost", HOST)) -> Path:
    """A throwaway CA (ca.crt) and a broker certificate/key it signed (server.crt/server.key,
    EC P-256, SAN = hosts) in workdir; returns the CA file's path. Needs the Python package
    cryptography (the `dev` extra: only TLS listeners use it)."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as exc:
        raise BrokerError("a TLS listener needs the Python package cryptography for its throwaway "
                          "CA: pip install 'edgemeter[dev]'") from exc

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgemeter test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (workdir / "ca.crt").write_bytes(ca.public_bytes(pem))
    (workdir / "server.crt").write_bytes(cert.public_bytes(pem))
    keyfile = workdir / "server.key"
    keyfile.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    keyfile.chmod(0o600)
    return workdir / "ca.crt"


class Broker:
    """One Mosquitto process on 127.0.0.1 (see the module docstring)."""

    def __init__(self, port: int = 0, *, auth: bool = False, tls: bool = False,
                 tls_port: int = 0, extra: Iterable[str] = (), workdir: str | Path | None = None,
                 template: Path = TEMPLATE, verbose: bool = False) -> None:
        self.auth = auth
        self.tls = tls
        self._auto_ports = port == 0 and (tls_port == 0 or not tls)
        self.port = port or free_port()
        self.tls_port: int | None = (tls_port or free_port()) if tls else None
        # devices without TLS: a plain copy of the device listener (with auth; without it the
        # services' listener admits anyone, devices included)
        self.device_port = free_port() if auth else self.port
        self.extra = list(extra) + (["log_type all"] if verbose else [])
        self.template = template
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="edgemeter-mosquitto-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "data").mkdir(exist_ok=True)
        self.config_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self.ca_file: Path | None = make_certs(self.workdir) if tls else None
        self.users: dict[str, str] = {}     # user name -> password
        self.devices: dict[int, int] = {}   # dev -> ws
        self.proc: subprocess.Popen[bytes] | None = None
        if auth:
            for role in ROLES:
                self.users[role] = secrets.token_hex(12)
            self._write_auth()

    # ---- addresses ----
    host = HOST

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    @property
    def device_url(self) -> str:
        """Where a device without TLS connects: the device listener's plain copy (with auth;
        the services' listener without)."""
        return f"mqtt://{HOST}:{self.device_port}"

    def port_for(self, user: str | None) -> int:
        """The plain port user logs in on: the services' listener for the roles (and for anyone
        on a broker without auth), the device listener's plain copy for everyone else."""
        return self.port if user is None or user in ROLES else self.device_port

    @property
    def tls_url(self) -> str:
        if self.tls_port is None:
            raise ValueError("this broker has no TLS listener (tls=False)")
        return f"mqtts://{HOST}:{self.tls_port}"

    # ---- users ----
    def add_device(self, ws: int, dev: int, password: str | None = None) -> tuple[str, str]:
        """Create (or re-key) device dev of workspace ws; returns (user name, password). Only
        the password file changes (the ACL's patterns already cover the device); on a running
        broker it is rewritten and reloaded before this returns."""
        if not self.auth:
            raise ValueError("add_device needs Broker(auth=True)")
        user = device_user(ws, dev)
        old = self.devices.get(dev)
        if old is not None and old != ws:
            self.users.pop(device_user(old, dev), None)
        self.users[user] = password or secrets.token_hex(12)
        self.devices[dev] = ws
        self._write_auth()
        if self.running:
            self.reload()
        return user, self.users[user]

    def remove_device(self, dev: int) -> None:
        """Revoke device dev (its password); reloads a running broker. Mosquitto 2.0.11
        disconnects a connected client whose user name left the password file at the reload
        (observed; tests/tools/test_mosquitto_broker.py), and it cannot log in again."""
        ws = self.devices.pop(dev, None)
        if ws is not None:
            self.users.pop(device_user(ws, dev), None)
        self._write_auth()
        if self.running:
            self.reload()

    def _write_auth(self) -> None:
        """passwd (the device listener's users: every user but the roles) and passwd.services
        (the services' listener's: the roles), as the shipped configuration names them."""
        for name, users in (("passwd", [u for u in self.users if u not in ROLES]),
                            ("passwd.services", [u for u in self.users if u in ROLES])):
            plain = self.workdir / (name + ".plain")
            plain.write_text("".join(f"{u}:{self.users[u]}\n" for u in users))
            plain.chmod(0o600)
            if users:   # mosquitto_passwd -U refuses an empty file; an empty one admits no one
                proc = subprocess.run([mosquitto_passwd_exe(), "-U", str(plain)],  # own session:
                                      capture_output=True, text=True,              # a Ctrl-C is
                                      start_new_session=True)                      # the caller's
                if proc.returncode != 0:
                    raise BrokerError(f"mosquitto_passwd -U failed: {proc.stderr.strip()}")
            os.replace(plain, self.workdir / name)
        acl = self.workdir / "acl.new"
        acl.write_text(render_acl())
        os.replace(acl, self.workdir / "acl")

    # ---- process ----
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> "Broker":
        """Start Mosquitto and wait until every listener accepts connections."""
        if self.running:
            return self
        for attempt in range(5):
            self.config_path.write_text(render_config(
                self.template, port=self.port, tls_port=self.tls_port, workdir=self.workdir,
                auth=self.auth, extra=self.extra,
                device_port=self.device_port if self.auth else None))
            start_at = self.log_path.stat().st_size if self.log_path.exists() else 0
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen([mosquitto_exe(), "-c", str(self.config_path)],
                                             stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                self._wait_ready(start_at, timeout)
                return self
            except BrokerError as e:
                in_use = "Address already in use" in str(e)
                self._terminate(signal.SIGKILL)
                if not (in_use and self._auto_ports and attempt < 4):
                    raise
                self.port = free_port()  # another process took the port: pick new ones
                self.device_port = free_port() if self.auth else self.port
                if self.tls:
                    self.tls_port = free_port()
        raise BrokerError("unreachable")

    def _wait_ready(self, start_at: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        ports = [self.port, self.device_port] + ([self.tls_port] if self.tls_port else [])
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise BrokerError(f"mosquitto exited with {self.proc.returncode}:\n"
                                  + self.log_text(start_at)[-2000:])
            if " running" in self.log_text(start_at) and all(map(_accepts, ports)):
                return
            time.sleep(0.02)
        raise BrokerError(f"mosquitto not ready after {timeout}s:\n" + self.log_text(start_at)[-2000:])

    def stop(self, timeout: float = 5.0) -> None:
        """Clean stop: SIGTERM (Mosquitto saves its persistence file), SIGKILL after timeout."""
        self._terminate(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Crash: SIGKILL; what was not autosaved is lost, as on a power cut."""
        self._terminate(signal.SIGKILL)

    def _terminate(self, sig: int, timeout: float = 5.0) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            if sig != signal.SIGKILL:
                os.kill(p.pid, signal.SIGCONT)  # a paused broker cannot act on SIGTERM
            p.send_signal(sig)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.proc = None

    def restart(self, hard: bool = False, timeout: float = 10.0) -> None:
        """Stop (SIGTERM, or SIGKILL when hard) and start again on the same ports."""
        if hard:
            self.kill()
        else:
            self.stop()
        self.start(timeout)

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is answered (a stalled network)."""
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def reload(self, timeout: float = 10.0) -> None:
        """SIGHUP: reload the password and ACL files; returns once the broker has done so."""
        if not self.running or self.proc is None:
            raise BrokerError("reload() needs a running broker")
        before = self.log_text().count("Reloading config.")
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self.log_text().count("Reloading config.") <= before:
            if time.monotonic() > deadline:
                raise BrokerError("no 'Reloading config.' after SIGHUP:\n" + self.log_text()[-2000:])
            time.sleep(0.01)

    def log_text(self, start: int = 0) -> str:
        """The broker's log since byte offset start (all of it by default)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(start)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        """Stop and remove the working directory (when this object created it)."""
        self._terminate(signal.SIGKILL)
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _accepts(port: int | None) -> bool:
    try:
        with socket.create_connection((HOST, port or 0), timeout=0.2):
            return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgemeter.tools.broker", description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tls-port", type=int, default=0)
    ap.add_argument("--auth", action="store_true", help="password file + ACL (users printed)")
    ap.add_argument("--tls", action="store_true", help="TLS listener with a throwaway CA")
    ap.add_argument("--device", action="append", default=[], metavar="WS/DEV",
                    help="create a device user (repeatable; needs --auth)")
    args = ap.parse_args(argv)
    try:
        return _serve(ap, args)
    except BrokerError as exc:   # no mosquitto, no cryptography for --tls, a port in use
        print(f"{ap.prog}: {exc}", file=sys.stderr)
        return 1


def _serve(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    b = Broker(args.port, auth=args.auth, tls=args.tls, tls_port=args.tls_port)
    for spec in args.device:
        m = re.fullmatch(r"(\d+)/(\d+)", spec)
        if not m:
            ap.error(f"--device {spec!r}: expected WS/DEV, e.g. 7/1042")
        b.add_device(int(m.group(1)), int(m.group(2)))
    with b:
        print(f"mosquitto: raters and operators on {b.url}, devices on {b.device_url}"
              + (f" and {b.tls_url} (CA {b.ca_file})" if b.tls else ""))
        for u, p in b.users.items():
            print(f"  user {u} password {p}")
        print(f"  log {b.log_path}; Ctrl-C stops it")
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
