"""/workspaces and /pools: workspaces with their lease terms, License pools with their
burn-down and exhaustion forecast."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from sqlalchemy.engine import Connection

from edgemeter.cloud import queries
from edgemeter.cloud.api_models import Page, PoolSummary, PoolView, Workspace
from edgemeter.cloud.queries import NotFound
from edgemeter.cloud.routes.common import (API, CSV_DOC, ApiContext, Conn, Ctx, Fmt, IdPath, Limit, Offset, OptId,
                                           Who, Window, listed)

router = APIRouter(prefix=API, tags=["workspaces"])


@router.get("/workspaces", response_model=Page[Workspace], responses=CSV_DOC,
            summary="Workspaces with lease terms and pool levels")
def list_workspaces(who: Who, conn: Conn, limit: Limit = 100, offset: Offset = 0, account_id: OptId = None,
                    billing: Literal["license", "postpaid"] | None = None, format: Fmt = "json") -> Any:
    rows, total = queries.workspaces_page(conn, who.scope, limit, offset, account_id, billing)
    return listed(format, "workspaces", rows, total, limit, offset)


@router.get("/workspaces/{workspace_id}", response_model=Workspace, summary="One workspace")
def get_workspace(workspace_id: IdPath, who: Who, conn: Conn) -> Any:
    return queries.workspace_detail(conn, workspace_id, who.scope)


def pool_view(ctx: ApiContext, conn: Connection, ws_id: int, scope: int | None, window_s: int) -> tuple[dict, list]:
    """A workspace's pool levels, terms and forecast, and its replayed history points."""
    w = queries.workspace_detail(conn, ws_id, scope)
    if w["pool"] is None:
        raise NotFound(f"workspace {ws_id} is billed postpaid: it has no License pool")
    pts = ctx.history.series(conn, ws_id)
    fc = queries.forecast(pts, ctx.now(), w["pool"]["remaining"], window_s)
    return {"workspace_id": ws_id, "account_id": w["account_id"], "name": w["name"], "levels": w["pool"],
            "terms": w["terms"], "forecast": fc}, pts


@router.get("/pools", response_model=Page[PoolSummary], responses=CSV_DOC,
            summary="License pools with their exhaustion forecasts")
def list_pools(who: Who, conn: Conn, ctx: Ctx, limit: Limit = 100, offset: Offset = 0, account_id: OptId = None,
               window_s: Window = 7 * 86400, format: Fmt = "json") -> Any:
    rows, total = queries.workspaces_page(conn, who.scope, limit, offset, account_id, "license")
    items = [pool_view(ctx, conn, r["id"], who.scope, window_s)[0] for r in rows]
    return listed(format, "pools", items, total, limit, offset)


@router.get("/workspaces/{workspace_id}/pool", response_model=PoolView,
            summary="A pool's burn-down (replayed from its entries) and exhaustion forecast")
def get_pool(workspace_id: IdPath, who: Who, conn: Conn, ctx: Ctx, window_s: Window = 7 * 86400,
             points: Annotated[int, Query(ge=2, le=5000)] = 300) -> Any:
    out, pts = pool_view(ctx, conn, workspace_id, who.scope, window_s)
    out["series"] = [{"at": p[0], "added": p[1], "consumed": p[2], "remaining": p[3]}
                     for p in queries.sample(pts, points)]
    return out
