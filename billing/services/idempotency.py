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
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from billing.adapters.uow import UnitOfWork
from billing.errors import KeyReused
from billing.services.ports import IdempotencyKeys

__all__ = ["TTL", "Claim", "StoredAnswer", "claim", "claim_in", "fingerprint"]

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

    def __init__(self, keys: IdempotencyKeys, caller: str, key: str, answer: StoredAnswer | None) -> None:
        self._keys, self._caller, self._key = keys, caller, key
        self.answer = answer

    def complete(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self._keys.complete(self._caller, self._key, status, headers, body)


Transaction = Callable[[], AbstractContextManager[IdempotencyKeys]]


@contextmanager
def claim_in(transaction: Transaction, caller: str, key: str, print_: str, now: datetime) -> Iterator[Claim]:
    """:func:`claim` over any store: ``transaction()`` opens a transaction (committed when its
    block ends normally, rolled back when it raises) and gives its keys."""
    expires = now + TTL
    with transaction() as keys:  # committed before the key is held: a second request finds it
        keys.delete_expired(now, _EXPIRED_PER_CLAIM)
        keys.create(caller, key, print_, now, expires)
    with transaction() as keys:
        record = keys.lock(caller, key)
        if record is None:  # expired and deleted by another claim's clean-up since it was created
            keys.create(caller, key, print_, now, expires)
            record = keys.lock(caller, key)
        if record is None or record.expires_at <= now:
            keys.restart(caller, key, print_, now, expires)  # an expired key is a new key
            answer = None
        elif record.fingerprint != print_:
            raise KeyReused(key)
        elif record.status is None:
            answer = None  # never answered: the first request died; this one runs it
        else:
            answer = StoredAnswer(record.status, list(record.headers or ()), record.body or b"")
        yield Claim(keys, caller, key, answer)


@contextmanager
def _transaction(engine: Engine) -> Iterator[IdempotencyKeys]:
    with UnitOfWork(engine) as uow:
        yield uow.idempotency


@contextmanager
def claim(engine: Engine, caller: str, key: str, print_: str, clock: Callable[[], datetime] = _now) -> Iterator[Claim]:
    """Hold ``caller``'s ``key`` for a request with fingerprint ``print_`` while the block runs.

    Raises :class:`KeyInUse` or :class:`KeyReused` before the block; the answer given to
    :meth:`Claim.complete` is committed when the block ends normally, and nothing is stored when
    it raises (the key is then free for a retry)."""
    with claim_in(lambda: _transaction(engine), caller, key, print_, clock()) as held:
        yield held
