"""The audit writer: proxy audit events into the journal on disk, and from there, in order, to
the proxy audit topic through an idempotent producer.

* :meth:`AuditWriter.write` (the event loop, before the response goes back to the client)
  appends the events to the journal (:mod:`gateway.journal`): one ``write`` — a process kill
  after it loses nothing. ``GATEWAY_JOURNAL_FSYNC`` decides when they also reach the disk
  itself: ``always`` makes a Produce response wait for an ``fsync`` covering its events (group
  commit: one ``fsync`` for every response waiting at that moment), a duration fsyncs at most
  that often in the background (an OS crash or power loss can lose that much).
* A sender thread hands the journal's events to the producer in seq order, at most
  :data:`WINDOW` at a time, and confirms each the audit cluster acknowledged; the journal
  forgets what is confirmed. When a delivery fails (the topic is unavailable, past
  ``message.timeout.ms``) the sender lets the rest of the window finish, waits (0.5 s, doubling
  to 10 s), and sends again from the first unconfirmed event, skipping those already delivered.
  So while the audit topic cannot take events they wait on disk, and go out in order when it
  can; at start everything the journal holds unconfirmed is sent (an event delivered just before
  a kill, whose confirmation was not written yet, goes again with the same ``id``: the worker's
  dedup drops the copy).
* When the journal is full, ``GATEWAY_JOURNAL_FULL`` decides: ``refuse`` (the default) — the
  proxy answers Produce and Fetch as a broker under pressure does (:meth:`accepting` is false)
  until it has room again; ``drop`` — events that do not fit are dropped, counted (``dropped``)
  and logged as errors.

Idempotence (``enable.idempotence``, ``acks=all``) keeps librdkafka's own retries from writing
an event twice or out of order within a partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from gateway.journal import Journal

__all__ = ["DROP", "REFUSE", "STUCK_AFTER", "WINDOW", "AuditWriter"]

log = logging.getLogger(__name__)

REFUSE, DROP = "refuse", "drop"
WINDOW = 50_000  # events handed to the producer and not yet reported, at most
STUCK_AFTER = 30.0  # seconds the oldest event may wait before /healthz calls the journal stuck
CONFIRM_EVERY = 0.1  # seconds between writes of the journal's confirmation mark
_LOG_EVERY = 5.0


class AuditWriter:
    def __init__(
        self,
        kafka_config: Mapping[str, str | int | float | bool],
        topic: str,
        journal: Journal,
        *,
        on_full: str = REFUSE,
        fsync: float | None = 1.0,  # seconds between background fsyncs; None: before each response
        ensure_topic: Callable[[], None] | None = None,
    ) -> None:
        self.topic = topic
        self.journal = journal
        self.on_full = on_full
        self.fsync_interval = fsync
        self.written = 0  # appended to the journal
        self.delivered = 0  # acknowledged by the audit cluster
        self.failed = 0  # delivery attempts that failed (the events stay in the journal, sent again)
        self.dropped = 0  # never journaled (journal full under the drop policy, or the disk refused): unmetered
        self.replayed = journal.recovered  # unconfirmed at start: sent again
        self._config = dict(kafka_config)
        self._producer = self._new_producer()
        self._mark = journal.confirmed  # every seq up to it is delivered
        self._done: set[int] = set()  # delivered seqs above the mark
        self._gaps: dict[int, int] = {}  # seqs the journal lost (first → after the last)
        self._inflight = 0
        self._error: KafkaError | None = None
        self._fatal = False
        self._broken_until = 0.0  # the disk refused a write: refuse traffic until then
        self._logged: dict[str, float] = {}
        self._dropped_logged = 0
        self._stop = threading.Event()
        self._deadline = float("inf")
        self._wake = threading.Event()
        # fsync before responses (GATEWAY_JOURNAL_FSYNC=always): futures of the event loop
        self._synced = journal.next_seq - 1
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._waiters_lock = threading.Lock()
        self._dirty = threading.Event()
        if journal.recovered:
            log.warning(
                "the audit journal holds events not confirmed delivered: sending them again",
                extra={"events": journal.recovered, "torn_bytes": journal.torn_bytes},
            )
        self._topic_ready = threading.Event()
        if ensure_topic is None:
            self._topic_ready.set()
        else:  # its own thread: a check that hangs on an unreachable cluster holds up nothing else
            threading.Thread(target=self._check_topic, args=(ensure_topic,), name="audit-topic", daemon=True).start()
        self._sender = threading.Thread(target=self._send, name="audit-sender", daemon=True)
        self._sender.start()
        self._syncer: threading.Thread | None = None
        if fsync is None:
            self._syncer = threading.Thread(target=self._sync_always, name="journal-sync", daemon=True)
            self._syncer.start()

    def _new_producer(self) -> Producer:
        return Producer(
            {
                **self._config,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 20,
                "compression.type": "lz4",
                "queue.buffering.max.messages": 2 * WINDOW,
                "message.timeout.ms": 30_000,
                "reconnect.backoff.max.ms": 1000,
                "error_cb": self._client_error,
            }
        )

    # -- the event loop's side ----------------------------------------------------------------

    def write(self, events: Sequence[tuple[bytes, bytes]]) -> None:
        """Journal events (each keyed by principal); the sender takes them from there."""
        if not events:
            return
        if self.on_full == DROP and self.journal.full():
            self._drop(len(events), "the audit journal is full")
            return
        try:
            self.journal.append(events)
        except OSError as exc:
            self._broken_until = time.monotonic() + 1.0
            self._drop(len(events), f"the audit journal cannot be written ({exc})")
            return
        self.written += len(events)
        self._wake.set()

    def _drop(self, n: int, why: str) -> None:
        self.dropped += n
        if self._due("drop"):
            log.error(
                f"{why}: audit events dropped, their usage is NOT metered",
                extra={
                    "dropped": n,
                    "dropped_since_last_line": self.dropped - self._dropped_logged,
                    "dropped_total": self.dropped,
                    "journal_bytes": self.journal.bytes(),
                    "journal_max_bytes": self.journal.max_bytes,
                },
            )
            self._dropped_logged = self.dropped

    def accepting(self) -> bool:
        """Whether the proxy may forward a Produce or Fetch now (false only under the refuse
        policy, while the journal is full or its disk refuses writes)."""
        if self.on_full == DROP:
            return True
        return not self.journal.full() and time.monotonic() >= self._broken_until

    def synced(self) -> asyncio.Future[None] | None:
        """Under ``GATEWAY_JOURNAL_FSYNC=always``: a future done when everything journaled so far
        is fsynced (the Produce response waits for it); otherwise None."""
        if self._syncer is None:
            return None
        target = self.journal.next_seq - 1
        if target <= self._synced:
            return None
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._waiters_lock:
            self._waiters.append((target, fut))
        self._dirty.set()
        return fut

    def pending(self) -> int:
        return self.journal.depth()

    def age(self) -> float:
        """Seconds the oldest unconfirmed event has waited (0 when none waits)."""
        oldest = self.journal.oldest_ms()
        return 0.0 if oldest is None else max(0.0, time.time() - oldest / 1000)

    def health(self) -> tuple[bool, dict[str, Any]]:
        age = self.age()
        full = self.journal.full()
        info: dict[str, Any] = {
            "events": self.journal.depth(),
            "bytes": self.journal.bytes(),
            "age_s": round(age, 1),
            "full": full,
            "stuck": age > STUCK_AFTER,
        }
        if self._error is not None:
            info["audit_error"] = str(self._error)
        return self.accepting(), {"journal": info}

    # -- the sender thread --------------------------------------------------------------------

    def _client_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = True
        if self._due("client"):
            log.warning("audit producer: " + str(err), extra={"journal_events": self.journal.depth()})

    def _report(self, seq: int, err: KafkaError | None, msg: Message) -> None:
        self._inflight -= 1
        if err is None:
            self.delivered += 1
            self._done.add(seq)
            return
        self.failed += 1
        if err.fatal():
            self._fatal = True
        if self._error is None:
            self._error = err

    def _advance(self) -> None:
        mark, done, gaps = self._mark, self._done, self._gaps
        while True:
            if mark + 1 in done:
                done.remove(mark + 1)
                mark += 1
            elif mark + 1 in gaps:
                mark = gaps.pop(mark + 1) - 1
            else:
                break
        self._mark = mark

    def _due(self, what: str) -> bool:
        now = time.monotonic()
        if now - self._logged.get(what, -_LOG_EVERY) >= _LOG_EVERY:
            self._logged[what] = now
            return True
        return False

    def _send(self) -> None:
        cursor = self._mark + 1
        backoff = 0.5
        next_confirm = next_sync = time.monotonic()
        synced = self.journal.next_seq - 1
        while True:
            now = time.monotonic()
            stopping = self._stop.is_set()
            if stopping and (
                now >= self._deadline
                or not self._topic_ready.is_set()
                or self._error is not None  # the topic is failing: the events wait on disk for the next start
                or (self._inflight == 0 and self._mark >= self.journal.next_seq - 1)
            ):
                break
            if not self._topic_ready.is_set():
                self._topic_ready.wait(0.05)
                continue
            self._producer.poll(0)
            self._advance()
            if self._mark > self.journal.confirmed and (now >= next_confirm or stopping):
                self.journal.confirm(self._mark)
                next_confirm = now + CONFIRM_EVERY
            if self.fsync_interval is not None and now >= next_sync and self.journal.next_seq - 1 > synced:
                synced = self.journal.sync()
                next_sync = now + self.fsync_interval
            if self._error is not None:
                if self._inflight:
                    self._producer.poll(0.05)
                    continue
                if self._due("rewind"):
                    log.warning(
                        "the audit topic did not take events: they wait in the journal and are sent again in order",
                        extra={"error": str(self._error), "journal_events": self.journal.depth()},
                    )
                if self._fatal:
                    self._producer = self._new_producer()
                    self._fatal = False
                self._error = None
                cursor = self._mark + 1
                self._stop.wait(min(backoff, max(0.0, self._deadline - now)))
                backoff = min(backoff * 2, 10.0)
                continue
            sent = 0
            room = WINDOW - self._inflight
            if room > 0:
                for seq, key, value in self.journal.read(cursor, min(room, 10_000)):
                    if seq > cursor:  # lost with a corrupt segment: nothing to send
                        self._gaps[cursor] = seq
                    if seq not in self._done:
                        try:
                            self._producer.produce(self.topic, value, key, on_delivery=partial(self._report, seq))
                        except BufferError:
                            break
                        self._inflight += 1
                        sent += 1
                    cursor = seq + 1
            if sent:
                backoff = 0.5
            elif self._inflight:
                self._producer.poll(0.02)
            else:
                self._wake.wait(0.05)
                self._wake.clear()
        self._advance()
        if self._mark > self.journal.confirmed:
            self.journal.confirm(self._mark)

    def _check_topic(self, ensure: Callable[[], None]) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                ensure()
            except Exception as exc:  # the audit cluster is unreachable: events wait on disk
                if self._due("ensure"):
                    log.warning(
                        "the audit topic cannot be checked: events wait in the journal",
                        extra={"error": str(exc), "journal_events": self.journal.depth()},
                    )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            else:
                self._topic_ready.set()
                return

    def _sync_always(self) -> None:
        while not self._stop.is_set() or self._waiters:
            if not self._dirty.wait(0.1):
                continue
            self._dirty.clear()
            covered = self.journal.sync()
            self._synced = covered
            with self._waiters_lock:
                ready = [f for s, f in self._waiters if s <= covered]
                self._waiters = [(s, f) for s, f in self._waiters if s > covered]
            if ready:
                with contextlib.suppress(RuntimeError):  # the event loop is closed: nobody waits
                    ready[0].get_loop().call_soon_threadsafe(_resolve, ready)

    def close(self, timeout: float = 30.0) -> int:
        """Send what the journal holds (for up to ``timeout`` seconds), then stop; returns how many
        events are still in the journal (they go out at the next start)."""
        self._deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        self._sender.join()
        if self._syncer is not None:
            self._dirty.set()
            self._syncer.join()
        self._producer.purge()
        self._producer.flush(0)
        left = self.journal.depth()
        self.journal.close()
        if left:
            log.error(
                "audit events not delivered at shutdown: they wait in the journal for the next start",
                extra={"events": left, "journal": str(self.journal.dir)},
            )
        return left


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for f in futures:
        if not f.done():
            f.set_result(None)
