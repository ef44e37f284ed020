"""The audit writer: proxy audit events to the proxy audit topic through an idempotent producer.

Idempotence (``enable.idempotence``, ``acks=all``) keeps librdkafka's own retries from writing
an event twice or out of order; an event's ``id`` is drawn before the first attempt, so even a
copy written by a retry the producer cannot see through would be dropped by the worker's dedup.

While the audit topic cannot take events they wait in librdkafka's queue (up to
``message.timeout.ms``, 5 minutes); when the queue is full :meth:`AuditWriter.write` blocks the
gateway — client traffic waits rather than goes unmetered. An event the producer gives up on is
logged as an error and counted (``failed``). The on-disk journal that outlives the process is
later work (``gateway/README.md``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping

from confluent_kafka import KafkaError, Message, Producer

__all__ = ["AuditWriter"]

log = logging.getLogger(__name__)


class AuditWriter:
    def __init__(self, kafka_config: Mapping[str, str | int | float | bool], topic: str) -> None:
        self.topic = topic
        self.written = 0  # handed to the producer
        self.delivered = 0  # acknowledged by the audit cluster
        self.failed = 0  # given up on (logged)
        self._producer = Producer(
            {
                **kafka_config,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 20,
                "compression.type": "lz4",
                "queue.buffering.max.messages": 1_000_000,
                "on_delivery": self._delivered,
            }
        )
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="audit-poll", daemon=True)
        self._poller.start()

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.delivered += 1
            return
        self.failed += 1
        log.error(
            "an audit event could not be written: its usage is not metered",
            extra={
                "topic": self.topic,
                "error": str(err),
                "event": (msg.value() or b"")[:300].decode(errors="replace"),
            },
        )

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)

    def write(self, events: Iterable[tuple[bytes, bytes]]) -> None:
        """Hand events to the producer (each keyed by principal); blocks while its queue is full."""
        for key, value in events:
            while True:
                try:
                    self._producer.produce(self.topic, value, key)
                    break
                except BufferError:
                    self._producer.poll(0.05)
            self.written += 1

    def pending(self) -> int:
        return len(self._producer)

    def close(self, timeout: float = 30.0) -> int:
        """Flush what is queued; returns how many events were still not written."""
        self._stop.set()
        self._poller.join()
        left = int(self._producer.flush(timeout))
        if left:
            log.error("audit events not written at shutdown: their usage is not metered", extra={"events": left})
        return left
