"""The metering state of one input partition (a *shard*) and the pure step that folds a batch.

A shard owns, for its input partition: the dedup keys within the horizon, the cumulative
counter series (broker metrics), its stream time (the newest Kafka timestamp folded), and the
hourly window totals that can still change (up to the lateness limit). :meth:`ShardState.fold`
turns a batch of records into

* DLQ rejections (with the record they came from),
* full-total snapshots of every hourly window the batch changed (``version`` = the input offset
  after the batch, so it only grows per window key and shard),
* per-minute partial sums of the batch (for the live views),
* a changelog entry that, replayed in order, rebuilds this state exactly.

Memory holds what changes: the *hot* hours (the stream time's hour and the ``HOT_HOURS``
before it) whole, and of older (*cold*) hours only the windows changed since the hour's last
**segment** — a changelog entry of kind ``segment`` holding every window of that hour — plus
where each segment is (``cold``: offsets in the shard's state partition). A late record into a
cold hour reads its segment back through ``load_segment`` (the engine reads the state topic at
those offsets; a small cache keeps the last ones read) so the total it publishes is still the
full one. The engine's state round writes a new segment for each cold hour changed since (and
rewrites old ones before retention could delete them), then a checkpoint (``snapshot``) naming
every segment and ``dedup_from``: the state-topic offset of the oldest entry whose dedup keys
are still within the horizon. A restore replays from there: dedup keys by position, the rest from
the checkpoint on. Decision and measurements: the package README and issue 17's note.

Why segments on the state topic rather than a local store (RocksDB, LMDB): a partition that
moves to another worker must be rebuilt from Kafka anyway, and a segment read by offset is
the same read on any worker; no disk of the worker's own has to survive, nothing is rebuilt
that is not needed, and the state topic keeps ``cleanup.policy=delete`` (compaction, which a
store's changelog would need, is not on every broker: the dev broker has none).

This module sits above the decoders and the domain (it calls the decoders, which build the
domain's events); :mod:`metering.fold` says why.

Totals are kept per shard on purpose: the usage windows topic carries one total per window key
*and shard*; billing adds the shards up. Nothing here talks to Kafka or reads the wall clock
(segment refresh times come in from the engine); records are judged by stream time.
"""

from __future__ import annotations

import base64
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from sys import intern
from typing import Any, NamedTuple

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
from metering.fold import batch
from metering.fold.records import BatchResult, HeadersUnreadable, InRecord, Record, Scan, WindowKey

__all__ = [
    "COLD_HELD_LIMIT",
    "HOUR_MS",
    "BatchResult",
    "ColdRef",
    "HeadersUnreadable",
    "InRecord",
    "Record",
    "Scan",
    "SegmentLoader",
    "ShardError",
    "ShardState",
    "WindowKey",
]

HOUR_MS = 3_600_000
MINUTE_MS = 60_000
# Hours kept whole in memory: the stream time's hour and this many before it. Earlier (cold)
# hours are segments on the state topic, read back when a late record lands in them.
HOT_HOURS = 2
# Windows of cold hours read back and kept for the next late records (oldest read goes first),
# per worker: the engine shares it among the partitions it owns.
COLD_CACHE_WINDOWS = 50_000
# Windows of cold hours held in memory (changed since their segment) past which a shard writes
# its segments at once rather than at the next round; per worker, shared like the cache.
COLD_HELD_LIMIT = 50_000


def _key(row: list[Any]) -> WindowKey:
    """The window key of a changelog row, its names shared (sys.intern): rows read back by the
    thousand repeat a few principals, clients and topics."""
    return (intern(row[0]), intern(row[1]), intern(row[2]), intern(row[3]), intern(row[4]), intern(row[5]))


class ShardError(Exception):
    """A shard's state cannot be read (a bug or a state topic that lost what it must keep)."""


class ColdRef(NamedTuple):
    """Where a cold hour's segment is: offsets in the shard's state partition (one per part),
    and when it was written (wall clock, ms: old segments are rewritten before retention)."""

    offsets: list[int]
    written_ms: int


