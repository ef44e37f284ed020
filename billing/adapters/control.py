"""Publishing control records — credentials, entitlements — to the compacted topics gateways follow.

Each record is the full state of one key (a credential's id, an account's code): a reader keeps
the newest per key, so publishing the same state again, or in a later run, changes nothing. The
topic is created (one partition, ``cleanup.policy=compact``) when it is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from billing.errors import PublishError

__all__ = ["ensure_compacted_topic", "publish_records"]


class _Debug(logging.LoggerAdapter):  # type: ignore[type-arg]
    """librdkafka's own lines (a refused connection, every 50 ms) at DEBUG: a publication that
    fails says so in one sentence (:class:`PublishError`), not in hundreds of lines on stderr."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        self.logger.debug(msg, *args)


def _quiet(kafka_config: dict[str, Any]) -> dict[str, Any]:
    return {**kafka_config, "logger": _Debug(logging.getLogger("streamtoll.control.librdkafka"), {})}


def ensure_compacted_topic(kafka_config: dict[str, Any], topic: str, replication: int = -1) -> None:
    admin = AdminClient(_quiet(kafka_config))
    if topic in admin.list_topics(timeout=10).topics:
        return
    new = NewTopic(topic, 1, replication, config={"cleanup.policy": "compact"})
    for fut in admin.create_topics([new], operation_timeout=10).values():
        try:
            fut.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def publish_records(
    kafka_config: dict[str, Any], topic: str, records: Iterable[tuple[bytes, bytes]], replication: int = -1
) -> int:
    """Every ``(key, value)`` to ``topic`` (created compacted if missing), acknowledged by the
    cluster; how many. Raises :class:`PublishError` naming the topic otherwise."""
    try:
        ensure_compacted_topic(kafka_config, topic, replication)
    except KafkaException as exc:
        raise PublishError(f"the topic {topic} could not be created ({exc})") from None
    producer = Producer({**_quiet(kafka_config), "enable.idempotence": True, "acks": "all", "linger.ms": 0})
    failed: list[str] = []

    def done(err: Any, msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    count = 0
    for key, value in records:
        producer.produce(topic, key=key, value=value, on_delivery=done)
        count += 1
    left = producer.flush(15)
    if left or failed:
        why = failed[0] if failed else "timed out"
        raise PublishError(f"the records could not all be published to {topic} ({why})")
    return count
