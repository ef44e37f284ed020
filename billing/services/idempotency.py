"""Idempotency keys: a retried write gets the first answer instead of doing the work again.

A caller (an API key) sends ``Idempotency-Key: <its own unique string>`` with a POST. The first
request with that key runs and its answer (status, headers, body) is stored in
``idempotency_keys`` (migration 0009) for :data:`TTL`; a retry with the same key and the same
request gets that answer back byte for byte, even when doing it again would now answer
differently (a retried finalize gets the first 200, not "already finalized").

How a key is held: the row is created (committed) first, then locked ``FOR UPDATE NOWAIT`` in a
transaction that stays open while the request runs, and the answer is written in that
transaction. So a second request with the key while the first runs finds the row locked
(:class:`KeyInUse`); if the process dies mid-request, its connection drops, the lock goes with it
and the row is left without an answer — the next retry takes it over and runs the request. An
answer the caller should retry (5xx, an exception) is never stored, for the same reason.

Keys are per caller (two API keys never see each other's), compared with the request's
fingerprint (a hash of method, path, query and body: the same key for another request is
:class:`KeyReused`), and forgotten after :data:`TTL` (expired rows are deleted by later claims).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Row, text
from sqlalchemy.exc import OperationalError

from billing.errors import KeyInUse, KeyReused

__all__ = ["TTL", "Claim", "StoredAnswer", "claim", "fingerprint"]

TTL = timedelta(hours=24)
_EXPIRED_PER_CLAIM = 100  # expired rows deleted by each new claim: bounded work per request


@dataclass(frozen=True)
class StoredAnswer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def fingerprint(method: str, path: str, query: Sequence[tuple[str, str]], body: bytes) -> str:
    """What makes two requests the same one: method, path, query (in any order) and body."""
    h = hashlib.sha256()
    for part in (method.upper(), path, *(f"{k}={v}" for k, v in sorted(query))):
        h.update(part.encode("utf-8", "surrogateescape") + b"\0")
    h.update(b"\0" + hashlib.sha256(body).digest())
    return h.hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


class Claim:
    """A held key: ``answer`` is the stored first answer (replay it), or None (run the request,
    then :meth:`complete` with its answer)."""

    def __init__(self, conn: Connection, caller: str, key: str, answer: StoredAnswer | None) -> None:
        self._conn, self._caller, self._key = conn, caller, key
        self.answer = answer

    def complete(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self._conn.execute(
            text(
                "UPDATE idempotency_keys SET status = :status, headers = CAST(:headers AS jsonb), body = :body "
                "WHERE key_id = :caller AND idempotency_key = :key"
            ),
            {
                "status": status,
                "headers": _json_pairs(headers),
                "body": body,
                "caller": self._caller,
                "key": self._key,
            },
        )


def _json_pairs(pairs: list[tuple[str, str]]) -> str:
    return json.dumps([[k, v] for k, v in pairs])


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


def _lock(conn: Connection, params: dict[str, object]) -> Row[Any] | None:
    try:
        return conn.execute(_LOCK, params).first()
    except OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) == "55P03":  # lock_not_available: a request holds it
            raise KeyInUse(str(params["key"])) from None
        raise


@contextmanager
def claim(engine: Engine, caller: str, key: str, print_: str, clock: Callable[[], datetime] = _now) -> Iterator[Claim]:
    """Hold ``caller``'s ``key`` for a request with fingerprint ``print_`` while the block runs.

    Raises :class:`KeyInUse` or :class:`KeyReused` before the block; the answer given to
    :meth:`Claim.complete` is committed when the block ends normally, and nothing is stored when
    it raises (the key is then free for a retry)."""
    now = clock()
    params = {"caller": caller, "key": key, "fingerprint": print_, "now": now, "expires": now + TTL}
    with engine.begin() as conn:
        conn.execute(_CLEAN, {"now": now, "n": _EXPIRED_PER_CLAIM})
        conn.execute(_CREATE, params)
    with engine.connect() as conn, conn.begin():
        row = _lock(conn, params)
        if row is None:  # expired and deleted by another claim's clean-up since it was created
            conn.execute(_CREATE, params)
            row = _lock(conn, params)
        if row is None or row.expires_at <= now:
            conn.execute(_RESTART, params)  # an expired key is a new key
            answer = None
        elif row.fingerprint != print_:
            raise KeyReused(key)
        elif row.status is None:
            answer = None  # never answered: the first request died; this one runs it
        else:
            answer = StoredAnswer(row.status, [(k, v) for k, v in row.headers], bytes(row.body))
        yield Claim(conn, caller, key, answer)
