"""Throttle and block episodes: each period an account was held or refused by this gateway, as
:class:`metering.entitlements.Episode` records on ``TOPIC_ENFORCEMENT_EVENTS`` for partners
(billing stores them: ``GET /v1/entitlements``, the statement) and ops.

**When an episode starts and ends** (:class:`Episodes`, fed by :class:`gateway.quota.QuotaManager`
on the event loop, no I/O):

* ``throttle`` — one per account and direction (``produce``, ``consume``, ``requests``): it
  starts with the first response throttled (the ``account throttled`` log line) and ends when the
  account has not been throttled for a whole quota window, 11 s (``account no longer
  throttled``). Its ``ended`` is when the last hold it gave ran out (not the end of the quiet
  window). ``cause`` is ``quota`` (the plan's rate; ``limit`` is it) or ``cap`` (a monthly cap's
  throttle decision lowered the rate to its floor; ``meter`` and ``reason`` are the decision's,
  ``limit`` the floor). A cause that changes while the account is held (a decision arrives or is
  lifted) ends the episode and starts another. ``held_seconds`` adds up the time each of its
  connections was muted (the ``streamtoll_gateway_throttle_seconds_total`` metric's share);
  ``requests`` counts the responses that carried a throttle.
* ``block`` — a cap's ``block`` decision, from the first request the gateway sees of the account
  after the decision is in force (``account blocked``) to the first check (at most a second
  later) after it is lifted (``account no longer blocked``): a new month, a plan change, an
  ``ok`` decision. ``requests`` counts Produce and Fetch requests refused; ``held_seconds`` is 0.

**When it is published** (:class:`EpisodePublisher`): at start, at most every
:data:`REFRESH_SECONDS` while it lasts (the heartbeat's sweep, once a second, sends those due),
at its end, and when the gateway stops (SIGTERM's drain ends every open episode then). The key
is the episode's ``id``, so the compacted topic keeps its newest record. The producer is
idempotent (``acks=all``); :meth:`EpisodePublisher.publish` only enqueues (librdkafka's own
queue, never blocking the event loop) and a thread polls for deliveries; a record the cluster
does not take within ``message.timeout.ms`` is logged and its episode published again at the
next refresh or end (the newest state is what matters). A gateway killed without draining leaves
its open episodes open: readers end them at their ``updated`` after two minutes
(:meth:`~metering.entitlements.Episode.ended_by`).

The gateway's name in each record (``gateway``, and the ``id``'s first part) is
``GATEWAY_INSTANCE_ID``, by default ``<host name>:<listen port>``. The id's last part is the start
in epoch milliseconds, one more when an episode of the same account, kind and direction started in
that millisecond (a cause changing ends one and starts the next at once): ids never repeat.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from metering.entitlements import Decision, Episode, encode_episode

__all__ = ["REFRESH_SECONDS", "EpisodePublisher", "Episodes"]

log = logging.getLogger(__name__)

REFRESH_SECONDS = 60.0  # an open episode is published again at most this often


@dataclass
class _Open:
    episode: Episode
    published: float  # monotonic, when last handed to the publisher
    last_until: float = 0.0  # monotonic: when the latest hold of a throttle runs out


class Episodes:
    """The open episodes of this gateway, per (account, kind, direction); what to publish and when.

    ``publish`` receives each record to send (None: nothing is sent); ``wall`` and ``clock`` are
    the UTC and monotonic clocks."""

    def __init__(
        self,
        gateway: str = "",
        publish: Callable[[Episode], None] | None = None,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gateway = gateway
        self.publish = publish
        self.publisher: EpisodePublisher | None = None  # its delivery counts, for /metrics
        self.wall = wall
        self.clock = clock
        self.open: dict[tuple[str, str, str], _Open] = {}
        self.published = 0
        self._last_ms: dict[tuple[str, str, str], int] = {}  # ids stay unique: one episode may follow another at once

    def _send(self, o: _Open, now: float) -> None:
        o.published = now
        if self.publish is not None:
            self.publish(o.episode)
            self.published += 1

    def _start(self, account: str, kind: str, direction: str, **fields: Any) -> _Open:
        at = self.wall()
        key = (account, kind, direction)
        started_ms = max(int(at.timestamp() * 1000), self._last_ms.get(key, -1) + 1)
        self._last_ms[key] = started_ms
        episode = Episode(
            id=f"{self.gateway}/{account}/{kind}/{direction}/{started_ms}",
            gateway=self.gateway,
            account=account,
            kind=kind,  # type: ignore[arg-type]
            direction=direction,  # type: ignore[arg-type]
            started=at,
            updated=at,
            **fields,
        )
        o = self.open[key] = _Open(episode, self.clock())
        self._send(o, o.published)
        return o

    def _end(self, key: tuple[str, str, str], ended: datetime | None = None) -> None:
        o = self.open.pop(key, None)
        if o is None:
            return
        at = self.wall()
        ended = at if ended is None else max(min(ended, at), o.episode.started)
        o.episode = replace(o.episode, updated=at, ended=ended)
        self._send(o, self.clock())

    # -- throttles -------------------------------------------------------------------------------

    def throttled(self, account: str, direction: str, limit: float, cap: Decision | None) -> None:
        """A response of ``account`` in ``direction`` earned a throttle (held to ``limit`` per
        second; ``cap``: the throttle decision whose floor it is)."""
        key = (account, "throttle", direction)
        cause, meter = ("cap", cap.meter) if cap is not None else ("quota", None)
        o = self.open.get(key)
        if o is not None and (o.episode.cause != cause or o.episode.meter != meter):
            self._end(key)
            o = None
        if o is None:
            unit = "requests" if direction == "requests" else f"{direction} bytes"
            reason = cap.reason if cap is not None else f"plan rate: {unit} above {int(limit)} per second"
            o = self._start(account, "throttle", direction, cause=cause, reason=reason, limit=int(limit), meter=meter)
        elif o.episode.limit != int(limit):
            o.episode = replace(o.episode, limit=int(limit))
        o.episode = replace(o.episode, requests=o.episode.requests + 1)

    def held(self, account: str, direction: str, seconds: float, until: float) -> None:
        """A connection of ``account`` is muted ``seconds`` more, until ``until`` (monotonic)."""
        o = self.open.get((account, "throttle", direction))
        if o is not None:
            o.episode = replace(o.episode, held_seconds=o.episode.held_seconds + seconds)
            o.last_until = max(o.last_until, until)

    def unthrottled(self, account: str, direction: str) -> None:
        """Not throttled for a whole window: the episode ended when its last hold ran out."""
        o = self.open.get((account, "throttle", direction))
        if o is None:
            return
        ago = max(0.0, self.clock() - o.last_until) if o.last_until else 0.0
        self._end((account, "throttle", direction), self.wall() - timedelta(seconds=ago))

    # -- blocks ---------------------------------------------------------------------------------

    def blocked(self, account: str, decision: Decision) -> None:
        key = (account, "block", decision.direction)
        if key not in self.open:
            self._start(
                account,
                "block",
                decision.direction,
                cause="cap",
                reason=decision.reason,
                meter=decision.meter,
            )

    def refused(self, account: str, decision: Decision) -> None:
        o = self.open.get((account, "block", decision.direction))
        if o is not None:
            o.episode = replace(o.episode, requests=o.episode.requests + 1)

    def unblocked(self, account: str) -> None:
        for key in [k for k in self.open if k[0] == account and k[1] == "block"]:
            self._end(key)

    # -- the heartbeat and the drain --------------------------------------------------------------

    def refresh(self, every: float = REFRESH_SECONDS) -> None:
        """Publish each open episode last published ``every`` seconds ago or more."""
        now = self.clock()
        for o in self.open.values():
            if now - o.published >= every:
                o.episode = replace(o.episode, updated=self.wall())
                self._send(o, now)

    def close_all(self) -> int:
        """The gateway stops: every open episode ends now (a throttle: when its last hold ends,
        if that is sooner). Returns how many."""
        keys = list(self.open)
        for account, kind, direction in keys:
            if kind == "throttle":
                self.unthrottled(account, direction)
            else:
                self._end((account, kind, direction))
        return len(keys)


class EpisodePublisher:
    """Sends episodes to ``topic`` (key = id) with an idempotent producer, polled by a thread."""

    def __init__(
        self,
        kafka_config: Mapping[str, Any],
        topic: str,
        ensure_topic: Callable[[], None] | None = None,
    ) -> None:
        self.topic = topic
        self.delivered = 0
        self.failed = 0
        self._producer = Producer(
            {
                **kafka_config,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.timeout.ms": 30_000,
                "reconnect.backoff.max.ms": 1000,
            }
        )
        self._stop = threading.Event()
        self._ensure = ensure_topic
        self._poller = threading.Thread(target=self._poll, name="episodes-producer", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        if self._ensure is not None:  # the topic is created here: an unreachable cluster holds up nothing else
            backoff = 0.5
            while not self._stop.is_set():
                try:
                    self._ensure()
                    break
                except Exception as exc:  # polling must go on whatever the check raised
                    log.warning(
                        "the episodes topic cannot be checked yet", extra={"topic": self.topic, "error": str(exc)}
                    )
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 10.0)
        while not self._stop.is_set():
            self._producer.poll(0.2)

    def _done(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.delivered += 1
            return
        self.failed += 1
        log.error(
            "an enforcement episode was not published (sent again at its next refresh or end)",
            extra={"topic": self.topic, "key": (msg.key() or b"").decode(errors="replace"), "error": str(err)},
        )

    def publish(self, episode: Episode) -> None:
        """Enqueue (never blocks): librdkafka sends it and the thread reports the delivery."""
        try:
            self._producer.produce(self.topic, encode_episode(episode), episode.id.encode(), on_delivery=self._done)
        except (BufferError, KafkaException) as exc:
            self.failed += 1
            log.error(
                "an enforcement episode could not be queued",
                extra={"topic": self.topic, "episode": episode.id, "error": str(exc)},
            )

    def close(self, timeout: float = 10.0) -> int:
        """Deliver what is queued (at most ``timeout`` seconds); how many were left undelivered."""
        self._stop.set()
        self._poller.join(timeout)
        left: int = self._producer.flush(timeout)
        if left:
            log.error("enforcement episodes not delivered at stop", extra={"topic": self.topic, "left": left})
        return left
