"""Dedup keys seen within a horizon, with bounded memory.

Keys are kept in arrival order with the Kafka timestamp of the batch that brought them; a key
leaves when the newest timestamp seen is more than the horizon past it, or when the set holds
``max_keys`` and room is needed (oldest first). Time is the records' Kafka timestamp, not the
wall clock, so rebuilding the set from the state changelog gives the same set every time.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["DedupSet"]


class DedupSet:
    __slots__ = ("_keys", "evicted", "horizon_ms", "max_keys", "newest_ms")

    def __init__(self, horizon_ms: int, max_keys: int) -> None:
        self.horizon_ms = horizon_ms
        self.max_keys = max_keys
        self._keys: dict[bytes, int] = {}
        self.newest_ms = 0
        self.evicted = 0  # keys dropped for room before their horizon ran out

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: bytes) -> bool:
        return key in self._keys

    def add_many(self, keys: Iterable[bytes], ts_ms: int) -> None:
        """Remember ``keys`` as seen at ``ts_ms``, then drop what fell out of the horizon."""
        store = self._keys
        # stored times never go down along insertion order, which lets _prune stop early
        ts = self.newest_ms = max(ts_ms, self.newest_ms)
        for k in keys:
            store[k] = ts
        self._prune()

    def _prune(self) -> None:
        store = self._keys
        cutoff = self.newest_ms - self.horizon_ms
        over = len(store) - self.max_keys
        if not store:
            return
        # dicts keep insertion order, and timestamps only grow along it (batches arrive in order)
        stale: list[bytes] = []
        for k, ts in store.items():
            if ts < cutoff or len(stale) < over:
                stale.append(k)
            else:
                break
        for k in stale:
            if store[k] >= cutoff:
                self.evicted += 1
            del store[k]
