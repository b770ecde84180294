"""Fixtures for the cloud tests: real SQLite files and a fresh PostgreSQL database per test
(brokers come from tests/conftest.py: make_broker, secure_broker).

PostgreSQL tests skip with tools.pgcheck's reason when no server answers, except under CI=true,
where they fail instead (CI starts a server).
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from edgemeter.tools import pgcheck


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
