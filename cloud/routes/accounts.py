"""/accounts: accounts with their postpaid balances, free trial and savings plans."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from edgemeter.cloud import accounts as accounts_svc, queries
from edgemeter.cloud.api_models import Account, AccountDetail, Page
from edgemeter.cloud.routes.common import API, CSV_DOC, Conn, Fmt, IdPath, Limit, Offset, Who, columns, listed

router = APIRouter(prefix=API, tags=["accounts"])


@router.get("/accounts", response_model=Page[Account], responses=CSV_DOC,
            summary="Accounts with their postpaid balances")
def list_accounts(who: Who, conn: Conn, limit: Limit = 100, offset: Offset = 0, format: Fmt = "json") -> Any:
    rows, total = queries.accounts_page(conn, who.scope, limit, offset)
    return listed(format, "accounts", rows, total, limit, offset, columns(Account))


@router.get("/accounts/{account_id}", response_model=AccountDetail,
            summary="One account: balance, free trial, savings plans and orders")
def get_account(account_id: IdPath, who: Who, conn: Conn) -> Any:
    queries.check_account(conn, account_id, who.scope)
    row = queries.accounts_page(conn, account_id, 1, 0)[0][0]
    bal = accounts_svc.balances(conn, account_id)
    plans = [{"id": p["id"], "commit_ucny": p["commit_ucny"], "bp": p["bp"], "cap_ucny": p["cap_ucny"],
              "bought_at": p["bought_at"], "ends_at": p["ends_at"], "used_ucny": p["used_ucny"],
              "forfeited_ucny": p["forfeited_ucny"], "closed": bool(p["closed"]),
              "left_ucny": 0 if p["closed"] else p["cap_ucny"] - p["used_ucny"]} for p in bal["plans"]]
    return {**row, "trial": bal["trial"], "plans": plans, "orders": bal["orders"]}
