"""/me and /overview: who is calling, and the fleet's headline numbers."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from edgemeter.cloud import alerts as alerts_mod, queries
from edgemeter.cloud.api_models import Me, Overview
from edgemeter.cloud.routes.common import API, Conn, Ctx, Who

router = APIRouter(prefix=API)


@router.get("/me", response_model=Me, tags=["auth"], summary="The caller's role and account")
def me(who: Who) -> Any:
    return {"role": who.role, "account_id": who.account_id, "token_id": who.token_id}


@router.get("/overview", response_model=Overview, tags=["fleet"], summary="Headline numbers of the fleet")
def overview(who: Who, conn: Conn, ctx: Ctx) -> Any:
    t = ctx.now()
    out = queries.overview(conn, who.scope, t * 1000, ctx.online_s)
    out["silent"] = len(alerts_mod.device_silent(conn, t, who.scope, alerts_mod.Thresholds()))
    out["dead_letters"] = sum(queries.dead_letter_counts(conn).values()) if who.operator else None
    al = alerts_mod.compute(conn, t, who.scope)
    out.update(alerts=len(al), critical_alerts=sum(1 for a in al if a["severity"] == "critical"), now=t,
               online_s=ctx.online_s)
    return out
