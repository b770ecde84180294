"""Fixtures for the API and dashboard tests: a ledger filled by real device sessions through the
rater's real booking step (dashfleet.populate), on a SQLite file and on a fresh PostgreSQL
database (skipped with the reason when no server answers, a failure under CI=true), plus API
tokens created the way `edgemeter admin create-token` creates them."""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, Iterator

import pytest

import dashfleet
from dashfleet import make_tokens
from edgemeter.tools import pgcheck


def pg_unavailable() -> str | None:
    why = pgcheck.reachable()
    if why and os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL unreachable under CI=true: {why}")
    return why


def _fresh_pg() -> tuple[str, str]:
    import psycopg

    admin = pgcheck.pg_url()
    name = f"em_dash_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, admin.rsplit("/", 1)[0] + "/" + name


def _drop_pg(name: str) -> None:
    import psycopg

    with psycopg.connect(pgcheck.pg_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The populated ledger: ids from dashfleet.populate, "fleet" (to book more), "url", "tokens"."""
    pg_name = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('ledger') / 'ledger.db'}"
    else:
        why = pg_unavailable()
        if why:
            pytest.skip(f"PostgreSQL not reachable: {why}")
        pg_name, url = _fresh_pg()
    ids = dashfleet.populate(url)
    ids["url"] = url
    ids["tokens"] = make_tokens(ids["fleet"].engine, ids)
    try:
        yield ids
    finally:
        ids["fleet"].close()
        if pg_name:
            _drop_pg(pg_name)


@pytest.fixture(scope="module")
def sqlite_ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The populated ledger on a SQLite file only (for the subprocess and browser tests)."""
    path: Path = tmp_path_factory.mktemp("ledger") / "ledger.db"
    ids = dashfleet.populate(f"sqlite:///{path}")
    ids["url"] = f"sqlite:///{path}"
    ids["path"] = path
    ids["tokens"] = make_tokens(ids["fleet"].engine, ids)
    try:
        yield ids
    finally:
        ids["fleet"].close()
