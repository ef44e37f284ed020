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

from sqlalchemy import Engine

from billing.adapters.uow import UnitOfWork
from billing.errors import ApiKeyError, ApiKeyNotFound
from billing.services.ports import ApiKeys

__all__ = [
    "Caller",
    "KeyView",
    "authenticate",
    "caller_by_id",
    "caller_of",
    "create_key",
    "issue_key",
    "keys_of",
    "list_keys",
    "revoke_key",
    "withdraw_key",
]


@dataclass(frozen=True)
class Caller:
    key_id: str
    role: str  # partner | finance | ops (ops reads only the live view)
    account: str | None  # the partner's account; None for finance

    def sees(self, account: str) -> bool:
        return self.role == "finance" or self.account == account


@dataclass(frozen=True)
class KeyView:
    """A key as operators see it: never its secret or hash."""

    key_id: str
    role: str
    account: str | None
    created_at: datetime
    revoked_at: datetime | None


def _sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def issue_key(keys: ApiKeys, role: str, account: str | None) -> str:
    """A new key, returned once (only its hash is stored)."""
    if role not in ("partner", "finance", "ops"):
        raise ApiKeyError("role must be partner, finance or ops")
    if role == "partner" and not account:
        raise ApiKeyError("a partner key needs --account")
    if account is not None and not keys.account_exists(account):
        raise ApiKeyNotFound(f"there is no account {account!r}; load accounts first")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    keys.add(key_id, _sha(secret), role, account if role == "partner" else None)
    return f"stk_{key_id}_{secret}"


def withdraw_key(keys: ApiKeys, key_id: str, at: datetime) -> None:
    if not keys.revoke(key_id, at):
        raise ApiKeyNotFound(f"there is no active key {key_id!r}")


def _parts(presented: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key ``stk_<key_id>_<secret>``."""
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != "stk" or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def caller_of(keys: ApiKeys, presented: str) -> Caller | None:
    """The caller a presented key belongs to, or None (unknown, malformed, wrong or revoked)."""
    parts = _parts(presented)
    if parts is None:
        return None
    record = keys.get(parts[0])
    # compare even for an unknown id, so timing does not tell whether an id exists
    expected = record.secret_sha256 if record is not None else _sha("")
    if not hmac.compare_digest(expected, _sha(parts[1])) or record is None or record.revoked_at is not None:
        return None
    return Caller(record.key_id, record.role, record.account)


def keys_of(keys: ApiKeys, account: str | None = None, include_revoked: bool = False) -> list[KeyView]:
    """The keys, oldest first (of one account, when given)."""
    return [
        KeyView(r.key_id, r.role, r.account, r.created_at, r.revoked_at) for r in keys.listed(account, include_revoked)
    ]


def create_key(engine: Engine, role: str, account: str | None) -> str:
    """A new key, returned once (only its hash is stored)."""
    with UnitOfWork(engine) as uow:
        return issue_key(uow.keys, role, account)


def revoke_key(engine: Engine, key_id: str) -> None:
    with UnitOfWork(engine) as uow:
        withdraw_key(uow.keys, key_id, datetime.now(UTC))


def authenticate(engine: Engine, presented: str) -> Caller | None:
    """The caller a presented key belongs to, or None (unknown, malformed, wrong or revoked)."""
    if _parts(presented) is None:  # malformed: not worth a connection
        return None
    with UnitOfWork(engine) as uow:
        return caller_of(uow.keys, presented)


def list_keys(engine: Engine, account: str | None = None, include_revoked: bool = False) -> list[KeyView]:
    """The keys, oldest first (of one account, when given)."""
    with UnitOfWork(engine) as uow:
        return keys_of(uow.keys, account, include_revoked)


def caller_by_id(engine: Engine, key_id: str) -> Caller | None:
    """The caller of a key already authenticated once (the portal's session names its key id),
    while it is not revoked; None otherwise."""
    with UnitOfWork(engine) as uow:
        record = uow.keys.get(key_id)
    if record is None or record.revoked_at is not None:
        return None
    return Caller(record.key_id, record.role, record.account)
