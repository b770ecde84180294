"""Every device claim is bounded by what the cloud granted, on a real ledger (SQLite; SQLite and
PostgreSQL where the store's integer range matters) through the rater's real booking step
(cloud.ingest.Ingest, what `edgemeter rater` runs per group):

 - a signed lease report of use far beyond the lease cannot drain the workspace pool, starve
   the next device or overflow the pool's projections (the use counted is bounded by the
   lease's grant, its offline allowance and one round: pool P5);
 - a usage batch with any integer field outside the ledger's signed 64-bit range gets a
   definite verdict (booked as invalid, or for an unstorable seq dead-lettered as
   `out_of_range`), the device is told in a signed ack, and nothing is an `internal` failure;
 - the API's aggregates stay exact (no SQL sum overflow) after batches claiming 2^63-1;
 - no flood of a device's batches over time can overflow its account's balance or its
   lease's booked total: at billing.LIMIT (2^60 µCNY) a batch is booked uncharged with a
   definite verdict (billing P9, cloud.pools S7);
 - `admin rebuild --check` checks the invariants (no lease used beyond its bound, no bucket
   below zero), not only that the projections match the entries.
"""
from __future__ import annotations

import subprocess
import sys

from fastapi.testclient import TestClient
from sqlalchemy import select, update

from rater_helpers import ROOT, NOW, ledger_summary, setup_store
from edgemeter.cloud import accounts, db, ingest, pools
from edgemeter.cloud import schema as S
from edgemeter.cloud.api import create_app
from edgemeter.tools.fleetpub import STANDARD_CHAT, STANDARD_CHAT_UCNY, Device
from firmware_py import billing
from firmware_py import pool as PL
from firmware_py import proto as P

BIG = 1 << 63


class Rig:
    """Devices of setup_store signing messages into one Ingest on a SQLite file."""

    def __init__(self, url: str, postpaid: int = 1, license_: int = 2):
        self.url = url
        self.reg = setup_store(url, postpaid_devices=postpaid, license_devices=license_)
        self.engine = db.open_store(url)
        self.ing = ingest.Ingest(self.engine)
        self.devs = {d["id"]: Device(d["workspace"], d["id"], d["key"])
                     for k in ("postpaid", "license") for d in self.reg[k]}
        self.down: dict[int, list[dict]] = {}

    def send(self, *msgs: tuple[str, bytes]) -> ingest.Outcome:
        out = self.ing.process([ingest.Incoming(t, p, NOW * 1000) for t, p in msgs])
        for topic, data in out.publish:
            _, dev, _ = P.parse_topic(topic)
            code, msg = P.check(data, self.devs[dev].keys, dev)
            assert code == P.OK
            self.down.setdefault(dev, []).append(msg)
            if msg["type"] == P.ACK:
                self.devs[dev].on_down(data)
        return out

    def grant(self, dev: int) -> dict:
        return [m for m in self.down[dev] if m["type"] == P.GRANT][-1]

    def pool_row(self, ws: int) -> dict:
        with self.engine.connect() as conn:
            return dict(conn.execute(select(S.pools).where(S.pools.c.workspace_id == ws)).mappings().one())

    def rebuild_check(self) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "edgemeter.tools.cli", "admin", "rebuild", "--db", self.url,
                               "--check"], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_lease_report_beyond_the_grant_cannot_drain_the_pool(tmp_path):
    rig = Rig(f"sqlite:///{tmp_path / 'ledger.db'}")
    a, b = (d["id"] for d in rig.reg["license"])
    ws = rig.reg["lic_ws"]
    da = rig.devs[a]
    rig.send(da.control(P.LEASE_REQUEST, want=0))
    g = rig.grant(a)
    free_before = rig.pool_row(ws)["free"]
    out = rig.send(da.control(P.LEASE_RENEW, lease=g["lease"], used=1 << 62, want=0),
                   da.control(P.LEASE_RENEW, lease=g["lease"], used=BIG - 101, want=0))
    assert "internal" not in out.dead
    p = rig.pool_row(ws)
    with rig.engine.connect() as conn:
        lease = conn.execute(select(S.leases).where(S.leases.c.workspace_id == ws,
                                                    S.leases.c.id == g["lease"])).mappings().one()
    assert lease["used"] <= lease["total"] + lease["allow"] + pools.OVERSHOOT
    assert p["overdraft"] <= pools.OVERSHOOT
    assert free_before - p["free"] <= 2 * g["total"] + pools.OVERSHOOT
    # the next device still gets units, and later batches of the workspace book and are acked
    rig.send(rig.devs[b].control(P.LEASE_REQUEST, want=0))
    assert rig.grant(b)["total"] > 0
    out = rig.send(da.usage([STANDARD_CHAT], lease=g["lease"]), rig.devs[b].usage([STANDARD_CHAT],
                                                                               lease=rig.grant(b)["lease"]))
    assert out.booked == 2 and out.dead == {}
    assert da.acked == da.seq and rig.devs[b].acked == rig.devs[b].seq
    r = rig.rebuild_check()
    assert r.returncode == 0, r.stdout + r.stderr


