"""The dashboard in headless Chromium (Debian's /usr/bin/chromium driven by Playwright) against
`edgemeter dashboard` running as a real subprocess over a SQLite ledger that real device
sessions filled through the rater's booking step (on a simulated clock: three days of history);
then those devices publish through a real Mosquitto to a real `edgemeter rater` process while
the page is open, and the page follows.

Skipped with the reason when Chromium is missing, except under CI=true, where that fails.
EDGEMETER_UPDATE_SCREENSHOT=1 also writes docs/dashboard.png (the README's screenshot).
"""
from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from sqlalchemy import func, select

from edgemeter.cloud import accounts, db, invoices, pools, queries, tokens
from edgemeter.cloud import schema as S
from firmware_py import civil

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parents[2]
OPERATOR = "operator-token-for-the-browser-test"


def _need_chromium() -> None:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing under CI=true (tools/dev.sh installs the Debian package chromium)")
        pytest.skip(f"{CHROMIUM} is missing (install the Debian package chromium: bash tools/dev.sh test does)")


@pytest.fixture(scope="module")
def server(sqlite_ledger: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """`edgemeter dashboard` as a subprocess on a free port; {"url", "proc", "ledger"}."""
    _need_chromium()
    exe = Path(sys.executable).with_name("edgemeter")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "edgemeter.tools.cli"]
    proc = subprocess.Popen(cmd + ["dashboard", "--db", sqlite_ledger["url"], "--port", "0", "--token", OPERATOR],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        m = re.search(r"serving (http://\S+/)", line)
        assert m, f"dashboard did not start: {line!r}"
        url = m.group(1).rstrip("/")
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "dashboard did not answer /healthz"
            time.sleep(0.1)
        yield {"url": url, "proc": proc, "ledger": sqlite_ledger}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, f"dashboard exited with {proc.returncode}"


@pytest.fixture
def rater(server: dict[str, Any], mosquitto: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """`edgemeter rater` as a subprocess on a real Mosquitto over the same ledger, and the
    populated fleet switched to publishing through that broker on the real clock."""
    led = server["ledger"]
    exe = Path(sys.executable).with_name("edgemeter")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "edgemeter.tools.cli"]
    log_path = tmp_path / "rater.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd + ["rater", "--broker", f"mqtt://{mosquitto.host}:{mosquitto.port}", "--db",
                                       led["url"], "--client-id", "dash-rater", "--housekeeping", "1"],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        deadline = time.monotonic() + 30
        while '"subscribed"' not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.05)
        led["fleet"].attach_mqtt(mosquitto.host, mosquitto.port)
        yield {"proc": proc, "log": log_path}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, log_path.read_text()[-3000:]


