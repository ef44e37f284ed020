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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from metering.decoders import confluent_audit, otlp, proxy
from metering.decoders.common import Invalid, Limits
from metering.domain import counters
from metering.domain.dedup import DedupSet
from metering.domain.events import (
    AUDIT_LOG,
    BROKER_METRICS,
    FLAG_COUNTER_RESET,
    PROXY,
    Rejection,
    UsageEvent,
    event_key,
)

__all__ = ["BatchResult", "InRecord", "ShardState", "WindowKey"]

HOUR_MS = 3_600_000
MINUTE_MS = 60_000

# (source, principal, client_id, virtual_cluster, topic, direction)
WindowKey = tuple[str, str, str, str, str, str]


class InRecord(NamedTuple):
    """A Kafka record as the shard sees it (no client library types)."""

    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None


@dataclass
class BatchResult:
    next_offset: int = -1
    rejected: list[tuple[InRecord, Rejection]] = field(default_factory=list)
    hours: dict[tuple[WindowKey, int], list[int]] = field(default_factory=dict)
    minutes: dict[tuple[WindowKey, int], list[int]] = field(default_factory=dict)
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
        self.batches_since_snapshot = 0

    # -- the hot step ------------------------------------------------------------------------

    def fold(self, records: Iterable[InRecord], limits: Limits) -> BatchResult:
        """Fold one batch (records of this shard, in offset order) into the state."""
        out = BatchResult()
        kind = self.config.source_kind
        dedup = self.dedup
        new_keys: list[bytes] = []
        seen_now: set[bytes] = set()
        hours = self.hours
        changed_hours: set[tuple[WindowKey, int]] = set()
        minutes = out.minutes
        max_ts = 0
        changed_series: set[tuple[str, ...]] = set()

        def add(ev: UsageEvent) -> None:
            key = ev.event_key
            if key in seen_now or key in dedup:
                out.duplicates += 1
                return
            seen_now.add(key)
            new_keys.append(key)
            wk: WindowKey = (ev.source_kind, ev.principal, ev.client_id, ev.virtual_cluster, ev.topic, ev.direction)
            t = ev.occurred_at_ms
            hk = (wk, t - t % HOUR_MS)
            h = hours.get(hk)
            if h is None:
                h = hours[hk] = [0, 0, 0, 0]
            h[0] += ev.bytes
            h[1] += ev.records
            h[2] += ev.requests
            h[3] += ev.denied_requests
            changed_hours.add(hk)
            mk = (wk, t - t % MINUTE_MS)
            m = minutes.get(mk)
            if m is None:
                m = minutes[mk] = [0, 0, 0, 0]
            m[0] += ev.bytes
            m[1] += ev.records
            m[2] += ev.requests
            m[3] += ev.denied_requests
            out.counted += 1

        decode: Callable[[bytes, Limits], UsageEvent | str] = proxy.decode if kind == PROXY else confluent_audit.decode
        for rec in records:
            if rec.timestamp_ms > max_ts:
                max_ts = rec.timestamp_ms
            out.next_offset = rec.offset + 1
            value = rec.value
            if value is None:
                out.tombstones += 1
                continue
            try:
                if kind == BROKER_METRICS:
                    for item in otlp.decode(value, limits):
                        if isinstance(item, Rejection):
                            out.rejected.append((rec, item))
                            continue
                        ev_or_rej = self._counter_event(item)
                        if isinstance(ev_or_rej, Rejection):
                            out.rejected.append((rec, ev_or_rej))
                        elif ev_or_rej is not None:
                            changed_series.add(item.series)
                            if FLAG_COUNTER_RESET in ev_or_rej.flags:
                                out.counter_resets += 1
                            add(ev_or_rej)
                        else:
                            changed_series.add(item.series)
                    continue
                got = decode(value, limits)
            except Invalid as exc:
                out.rejected.append((rec, exc.rejection))
                continue
            except Exception as exc:  # a decoder bug must not stop metering; the record is kept
                out.rejected.append((rec, Rejection("schema", f"undecodable record ({type(exc).__name__})")))
                continue
            if type(got) is str:
                out.ignored += 1
            else:
                add(got)  # type: ignore[arg-type]

        if out.next_offset < 0:
            return out
        self.next_offset = out.next_offset
        if new_keys:
            dedup.add_many(new_keys, max_ts)
        cutoff = limits.now_ms - self.config.max_lateness_ms - HOUR_MS
        for hk in [hk for hk in hours if hk[1] < cutoff]:
            del hours[hk]
        out.hours = {hk: hours[hk] for hk in changed_hours if hk in hours}
        self.batches_since_snapshot += 1
        out.changelog = {
            "v": 1,
            "shard": self.name,
            "kind": "delta",
            "offset": out.next_offset,
            "dedup_ts": self.dedup.newest_ms,
            "dedup": base64.b64encode(b"".join(new_keys)).decode("ascii"),
            "counters": [[list(s), *self.counters[s]] for s in changed_series if s in self.counters],
            "hours": [[*hk[0], hk[1], *v] for hk, v in out.hours.items()],
        }
        return out

    def _counter_event(self, s: otlp.Sample) -> UsageEvent | Rejection | None:
        got = counters.apply(self.counters, s, self.config.meter_since_ns, self.config.counter_max_rate)
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
        self.batches_since_snapshot = 0
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

    def replay(self, entry: dict[str, Any]) -> None:
        """Apply one changelog entry (in changelog order) while restoring."""
        if entry.get("shard") != self.name:
            return
        if entry["kind"] == "snapshot":
            self.counters = {}
            self.hours = {}
        raw = base64.b64decode(entry["dedup"])
        if raw:
            self.dedup.add_many((raw[i : i + 16] for i in range(0, len(raw), 16)), int(entry["dedup_ts"]))
        for series, start, time_ns, value in entry["counters"]:
            self.counters[tuple(series)] = counters.SeriesState(start, time_ns, value)
        for row in entry["hours"]:
            self.hours[(tuple(row[:6]), row[6])] = list(row[7:11])  # type: ignore[index]
        self.next_offset = int(entry["offset"])
