"""Fixtures for every test area. Keep this file small and generic: area-specific fixtures go in
tests/<area>/conftest.py.

Brokers are real Mosquitto processes started from the shipped deploy/mosquitto/mosquitto.conf
by tools/broker.py (free ports on 127.0.0.1, a temp directory, the log in broker.log_path).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest
from hypothesis import HealthCheck, settings

from edgemeter.tools.broker import Broker

# Property tests check what holds, never how fast: no per-example deadline and no "too slow"
# health check, which would turn a busy CI machine into failures (speed is the benchmarks' job).
settings.register_profile("edgemeter", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("edgemeter")


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[Broker]:
    """A plain broker (anonymous, no TLS) shared by the whole session: connect to
    mosquitto.host:mosquitto.port. Do not stop, restart or pause it (use make_broker)."""
    with Broker() as b:
        yield b


@pytest.fixture(scope="session")
def secure_broker() -> Iterator[Broker]:
    """The production set-up shared by the session: password files + ACL, the private listener
    of raters and operators (.port), the device listener over TLS (.tls_port, CA in .ca_file,
    certificate for localhost/127.0.0.1) and without (.device_port). .users["rater"] and
    .users["admin"] hold those roles' passwords; add_device(ws, dev) -> (user, password) adds a
    device while it runs. Use device ids no other test uses."""
    with Broker(auth=True, tls=True) as b:
        yield b


@pytest.fixture
def make_broker() -> Iterator[Callable[..., Broker]]:
    """make_broker(**Broker options) -> a started broker of this test's own, for restarts,
    kills and pauses; closed (and its directory removed) at teardown."""
    made: list[Broker] = []

    def make(**kw: Any) -> Broker:
        b = Broker(**kw).start()
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()
