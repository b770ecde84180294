"""The HTTP API (FastAPI, OpenAPI 3.1 at /openapi.json) and the static dashboard's server.

    create_app(db_url, tokens={"secret": None, "tenant-secret": 7}) -> FastAPI

Rules:
 H1. Every /api/v1 route needs `Authorization: Bearer <token>`: a token from the store
     (cloud.tokens, created by `edgemeter admin create-token`) or one given to create_app
     (operator when mapped to None, tenant of that account otherwise). No token, an unknown or
     a revoked one: 401. A tenant asking for an operator-only view (dead letters): 403.
 H2. A tenant sees only its own account, workspaces, devices, leases, licences, usage,
     invoices and alerts; another tenant's object is 404, the same answer as a missing one
     (cloud.queries rule Q1), and list filters naming another account return nothing.
 H3. Lists are pages: ?limit (1..1000, default 100) & ?offset, answered as {items, total,
     limit, offset, next_offset}. Every list and the invoice also answer ?format=csv with
     the same rows as CSV (nested objects flattened to dotted columns; money stays integer
     µCNY, invoice amounts are in CNY with two decimals as cloud.invoices.to_csv writes them).
 H4. Each request reads one snapshot: one read transaction, rolled back at the end; the API
     never writes to the ledger.
 H5. Integers in paths and queries are bounded (ids and times 0..2^53) so that no request can
     make the store overflow; strings are constrained by pattern. Malformed input is 422.
 H6. Live updates: GET /api/v1/changes returns a fingerprint of what the dashboard shows;
     GET /api/v1/events streams it as Server-Sent Events (`event: change`) whenever it moves,
     with a heartbeat, for at most `max_s` seconds per connection (clients reconnect).
 H7. The dashboard (cloud/static) is served at / with every asset local, under a
     Content-Security-Policy that allows only this origin: it works offline, with no CDN.
Money is integer µCNY (`*_ucny`) or fen (`*_fen`); times are Unix seconds unless `_ms`.
"""

import asyncio
import csv
import io
import json
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Path as PathParam, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Connection, Engine

from edgemeter.cloud import accounts as accounts_svc
from edgemeter.cloud import alerts as alerts_mod
from edgemeter.cloud import db, invoices, queries
from edgemeter.cloud import tokens as tokmod
from edgemeter.cloud import schema as S
from edgemeter.cloud.queries import NotFound

STATIC = Path(__file__).resolve().parent / "static"
API = "/api/v1"
MAX_INT = 2 ** 53
MAX_LIMIT = 1000
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")

T = TypeVar("T")

