"""/changes and /events: live updates for the dashboard (cloud.api rule H6)."""
from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from edgemeter.cloud import queries
from edgemeter.cloud import tokens as tokmod
from edgemeter.cloud.routes.common import API, ApiContext, Conn, Ctx, Who, principal_brief

router = APIRouter(prefix=API, tags=["live"])


@router.get("/changes", response_model=dict[str, int],
            summary="A fingerprint that moves whenever something on the dashboard changes")
def changes(who: Who, conn: Conn) -> Any:
    return queries.fingerprint(conn, who.scope)


def fingerprint(ctx: ApiContext, scope: int | None) -> dict[str, int]:
    """The fingerprint in a read transaction of its own (the stream holds no connection)."""
    with ctx.engine.connect() as conn:
        with conn.begin() as tx:
            fp = queries.fingerprint(conn, scope)
            tx.rollback()
    return fp


@router.get("/events", include_in_schema=False)
async def events(request: Request, ctx: Ctx,
                 who: Annotated[tokmod.Principal, Depends(principal_brief)]) -> StreamingResponse:
    scope = who.scope

    async def stream() -> Any:
        last = None
        started = time.monotonic()
        beat = started
        yield "retry: 2000\n\n"
        while time.monotonic() - started < ctx.events_max_s:
            if await request.is_disconnected():
                return
            fp = await run_in_threadpool(fingerprint, ctx, scope)
            if fp != last:
                last = fp
                yield f"event: change\ndata: {json.dumps(fp, sort_keys=True)}\n\n"
            elif time.monotonic() - beat > 15:
                beat = time.monotonic()
                yield ": ping\n\n"
            await asyncio.sleep(ctx.events_interval_s)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
