"""The firmware (firmware_py.main) on the real MicroPython unix port, run from the mpy-cross
image as `micropython -m firmware_py.main CONFIG`, against a real Mosquitto with per-device
credentials and ACLs; the cloud is tools/fw_cloud.py (CloudSession + Pool over
paho-mqtt 2.x). Rounds come from tools/sim/fw_driver.py; each carries its number, so the
booked rounds are compared with the served ones round by round, to the uCNY.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from firmware_py import lease as L
from firmware_py.meter import DEGRADED
from edgemeter.tools import fw_cloud, fw_proc
from edgemeter.tools.broker import Broker

MAX_ROUND = 18050  # the dearest round of fw_driver.MIX, uCNY


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fw_proc.make_image(tmp_path_factory.mktemp("fw") / "img")


def booked_exactly(fw: fw_proc.Fw, cloud: fw_cloud.Cloud, dev: int) -> dict[int, int]:
    """Every round the SDK was told is served is booked once, at the device's uCNY, and
    nothing else is booked. Returns {round: uCNY}."""
    served = fw.served()
    booked = cloud.rounds(dev)
    assert {i: n for i, (_, n) in booked.items() if n != 1} == {}, "a round booked twice"
    assert {i: u for i, (u, _) in booked.items()} == served
    assert sum(b["ucny"] for b in cloud.booked[dev].values()) == sum(served.values())
    return served


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_served_rounds_are_booked_exactly(image: Path, secure_broker: Broker, tmp_path: Path,
                                          tls: bool) -> None:
    b = secure_broker
    ws, dev, n = (31, 3101, 120) if not tls else (32, 3201, 40)
    cloud = fw_cloud.Cloud(b, ws, {dev: fw_proc.KEY})
    extra = {"port": b.tls_port, "ca": str(b.ca_file), "sni": "localhost"} if tls else {}
    cfg = fw_proc.config(b, ws, dev, tmp_path / "jnl", workload_args={"rounds": n}, **extra)
    fw = fw_proc.Fw(image, cfg, tmp_path / "em.json", heap="1M" if tls else "512k")
    try:
        assert fw.wait(180) == 0, fw.lines[-20:]
    finally:
        fw.kill()
        cloud.close()
    served = booked_exactly(fw, cloud, dev)
    assert sorted(served) == list(range(n))
    d = fw.done()
    assert (d["served"], d["ucny"], d["unacked"], d["unsealed"]) == (n, sum(served.values()), 0, 0)
    assert d["acked"] == d["seq"] == len(cloud.booked[dev])
    assert cloud.rejects == []
    assert cloud.pool.check()
    if not tls:
        assert cloud.grants >= 2  # 120 rounds need more than the first 545000-unit grant


def test_broker_restart_reconnects_with_backoff_and_resends(image: Path, make_broker,
                                                            tmp_path: Path) -> None:
    b = make_broker(auth=True)
    ws, dev, n = 33, 3301, 60
    cloud = fw_cloud.Cloud(b, ws, {dev: fw_proc.KEY})
    cfg = fw_proc.config(b, ws, dev, tmp_path / "jnl", backoff_base_ms=200, backoff_cap_ms=1600,
                         workload_args={"rounds": n, "gap_ms": 100})
    fw = fw_proc.Fw(image, cfg, tmp_path / "em.json")
    try:
        fw.wait_for(r"^served 15 ")
        b.stop()                                # the network is gone ...
        fw.wait_for(r"^fw lost ")
        fw.wait_for(r"^fw lost retry_ms=\d+ attempt=4 ")
        b.start()                               # ... and back on the same port
        fw.wait_for(r"^fw connected n=2 ")
        assert fw.wait(120) == 0, fw.lines[-20:]
    finally:
        fw.kill()
        cloud.close()
    booked_exactly(fw, cloud, dev)
    assert sorted(fw.served()) == list(range(n))
    lost = [tuple(int(x) for x in re.findall(r"retry_ms=(\d+) attempt=(\d+)", line)[0])
            for line in fw.lines if line.startswith("fw lost ")]
    assert len(lost) >= 4
    for ms, attempt in lost:                    # backoff rules B1-B2 with base 200, cap 1600
        ceiling = min(1600, 200 << (attempt - 1))
        assert ceiling // 2 <= ms <= ceiling, (ms, attempt)
    assert [a for _, a in lost][:4] == [1, 2, 3, 4]
    i_lost = fw.lines.index(next(x for x in fw.lines if x.startswith("fw lost ")))
    i_back = fw.lines.index(next(x for x in fw.lines if x.startswith("fw connected n=2 ")))
    offline = [x for x in fw.lines[i_lost:i_back] if x.startswith("served ")]
    assert offline, "rounds go on from the lease while the broker is away"


def test_lease_exhaustion_refuses_with_final_units(image: Path, secure_broker: Broker,
                                                   tmp_path: Path) -> None:
    """A pool of 20000 units: one final grant; the device serves until it is used (the last
    round may overshoot, lease L4) and then refuses with DENY_FINAL before any service."""
    b = secure_broker
    ws, dev = 34, 3401
    terms = {"grant": 20000, "max": 20000, "low": 1, "allowance": 0, "policy": L.STOP}
    cloud = fw_cloud.Cloud(b, ws, {dev: fw_proc.KEY}, units=20000, terms=terms)
    cfg = fw_proc.config(b, ws, dev, tmp_path / "jnl",
                         workload_args={"rounds": 50, "stop_codes": [L.DENY_FINAL]})
    fw = fw_proc.Fw(image, cfg, tmp_path / "em.json")
    try:
        assert fw.wait(120) == 0, fw.lines[-20:]
    finally:
        fw.kill()
        cloud.close()
    served = booked_exactly(fw, cloud, dev)
    refusals = [x for x in fw.lines if x.startswith("refused ")]
    assert refusals[-1].split()[2] == str(L.DENY_FINAL)
    total = sum(served.values())
    assert 20000 <= total < 20000 + MAX_ROUND
    assert cloud.pool.check() and cloud.pool.free == 0
    assert cloud.pool.overdraft == total - 20000  # the overshoot is counted, never hidden


@pytest.mark.parametrize("policy,code", [(L.CONTINUE, L.DENY_OFFLINE), (L.DEGRADE, L.DENY_OFFLINE),
                                         (L.STOP, L.DENY_LAPSED)],
                         ids=["continue", "degrade", "stop"])
def test_offline_policy_when_the_lease_lapses(image: Path, make_broker, tmp_path: Path,
                                              policy: int, code: int) -> None:
    """The broker goes away; the lease runs out offline. Continue/degrade serve up to the
    grant's offline allowance and then refuse DENY_OFFLINE; stop refuses DENY_LAPSED at once.
    When the broker is back the lease is renewed and every round is booked exactly."""
    b = make_broker(auth=True)
    ws, dev, n, allowance = 35, 3501 + policy, 70, 30000
    terms = {"grant": 60000, "max": 60000, "low": 0, "allowance": allowance, "policy": policy,
             "renew_pct": 20}
    cloud = fw_cloud.Cloud(b, ws, {dev: fw_proc.KEY}, units=10**8, terms=terms)
    cfg = fw_proc.config(b, ws, dev, tmp_path / "jnl",
                         workload_args={"rounds": n, "gap_ms": 50})
    fw = fw_proc.Fw(image, cfg, tmp_path / "em.json")
    try:
        fw.wait_for(r"^served 10 ")
        b.stop()
        fw.wait_for(r"^fw lost ")
        fw.wait_for(rf"^refused \d+ {code}$")
        b.start()
        fw.wait_for(r"^fw connected n=2 ")
        assert fw.wait(120) == 0, fw.lines[-20:]
    finally:
        fw.kill()
        cloud.close()
    served = booked_exactly(fw, cloud, dev)
    assert sorted(served) == list(range(n))
    lines = fw.lines
    i_back = lines.index(next(x for x in lines if x.startswith("fw connected n=2 ")))
    # the last lapse before the reconnect (an earlier one may have been renewed online); the
    # round whose start_round found it is printed before the event (events end a pass)
    i_lapse = max(k for k in range(i_back) if lines[k].startswith("fw event lapsed "))
    j = max(k for k in range(i_lapse) if lines[k].startswith("served "))
    after = [x.split() for x in lines[j:i_back] if x.startswith("served ")]
    if policy == L.STOP:
        assert len(after) == 1, after  # the round before the lapse; none after it
    else:
        used = sum(int(x[2]) for x in after)
        assert 0 < used < allowance + MAX_ROUND, after  # lease L3: the allowance, + 1 round
    degraded = [x for x in after if x[3] == str(DEGRADED)]
    assert bool(degraded) == (policy == L.DEGRADE)
