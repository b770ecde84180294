"""/devices and /leases: the fleet, and the leases its devices hold on License pools."""
from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter

from edgemeter.cloud import queries
from edgemeter.cloud.api_models import Device, Lease, Page
from edgemeter.cloud.routes.common import (API, CSV_DOC, Conn, Ctx, Fmt, IdPath, Limit, Offset, OptId, Who, columns,
                                           listed)

router = APIRouter(prefix=API, tags=["fleet"])


@router.get("/devices", response_model=Page[Device], responses=CSV_DOC,
            summary="The fleet: last seen, online, unsynced batches, lease level, mismatches")
def list_devices(who: Who, conn: Conn, ctx: Ctx, limit: Limit = 100, offset: Offset = 0, workspace_id: OptId = None,
                 status: Literal["active", "suspended"] | None = None, online: bool | None = None,
                 mismatched: bool | None = None, format: Fmt = "json") -> Any:
    rows, total = queries.devices_page(conn, who.scope, limit, offset, ctx.now() * 1000, ctx.online_s, workspace_id,
                                       status, online, mismatched)
    return listed(format, "devices", rows, total, limit, offset)


@router.get("/devices/{device_id}", response_model=Device, summary="One device")
def get_device(device_id: IdPath, who: Who, conn: Conn, ctx: Ctx) -> Any:
    return queries.device_detail(conn, device_id, who.scope, ctx.now() * 1000, ctx.online_s)


@router.get("/leases", response_model=Page[Lease], responses=CSV_DOC, summary="Leases on License pools")
def list_leases(who: Who, conn: Conn, limit: Limit = 100, offset: Offset = 0, workspace_id: OptId = None,
                device_id: OptId = None, state: Literal["live", "reclaimed", "closed"] | None = None,
                format: Fmt = "json") -> Any:
    rows, total = queries.leases_page(conn, who.scope, limit, offset, workspace_id, device_id, state)
    return listed(format, "leases", rows, total, limit, offset, columns(Lease))
