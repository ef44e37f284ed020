"""Proxy audit records: CloudEvents 1.0, one per proxied Produce/Fetch.

Format: ``docs/formats.md`` (proxy audit). Structured content mode (the whole event as JSON in the
value, :func:`decode`) or binary content mode (attributes in ``ce_*`` headers, the value is
``data``, :func:`decode_binary`); both give the same event. ``id`` + ``source`` identify the
event (dedup key). Types other than produce/fetch are ignored (and counted by the caller), never
dead-lettered. ``data.outcome`` ``"denied"`` (a request the gateway's access denied) counts
``data.denied_requests`` denied requests and nothing else: no bytes, records or requests, so it is
never billed.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import orjson

from metering.decoders.common import (
    MAX_ID_LEN,
    Headers,
    Invalid,
    Limits,
    as_count,
    as_identity,
    as_time_ms,
    binary_event,
    load_json,
)
from metering.domain.events import CONSUME, PRODUCE, PROXY, UsageEvent, event_key

__all__ = ["decode", "decode_binary"]

_DIRECTIONS = {"io.streamtoll.kafka.produce": PRODUCE, "io.streamtoll.kafka.fetch": CONSUME}
_RECORDS_LIMIT = 2**31
_OUTCOMES = ("allowed", "denied")
_blake = hashlib.blake2b
_dumps = orjson.dumps
_new = tuple.__new__
_seconds: dict[str, int] = {}  # "YYYY-MM-DDTHH:MM:SS" (UTC) → epoch ms; events share seconds


def _second_ms(head: str) -> int | None:
    """ "YYYY-MM-DDTHH:MM:SS" in UTC → epoch ms, cached (events of a second share it)."""
    try:
        dt = datetime.fromisoformat(head + "+00:00")
    except ValueError:
        return None
    if len(_seconds) > 100_000:
        _seconds.clear()
    ms = _seconds[head] = int(dt.timestamp()) * 1000
    return ms


def decode(value: bytes, limits: Limits) -> UsageEvent | str:
    """One structured-mode proxy audit record → a usage event, or the ignored type's name."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return _decode_checked(load_json(value), limits)
    return _decode_doc(doc, limits)


def decode_binary(value: bytes, headers: Headers, limits: Limits) -> UsageEvent | str:
    """One binary-mode proxy audit record (``ce_*`` headers, the value is ``data``) → the same
    result its structured twin gives."""
    return _decode_doc(binary_event(value, headers), limits)


def _decode_doc(doc: Any, limits: Limits) -> UsageEvent | str:
    # Fast path for the well-formed record (the common case, hundreds of thousands a second):
    # every check of _decode_checked, inlined and stricter; anything unusual (a missing or
    # odd field, a long identifier) goes the careful way, which gives the same event or the
    # precise rejection.
    try:
        data = doc["data"]
        direction = _DIRECTIONS[doc["type"]]
        ev_id = doc["id"]
        source = doc["source"]
        principal = doc["subject"]
        t = doc["time"]
        topic = data["topic"]
        client_id = data.get("client_id", "")
        vcluster = data.get("virtual_cluster", "")
        records = data["records"]
        nbytes = data["bytes"]
        if (
            doc["specversion"] == "1.0"
            and type(ev_id) is str
            and type(source) is str
            and type(principal) is str
            and type(topic) is str
            and type(client_id) is str
            and type(vcluster) is str
            and type(records) is int
            and type(nbytes) is int
            and type(t) is str
            and ev_id
            and source
            and principal
            and topic
            and 0 <= records <= _RECORDS_LIMIT
            and 0 <= nbytes <= limits.max_event_bytes
            and type(data.get("partition", 0)) is int
            and data.get("outcome") is None
            and len(t) == 24
            and t[23] == "Z"
            and t[19] == "."
        ):
            ident = ev_id + source + principal + topic + client_id + vcluster
            head = t[:19]
            base = _seconds.get(head)
            if base is None:
                base = _second_ms(head)
            if base is not None and len(ident) <= MAX_ID_LEN and ident.isprintable() and t[20:23].isdigit():
                ms = base + int(t[20:23])
                if limits.now_ms - limits.max_lateness_ms <= ms <= limits.now_ms + limits.max_future_ms:
                    # tuple.__new__ skips NamedTuple's Python-level __new__ (a third of the cost)
                    return _new(
                        UsageEvent,
                        (
                            _blake(_dumps((PROXY, source, ev_id)), digest_size=16).digest(),
                            PROXY,
                            ms,
                            principal,
                            client_id,
                            vcluster,
                            topic,
                            direction,
                            nbytes,
                            records,
                            1,
                            0,
                            (),
                        ),
                    )
    except (KeyError, TypeError, AttributeError):
        pass
    return _decode_checked(doc, limits)


def _decode_checked(doc: object, limits: Limits) -> UsageEvent | str:
    if type(doc) is not dict:
        raise Invalid("schema", "the record is not a JSON object")
    if doc.get("specversion") != "1.0":
        raise Invalid("schema", f'specversion must be "1.0", not {str(doc.get("specversion"))[:20]!r}')
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
    partition = data.get("partition")  # not metered; an integer in any JSON spelling (3 or 3.0)
    if (
        partition is not None
        and type(partition) is not int
        and not (type(partition) is float and partition.is_integer())
    ):
        raise Invalid("schema", "data.partition must be an integer")
    outcome = data.get("outcome")
    if outcome is not None and outcome not in _OUTCOMES:
        raise Invalid("schema", 'data.outcome must be "allowed" or "denied"')
    records = as_count(data, "records", "data.", _RECORDS_LIMIT)
    nbytes = as_count(data, "bytes", "data.", limits.max_event_bytes)
    requests, denied = 1, 0
    if outcome == "denied":  # never billed: denied requests only, whatever records and bytes say
        denied = as_count(data, "denied_requests", "data.", _RECORDS_LIMIT)
        nbytes = records = requests = 0
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
        requests,
        denied,
    )
