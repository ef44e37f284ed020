"""The records metering publishes, as other programs read them (``docs/formats.md``; JSON Schemas
in ``docs/schemas/``, kept equal to the fields declared here by ``tests/unit/test_formats.py``).

Standard library only: billing imports this module and nothing else from metering.

* :class:`UsageWindow` — one record per changed hourly window key *and shard* on
  ``streamtoll.usage-windows.v1``, carrying the full totals so far. ``version`` only grows for a
  given (key, shard); a consumer upserts by (key, shard) and ignores a record whose version is
  not newer, then adds the shards of a key up. Replays and reordering can never lower or double
  a total.
* :class:`UsageMinute` — a partial sum of one batch for one (key, minute) on
  ``streamtoll.usage-minutes.v1`` for the live views; ``(shard, offset)`` makes folding it
  idempotent (:func:`apply_minute`, the one fold every live view uses).
* :func:`dlq_record` — what a rejected input becomes on ``streamtoll.dlq.v1`` (:class:`DlqRecord`),
  with one of the :data:`DLQ_REASONS`.

Each record's shape is written here once: the worker publishes what :func:`window_record`,
:func:`minute_record` and :func:`dlq_record` build (Kafka key and value as JSON-ready objects, in
the fields' declared order; the worker encodes them with orjson), and readers parse with
``UsageWindow.from_json`` / ``UsageMinute.from_json``.
"""

from __future__ import annotations

import base64
import builtins
import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypedDict, TypeVar

__all__ = [
    "DLQ_REASONS",
    "DLQ_VALUE_LIMIT",
    "SOURCES",
    "DlqRecord",
    "DlqSource",
    "DlqTruncation",
    "LiveTotal",
    "UsageMinute",
    "UsageWindow",
    "apply_minute",
    "dlq_record",
    "empty_live",
    "iso_ms",
    "minute_record",
    "window_record",
]

SOURCES = ("proxy", "broker_metrics", "audit_log")
HOUR_MS = 3_600_000  # a usage window is an hour
# A DLQ record's value past this size is cut (and hashed): see dlq_record
DLQ_VALUE_LIMIT = 8 * 1024 * 1024

# Every reason a record (or one OTLP data point) is dead-lettered for, and what it means.
DLQ_REASONS: dict[str, str] = {
    "not_json": "the value (or, in CloudEvents binary mode, the data) is not valid JSON",
    "not_utf8": "the value, a header name, or a CloudEvents header streamtoll reads is not valid UTF-8",
    "schema": "a required field is missing, a field has the wrong type or form, or an identifier is too long",
    "negative": "a count (bytes, records, a counter value) is negative",
    "too_large": "a count is over its limit",
    "future": "the event time is further ahead of the partition's stream time than the allowed skew",
    "too_old": "the event time is older than the lateness limit",
    "counter_implausible": "a counter value or delta is NaN, infinite, over 2^63, or faster than the plausible rate",
}


@functools.lru_cache(maxsize=8192)
def iso_ms(ms: int) -> str:
    """Epoch milliseconds → RFC 3339 UTC with a ``Z``."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class UsageWindow:
    window_start: str
    window_end: str
    source: str
    account: str | None
    principal: str
    client_id: str
    virtual_cluster: str
    topic: str
    direction: str
    bytes: int
    records: int
    requests: int
    denied_requests: int
    version: int
    shard: str

    @classmethod
    def from_json(cls, raw: builtins.bytes | str) -> UsageWindow:
        """A usage window record as published. Raises ValueError (and nothing else for bytes or
        str) when ``raw`` is not UTF-8 JSON, not a JSON object, or lacks one of the fields; fields
        it does not know are ignored (a ``.v1`` topic may gain some). Values are taken as they
        are: what metering publishes has the declared types."""
        return cls(**_declared(cls, raw))


@dataclass(frozen=True)
class UsageMinute:
    minute_start: str
    minute_epoch_s: int
    source: str
    principal: str
    client_id: str
    virtual_cluster: str
    topic: str
    direction: str
    bytes: int
    records: int
    requests: int
    denied_requests: int
    shard: str
    offset: int

    @classmethod
    def from_json(cls, raw: builtins.bytes | str) -> UsageMinute:
        """A usage minute record as published; raises as :meth:`UsageWindow.from_json` does."""
        return cls(**_declared(cls, raw))


_Record = TypeVar("_Record", UsageWindow, UsageMinute)


def _declared(cls: type[_Record], raw: builtins.bytes | str) -> dict[str, Any]:
    """The declared fields of ``cls`` from a JSON record (see :meth:`UsageWindow.from_json`)."""
    doc = json.loads(raw)  # JSONDecodeError, UnicodeDecodeError: both ValueErrors
    if type(doc) is not dict:
        raise ValueError(f"a {cls.__name__} record is a JSON object, not {type(doc).__name__}")
    names = cls.__dataclass_fields__
    missing = [k for k in names if k not in doc]
    if missing:
        raise ValueError(f"a {cls.__name__} record lacks {', '.join(missing)}")
    return {k: doc[k] for k in names}


# The published records, built in one place. Called once per changed window and minute (the
# worker's publish loop is a fifth of its time): a dict literal, no dataclass instance, and the
# Kafka key and value from one call.


def window_record(
    key: tuple[str, str, str, str, str, str],
    start_ms: int,
    totals: Sequence[int],
    version: int,
    shard: str,
) -> tuple[tuple[str | int, ...], dict[str, Any]]:
    """A usage window as published: (Kafka key, value), JSON-ready. ``key``: (source, principal,
    client_id, virtual_cluster, topic, direction); ``totals``: (bytes, records, requests,
    denied_requests), the shard's full totals so far. The value has :class:`UsageWindow`'s fields
    in their order (``account`` null: billing attributes); the Kafka key is the window key, the
    window's start in epoch ms and the shard (``docs/formats.md``)."""
    source, principal, client_id, virtual_cluster, topic, direction = key
    b, r, q, d = totals
    return (*key, start_ms, shard), {
        "window_start": iso_ms(start_ms),
        "window_end": iso_ms(start_ms + HOUR_MS),
        "source": source,
        "account": None,
        "principal": principal,
        "client_id": client_id,
        "virtual_cluster": virtual_cluster,
        "topic": topic,
        "direction": direction,
        "bytes": b,
        "records": r,
        "requests": q,
        "denied_requests": d,
        "version": version,
        "shard": shard,
    }


