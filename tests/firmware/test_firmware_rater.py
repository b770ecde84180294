"""The firmware against the real cloud: `edgemeter rater` (cloud/rater.py) as a process over a
SQLite ledger, Mosquitto with auth and ACLs, a License device registered by cloud.devices (its
own MQTT password and HMAC key). The MicroPython firmware serves rounds, is killed with SIGKILL
once mid-run and restarted; the ledger then holds every round exactly once, to the uCNY.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from edgemeter.tools import fw_proc
from edgemeter.cloud import db
from edgemeter.cloud import schema as S
from firmware_py import pricebook
from edgemeter.tools.broker import Broker

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cloud"))
from rater_helpers import RaterProc, ledger_summary, setup_store, wait_for  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fw_proc.make_image(tmp_path_factory.mktemp("fw") / "img")


def test_firmware_rounds_booked_once_by_the_real_rater(image: Path, make_broker,
                                                        tmp_path: Path) -> None:
    b: Broker = make_broker(auth=True)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    reg = setup_store(url, postpaid_devices=0, license_devices=1)
    d = reg["license"][0]
    ws, dev = d["workspace"], d["id"]
    b.add_device(ws, dev, password=d["password"])
    rater = RaterProc(b.url, url, "rater-fw", tmp_path, "--username", "rater",
                      "--password", b.users["rater"]).start()
    cfg = fw_proc.config(b, ws, dev, tmp_path / "jnl", key=d["key"].hex(), kid=d["kid"])
    cfg["password"] = d["password"]
    b.add_device(ws, dev, password=d["password"])  # config() re-keyed it; the registry's again
    served: dict[int, int] = {}
    try:
        cfg["workload_args"] = {"rounds": 1000}
        fw = fw_proc.Fw(image, cfg, tmp_path / "em.json", kill_at=40)
        assert fw.wait(60) == -9 and fw.killed, fw.lines[-10:]
        served.update(fw.served())
        journaled = {fw.in_flight()} - {None}
        nxt = max(fw.begun()) + 1
        cfg["workload_args"] = {"first": nxt, "rounds": nxt + 40}
        fw = fw_proc.Fw(image, cfg, tmp_path / "em.json")
        assert fw.wait(120) == 0, fw.lines[-20:] + [rater.log()[-2000:]]
        served.update(fw.served())
        want_rounds = len(served) + len(journaled)
        assert wait_for(lambda: ledger_summary(url)["rounds"] >= want_rounds, 30)
    finally:
        fw.kill()
        rater.term()
    s = ledger_summary(url)
    assert s["batches"] == s["distinct"] and s["dead"] == {}
    assert s["rounds"] == want_rounds
    if not journaled:
        assert s["ucny"] == sum(served.values())
    else:  # the cut-off round's uCNY is the ledger's to say; every other round is the SDK's
        assert 0 < s["ucny"] - sum(served.values()) <= 18050
    engine = db.make_engine(url)
    with engine.connect() as conn:
        mism = conn.execute(select(func.count()).select_from(S.mismatches)).scalar_one()
        memory = conn.execute(select(func.coalesce(func.sum(S.usage_lines.c.calls), 0))
                              .where(S.usage_lines.c.item == pricebook.MEMORY)).scalar_one()
    engine.dispose()
    assert mism == 0
    print(f"ledger: {s['rounds']} rounds in {s['batches']} batches, {s['ucny']} uCNY; "
          f"SDK told {len(served)}, {len(journaled)} cut off after its record")
    # each round carries memory calls i % 100 + 1 (fw_driver.mark): a checksum of which rounds
    assert memory == sum(i % 100 + 1 for i in set(served) | journaled)
