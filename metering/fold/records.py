"""The records the fold passes around: what a shard needs of a Kafka record (:class:`InRecord`,
and :class:`Record`, a plain one), the wrapper of a record whose headers cannot be read, what a
batch's fold produces (:class:`BatchResult`) and what its scan hands to the state step
(:class:`Scan`). Both scans — :meth:`metering.fold.shard.ShardState.scan` (the reference) and
:func:`metering.fold.batch.scan` (the fast path) — build them, so they live below both."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from metering.decoders.common import Headers
from metering.domain.events import Rejection

__all__ = ["BatchResult", "HeadersUnreadable", "InRecord", "Record", "Scan", "WindowKey"]

# (source, principal, client_id, virtual_cluster, topic, direction)
WindowKey = tuple[str, str, str, str, str, str]


class InRecord(Protocol):
    """What a shard needs of a Kafka record. confluent-kafka's ``Message`` has exactly these
    methods, so the engine hands its messages over as they are (no copy per record)."""

    def offset(self) -> int: ...

    def timestamp(self) -> tuple[int, int]: ...

    def value(self) -> bytes | None: ...

    def headers(self) -> list[tuple[str, bytes | None]] | None: ...


class Record:
    """A plain :class:`InRecord` (tests, replays from files)."""

    __slots__ = ("_headers", "_offset", "_ts", "_value")

    def __init__(self, offset: int, timestamp_ms: int, value: bytes | None, headers: Headers | None = None) -> None:
        self._offset, self._ts, self._value = offset, timestamp_ms, value
        self._headers = None if headers is None else list(headers)

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return (1, self._ts)

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        return self._headers


class HeadersUnreadable:
    """A record whose headers cannot be read: a header name that is not UTF-8 (a Kafka client
    would never write one, a raw producer can). confluent-kafka raises on the first
    ``headers()`` call and afterwards returns a list holding a NULL pointer, which crashes the
    interpreter when touched, so the record travels on to the DLQ behind this wrapper, whose
    ``headers()`` is None."""

    __slots__ = ("_rec",)

    def __init__(self, rec: InRecord) -> None:
        self._rec = rec

    def offset(self) -> int:
        return self._rec.offset()

    def timestamp(self) -> tuple[int, int]:
        return self._rec.timestamp()

    def value(self) -> bytes | None:
        return self._rec.value()

    def key(self) -> bytes | None:
        return self._rec.key()  # type: ignore[attr-defined, no-any-return]

    def headers(self) -> None:
        return None


@dataclass
class BatchResult:
    next_offset: int = -1
    rejected: list[tuple[InRecord, Rejection]] = field(default_factory=list)
    hours: dict[tuple[WindowKey, int], list[int]] = field(default_factory=dict)
    # (source, principal, client_id, virtual_cluster, topic, direction, minute_start) → sums
    minutes: dict[tuple[str, str, str, str, str, str, int], list[int]] = field(default_factory=dict)
    changelog: dict[str, Any] = field(default_factory=dict)
    counted: int = 0
    duplicates: int = 0
    tombstones: int = 0
    ignored: int = 0
    counter_resets: int = 0


@dataclass
class Scan:
    """What a batch's scan hands to the state step (besides what it put in the BatchResult)."""

    new_keys: list[bytes]  # dedup keys of the events counted, in record order
    max_ts: int  # the batch's newest Kafka timestamp
    stream_ms: int  # the shard's stream time after the batch
    changed_series: set[tuple[str, ...]]  # counter series the batch touched
