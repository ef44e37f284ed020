"""API keys in PostgreSQL (``api_keys``): the :class:`~billing.services.ports.ApiKeys` port."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from billing.adapters.models import ApiKeyRow
from billing.adapters.repositories.catalog import account_exists
from billing.services.ports import ApiKeyRecord

__all__ = ["ApiKeyRepository"]


def _record(r: Any) -> ApiKeyRecord:
    return ApiKeyRecord(r.key_id, r.secret_sha256, r.role, r.account_code, r.created_at, r.revoked_at)


class ApiKeyRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def account_exists(self, code: str) -> bool:
        return account_exists(self._conn, code)

    def add(self, key_id: str, secret_sha256: str, role: str, account: str | None) -> None:
        self._conn.execute(
            insert(ApiKeyRow).values(key_id=key_id, secret_sha256=secret_sha256, role=role, account_code=account)
        )

    def get(self, key_id: str) -> ApiKeyRecord | None:
        row = self._conn.execute(select(ApiKeyRow).where(ApiKeyRow.key_id == key_id)).first()
        return None if row is None else _record(row)

    def revoke(self, key_id: str, at: datetime) -> bool:
        done = self._conn.execute(
            update(ApiKeyRow).where(ApiKeyRow.key_id == key_id, ApiKeyRow.revoked_at.is_(None)).values(revoked_at=at)
        )
        return done.rowcount == 1

    def listed(self, account: str | None, include_revoked: bool) -> list[ApiKeyRecord]:
        query = select(ApiKeyRow).order_by(ApiKeyRow.created_at, ApiKeyRow.key_id)
        if account is not None:
            query = query.where(ApiKeyRow.account_code == account)
        if not include_revoked:
            query = query.where(ApiKeyRow.revoked_at.is_(None))
        return [_record(r) for r in self._conn.execute(query).all()]
