"""The transactional read-process-write loop (see the package docstring for the guarantees)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from metering.contracts import dlq_record, iso_ms, minute_record, window_record
from metering.decoders.common import Limits
from metering.engine.topics import MAX_MESSAGE, ensure_topics
from metering.errors import EngineError, TopicError
from metering.fold.shard import (
    COLD_CACHE_WINDOWS,
    COLD_HELD_LIMIT,
    BatchResult,
    InRecord,
    ShardConfig,
    ShardState,
    WindowKey,
)
from metering.settings import MeteringSettings

__all__ = ["Engine", "Stats"]

log = logging.getLogger("streamtoll.metering")

# dedup_from of a checkpoint written before there was one (state entries "v": 1): the restore
# then reads the dedup keys as those versions did, from now − DEDUP_HORIZON − 3 × interval
_LEGACY = -7
# Records per consume() call while gathering a batch of BATCH_SIZE
CONSUME_CHUNK = 10_000
# Reading cold hours' segments back: offsets further apart than this are reached by a seek.
SEGMENT_SEEK_GAP = 200


class Stats(Counter[str]):
    """Running counts (events in by source, DLQ by reason, dedup hits …) for logs and /metrics."""


def _sender(producer: Producer) -> Callable[..., None]:
    """``producer.produce`` that waits for room when the local queue is full (big batches)."""
    produce, poll = producer.produce, producer.poll

    def send(topic: str, value: bytes, key: bytes | None = None, partition: int = -1, on_delivery: Any = None) -> None:
        while True:
            try:
                if on_delivery is None:
                    produce(topic, value, key=key, partition=partition)
                else:
                    produce(topic, value, key=key, partition=partition, on_delivery=on_delivery)
                return
            except BufferError:
                poll(0.05)

    return send


def _shard_name(topic: str, partition: int) -> str:
    """A shard's name: its input partition, as the state topic keys its entries."""
    return f"{topic}/{partition}"


def _state_partition(shard: str, n: int) -> int:
    return zlib.crc32(shard.encode()) % n


