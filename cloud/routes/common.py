"""What every router of the HTTP API shares: the app's context, the request dependencies
(snapshot connection, caller), the bounded parameters and the page/CSV answers (cloud.api's
rules H1, H3, H4 and H5 are implemented here)."""
from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import Depends, HTTPException, Path as PathParam, Query, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from sqlalchemy.engine import Connection, Engine

from edgemeter.cloud import db, queries
from edgemeter.cloud import tokens as tokmod

API = "/api/v1"
MAX_INT = 2 ** 53
MAX_LIMIT = 1000


@dataclass
class ApiContext:
    """One app's settings and state, kept in app.state.ctx and given to routes by `Ctx`."""
    engine: Engine
    tokens: dict[str, int | None] = field(default_factory=dict)   # static tokens (api rule H1)
    online_s: int = 300
    clock: Callable[[], float] = time.time
    events_interval_s: float = 1.0
    events_max_s: float = 300.0
    history: queries.PoolHistory = field(default_factory=queries.PoolHistory)

    def now(self) -> int:
        return int(self.clock())


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ApiContext, Depends(context)]
bearer = HTTPBearer(auto_error=False, description="operator or tenant token (edgemeter admin create-token)")
Creds = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def get_conn(ctx: Ctx) -> Iterator[Connection]:
    """api rule H4: one read transaction per request (REPEATABLE READ on PostgreSQL), rolled back."""
    with ctx.engine.connect() as conn:
        if not db.is_sqlite(ctx.engine):
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        tx = conn.begin()
        try:
            yield conn
        finally:
            tx.rollback()


Conn = Annotated[Connection, Depends(get_conn)]


def authenticate(ctx: ApiContext, conn: Connection, creds: HTTPAuthorizationCredentials | None) -> tokmod.Principal:
    """api rule H1: the caller of a bearer token, or 401."""
    if creds is None or not creds.credentials:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    tok = creds.credentials
    who = tokmod.static_lookup(ctx.tokens, tok) if ctx.tokens else None
    if who is None and len(tok) <= 256:
        who = tokmod.lookup(conn, tok)
    if who is None:
        raise HTTPException(401, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"})
    return who


def principal(ctx: Ctx, conn: Conn, creds: Creds) -> tokmod.Principal:
    return authenticate(ctx, conn, creds)


def principal_brief(ctx: Ctx, creds: Creds) -> tokmod.Principal:
    """For long responses (the event stream): no connection is held while it lasts."""
    with ctx.engine.connect() as conn:
        return authenticate(ctx, conn, creds)


Who = Annotated[tokmod.Principal, Depends(principal)]


def operator_only(who: tokmod.Principal) -> None:
    if not who.operator:
        raise HTTPException(403, "an operator token is required")


# ------------------------------------------------------------------------------ parameters (api H5)
IdPath = Annotated[int, PathParam(ge=1, le=MAX_INT)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="page size")]
Offset = Annotated[int, Query(ge=0, le=MAX_INT, description="rows to skip")]
OptId = Annotated[int | None, Query(ge=1, le=MAX_INT)]
OptTime = Annotated[int | None, Query(ge=0, le=MAX_INT, description="Unix seconds")]
Fmt = Annotated[Literal["json", "csv"], Query(description="json (default) or csv")]
Month = Annotated[str, PathParam(pattern=r"^(19[7-9][0-9]|[2-9][0-9]{3})-(0[1-9]|1[0-2])$",
                                 description="YYYY-MM from 1970-01 on, billing calendar UTC+8")]
Window = Annotated[int, Query(ge=60, le=10 * 365 * 86400, description="forecast window, seconds")]


# ------------------------------------------------------------------------------ answers (api H3)
def page(items: list, total: int, limit: int, offset: int) -> dict[str, Any]:
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
    """api rule H3: one header row and one row per item; nested objects as dotted columns."""
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


CSV_DOC: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "JSON, or CSV with ?format=csv"}}


def listed(fmt: str, name: str, items: list, total: int, limit: int, offset: int,
           columns: list[str] | None = None) -> Any:
    """A page as JSON, or its rows as CSV (api rule H3)."""
    if fmt == "csv":
        return csv_response(csv_text(items, columns), name)
    return page(items, total, limit, offset)


def columns(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)