# reads the changelog entries at these offsets of the shard's state partition (committed ones)
SegmentLoader = Callable[[str, list[int]], list[dict[str, Any]]]


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
        self.stream_ms = 0  # the newest Kafka timestamp folded (see scan)
        self.cold: dict[int, ColdRef] = {}  # cold hour → where its segment is
        self._cache: OrderedDict[int, dict[WindowKey, tuple[int, ...]]] = OrderedDict()  # segments read
        self.load_segment: SegmentLoader | None = None  # set by the engine
        self.cache_windows = COLD_CACHE_WINDOWS
        self.held_limit = COLD_HELD_LIMIT
        self.cold_loads = 0
        self.cold_held = 0  # about how many windows of cold hours are held (see dirty_cold)
        # (state-topic offset, dedup time) of the entries carrying dedup keys, oldest first
        self.key_marks: deque[tuple[int, int]] = deque()

    # -- the hot step ------------------------------------------------------------------------

    def fold(self, records: Sequence[InRecord], limits: Limits) -> BatchResult:
        """Fold one batch (records of this shard, in offset order) into the state.

        ``limits`` gives the plausibility limits; its clock is not used: ``too_old`` and
        ``future`` are judged against the shard's *stream time* (see :meth:`scan`), so a replay
        of the same records judges them the same whenever it runs. The CloudEvents inputs take
        the batch scan (:mod:`metering.fold.batch`: the same result, faster); broker metrics
        the per-record :meth:`scan` (counters are stateful)."""
        out = BatchResult()
        if self.config.source_kind == BROKER_METRICS:
            scan = self.scan(records, limits, out)
        else:
            scan = batch.scan(self, records, limits, out)
        return self._apply(records, scan, out)

    def scan(self, records: Sequence[InRecord], limits: Limits, out: BatchResult) -> Scan:
        """The per-record path: decode, judge, dedup and sum a batch per minute.

        Fills ``out``'s rejections, minutes and counts and returns what the state step needs.
        Stream time: the newest Kafka timestamp among the shard's records up to and including
        the record being judged (kept in the state, so a restored shard goes on from it); an
        event is ``too_old`` before stream time − ``MAX_LATENESS`` and ``future`` after stream
        time + ``MAX_FUTURE_SKEW``. Counter state (OTLP) changes here; nothing else of the
        shard's state does."""
        kind = self.config.source_kind
        dedup_keys = self.dedup._keys
        seen_now: set[bytes] = set()
        new_keys: list[bytes] = []
        minutes = out.minutes
        rejected = out.rejected
        events: list[UsageEvent] = []
        stream_ms = self.stream_ms
        lim = Limits(stream_ms, limits.max_lateness_ms, limits.max_future_ms, limits.max_event_bytes)
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
                if ts > stream_ms:
                    stream_ms = lim.now_ms = ts
            if value is None:
                out.tombstones += 1
                continue
            try:
                if otlp_input:
                    events.clear()
                    self._fold_samples(rec, otlp.decode(value, lim), events, changed_series, out)
                    got: UsageEvent | str | None = None
                else:
                    # CloudEvents binary content mode is recognised by its ce_specversion header;
                    # a record without headers (the usual structured one) costs one call here.
                    try:
                        headers = rec.headers()
                    except Exception:
                        rec = HeadersUnreadable(rec)
                        raise Invalid("not_utf8", "a header name is not valid UTF-8 (no header can be read)") from None
                    got = decode_binary(value, headers, lim) if headers and is_binary(headers) else decode(value, lim)
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
        return Scan(new_keys, max_ts, stream_ms, changed_series)

    def _apply(self, records: Sequence[InRecord], scan: Scan, out: BatchResult) -> BatchResult:
        """The state step after a scan: dedup keys, hourly windows, the changelog entry."""
        new_keys, max_ts, changed_series, minutes = scan.new_keys, scan.max_ts, scan.changed_series, out.minutes
        out.counted = len(new_keys)
        if records:
            out.next_offset = records[-1].offset() + 1
        else:
            return out
        self.next_offset = out.next_offset
        self.stream_ms = scan.stream_ms
        if new_keys:
            self.dedup.add_many(new_keys, max_ts)
        hours = self.hours
        hot = self.hot_from()
        cold_base: dict[int, dict[WindowKey, tuple[int, ...]]] | None = None
        changed: dict[tuple[WindowKey, int], list[int]] = {}
        for mk, (b, r, q, d) in minutes.items():
            hk = (mk[:6], mk[6] - mk[6] % HOUR_MS)
            h = hours.get(hk)
            if h is None:
                # a cold hour's window starts from its segment (read once, then cached)
                if cold_base is None:
                    cold_base = self._cold_base(minutes)
                base = cold_base[hk[1]].get(hk[0]) if hk[1] in cold_base else None
                h = hours[hk] = [0, 0, 0, 0] if base is None else list(base)
                if hk[1] < hot:
                    self.cold_held += 1
            h[0] += b
            h[1] += r
            h[2] += q
            h[3] += d
            changed[hk] = h
        cutoff = self.stream_ms - self.config.max_lateness_ms - HOUR_MS
        # an hour that ended before stream time − MAX_LATENESS can never change again: its last
        # total is published (a record early in the batch may have changed it) and it is let go
        for hk in [hk for hk in hours if hk[1] < cutoff]:
            del hours[hk]
        for hour in [h for h in self.cold if h < cutoff]:
            del self.cold[hour]
            self._cache.pop(hour, None)
        out.hours = changed
        out.changelog = {
            "v": 1,
            "shard": self.name,
            "kind": "delta",
            "offset": out.next_offset,
            "dedup_ts": self.dedup.newest_ms,
            "stream_ms": self.stream_ms,
            "dedup": base64.b64encode(b"".join(new_keys)).decode("ascii"),
            "counters": [[list(s), *self.counters[s]] for s in changed_series if s in self.counters],
            "hours": [[*hk[0], hk[1], *v] for hk, v in changed.items()],
        }
        return out

    def _fold_samples(
        self,
        rec: InRecord,
        items: list[counters.Sample | Rejection],
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

    def _counter_event(self, s: counters.Sample, state: counters.CounterState) -> UsageEvent | Rejection | None:
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

    # -- cold hours ----------------------------------------------------------------------------

    def hot_from(self) -> int:
        """The first hour kept whole in memory: the stream time's hour and the ``HOT_HOURS``
        before it. Earlier hours live in segments on the state topic (see the module docstring)."""
        return self.stream_ms - self.stream_ms % HOUR_MS - HOT_HOURS * HOUR_MS

    def dirty_cold(self) -> int:
        """Windows of cold hours held in memory (changed since their hour's segment)."""
        hot = self.hot_from()
        return sum(1 for hk in self.hours if hk[1] < hot)

    def segments_due(
        self, refresh_before_ms: int | None = None, max_refresh: int = 24
    ) -> Iterator[tuple[int, dict[str, Any], list[WindowKey]]]:
        """The segments to (re)write now, one at a time: ``(hour, entry, windows)`` for each cold
        hour with windows held in memory (changed since its segment, or just gone cold), then
        for up to ``max_refresh`` segments written before ``refresh_before_ms`` (wall clock; so
        that the state topic's retention never deletes a segment still in use). ``entry`` holds
        every window of the hour: its segment so far with the windows changed since laid over it
        (a valid delta entry too: full totals); ``windows``: those of them held in memory, for
        :meth:`set_cold` once the entry is placed. Segments are read back 16 hours at a time."""
        hot = self.hot_from()
        held: dict[int, list[tuple[WindowKey, list[int]]]] = {}
        for hk, v in self.hours.items():
            if hk[1] < hot:
                held.setdefault(hk[1], []).append((hk[0], v))
        due = sorted(held)
        if refresh_before_ms is not None:
            stale = sorted(h for h, ref in self.cold.items() if ref.written_ms < refresh_before_ms and h not in held)
            due += stale[:max_refresh]
        for n in range(0, len(due), 16):
            chunk = due[n : n + 16]
            base = self._read_segments([h for h in chunk if h not in self._cache])
            for hour in chunk:
                rows = dict(base.get(hour) or self._cache.get(hour) or {})
                mine = held.get(hour, [])
                for wk, v in mine:
                    rows[wk] = tuple(v)
                self._cache_put(hour, rows)  # the hour as it now is (the transaction commits it)
                entry = {
                    "v": 2,
                    "shard": self.name,
                    "kind": "segment",
                    "offset": self.next_offset,
                    "dedup_ts": self.dedup.newest_ms,
                    "stream_ms": self.stream_ms,
                    "dedup": "",
                    "counters": [],
                    "hour": hour,
                    "hours": [[*wk, hour, *v] for wk, v in rows.items()],
                }
                yield hour, entry, [wk for wk, _ in mine]

    def set_cold(self, hour: int, offsets: list[int], written_ms: int, windows: list[WindowKey]) -> None:
        """The segment of ``hour`` (from :meth:`segments_due`) was placed at ``offsets`` of the
        shard's state partition: its ``windows`` held in memory leave it."""
        self.cold[hour] = ColdRef(offsets, written_ms)
        hours = self.hours
        for wk in windows:
            hours.pop((wk, hour), None)

    def _cold_base(self, minutes: dict[tuple[str, str, str, str, str, str, int], list[int]]) -> dict[int, Any]:
        """The segments of every cold hour a batch's minutes land in, read in one go (the ones
        not in the cache from the state topic) and kept here for the batch, whatever the cache
        lets go meanwhile."""
        need = {mk[6] - mk[6] % HOUR_MS for mk in minutes}
        base = {h: self._cache[h] for h in need if h in self._cache}
        base.update(self._read_segments(sorted(h for h in need if h in self.cold and h not in base)))
        return base

    def _read_segments(self, hours: list[int]) -> dict[int, dict[WindowKey, tuple[int, ...]]]:
        hours = [h for h in hours if h in self.cold]
        if not hours:
            return {}
        if self.load_segment is None:
            raise ShardError(f"shard {self.name} has no way to read its cold hours' segments")
        read: dict[int, dict[WindowKey, tuple[int, ...]]] = {h: {} for h in hours}
        for entry in self.load_segment(self.name, [o for h in hours for o in self.cold[h].offsets]):
            rows = read.get(entry.get("hour", -1))
            if rows is not None and entry.get("shard") == self.name:
                for row in entry["hours"]:
                    rows[_key(row)] = tuple(row[7:11])
        self.cold_loads += len(hours)
        for h, rows in read.items():
            self._cache_put(h, rows)
        return read

    def _cache_put(self, hour: int, rows: dict[WindowKey, tuple[int, ...]]) -> None:
        cache = self._cache
        cache.pop(hour, None)
        cache[hour] = rows
        held = sum(len(r) for r in cache.values())
        while len(cache) > 1 and held > self.cache_windows:
            _, gone = cache.popitem(last=False)
            held -= len(gone)

    # -- changelog ---------------------------------------------------------------------------

    def dedup_from(self) -> int | None:
        """The state-topic offset of the oldest entry whose dedup keys are still within the
        horizon (by the records' Kafka time, as the dedup set keeps them); None: no such entry.
        A restore reads the state topic from there, however long ago in wall-clock time that
        was written (a backlog metered slower than real time)."""
        marks, cutoff = self.key_marks, self.dedup.newest_ms - self.dedup.horizon_ms
        while marks and marks[0][1] < cutoff:
            marks.popleft()
        return marks[0][0] if marks else None

    def snapshot(self, dedup_from: int | None = None) -> dict[str, Any]:
        """A checkpoint: every counter, the windows held in memory (the hot hours, and cold
        windows not yet in a segment), where each cold hour's segment is, and ``dedup_from``:
        the state-topic offset of the oldest entry whose dedup keys are still needed (None: none
        before this one). Dedup keys travel in the deltas."""
        return {
            "v": 2,
            "shard": self.name,
            "kind": "snapshot",
            "offset": self.next_offset,
            "dedup_ts": self.dedup.newest_ms,
            "stream_ms": self.stream_ms,
            "dedup": "",
            "dedup_from": dedup_from,
            "cold": [[h, ref.written_ms, *ref.offsets] for h, ref in sorted(self.cold.items())],
            "counters": [[list(s), *v] for s, v in self.counters.items()],
            "hours": [[*hk[0], hk[1], *v] for hk, v in self.hours.items()],
        }

    @staticmethod
    def split(entry: dict[str, Any], max_items: int = 20_000) -> list[dict[str, Any]]:
        """One entry as records of at most ``max_items`` counters + windows each, so a large
        state never makes a Kafka record too big. The first part keeps the entry's kind (a
        snapshot resets the state there), the dedup keys and the cold index; the others are
        ``part``s applied on top (a segment's parts are all ``segment``s of the same hour). All
        parts go in one transaction, so a restore sees all of them or none."""
        items = [("counters", c) for c in entry["counters"]] + [("hours", h) for h in entry["hours"]]
        if len(items) <= max_items:
            return [entry]
        parts = []
        first = entry["kind"]
        for n, i in enumerate(range(0, len(items), max_items)):
            chunk = items[i : i + max_items]
            part = {
                **entry,
                "kind": first if n == 0 or first == "segment" else "part",
                "dedup": entry["dedup"] if n == 0 else "",
                "counters": [c for k, c in chunk if k == "counters"],
                "hours": [h for k, h in chunk if k == "hours"],
            }
            if n and "cold" in part:
                part["cold"] = []
            parts.append(part)
        return parts

    def replay(self, entry: dict[str, Any], keys_only: bool = False) -> None:
        """Apply one changelog entry (in changelog order) while restoring; ``keys_only``: an
        entry before the checkpoint the restore starts from, which only brings dedup keys."""
        if entry.get("shard") != self.name:
            return
        kind = entry["kind"]
        if kind == "segment":  # read when its hour is needed (through the cold index), not here
            return
        if keys_only:
            raw = base64.b64decode(entry["dedup"])
            if raw:
                self.dedup.add_many((raw[i : i + 16] for i in range(0, len(raw), 16)), int(entry["dedup_ts"]))
            return
        if kind == "snapshot":
            self.counters = {}
            self.hours = {}
            self.cold = {}
            self._cache.clear()
        raw = base64.b64decode(entry["dedup"])
        if raw:
            self.dedup.add_many((raw[i : i + 16] for i in range(0, len(raw), 16)), int(entry["dedup_ts"]))
        for h, written_ms, *offsets in entry.get("cold", ()):
            self.cold[h] = ColdRef(offsets, written_ms)
        for series, start, time_ns, value in entry["counters"]:
            self.counters[tuple(series)] = counters.SeriesState(start, time_ns, value)
        for row in entry["hours"]:
            self.hours[(_key(row), row[6])] = list(row[7:11])
        self.next_offset = int(entry["offset"])
        # entries written before stream time was kept: the newest dedup time is the closest
        self.stream_ms = max(self.stream_ms, int(entry.get("stream_ms", entry["dedup_ts"])))
