"""Proxy audit records: CloudEvents 1.0, structured JSON, one per proxied Produce/Fetch.

Spec FORMATS.md §1. ``id`` + ``source`` identify the event (dedup key). Types other than
produce/fetch are ignored (and counted by the caller), never dead-lettered.
"""

from __future__ import annotations

from metering.decoders.common import Invalid, Limits, as_count, as_identity, as_time_ms, load_json
from metering.domain.events import CONSUME, PRODUCE, PROXY, UsageEvent, event_key

__all__ = ["decode"]

_DIRECTIONS = {"io.streamtoll.kafka.produce": PRODUCE, "io.streamtoll.kafka.fetch": CONSUME}
_RECORDS_LIMIT = 2**31


def decode(value: bytes, limits: Limits) -> UsageEvent | str:
    """One proxy audit record → a usage event, or the ignored type's name as a string."""
    doc = load_json(value)
    if type(doc) is not dict:
        raise Invalid("schema", "the record is not a JSON object")
    if doc.get("specversion") != "1.0":
        raise Invalid("schema", f"specversion must be \"1.0\", not {str(doc.get('specversion'))[:20]!r}")
    typ = doc.get("type")
    direction = _DIRECTIONS.get(typ) if type(typ) is str else None
    ev_id = as_identity(doc, "id", "", required=True)
    source = as_identity(doc, "source", "", required=True)
    occurred = as_time_ms(doc.get("time"), "time")
    if direction is None:
        if type(typ) is not str:
            raise Invalid("schema", "type is missing" if typ is None else "type must be a string")
        return typ[:80]
    data = doc.get("data")
    if type(data) is not dict:
        raise Invalid("schema", "data is missing" if data is None else "data must be a JSON object")
    principal = as_identity(doc, "subject", "", default="unknown")
    topic = as_identity(data, "topic", "data.", required=True)
    client_id = as_identity(data, "client_id", "data.")
    vcluster = as_identity(data, "virtual_cluster", "data.")
    partition = data.get("partition")
    if partition is not None and type(partition) is not int:
        raise Invalid("schema", "data.partition must be an integer")
    records = as_count(data, "records", "data.", _RECORDS_LIMIT)
    nbytes = as_count(data, "bytes", "data.", limits.max_event_bytes)
    limits.check_time(occurred)
    return UsageEvent(
        event_key(PROXY, source, ev_id),
        PROXY,
        occurred,
        principal,
        client_id,
        vcluster,
        topic,
        direction,
        nbytes,
        records,
        1,
        0,
    )
