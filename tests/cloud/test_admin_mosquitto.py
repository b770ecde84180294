"""`edgemeter admin register-device --mosquitto-dir` against the shipped broker configuration:
the issued credentials ("<ws>/<dev>") log in over TLS, the shipped ACL's patterns confine the
device to its own topics, and the rater (its own user on the private listener) books what the
device sends. A registry from before the "<ws>/<dev>" user names is migrated, and
sync-mosquitto drops the password lines of the former names."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from rater_helpers import ROOT, RaterProc, ledger_summary
from edgemeter.tools.broker import ACL_TEMPLATE, Broker
from edgemeter.tools.fleetpub import Fleet

pytestmark = pytest.mark.timeout(120)


def _admin(*args: str) -> dict:
    p = subprocess.run([sys.executable, "-m", "edgemeter.tools.cli", "admin", *args, "--json"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_registered_devices_log_in_over_tls_and_stay_in_their_topics(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    _admin("migrate", "--db", url)
    acc = _admin("create-account", "--db", url, "--name", "acme")["account"]
    ws = _admin("create-workspace", "--db", url, "--account", str(acc), "--name", "w", "--billing", "postpaid")["workspace"]
    _admin("top-up", "--db", url, "--account", str(acc), "--cny", "100")
    with Broker(auth=True, tls=True, workdir=tmp_path / "mq") as broker:
        d1 = _admin("register-device", "--db", url, "--workspace", str(ws), "--mosquitto-dir", str(broker.workdir))
        d2 = _admin("register-device", "--db", url, "--workspace", str(ws), "--mosquitto-dir", str(broker.workdir))
        passwd = (broker.workdir / "passwd").read_text()
        assert "rater:" not in passwd     # the roles log in on the private listener (passwd.services)
        assert passwd.startswith(f"{d1['username']}:$7$101$") and d1["password"] not in passwd
        assert [d["username"] for d in (d1, d2)] == [f"{ws}/{d['device']}" for d in (d1, d2)]
        assert (broker.workdir / "acl").read_text() == ACL_TEMPLATE.read_text()  # names no device
        broker.reload()
        rater = RaterProc(broker.url, url, "rater-1", tmp_path, "--username", "rater",  # private listener
                          "--password", broker.users["rater"]).start()
        fleets = []
        try:
            for d in (d1, d2):
                f = Fleet(broker.host, broker.tls_port, [(ws, d["device"], bytes.fromhex(d["key"]))],
                          username=d["username"], password=d["password"], client_id=d["username"],
                          ca_file=broker.ca_file).start()
                fleets.append(f)
            f1, f2 = fleets
            f1.send(d1["device"], rounds=10)
            f2.send(d2["device"], rounds=10)
            assert f1.wait_acked(20) and f2.wait_acked(20)
            # d1 publishing into d2's tree is refused by the broker's ACL: the rater never sees it
            topic, data = f1.devices[d1["device"]].usage([[2, 4, 5, 6]])
            f1.publish(topic.replace(f"/{d1['device']}/", f"/{d2['device']}/"), data)
            time.sleep(1.0)
            s = ledger_summary(url)
            assert s["batches"] == 2 and s["dead"] == {}
            # a wrong password is refused at CONNECT
            bad = Fleet(broker.host, broker.tls_port, [], username=d1["username"], password="nope",
                        client_id="intruder", ca_file=broker.ca_file)
            with pytest.raises(RuntimeError):
                bad.start(timeout=2)
        finally:
            for f in fleets:
                f.stop()
            rater.kill9()


def test_former_user_names_are_migrated_and_their_password_lines_dropped(store_url, tmp_path):
    from sqlalchemy import insert, select

    from edgemeter.cloud import db, devices
    from edgemeter.cloud import schema as S

    url = store_url                     # SQLite and PostgreSQL
    assert db.migrate(url, "0002") == "0002"
    engine = db.make_engine(url)
    with db.write_connect(engine) as conn, conn.begin():
        acc = conn.execute(insert(S.accounts).values(name="a", created_at=1)).inserted_primary_key[0]
        ws = conn.execute(insert(S.workspaces).values(account_id=acc, name="w", billing="postpaid",
                                                      created_at=1)).inserted_primary_key[0]
        conn.execute(insert(S.devices), [dict(id=d, workspace_id=ws, username=f"d{d}", password_hash="h%d" % d,
                                              kid=1, created_at=1) for d in (1041, 1042)])
    engine.dispose()
    assert db.migrate(url, "0003") == "0003"
    engine = db.make_engine(url)
    mq = tmp_path / "mq"
    mq.mkdir()
    (mq / "passwd").write_text("rater:r\nd1041:h1041\nd1042:h1042\n9/5:gone\nadmin:a\n")
    with engine.connect() as conn:
        assert conn.execute(select(S.devices.c.username).order_by(S.devices.c.id)).scalars().all() == [
            f"{ws}/1041", f"{ws}/1042"]
        r = devices.write_mosquitto_files(conn, mq)
    engine.dispose()
    assert (r["devices"], r["other_users"]) == (2, 2)
    assert (mq / "passwd").read_text() == f"rater:r\nadmin:a\n{ws}/1041:h1041\n{ws}/1042:h1042\n"