def test_integers_beyond_the_store_get_a_definite_verdict(store_url):
    rig = Rig(store_url, postpaid=1, license_=0)
    dev = rig.reg["postpaid"][0]["id"]
    d = rig.devs[dev]
    told: dict[str, int] = {}
    for field in ("ucny", "t0", "lease", "boot", "ver", "seq"):
        topic, _ = d.usage([STANDARD_CHAT])
        msg = dict(d.unacked[d.seq], **{field: BIG})
        if field == "seq":                      # not a number this device sealed
            del d.unacked[d.seq]
            d.seq -= 1
        else:
            d.unacked[d.seq] = msg
        out = rig.send((topic, P.seal(d.key, msg)))
        assert "internal" not in out.dead, (field, out.dead)
        acks = [m for m in rig.down[dev] if m["type"] == P.ACK]
        told[field] = acks[-1].get("verdicts", {}).get(msg["seq"], -1)
    assert told == {f: P.V_INVALID for f in told}
    # booked as invalid (the ack passed them); the unstorable seq is a dead letter, not a failure
    assert d.acked == d.seq == 5 and not d.unacked
    s = ledger_summary(rig.url)
    assert s["per_device"] == {dev: 5} and s["dead"] == {"out_of_range": 1}
    out = rig.send(d.usage([STANDARD_CHAT]))
    assert out.booked == 1 and d.acked == 6
    r = rig.rebuild_check()
    assert r.returncode == 0, r.stdout + r.stderr


def test_api_aggregates_stay_exact_after_claims_of_2_63(tmp_path):
    rig = Rig(f"sqlite:///{tmp_path / 'ledger.db'}", postpaid=1, license_=0)
    dev = rig.reg["postpaid"][0]["id"]
    d = rig.devs[dev]
    out = rig.send(d.usage([STANDARD_CHAT], ucny=BIG - 1), d.usage([STANDARD_CHAT], ucny=BIG - 1))
    assert "internal" not in out.dead and d.acked == 2
    client = TestClient(create_app(engine=rig.engine, tokens={"op-token-for-the-claims-test": None,
                                                             "tenant-token-for-the-claims": rig.reg["account"]}))
    for token in ("op-token-for-the-claims-test", "tenant-token-for-the-claims"):
        h = {"Authorization": f"Bearer {token}"}
        for path in ("/api/v1/overview", "/api/v1/alerts", "/api/v1/usage/devices", "/api/v1/devices", "/api/v1/mismatches"):
            r = client.get(path, headers=h)
            assert r.status_code == 200, (path, r.status_code, r.text[:300])
    with rig.engine.connect() as conn:
        claimed = sum(conn.execute(select(S.usage_batches.c.device_ucny)).scalars())
    rows = client.get("/api/v1/usage/devices", headers=h).json()["items"]
    assert [r["device_ucny"] for r in rows] == [claimed]


def test_rebuild_check_finds_a_lease_used_beyond_its_grant(tmp_path):
    """A store written before reports were bounded (or by hand): its projections match its
    entries, yet a lease counts use far beyond its grant; --check must say so."""
    rig = Rig(f"sqlite:///{tmp_path / 'ledger.db'}", postpaid=0, license_=1)
    dev = rig.reg["license"][0]["id"]
    ws = rig.reg["lic_ws"]
    rig.send(rig.devs[dev].control(P.LEASE_REQUEST, want=0))
    lid = rig.grant(dev)["lease"]
    assert rig.rebuild_check().returncode == 0
    with db.write_connect(rig.engine) as conn, conn.begin():
        pool = pools.load(conn, ws, {lid})
        e = pool.apply([PL.OP_REPORT, lid, 1 << 62, NOW])     # the unbounded report of old
        pools.store(conn, pool, [e], NOW)
    r = rig.rebuild_check()
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"lease {ws}/{lid}: used" in r.stdout and "beyond its bound" in r.stdout
    assert "differ" not in r.stdout                          # the projections do match