# ------------------------------------------------------------------------------ parameters (H5)
IdPath = Annotated[int, PathParam(ge=1, le=MAX_INT)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="page size (H3)")]
Offset = Annotated[int, Query(ge=0, le=MAX_INT, description="rows to skip (H3)")]
OptId = Annotated[int | None, Query(ge=1, le=MAX_INT)]
OptTime = Annotated[int | None, Query(ge=0, le=MAX_INT, description="Unix seconds")]
Fmt = Annotated[Literal["json", "csv"], Query(description="json (default) or csv (H3)")]
Month = Annotated[str, PathParam(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$", description="YYYY-MM, billing calendar UTC+8")]


# ------------------------------------------------------------------------------ models
class Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True)


class Page(Model, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int
    next_offset: int | None


class Me(Model):
    role: Literal["operator", "tenant"]
    account_id: int | None
    token_id: int | None


class Trial(Model):
    amount_ucny: int
    claimed_at: int
    ends_at: int
    left_ucny: int


class SavingsPlan(Model):
    id: int
    commit_ucny: int
    bp: int = Field(description="discount in basis points: 9000 = x 0.90")
    cap_ucny: int = Field(description="list-price usage the plan covers")
    bought_at: int
    ends_at: int
    used_ucny: int
    forfeited_ucny: int
    left_ucny: int
    closed: bool


class Account(Model):
    id: int
    name: str
    created_at: int
    balance_ucny: int
    paid_ucny: int
    payg_ucny: int
    trial_left_ucny: int
    suspended: bool
    workspaces: int


class AccountDetail(Account):
    trial: Trial | None
    plans: list[SavingsPlan]


class Terms(Model):
    grant: int
    max: int
    validity_s: int
    offline_policy: str
    offline_units: int
    low_units: int
    renew_pct: int


class PoolLevels(Model):
    added: int
    free: int
    out: int
    unrec: int
    consumed: int
    overdraft: int
    remaining: int = Field(description="free + out + unrec: units not yet consumed")


class Workspace(Model):
    id: int
    account_id: int
    name: str
    billing: Literal["license", "postpaid"] | str
    created_at: int
    devices: int
    terms: Terms
    pool: PoolLevels | None


class Forecast(Model):
    window_s: int
    points: int
    burn_per_day: int | None = Field(description="least-squares burn rate, units per day")
    exhausted_at: int | None = Field(description="forecast exhaustion time (Unix s), none when not burning")
    remaining: int


class SeriesPoint(Model):
    at: int
    added: int
    consumed: int
    remaining: int


class PoolSummary(Model):
    workspace_id: int
    account_id: int
    name: str
    levels: PoolLevels
    terms: Terms
    forecast: Forecast


class PoolView(PoolSummary):
    series: list[SeriesPoint]


class Lease(Model):
    workspace_id: int
    id: int
    device_id: int
    state: str
    total: int
    allow: int
    used: int
    remaining: int
    extra: int
    booked: int
    validity_s: int
    seen: int
    opened_at: int


class Device(Model):
    id: int
    workspace_id: int
    account_id: int
    billing: str
    username: str
    status: str
    kid: int
    created_at: int
    last_seen: int
    online: bool
    acked_seq: int
    reported_seq: int
    unsynced_batches: int
    batches: int
    rounds: int
    rated_ucny: int
    mismatches: int
    lease: Lease | None
    reported_remaining: int | None
    reported_used: int | None
    status_flags: int


class Purchase(Model):
    id: int
    workspace_id: int
    account_id: int
    tier: str
    devices: int
    price_ucny: int
    purchased_at: int
    activate_by: int
    addon: bool
    activated: int
    unactivated: int


class Activation(Model):
    id: int
    purchase_id: int
    workspace_id: int
    account_id: int
    device_id: int | None
    count: int
    activated_at: int
    period_end: int
    units: int
    active: bool
    days_left: int


class UsageItem(Model):
    item: int
    name: str
    multiplier: int
    calls: int
    ucny: int


class UsageDevice(Model):
    device_id: int
    workspace_id: int
    account_id: int
    batches: int
    rounds: int
    rated_ucny: int
    device_ucny: int
    first_t0: int
    last_t0: int


class UsageBucket(Model):
    start: int
    item: int
    name: str
    calls: int
    ucny: int


class InvoiceLine(Model):
    item: int
    name: str
    multiplier: int
    calls: int
    list_ucny: int
    list_fen: int
    discount_fen: int
    trial_fen: int
    plan_fen: int
    due_fen: int


class Forfeit(Model):
    kind: str
    ref: int
    list_ucny: int
    bp: int


class KindTotal(Model):
    kind: str
    ref: int
    list_ucny: int
    amount_fen: int


class Invoice(Model):
    account_id: int
    month: str
    from_: int = Field(alias="from")
    to: int
    lines: list[InvoiceLine]
    list_fen: int
    discount_fen: int
    trial_fen: int
    plan_fen: int
    due_fen: int
    forfeits: list[Forfeit]
    by_kind: list[KindTotal]


class StoredInvoice(Model):
    id: int
    account_id: int
    month: str
    created_at: int
    list_fen: int
    due_fen: int


class InvoiceIndex(Model):
    account_id: int
    months: list[str]
    stored: list[StoredInvoice]


class Alert(Model):
    kind: str
    severity: Literal["warning", "critical"]
    account_id: int
    workspace_id: int | None
    device_id: int | None
    subject: str
    message: str
    value: int
    threshold: int
    at: int


class DeadLetter(Model):
    id: int
    reason: str
    topic: str
    detail: str
    count: int
    first_seen_ms: int
    last_seen_ms: int
    digest: str
    size: int


class Mismatch(Model):
    id: int
    batch_id: int
    device_id: int
    device_ucny: int
    rated_ucny: int
    difference_ucny: int
    reason: str
    at_ms: int
    seq: int
    workspace_id: int
    account_id: int
    t0: int
    book_version: int
    lease_id: int


class Overview(Model):
    accounts: int
    workspaces: int
    devices: int
    online: int
    silent: int
    unsynced_batches: int
    batches: int
    rounds: int
    rated_ucny: int
    mismatches: int
    dead_letters: int | None
    alerts: int
    critical_alerts: int
    now: int
    online_s: int


class Problem(Model):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no token, or an unknown or revoked one (H1)"},
    403: {"model": Problem, "description": "an operator token is required (H1)"},
    404: {"model": Problem, "description": "no such object, or not the tenant's (H2)"},
}


# ------------------------------------------------------------------------------ helpers
def _page(items: list, total: int, limit: int, offset: int) -> dict[str, Any]:
    return {"items": items, "total": total, "limit": limit, "offset": offset,
            "next_offset": offset + limit if offset + limit < total else None}


def _flatten(row: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        key = prefix + k
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v, separators=(",", ":"))
        elif isinstance(v, bool):
            out[key] = "true" if v else "false"
        else:
            out[key] = "" if v is None else v
    return out


def csv_text(rows: list[Mapping[str, Any]], columns: list[str] | None = None) -> str:
    """Rule H3: one header row and one row per item; nested objects as dotted columns."""
    flat = [_flatten(r) for r in rows]
    cols = list(columns or [])
    for r in flat:
        for k in r:
            if k not in cols:
                cols.append(k)
    cols = [c for c in cols if not any(o.startswith(c + ".") for o in cols)]   # a null nested object
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in flat:
        w.writerow([r.get(c, "") for c in cols])
    return buf.getvalue()


def csv_response(text: str, name: str) -> Response:
    return Response(text, media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})


