"""/alerts, /dead-letters, /mismatches and /healthz: what an operator watches."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from edgemeter.cloud import alerts as alerts_mod, queries
from edgemeter.cloud import schema as S
from edgemeter.cloud.api_models import Alert, DeadLetter, Mismatch, Page
from edgemeter.cloud.routes.common import (API, CSV_DOC, MAX_INT, Conn, Ctx, Fmt, Limit, Offset, OptId, Who, columns,
                                           listed, operator_only)

router = APIRouter()


@router.get(API + "/alerts", response_model=Page[Alert], responses=CSV_DOC, tags=["alerts"],
            summary="Current alerts computed from the ledger: pools running low, licences expiring, silent "
                    "devices, rating mismatches, suspended accounts")
def list_alerts(who: Who, conn: Conn, ctx: Ctx, kind: Literal[alerts_mod.KINDS] | None = None,  # type: ignore[valid-type]
                account_id: OptId = None, workspace_id: OptId = None,
                pool_low_units: Annotated[int | None, Query(ge=0, le=MAX_INT)] = None,
                expiring_days: Annotated[int, Query(ge=0, le=3650)] = 30,
                silent_minutes: Annotated[int, Query(ge=1, le=525600)] = 60,
                mismatch_hours: Annotated[int, Query(ge=1, le=87600)] = 24,
                limit: Limit = 100, offset: Offset = 0, format: Fmt = "json") -> Any:
    th = alerts_mod.Thresholds(pool_low_units, expiring_days, silent_minutes, mismatch_hours)
    rows = alerts_mod.compute(conn, ctx.now(), who.scope, th, (kind,) if kind else alerts_mod.KINDS)
    if account_id is not None:
        rows = [a for a in rows if a["account_id"] == account_id]
    if workspace_id is not None:
        rows = [a for a in rows if a["workspace_id"] == workspace_id]
    return listed(format, "alerts", rows[offset:offset + limit], len(rows), limit, offset, columns(Alert))


@router.get(API + "/dead-letters", response_model=Page[DeadLetter], responses=CSV_DOC, tags=["operations"],
            summary="Rejected messages by reason, with repeat counts (operators only)")
def list_dead_letters(who: Who, conn: Conn, reason: Annotated[str | None, Query(pattern=r"^[a-z_]{1,32}$")] = None,
                      limit: Limit = 100, offset: Offset = 0, format: Fmt = "json") -> Any:
    operator_only(who)
    rows, total = queries.dead_letters_page(conn, limit, offset, reason)
    return listed(format, "dead-letters", rows, total, limit, offset, columns(DeadLetter))


@router.get(API + "/mismatches", response_model=Page[Mismatch], responses=CSV_DOC, tags=["operations"],
            summary="Batches whose device deduction differs from the cloud's re-rating")
def list_mismatches(who: Who, conn: Conn, device_id: OptId = None, workspace_id: OptId = None,
                    since_ms: Annotated[int | None, Query(ge=0, le=MAX_INT)] = None,
                    limit: Limit = 100, offset: Offset = 0, format: Fmt = "json") -> Any:
    rows, total = queries.mismatches_page(conn, who.scope, limit, offset, device_id, workspace_id, since_ms)
    return listed(format, "mismatches", rows, total, limit, offset, columns(Mismatch))


@router.get("/healthz", tags=["operations"], summary="Liveness: the store answers")
def healthz(conn: Conn) -> dict[str, str]:
    conn.execute(S.meta.select().limit(1)).all()
    return {"status": "ok"}
