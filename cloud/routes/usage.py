"""/usage: calls and rated µCNY by billable item, by device, and over time."""
from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter

from edgemeter.cloud import queries
from edgemeter.cloud.api_models import Page, UsageBucket, UsageDevice, UsageItem
from edgemeter.cloud.routes.common import (API, CSV_DOC, Conn, Fmt, Limit, Offset, OptId, OptTime, Who, columns,
                                           listed)

router = APIRouter(prefix=API, tags=["usage"])


@router.get("/usage/items", response_model=Page[UsageItem], responses=CSV_DOC,
            summary="Calls and rated µCNY per billable item and multiplier")
def usage_items(who: Who, conn: Conn, since: OptTime = None, until: OptTime = None, account_id: OptId = None,
                workspace_id: OptId = None, device_id: OptId = None, limit: Limit = 100, offset: Offset = 0,
                format: Fmt = "json") -> Any:
    rows = queries.usage_by_item(conn, who.scope, since, until, account_id, workspace_id, device_id)
    return listed(format, "usage-items", rows[offset:offset + limit], len(rows), limit, offset)


@router.get("/usage/devices", response_model=Page[UsageDevice], responses=CSV_DOC,
            summary="Batches, rounds and µCNY per device")
def usage_devices(who: Who, conn: Conn, since: OptTime = None, until: OptTime = None, account_id: OptId = None,
                  workspace_id: OptId = None, device_id: OptId = None, limit: Limit = 100, offset: Offset = 0,
                  format: Fmt = "json") -> Any:
    rows, total = queries.usage_by_device(conn, who.scope, limit, offset, since, until, account_id,
                                          workspace_id, device_id)
    return listed(format, "usage-devices", rows, total, limit, offset, columns(UsageDevice))


@router.get("/usage/time", response_model=Page[UsageBucket], responses=CSV_DOC,
            summary="Calls and rated µCNY per time bucket (billing calendar) and billable item")
def usage_time(who: Who, conn: Conn, bucket: Literal["minute", "hour", "day", "month"] = "day", since: OptTime = None,
               until: OptTime = None, account_id: OptId = None, workspace_id: OptId = None,
               device_id: OptId = None, limit: Limit = 1000, offset: Offset = 0, format: Fmt = "json") -> Any:
    rows = queries.usage_over_time(conn, who.scope, bucket, since, until, account_id, workspace_id, device_id)
    return listed(format, "usage-time", rows[offset:offset + limit], len(rows), limit, offset)