def minute_record(
    key: tuple[str, str, str, str, str, str, int],
    totals: Sequence[int],
    shard: str,
    offset: int,
) -> tuple[tuple[str | int, ...], dict[str, Any]]:
    """A usage minute as published: (Kafka key, value), JSON-ready. ``key``: (source, principal,
    client_id, virtual_cluster, topic, direction, minute start in epoch ms), which is also the
    Kafka key; ``totals``: what the batch added (bytes, records, requests, denied_requests);
    ``offset``: the shard's input offset after the batch. The value has :class:`UsageMinute`'s
    fields in their order."""
    source, principal, client_id, virtual_cluster, topic, direction, start_ms = key
    b, r, q, d = totals
    return key, {
        "minute_start": iso_ms(start_ms),
        "minute_epoch_s": start_ms // 1000,
        "source": source,
        "principal": principal,
        "client_id": client_id,
        "virtual_cluster": virtual_cluster,
        "topic": topic,
        "direction": direction,
        "bytes": b,
        "records": r,
        "requests": q,
        "denied_requests": d,
        "shard": shard,
        "offset": offset,
    }


LiveTotal = dict[str, Any]  # {"bytes", "records", "requests", "denied_requests", "applied": {shard: offset}}


def empty_live() -> LiveTotal:
    return {"bytes": 0, "records": 0, "requests": 0, "denied_requests": 0, "applied": {}}


def apply_minute(current: LiveTotal | None, partial: dict[str, Any]) -> LiveTotal | None:
    """``current`` with the usage minute ``partial`` applied, or None when it was applied before.

    A live total remembers, per shard, the highest batch offset it has applied, so a partial
    delivered twice (at-least-once consumption, a rebalance, a restart) is applied once. Value
    and watermark are one value, so they travel in one changelog record of whatever holds them.
    """
    base = current if current is not None else empty_live()
    shard, offset = partial["shard"], int(partial["offset"])
    if offset <= base["applied"].get(shard, -1):
        return None
    return {
        "bytes": base["bytes"] + int(partial["bytes"]),
        "records": base["records"] + int(partial["records"]),
        "requests": base["requests"] + int(partial["requests"]),
        "denied_requests": base["denied_requests"] + int(partial["denied_requests"]),
        "applied": {**base["applied"], shard: offset},
    }


class DlqSource(TypedDict):
    """Where the rejected record is: its input topic, partition, offset and Kafka timestamp (ms)."""

    topic: str
    partition: int
    offset: int
    timestamp: int


class DlqTruncation(TypedDict):
    """A value over the DLQ limit is cut; its full size and SHA-256 (hex) say what it was."""

    size: int
    sha256: str


class _DlqRecordRequired(TypedDict):
    reason: str
    detail: str
    source: DlqSource
    key_b64: str | None
    value_b64: str | None
    headers: list[list[str | None]]
    received_at: str


# (total=False rather than NotRequired[...]: with postponed annotations Python 3.11 would
# count a NotRequired key among __required_keys__)
class DlqRecord(_DlqRecordRequired, total=False):
    """One record on the DLQ topic: why, where from, and the original key, value and headers."""

    value_truncated: DlqTruncation


def dlq_record(
    reason: str,
    detail: str,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes | None]] | None,
    received_at: str,
) -> DlqRecord:
    """A rejected input record as published on the DLQ (the Kafka key is the record's own key).
    A value over :data:`DLQ_VALUE_LIMIT` is cut there and ``value_truncated`` says what it was:
    the record must stay publishable whatever its input (base64 adds a third)."""

    def b64(b: bytes | None) -> str | None:
        return None if b is None else base64.b64encode(b).decode("ascii")

    limit = DLQ_VALUE_LIMIT
    cut = value is not None and len(value) > limit
    doc: DlqRecord = {
        "reason": reason,
        "detail": detail,
        "source": {"topic": topic, "partition": partition, "offset": offset, "timestamp": timestamp_ms},
        "key_b64": b64(key),
        "value_b64": b64(value[:limit] if cut and value is not None else value),
        "headers": [[name, b64(v)] for name, v in (headers or [])],
        "received_at": received_at,
    }
    if cut and value is not None:
        doc["value_truncated"] = {"size": len(value), "sha256": hashlib.sha256(value).hexdigest()}
    return doc
