"""Following compacted control topics — the caps fold's decisions, the gateways' enforcement
episodes — from their beginning, in a background thread.

Each record is the full state of its key (a tombstone, a null value, deletes it), so a reader
that reads a topic from the beginning, and again from the beginning after an error, ends with
the same newest record per key: the callback is handed every record and keeps the newest. A
topic that does not exist yet (no gateway or caps service has written it) is looked for again
every ``recheck_s`` while the others are read; a broker outage is retried every few seconds.
Billing writes nothing here and imports nothing of the gateway: the records are the neutral ones
of :mod:`metering.entitlements`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

__all__ = ["CompactedFollower"]

log = logging.getLogger("streamtoll.follow")

OnRecord = Callable[[str, bytes | None, bytes | None], None]


class CompactedFollower:
    """Hands every record of ``topics`` to ``on_record(topic, key, value)``, from the beginning
    of each topic, until :meth:`stop`; ``ok_at`` is when the broker last answered."""

    def __init__(
        self,
        kafka_config: Mapping[str, Any],
        topics: Sequence[str],
        on_record: OnRecord,
        name: str = "control-follower",
        recheck_s: float = 5.0,
    ) -> None:
        self.kafka_config = dict(kafka_config)
        self.topics = [t for t in topics if t]
        self.on_record = on_record
        self.recheck_s = recheck_s
        self.ok_at = 0.0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> CompactedFollower:
        if self.topics:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except Exception as exc:  # the follower outlives a broker outage; it reads again from the start
                self.error = str(exc)
                log.warning("control topic follower interrupted; retrying", extra={"error": str(exc)})
                self._stop.wait(3.0)

    def _follow(self) -> None:
        consumer = Consumer(
            {
                **self.kafka_config,
                "group.id": f"streamtoll-follow-{uuid.uuid4().hex[:12]}",  # never joins or commits
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            }
        )
        try:
            assigned: set[tuple[str, int]] = set()
            checked = 0.0
            while not self._stop.is_set():
                now = time.monotonic()
                missing = [t for t in self.topics if not any(a[0] == t for a in assigned)]
                if checked == 0.0 or (missing and now - checked >= self.recheck_s):
                    checked = now
                    new = self._partitions(consumer, assigned)
                    if new:
                        consumer.incremental_assign(new)
                        assigned |= {(tp.topic, tp.partition) for tp in new}
                    self.ok_at, self.error = time.time(), None
                if not assigned:
                    self._stop.wait(self.recheck_s)
                    continue
                for m in consumer.consume(500, 0.5):
                    if m.error() is not None:
                        raise KafkaException(m.error())
                    self.on_record(m.topic() or "", m.key(), m.value())
                self.ok_at = time.time()
        finally:
            consumer.close()

    def _partitions(self, consumer: Consumer, assigned: set[tuple[str, int]]) -> list[TopicPartition]:
        """The partitions of the followed topics that exist now and are not read yet."""
        found = []
        meta = consumer.list_topics(timeout=10).topics
        for topic in self.topics:
            t = meta.get(topic)
            if t is None or t.error is not None:
                continue
            found += [
                TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(t.partitions) if (topic, p) not in assigned
            ]
        return found