@pytest.fixture(scope="module")
def browser(server: dict[str, Any]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


class Page:
    """A signed-in page and every console error / uncaught exception it produced."""

    def __init__(self, browser: Any, server: dict[str, Any], token: str):
        self.ctx = browser.new_context(viewport={"width": 1300, "height": 900}, accept_downloads=True)
        self.page = self.ctx.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.base = server["url"]
        self.page.goto(f"{self.base}/#token={token}")
        self.page.wait_for_selector("[data-testid=devices]")

    def wait(self, expr: str, timeout: float = 20.0) -> Any:
        """Poll a JS expression until truthy (wait_for_function evals strings, which the page's
        Content-Security-Policy forbids, as it should)."""
        deadline = time.monotonic() + timeout
        while True:
            v = self.page.evaluate(expr)
            if v:
                return v
            assert time.monotonic() < deadline, f"timed out waiting for {expr}"
            time.sleep(0.1)

    def view(self, frag: str, ready: str) -> Any:
        n = int(self.page.get_attribute("#updated", "data-refreshes") or 0)
        self.page.evaluate(f"location.hash = {frag!r}")
        self.wait(f"Number(document.querySelector('#updated').dataset.refreshes) > {n}")
        self.page.wait_for_selector(ready)
        return self.page

    def value(self, testid: str) -> int:
        return int(self.page.get_attribute(f"[data-testid={testid}]", "data-value"))

    def column(self, table: str, col: str) -> dict[str, str]:
        return self.page.eval_on_selector_all(
            f"[data-testid={table}] tbody tr",
            f"rows => Object.fromEntries(rows.map(r => [r.dataset.id, r.querySelector('[data-col={col}]').dataset.value]))")

    def values(self, table: str, col: str) -> list[str]:
        return self.page.eval_on_selector_all(f"[data-testid={table}] tbody td[data-col={col}]",
                                              "cells => cells.map(c => c.dataset.value)")

    def close(self) -> None:
        self.ctx.close()


@pytest.fixture
def operator(browser: Any, server: dict[str, Any]) -> Iterator[Page]:
    p = Page(browser, server, OPERATOR)
    yield p
    p.close()


def read(server: dict[str, Any]):  # type: ignore[no-untyped-def]
    return server["ledger"]["fleet"].engine.connect()


def test_every_view_renders_without_console_errors_and_shows_the_ledger(operator: Page, server, tmp_path):
    led = server["ledger"]
    b = S.usage_batches
    with read(server) as conn:
        rounds, rated = conn.execute(select(func.sum(b.c.rounds), func.sum(b.c.rated_ucny))).one()
        per_dev = dict(conn.execute(select(b.c.device_id, func.sum(b.c.rated_ucny)).group_by(b.c.device_id)).all())
        levels = {ws: pools.levels(conn, ws) for ws in (led["shops"], led["labs"], led["legacy"])}
        leases = {r["device_id"]: max(0, r["total"] - r["used"]) for r in
                  conn.execute(select(S.leases).where(S.leases.c.state != 3).order_by(S.leases.c.id)).mappings()}
        month = "%04d-%02d" % civil.from_unix(led["end"])[:2]
        inv = invoices.compute(conn, led["acme"], month, queries.latest_book(conn))
        bal = accounts.balances(conn, led["acme"])
        ndev = conn.execute(select(func.count()).select_from(S.devices)).scalar_one()
    pg = operator
    # fleet overview
    assert (pg.value("ov-rounds"), pg.value("ov-rated"), pg.value("ov-devices")) == (rounds, rated, ndev)
    assert {int(k): int(v) for k, v in pg.column("devices", "rated_ucny").items()} == {
        d: per_dev.get(d, 0) for d in range(1001, 1001 + ndev)}
    shown = {int(k): v for k, v in pg.column("devices", "lease").items() if v != ""}
    assert shown == {d: str(leases[d]) for d in shown} and set(shown) == set(leases)
    assert pg.page.locator("[data-testid=devices] tbody tr[data-id='%d'] .flag" % led["skewed"]).count() == 1
    shot = tmp_path / "fleet.png"
    pg.page.screenshot(path=str(shot), full_page=True)
    # pools: every bucket of every pool equals the projection; each has a burn-down and a forecast
    page = pg.view("#/pools", "[data-testid=pools]")
    for ws, lv in levels.items():
        card = page.locator(f"[data-testid=pool][data-ws='{ws}']")
        for k in S.POOL_BUCKETS:
            assert int(card.locator(f"[data-testid=pool-{k}]").get_attribute("data-value")) == lv[k], (ws, k)
        assert card.locator("svg path.series").count() >= 1
    fc = page.locator(f"[data-testid=pool][data-ws='{led['shops']}'] [data-testid=forecast]")
    assert int(fc.get_attribute("data-exhausted")) > led["end"] and "forecast empty on" in fc.inner_text()
    if os.environ.get("EDGEMETER_UPDATE_SCREENSHOT") == "1":
        (ROOT / "docs").mkdir(exist_ok=True)
        page.screenshot(path=str(ROOT / "docs" / "dashboard.png"), full_page=True)
    # the invoice and the balances are the services' numbers
    page = pg.view(f"#/invoices?account={led['acme']}&month={month}", "[data-testid=invoice-lines]")
    for k in ("list", "discount", "trial", "plan", "due"):
        assert pg.value(f"inv-{k}") == inv[f"{k}_fen"], k
    names = page.eval_on_selector_all("[data-testid=invoice-lines] tbody tr td[data-col=name]", "t => t.map(x => x.textContent)")
    assert names == [ln["name"] for ln in inv["lines"]]
    for k in ("list", "discount", "trial", "plan", "due"):     # the displayed columns add up, in CNY.xx
        texts = page.eval_on_selector_all(f"[data-testid=invoice-lines] tbody td[data-col={k}_fen]",
                                          "t => t.map(x => x.textContent)")
        assert all(re.fullmatch(r"[\d,]+\.\d\d", t) for t in texts), texts
        assert sum(int(t.replace(",", "").replace(".", "")) for t in texts) == inv[f"{k}_fen"], k
    plan_texts = page.eval_on_selector_all("[data-testid=plans] tbody td[data-col$=_ucny]", "t => t.map(x => x.textContent)")
    assert plan_texts and all(re.fullmatch(r"[\d,]+\.\d\d", t) for t in plan_texts), plan_texts
    assert pg.value("bal-balance") == bal["balance_ucny"] and pg.value("bal-trial") == bal["trial"]["left_ucny"]
    assert pg.value("bal-paid") == bal["paid_ucny"]
    assert page.locator("[data-testid=invoice-purchases] tbody tr").count() == len(inv["purchases"])
    # usage, licences, alerts, operations
    page = pg.view("#/usage?range=all", "[data-testid=usage-items]")
    assert sum(int(v) for v in pg.values("usage-items", "ucny")) == rated
    assert page.locator("[data-testid=usage-chart] g.bar").count() >= 3
    page = pg.view("#/licenses", "[data-testid=activations]")
    assert page.locator("[data-testid=activations] tbody tr").count() == 3
    page = pg.view("#/alerts", "[data-testid=alerts]")
    kinds = page.eval_on_selector_all("[data-testid=alerts] td[data-col=kind]", "t => t.map(x => x.textContent)")
    assert sorted(kinds) == sorted(["pool_low", "license_expiring", "license_expiring", "account_suspended",
                                    "rating_mismatch", "device_silent"])
    page = pg.view("#/ops", "[data-testid=dead-letters]")
    assert page.locator("[data-testid=dead-letters] tbody tr").count() == 3
    page = pg.view("#/workspaces", "[data-testid=workspaces]")
    assert page.locator("[data-testid=workspaces] tbody tr").count() == 5
    assert pg.errors == []


def test_csv_export_is_what_the_table_shows(operator: Page):
    page = operator.page
    with page.expect_download() as dl:
        page.click("[data-testid=devices-csv]")
    text = Path(dl.value.path()).read_text()
    rows = list(csv.reader(io.StringIO(text)))
    header = page.eval_on_selector_all("[data-testid=devices] thead th", "t => t.map(x => x.textContent)")
    cells = page.eval_on_selector_all("[data-testid=devices] tbody tr",
                                      "rows => rows.map(r => [...r.cells].map(c => c.textContent.trim()))")
    assert rows == [header] + cells and len(cells) == 10
    assert operator.errors == []


def test_live_update_and_a_low_pool_alert_without_reloading(operator: Page, server, rater):
    """Devices publish through Mosquitto, the rater process books, the open page follows."""
    led = server["ledger"]
    fleet = led["fleet"]
    page = operator.page
    page.evaluate("window.__same_document = 1")
    operator.wait("document.querySelector('#live').dataset.state === 'sse'")
    before = operator.value("ov-rounds")
    in_process = len(fleet.outcomes)      # bookings made by this process's own booking step
    d = fleet.devices[led["shop_devs"][1]]
    assert fleet.serve(d, 7, "lite") == 7
    with read(server) as conn:
        after = conn.execute(select(func.sum(S.usage_batches.c.rounds))).scalar_one()
    assert after == before + 7
    operator.wait(f"document.querySelector('[data-testid=ov-rounds]').dataset.value === '{after}'")
    # a new License workspace whose pool runs low while the alerts view is open
    operator.view("#/alerts", "[data-testid=alerts]")
    acc = led["acme"]
    ws = fleet.workspace(acc, "pilot", "license", licenses=100, activate=1, tier="trial", grant=500_000,
                         low=1_000_000)
    dev = fleet.device(ws)
    assert "pilot" not in page.inner_text("[data-testid=alerts]")
    assert fleet.serve(dev, 100, "standard") == 100
    deadline = time.monotonic() + 30
    while True:   # the renewal that takes the pool below 1,000,000 free units is the rater's to grant
        with read(server) as conn:
            free = pools.levels(conn, ws)["free"]
        if free < 1_000_000 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert free < 1_000_000
    row = page.locator("[data-testid=alerts] tbody tr", has_text="pilot")
    row.wait_for()
    assert "pool_low" in row.inner_text() and f"has {free} free units" in row.inner_text()
    assert page.evaluate("window.__same_document") == 1     # updated in place: no reload
    assert len(fleet.outcomes) == in_process                 # all of it booked by the rater process
    assert operator.errors == []


def test_a_tenant_cannot_see_another_tenants_workspace(browser, server):
    led = server["ledger"]
    with db.write_connect(server["ledger"]["fleet"].engine) as conn, conn.begin():
        tok = tokens.create(conn, "tenant", led["acme"], "browser", led["end"])["token"]
    pg = Page(browser, server, tok)
    try:
        page = pg.page
        assert page.inner_text("[data-testid=whoami]").startswith("tenant")
        with read(server) as conn:
            mine = set(conn.execute(select(S.devices.c.id).join(S.workspaces, S.workspaces.c.id == S.devices.c.workspace_id)
                                    .where(S.workspaces.c.account_id == led["acme"])).scalars())
        ids = {int(k) for k in pg.column("devices", "id")}
        assert ids == mine and set(led["shop_devs"]) | set(led["kiosk_devs"]) <= ids and not ids & set(led["lab_devs"])
        pg.view("#/workspaces", "[data-testid=workspaces]")
        names = pg.values("workspaces", "name")
        assert "labs" not in names and {"shops", "kiosks", "legacy"} <= set(names)
        assert pg.errors == []
        pg.view(f"#/workspace/{led['labs']}", "[data-testid=not-found]")
        assert "labs" not in page.inner_text("main")
        pg.view(f"#/pools/{led['labs']}", "[data-testid=not-found]")
        pg.view(f"#/workspace/{led['shops']}", "[data-testid=workspace-detail]")
        pg.view("#/pools", "[data-testid=pools]")
        assert page.locator(f"[data-testid=pool][data-ws='{led['labs']}']").count() == 0
        # the only console errors are the API's 404 answers to the other tenant's workspace
        assert pg.errors and all("404" in e for e in pg.errors), pg.errors
    finally:
        pg.close()


def test_the_dashboard_needs_a_token(browser, server):
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        page.goto(server["url"] + "/")
        page.wait_for_selector("#signin:not([hidden])")
        assert page.locator("#main").inner_text() == ""
        r = httpx.get(server["url"] + "/api/v1/workspaces")
        assert r.status_code == 401
        page.fill("#token-input", "em_not-a-token")
        page.click("#signin button")
        page.wait_for_selector("#signin-error:has-text('refused')")
    finally:
        ctx.close()


# JS run in the page: what does not fit. Tables whose wrapper scrolls sideways, a page wider than the
# window, chart text (ticks, legends, markers) outside its SVG, legend entries that overlap, a chart
# blown up far beyond the size it was drawn for (its labels then grow with it).
LAYOUT_PROBLEMS = """() => {
  const out = [];
  const inside = (r, box) => r.left >= box.left - 1 && r.right <= box.right + 1 && r.top >= box.top - 1 && r.bottom <= box.bottom + 1;
  const overlap = (a, b) => a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 && b.top < a.bottom - 1;
  if (document.documentElement.scrollWidth > window.innerWidth) out.push(`page ${document.documentElement.scrollWidth}px wide`);
  document.querySelectorAll('.table-wrap').forEach((w) => {
    if (w.scrollWidth > w.clientWidth + 1) {
      const t = w.querySelector('table');
      out.push(`table ${t && t.dataset.testid} scrolls: ${w.scrollWidth}px in ${w.clientWidth}px`);
    }
  });
  document.querySelectorAll('svg.chart').forEach((s, i) => {
    const box = s.getBoundingClientRect();
    const scale = box.width / s.viewBox.baseVal.width;
    if (scale > 1.3) out.push(`chart ${i}: drawn at ${scale.toFixed(2)}x its size`);
    s.querySelectorAll('text').forEach((t) => {
      if (!inside(t.getBoundingClientRect(), box)) out.push(`chart ${i}: text "${t.textContent}" clipped`);
    });
    const holder = s.parentElement.getBoundingClientRect();
    const items = [...s.parentElement.querySelectorAll('.legend-item')].map((g) => [g.textContent, g.getBoundingClientRect()]);
    items.forEach(([n, r]) => { if (!inside(r, holder)) out.push(`chart ${i}: legend "${n}" outside its box`); });
    items.forEach(([n, r], j) => items.slice(j + 1).forEach(([m, q]) => { if (overlap(r, q)) out.push(`chart ${i}: legend "${n}" overlaps "${m}"`); }));
  });
  return out;
}"""


def test_every_view_fits_1400px_without_clipped_labels(browser, server, tmp_path):
    """At 1400 px, no table needs sideways scrolling, no chart label or legend is cut off or
    overlaps another. Screenshots of every view land in tmp_path (EDGEMETER_SCREENSHOTS=DIR:
    there instead, to look at)."""
    led = server["ledger"]
    shots = Path(os.environ.get("EDGEMETER_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    pg = Page(browser, server, OPERATOR)
    pg.page.set_viewport_size({"width": 1400, "height": 900})
    month = "%04d-%02d" % civil.from_unix(led["end"])[:2]
    views = [("workspaces", "#/workspaces", "[data-testid=workspaces]"),
             ("workspace", f"#/workspace/{led['shops']}", "[data-testid=workspace-detail]"),
             ("pools", "#/pools", "[data-testid=pools]"), ("pool", f"#/pools/{led['shops']}", "[data-testid=pool]"),
             ("licenses", "#/licenses", "[data-testid=activations]"),
             ("usage", "#/usage?range=all", "[data-testid=usage-items]"),
             ("usage-hour", "#/usage?range=7&bucket=hour", "[data-testid=usage-items]"),
             ("usage-minute", "#/usage?range=1h&bucket=minute", "[data-testid=usage-items]"),
             ("invoices", f"#/invoices?account={led['acme']}&month={month}", "[data-testid=invoice-lines]"),
             ("alerts", "#/alerts", "[data-testid=alerts]"), ("ops", "#/ops", "[data-testid=dead-letters]"),
             ("fleet", "#/fleet", "[data-testid=devices]")]
    problems = {}
    try:
        for name, frag, ready in views:
            page = pg.view(frag, ready)
            page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
            found = page.evaluate(LAYOUT_PROBLEMS)
            if found:
                problems[name] = found
        assert problems == {}
        assert pg.errors == []
    finally:
        pg.close()
