"""Idempotency keys in PostgreSQL (``idempotency_keys``, migration 0009): the
:class:`~billing.services.ports.IdempotencyKeys` port.

A key is held by locking its row ``FOR UPDATE NOWAIT``: a second holder gets
:class:`~billing.errors.KeyInUse` at once instead of waiting; the lock goes with the transaction
(or with the connection, if the process dies)."""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import Connection, text
from sqlalchemy.exc import OperationalError

from billing.errors import KeyInUse
from billing.services.ports import IdempotencyRecord

__all__ = ["IdempotencyRepository"]

_CLEAN = text(
    "DELETE FROM idempotency_keys WHERE (key_id, idempotency_key) IN ("
    "SELECT key_id, idempotency_key FROM idempotency_keys WHERE expires_at <= :now "
    "LIMIT :n FOR UPDATE SKIP LOCKED)"
)
_CREATE = text(
    "INSERT INTO idempotency_keys (key_id, idempotency_key, fingerprint, created_at, expires_at) "
    "VALUES (:caller, :key, :fingerprint, :now, :expires) ON CONFLICT (key_id, idempotency_key) DO NOTHING"
)
_LOCK = text(
    "SELECT fingerprint, status, headers, body, expires_at FROM idempotency_keys "
    "WHERE key_id = :caller AND idempotency_key = :key FOR UPDATE NOWAIT"
)
_RESTART = text(
    "UPDATE idempotency_keys SET fingerprint = :fingerprint, status = NULL, headers = NULL, body = NULL, "
    "created_at = :now, expires_at = :expires WHERE key_id = :caller AND idempotency_key = :key"
)
_COMPLETE = text(
    "UPDATE idempotency_keys SET status = :status, headers = CAST(:headers AS jsonb), body = :body "
    "WHERE key_id = :caller AND idempotency_key = :key"
)


class IdempotencyRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def delete_expired(self, now: datetime, limit: int) -> None:
        self._conn.execute(_CLEAN, {"now": now, "n": limit})

    def create(self, caller: str, key: str, fingerprint: str, now: datetime, expires: datetime) -> None:
        self._conn.execute(
            _CREATE, {"caller": caller, "key": key, "fingerprint": fingerprint, "now": now, "expires": expires}
        )

    def lock(self, caller: str, key: str) -> IdempotencyRecord | None:
        try:
            row = self._conn.execute(_LOCK, {"caller": caller, "key": key}).first()
        except OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) == "55P03":  # lock_not_available: a request holds it
                raise KeyInUse(key) from None
            raise
        if row is None:
            return None
        return IdempotencyRecord(
            row.fingerprint,
            row.status,
            None if row.headers is None else [(k, v) for k, v in row.headers],
            None if row.body is None else bytes(row.body),
            row.expires_at,
        )

    def restart(self, caller: str, key: str, fingerprint: str, now: datetime, expires: datetime) -> None:
        self._conn.execute(
            _RESTART, {"caller": caller, "key": key, "fingerprint": fingerprint, "now": now, "expires": expires}
        )

    def complete(self, caller: str, key: str, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self._conn.execute(
            _COMPLETE,
            {
                "status": status,
                "headers": json.dumps([[k, v] for k, v in headers]),
                "body": body,
                "caller": caller,
                "key": key,
            },
        )
