"""Shared decoding helpers: JSON parsing with reason codes, typed field access, RFC 3339 times,
CloudEvents binary content mode.

Every helper raises :class:`Invalid` carrying a DLQ reason code and a human sentence; decoders
catch it once per record. Nothing here raises anything else for any input bytes or headers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from metering.domain.events import Rejection

__all__ = [
    "MAX_ID_LEN",
    "Headers",
    "Invalid",
    "Limits",
    "as_count",
    "as_identity",
    "as_time_ms",
    "binary_event",
    "is_binary",
    "load_json",
]

Headers = Sequence[tuple[str, bytes | None]]  # a Kafka record's headers, as confluent-kafka gives them

MAX_ID_LEN = 255
_BOM = b"\xef\xbb\xbf"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
# CloudEvents Kafka protocol binding, binary content mode: the context attributes streamtoll
# reads, each in its own header. (content-type, i.e. datacontenttype, is not read: the value
# must be JSON whatever it says, exactly as in structured mode.)
_CE_HEADERS = {
    "ce_specversion": "specversion",
    "ce_id": "id",
    "ce_source": "source",
    "ce_type": "type",
    "ce_time": "time",
    "ce_subject": "subject",
}


class Invalid(Exception):
    """A record cannot be metered; ``rejection`` says why (reason code + sentence)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.rejection = Rejection(reason, detail)


class Limits:
    """Plausibility limits applied while decoding (from settings). ``now_ms`` is the time events
    are judged against: the shard's stream time (see ``ShardState.scan``), never the wall clock."""

    __slots__ = ("max_event_bytes", "max_future_ms", "max_lateness_ms", "now_ms")

    def __init__(self, now_ms: int, max_lateness_ms: int, max_future_ms: int, max_event_bytes: int) -> None:
        self.now_ms = now_ms
        self.max_lateness_ms = max_lateness_ms
        self.max_future_ms = max_future_ms
        self.max_event_bytes = max_event_bytes

    def check_time(self, ms: int) -> None:
        if ms > self.now_ms + self.max_future_ms:
            raise Invalid(
                "future",
                f"event time is {(ms - self.now_ms) / 1000:.0f} s ahead of the stream time (newest Kafka timestamp)",
            )
        if ms < self.now_ms - self.max_lateness_ms:
            raise Invalid(
                "too_old",
                f"event time is {(self.now_ms - ms) / 86400000:.1f} days before the stream time (newest Kafka "
                "timestamp), past the lateness limit",
            )


def load_json(value: bytes) -> Any:
    """Parse a record value; a leading UTF-8 BOM is tolerated."""
    if value.startswith(_BOM):
        value = value[3:]
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            raise Invalid("not_utf8", "the record value is not valid UTF-8") from None
        raise Invalid("not_json", f"the record value is not valid JSON ({str(exc)[:120]})") from None


def is_binary(headers: Headers) -> bool:
    """A record in CloudEvents binary content mode: it has a ``ce_specversion`` header."""
    return any(h[0] == "ce_specversion" for h in headers)


def binary_event(value: bytes, headers: Headers) -> dict[str, Any]:
    """A binary-mode record as the structured event it carries: the attributes from the ``ce_*``
    headers, ``data`` from the value (an empty value: no ``data``).

    The structured decoders then read it, so an event gives the same usage event and dedup key
    in either mode. A ``ce_*`` header streamtoll reads that appears twice is a ``schema`` error
    (which id would be the event's?); a null header value counts as a missing attribute. The
    value is parsed first, so a record bad in both ways gets the reason its structured twin gets.
    """
    doc: dict[str, Any] = {}
    if value:
        doc["data"] = load_json(value)
    seen: set[str] = set()
    for name, raw in headers:
        attr = _CE_HEADERS.get(name)
        if attr is None:
            continue
        if name in seen:
            raise Invalid("schema", f"header {name} appears more than once")
        seen.add(name)
        if raw is None:
            continue
        try:
            doc[attr] = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Invalid("not_utf8", f"header {name} is not valid UTF-8") from None
        except AttributeError:  # not bytes: only a client bug or a test could hand that over
            raise Invalid("schema", f"header {name} is not a byte string") from None
    return doc


def as_count(obj: dict[str, Any], name: str, where: str, limit: int) -> int:
    """A required integer ≥ 0; JSON strings of digits and integral floats are accepted."""
    v = obj.get(name)
    if type(v) is int:
        n = v
    elif type(v) is str and v.isascii() and _digits(v).isdigit():
        if len(v) > 30:
            raise Invalid("too_large", f"{where}{name} has {len(v)} digits")
        n = int(_digits(v))
    elif type(v) is float and math.isfinite(v) and v.is_integer():
        n = int(v)
    elif type(v) is str and v.strip().startswith("-") and v.strip()[1:].isdigit():
        raise Invalid("negative", f"{where}{name} is negative ({v[:40]})")
    elif v is None:
        raise Invalid("schema", f"{where}{name} is missing")
    else:
        raise Invalid("schema", f"{where}{name} must be a non-negative integer, not {_show(v)}")
    if n < 0:
        raise Invalid("negative", f"{where}{name} is negative ({n})")
    if n > limit:
        raise Invalid("too_large", f"{where}{name} is {n}, over the limit of {limit}")
    return n


def _digits(v: str) -> str:
    """``v`` without surrounding (ASCII) whitespace and one leading ``+``."""
    v = v.strip()
    return v[1:] if v.startswith("+") else v


def as_identity(obj: dict[str, Any], name: str, where: str, default: str = "", required: bool = False) -> str:
    """An identity string (principal, client id, topic …): bounded length, no control bytes."""
    v = obj.get(name)
    if v is None or v == "":
        if required:
            raise Invalid("schema", f"{where}{name} is missing")
        return default
    if type(v) is not str:
        raise Invalid("schema", f"{where}{name} must be a string, not {_show(v)}")
    if len(v) > MAX_ID_LEN:
        raise Invalid("schema", f"{where}{name} is {len(v)} characters long, over {MAX_ID_LEN}")
    if not v.isprintable():
        raise Invalid("schema", f"{where}{name} contains control characters")
    return v


def as_time_ms(v: Any, where: str) -> int:
    """An RFC 3339 time with an offset → epoch milliseconds (UTC)."""
    if type(v) is not str:
        raise Invalid("schema", f"{where} is missing" if v is None else f"{where} must be an RFC 3339 string")
    if len(v) > 40:
        raise Invalid("schema", f"{where} is not an RFC 3339 time")
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        raise Invalid("schema", f"{where} {v!r} is not an RFC 3339 time") from None
    if dt.tzinfo is None:
        raise Invalid("schema", f"{where} {v!r} has no UTC offset")
    try:
        return (dt - _EPOCH) // _MS
    except (OverflowError, ValueError):
        raise Invalid("schema", f"{where} {v!r} is out of range") from None


def _show(v: Any) -> str:
    if isinstance(v, str):
        return f"the string {v[:40]!r}"
    return type(v).__name__
