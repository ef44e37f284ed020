"""Kafka credentials in PostgreSQL (``credentials`` and their SCRAM keys ``credential_keys``):
the :class:`~billing.services.ports.Credentials` port. No password is ever stored."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from billing.adapters.models import CredentialKeyRow, CredentialRow
from billing.adapters.repositories.catalog import account_exists
from billing.services.ports import CredentialRecord, StoredKey

__all__ = ["CredentialRepository"]


def _credential(r: Any) -> CredentialRecord:
    return CredentialRecord(r.id, r.account_code, r.name, r.username, r.created_at, r.revoked_at)


def _key(k: Any) -> StoredKey:
    return StoredKey(
        k.credential_id, k.mechanism, k.generation, k.salt, k.iterations, k.stored_key, k.server_key,
        k.created_at, k.valid_until,
    )  # fmt: skip


class CredentialRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def account_exists(self, code: str) -> bool:
        return account_exists(self._conn, code)

    def username_taken(self, username: str) -> bool:
        return (
            self._conn.execute(select(CredentialRow.id).where(CredentialRow.username == username)).first() is not None
        )

    def add(self, credential_id: str, account: str, name: str, username: str) -> None:
        self._conn.execute(
            insert(CredentialRow).values(id=credential_id, account_code=account, name=name, username=username)
        )

    def add_keys(self, keys: list[StoredKey]) -> None:
        for k in keys:  # one statement each, as the database sets created_at
            self._conn.execute(
                insert(CredentialKeyRow).values(
                    credential_id=k.credential_id,
                    mechanism=k.mechanism,
                    generation=k.generation,
                    salt=k.salt,
                    iterations=k.iterations,
                    stored_key=k.stored_key,
                    server_key=k.server_key,
                )
            )

    def get_active(self, credential_id: str) -> CredentialRecord | None:
        row = self._conn.execute(
            select(CredentialRow).where(CredentialRow.id == credential_id, CredentialRow.revoked_at.is_(None))
        ).first()
        return None if row is None else _credential(row)

    def keys_of(self, credential_id: str) -> list[StoredKey]:
        query = select(CredentialKeyRow).where(CredentialKeyRow.credential_id == credential_id)
        return [_key(k) for k in self._conn.execute(query).all()]

    def expire_keys(self, credential_id: str, until: datetime) -> None:
        self._conn.execute(
            update(CredentialKeyRow)
            .where(CredentialKeyRow.credential_id == credential_id, CredentialKeyRow.valid_until.is_(None))
            .values(valid_until=until)
        )

    def revoke(self, credential_id: str, at: datetime) -> bool:
        done = self._conn.execute(
            update(CredentialRow)
            .where(CredentialRow.id == credential_id, CredentialRow.revoked_at.is_(None))
            .values(revoked_at=at)
        )
        return done.rowcount == 1

    def listed(self, account: str | None, include_revoked: bool) -> list[CredentialRecord]:
        query = select(CredentialRow).order_by(CredentialRow.created_at, CredentialRow.id)
        if account is not None:
            query = query.where(CredentialRow.account_code == account)
        if not include_revoked:
            query = query.where(CredentialRow.revoked_at.is_(None))
        return [_credential(r) for r in self._conn.execute(query).all()]

    def all_keys(self, account: str | None = None) -> list[StoredKey]:
        query = select(CredentialKeyRow).order_by(
            CredentialKeyRow.credential_id, CredentialKeyRow.generation, CredentialKeyRow.mechanism
        )
        if account is not None:
            query = query.join(CredentialRow, CredentialRow.id == CredentialKeyRow.credential_id).where(
                CredentialRow.account_code == account
            )
        return [_key(k) for k in self._conn.execute(query).all()]

    def all_by_id(self) -> list[CredentialRecord]:
        return [_credential(r) for r in self._conn.execute(select(CredentialRow).order_by(CredentialRow.id)).all()]
