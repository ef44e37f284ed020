"""The usage sink: usage windows topic → ``usage_shard_rows``, idempotently.

Each record is a full total for one (window key, shard) with a ``version`` that only grows
(``metering.contracts.UsageWindow``). A batch is upserted in one database transaction, keeping
a row only when the incoming version is newer; only after that commit are the Kafka offsets
committed. Killed anywhere, the sink re-reads from the last committed offsets, and the replayed
records change nothing (their versions are not newer): nothing lost, nothing doubled.
While the database is unreachable the sink keeps the batch and retries with backoff (0.5 s
doubling to 30 s), its partitions paused but the consumer polled between retries, so the
group's poll-interval check does not drop it (tested with an outage of ~10 s; longer outages
rely on the same polling); ``db_up`` (and ``/metrics``, ``/healthz``) say so meanwhile.
A usage windows topic that does not exist yet (the sink started before any worker created it)
is waited for, with a warning a minute, not a crash.

**Enforcement episodes.** The sink also follows ``TOPIC_ENFORCEMENT_EVENTS`` (the throttles and
blocks gateways applied, :class:`metering.entitlements.Episode`) into ``enforcement_episodes``,
with the same care: upserted by id keeping the newest ``updated`` (a replay changes nothing),
offsets committed after the database commit. In the same transaction it writes the quota webhook
events of the episodes (``quota.throttled`` or ``quota.blocked`` when one is first stored,
``quota.released`` when its end is: :mod:`billing.domain.quota_events`), each once an episode
(``episode_events``): a redelivered or replayed record queues no second delivery. Here rather
than in ``streamtoll api``: the sink is already the one process that writes Kafka into
PostgreSQL (consumer group, database-outage backoff, offsets after commit), while the API runs
as many replicas as load asks and would need the same machinery again. The caps fold's
decisions (``TOPIC_ENFORCEMENT``) are not stored: what a partner is shown is what the gateways
did (the episodes, a cap's block or throttle as applied), and a cap's standing is shown from its
month-to-date usage.

``after_db_commit`` is called after each database commit and before the Kafka commit — the
narrowest window there is; the test suite's sink (``tests/integration/failpoint_sink.py``) exits
there to prove that a crash loses and doubles nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from sqlalchemy import Engine
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import OperationalError

from billing.adapters.models import EnforcementEpisodeRow, UsageShardRow
from billing.adapters.repositories.webhooks import WebhookRepository
from billing.domain.quota_events import quota_event_data, quota_event_types
from billing.domain.webhooks import new_event
from metering.contracts import UsageWindow
from metering.entitlements import Episode, decode_episode

__all__ = ["UsageSink", "upsert_episodes", "upsert_windows"]

log = logging.getLogger("streamtoll.sink")

# what a subscription to a topic nobody has created yet reports (librdkafka)
_NO_TOPIC_YET = (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC)
_KEY = ("source", "principal", "client_id", "virtual_cluster", "topic", "direction", "hour", "shard")
_VALUES = ("bytes", "records", "requests", "denied_requests", "version")


def _row(w: UsageWindow) -> dict[str, Any]:
    return {
        "source": w.source,
        "principal": w.principal,
        "client_id": w.client_id,
        "virtual_cluster": w.virtual_cluster,
        "topic": w.topic,
        "direction": w.direction,
        "hour": datetime.fromisoformat(w.window_start),
        "shard": w.shard,
        "bytes": w.bytes,
        "records": w.records,
        "requests": w.requests,
        "denied_requests": w.denied_requests,
        "version": w.version,
    }


def _lock_order(row: dict[str, Any]) -> tuple[Any, ...]:
    hour = row["hour"]
    return (hour.date(), *(row[k] for k in _KEY[:6]), hour, row["shard"])


def upsert_windows(engine: Engine, windows: list[UsageWindow]) -> int:
    """Upsert in one transaction; a row changes only for a newer version. Returns rows written."""
    newest: dict[tuple[Any, ...], dict[str, Any]] = {}
    for w in windows:
        row = _row(w)
        key = tuple(row[k] for k in _KEY)
        if key not in newest or newest[key]["version"] < row["version"]:
            newest[key] = row
    if not newest:
        return 0
    stmt = insert(UsageShardRow)
    excluded = stmt.excluded
    stmt = stmt.on_conflict_do_update(
        index_elements=list(_KEY),
        set_={**{k: excluded[k] for k in _VALUES}, "updated_at": excluded.updated_at},
        where=UsageShardRow.version < excluded.version,
    )
    # in the order of usage_daily's key (day first): concurrent sinks take the daily table's row
    # locks in one order and seldom wait for each other; a deadlock PostgreSQL still detects
    # (the month marks of migration 0008 are locked at the end of each statement) is an
    # OperationalError, retried like any other below
    rows = sorted(newest.values(), key=_lock_order)
    with engine.begin() as conn:
        for i in range(0, len(rows), 5000):
            conn.execute(stmt, rows[i : i + 5000])
    return len(rows)


def upsert_episodes(engine: Engine, episodes: list[Episode]) -> int:
    """Upsert in one transaction; a row changes only for a newer ``updated``. Returns rows offered."""
    newest: dict[str, Episode] = {}
    for e in episodes:
        if e.id not in newest or newest[e.id].updated < e.updated:
            newest[e.id] = e
    if not newest:
        return 0
    stmt = insert(EnforcementEpisodeRow)
    excluded = stmt.excluded
    columns = [c.name for c in EnforcementEpisodeRow.__table__.columns if c.name != "id"]
    stmt = stmt.on_conflict_do_update(
        index_elements=["id"],
        set_={c: excluded[c] for c in columns},
        where=EnforcementEpisodeRow.updated_at < excluded.updated_at,
    )
    rows = [
        {
            "id": e.id,
            "gateway": e.gateway,
            "account_code": e.account,
            "kind": e.kind,
            "direction": e.direction,
            "cause": e.cause,
            "reason": e.reason,
            "started_at": e.started,
            "updated_at": e.updated,
            "ended_at": e.ended,
            "held_seconds": e.held_seconds,
            "requests": e.requests,
            "limit_per_second": e.limit,
            "meter": e.meter,
        }
        for _, e in sorted(newest.items())
    ]
    with engine.begin() as conn:
        conn.execute(stmt, rows)
        _emit_quota_events(WebhookRepository(conn), [newest[i] for i in sorted(newest)])
    return len(rows)


def _emit_quota_events(hooks: WebhookRepository, episodes: list[Episode]) -> None:
    """Each episode's quota events not emitted yet (:mod:`billing.domain.quota_events`), in the
    transaction that stores its record."""
    now = datetime.now(UTC)
    events = []
    for e in episodes:
        data = quota_event_data(
            episode_id=e.id,
            gateway=e.gateway,
            kind=e.kind,
            direction=e.direction,
            cause=e.cause,
            reason=e.reason,
            limit=e.limit,
            meter=e.meter,
            started=e.started,
            ended=e.ended,
        )
        events += [(e.id, new_event(k, e.account, data, now)) for k in quota_event_types(e.kind, e.ended is not None)]
    hooks.emit_for_episodes(events)


class UsageSink:
    """Consumes the usage windows topic (``read_committed``), and the enforcement episodes topic
    when ``episodes_topic`` is given, and upserts; offsets after commit."""

    def __init__(
        self,
        engine: Engine,
        kafka_config: Mapping[str, Any],
        topic: str,
        group_id: str = "streamtoll-sink",
        batch_size: int = 50_000,
        session_timeout_ms: int = 10_000,
        episodes_topic: str | None = None,
        after_db_commit: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.kafka_config = dict(kafka_config)
        self.topic = topic
        self.episodes_topic = episodes_topic
        self.episodes = 0  # episode records read
        self.group_id = group_id
        self.batch_size = batch_size
        self.session_timeout_ms = session_timeout_ms
        self.after_db_commit = after_db_commit  # called between the database and the Kafka commit
        self.upserted = 0  # rows written (a newer version arrived)
        self.records = 0  # window records read
        self.batches = 0  # batches committed (database, then offsets)
        self.db_failures = 0
        self.db_up = True
        self._stop = threading.Event()
        self._missing_logged_at = -60.0
        self.turned_at = time.monotonic()  # the consume loop's last turn (a database retry included)

    def stop(self) -> None:
        self._stop.set()

    def alive(self, within_s: float = 300.0) -> tuple[bool, dict[str, Any]]:
        """Live while the consume loop turns, the database reachable or not (``/healthz/live``)."""
        age = time.monotonic() - self.turned_at
        return age <= within_s, {"loop_turned_s_ago": round(age, 1)}

    def run(self) -> None:
        consumer = Consumer(
            {
                **self.kafka_config,
                "group.id": self.group_id,
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                "fetch.queue.backoff.ms": 10,
                "session.timeout.ms": self.session_timeout_ms,
                "heartbeat.interval.ms": max(100, self.session_timeout_ms // 4),
                # a topic created after the sink subscribed is seen at the next metadata refresh
                # (librdkafka's default is five minutes)
                "topic.metadata.refresh.interval.ms": 10_000,
            }
        )
        consumer.subscribe([self.topic, *([self.episodes_topic] if self.episodes_topic else [])])
        try:
            while not self._stop.is_set():
                self.turned_at = time.monotonic()
                msgs = consumer.consume(self.batch_size, 0.5)
                windows: list[UsageWindow] = []
                episodes: list[Episode] = []
                offsets: dict[tuple[str, int], int] = {}
                for m in msgs:
                    err = m.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            continue
                        if err.code() in _NO_TOPIC_YET:
                            self._topic_missing(m.topic())
                            continue
                        raise KafkaException(err)
                    offsets[(m.topic() or "", m.partition() or 0)] = (m.offset() or 0) + 1
                    episode = m.topic() == self.episodes_topic
                    try:
                        if episode:
                            if m.value() is not None:  # a tombstone (compaction) deletes nothing here
                                episodes.append(decode_episode(m.value() or b""))
                        else:
                            window = UsageWindow.from_json(m.value() or b"")
                            _row(window)  # a window_start that is no time fails here, not in the write
                            windows.append(window)
                    except (ValueError, KeyError, TypeError) as exc:
                        # metering and gateways write these topics; a record they cannot have written
                        # is logged with its coordinates and skipped rather than blocking every later one
                        log.error(
                            "unreadable enforcement episode record skipped"
                            if episode
                            else "unreadable usage window record skipped",
                            extra={
                                "topic": m.topic(),
                                "partition": m.partition(),
                                "offset": m.offset(),
                                "error": str(exc),
                            },
                        )
                if not offsets:
                    continue
                self._write(windows, consumer, episodes)
                if self.after_db_commit is not None:
                    self.after_db_commit()
                consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
                self.records += len(windows)
                self.episodes += len(episodes)
                self.batches += 1
        finally:
            consumer.close()

    def _topic_missing(self, topic: str | None) -> None:
        now = time.monotonic()
        if now - self._missing_logged_at >= 60:
            self._missing_logged_at = now
            if topic is not None and topic == self.episodes_topic:
                log.warning(
                    "the enforcement episodes topic does not exist yet; waiting for a gateway to create it",
                    extra={"topic": topic},
                )
                return
            log.warning(
                "the usage windows topic does not exist yet; waiting for a worker to create it",
                extra={"topic": self.topic},
            )

    def _write(
        self, windows: list[UsageWindow], consumer: Consumer | None = None, episodes: list[Episode] | None = None
    ) -> None:
        backoff = 0.5
        paused: list[TopicPartition] = []
        try:
            while True:
                try:
                    self.upserted += upsert_windows(self.engine, windows)
                    if episodes:
                        upsert_episodes(self.engine, episodes)
                        episodes = None  # written: a retry of the windows does not write them again
                    self.db_up = True
                    return
                except OperationalError as exc:
                    self.db_failures += 1
                    self.db_up = False
                    log.warning(
                        "database unavailable; retrying", extra={"error": str(exc).splitlines()[0], "in_s": backoff}
                    )
                    if consumer is not None and not paused:
                        paused = consumer.assignment()
                        consumer.pause(paused)
                    if self._wait(backoff, consumer):
                        raise
                    backoff = min(backoff * 2, 30.0)
        finally:
            if consumer is not None and paused:
                # everything assigned now (a partition paused in _wait too); resuming a partition
                # that is not paused changes nothing
                consumer.resume(consumer.assignment())

    def _wait(self, seconds: float, consumer: Consumer | None) -> bool:
        """Wait ``seconds`` (True: asked to stop), polling the paused consumer meanwhile so the
        group does not consider it dead. A record it returns anyway (a rebalance handed it a new,
        unpaused partition) is not dropped: the consumer is sought back to it."""
        if consumer is None:
            return self._stop.wait(seconds)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.turned_at = time.monotonic()
            if self._stop.is_set():
                return True
            m = consumer.poll(min(1.0, max(0.0, deadline - time.monotonic())))
            if m is not None and m.error() is None:
                consumer.seek(TopicPartition(m.topic() or "", m.partition() or 0, m.offset() or 0))
                consumer.pause([TopicPartition(m.topic() or "", m.partition() or 0)])
        return self._stop.is_set()
