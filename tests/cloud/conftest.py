"""Fixtures for the cloud tests: real SQLite files, a fresh PostgreSQL database per test, and
(until tests/conftest.py provides one) a real Mosquitto on a free port.

PostgreSQL tests skip with tools.pgcheck's reason when no server answers, except under CI=true,
where they fail instead (CI starts a server).
"""
from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tools import pgcheck


def _pg_admin_url() -> str:
    return pgcheck.pg_url()


def pg_unavailable() -> str | None:
    why = pgcheck.reachable()
    if why and os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL unreachable under CI=true: {why}")
    return why


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def _fresh_pg_database() -> tuple[str, str]:
    import psycopg

    admin = _pg_admin_url()
    name = f"em_test_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin.rsplit("/", 1)[0]
    return name, f"{base}/{name}"


def _drop_pg_database(name: str) -> None:
    import psycopg

    with psycopg.connect(_pg_admin_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url():
    why = pg_unavailable()
    if why:
        pytest.skip(f"PostgreSQL not reachable: {why}")
    name, url = _fresh_pg_database()
    try:
        yield url
    finally:
        _drop_pg_database(name)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request, tmp_path: Path):
    """A fresh empty store of each kind: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    why = pg_unavailable()
    if why:
        pytest.skip(f"PostgreSQL not reachable: {why}")
    name, url = _fresh_pg_database()
    try:
        yield url
    finally:
        _drop_pg_database(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PlainBroker:
    """A real /usr/sbin/mosquitto on a free port, anonymous, no persistence (cloud tests only)."""

    def __init__(self, tmp: Path):
        self.port = free_port()
        self.host = "127.0.0.1"
        conf = tmp / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 1000000\nmax_inflight_messages 0\nset_tcp_nodelay true\n"
        )
        self.log = open(tmp / "mosquitto.log", "w")
        self.proc = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(conf)], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("mosquitto did not start")

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture
def plain_broker(tmp_path: Path):
    b = PlainBroker(tmp_path)
    try:
        yield b
    finally:
        b.stop()
