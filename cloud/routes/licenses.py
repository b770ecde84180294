"""/licenses: License purchases and their activations."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from edgemeter.cloud import queries
from edgemeter.cloud.api_models import Activation, Page, Purchase
from edgemeter.cloud.routes.common import API, CSV_DOC, Conn, Ctx, Fmt, Limit, Offset, OptId, Who, columns, listed

router = APIRouter(prefix=API, tags=["licenses"])


@router.get("/licenses", response_model=Page[Purchase], responses=CSV_DOC,
            summary="License purchases and how many of each are activated")
def list_purchases(who: Who, conn: Conn, limit: Limit = 100, offset: Offset = 0, workspace_id: OptId = None,
                   format: Fmt = "json") -> Any:
    rows, total = queries.purchases_page(conn, who.scope, limit, offset, workspace_id)
    return listed(format, "licenses", rows, total, limit, offset, columns(Purchase))


@router.get("/licenses/activations", response_model=Page[Activation], responses=CSV_DOC,
            summary="License activations, their usage periods and expiries")
def list_activations(who: Who, conn: Conn, ctx: Ctx, limit: Limit = 100, offset: Offset = 0,
                     workspace_id: OptId = None,
                     expiring_within_days: Annotated[int | None, Query(ge=0, le=36500)] = None,
                     active: bool | None = None, format: Fmt = "json") -> Any:
    rows, total = queries.activations_page(conn, who.scope, limit, offset, ctx.now(), workspace_id,
                                           expiring_within_days, active)
    return listed(format, "activations", rows, total, limit, offset, columns(Activation))
