"""The live view's feed: the Kafka side of ``/v1/live`` (``billing.services.live_view`` has the
model, ``billing.services.live`` the database side).

One thread follows the usage minutes topic (all partitions, ``read_committed``, from an hour ago)
and the DLQ topic (from the start of the UTC day) into the board, and every ``lag_every_s`` reads
the metering group's lag per input partition (committed offset against the end, and the age of
the oldest record not yet metered). Another refreshes the board's base from the database through
``read_base`` every ``db_refresh_s`` (rating every account at most every ``rate_every_s``, or at
once after :meth:`LiveFeed.refresh_database`), so a slow database never holds up the minutes and
a broker outage never stops the refresh. The enforcement topics (compacted) are followed from the
beginning by a :class:`billing.adapters.follow.CompactedFollower`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from confluent_kafka import OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition

from billing.adapters.follow import CompactedFollower

__all__ = ["Board", "LiveFeed", "LiveSources", "ReadBase"]

log = logging.getLogger("streamtoll.live")

HOUR = 3600

# (now, the last rated amounts to keep or None to rate afresh) → (base, attributor) for set_base
ReadBase = Callable[[float, dict[str, dict[str, str]] | None], tuple[Any, Any]]


def hour_start(t: float) -> float:
    return t - t % HOUR


def day_start(t: float) -> float:
    return t - t % 86400


class Board(Protocol):
    """What the feed writes to (and ``/v1/live`` and ``/metrics`` read): the live view's model,
    :class:`billing.services.live_view.LiveBoard`."""

    keep_s: int
    base: Any  # its ``rated`` is kept between ratings
    lag: list[dict[str, Any]]
    minutes_applied: int
    minutes_replayed: int

    def add_minute(self, doc: Mapping[str, Any]) -> bool: ...
    def add_dlq(self, partition: int, offset: int, reason: str, at_s: float) -> None: ...
    def add_decision(self, key: bytes | None, value: bytes | None) -> None: ...
    def add_episode(self, key: bytes | None, value: bytes | None) -> None: ...
    def set_lag(self, rows: list[dict[str, Any]], at: float) -> None: ...
    def set_base(self, base: Any, attributor: Any) -> None: ...
    def prune(self, now: float) -> None: ...
    def view(self, now: float) -> dict[str, Any]: ...
    def view_enforcement(self, now: float) -> dict[str, Any]: ...
    def view_dlq_today(self, now: float) -> dict[str, int]: ...


@dataclass(frozen=True)
class LiveSources:
    """Where the feed reads (handed over by the composition root; billing reads no metering
    settings)."""

    kafka_config: Mapping[str, Any]
    topic_minutes: str
    topic_dlq: str
    input_topics: tuple[str, ...]
    metering_group: str
    topic_enforcement: str = ""  # the caps fold's decisions ("": not followed)
    topic_enforcement_events: str = ""  # the gateways' throttle and block episodes ("": not followed)


class LiveFeed:
    """Keeps a board current from Kafka (a thread) and from ``read_base`` (another thread)."""

    def __init__(
        self,
        sources: LiveSources,
        board: Board,
        read_base: ReadBase | None = None,
        clock: Callable[[], float] = time.time,
        lag_every_s: float = 5.0,
        db_refresh_s: float = 30.0,
        rate_every_s: float = 300.0,
    ) -> None:
        self.sources = sources
        self.board = board
        self.read_base = read_base
        self.clock = clock
        self.lag_every_s = lag_every_s
        self.db_refresh_s = db_refresh_s
        self.rate_every_s = rate_every_s
        self._rated_at = 0.0
        self.kafka_ok_at = 0.0
        self.kafka_error: str | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._refresh_now = threading.Event()
        self.control = CompactedFollower(
            sources.kafka_config,
            [sources.topic_enforcement, sources.topic_enforcement_events],
            self._control_record,
            name="live-enforcement",
        )

    def _control_record(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        if topic == self.sources.topic_enforcement:
            self.board.add_decision(key, value)
        else:
            self.board.add_episode(key, value)

    def start(self) -> LiveFeed:
        # Kafka and the database each get a thread: a slow database read (many accounts to rate)
        # must not hold up the minutes, and a broker outage must not stop the database refresh.
        self._threads = [
            threading.Thread(target=self._run, name="live-feed", daemon=True),
            threading.Thread(target=self._refresh_loop, name="live-db", daemon=True),
        ]
        for t in self._threads:
            t.start()
        self.control.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._refresh_now.set()
        self.control.stop()
        for t in self._threads:
            t.join(10)

    def kafka_ok(self, within_s: float = 30.0) -> bool:
        """Has the feed heard from the broker lately?"""
        return self.clock() - self.kafka_ok_at <= within_s

    def refresh_database(self) -> None:
        """Ask for a database refresh at the next turn (e.g. after a catalog change)."""
        self._refresh_now.set()

    def _config(self, group: str) -> dict[str, Any]:
        return {
            **self.sources.kafka_config,
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": False,
        }

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except Exception as exc:  # the feed must outlive a broker outage; the view says it is stale
                self.kafka_error = str(exc)
                log.warning("live feed interrupted; retrying", extra={"error": str(exc)})
                self._stop.wait(3.0)

    def _assign(self, consumer: Consumer, topic: str, since_s: float) -> list[TopicPartition]:
        meta = consumer.list_topics(topic, timeout=10)
        t = meta.topics.get(topic)
        if t is None or t.error is not None or not t.partitions:
            raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, f"topic {topic} does not exist yet"))
        wanted = [TopicPartition(topic, p, int(since_s * 1000)) for p in sorted(t.partitions)]
        found = consumer.offsets_for_times(wanted, timeout=10)
        return [TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_END) for tp in found]

    def _follow(self) -> None:
        board, src = self.board, self.sources
        consumer = Consumer(self._config(f"streamtoll-live-{uuid.uuid4().hex[:12]}"))
        lag_reader = Consumer(self._config(src.metering_group))
        peek = Consumer(self._config(f"streamtoll-live-peek-{uuid.uuid4().hex[:12]}"))
        try:
            now = self.clock()
            since = min(now - board.keep_s, hour_start(now))
            consumer.assign(
                self._assign(consumer, src.topic_minutes, since) + self._assign(consumer, src.topic_dlq, day_start(now))
            )
            self.kafka_ok_at, self.kafka_error = self.clock(), None
            lag_at = 0.0
            while not self._stop.is_set():
                for m in consumer.consume(5000, 0.5):
                    if m.error() is not None:
                        raise KafkaException(m.error())
                    if m.topic() == src.topic_minutes:
                        try:
                            board.add_minute(orjson.loads(m.value() or b""))
                        except (ValueError, KeyError, TypeError) as exc:
                            log.error(
                                "unreadable usage minute skipped", extra={"offset": m.offset(), "error": str(exc)}
                            )
                    else:
                        try:
                            reason = str(orjson.loads(m.value() or b"")["reason"])
                        except (ValueError, KeyError, TypeError):
                            reason = "unreadable"
                        board.add_dlq(m.partition() or 0, m.offset() or 0, reason, m.timestamp()[1] / 1000)
                now = self.clock()
                if now - lag_at >= self.lag_every_s:
                    board.set_lag(self._lag(lag_reader, peek, now), now)
                    self.kafka_ok_at, self.kafka_error = now, None
                    lag_at = now
                    board.prune(now)
        finally:
            for c in (consumer, lag_reader, peek):
                c.close()

    def _refresh_loop(self) -> None:
        while not self._stop.is_set():
            self._refresh_base(self.clock())
            self._refresh_now.clear()
            self._refresh_now.wait(self.db_refresh_s)

    def _refresh_base(self, now: float) -> None:
        if self.read_base is None:
            return
        rate = self._refresh_now.is_set() or now - self._rated_at >= self.rate_every_s
        try:
            base, attributor = self.read_base(now, None if rate else self.board.base.rated)
            if rate:
                self._rated_at = now
        except Exception as exc:  # a database outage leaves the last base in place; the view says how old
            log.warning("live view could not read the database", extra={"error": str(exc).splitlines()[0]})
            return
        self.board.set_base(base, attributor)

    def _lag(self, lag_reader: Consumer, peek: Consumer, now: float) -> list[dict[str, Any]]:
        """Records behind and age of the oldest unmetered record, per input partition."""
        parts: list[TopicPartition] = []
        for topic in self.sources.input_topics:
            t = lag_reader.list_topics(topic, timeout=5).topics.get(topic)
            if t is not None and t.error is None:
                parts += [TopicPartition(topic, p) for p in sorted(t.partitions)]
        if not parts:
            return []
        committed = lag_reader.committed(parts, timeout=5)
        rows = []
        for tp in committed:
            low, high = lag_reader.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=5)
            position = tp.offset if tp.offset >= 0 else low
            behind = max(0, high - position)
            seconds: float | None = 0.0
            if behind:
                seconds = None
                peek.assign([TopicPartition(tp.topic, tp.partition, position)])
                msg = peek.poll(2.0)
                if msg is not None and msg.error() is None:
                    seconds = max(0.0, now - msg.timestamp()[1] / 1000)
            rows.append(
                {
                    "topic": tp.topic,
                    "partition": tp.partition,
                    "committed": position,
                    "end": high,
                    "records_behind": behind,
                    "seconds_behind": seconds,
                }
            )
        return rows
