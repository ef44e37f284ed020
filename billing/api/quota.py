"""Per-key limits on the API's expensive endpoints: how often, and how many at once.

Every API key has a token bucket (``rate`` requests per second sustained, up to ``burst`` at
once after a quiet spell) and ``concurrent`` slots; the limits come from the key's role
(``STREAMTOLL_API_LIMITS_PARTNER`` / ``_FINANCE`` / ``_OPS``, :func:`billing.settings.parse_limit`). A request
over either limit is refused (429 with ``Retry-After``) before it gets a worker thread: one key
looping on statement PDFs must not hold the threads every other caller needs.

Where the API checks (``billing.api.deps``), in the event loop (no worker thread): a request
takes a slot before its endpoint runs and releases it when the work ends, whatever its outcome.
For a key seen before, the slot is taken before authentication (:meth:`KeyQuota.acquire_known`),
so a request over the limit costs neither a worker thread nor the database query authenticating
it (otherwise a flood of refused requests would cost as much as real ones); authentication
still follows, and a failure releases the slot. That early step compares the SHA-256 of the
whole presented key with the one that authenticated before, so a caller without the secret can
neither use nor drain another key's budget (a wrong secret goes on to authentication and its
401). A key not seen before takes its slot after authentication (:meth:`KeyQuota.acquire`).
Over the limit, a request waits in the event loop for up to :data:`PATIENCE` seconds for a slot
or a token (:func:`admit`), then gets its 429.

Memory: at most ``max_keys`` keys are remembered. A key with a full bucket and nothing running
is the same as one never seen and is forgotten first; beyond the cap the longest idle key with
nothing running goes (forgetting it early only gives it a full bucket back). Keys with requests
running stay until they end (as many as the server runs requests at once).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TypeVar

from billing.settings import DEFAULT_LIMITS, Limit

__all__ = ["PATIENCE", "KeyQuota", "Slot", "TooMany", "admit", "key_digest"]

T = TypeVar("T")

# how long a request over its key's limit waits for a slot or a token before its 429
PATIENCE = 1.0


def key_digest(presented: str) -> bytes:
    """What the quota remembers of a presented key (never the key itself)."""
    return hashlib.sha256(presented.encode()).digest()


class TooMany(Exception):
    """Over ``limit`` (of a key of ``role``): ``reason`` is ``rate`` (the next request is taken
    in ``ready_in`` seconds) or ``concurrency`` (when a slot frees is unknown); ``retry_after``
    is what the answer's ``Retry-After`` says, whole seconds."""

    def __init__(self, role: str, limit: Limit, reason: str, ready_in: float | None) -> None:
        super().__init__(reason)
        self.role, self.limit, self.reason, self.ready_in = role, limit, reason, ready_in
        # a second is a fair guess of when one of the key's running requests ends
        self.retry_after = 1 if ready_in is None else max(1, math.ceil(ready_in))

    @property
    def detail(self) -> str:
        """One sentence for the caller."""
        if self.reason == "rate":
            over = f"over its limit of {self.limit.rate:g} requests per second (bursts of {self.limit.burst})"
        else:
            over = f"already running {self.limit.concurrent} requests, its limit"
        return f"this API key is {over} on this endpoint and the other expensive ones; retry in {self.retry_after} s"


class _Key:
    __slots__ = ("active", "digest", "limit", "role", "stamp", "tokens")

    def __init__(self, role: str, limit: Limit, digest: bytes, now: float) -> None:
        self.role = role
        self.limit = limit
        self.digest = digest
        self.tokens = float(limit.burst)
        self.stamp = now
        self.active = 0

    def refill(self, now: float) -> None:
        self.tokens = min(float(self.limit.burst), self.tokens + (now - self.stamp) * self.limit.rate)
        self.stamp = now

    def settled(self) -> bool:
        """Nothing running and a full bucket: the same as a key never seen."""
        return self.active == 0 and self.tokens >= self.limit.burst

    def refusal(self) -> TooMany | None:
        if self.active >= self.limit.concurrent:
            return TooMany(self.role, self.limit, "concurrency", None)
        if self.tokens < 1:
            return TooMany(self.role, self.limit, "rate", (1 - self.tokens) / self.limit.rate)
        return None


