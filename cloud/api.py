"""The HTTP API (FastAPI, OpenAPI 3.1 at /openapi.json) and the static dashboard's server.

    create_app(db_url, tokens={"secret": None, "tenant-secret": 7}) -> FastAPI

create_app only mounts: the routes live in cloud/routes/ (one router per resource, each route a
plain function of its dependencies in cloud.routes.common), their models in cloud/api_models.py.

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
     with a heartbeat, for at most `max_s` seconds per connection (clients reconnect). The
     stream checks its token every REVOKE_CHECK_S seconds (cloud/routes/live.py) and ends with `event: revoked`
     once it is revoked (tokens T3).
 H7. The dashboard (cloud/static) is served at / with every asset local, under a
     Content-Security-Policy that allows only this origin: it works offline, with no CDN.
Money is integer µCNY (`*_ucny`) or fen (`*_fen`), and on invoices also CNY with two decimals
(`*_cny` strings, as a customer reads it); times are Unix seconds unless `_ms`.
"""
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.engine import Engine

from edgemeter.cloud import db
from edgemeter.cloud.api_models import ERRORS
from edgemeter.cloud.queries import NotFound
from edgemeter.cloud.routes import ROUTERS
from edgemeter.cloud.routes.common import API, ApiContext

STATIC = Path(__file__).resolve().parent / "static"
DESCRIPTION = """The ledger of an edgemeter deployment, read-only: accounts, workspaces and License pools,
devices and leases, usage, invoices, alerts and what the rater rejected.

- Every /api/v1 route needs `Authorization: Bearer <token>` (`edgemeter admin create-token`
  makes one: an operator's, or a tenant's for one account). No token, an unknown or a revoked
  one: 401. A tenant asking for an operator-only view (dead letters): 403.
- A tenant sees only its own account and what belongs to it; another tenant's object is 404,
  the same answer as a missing one, and list filters naming another account return nothing.
- Lists are pages: ?limit (1..1000, default 100) and ?offset, answered as {items, total, limit,
  offset, next_offset}. Every list and the invoice also answer ?format=csv with the same rows as
  CSV (nested objects flattened to dotted columns).
- Each request reads one consistent snapshot of the ledger.
- Integers in paths and queries are bounded (ids and times 0..2^53); malformed input is 422.
- Live updates: GET /api/v1/changes returns a fingerprint of what the dashboard shows;
  GET /api/v1/events streams it as Server-Sent Events (`event: change`) whenever it moves.

Money is integer µCNY (`*_ucny`) or fen (`*_fen`), and on invoices also CNY with two decimals
(`*_cny` strings, as a customer reads it); times are Unix seconds unless `_ms`.
"""
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


async def _not_found(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def _headers(request: Request, call_next: Callable) -> Response:
    resp = await call_next(request)
    resp.headers.setdefault("Content-Security-Policy", CSP)
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("Referrer-Policy", "no-referrer")
    if request.url.path.startswith(API):
        resp.headers.setdefault("Cache-Control", "no-store")
    return resp


def mount_dashboard(app: FastAPI, static_dir: Path) -> None:
    """Rule H7: the dashboard's files at /static and its page at /."""
    app.mount("/static", StaticFiles(directory=static_dir), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(static_dir / "index.html", media_type="text/html; charset=utf-8",
                            headers={"Cache-Control": "no-cache"})


def create_app(db_url: str | None = None, tokens: Mapping[str, int | None] | None = None, *,
               engine: Engine | None = None,
               online_s: int = 300, clock: Callable[[], float] = time.time, static_dir: Path | None = STATIC,
               events_interval_s: float = 1.0, events_max_s: float = 300.0) -> FastAPI:
    """The API (and the dashboard unless static_dir is None) over the store at db_url.

    tokens: {token: None | account id} accepted besides the stored ones (rule H1, tokens T4).
    online_s: a device seen within this many seconds counts as online.
    """
    if engine is None:
        if db_url is None:
            raise ValueError("create_app needs db_url or engine")
        engine = db.open_store(db_url)
    app = FastAPI(
        title="edgemeter API", version="1.0.0", docs_url=None, redoc_url=None, openapi_url="/openapi.json",
        description=DESCRIPTION, responses=ERRORS,
    )
    app.state.engine = engine
    app.state.ctx = ApiContext(engine=engine, tokens=dict(tokens or {}), online_s=online_s, clock=clock,
                               events_interval_s=events_interval_s, events_max_s=events_max_s)
    app.add_exception_handler(NotFound, _not_found)
    app.middleware("http")(_headers)
    for router in ROUTERS:
        app.include_router(router)
    if static_dir is not None:
        mount_dashboard(app, Path(static_dir))
    return app
