"""API keys: created shown once, stored hashed, checked in constant time, revocable.

A key is ``stk_<key_id>_<secret>``: ``key_id`` finds the row, and the SHA-256 of ``secret`` (32
random bytes — far too much entropy for a slow hash to matter) is compared with
``hmac.compare_digest``. Keys never appear in logs: only ``key_id`` may.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, insert, select, update

from billing.adapters.models import AccountRow, ApiKeyRow
from billing.errors import ApiKeyError, ApiKeyNotFound

__all__ = ["Caller", "KeyView", "authenticate", "create_key", "list_keys", "revoke_key"]


@dataclass(frozen=True)
class Caller:
    key_id: str
    role: str  # partner | finance | ops (ops reads only the live view)
    account: str | None  # the partner's account; None for finance

    def sees(self, account: str) -> bool:
        return self.role == "finance" or self.account == account


def _sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(engine: Engine, role: str, account: str | None) -> str:
    """A new key, returned once (only its hash is stored)."""
    if role not in ("partner", "finance", "ops"):
        raise ApiKeyError("role must be partner, finance or ops")
    if role == "partner" and not account:
        raise ApiKeyError("a partner key needs --account")
    with engine.begin() as conn:
        if (
            account is not None
            and conn.execute(select(AccountRow.code).where(AccountRow.code == account)).first() is None
        ):
            raise ApiKeyNotFound(f"there is no account {account!r}; load accounts first")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        conn.execute(
            insert(ApiKeyRow).values(
                key_id=key_id,
                secret_sha256=_sha(secret),
                role=role,
                account_code=account if role == "partner" else None,
            )
        )
    return f"stk_{key_id}_{secret}"


def revoke_key(engine: Engine, key_id: str) -> None:
    with engine.begin() as conn:
        done = conn.execute(
            update(ApiKeyRow)
            .where(ApiKeyRow.key_id == key_id, ApiKeyRow.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
        )
        if done.rowcount != 1:
            raise ApiKeyNotFound(f"there is no active key {key_id!r}")


def authenticate(engine: Engine, presented: str) -> Caller | None:
    """The caller a presented key belongs to, or None (unknown, malformed, wrong or revoked)."""
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != "stk" or not parts[1] or not parts[2]:
        return None
    with engine.connect() as conn:
        row = conn.execute(select(ApiKeyRow).where(ApiKeyRow.key_id == parts[1])).first()
    # compare even for an unknown id, so timing does not tell whether an id exists
    expected = row.secret_sha256 if row is not None else _sha("")
    if not hmac.compare_digest(expected, _sha(parts[2])) or row is None or row.revoked_at is not None:
        return None
    return Caller(row.key_id, row.role, row.account_code)


@dataclass(frozen=True)
class KeyView:
    """A key as operators see it: never its secret or hash."""

    key_id: str
    role: str
    account: str | None
    created_at: datetime
    revoked_at: datetime | None


def list_keys(engine: Engine, account: str | None = None, include_revoked: bool = False) -> list[KeyView]:
    """The keys, oldest first (of one account, when given)."""
    query = select(ApiKeyRow).order_by(ApiKeyRow.created_at, ApiKeyRow.key_id)
    if account is not None:
        query = query.where(ApiKeyRow.account_code == account)
    if not include_revoked:
        query = query.where(ApiKeyRow.revoked_at.is_(None))
    with engine.connect() as conn:
        return [
            KeyView(r.key_id, r.role, r.account_code, r.created_at, r.revoked_at) for r in conn.execute(query).all()
        ]