class Slot:
    """A running request's place in its key's limits; :meth:`release` (idempotent) frees it."""

    __slots__ = ("_key", "_quota")

    def __init__(self, quota: KeyQuota | None, key: _Key | None) -> None:
        self._quota, self._key = quota, key

    def release(self) -> None:
        quota, key = self._quota, self._key
        if quota is None or key is None:
            return
        self._quota = self._key = None
        with quota._lock:
            key.active -= 1


_UNLIMITED = Slot(None, None)
_NO_DIGEST = key_digest("")


class KeyQuota:
    """Rate and concurrency limits per API key (module docstring). ``limits`` maps a role to
    its limit (a role missing or None is not limited). Thread-safe."""

    def __init__(
        self,
        limits: Mapping[str, Limit | None] | None = None,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = dict(DEFAULT_LIMITS if limits is None else limits)
        self.max_keys = max_keys
        self.clock = clock
        self._keys: OrderedDict[str, _Key] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._keys)

    def acquire_known(self, key_id: str, digest: bytes) -> Slot | None:
        """Before authentication: for a key that authenticated before with this very secret
        (``digest`` of the whole presented key), its slot — or TooMany; for any other, None
        (authenticate, then :meth:`acquire`)."""
        now = self.clock()
        with self._lock:
            key = self._keys.get(key_id)
            known = hmac.compare_digest(key.digest if key is not None else _NO_DIGEST, digest)
            if key is None or not known:
                return None
            return self._take(key_id, key, now)

    def acquire(self, key_id: str, role: str, digest: bytes) -> Slot:
        """A slot for an authenticated request of ``key_id`` (role ``role``), or TooMany."""
        limit = self.limits.get(role)
        if limit is None:
            return _UNLIMITED
        now = self.clock()
        with self._lock:
            key = self._keys.get(key_id)
            if key is None:
                key = self._remember(key_id, role, limit, digest, now)
            return self._take(key_id, key, now)

    def _take(self, key_id: str, key: _Key, now: float) -> Slot:
        """A token and a slot of ``key``, or TooMany (the caller holds the lock)."""
        key.refill(now)
        self._keys.move_to_end(key_id)
        refusal = key.refusal()
        if refusal is not None:
            raise refusal
        key.tokens -= 1
        key.active += 1
        return Slot(self, key)

    def _remember(self, key_id: str, role: str, limit: Limit, digest: bytes, now: float) -> _Key:
        """A new entry for ``key_id``; first forget the oldest settled keys and, over the cap,
        the longest idle ones with nothing running (the caller holds the lock)."""
        over = len(self._keys) + 1 - self.max_keys
        drop: list[str] = []
        for old_id, old in self._keys.items():  # the longest idle first
            if old.active:
                if len(drop) < over:
                    continue
                break
            old.refill(now)
            if len(drop) < over or old.settled():
                drop.append(old_id)
            else:
                break
        for old_id in drop:
            del self._keys[old_id]
        key = self._keys[key_id] = _Key(role, limit, digest, now)
        return key


async def admit(attempt: Callable[[], T], patience: float = PATIENCE) -> T:
    """``attempt()`` (a quota check), tried again while it raises TooMany — after the time the
    next token needs, or 10 ms doubling for a slot — for at most ``patience`` seconds; then its
    TooMany. The waiting is in the event loop (no worker thread): a short burst over the limit
    is served a moment later instead of refused, and a client that ignores ``Retry-After`` and
    asks again at once can cost the server at most one cheap refusal per ``patience`` per
    connection, not one per round trip."""
    deadline = time.monotonic() + patience
    pause = 0.01
    while True:
        try:
            return attempt()
        except TooMany as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            await asyncio.sleep(min(left, pause if exc.ready_in is None else exc.ready_in))
            pause *= 2
