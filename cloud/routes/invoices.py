"""/accounts/{id}/invoices: the months that can be invoiced, and each month's invoice."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from edgemeter.cloud import invoices as invoices_svc, queries
from edgemeter.cloud.api_models import Invoice, InvoiceIndex
from edgemeter.cloud.routes.common import API, CSV_DOC, Conn, Ctx, Fmt, IdPath, Month, Who, csv_response

router = APIRouter(prefix=API, tags=["invoices"])


@router.get("/accounts/{account_id}/invoices", response_model=InvoiceIndex,
            summary="Months that can be invoiced and the invoices already stored")
def invoice_index(account_id: IdPath, who: Who, conn: Conn, ctx: Ctx) -> Any:
    queries.check_account(conn, account_id, who.scope)
    return {"account_id": account_id, "months": queries.invoice_months(conn, account_id, ctx.now()),
            "stored": queries.stored_invoices(conn, account_id)}


@router.get("/accounts/{account_id}/invoices/{month}", response_model=Invoice, responses=CSV_DOC,
            summary="The monthly invoice: one line per billable item and multiplier")
def get_invoice(account_id: IdPath, month: Month, who: Who, conn: Conn, format: Fmt = "json") -> Any:
    queries.check_account(conn, account_id, who.scope)
    inv = invoices_svc.compute(conn, account_id, month, queries.latest_book(conn))
    if format == "csv":
        return csv_response(invoices_svc.to_csv(inv), f"invoice-{account_id}-{month}")
    return inv
