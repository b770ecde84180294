"""HTTP API tokens: operator tokens see everything, tenant tokens one account.

Rules:
 T1. A token is "em_" + 32 random bytes in URL-safe base64, shown once when created; only its
     SHA-256 is stored (api_tokens.hash, unique), so a copy of the store grants nothing.
 T2. role "operator" (account_id NULL): every account, plus the operator-only views (dead
     letters). role "tenant": exactly one account, its workspaces, devices, usage and invoices;
     anything else is answered as if it did not exist (404).
 T3. A revoked token (revoked_at set) authenticates nothing from that moment.
 T4. Tokens given on the dashboard's command line (--token) are compared in constant time and
     never stored.

    edgemeter admin create-token --db URL --role operator|tenant [--account ID] [--name TEXT]
    edgemeter admin revoke-token --db URL --id N

Errors: TokenError(ValueError) for caller mistakes (unknown role, tenant without an account,
an operator bound to one, unknown account or token).
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from edgemeter.cloud import schema as S

ROLES = ("operator", "tenant")
PREFIX = "em_"


class TokenError(ValueError):
    """A caller mistake creating or revoking a token."""


@dataclass(frozen=True)
class Principal:
    role: str
    account_id: int | None
    token_id: int | None = None
    name: str = ""

    @property
    def operator(self) -> bool:
        return self.role == "operator"

    @property
    def scope(self) -> int | None:
        """None for an operator (every account), else the tenant's account (queries rule Q1)."""
        return None if self.operator else self.account_id


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def create(conn: Connection, role: str, account_id: int | None, name: str, now: int) -> dict[str, Any]:
    """Rules T1-T2: {"id", "token", "role", "account_id", "name"}; the token is not kept."""
    if role not in ROLES:
        raise TokenError(f"a token's role is one of {', '.join(ROLES)}, not {role!r}")
    if role == "tenant" and account_id is None:
        raise TokenError("a tenant token needs --account")
    if role == "operator" and account_id is not None:
        raise TokenError("an operator token sees every account: drop --account")
    if account_id is not None and conn.execute(select(S.accounts.c.id).where(S.accounts.c.id == account_id)).first() is None:
        raise TokenError(f"no account {account_id}")
    token = PREFIX + secrets.token_urlsafe(32)
    tid = conn.execute(insert(S.api_tokens).values(hash=digest(token), role=role, account_id=account_id,
                                                   name=name[:200], created_at=now)).inserted_primary_key[0]  # type: ignore[index]
    return {"id": tid, "token": token, "role": role, "account_id": account_id, "name": name[:200]}


def revoke(conn: Connection, token_id: int, now: int) -> dict[str, Any]:
    """Rule T3."""
    t = S.api_tokens
    row = conn.execute(select(t.c.id, t.c.revoked_at).where(t.c.id == token_id)).first()
    if row is None:
        raise TokenError(f"no token {token_id}")
    if row[1] is None:
        conn.execute(update(t).where(t.c.id == token_id).values(revoked_at=now))
    return {"id": token_id, "revoked_at": row[1] if row[1] is not None else now}


def lookup(conn: Connection, token: str) -> Principal | None:
    """The principal of a stored, unrevoked token, or None."""
    t = S.api_tokens
    row = conn.execute(select(t.c.id, t.c.role, t.c.account_id, t.c.name)
                       .where(t.c.hash == digest(token), t.c.revoked_at.is_(None))).first()
    if row is None or row[1] not in ROLES:
        return None
    return Principal(row[1], row[2], row[0], row[3])


def is_revoked(conn: Connection, token_id: int) -> bool:
    """Rule T3 for what outlives a request (an event stream): revoked, or gone."""
    row = conn.execute(select(S.api_tokens.c.revoked_at).where(S.api_tokens.c.id == token_id)).first()
    return row is None or row[0] is not None


def static_lookup(static: Mapping[str, int | None], token: str) -> Principal | None:
    """Rule T4: static tokens map to None (operator) or an account id (tenant)."""
    found = None
    for known, account in static.items():
        if hmac.compare_digest(known.encode(), token.encode("utf-8", "surrogatepass")):
            found = Principal("operator" if account is None else "tenant", account, None, "command line")
    return found
