"""The credentials a gateway authenticates clients with (``GATEWAY_AUTH=streamtoll``), followed
from the credentials topic (``TOPIC_CREDENTIALS``) that streamtoll's credential store publishes to.

At start the store reads the topic to its end before the gateway opens its listeners, then keeps
following it in a thread (:class:`gateway.control.TopicFollower`): a record
replaces the credential of its key (the newest record per credential id wins, so the topic is
compacted and republishing is harmless). A credential that stops being active — revoked —
is handed to ``on_change`` on the event loop, which closes its open connections.

The gateway holds no database connection: the topic is all it knows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from gateway.control import TopicFollower
from metering.credentials import Credential, decode

__all__ = ["CredentialStore"]

log = logging.getLogger(__name__)


class CredentialStore:
    def __init__(self, kafka_config: dict[str, Any], topic: str) -> None:
        self.topic = topic
        self._follower = TopicFollower(
            kafka_config,
            topic,
            self.apply,
            name="credentials",
            missing=(
                f"the credentials topic {topic} does not exist: issue a credential first "
                "(streamtoll credentials create), or run streamtoll credentials publish"
            ),
        )
        self.by_id: dict[str, Credential] = {}
        self.by_username: dict[str, str] = {}
        self.on_change: Callable[[Credential], None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
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
        self._follower.start(timeout)
        log.info("credentials read", extra={"topic": self.topic, "credentials": len(self.by_id)})

    def stop(self) -> None:
        self._follower.stop()
