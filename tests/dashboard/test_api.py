"""The HTTP API over a ledger that real device sessions filled through the rater's booking step
(SQLite file and PostgreSQL): its numbers equal the ledger's, tenants see only their own
objects, lists page and filter, CSV carries the same rows, live-update fingerprints move."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from edgemeter.cloud import accounts, alerts, invoices, pools, queries
from edgemeter.cloud import schema as S
from edgemeter.cloud.api import create_app
from firmware_py import civil
from firmware_py import pool as PL


@pytest.fixture(scope="module")
def app(ledger: dict[str, Any]):
    return create_app(engine=ledger["fleet"].engine, tokens={"static-operator-token-0123": None,
                                                            "static-tenant-token-globex": ledger["globex"]})


@pytest.fixture(scope="module")
def client(app) -> TestClient:
    return TestClient(app)


def get(client: TestClient, ledger: dict, path: str, who: str = "operator", **params: Any) -> Any:
    r = client.get("/api/v1" + path, params=params, headers={"Authorization": f"Bearer {ledger['tokens'][who]}"})
    assert r.status_code == 200, (path, r.status_code, r.text)
    return r.json() if r.headers["content-type"].startswith("application/json") else r.text


def status(client: TestClient, ledger: dict, path: str, who: str = "operator", **params: Any) -> int:
    return client.get("/api/v1" + path, params=params,
                      headers={"Authorization": f"Bearer {ledger['tokens'][who]}"}).status_code


def read(ledger: dict):  # type: ignore[no-untyped-def]
    return ledger["fleet"].engine.connect()


def month_of(t: int) -> str:
    y, m = civil.from_unix(t)[:2]
    return f"{y:04d}-{m:02d}"


# ------------------------------------------------------------------------------ values equal the ledger
def test_overview_and_usage_equal_the_booked_batches(client, ledger):
    ov = get(client, ledger, "/overview")
    b = S.usage_batches
    with read(ledger) as conn:
        n, rounds, rated = conn.execute(select(func.count(), func.sum(b.c.rounds), func.sum(b.c.rated_ucny))).one()
        lines = conn.execute(select(func.sum(S.usage_lines.c.ucny), func.sum(S.usage_lines.c.calls))).one()
        ndev = conn.execute(select(func.count()).select_from(S.devices)).scalar_one()
        nmis = conn.execute(select(func.count()).select_from(S.mismatches)).scalar_one()
    assert (ov["batches"], ov["rounds"], ov["rated_ucny"]) == (n, rounds, rated)
    assert (ov["devices"], ov["mismatches"], ov["accounts"]) == (ndev, nmis, 3)
    assert ov["dead_letters"] == 3     # malformed, bad MAC, unknown device
    # the booked usage is what the devices served, to the µCNY (the skewed device's own claim differs)
    served = sum(d.served_ucny for d in ledger["fleet"].devices.values() if d.dev != ledger["skewed"])
    with read(ledger) as conn:
        skewed = conn.execute(select(func.sum(b.c.rated_ucny)).where(b.c.device_id == ledger["skewed"])).scalar_one()
    assert rated == served + skewed
    items = get(client, ledger, "/usage/items", limit=1000)["items"]
    assert sum(i["ucny"] for i in items) == lines[0] == rated
    assert sum(i["calls"] for i in items) == lines[1]
    per_dev = get(client, ledger, "/usage/devices", limit=1000)["items"]
    assert sum(d["rated_ucny"] for d in per_dev) == rated
    sk = next(d for d in per_dev if d["device_id"] == ledger["skewed"])
    assert sk["device_ucny"] - sk["rated_ucny"] == 200 * 3 * sk["batches"]   # chat at 2.40 instead of 2.20


@pytest.mark.parametrize("bucket", ["minute", "hour", "day", "month"])
def test_usage_over_time_buckets_on_the_billing_calendar(client, ledger, bucket):
    rows = get(client, ledger, "/usage/time", bucket=bucket, limit=1000)["items"]
    items = get(client, ledger, "/usage/items", limit=1000)["items"]
    assert sum(r["ucny"] for r in rows) == sum(i["ucny"] for i in items)
    for r in rows:
        y, m, d, hh, mm, ss = civil.from_unix(r["start"])
        assert ss == 0 and (bucket == "minute" or mm == 0) and (bucket in ("minute", "hour") or hh == 0) \
            and (bucket != "month" or d == 1)
    since = ledger["end"] - 86400
    recent = get(client, ledger, "/usage/time", bucket=bucket, since=since, limit=1000)["items"]
    b = S.usage_batches
    with read(ledger) as conn:
        want = conn.execute(select(func.sum(S.usage_lines.c.ucny)).join(b, b.c.id == S.usage_lines.c.batch_id)
                            .where(b.c.t0 >= since)).scalar_one()
    assert sum(r["ucny"] for r in recent) == want


def test_pools_workspaces_and_leases_equal_the_projections(client, ledger):
    with read(ledger) as conn:
        for ws in (ledger["shops"], ledger["labs"], ledger["legacy"]):
            lv = pools.levels(conn, ws)
            body = get(client, ledger, f"/workspaces/{ws}/pool")
            assert {k: body["levels"][k] for k in S.POOL_BUCKETS} == lv
            assert body["levels"]["remaining"] == lv["added"] + lv["overdraft"] - lv["consumed"]
            assert get(client, ledger, f"/workspaces/{ws}")["pool"] == body["levels"]
            # the burn-down's last point is the pool as it stands (replayed from the entries)
            last = body["series"][-1]
            assert (last["added"], last["consumed"], last["remaining"]) == (
                lv["added"], lv["consumed"], body["levels"]["remaining"])
        leases = {(r["workspace_id"], r["id"]): r for r in conn.execute(select(S.leases)).mappings()}
    api_leases = get(client, ledger, "/leases", limit=1000)["items"]
    assert len(api_leases) == len(leases)
    for lease in api_leases:
        row = leases[(lease["workspace_id"], lease["id"])]
        assert (lease["total"], lease["used"], lease["booked"], lease["device_id"]) == (
            row["total"], row["used"], row["booked"], row["device_id"])
        assert lease["state"] == {PL.LIVE: "live", PL.RECLAIMED: "reclaimed", PL.CLOSED: "closed"}[row["state"]]
    dev = get(client, ledger, f"/devices/{ledger['shop_devs'][0]}")
    live = [v for (ws, _), v in leases.items() if v["device_id"] == dev["id"] and v["state"] != PL.CLOSED]
    assert dev["lease"]["total"] == live[-1]["total"] and dev["lease"]["remaining"] == live[-1]["total"] - live[-1]["used"]
    assert dev["online"] and dev["unsynced_batches"] == 0 and dev["acked_seq"] == dev["batches"]


def test_accounts_balances_and_invoices_come_from_the_services(client, ledger):
    month = month_of(ledger["end"])
    with read(ledger) as conn:
        for acc in (ledger["acme"], ledger["globex"], ledger["initech"]):
            bal = accounts.balances(conn, acc)
            body = get(client, ledger, f"/accounts/{acc}")
            assert (body["balance_ucny"], body["paid_ucny"], body["payg_ucny"], body["suspended"]) == (
                bal["balance_ucny"], bal["paid_ucny"], bal["payg_ucny"], bal["suspended"])
            assert body["trial"] == bal["trial"]
            assert [(p["id"], p["used_ucny"]) for p in body["plans"]] == [(p["id"], p["used_ucny"]) for p in bal["plans"]]
            inv = invoices.compute(conn, acc, month, queries.latest_book(conn))
            api_inv = get(client, ledger, f"/accounts/{acc}/invoices/{month}")
            assert api_inv["lines"] == inv["lines"] and api_inv["due_fen"] == inv["due_fen"]
            assert api_inv["purchases"] == inv["purchases"] and api_inv["purchases_cny"] == inv["purchases_cny"]
            assert [(o["id"], o["price_ucny"], o["paid_by"]) for o in body["orders"]] == [
                (o["id"], o["price_ucny"], o["paid_by"]) for o in accounts.orders(conn, acc)]
            assert body["purchases_ucny"] == bal["purchases_ucny"] == sum(o["price_ucny"] for o in body["orders"])
            assert api_inv["from"] == inv["from"] and month in get(client, ledger, f"/accounts/{acc}/invoices")["months"]
            text = get(client, ledger, f"/accounts/{acc}/invoices/{month}", format="csv")
            assert text == invoices.to_csv(inv)
    acme = get(client, ledger, f"/accounts/{ledger['acme']}")
    assert acme["trial"]["left_ucny"] == 0 and acme["plans"][0]["used_ucny"] > 0   # trial used up, then the plan
    kb = {"trial_fen": 0, "plan_fen": 0, "discount_fen": 0}
    for m in {month_of(ledger["end"] - 3 * 86400), month}:    # the usage may straddle a month end
        for ln in get(client, ledger, f"/accounts/{ledger['acme']}/invoices/{m}")["lines"]:
            if ln["name"] == "kb":
                kb = {k: v + ln[k] for k, v in kb.items()}
    assert kb["trial_fen"] > 0 and kb["plan_fen"] > 0 and kb["discount_fen"] > 0
    initech = get(client, ledger, f"/accounts/{ledger['initech']}/invoices/{month}")
    # 5 standard rounds, all pay-as-you-go: the total 27,250 µCNY is rounded to the fen once (3 fen)
    # and shared by largest remainder (0.375, 0.85, 0.4, 1.1 fen: chat 1, then tts and intent)
    assert [(ln["name"], ln["list_ucny"], ln["due_fen"], ln["due_cny"]) for ln in initech["lines"]] == [
        ("asr-standard", 3750, 0, "0.00"), ("tts-standard", 8500, 1, "0.01"), ("intent", 4000, 1, "0.01"),
        ("chat", 11000, 1, "0.01")]
    assert (initech["due_fen"], initech["list_fen"], initech["due_cny"]) == (3, 3, "0.03")


def test_licences_and_activations(client, ledger):
    purchases = get(client, ledger, "/licenses")["items"]
    assert [(p["workspace_id"], p["tier"], p["devices"], p["activated"]) for p in purchases] == [
        (ledger["shops"], "basic", 100, 2), (ledger["labs"], "trial", 100, 1), (ledger["legacy"], "basic", 100, 1)]
    soon = get(client, ledger, "/licenses/activations", expiring_within_days=30)["items"]
    assert [(a["workspace_id"], a["days_left"]) for a in soon] == [(ledger["legacy"], 14)]


def test_alerts_of_every_kind(client, ledger):
    got = {(a["kind"], a["subject"]) for a in get(client, ledger, "/alerts")["items"]}
    assert got == {
        ("pool_low", f"workspace {ledger['labs']} labs"),
        ("license_expiring", "activation 3"), ("license_expiring", "purchase 3"),
        ("account_suspended", f"account {ledger['initech']} initech"),
        ("rating_mismatch", f"device {ledger['skewed']}"),
        ("device_silent", f"device {ledger['silent']}"),
    }
    # a threshold above the shops pool's free units raises its alert too
    with read(ledger) as conn:
        free = {ws: pools.levels(conn, ws)["free"] for ws in (ledger["shops"], ledger["labs"], ledger["legacy"])}
    limit = free[ledger["shops"]] + 1
    low = get(client, ledger, "/alerts", kind="pool_low", pool_low_units=limit)["items"]
    assert {a["workspace_id"] for a in low} == {ws for ws, f in free.items() if f < limit} == {
        ledger["shops"], ledger["labs"]}
    assert all(a["value"] == free[a["workspace_id"]] and a["threshold"] == limit for a in low)
    assert get(client, ledger, "/alerts", kind="device_silent", silent_minutes=525600)["total"] == 0
    with read(ledger) as conn:
        assert alerts.compute(conn, ledger["end"], ledger["acme"]) == [
            a for a in alerts.compute(conn, ledger["end"]) if a["account_id"] == ledger["acme"]]


# ------------------------------------------------------------------------------ tenants and tokens
def test_a_tenant_sees_only_its_own_account(client, ledger):
    me = get(client, ledger, "/me", "acme")
    assert me == {"role": "tenant", "account_id": ledger["acme"], "token_id": me["token_id"]}
    assert [a["id"] for a in get(client, ledger, "/accounts", "acme")["items"]] == [ledger["acme"]]
    assert {w["id"] for w in get(client, ledger, "/workspaces", "acme")["items"]} == {
        ledger["shops"], ledger["kiosks"], ledger["legacy"]}
    assert {d["workspace_id"] for d in get(client, ledger, "/devices", "acme", limit=1000)["items"]} == {
        ledger["shops"], ledger["kiosks"]}
    for path in (f"/workspaces/{ledger['labs']}", f"/workspaces/{ledger['labs']}/pool",
                 f"/devices/{ledger['lab_devs'][0]}", f"/accounts/{ledger['globex']}",
                 f"/accounts/{ledger['globex']}/invoices", f"/accounts/{ledger['initech']}/invoices/2026-01"):
        r = client.get("/api/v1" + path, headers={"Authorization": f"Bearer {ledger['tokens']['acme']}"})
        missing = client.get("/api/v1" + path.replace(str(path.split("/")[2]), "999999", 1),
                             headers={"Authorization": f"Bearer {ledger['tokens']['operator']}"})
        assert r.status_code == missing.status_code == 404, path   # the same answer as a missing object
    # filters naming another tenant's objects find nothing
    assert get(client, ledger, "/leases", "acme", workspace_id=ledger["labs"])["total"] == 0
    assert get(client, ledger, "/usage/devices", "acme", account_id=ledger["globex"])["total"] == 0
    assert get(client, ledger, "/usage/items", "acme", workspace_id=ledger["labs"])["total"] == 0
    assert get(client, ledger, "/mismatches", "acme")["total"] == 0
    assert get(client, ledger, "/mismatches", "globex")["total"] > 0
    assert {a["account_id"] for a in get(client, ledger, "/alerts", "acme")["items"]} == {ledger["acme"]}
    assert status(client, ledger, "/dead-letters", "acme") == 403
    assert get(client, ledger, "/overview", "acme")["dead_letters"] is None
    # the globex tenant's numbers are its own
    ov = get(client, ledger, "/overview", "globex")
    b = S.usage_batches
    with read(ledger) as conn:
        rated = conn.execute(select(func.sum(b.c.rated_ucny)).where(b.c.account_id == ledger["globex"])).scalar_one()
    assert ov["rated_ucny"] == rated and ov["workspaces"] == 1


def test_tokens_missing_unknown_revoked_static(client, ledger):
    assert client.get("/api/v1/me").status_code == 401
    assert client.get("/api/v1/me").headers["www-authenticate"] == "Bearer"
    assert client.get("/api/v1/me", headers={"Authorization": "Bearer em_nope"}).status_code == 401
    assert client.get("/api/v1/me", headers={"Authorization": "Basic eDp5"}).status_code == 401
    assert status(client, ledger, "/me", "revoked") == 401
    r = client.get("/api/v1/me", headers={"Authorization": "Bearer static-operator-token-0123"})
    assert r.json()["role"] == "operator"
    r = client.get(f"/api/v1/workspaces/{ledger['shops']}", headers={"Authorization": "Bearer static-tenant-token-globex"})
    assert r.status_code == 404


def test_admin_create_token_cli_makes_a_working_tenant_token(client, ledger):
    out = subprocess.run([sys.executable, "-m", "edgemeter.tools.cli", "admin", "create-token", "--db", ledger["url"],
                          "--role", "tenant", "--account", str(ledger["initech"]), "--name", "cli", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    tok = json.loads(out.stdout)["token"]
    r = client.get("/api/v1/accounts", headers={"Authorization": f"Bearer {tok}"})
    assert [a["name"] for a in r.json()["items"]] == ["initech"]
    bad = subprocess.run([sys.executable, "-m", "edgemeter.tools.cli", "admin", "create-token", "--db", ledger["url"],
                          "--role", "operator", "--account", "1"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "operator token sees every account" in bad.stderr


# ------------------------------------------------------------------------------ pages, filters, CSV
def test_pagination_covers_every_row_once(client, ledger):
    seen, offset, pages = [], 0, 0
    while offset is not None:
        pg = get(client, ledger, "/devices", limit=3, offset=offset)
        assert pg["limit"] == 3 and pg["offset"] == offset and len(pg["items"]) <= 3
        seen += [d["id"] for d in pg["items"]]
        offset = pg["next_offset"]
        pages += 1
    assert seen == sorted(seen) and len(seen) == len(set(seen)) == pg["total"] == 10 and pages == 4
    assert get(client, ledger, "/devices", limit=5, offset=10)["items"] == []
    for bad in ({"limit": 0}, {"limit": 1001}, {"offset": -1}, {"workspace_id": 2 ** 63}):
        assert status(client, ledger, "/devices", **bad) == 422
    assert status(client, ledger, "/accounts/1/invoices/2026-13") == 422
    assert status(client, ledger, "/dead-letters", reason="x'; drop") == 422


def test_filters(client, ledger):
    labs = get(client, ledger, "/devices", workspace_id=ledger["labs"])["items"]
    assert {d["id"] for d in labs} == {*ledger["lab_devs"], ledger["skewed"], ledger["silent"]}
    online = {d["id"] for d in get(client, ledger, "/devices", online="true")["items"]}
    assert set(ledger["shop_devs"]) | set(ledger["kiosk_devs"]) <= online and ledger["silent"] not in online
    assert [d["id"] for d in get(client, ledger, "/devices", mismatched="true")["items"]] == [ledger["skewed"]]
    assert [d["id"] for d in get(client, ledger, "/devices", status="suspended")["items"]] == [ledger["desk"]]
    assert {w["billing"] for w in get(client, ledger, "/workspaces", billing="postpaid")["items"]} == {"postpaid"}
    assert {r["reason"] for r in get(client, ledger, "/dead-letters", reason="bad_mac")["items"]} == {"bad_mac"}
    assert get(client, ledger, "/mismatches", device_id=ledger["skewed"])["total"] == get(
        client, ledger, f"/devices/{ledger['skewed']}")["mismatches"]


def test_csv_carries_the_same_rows(client, ledger):
    js = get(client, ledger, "/devices", limit=1000)
    text = get(client, ledger, "/devices", limit=1000, format="csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [int(r["id"]) for r in rows] == [d["id"] for d in js["items"]]
    for r, d in zip(rows, js["items"]):
        assert int(r["rated_ucny"]) == d["rated_ucny"]
        assert r["lease.remaining"] == ("" if d["lease"] is None else str(d["lease"]["remaining"]))
        assert r["online"] == ("true" if d["online"] else "false")
    for path in ("/accounts", "/workspaces", "/pools", "/licenses", "/licenses/activations", "/leases", "/usage/items",
                 "/usage/devices", "/usage/time", "/alerts", "/dead-letters", "/mismatches"):
        r = client.get("/api/v1" + path, params={"format": "csv", "limit": 1000},
                       headers={"Authorization": f"Bearer {ledger['tokens']['operator']}"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv"), path
        n = get(client, ledger, path, limit=1000)["total"]
        assert len(list(csv.reader(io.StringIO(r.text)))) == n + 1, path


# ------------------------------------------------------------------------------ forecast, history, live
def test_forecast_is_the_least_squares_burn():
    day = 86400
    pts = [(1000 + i * day, 0, 500_000 * i, 0) for i in range(10)]        # 500,000 units a day, exactly
    f = queries.forecast(pts, pts[-1][0], 2_000_000, 30 * day)
    assert f["burn_per_day"] == 500_000 and f["exhausted_at"] == pts[-1][0] + 4 * day
    assert queries.forecast(pts[:1], pts[0][0], 10, day)["exhausted_at"] is None
    flat = [(t, 0, 7, 0) for t, *_ in pts]
    assert queries.forecast(flat, pts[-1][0], 10, 30 * day)["exhausted_at"] is None
    # only the recent window counts: a burst long ago does not set today's rate
    old = [(0, 0, 0, 0), (day, 0, 9_000_000, 0)] + [(40 * day + i * day, 0, 9_000_000 + 100 * i, 0) for i in range(5)]
    assert queries.forecast(old, 44 * day, 1000, 7 * day)["burn_per_day"] == 100


def test_pool_history_extends_and_equals_a_full_replay(client, ledger):
    fleet, ws = ledger["fleet"], ledger["shops"]
    before = get(client, ledger, f"/workspaces/{ws}/pool", points=5000)
    fp = get(client, ledger, "/changes")
    d = fleet.devices[ledger["shop_devs"][0]]
    fleet.clock.t = time.time()
    assert fleet.serve(d, 12, "standard") == 12
    after = get(client, ledger, f"/workspaces/{ws}/pool", points=5000)
    assert after["levels"]["consumed"] > before["levels"]["consumed"]
    fresh = queries.PoolHistory()
    with read(ledger) as conn:
        full = fresh.series(conn, ws)
        assert after["levels"] == queries.pool_summary(pools.levels(conn, ws))
    assert [(p["at"], p["added"], p["consumed"], p["remaining"]) for p in after["series"]] == [tuple(p) for p in full]
    fp2 = get(client, ledger, "/changes")
    assert fp2["batch"] > fp["batch"] and fp2["pool"] > fp["pool"]
    assert get(client, ledger, "/changes", "globex")["batch"] == get(client, ledger, "/changes", "globex")["batch"]


def test_openapi_document_lists_every_route(client):
    doc = client.get("/openapi.json").json()
    paths = set(doc["paths"])
    for p in ("/api/v1/accounts", "/api/v1/workspaces", "/api/v1/pools", "/api/v1/licenses", "/api/v1/devices",
              "/api/v1/leases", "/api/v1/usage/items", "/api/v1/usage/devices", "/api/v1/usage/time",
              "/api/v1/accounts/{account_id}/invoices/{month}", "/api/v1/alerts", "/api/v1/dead-letters",
              "/api/v1/mismatches", "/api/v1/changes"):
        assert p in paths, p
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert client.get("/docs").status_code == 404     # no CDN-backed Swagger UI
    index = client.get("/")
    assert index.status_code == 200 and "default-src 'self'" in index.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/charts.js", "/static/app.css"):
        assert client.get(asset).status_code == 200
    assert "http" not in index.text.replace("http-equiv", "")   # no external asset in the page


def test_the_event_stream_is_in_the_openapi_document_and_streams_the_fingerprint(ledger):
    """GET /api/v1/events (rule H6) is documented as text/event-stream behind the bearer token,
    and what it streams is the /changes fingerprint of the caller's scope."""
    c = TestClient(create_app(engine=ledger["fleet"].engine, events_interval_s=0.05, events_max_s=0.3))
    op = c.get("/openapi.json").json()["paths"]["/api/v1/events"]["get"]
    assert list(op["responses"]["200"]["content"]) == ["text/event-stream"]
    assert op["security"] == [{"HTTPBearer": []}] and "401" in op["responses"]
    for who in ("operator", "globex"):
        r = c.get("/api/v1/events", headers={"Authorization": f"Bearer {ledger['tokens'][who]}"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.text.startswith("retry: 2000\n\n")
        changes = [json.loads(block.split("\ndata: ", 1)[1]) for block in r.text.split("\n\n")
                   if block.startswith("event: change")]
        assert changes and changes[0] == get(c, ledger, "/changes", who)
    assert c.get("/api/v1/events").status_code == 401
