"""The metering state of one input partition (a *shard*) and the pure step that folds a batch.

A shard owns, for its input partition: the dedup keys within the horizon, the cumulative
counter series (broker metrics), and the hourly window totals that can still change (up to the
lateness limit). :meth:`ShardState.fold` turns a batch of records into

* DLQ rejections (with the record they came from),
* full-total snapshots of every hourly window the batch changed (``version`` = the input offset
  after the batch, so it only grows per window key and shard),
* per-minute partial sums of the batch (for the live views),
* a changelog entry that, replayed in order, rebuilds this state exactly.

Totals are kept per shard on purpose: the usage windows topic carries one total per window key
*and shard*; billing adds the shards up. Nothing here talks to Kafka or reads the wall clock
(the clock comes in through ``Limits``).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from metering.decoders import confluent_audit, otlp, proxy
from metering.decoders.common import Headers, Invalid, Limits, is_binary
from metering.domain import counters
from metering.domain.dedup import DedupSet
from metering.domain.events import (
    BROKER_METRICS,
    FLAG_COUNTER_RESET,
    PROXY,
    Rejection,
    UsageEvent,
    event_key,
)

__all__ = ["BatchResult", "HeadersUnreadable", "InRecord", "Record", "ShardState", "WindowKey"]

HOUR_MS = 3_600_000
MINUTE_MS = 60_000

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
class ShardConfig:
    source_kind: str
    dedup_horizon_ms: int
    dedup_max_keys: int
    max_lateness_ms: int
    meter_since_ns: int | None
    counter_max_rate: float


class ShardState:
    def __init__(self, name: str, config: ShardConfig) -> None:
        self.name = name
        self.config = config
        self.dedup = DedupSet(config.dedup_horizon_ms, config.dedup_max_keys)
        self.counters: counters.CounterState = {}
        self.hours: dict[tuple[WindowKey, int], list[int]] = {}
        self.next_offset = -1  # input offset after the last folded record
        self.snapshot_seen = False  # while restoring: a full snapshot was replayed

    # -- the hot step ------------------------------------------------------------------------

    def fold(self, records: Sequence[InRecord], limits: Limits) -> BatchResult:
        """Fold one batch (records of this shard, in offset order) into the state."""
        out = BatchResult()
        kind = self.config.source_kind
        dedup_keys = self.dedup._keys
        seen_now: set[bytes] = set()
        new_keys: list[bytes] = []
        minutes = out.minutes
        rejected = out.rejected
        events: list[UsageEvent] = []
        max_ts = 0
        changed_series: set[tuple[str, ...]] = set()
        decode: Callable[[bytes, Limits], UsageEvent | str] = proxy.decode if kind == PROXY else confluent_audit.decode
        decode_binary: Callable[[bytes, Headers, Limits], UsageEvent | str] = (
            proxy.decode_binary if kind == PROXY else confluent_audit.decode_binary
        )
        otlp_input = kind == BROKER_METRICS

        for rec in records:
            value = rec.value()
            ts = rec.timestamp()[1]
            if ts > max_ts:
                max_ts = ts
            if value is None:
                out.tombstones += 1
                continue
            try:
                if otlp_input:
                    events.clear()
                    self._fold_samples(rec, otlp.decode(value, limits), events, changed_series, out)
                    got: UsageEvent | str | None = None
                else:
                    # CloudEvents binary content mode is recognised by its ce_specversion header;
                    # a record without headers (the usual structured one) costs one call here.
                    try:
                        headers = rec.headers()
                    except Exception:
                        rec = HeadersUnreadable(rec)
                        raise Invalid("not_utf8", "a header name is not valid UTF-8 (no header can be read)") from None
                    if headers and is_binary(headers):
                        got = decode_binary(value, headers, limits)
                    else:
                        got = decode(value, limits)
            except Invalid as exc:
                rejected.append((rec, exc.rejection))
                continue
            except Exception as exc:  # a decoder bug must not stop metering; the record is kept
                rejected.append((rec, Rejection("schema", f"undecodable record ({type(exc).__name__})")))
                continue
            if got is not None:
                if type(got) is str:
                    out.ignored += 1
                    continue
                events.append(got)  # type: ignore[arg-type]
            for ev in events:
                key = ev[0]
                if key in dedup_keys or key in seen_now:
                    out.duplicates += 1
                    continue
                seen_now.add(key)
                new_keys.append(key)
                t = ev[2]
                mk = (ev[1], ev[3], ev[4], ev[5], ev[6], ev[7], t - t % MINUTE_MS)
                m = minutes.get(mk)
                if m is None:
                    minutes[mk] = [ev[8], ev[9], ev[10], ev[11]]
                else:
                    m[0] += ev[8]
                    m[1] += ev[9]
                    m[2] += ev[10]
                    m[3] += ev[11]
            if got is not None:
                events.clear()
        out.counted = len(new_keys)
        if records:
            out.next_offset = records[-1].offset() + 1
        else:
            return out
        self.next_offset = out.next_offset
        if new_keys:
            self.dedup.add_many(new_keys, max_ts)
        hours = self.hours
        changed: dict[tuple[WindowKey, int], list[int]] = {}
        for mk, (b, r, q, d) in minutes.items():
            hk = (mk[:6], mk[6] - mk[6] % HOUR_MS)
            h = hours.get(hk)
            if h is None:
                h = hours[hk] = [0, 0, 0, 0]
            h[0] += b
            h[1] += r
            h[2] += q
            h[3] += d
            changed[hk] = h
        cutoff = limits.now_ms - self.config.max_lateness_ms - HOUR_MS
        for hk in [hk for hk in hours if hk[1] < cutoff]:
            del hours[hk]
            changed.pop(hk, None)
        out.hours = changed
        out.changelog = {
            "v": 1,
            "shard": self.name,
            "kind": "delta",
            "offset": out.next_offset,
            "dedup_ts": self.dedup.newest_ms,
            "dedup": base64.b64encode(b"".join(new_keys)).decode("ascii"),
            "counters": [[list(s), *self.counters[s]] for s in changed_series if s in self.counters],
            "hours": [[*hk[0], hk[1], *v] for hk, v in changed.items()],
        }
        return out

    def _fold_samples(
        self,
        rec: InRecord,
        items: list[otlp.Sample | Rejection],
        events: list[UsageEvent],
        changed_series: set[tuple[str, ...]],
        out: BatchResult,
    ) -> None:
        """Apply one OTLP record's samples: all of them or, if anything raises, none.

        The samples advance an overlay holding the series they touch (copied from
        ``self.counters`` on first touch), and the record's events, rejections and resets are
        staged; all of it reaches the state and ``out`` only once the last sample went through.
        An unexpected exception on any sample (a bug: nothing here raises by design) leaves the
        counters as they were before the record, so the record is dead-lettered whole (``fold``,
        reason ``schema``) and a re-delivery of its points counts their full deltas. A point the
        rules reject is not an exception: it is dead-lettered alone and the other points count.

        Only OTLP records can have a partial effect: a proxy or audit record decodes to one event
        (or none) without touching the state, and ``fold`` adds it only after the decode returned.
        """
        base = self.counters
        overlay: counters.CounterState = {}
        staged: list[UsageEvent] = []
        rejected: list[tuple[InRecord, Rejection]] = []
        touched: list[tuple[str, ...]] = []
        resets = 0
        for item in items:
            if isinstance(item, Rejection):
                rejected.append((rec, item))
                continue
            series = item.series
            if series not in overlay and series in base:
                overlay[series] = base[series]  # an immutable SeriesState: shared, not copied
            got = self._counter_event(item, overlay)
            if isinstance(got, Rejection):
                rejected.append((rec, got))
                continue
            touched.append(series)
            if got is not None:
                if FLAG_COUNTER_RESET in got.flags:
                    resets += 1
                staged.append(got)
        # the whole record went through: its effect lands at once
        base.update(overlay)
        changed_series.update(touched)
        out.rejected.extend(rejected)
        out.counter_resets += resets
        events.extend(staged)

    def _counter_event(self, s: otlp.Sample, state: counters.CounterState) -> UsageEvent | Rejection | None:
        got = counters.apply(state, s, self.config.meter_since_ns, self.config.counter_max_rate)
        if isinstance(got, Rejection):
            return got
        if got.amount == 0 and not got.reset:
            return None
        t_ms = s.time_ns // 1_000_000
        amount = got.amount
        return UsageEvent(
            event_key(BROKER_METRICS, *s.series, s.start_ns, s.time_ns),
            BROKER_METRICS,
            t_ms,
            s.principal,
            s.client_id,
            s.virtual_cluster,
            s.topic,
            s.direction,
            amount if s.quantity == "bytes" else 0,
            amount if s.quantity == "records" else 0,
            0,
            0,
            (FLAG_COUNTER_RESET,) if got.reset else (),
        )

    # -- changelog ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """A changelog entry holding every counter and live window (dedup keys travel as deltas)."""
        self.snapshot_seen = False  # while restoring: a full snapshot was replayed
        return {
            "v": 1,
            "shard": self.name,
            "kind": "snapshot",
            "offset": self.next_offset,
            "dedup_ts": self.dedup.newest_ms,
            "dedup": "",
            "counters": [[list(s), *v] for s, v in self.counters.items()],
            "hours": [[*hk[0], hk[1], *v] for hk, v in self.hours.items()],
        }

    @staticmethod
    def split(entry: dict[str, Any], max_items: int = 20_000) -> list[dict[str, Any]]:
        """One entry as records of at most ``max_items`` counters + windows each, so a large
        state never makes a Kafka record too big. The first part keeps the entry's kind (a
        snapshot resets the state there) and the dedup keys; the others are ``part``s applied
        on top. All parts go in one transaction, so a restore sees all of them or none."""
        items = [("counters", c) for c in entry["counters"]] + [("hours", h) for h in entry["hours"]]
        if len(items) <= max_items:
            return [entry]
        parts = []
        for n, i in enumerate(range(0, len(items), max_items)):
            chunk = items[i : i + max_items]
            part = {
                **entry,
                "kind": entry["kind"] if n == 0 else "part",
                "dedup": entry["dedup"] if n == 0 else "",
                "counters": [c for k, c in chunk if k == "counters"],
                "hours": [h for k, h in chunk if k == "hours"],
            }
            parts.append(part)
        return parts

    def replay(self, entry: dict[str, Any]) -> None:
        """Apply one changelog entry (in changelog order) while restoring."""
        if entry.get("shard") != self.name:
            return
        if entry["kind"] == "snapshot":
            self.snapshot_seen = True
            self.counters = {}
            self.hours = {}
        raw = base64.b64decode(entry["dedup"])
        if raw:
            self.dedup.add_many((raw[i : i + 16] for i in range(0, len(raw), 16)), int(entry["dedup_ts"]))
        for series, start, time_ns, value in entry["counters"]:
            self.counters[tuple(series)] = counters.SeriesState(start, time_ns, value)
        for row in entry["hours"]:
            self.hours[(tuple(row[:6]), row[6])] = list(row[7:11])
        self.next_offset = int(entry["offset"])
