"""Amendments: corrections of metered usage, stored beside it, never over it.

What the sink wrote from the usage windows topic (``usage_shard_rows``) is never edited. A
correction is an **amendment** (who, when, why, the range, the amounts it moved) and its
**amendment rows**: per usage key (source, principal, client id, virtual cluster, topic,
direction) and hour, the *difference* it makes. So, for every key and hour, exactly::

    usage = metered (the shard rows added up) + the amendment rows added up

and every read of usage (billing runs, previews, statements, usage reports, the live base) goes
through the usage repository, which adds the amendment rows in (one place:
``billing.adapters.repositories.usage``; the daily table is kept exact by the same trigger as
for the shard rows).

This module holds the pure rules:

* :func:`parse_corrections`: the rows of an import file — the shape ``streamtoll usage`` exports
  when grouped by every key and ``hour`` (or ``day``): ``source, principal, client_id,
  virtual_cluster, topic, direction, hour|day, bytes, records, requests, denied_requests``
  (an ``account`` column is allowed and ignored: attribution happens when usage is read) —
  every row validated, every problem reported at once (:class:`~billing.errors.AmendmentError`).
* :func:`amendment_deltas`: what an import of corrected rows for ``[start, end)`` stores. The file
  *replaces* the usage of each key it names in the range: each of that key's hours in the range
  becomes the file's quantity (0 when the file has no row for it). A daily row is the day's
  quantity, put in the day's first hour (the day's other hours of that key become 0), so no
  hour is ever negative. Keys the file does not name are left as they are. The stored rows are
  ``corrected − current`` (current = metered + earlier amendments), so importing the same file
  again finds nothing to change: an import is idempotent, and nothing is written.

Decided where the issue is silent: usage the sink writes for the range *after* an import adds to
the corrected figure (the difference was taken against the usage as it was); import the
corrected file again to replace it once more.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

from billing.errors import AmendmentError

__all__ = [
    "COLUMNS",
    "QUANTITIES",
    "Correction",
    "Key",
    "Quantities",
    "amendment_deltas",
    "parse_corrections",
]

SOURCES = ("proxy", "broker_metrics", "audit_log")
DIRECTIONS = ("produce", "consume")
KEY_FIELDS = ("source", "principal", "client_id", "virtual_cluster", "topic", "direction")
QUANTITIES = ("bytes", "records", "requests", "denied_requests")
COLUMNS = (*KEY_FIELDS, "hour", "day", *QUANTITIES, "account")

Key = tuple[str, str, str, str, str, str]
"""A usage key: (source, principal, client_id, virtual_cluster, topic, direction)."""

Quantities = tuple[int, int, int, int]
"""(bytes, records, requests, denied_requests)."""

ZERO: Quantities = (0, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class Correction:
    """One corrected row: the usage of ``key`` in the hour (or day) starting at ``hour``."""

    key: Key
    hour: datetime
    quantities: Quantities


def _utc_midnight(d: date) -> datetime:
    return datetime.combine(d, time(), UTC)


def _bucket(raw: Mapping[str, Any], daily: bool) -> datetime:
    """The row's hour (or day) as a UTC datetime; ValueError with a sentence when it is not one."""
    if daily:
        text = str(raw.get("day", "")).strip()
        try:
            return _utc_midnight(date.fromisoformat(text))
        except ValueError:
            raise ValueError(f"day {text!r} is not a date like 2026-11-03") from None
    text = str(raw.get("hour", "")).strip()
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"hour {text!r} is not a time like 2026-11-03T10:00:00Z") from None
    if value.tzinfo is None:
        raise ValueError(f"hour {text!r} has no time zone (write it in UTC: 2026-11-03T10:00:00Z)")
    value = value.astimezone(UTC)
    if (value.minute, value.second, value.microsecond) != (0, 0, 0):
        raise ValueError(f"hour {text!r} is not the start of an hour")
    return value


def _quantity(raw: Mapping[str, Any], name: str) -> int:
    value = raw.get(name)
    if value is None or value == "":
        raise ValueError(f"{name} is missing")
    if isinstance(value, bool | float):
        raise ValueError(f"{name} {value!r} is not a whole number")
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip()
        if not text.isascii() or not text.isdigit():
            raise ValueError(f"{name} {value!r} is not a whole number of 0 or more")
        number = int(text)
    if number < 0:
        raise ValueError(f"{name} {value!r} is negative")
    return number