class Engine:
    """Runs the loop until :meth:`stop`; restarts itself from committed state after an error."""

    def __init__(
        self,
        settings: MeteringSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.stats = Stats()
        self._stats_logged_at = 0.0
        self.shards: dict[tuple[str, int], ShardState] = {}
        self._stop = threading.Event()
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._last_snapshot: dict[tuple[str, int], float] = {}
        self.progress_at = 0.0  # last time a poll returned (records or not): the loop is alive
        self.turned_at = clock()  # last time the loop (re)started: alive between restarts too
        self.last_error: str | None = None
        self._full_reads = 0  # shards the last restore had to search further back than 3 intervals for
        self._rebalancing = False  # between a revoke (or the join) and the next assignment
        self._segment_reader: Consumer | None = None  # reads cold hours' segments (_load_segment)

    def stop(self) -> None:
        self._stop.set()

    def health(self, within_s: float = 60.0) -> tuple[bool, dict[str, Any]]:
        """Ready when the loop polled Kafka lately (for ``/healthz``)."""
        age = self.clock() - self.progress_at if self.progress_at else None
        ok = age is not None and age <= within_s
        return ok, {
            "kafka": "reachable" if ok else "unreachable",
            "partitions": len(self.shards),
            "last_error": self.last_error,
        }

    def alive(self, within_s: float = 300.0) -> tuple[bool, dict[str, Any]]:
        """Live while the loop turns — polls return, or it restarts after a failure (at most 30 s
        apart) — whether or not Kafka answers (for ``/healthz/live``: a restart cures a stuck
        loop, not an unreachable broker)."""
        age = self.clock() - max(self.progress_at, self.turned_at)
        return age <= within_s, {"loop_turned_s_ago": round(age, 1)}

    # -- lifecycle -----------------------------------------------------------------------------

    def run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            self.turned_at = self.clock()
            try:
                self._start()
                backoff = 1.0
                while not self._stop.is_set():
                    self._step()
                self._finish_rebalance()
            except TopicError:  # an operator must change a topic: restarting would not help
                self._close(graceful=False)
                raise
            except Exception as exc:  # crash-only: whatever it was, restart from committed state
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error(
                    "metering loop failed; restarting from committed state",
                    extra={"error": f"{type(exc).__name__}: {exc}"},
                    exc_info=not isinstance(exc, (KafkaException, EngineError)),
                )
                self._close(graceful=False)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            else:
                self._close(graceful=True)

    def _start(self) -> None:
        s = self.settings
        base = s.kafka_config()
        ensure_topics(s)
        producer = Producer(
            {
                **base,
                "transactional.id": f"{s.group_id}-{s.instance_id}",
                "transaction.timeout.ms": 30_000,
                "linger.ms": 5,
                "batch.num.messages": 10_000,
                "compression.type": "none",
                "message.max.bytes": MAX_MESSAGE,
                "queue.buffering.max.messages": 1_000_000,
                "queue.buffering.max.kbytes": 1_048_576,
            }
        )
        # Aborts whatever a previous incarnation with the same transactional.id left open.
        producer.init_transactions(30)
        # static membership: a worker restarted within the session timeout takes its partitions
        # back without a rebalance (rolling restarts). Off for the embedded dev broker, whose
        # coordinator does not expel a static member that died (its partitions would stay
        # unmetered until it returns); a dynamic member is expelled after the session timeout.
        static = {"group.instance.id": f"{s.group_id}-{s.instance_id}"} if s.static_membership else {}
        consumer = Consumer(
            {
                **base,
                **static,
                "group.id": s.group_id,
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                "session.timeout.ms": s.session_timeout_ms,
                "heartbeat.interval.ms": max(300, s.session_timeout_ms // 10),
                "max.poll.interval.ms": 300_000,
                "partition.assignment.strategy": "range",
                "fetch.queue.backoff.ms": 10,
                "fetch.max.bytes": 52_428_800,
                "queued.max.messages.kbytes": 262_144,
            }
        )
        self._producer, self._consumer = producer, consumer
        self._rebalancing = True  # joining
        consumer.subscribe(list(s.input_topics), on_assign=self._on_assign, on_revoke=self._on_revoke)
        log.info("metering loop started", extra={"group": s.group_id, "instance": s.instance_id})

    def _close(self, graceful: bool) -> None:
        consumer, self._consumer = self._consumer, None
        producer, self._producer = self._producer, None
        if producer is not None and not graceful:
            # nothing open, or the broker is gone: the next init_transactions aborts it anyway
            with contextlib.suppress(KafkaException):
                producer.abort_transaction(5)
        if consumer is not None:
            with contextlib.suppress(KafkaException, RuntimeError):
                consumer.close()
        if producer is not None:
            producer.flush(5)
        reader, self._segment_reader = self._segment_reader, None
        if reader is not None:
            with contextlib.suppress(KafkaException, RuntimeError):
                reader.close()
        self.shards.clear()

    # -- rebalances ----------------------------------------------------------------------------

    def _finish_rebalance(self) -> None:
        """Before leaving the group: let a rebalance in progress end first (at most a session
        timeout and 10 s, metering as usual meanwhile). A member that rejoins and leaves at once
        unsettles some coordinators — tansu then keeps the departed member as the next
        generation's leader and no one is ever assigned anything (tests/integration/test_faults.py:
        without this wait a graceful stop 1 s into a rebalance wedged the group in 3 runs of 3,
        with it in none of 4) — and a handover from a settled group is quicker anyway."""
        deadline = time.monotonic() + self.settings.session_timeout_ms / 1000 + 10
        while self._rebalancing and time.monotonic() < deadline:
            self._step()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._rebalancing = False
        started = time.monotonic()
        self._full_reads = 0
        wanted = {(tp.topic, tp.partition) for tp in partitions} - set(self.shards)
        if wanted:
            self._restore(wanted)
        # the cold-hour memory budgets are the worker's: shared among the partitions it owns
        for st in self.shards.values():
            st.cache_windows = max(1_000, COLD_CACHE_WINDOWS // len(self.shards))
            st.held_limit = max(1_000, COLD_HELD_LIMIT // len(self.shards))
        log.info(
            "partitions assigned",
            extra={
                "partitions": sorted(f"{tp.topic}/{tp.partition}" for tp in partitions),
                "shards": sorted(f"{t}/{p}" for t, p in wanted),
                "restore_s": round(time.monotonic() - started, 3),
                "full_reads": self._full_reads,
            },
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # No transaction is open while consume() runs callbacks: each batch commits first.
        self._rebalancing = True
        log.info("partitions revoked", extra={"partitions": sorted(f"{tp.topic}/{tp.partition}" for tp in partitions)})
        for tp in partitions:
            self.shards.pop((tp.topic, tp.partition), None)
            self._last_snapshot.pop((tp.topic, tp.partition), None)

    def _new_shard(self, topic: str, partition: int) -> ShardState:
        s = self.settings
        shard = ShardState(
            _shard_name(topic, partition),
            ShardConfig(
                source_kind=s.input_topics[topic],
                dedup_horizon_ms=int(s.dedup_horizon_s * 1000),
                dedup_max_keys=s.dedup_max_keys,
                max_lateness_ms=int(s.max_lateness_s * 1000),
                meter_since_ns=None if s.meter_since_ms is None else s.meter_since_ms * 1_000_000,
                counter_max_rate=s.counter_max_rate,
            ),
        )
        shard.load_segment = self._load_segment
        return shard

    def _restore(self, wanted: set[tuple[str, int]]) -> None:
        """Rebuild the wanted shards from the state topic (committed entries only).

        A shard's state is its last checkpoint (a ``snapshot`` entry: counters, the windows held
        in memory, where each cold hour's segment is) and the entries after it; its dedup keys
        are in the entries from the checkpoint's ``dedup_from`` on. Every owned shard writes a
        checkpoint every ``snapshot_interval``, so the last few intervals of the topic hold one:
        they are searched first, then further back (8 × each time, to the topic's start) for a
        shard without one there (new, or unowned for a while). Then each partition is read once
        from the earliest position its shards need: before a shard's checkpoint only the dedup
        keys are taken (found by position, however slowly in wall-clock time the records that
        brought them were metered), from it on everything. Cold hours' segments are read later,
        when a late record needs them.
        """
        s = self.settings
        names = {_shard_name(*k): k for k in wanted}
        found: dict[str, tuple[int, int | None]] = {}  # shard → (checkpoint offset, dedup_from)
        lookback: float | None = 3 * s.snapshot_interval_s
        self._full_reads = 0
        pending = set(names)
        while pending:
            since_ms = None if lookback is None else int((self.clock() - lookback) * 1000)
            got, whole = self._find_checkpoints(pending, since_ms)
            found.update(got)
            # a shard with no checkpoint in a partition read from its start is new
            pending = {n for n in pending if n not in got and _state_partition(n, s.state_partitions) not in whole}
            if lookback is None:
                break
            self._full_reads += len(pending)
            lookback = None if lookback * 8 > s.state_retention_s else lookback * 8
        fresh = {n: self._new_shard(*k) for n, k in names.items()}
        legacy = {_state_partition(n, s.state_partitions) for n, (_, d) in found.items() if d == _LEGACY}
        by_time: dict[int, int] = {}
        if legacy:  # checkpoints written before dedup_from: the keys of the time a restore then read
            since_ms = int((self.clock() - s.dedup_horizon_s - 3 * s.snapshot_interval_s) * 1000)
            by_time = self._offsets_since(legacy, since_ms)
        starts: dict[int, int] = {}
        for n in names:
            part = _state_partition(n, s.state_partitions)
            at, dedup_from = found.get(n, (-1, None))
            if dedup_from == _LEGACY:
                dedup_from = by_time.get(part, at)
            first = -1 if at < 0 else min(at, at if dedup_from is None else dedup_from)
            starts[part] = min(first, starts.get(part, first))
        self._replay(fresh, starts, {n: at for n, (at, _) in found.items()})
        now = self.clock()
        for n, k in names.items():
            st = fresh[n]
            st.cold_held = st.dirty_cold()
            self.shards[k] = st
            self._last_snapshot[k] = now

    def _state_reader(self) -> Consumer:
        s = self.settings
        return Consumer(
            {
                **s.kafka_config(),
                "group.id": f"{s.group_id}-restore",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
                "fetch.queue.backoff.ms": 10,
                "fetch.wait.max.ms": 10,  # the end of each partition (EOF) is what a restore waits for
                "queued.max.messages.kbytes": 16_384,  # read as fast as parsed: no large prefetch
                "auto.offset.reset": "earliest",
            }
        )

    def _read_state(self, reader: Consumer, start: list[TopicPartition], each: Callable[[Message], None]) -> None:
        """Every committed record of the state partitions from ``start`` to their end."""
        if not start:
            return
        # Read to the end each fetch reports (partition EOF), not to ListOffsets' answer: the dev
        # broker under-reports the log end there.
        reader.assign(start)
        pending = {tp.partition for tp in start}
        deadline = time.monotonic() + 600
        while pending:
            if time.monotonic() > deadline:
                raise EngineError("restoring metering state took over 600 s")
            for msg in reader.consume(10_000, 0.1):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition())
                        continue
                    raise KafkaException(err)
                each(msg)

    def _find_checkpoints(
        self, names: set[str], since_ms: int | None
    ) -> tuple[dict[str, tuple[int, int | None]], set[int]]:
        """The last checkpoint of each of these shards written since ``since_ms`` (wall clock, as
        the state records' timestamps; None: since the start): its offset and ``dedup_from``;
        and the state partitions that this read covered from their start."""
        s = self.settings
        parts = sorted({_state_partition(n, s.state_partitions) for n in names})
        found: dict[str, tuple[int, int | None]] = {}

        def each(msg: Message) -> None:
            key = (msg.key() or b"").decode("utf-8", "replace")
            value = msg.value() or b""
            # entries start {"v":…,"shard":…,"kind":…}: only checkpoints are parsed here
            if key in names and b'"kind":"snapshot"' in value[: len(key) + 64]:
                entry = orjson.loads(value)
                if entry.get("shard") == key:
                    dedup_from = entry.get("dedup_from") if entry.get("v", 1) >= 2 else _LEGACY
                    found[key] = (cast("int", msg.offset()), dedup_from)

        reader = self._state_reader()
        try:
            start = [TopicPartition(s.topic_state, p, OFFSET_BEGINNING) for p in parts]
            whole = set(parts)
            if since_ms is not None:
                found_at = reader.offsets_for_times([TopicPartition(s.topic_state, p, since_ms) for p in parts], 30)
                start = [tp for tp in found_at if tp.offset >= 0]  # -1: nothing written since
                lows = {p: reader.get_watermark_offsets(TopicPartition(s.topic_state, p), 30)[0] for p in parts}
                whole = {tp.partition for tp in start if tp.offset <= lows[tp.partition]}
            self._read_state(reader, start, each)
        finally:
            reader.close()
        return found, whole

    def _offsets_since(self, parts: set[int], since_ms: int) -> dict[int, int]:
        """The first offset of each state partition written at or after ``since_ms``."""
        s = self.settings
        reader = self._state_reader()
        try:
            found = reader.offsets_for_times([TopicPartition(s.topic_state, p, since_ms) for p in sorted(parts)], 30)
            return {tp.partition: tp.offset for tp in found if tp.offset >= 0}
        finally:
            reader.close()

    def _replay(self, by_name: dict[str, ShardState], starts: dict[int, int], checkpoints: dict[str, int]) -> None:
        """Replay the shards' entries from ``starts`` (state partition → offset; -1: its start):
        before a shard's checkpoint offset only its dedup keys, from it on everything."""
        s = self.settings
        reader = self._state_reader()

        def each(msg: Message) -> None:
            shard = by_name.get((msg.key() or b"").decode("utf-8", "replace"))
            if shard is None:
                return
            entry = orjson.loads(msg.value() or b"{}")
            if entry.get("shard") != shard.name:
                return
            at = cast("int", msg.offset())
            shard.replay(entry, keys_only=at < checkpoints.get(shard.name, -1))
            if entry.get("dedup"):
                shard.key_marks.append((at, int(entry["dedup_ts"])))

        try:
            start = []
            for p, off in sorted(starts.items()):
                low = reader.get_watermark_offsets(TopicPartition(s.topic_state, p), 30)[0]
                if 0 <= off < low:
                    log.error(
                        "dedup keys a restore needs are gone from the state topic (STATE_RETENTION too short); "
                        "records retried across this restart may count twice",
                        extra={"partition": p, "needed_from": off, "kept_from": low},
                    )
                start.append(TopicPartition(s.topic_state, p, OFFSET_BEGINNING if off < low else off))
            self._read_state(reader, start, each)
        finally:
            reader.close()

    def _load_segment(self, name: str, offsets: list[int]) -> list[dict[str, Any]]:
        """The committed changelog entries at ``offsets`` of shard ``name``'s state partition
        (cold hours' segments), in offset order. Reads forward through offsets close together
        and seeks across gaps, one request per message at most (no waiting for a full batch)."""
        s = self.settings
        reader = self._segment_reader
        if reader is None:
            reader = self._segment_reader = Consumer(
                {
                    **s.kafka_config(),
                    "group.id": f"{s.group_id}-segments",
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "fetch.queue.backoff.ms": 10,
                    "fetch.wait.max.ms": 50,
                    # a read wants a few records at an offset: no prefetching of the partition
                    # beyond (Kafka still returns a whole record larger than these)
                    "queued.max.messages.kbytes": 2048,
                    "max.partition.fetch.bytes": 1_048_576,
                }
            )
        partition = _state_partition(name, s.state_partitions)
        wanted = sorted(set(offsets))
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        i = 0
        while i < len(wanted):
            reader.assign([TopicPartition(s.topic_state, partition, wanted[i])])
            while i < len(wanted):
                if time.monotonic() > deadline:
                    raise EngineError(f"segments of shard {name} at offsets {wanted[i:]} could not be read in 60 s")
                msg = reader.poll(0.5)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(err)
                at = cast("int", msg.offset())
                if at < wanted[i]:
                    continue
                if at > wanted[i]:  # read_committed skips only aborted records and markers
                    raise EngineError(f"the segment of shard {name} at offset {wanted[i]} is not in the state topic")
                found.append(orjson.loads(msg.value() or b"{}"))
                i += 1
                if i < len(wanted) and wanted[i] - at > SEGMENT_SEEK_GAP:
                    break  # far ahead: seek there rather than read what lies between
        self.stats["cold_segments_read"] += 1
        log.info(
            "cold hours read back",
            extra={"shard": name, "records": len(found), "read_s": round(time.monotonic() - deadline + 60, 3)},
        )
        return found

    # -- the batch -----------------------------------------------------------------------------

    def _step(self) -> None:
        consumer, producer = self._consumer, self._producer
        assert consumer is not None and producer is not None
        # in chunks: one consume() of 100k records costs more per record than ten of 10k
        size = self.settings.batch_size
        msgs = consumer.consume(min(size, CONSUME_CHUNK), 0.5)
        while len(msgs) < size and len(msgs) % CONSUME_CHUNK == 0 and msgs:  # full chunks: more is queued
            more = consumer.consume(min(CONSUME_CHUNK, size - len(msgs)), 0)
            msgs += more
            if len(more) < CONSUME_CHUNK:
                break
        self.progress_at = self.clock()
        by_shard: dict[tuple[str, int], list[Message]] = {}
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(err)
            tp = cast("tuple[str, int]", (m.topic(), m.partition()))
            batch = by_shard.get(tp)
            if batch is None:
                batch = by_shard[tp] = []
            batch.append(m)
        now = self.clock()
        s = self.settings
        # Every owned shard, with records or not, writes a checkpoint every interval, so a
        # restore finds one within a few intervals (see _restore); one holding too many windows
        # of cold hours writes their segments and a checkpoint at once (bounded memory).
        rounds = [
            k
            for k, st in self.shards.items()
            if now - self._last_snapshot.get(k, now) >= s.snapshot_interval_s
            or (k in by_shard and st.cold_held > st.held_limit)
        ]
        if not by_shard and not rounds:
            return
        limits = Limits(
            int(now * 1000), int(s.max_lateness_s * 1000), int(s.max_future_skew_s * 1000), s.max_event_bytes
        )
        received_at = iso_ms(int(now * 1000))
        producer.begin_transaction()
        offsets: list[TopicPartition] = []
        counts = Stats()  # added to self.stats only once the transaction commits
        for (topic, partition), records in by_shard.items():
            shard = self.shards.get((topic, partition))
            if shard is None:
                raise EngineError(f"records from {topic}/{partition}, which this worker does not own")
            result = shard.fold(cast("list[InRecord]", records), limits)
            self._publish(producer, topic, partition, shard, result, received_at)
            offsets.append(TopicPartition(topic, partition, result.next_offset))
            self._count(counts, shard.config.source_kind, result)
        if rounds:
            self._round(producer, rounds, now, counts)
        if offsets:
            producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), 30)
        producer.commit_transaction(60)
        counts["transactions"] += 1
        self.stats.update(counts)
        if now - self._stats_logged_at >= 30:
            self._stats_logged_at = now
            log.info(
                "metering progress",
                extra={
                    "counts": dict(self.stats),
                    "shards": len(self.shards),
                    "windows_held": sum(len(st.hours) for st in self.shards.values()),
                    "cold_hours": sum(len(st.cold) for st in self.shards.values()),
                },
            )

    def _publish(
        self,
        producer: Producer,
        topic: str,
        partition: int,
        shard: ShardState,
        result: BatchResult,
        received_at: str,
    ) -> None:
        s = self.settings
        send = _sender(producer)
        for rec, rej in result.rejected:
            value, key = rec.value(), rec.key()  # type: ignore[attr-defined]
            try:
                headers = rec.headers()
            except Exception:  # a header name that is not UTF-8 (see HeadersUnreadable): keep none
                headers = None
            doc = dlq_record(
                rej.reason,
                rej.detail,
                topic,
                partition,
                rec.offset(),
                rec.timestamp()[1],
                key,
                value,
                headers,
                received_at,
            )
            send(s.topic_dlq, orjson.dumps(doc), key=key)
        version, name = result.next_offset, shard.name
        # the two loops below run once per window and minute changed: produce() directly (the
        # sender only when librdkafka's queue is full)
        produce, dumps, windows_topic, minutes_topic = (
            producer.produce,
            orjson.dumps,
            s.topic_usage_windows,
            s.topic_usage_minutes,
        )
        for (wk, start), totals in result.hours.items():
            k, doc2 = window_record(wk, start, totals, version, name)
            value, key = dumps(doc2), dumps(k)
            try:
                produce(windows_topic, value, key)
            except BufferError:
                send(windows_topic, value, key=key)
        for mk, totals in result.minutes.items():
            k, doc3 = minute_record(mk, totals, name, version)
            value, key = dumps(doc3), dumps(k)
            try:
                produce(minutes_topic, value, key)
            except BufferError:
                send(minutes_topic, value, key=key)
        entry = result.changelog
        if entry["dedup"]:  # where its dedup keys are, for the checkpoints' dedup_from
            ts = int(entry["dedup_ts"])

            def placed(n: int, offset: int) -> None:
                if n == 0:  # the first part holds the keys
                    shard.key_marks.append((offset, ts))

            self._send_state(send, shard.name, entry, placed)
        else:
            self._send_state(send, shard.name, entry)

    def _round(self, producer: Producer, keys: list[tuple[str, int]], now: float, counts: Stats) -> None:
        """A state round for these shards, in the batch's transaction: the segments of their
        cold hours that changed (or must be rewritten before the state topic's retention
        deletes them), then, once Kafka has placed them (a flush inside the transaction gives
        their offsets), a checkpoint per shard naming where every segment is."""
        send = _sender(producer)
        refresh_before = int((now - self.settings.state_retention_s / 2) * 1000)
        written: list[tuple[ShardState, int, list[WindowKey], list[int], int]] = []
        for k in keys:
            shard = self.shards[k]
            for hour, entry, windows in shard.segments_due(refresh_before):
                placed: list[int] = []
                n = self._send_state(send, shard.name, entry, lambda _n, off, placed=placed: placed.append(off))  # type: ignore[misc]
                written.append((shard, hour, windows, placed, n))
                counts["segments_written"] += 1
                counts["segment_windows_written"] += len(entry["hours"])
        # the checkpoints need the offsets of the segments and of this transaction's deltas
        if producer.flush(60) > 0:
            raise EngineError("the state topic did not take a round's records within 60 s")
        for shard, hour, windows, placed, n in written:
            if len(placed) != n:
                raise EngineError(f"{n - len(placed)} of the {n} records of a segment of {shard.name} were not placed")
            shard.set_cold(hour, sorted(placed), int(now * 1000), windows)
        for k in keys:
            self.shards[k].cold_held = 0  # every cold hour held is in a segment now
        for k in keys:
            shard = self.shards[k]
            self._send_state(send, shard.name, shard.snapshot(shard.dedup_from()))
            self._last_snapshot[k] = now
            counts["checkpoints"] += 1

    def _send_state(
        self,
        send: Callable[..., None],
        name: str,
        entry: dict[str, Any],
        on_placed: Callable[[int, int], Any] | None = None,
    ) -> int:
        """Send an entry (in parts when large) to the shard's state partition; ``on_placed(n,
        offset)`` is told where part ``n`` went once Kafka has it. Returns the number of parts."""
        partition = _state_partition(name, self.settings.state_partitions)
        parts = ShardState.split(entry)
        for n, part in enumerate(parts):
            report = None
            if on_placed is not None:

                def report(err: Any, msg: Message, n: int = n, cb: Callable[[int, int], Any] = on_placed) -> None:
                    if err is None:
                        cb(n, cast("int", msg.offset()))

            send(
                self.settings.topic_state,
                orjson.dumps(part),
                key=name.encode(),
                partition=partition,
                on_delivery=report,
            )
        return len(parts)

    @staticmethod
    def _count(st: Stats, kind: str, r: BatchResult) -> None:
        st[f"events_in.{kind}"] += r.counted
        st[f"dedup_hits.{kind}"] += r.duplicates
        st[f"tombstones.{kind}"] += r.tombstones
        st[f"ignored.{kind}"] += r.ignored
        st["counter_resets"] += r.counter_resets
        st["windows_published"] += len(r.hours)
        for (src, _p, _c, _v, _t, direction, _m), (b, n, _q, _d) in r.minutes.items():
            if b:
                st[f"bytes.{src}.{direction}"] += b
            if n:
                st[f"records.{src}.{direction}"] += n
        for _, rej in r.rejected:
            st[f"dlq.{rej.reason}"] += 1