CSV_DOC: dict[int | str, dict[str, Any]] = {200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "JSON, or CSV with ?format=csv"}}


def _listed(fmt: str, name: str, items: list, total: int, limit: int, offset: int,
            columns: list[str] | None = None) -> Any:
    if fmt == "csv":
        return csv_response(csv_text(items, columns), name)
    return _page(items, total, limit, offset)


def _model_columns(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


# ------------------------------------------------------------------------------ the app
def create_app(db_url: str | None = None, tokens: Mapping[str, int | None] | None = None, *,
               engine: Engine | None = None,
               online_s: int = 300, clock: Callable[[], float] = time.time, static_dir: Path | None = STATIC,
               events_interval_s: float = 1.0, events_max_s: float = 300.0) -> FastAPI:
    """The API (and the dashboard unless static_dir is None) over the store at db_url.

    tokens: {token: None | account id} accepted besides the stored ones (rule H1, tokens T4).
    online_s: a device seen within this many seconds counts as online.
    """
    static_tokens = dict(tokens or {})
    if engine is None:
        if db_url is None:
            raise ValueError("create_app needs db_url or engine")
        engine = db.open_store(db_url)
    eng: Engine = engine
    history = queries.PoolHistory()
    bearer = HTTPBearer(auto_error=False, description="operator or tenant token (edgemeter admin create-token)")

    app = FastAPI(
        title="edgemeter API", version="1.0.0", docs_url=None, redoc_url=None, openapi_url="/openapi.json",
        description=(__doc__ or "").split("\n\n", 2)[-1], responses=ERRORS,
    )
    app.state.engine = eng

    def now() -> int:
        return int(clock())

    # -------------------------------------------------------------- dependencies
    snapshot = {} if db.is_sqlite(eng) else {"isolation_level": "REPEATABLE READ"}   # rule H4 on PostgreSQL

    def get_conn() -> Iterator[Connection]:
        with eng.connect() as conn:
            if snapshot:
                conn = conn.execution_options(**snapshot)
            tx = conn.begin()
            try:
                yield conn
            finally:
                tx.rollback()   # rule H4: read-only

    def _authenticate(conn: Connection, creds: HTTPAuthorizationCredentials | None) -> tokmod.Principal:
        if creds is None or not creds.credentials:
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        tok = creds.credentials
        who = tokmod.static_lookup(static_tokens, tok) if static_tokens else None
        if who is None and len(tok) <= 256:
            who = tokmod.lookup(conn, tok)
        if who is None:
            raise HTTPException(401, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"})
        return who

    def principal(conn: Annotated[Connection, Depends(get_conn)],
                  creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> tokmod.Principal:
        return _authenticate(conn, creds)

    def principal_brief(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> tokmod.Principal:
        """For long responses (the event stream): no connection is held while it lasts."""
        with eng.connect() as conn:
            return _authenticate(conn, creds)

    Conn = Annotated[Connection, Depends(get_conn)]
    Who = Annotated[tokmod.Principal, Depends(principal)]

    def operator_only(who: tokmod.Principal) -> None:
        if not who.operator:
            raise HTTPException(403, "an operator token is required")

    @app.exception_handler(NotFound)
    async def _not_found(_request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.middleware("http")
    async def _headers(request: Request, call_next: Callable) -> Response:
        resp = await call_next(request)
        resp.headers.setdefault("Content-Security-Policy", CSP)
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        if request.url.path.startswith(API):
            resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    # -------------------------------------------------------------- who am I, overview
    @app.get(API + "/me", response_model=Me, tags=["auth"], summary="The caller's role and account")
    def me(who: Who) -> Any:
        return {"role": who.role, "account_id": who.account_id, "token_id": who.token_id}

    @app.get(API + "/overview", response_model=Overview, tags=["fleet"], summary="Headline numbers of the fleet")
    def overview(who: Who, conn: Conn) -> Any:
        t = now()
        out = queries.overview(conn, who.scope, t * 1000, online_s)
        out["silent"] = len(alerts_mod.device_silent(conn, t, who.scope, alerts_mod.Thresholds()))
        out["dead_letters"] = sum(queries.dead_letter_counts(conn).values()) if who.operator else None
        al = alerts_mod.compute(conn, t, who.scope)
        out.update(alerts=len(al), critical_alerts=sum(1 for a in al if a["severity"] == "critical"), now=t,
                   online_s=online_s)
        return out

    # -------------------------------------------------------------- accounts
    @app.get(API + "/accounts", response_model=Page[Account], responses=CSV_DOC, tags=["accounts"],
             summary="Accounts with their postpaid balances")
    def list_accounts(who: Who, conn: Conn, limit: Limit = 100, offset: Offset = 0, format: Fmt = "json") -> Any:
        rows, total = queries.accounts_page(conn, who.scope, limit, offset)
        return _listed(format, "accounts", rows, total, limit, offset, _model_columns(Account))

    @app.get(API + "/accounts/{account_id}", response_model=AccountDetail, tags=["accounts"],
             summary="One account: balance, free trial and savings plans")
    def get_account(account_id: IdPath, who: Who, conn: Conn) -> Any:
        queries.check_account(conn, account_id, who.scope)
        row = queries.accounts_page(conn, account_id, 1, 0)[0][0]
        bal = accounts_svc.balances(conn, account_id)
        plans = [{"id": p["id"], "commit_ucny": p["commit_ucny"], "bp": p["bp"], "cap_ucny": p["cap_ucny"],
                  "bought_at": p["bought_at"], "ends_at": p["ends_at"], "used_ucny": p["used_ucny"],
                  "forfeited_ucny": p["forfeited_ucny"], "closed": bool(p["closed"]),
                  "left_ucny": 0 if p["closed"] else p["cap_ucny"] - p["used_ucny"]} for p in bal["plans"]]
        return {**row, "trial": bal["trial"], "plans": plans}

    @app.get(API + "/accounts/{account_id}/invoices", response_model=InvoiceIndex, tags=["invoices"],
             summary="Months that can be invoiced and the invoices already stored")
    def invoice_index(account_id: IdPath, who: Who, conn: Conn) -> Any:
        queries.check_account(conn, account_id, who.scope)
        return {"account_id": account_id, "months": queries.invoice_months(conn, account_id, now()),
                "stored": queries.stored_invoices(conn, account_id)}

    @app.get(API + "/accounts/{account_id}/invoices/{month}", response_model=Invoice, responses=CSV_DOC,
             tags=["invoices"], summary="The monthly invoice: one line per billable item and multiplier")
    def get_invoice(account_id: IdPath, month: Month, who: Who, conn: Conn, format: Fmt = "json") -> Any:
        queries.check_account(conn, account_id, who.scope)
        inv = invoices.compute(conn, account_id, month, queries.latest_book(conn))
        if format == "csv":
            return csv_response(invoices.to_csv(inv), f"invoice-{account_id}-{month}")
        return inv

    # -------------------------------------------------------------- workspaces and pools
    @app.get(API + "/workspaces", response_model=Page[Workspace], responses=CSV_DOC, tags=["workspaces"],
             summary="Workspaces with lease terms and pool levels")
    def list_workspaces(who: Who, conn: Conn, limit: Limit = 100, offset: Offset = 0, account_id: OptId = None,
                        billing: Literal["license", "postpaid"] | None = None, format: Fmt = "json") -> Any:
        rows, total = queries.workspaces_page(conn, who.scope, limit, offset, account_id, billing)
        return _listed(format, "workspaces", rows, total, limit, offset)

    @app.get(API + "/workspaces/{workspace_id}", response_model=Workspace, tags=["workspaces"],
             summary="One workspace")
    def get_workspace(workspace_id: IdPath, who: Who, conn: Conn) -> Any:
        return queries.workspace_detail(conn, workspace_id, who.scope)

    def _pool(conn: Connection, ws_id: int, scope: int | None, window_s: int) -> tuple[dict, list]:
        w = queries.workspace_detail(conn, ws_id, scope)
        if w["pool"] is None:
            raise NotFound(f"workspace {ws_id} is billed postpaid: it has no License pool")
        pts = history.series(conn, ws_id)
        fc = queries.forecast(pts, now(), w["pool"]["remaining"], window_s)
        return {"workspace_id": ws_id, "account_id": w["account_id"], "name": w["name"], "levels": w["pool"],
                "terms": w["terms"], "forecast": fc}, pts

    Window = Annotated[int, Query(ge=60, le=10 * 365 * 86400, description="forecast window, seconds")]

    @app.get(API + "/pools", response_model=Page[PoolSummary], responses=CSV_DOC, tags=["workspaces"],
             summary="License pools with their exhaustion forecasts")
    def list_pools(who: Who, conn: Conn, limit: Limit = 100, offset: Offset = 0, account_id: OptId = None,
                   window_s: Window = 7 * 86400, format: Fmt = "json") -> Any:
        rows, total = queries.workspaces_page(conn, who.scope, limit, offset, account_id, "license")
        items = [_pool(conn, r["id"], who.scope, window_s)[0] for r in rows]
        return _listed(format, "pools", items, total, limit, offset)

    @app.get(API + "/workspaces/{workspace_id}/pool", response_model=PoolView, tags=["workspaces"],
             summary="A pool's burn-down (replayed from its entries) and exhaustion forecast")
    def get_pool(workspace_id: IdPath, who: Who, conn: Conn, window_s: Window = 7 * 86400,
                 points: Annotated[int, Query(ge=2, le=5000)] = 300) -> Any:
        out, pts = _pool(conn, workspace_id, who.scope, window_s)
        out["series"] = [{"at": p[0], "added": p[1], "consumed": p[2], "remaining": p[3]}
                         for p in queries.sample(pts, points)]
        return out

    # -------------------------------------------------------------- licences
    @app.get(API + "/licenses", response_model=Page[Purchase], responses=CSV_DOC, tags=["licenses"],
             summary="License purchases and how many of each are activated")
    def list_purchases(who: Who, conn: Conn, limit: Limit = 100, offset: Offset = 0, workspace_id: OptId = None,
                       format: Fmt = "json") -> Any:
        rows, total = queries.purchases_page(conn, who.scope, limit, offset, workspace_id)
        return _listed(format, "licenses", rows, total, limit, offset, _model_columns(Purchase))

    @app.get(API + "/licenses/activations", response_model=Page[Activation], responses=CSV_DOC, tags=["licenses"],
             summary="License activations, their usage periods and expiries")
    def list_activations(who: Who, conn: Conn, limit: Limit = 100, offset: Offset = 0, workspace_id: OptId = None,
                         expiring_within_days: Annotated[int | None, Query(ge=0, le=36500)] = None,
                         active: bool | None = None, format: Fmt = "json") -> Any:
        rows, total = queries.activations_page(conn, who.scope, limit, offset, now(), workspace_id,
                                               expiring_within_days, active)
        return _listed(format, "activations", rows, total, limit, offset, _model_columns(Activation))

    # -------------------------------------------------------------- devices and leases
    @app.get(API + "/devices", response_model=Page[Device], responses=CSV_DOC, tags=["fleet"],
             summary="The fleet: last seen, online, unsynced batches, lease level, mismatches")
    def list_devices(who: Who, conn: Conn, limit: Limit = 100, offset: Offset = 0, workspace_id: OptId = None,
                     status: Literal["active", "suspended"] | None = None, online: bool | None = None,
                     mismatched: bool | None = None, format: Fmt = "json") -> Any:
        rows, total = queries.devices_page(conn, who.scope, limit, offset, now() * 1000, online_s, workspace_id,
                                           status, online, mismatched)
        return _listed(format, "devices", rows, total, limit, offset)

    @app.get(API + "/devices/{device_id}", response_model=Device, tags=["fleet"], summary="One device")
    def get_device(device_id: IdPath, who: Who, conn: Conn) -> Any:
        return queries.device_detail(conn, device_id, who.scope, now() * 1000, online_s)

    @app.get(API + "/leases", response_model=Page[Lease], responses=CSV_DOC, tags=["fleet"],
             summary="Leases on License pools")
    def list_leases(who: Who, conn: Conn, limit: Limit = 100, offset: Offset = 0, workspace_id: OptId = None,
                    device_id: OptId = None, state: Literal["live", "reclaimed", "closed"] | None = None,
                    format: Fmt = "json") -> Any:
        rows, total = queries.leases_page(conn, who.scope, limit, offset, workspace_id, device_id, state)
        return _listed(format, "leases", rows, total, limit, offset, _model_columns(Lease))

    # -------------------------------------------------------------- usage
    @app.get(API + "/usage/items", response_model=Page[UsageItem], responses=CSV_DOC, tags=["usage"],
             summary="Calls and rated µCNY per billable item and multiplier")
    def usage_items(who: Who, conn: Conn, since: OptTime = None, until: OptTime = None, account_id: OptId = None,
                    workspace_id: OptId = None, device_id: OptId = None, limit: Limit = 100, offset: Offset = 0,
                    format: Fmt = "json") -> Any:
        rows = queries.usage_by_item(conn, who.scope, since, until, account_id, workspace_id, device_id)
        return _listed(format, "usage-items", rows[offset:offset + limit], len(rows), limit, offset)

    @app.get(API + "/usage/devices", response_model=Page[UsageDevice], responses=CSV_DOC, tags=["usage"],
             summary="Batches, rounds and µCNY per device")
    def usage_devices(who: Who, conn: Conn, since: OptTime = None, until: OptTime = None, account_id: OptId = None,
                      workspace_id: OptId = None, device_id: OptId = None, limit: Limit = 100, offset: Offset = 0,
                      format: Fmt = "json") -> Any:
        rows, total = queries.usage_by_device(conn, who.scope, limit, offset, since, until, account_id,
                                              workspace_id, device_id)
        return _listed(format, "usage-devices", rows, total, limit, offset, _model_columns(UsageDevice))

    @app.get(API + "/usage/time", response_model=Page[UsageBucket], responses=CSV_DOC, tags=["usage"],
             summary="Calls and rated µCNY per time bucket (billing calendar) and billable item")
    def usage_time(who: Who, conn: Conn, bucket: Literal["hour", "day", "month"] = "day", since: OptTime = None,
                   until: OptTime = None, account_id: OptId = None, workspace_id: OptId = None,
                   device_id: OptId = None, limit: Limit = 1000, offset: Offset = 0, format: Fmt = "json") -> Any:
        rows = queries.usage_over_time(conn, who.scope, bucket, since, until, account_id, workspace_id, device_id)
        return _listed(format, "usage-time", rows[offset:offset + limit], len(rows), limit, offset)

    # -------------------------------------------------------------- alerts, dead letters, mismatches
    @app.get(API + "/alerts", response_model=Page[Alert], responses=CSV_DOC, tags=["alerts"],
             summary="Current alerts computed from the ledger (cloud.alerts A1-A5)")
    def list_alerts(who: Who, conn: Conn, kind: Literal[alerts_mod.KINDS] | None = None,  # type: ignore[valid-type]
                    account_id: OptId = None, workspace_id: OptId = None,
                    pool_low_units: Annotated[int | None, Query(ge=0, le=MAX_INT)] = None,
                    expiring_days: Annotated[int, Query(ge=0, le=3650)] = 30,
                    silent_minutes: Annotated[int, Query(ge=1, le=525600)] = 60,
                    mismatch_hours: Annotated[int, Query(ge=1, le=87600)] = 24,
                    limit: Limit = 100, offset: Offset = 0, format: Fmt = "json") -> Any:
        th = alerts_mod.Thresholds(pool_low_units, expiring_days, silent_minutes, mismatch_hours)
        rows = alerts_mod.compute(conn, now(), who.scope, th, (kind,) if kind else alerts_mod.KINDS)
        if account_id is not None:
            rows = [a for a in rows if a["account_id"] == account_id]
        if workspace_id is not None:
            rows = [a for a in rows if a["workspace_id"] == workspace_id]
        return _listed(format, "alerts", rows[offset:offset + limit], len(rows), limit, offset,
                       _model_columns(Alert))

    @app.get(API + "/dead-letters", response_model=Page[DeadLetter], responses=CSV_DOC, tags=["operations"],
             summary="Rejected messages by reason, with repeat counts (operators only)")
    def list_dead_letters(who: Who, conn: Conn, reason: Annotated[str | None, Query(pattern=r"^[a-z_]{1,32}$")] = None,
                          limit: Limit = 100, offset: Offset = 0, format: Fmt = "json") -> Any:
        operator_only(who)
        rows, total = queries.dead_letters_page(conn, limit, offset, reason)
        return _listed(format, "dead-letters", rows, total, limit, offset, _model_columns(DeadLetter))

    @app.get(API + "/mismatches", response_model=Page[Mismatch], responses=CSV_DOC, tags=["operations"],
             summary="Batches whose device deduction differs from the cloud's re-rating")
    def list_mismatches(who: Who, conn: Conn, device_id: OptId = None, workspace_id: OptId = None,
                        since_ms: Annotated[int | None, Query(ge=0, le=MAX_INT)] = None,
                        limit: Limit = 100, offset: Offset = 0, format: Fmt = "json") -> Any:
        rows, total = queries.mismatches_page(conn, who.scope, limit, offset, device_id, workspace_id, since_ms)
        return _listed(format, "mismatches", rows, total, limit, offset, _model_columns(Mismatch))

    # -------------------------------------------------------------- live updates (H6)
    @app.get(API + "/changes", response_model=dict[str, int], tags=["live"],
             summary="A fingerprint that moves whenever something on the dashboard changes")
    def changes(who: Who, conn: Conn) -> Any:
        return queries.fingerprint(conn, who.scope)

    def _fingerprint(scope: int | None) -> dict[str, int]:
        with eng.connect() as conn:
            with conn.begin() as tx:
                fp = queries.fingerprint(conn, scope)
                tx.rollback()
        return fp

    @app.get(API + "/events", include_in_schema=False)
    async def events(request: Request,
                     who: Annotated[tokmod.Principal, Depends(principal_brief)]) -> StreamingResponse:
        scope = who.scope

        async def stream() -> Any:
            last = None
            started = time.monotonic()
            beat = started
            yield "retry: 2000\n\n"
            while time.monotonic() - started < events_max_s:
                if await request.is_disconnected():
                    return
                fp = await run_in_threadpool(_fingerprint, scope)
                if fp != last:
                    last = fp
                    yield f"event: change\ndata: {json.dumps(fp, sort_keys=True)}\n\n"
                elif time.monotonic() - beat > 15:
                    beat = time.monotonic()
                    yield ": ping\n\n"
                await asyncio.sleep(events_interval_s)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/healthz", tags=["operations"], summary="Liveness: the store answers")
    def healthz(conn: Conn) -> dict[str, str]:
        conn.execute(S.meta.select().limit(1)).all()
        return {"status": "ok"}

    # -------------------------------------------------------------- the dashboard (H7)
    if static_dir is not None:
        sd = Path(static_dir)
        app.mount("/static", StaticFiles(directory=sd), name="static")

        @app.get("/", include_in_schema=False)
        def index() -> FileResponse:
            return FileResponse(sd / "index.html", media_type="text/html; charset=utf-8",
                                headers={"Cache-Control": "no-cache"})

    return app