def parse_corrections(records: Sequence[Mapping[str, Any]], start: datetime, end: datetime) -> list[Correction]:
    """The corrected rows of an import for ``[start, end)``, each checked; every problem of every
    row is reported at once (:class:`~billing.errors.AmendmentError`), one sentence each, with
    the row's number (1 = the first row after a CSV's header)."""
    problems: list[str] = []
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if end <= start:
        problems.append("the range is empty: --to must be after --from")
    if not records:
        problems.append("the file has no rows")
    has_hour = [bool(str(r.get("hour") or "").strip()) for r in records]
    daily = not any(has_hour)
    if any(has_hour) and not all(has_hour):
        problems.append("the file mixes hourly rows (with an hour) and daily rows (a day only): use one or the other")
    if records and daily and not (start.time() == end.time() == time()):
        problems.append("daily rows need a range of whole days: --from and --to at midnight UTC")
    if records and not daily and (start.minute, start.second, end.minute, end.second) != (0, 0, 0, 0):
        problems.append("--from and --to must be on the hour")
    out: list[Correction] = []
    seen: dict[tuple[Key, datetime], int] = {}
    for n, raw in enumerate(records, 1):
        row: list[str] = []
        unknown = sorted(str(k) for k in raw if k not in COLUMNS)
        if unknown:
            row.append(f"unknown column(s) {', '.join(unknown)}")
        fields: dict[str, str] = {}
        for name in KEY_FIELDS:
            value = raw.get(name)
            if value is None:
                row.append(f"{name} is missing")
            elif not isinstance(value, str):
                row.append(f"{name} {value!r} is not text")
            else:
                fields[name] = value
        if "source" in fields and fields["source"] not in SOURCES:
            row.append(f"source {fields['source']!r} is not one of {', '.join(SOURCES)}")
        if "direction" in fields and fields["direction"] not in DIRECTIONS:
            row.append(f"direction {fields['direction']!r} is not produce or consume")
        if fields.get("topic") == "":
            row.append("topic is empty")
        quantities: list[int] = []
        for name in QUANTITIES:
            try:
                quantities.append(_quantity(raw, name))
            except ValueError as exc:
                row.append(str(exc))
        bucket: datetime | None = None
        try:
            bucket = _bucket(raw, daily or not has_hour[n - 1])
        except ValueError as exc:
            row.append(str(exc))
        if bucket is not None and not start <= bucket < end:
            row.append(f"{'day' if daily else 'hour'} {bucket.isoformat().replace('+00:00', 'Z')} is outside the range")
        if not row and bucket is not None:
            key: Key = tuple(fields[f] for f in KEY_FIELDS)  # type: ignore[assignment]
            if (key, bucket) in seen:
                row.append(f"the same usage key and {'day' if daily else 'hour'} as row {seen[(key, bucket)]}")
            else:
                seen[(key, bucket)] = n
                out.append(Correction(key, bucket, (quantities[0], quantities[1], quantities[2], quantities[3])))
        problems.extend(f"row {n}: {p}" for p in row)
    if problems:
        raise AmendmentError(problems)
    return out


def amendment_deltas(
    corrections: Iterable[Correction], current: Mapping[tuple[Key, datetime], Quantities], every_key: bool = False
) -> dict[tuple[Key, datetime], Quantities]:
    """What to store so that the usage of every key the corrections name becomes theirs:
    ``corrected − current`` per (key, hour), non-zero ones only. ``current``: the usage now
    (metered + earlier amendments) per key and hour in the import's range — of every key, the
    ones the corrections do not name are left alone (with ``every_key``, as for a re-meter, the
    corrections are the whole range: every key they do not name becomes 0). A key's hours that
    ``current`` has and the corrections do not become 0 (a daily correction sits in the day's
    first hour)."""
    corrected: dict[tuple[Key, datetime], Quantities] = {}
    for c in corrections:
        corrected[(c.key, c.hour)] = c.quantities
    named = {key for key, _ in corrected}
    out: dict[tuple[Key, datetime], Quantities] = {}
    for slot in sorted(set(corrected) | {s for s in current if every_key or s[0] in named}):
        after, before = corrected.get(slot, ZERO), current.get(slot, ZERO)
        delta: Quantities = (after[0] - before[0], after[1] - before[1], after[2] - before[2], after[3] - before[3])
        if delta != ZERO:
            out[slot] = delta
    return out
