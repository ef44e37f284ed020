"""Control topics a gateway follows: credentials (:mod:`gateway.credentials`), each account's
entitlements and the caps fold's enforcement decisions (:class:`EntitlementStore`).

A :class:`TopicFollower` reads its topic to the end at start (every partition, from the
beginning; no consumer group) before the gateway opens its listeners, then keeps following it in
a thread, handing each record to ``apply`` (the newest record per key wins, so the topics are
compacted and republishing is harmless).

Entitlements and decisions:

* An account with no entitlements record is unrestricted (billing publishes every account's
  record; a plan that says nothing about access, rates or caps publishes an unrestricted one).
* A decision applies while its ``month`` is the current UTC month: a new month lifts every cap
  without anyone publishing.
* Both topics are created (compacted) when missing, so a gateway can start before billing has
  published anything.

The gateway holds no database connection: the topics are all it knows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from gateway.errors import UpstreamError
from metering.entitlements import (
    Decision,
    Entitlement,
    decode_decision,
    decode_entitlement,
    month_of,
)

__all__ = ["EntitlementStore", "TopicFollower", "ensure_control_topic"]

log = logging.getLogger(__name__)


def ensure_control_topic(kafka_config: dict[str, Any], topic: str, timeout: float = 15.0) -> None:
    """Create ``topic`` (one partition, compacted) unless it exists."""
    admin = AdminClient({k: v for k, v in kafka_config.items() if not k.startswith("group.")})
    if topic in admin.list_topics(timeout=timeout).topics:
        return
    futures = admin.create_topics(
        [NewTopic(topic, 1, replication_factor=-1, config={"cleanup.policy": "compact"})], request_timeout=timeout
    )
    for f in futures.values():
        try:
            f.result(timeout)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise


class TopicFollower:
    """Reads ``topic`` to its end (:meth:`start`), then follows it in a thread."""

    def __init__(
        self,
        kafka_config: dict[str, Any],
        topic: str,
        apply: Callable[[bytes | None, bytes | None], None],
        *,
        name: str,
        missing: str | None = None,
    ) -> None:
        self.config = {
            **kafka_config,
            "group.id": f"streamtoll-gateway-{name}",  # required by the client; never joins or commits
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 100,
            # the end is where a fetch says it is: ListOffsets can understate it (the dev broker)
            "enable.partition.eof": True,
        }
        self.topic = topic
        self.name = name
        self.apply = apply
        self.missing = missing  # None: create the topic when it is missing
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> None:
        consumer = Consumer(self.config)
        try:
            meta = consumer.list_topics(self.topic, timeout=timeout).topics.get(self.topic)
            if meta is None or meta.error is not None or not meta.partitions:
                if self.missing is not None:
                    raise UpstreamError(self.missing)
                ensure_control_topic(self.config, self.topic)
                meta = consumer.list_topics(self.topic, timeout=timeout).topics.get(self.topic)
                if meta is None or not meta.partitions:
                    raise UpstreamError(f"the {self.name} topic {self.topic} could not be created")
            pending = set(meta.partitions)
            consumer.assign([TopicPartition(self.topic, p, -2) for p in sorted(pending)])  # -2: the beginning
            deadline = time.monotonic() + timeout
            while pending:  # to the end of every partition, as its fetches report it
                if time.monotonic() > deadline:
                    raise UpstreamError(f"the {self.name} topic {self.topic} could not be read to its end")
                for msg in consumer.consume(500, 0.2):
                    err = msg.error()
                    if err is None:
                        self.apply(msg.value(), msg.key())
                    elif err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition())
                    else:  # transient (a topic just created); the deadline ends a lasting one
                        log.warning(f"{self.name} topic", extra={"error": str(err)})
        except (KafkaException, UpstreamError):
            consumer.close()
            raise
        self._thread = threading.Thread(target=self._follow, args=(consumer,), name=self.name, daemon=True)
        self._thread.start()

    def _follow(self, consumer: Consumer) -> None:
        try:
            while not self._stop.is_set():
                try:
                    for msg in consumer.consume(500, 0.2):
                        err = msg.error()
                        if err is None:
                            self.apply(msg.value(), msg.key())
                        elif err.code() != KafkaError._PARTITION_EOF:
                            log.warning(f"{self.name} topic", extra={"error": str(msg.error())})
                except KafkaException as exc:  # keep following: a change must still arrive
                    log.error(f"reading the {self.name} topic failed", extra={"error": str(exc)})
                    self._stop.wait(1.0)
        finally:
            consumer.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


class EntitlementStore:
    """Each account's entitlements and the caps decisions in force, from their two topics.

    ``on_change(account)`` runs (in the follower's thread) after an account's entitlements or one
    of its decisions changed; the gateway uses it to re-check what it enforces."""

    def __init__(
        self,
        kafka_config: dict[str, Any],
        entitlements_topic: str,
        decisions_topic: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.by_account: dict[str, Entitlement] = {}
        self.decisions: dict[tuple[str, str], Decision] = {}
        self.clock = clock
        self.on_change: Callable[[str], None] | None = None
        self.applied = 0
        self._followers = (
            TopicFollower(kafka_config, entitlements_topic, self._apply_entitlement, name="entitlements"),
            TopicFollower(kafka_config, decisions_topic, self._apply_decision, name="enforcement"),
        )

    def get(self, account: str) -> Entitlement | None:
        """The account's entitlements; None: no record (unrestricted)."""
        return self.by_account.get(account)

    def in_force(self, account: str) -> list[Decision]:
        """The account's decisions of this month that are not ``ok``."""
        month = month_of(self.clock())
        return [
            d for (a, _), d in list(self.decisions.items()) if a == account and d.month == month and d.state != "ok"
        ]

    def _apply_entitlement(self, value: bytes | None, key: bytes | None) -> None:
        account = (key or b"").decode("utf-8", "replace")
        if value is None:
            self.by_account.pop(account, None)
        else:
            try:
                e = decode_entitlement(value)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("an entitlements record that is not one was skipped", extra={"error": repr(exc)})
                return
            account = e.account
            self.by_account[account] = e
        self.applied += 1
        self._changed(account)

    def _apply_decision(self, value: bytes | None, key: bytes | None) -> None:
        if value is None:
            return
        try:
            d = decode_decision(value)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("an enforcement record that is not one was skipped", extra={"error": repr(exc)})
            return
        old = self.decisions.get((d.account, d.meter))
        if old is not None and old.month == d.month and old.at > d.at:
            return  # an older decision arriving late
        self.decisions[(d.account, d.meter)] = d
        if old is None or (old.state, old.month) != (d.state, d.month):
            log.info(
                "cap decision",
                extra={"account": d.account, "meter": d.meter, "state": d.state, "month": d.month, "reason": d.reason},
            )
        self._changed(d.account)

    def _changed(self, account: str) -> None:
        if self.on_change is not None:
            try:
                self.on_change(account)
            except Exception:  # a bug in a listener must not stop the follower
                log.exception("entitlements listener failed", extra={"account": account})

    def start(self, timeout: float = 30.0) -> None:
        for f in self._followers:
            f.start(timeout)
        log.info(
            "entitlements read",
            extra={"accounts": len(self.by_account), "decisions": len(self.decisions)},
        )

    def stop(self) -> None:
        for f in self._followers:
            f.stop()
