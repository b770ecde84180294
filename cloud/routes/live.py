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
REVOKE_CHECK_S = 0.25   # cloud.api H6: how often an open event stream re-checks its token

EVENTS_DOC: dict[int | str, dict[str, Any]] = {200: {
    "description": "Server-Sent Events: `retry: 2000` first, then `event: change` with the fingerprint "
                   "of /api/v1/changes as JSON data whenever it moves, `: ping` comments as a heartbeat; "
                   "the server ends the stream after at most its max_s seconds and the client reconnects "
                   "(EventSource does so by itself); once the caller's token is revoked the stream "
                   "ends with `event: revoked`",
    "content": {"text/event-stream": {
        # one event, as schemathesis and OpenAPI 3.2's itemSchema read an event-stream schema
        "schema": {"type": "object", "required": ["event", "data"], "properties": {
            "event": {"type": "string", "enum": ["change", "revoked"]},
            "data": {"type": "string", "contentMediaType": "application/json",
                     "contentSchema": {"type": "object", "additionalProperties": {"type": "integer"}}}}},
        "example": ('retry: 2000\n\nevent: change\ndata: {"activation": 3, "batch": 42, "charge": 40, "dead": 0, '
                    '"devices": 12, "mismatch": 0, "payment": 0, "pool": 97, "seen": 1764750000000}\n\n')}}}}


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


def revoked(ctx: ApiContext, who: tokmod.Principal) -> bool:
    """Tokens T3 for a stream: a stored token revoked (or deleted) since the stream began."""
    if who.token_id is None:
        return False
    with ctx.engine.connect() as conn:
        return tokmod.is_revoked(conn, who.token_id)


@router.get("/events", response_class=StreamingResponse, responses=EVENTS_DOC,
            summary="The /changes fingerprint as a Server-Sent Events stream, sent whenever it moves")
async def events(request: Request, ctx: Ctx,
                 who: Annotated[tokmod.Principal, Depends(principal_brief)]) -> StreamingResponse:
    scope = who.scope

    async def stream() -> Any:
        last = None
        started = time.monotonic()
        beat = started
        yield "retry: 2000\n\n"
        next_fp = started
        while time.monotonic() - started < ctx.events_max_s:
            if await request.is_disconnected():
                return
            if await run_in_threadpool(revoked, ctx, who):   # H6: the stream ends with its token
                yield "event: revoked\ndata: {}\n\n"
                return
            if time.monotonic() >= next_fp:
                next_fp = time.monotonic() + ctx.events_interval_s
                fp = await run_in_threadpool(fingerprint, ctx, scope)
                if fp != last:
                    last = fp
                    yield f"event: change\ndata: {json.dumps(fp, sort_keys=True)}\n\n"
                elif time.monotonic() - beat > 15:
                    beat = time.monotonic()
                    yield ": ping\n\n"
            await asyncio.sleep(min(REVOKE_CHECK_S, ctx.events_interval_s))

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
