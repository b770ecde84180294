"""Secrets at rest: the ledger's files are private to their owner, and device keys are stored
wrapped under a key-encryption key kept outside the database (cloud.keystore), with a
command that wraps an older store's keys and rewraps them after the KEK is rotated. Real
SQLite files, the real booking step and the real `edgemeter admin` process."""
from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys

import pytest
from sqlalchemy import select

from rater_helpers import ROOT, NOW, setup_store
from edgemeter.cloud import db, devices, ingest, keystore
from edgemeter.cloud import schema as S
from edgemeter.tools.fleetpub import STANDARD_CHAT, Device


@pytest.fixture(autouse=True)
def _fresh_ring():
    """The KEK ring is cached per process: each test starts and ends without one."""
    keystore.reset()
    yield
    keystore.reset()


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_ledger_files_are_created_private(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "ledger.db"
        setup_store(f"sqlite:///{path}", postpaid_devices=1)
    finally:
        os.umask(old)
    for p in (path, path.with_name("ledger.db-wal"), path.with_name("ledger.db-shm")):
        if p.exists():
            assert _mode(p) == 0o600, p


def test_a_ledger_directory_open_to_others_is_reported_with_its_fix(tmp_path):
    """cloud.db rule 6: the directory is the operator's; migrate names an open one and the fix."""
    for mode, warned in ((0o755, True), (0o700, False)):
        d = tmp_path / f"d{mode:o}"
        d.mkdir()
        d.chmod(mode)
        out = _admin({}, "migrate", "--db", f"sqlite:///{d / 'ledger.db'}")
        assert out.returncode == 0, out.stderr
        assert ("open to other users (mode 0755)" in out.stderr) == warned, out.stderr
        assert (f"chmod 700 {d}" in out.stderr) == warned
        assert _mode(d) == mode and _mode(d / "ledger.db") == 0o600   # reported, never changed


def _kek_file(tmp_path, *ids: int):
    f = tmp_path / "kek"
    f.write_text("".join(f"{i} {secrets.token_hex(32)}\n" for i in ids))
    f.chmod(0o600)
    return f


def _stored(url: str) -> dict:
    engine = db.make_engine(url)
    with engine.connect() as conn:
        out = {(d, k): bytes(v) for d, k, v in conn.execute(select(S.device_keys.c.device_id, S.device_keys.c.kid,
                                                                    S.device_keys.c.key))}
    engine.dispose()
    return out


def _books_a_batch(url: str, d: dict) -> None:
    engine = db.make_engine(url)
    ing = ingest.Ingest(engine)
    dev = Device(d["workspace"], d["id"], d["key"])
    out = ing.process([ingest.Incoming(*dev.usage([STANDARD_CHAT]), NOW * 1000)])
    engine.dispose()
    assert out.booked == 1 and out.dead == {}


def _admin(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgemeter.tools.cli", "admin", *args, "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env={**os.environ, **env})


def test_device_keys_are_wrapped_under_a_kek_outside_the_store(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("EDGEMETER_KEK_FILE", str(_kek_file(tmp_path, 1)))
    keystore.reset()
    reg = setup_store(url, postpaid_devices=2)
    for d in reg["postpaid"]:
        blob = _stored(url)[(d["id"], 1)]
        assert d["key"] not in blob and len(blob) > len(d["key"])
    _books_a_batch(url, reg["postpaid"][0])
    # without the KEK the rater cannot read the keys: a clear error, not unknown devices
    monkeypatch.delenv("EDGEMETER_KEK_FILE")
    keystore.reset()
    engine = db.make_engine(url)
    with engine.connect() as conn, pytest.raises(keystore.KeyStoreError, match="EDGEMETER_KEK"):
        devices.keys(conn, reg["postpaid"][0]["id"])
    engine.dispose()


def test_an_older_store_is_wrapped_and_a_rotated_kek_rewraps(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.delenv("EDGEMETER_KEK_FILE", raising=False)
    monkeypatch.delenv("EDGEMETER_KEK", raising=False)
    keystore.reset()
    reg = setup_store(url, postpaid_devices=2)                     # keys in clear, as stores were
    d = reg["postpaid"][0]
    assert _stored(url)[(d["id"], 1)] == d["key"]
    kek = _kek_file(tmp_path, 1)
    r = _admin({"EDGEMETER_KEK_FILE": str(kek)}, "wrap-keys", "--db", url)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["wrapped"] == 2
    assert all(d["key"] not in v for v in _stored(url).values())
    monkeypatch.setenv("EDGEMETER_KEK_FILE", str(kek))
    keystore.reset()
    _books_a_batch(url, d)
    # rotation: a new KEK goes first, wrap-keys rewraps, then the old line is removed
    old_line = kek.read_text()
    kek.write_text(f"2 {secrets.token_hex(32)}\n" + old_line)
    before = _stored(url)
    r = _admin({"EDGEMETER_KEK_FILE": str(kek)}, "wrap-keys", "--db", url)
    assert r.returncode == 0 and json.loads(r.stdout)["wrapped"] == 2, r.stderr
    assert all(before[k] != v for k, v in _stored(url).items())
    kek.write_text(kek.read_text().splitlines()[0] + "\n")
    keystore.reset()
    _books_a_batch(url, reg["postpaid"][1])


def test_a_rater_without_the_kek_stops_before_any_ack(make_broker, tmp_path, monkeypatch):
    from rater_helpers import RaterProc, fleet_devices, wait_for
    from edgemeter.tools.fleetpub import Fleet

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("EDGEMETER_KEK_FILE", str(_kek_file(tmp_path, 1)))
    reg = setup_store(url, postpaid_devices=1)                   # keys wrapped
    monkeypatch.delenv("EDGEMETER_KEK_FILE")
    broker = make_broker()
    rater = RaterProc(broker.url, url, "rater-nokek", tmp_path).start()
    fleet = Fleet(broker.host, broker.port, fleet_devices(reg, ("postpaid",))).start()
    try:
        fleet.send(reg["postpaid"][0]["id"], rounds=1)
        assert wait_for(lambda: rater.proc.poll() is not None, 20), "the rater went on"
        assert rater.proc.returncode == 3 and "EDGEMETER_KEK" in rater.log()
        assert fleet.devices[reg["postpaid"][0]["id"]].acked == 0
    finally:
        fleet.stop()
        rater.kill9()
