"""The credentials a gateway authenticates clients with (``GATEWAY_AUTH=streamtoll``), followed
from the credentials topic (``TOPIC_CREDENTIALS``) that streamtoll's credential store publishes to.

At start the store reads the topic to its end (every partition, from the beginning; no consumer
group) before the gateway opens its listeners, then keeps following it in a thread: a record
replaces the credential of its key (the newest record per credential id wins, so the topic is
compacted and republishing is harmless). A credential that stops being active — revoked —
is handed to ``on_change`` on the event loop, which closes its open connections.

The gateway holds no database connection: the topic is all it knows.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from gateway.errors import UpstreamError
from metering.credentials import Credential, decode

__all__ = ["CredentialStore"]

log = logging.getLogger(__name__)


class CredentialStore:
    def __init__(self, kafka_config: dict[str, Any], topic: str) -> None:
        self.config = {
            **kafka_config,
            "group.id": "streamtoll-gateway-credentials",  # required by the client; never joins or commits
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 100,
        }
        self.topic = topic
        self.by_id: dict[str, Credential] = {}
        self.by_username: dict[str, str] = {}
        self.on_change: Callable[[Credential], None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.applied = 0

    def find(self, username: str) -> Credential | None:
        cid = self.by_username.get(username)
        return None if cid is None else self.by_id.get(cid)

    def apply(self, value: bytes | None, key: bytes | None = None) -> None:
        if value is None:  # a tombstone: the credential is gone
            old = self.by_id.pop((key or b"").decode(), None)
            if old is not None:
                self.by_username.pop(old.username, None)
                self._changed(Credential(old.id, old.account, old.username, "revoked", ()))
            return
        try:
            credential = decode(value)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("a credentials record that is not one was skipped", extra={"error": repr(exc)})
            return
        old = self.by_id.get(credential.id)
        self.by_id[credential.id] = credential
        self.by_username[credential.username] = credential.id
        self.applied += 1
        if old is not None and old.state == "active" and credential.state != "active":
            self._changed(credential)

    def _changed(self, credential: Credential) -> None:
        log.info("credential revoked", extra={"credential": credential.id, "principal": credential.principal})
        if self.on_change is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(self.on_change, credential)

    def start(self, timeout: float = 30.0) -> None:
        """Read the topic to its end, then follow it in a thread."""
        consumer = Consumer(self.config)
        try:
            meta = consumer.list_topics(self.topic, timeout=timeout).topics.get(self.topic)
            if meta is None or meta.error is not None or not meta.partitions:
                raise UpstreamError(
                    f"the credentials topic {self.topic} does not exist: issue a credential first "
                    "(streamtoll credentials create), or run streamtoll credentials publish"
                )
            parts = [TopicPartition(self.topic, p, 0) for p in sorted(meta.partitions)]
            ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=timeout)[1] for tp in parts}
            consumer.assign([TopicPartition(self.topic, p, -2) for p in ends])  # -2: the beginning
            deadline = time.monotonic() + timeout
            positions = dict.fromkeys(ends, 0)
            while any(positions[p] < ends[p] for p in ends):
                if time.monotonic() > deadline:
                    raise UpstreamError(f"the credentials topic {self.topic} could not be read to its end")
                for msg in consumer.consume(500, 0.2):
                    if msg.error() is None:
                        self.apply(msg.value(), msg.key())
                        part, offset = msg.partition(), msg.offset()
                        if part is not None and offset is not None:
                            positions[part] = offset + 1
                for tp in consumer.position([TopicPartition(self.topic, p) for p in ends]):
                    if tp.offset >= 0:
                        positions[tp.partition] = max(positions[tp.partition], tp.offset)
        except (KafkaException, UpstreamError):
            consumer.close()
            raise
        log.info("credentials read", extra={"topic": self.topic, "credentials": len(self.by_id)})
        self._thread = threading.Thread(target=self._follow, args=(consumer,), name="credentials", daemon=True)
        self._thread.start()

    def _follow(self, consumer: Consumer) -> None:
        try:
            while not self._stop.is_set():
                try:
                    for msg in consumer.consume(500, 0.2):
                        if msg.error() is None:
                            self.apply(msg.value(), msg.key())
                        else:
                            log.warning("credentials topic", extra={"error": str(msg.error())})
                except KafkaException as exc:  # keep following: a revocation must still arrive
                    log.error("reading the credentials topic failed", extra={"error": str(exc)})
                    self._stop.wait(1.0)
        finally:
            consumer.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