def test_api_sums_of_claims_written_before_the_bound_stay_exact(store_url):
    """A store booked before claims were bounded holds device deductions of 2^63 - 1: the
    API's sums over them are exact integers, not a SQL overflow (500)."""
    from sqlalchemy import update
    rig = Rig(store_url, postpaid=1, license_=0)
    dev = rig.reg["postpaid"][0]["id"]
    d = rig.devs[dev]
    rig.send(d.usage([STANDARD_CHAT], ucny=1), d.usage([STANDARD_CHAT], ucny=2))     # two mismatches
    with db.write_connect(rig.engine) as conn, conn.begin():
        conn.execute(update(S.usage_batches).values(device_ucny=BIG - 1))
        conn.execute(update(S.mismatches).values(device_ucny=BIG - 1))
    client = TestClient(create_app(engine=rig.engine, tokens={"op-token-for-the-claims-test": None}))
    h = {"Authorization": "Bearer op-token-for-the-claims-test"}
    for path in ("/api/v1/overview", "/api/v1/alerts", "/api/v1/usage/devices", "/api/v1/devices"):
        r = client.get(path, headers=h)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
    assert [r["device_ucny"] for r in client.get("/api/v1/usage/devices", headers=h).json()["items"]] == [
        2 * (BIG - 1)]
    alert = [a for a in client.get("/api/v1/alerts", headers=h).json()["items"] if a["kind"] == "rating_mismatch"]
    assert str(2 * (BIG - 1) - 2 * 5450) in alert[0]["message"]


def test_a_seq_far_ahead_of_the_ack_is_refused_and_counts_nothing_unsynced(tmp_path):
    """seq 2^63 - 1 fits the ledger but no device seals 2^32 batches ahead of its acks: such a
    batch (or status) is refused with a definite verdict, and the API's unsynced count stays true."""
    rig = Rig(f"sqlite:///{tmp_path / 'ledger.db'}", postpaid=1, license_=0)
    dev = rig.reg["postpaid"][0]["id"]
    d = rig.devs[dev]
    rig.send(d.usage([STANDARD_CHAT]))
    topic, _ = d.usage([STANDARD_CHAT])
    msg = dict(d.unacked.pop(d.seq), seq=BIG - 1)
    d.seq -= 1
    out = rig.send((topic, P.seal(d.key, msg)),
                   d.control(P.STATUS, t=NOW, seq=BIG - 1, acked=1, lease=0, used=0, remaining=0, ver=1, flags=0))
    assert out.dead == {"out_of_range": 2} and out.booked == 0
    assert [m for m in rig.down[dev] if m["type"] == P.ACK][-1]["verdicts"] == {BIG - 1: P.V_INVALID}
    client = TestClient(create_app(engine=rig.engine, tokens={"op-token-for-the-claims-test": None}))
    ov = client.get("/api/v1/overview", headers={"Authorization": "Bearer op-token-for-the-claims-test"}).json()
    assert ov["unsynced_batches"] == 0 and ov["batches"] == 1


def _verdicts(rig: Rig, dev: int) -> dict[int, int]:
    return [m for m in rig.down[dev] if m["type"] == P.ACK][-1].get("verdicts", {})


def _balance(rig: Rig) -> int:
    with rig.engine.connect() as conn:
        return conn.execute(select(S.account_balances.c.balance_ucny)
                            .where(S.account_balances.c.account_id == rig.reg["account"])).scalar_one()


