"""schemathesis 4 against the app's own OpenAPI document, over a populated ledger: generated
requests (valid and invalid parameters, with an operator and with a tenant token) never make
the API answer with a server error, and its answers conform to the document it publishes.

The app is built when the module is imported (schemathesis reads the document at collection;
its from_fixture loader does not run under pytest 9), over an empty migrated SQLite store that
the module fixture then fills with dashfleet.populate before any request is made.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                 status_code_conformance)

import dashfleet
from edgemeter.cloud import db
from edgemeter.cloud.api import create_app
from dashfleet import make_tokens

_DIR = Path(tempfile.mkdtemp(prefix="em-schemathesis-"))
_URL = f"sqlite:///{_DIR / 'ledger.db'}"
_ENGINE = db.open_store(_URL, create=True)
APP = create_app(engine=_ENGINE, events_interval_s=0.05, events_max_s=0.2)   # /events: short streams
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
TOKENS: dict[str, str] = {}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module", autouse=True)
def filled() -> Iterator[dict[str, Any]]:
    ids = dashfleet.populate(_URL)
    TOKENS.update(make_tokens(ids["fleet"].engine, ids))
    try:
        yield ids
    finally:
        ids["fleet"].close()
        _ENGINE.dispose()
        shutil.rmtree(_DIR, ignore_errors=True)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_as_operator(case):
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKENS['operator']}"}, checks=CHECKS)


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_as_tenant(case):
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKENS['globex']}"}, checks=CHECKS)
