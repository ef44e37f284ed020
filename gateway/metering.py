"""Metering at the wire: what a Produce or Fetch moved, per topic-partition, and the proxy audit
events that say so.

Counts come from record-batch headers (:func:`gateway.wire.count_batches`); record data is never
decompressed or decoded.

* **Produce**: records and record-batch bytes per topic-partition of the request, metered only
  for the partitions whose response says error 0. A request with ``acks=0`` gets no response:
  it is metered as sent, and its events say ``"acks": 0, "acknowledged": false``.
* **Fetch**: the whole batches of each partition in the response (a trailing partial batch is
  cut by the fetch size limit and fetched again, so it is left out). A fetch returns whole
  batches, so the first may hold records before the fetch offset that the client drops: the
  gateway meters what went over the wire, as a broker's byte-out metric does.

A request the account's access denied (:mod:`gateway.access`) is never metered: it gives one
*denied* event per request and denied topic (:func:`denied_events`: ``"outcome": "denied"``,
``denied_requests`` the partitions of that topic the request named, 0 records and bytes), which
the worker counts in the ``denied_requests`` quantity only.

One event per request and topic-partition, in the proxy audit format (CloudEvents 1.0,
structured JSON; README "Proxy audit records"), keyed by principal.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

from gateway.wire import batch_identity, count_batches

__all__ = [
    "CONSUME_TYPE",
    "PRODUCE_TYPE",
    "Counted",
    "RequestContext",
    "acknowledged",
    "audit_event",
    "denied_events",
    "fetch_counts",
    "produce_counts",
]

PRODUCE_TYPE = "io.streamtoll.kafka.produce"
CONSUME_TYPE = "io.streamtoll.kafka.fetch"


class Counted(NamedTuple):
    topic: str
    partition: int
    records: int
    bytes: int
    batch: tuple[int, int, int, int] | None = None  # a Produce batch's identity (wire.batch_identity)


class RequestContext(NamedTuple):
    """Who sent a request: what every event of it carries."""

    principal: str  # Type:name, e.g. User:alice (gateway.principals)
    client_id: str
    client_ip: str
    virtual_cluster: str
    api_version: int


def produce_counts(request: Any) -> list[Counted]:
    """Per topic-partition counts of a decoded Produce request (every partition, even empty)."""
    out = []
    for topic in request.topic_data:
        for part in topic.partition_data:
            c = count_batches(part.records)
            out.append(Counted(str(topic.name), int(part.index), c.records, c.bytes, batch_identity(part.records)))
    return out


DUPLICATE_SEQUENCE_NUMBER = 46


def acknowledged(response: Any) -> set[tuple[str, int]]:
    """The topic-partitions a decoded Produce response acknowledges: error code 0, or
    ``DUPLICATE_SEQUENCE_NUMBER`` — the broker already holds that idempotent batch and the
    producer counts it as delivered (some brokers answer a retried batch so, Apache Kafka answers
    0). Its first write may never have been metered (the gateway was killed before that answer
    came back); if it was, the event has the same batch-derived id and the worker drops the copy."""
    return {
        (str(t.name), int(p.index))
        for t in response.responses
        for p in t.partition_responses
        if p.error_code in (0, DUPLICATE_SEQUENCE_NUMBER)
    }


def fetch_counts(response: Any) -> Iterator[Counted]:
    """Per topic-partition counts of the whole batches in a decoded Fetch response (partitions
    with an error or no records give none)."""
    for topic in response.responses:
        for part in topic.partitions:
            if part.error_code != 0 or not part.records:
                continue
            c = count_batches(part.records)
            if c.batches:
                yield Counted(str(topic.topic), int(part.partition_index), c.records, c.bytes)


def _time(now: datetime) -> str:
    # the exact shape the worker's fast path reads: 2026-11-03T10:15:00.250Z
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


_BATCH_IDS = uuid.UUID("6f1c2b1e-58a4-4d8e-9a8e-3c0d1f5b7a21")


def _batch_id(ctx: RequestContext, c: Counted) -> uuid.UUID:
    name = orjson.dumps([ctx.virtual_cluster, ctx.principal, c.topic, c.partition, c.batch]).decode()
    return uuid.uuid5(_BATCH_IDS, name)


def audit_event(
    kind: str,
    source: str,
    ctx: RequestContext,
    counted: Counted,
    now: datetime,
    extra: dict[str, Any] | None = None,
) -> tuple[bytes, bytes]:
    """(key, value) of one proxy audit record. The id is fixed here, once: a retried write of the
    same record (or one sent again from the journal) carries the same id, so the worker's dedup
    drops the copy. For a batch an idempotent or transactional producer wrote, the id is derived
    from the batch's identity (producer id, epoch, base sequence, record count), so a batch the
    client sends again — it never saw the answer, e.g. the gateway was killed after journaling
    it — is the same event; otherwise it is a random UUID."""
    data: dict[str, Any] = {
        "client_id": ctx.client_id,
        "client_ip": ctx.client_ip,
        "virtual_cluster": ctx.virtual_cluster,
        "topic": counted.topic,
        "partition": counted.partition,
        "records": counted.records,
        "bytes": counted.bytes,
        "api_version": ctx.api_version,
    }
    if counted.partition < 0:  # a denied topic: the event is per topic
        del data["partition"]
    if extra:
        data.update(extra)
    event = {
        "specversion": "1.0",
        "id": str(_batch_id(ctx, counted) if counted.batch is not None else uuid.uuid4()),
        "source": source,
        "type": kind,
        "time": _time(now),
        "subject": ctx.principal,
        "datacontenttype": "application/json",
        "data": data,
    }
    return ctx.principal.encode(), orjson.dumps(event)


def events(
    kind: str, source: str, ctx: RequestContext, counted: Iterable[Counted], now: datetime, **extra: Any
) -> list[tuple[bytes, bytes]]:
    return [audit_event(kind, source, ctx, c, now, extra or None) for c in counted]


TOPIC_AUTHORIZATION_FAILED = 29


def denied_events(
    kind: str, source: str, ctx: RequestContext, denied: Iterable[Any], now: datetime
) -> list[tuple[bytes, bytes]]:
    """Events of a request's denied topics (``gateway.access.Denied``: name, partitions): one per
    topic, ``"outcome": "denied"``, ``denied_requests`` = its partitions (what the request would
    have counted as requests had it been allowed), no records or bytes. Each has a random id."""
    return [
        audit_event(
            kind,
            source,
            ctx,
            Counted(d.name, -1, 0, 0),
            now,
            {"outcome": "denied", "denied_requests": d.partitions, "error_code": TOPIC_AUTHORIZATION_FAILED},
        )
        for d in denied
    ]