def test_a_postpaid_balance_stops_at_the_debt_limit(tmp_path):
    """billing P9 through the booking step: the account already owes LIMIT - one chat round
    (charged through the core, as some twenty million maximal batches would have left it): the
    next round is charged and takes it exactly to -LIMIT; the one after is booked uncharged,
    the device acked V_INVALID for it, a `debt limit` mismatch recorded, and the ledger stays
    consistent."""
    rig = Rig(f"sqlite:///{tmp_path / 'ledger.db'}", postpaid=1, license_=0)
    dev = rig.reg["postpaid"][0]["id"]
    d = rig.devs[dev]
    acc = rig.reg["account"]
    with db.write_connect(rig.engine) as conn, conn.begin():
        held = accounts.load_state(conn, [acc])[acc]["balance"]
        _, refused = accounts.charge(conn, [(acc, None, held), (acc, None, billing.LIMIT - STANDARD_CHAT_UCNY)], NOW)
        assert refused == []
    assert _balance(rig) == -billing.LIMIT + STANDARD_CHAT_UCNY
    out = rig.send(d.usage([STANDARD_CHAT]))
    assert out.booked == 1 and _balance(rig) == -billing.LIMIT and _verdicts(rig, dev) == {}
    out = rig.send(d.usage([STANDARD_CHAT]))
    assert out.booked == 1 and "internal" not in out.dead and d.acked == 2
    assert _verdicts(rig, dev) == {2: P.V_INVALID} and _balance(rig) == -billing.LIMIT
    with rig.engine.connect() as conn:
        assert [r.reason for r in conn.execute(select(S.mismatches))] == ["debt limit"]
        uncharged = conn.execute(select(S.usage_batches.c.id).where(S.usage_batches.c.seq == 2)).scalar_one()
        assert conn.execute(select(S.account_entries).where(S.account_entries.c.batch_id == uncharged)).first() is None
    r = rig.rebuild_check()
    assert r.returncode == 0, r.stdout + r.stderr
    with db.write_connect(rig.engine) as conn, conn.begin():
        try:
            accounts.top_up(conn, acc, billing.LIMIT * 2, NOW)
            raise AssertionError("a top-up above LIMIT was taken")
        except billing.BillingError as e:
            assert e.rule == "amount-range"


def test_a_balance_projection_near_the_64_bit_floor_gets_a_definite_verdict(tmp_path):
    """A store whose balance projection sits a round above -2^63 (as some 170 million maximal
    batches booked before the debt limit would have left it): the next batch used to raise
    OverflowError (an `internal` dead letter, never acked); now it is booked uncharged and the
    device told."""
    rig = Rig(f"sqlite:///{tmp_path / 'ledger.db'}", postpaid=1, license_=0)
    dev = rig.reg["postpaid"][0]["id"]
    d = rig.devs[dev]
    with db.write_connect(rig.engine) as conn, conn.begin():
        conn.execute(update(S.account_balances).values(balance_ucny=-BIG + 1000, suspended=True))
    out = rig.send(d.usage([STANDARD_CHAT]))
    assert "internal" not in out.dead and out.booked == 1 and d.acked == 1
    assert _verdicts(rig, dev) == {1: P.V_INVALID} and _balance(rig) == -BIG + 1000
    with db.write_connect(rig.engine) as conn, conn.begin():      # the same state from entries
        conn.execute(update(S.account_balances).values(balance_ucny=0, paid_ucny=0, suspended=False))
        acc = rig.reg["account"]
        conn.execute(S.account_entries.insert().values(account_id=acc, batch_id=None, at=NOW, kind="payg", ref=0,
                                                       list_ucny=BIG - 1000, bp=10000))
        conn.execute(S.payments.delete())
    r = rig.rebuild_check()
    assert r.returncode == 1 and f"account {acc}: balance {-BIG + 1000} beyond the limit" in r.stdout, r.stdout


def test_a_leases_booked_total_stops_at_the_limit(tmp_path):
    """cloud.pools S7 through the booking step: a lease whose booked total sits a round below
    LIMIT (as some twenty million maximal batches would have left it) takes the next batch
    only if it fits; the one that does not is booked unreported, the device acked V_INVALID."""
    rig = Rig(f"sqlite:///{tmp_path / 'ledger.db'}", postpaid=0, license_=1)
    dev = rig.reg["license"][0]["id"]
    ws = rig.reg["lic_ws"]
    d = rig.devs[dev]
    rig.send(d.control(P.LEASE_REQUEST, want=0))
    lid = rig.grant(dev)["lease"]
    with db.write_connect(rig.engine) as conn, conn.begin():
        conn.execute(update(S.leases).where(S.leases.c.workspace_id == ws, S.leases.c.id == lid)
                     .values(booked=billing.LIMIT - STANDARD_CHAT_UCNY))
    out = rig.send(d.usage([STANDARD_CHAT], lease=lid))
    assert out.booked == 1 and _verdicts(rig, dev) == {}
    out = rig.send(d.usage([STANDARD_CHAT], lease=lid))
    assert out.booked == 1 and "internal" not in out.dead and d.acked == 2
    assert _verdicts(rig, dev) == {2: P.V_INVALID}
    with rig.engine.connect() as conn:
        booked = conn.execute(select(S.leases.c.booked).where(S.leases.c.workspace_id == ws,
                                                             S.leases.c.id == lid)).scalar_one()
        reasons = [r.reason for r in conn.execute(select(S.mismatches))]
    assert booked == billing.LIMIT and "lease limit" in reasons
