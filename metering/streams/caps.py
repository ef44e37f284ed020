"""The monthly caps fold (``streamtoll caps``): usage minutes → month-to-date usage per account
and meter → enforcement decisions the gateways follow.

Two Faust agents, one app (``<METERING_GROUP>-caps``):

1. **route** reads the usage minutes topic (``TOPIC_USAGE_MINUTES``, ``read_committed``: what an
   aborted metering transaction wrote never counts) and forwards, per batch of records and per
   account, the partials that concern a cap to the app's internal topic
   ``<METERING_GROUP>-caps-usage`` keyed by account, each with its identity: the metering shard,
   the shard's batch offset, the minute's key and the minutes partition it was read from.
   It keeps no state.
2. **fold** reads that topic (so every partial of one account reaches one worker) and keeps, per
   account, one table value (:data:`AccountState`): month-to-date usage per meter for the current
   and the previous month, the dedup watermark, and the last decision per meter. Value and
   watermark travel in one changelog record, so whatever a restart or a rebalance recovers is
   consistent with itself; after each change it compares usage with the account's caps and
   publishes a :class:`~metering.entitlements.Decision` to ``TOPIC_ENFORCEMENT`` (key
   ``decision_key(account, meter)``) when the state, the month or the cap changed — and
   otherwise at most every ``refresh_s`` (60 s) while ``used`` moves, so partners see their
   month-to-date usage. A decision is acknowledged by the broker before the table remembers it
   was made, so a crash can repeat a decision (harmless: the topic is compacted, newest wins)
   but never lose one.

Why two agents: the minutes topic is keyed by minute key (principal, client, topic, …), so one
account's partials are spread over every minutes partition, and a Faust table written from
several source partitions would keep one changelog per partition and recover whichever came last.
Re-keying by account puts each account's total in one partition, one changelog, one owner. The
route forwards a partition's records in order; a rebalance hands a minutes partition over only
after its old owner stopped (Faust flushes its producer when partitions are revoked), which keeps
the per-(shard, partition) order the dedup relies on.

What is counted (decided here; the gateway is where caps are enforced):

* Only partials of ``source == "proxy"`` (what the gateway, and any proxy, meters) whose
  principal is ``User:<account>/<credential name>`` — the credentials streamtoll issues. Other
  principals (clients of the passthrough gateway, broker-side sources, whose principal is the
  gateway's own service identity) are not capped here: plans cap partners that log in with an
  issued credential.
* Meters (:data:`~metering.entitlements.CAP_METERS`): the minute's ``direction`` (``produce``/
  ``consume``) with its ``bytes``, ``records`` and ``requests``. Denied requests are never usage.
* The month is the UTC calendar month of the minute (``month_of``); a new month starts from zero.
  Decisions are published for the current month only (a late partial of last month still updates
  last month's total, which nobody enforces any more).

Idempotence (Faust delivers at least once; a rebalance or a restart redelivers): the metering
worker publishes, per batch of one input partition (its *shard*), at most one partial per minute
key, all with the batch's ``offset``, in order — the same identity
:func:`metering.contracts.apply_minute` uses. Records of one minutes partition reach the fold in
that order, so the fold keeps, per account and per (shard, minutes partition), the highest offset
applied with the set of minute keys already applied at that offset, and skips a partial whose
offset is lower, or equal with its key in the set (:func:`fold_items`). A route redelivered after a
rebalance re-sends partials the fold has already seen: they are skipped.

Retention (decided here, documented in the README): month-to-date lives in the fold's table, whose
changelog (``<METERING_GROUP>-caps-month-to-date-changelog``) survives restarts and moves with
rebalances; the minutes topic is only read forward. A caps service started for the first time
(or with its changelog deleted) mid-month sees only what the minutes topic still holds
(``USAGE_MINUTES_RETENTION``, 1 day by default): it is not seeded from the usage windows topic
(hour totals per shard cannot be told apart from the minutes they overlap without a second
watermark scheme). Run ``streamtoll caps`` from the start, or set ``USAGE_MINUTES_RETENTION`` to
32 days where the first start may come mid-month.

Entitlements (``TOPIC_ENTITLEMENTS``, every account's caps) are read to the end by every worker
before it starts (:class:`EntitlementsFollower`; the fold waits for that), then followed by a
plain consumer thread; an account whose caps change is re-evaluated (a tick record on the
internal topic, so the table is only written by the agent that owns the account). An account with
no entitlements record is folded but never decided (nothing to enforce; and a cap is never taken
as removed because its record is not there yet). A cap removed from a plan gets an ``ok``
decision with ``included`` 0. A timer also re-evaluates, once a new month has begun, the
accounts whose last decision was not ``ok``, publishing ``ok`` for the new month (the gateways
lift caps at the month's turn by themselves).

Latency: Faust's consumer waits up to 1.5 s in a fetch; a broker that does not answer a waiting
fetch as soon as data arrives (tansu) makes each of the two hops wait it out, so the fetch wait is
300 ms here (measured: 0.25–0.35 s from the crossing minute on its topic to the decision on its).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import faust
import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from faust.transport.drivers import aiokafka as faust_aiokafka

from metering.entitlements import (
    CAP_METERS,
    Cap,
    Decision,
    Entitlement,
    decision_key,
    decode_entitlement,
    encode_decision,
    month_of,
)
from metering.settings import MeteringSettings

__all__ = [
    "AccountState",
    "CapsApp",
    "EntitlementsFollower",
    "Minute",
    "account_of",
    "decide",
    "ensure_control_topics",
    "faust_credentials",
    "fold_items",
    "route_items",
]

log = logging.getLogger("streamtoll.caps")

SOURCE = "proxy"
KEY_FIELDS = ("source", "principal", "client_id", "virtual_cluster", "topic", "direction", "minute_epoch_s")
METER_FIELDS = ("bytes", "records", "requests")
MONTHS_KEPT = 2

AccountState = dict[str, Any]
"""``{"used": {month: {meter: n}}, "applied": {"shard@partition": [offset, [minute key, …]]},
"decided": {meter: {"month", "state", "since", "used", "included", "policy", "floor",
"block_fetch", "at_s"}}}``"""


class Minute(faust.Record, serializer="json"):
    """A usage minutes record (``metering.contracts.UsageMinute``) as Faust reads it."""

    minute_start: str
    minute_epoch_s: int
    source: str
    principal: str
    client_id: str
    virtual_cluster: str
    topic: str
    direction: str
    bytes: int
    records: int
    requests: int
    denied_requests: int
    shard: str
    offset: int


def account_of(principal: str) -> str | None:
    """The account of an issued credential's principal ``User:<account>/<name>``; None otherwise."""
    if not principal.startswith("User:"):
        return None
    account, slash, name = principal[5:].partition("/")
    return account if slash and account and name else None


def route_items(minutes: Iterable[Minute | Mapping[str, Any]]) -> dict[str, list[list[Any]]]:
    """Per account, the capped partials of a batch read from one minutes partition, in order:
    ``[shard, offset, minute key, month, direction, bytes, records, requests]``."""
    out: dict[str, list[list[Any]]] = {}
    for m in minutes:
        d = m if isinstance(m, Mapping) else m.asdict()
        if d["source"] != SOURCE or d["direction"] not in ("produce", "consume"):
            continue
        account = account_of(d["principal"])
        if account is None or not (d["bytes"] or d["records"] or d["requests"]):
            continue
        key = orjson.dumps([d[f] for f in KEY_FIELDS]).decode()
        month = month_of(datetime.fromtimestamp(int(d["minute_epoch_s"]), UTC))
        out.setdefault(account, []).append(
            [d["shard"], int(d["offset"]), key, month, d["direction"], *(int(d[f]) for f in METER_FIELDS)]
        )
    return out


def empty_state() -> AccountState:
    return {"used": {}, "applied": {}, "decided": {}}


def fold_items(current: AccountState | None, partition: int, items: Iterable[list[Any]]) -> AccountState | None:
    """``current`` with the partials read from minutes ``partition`` applied once each; None when
    every one of them was applied before (nothing changed)."""
    st = current if current is not None else empty_state()
    used = {m: dict(v) for m, v in st["used"].items()}
    applied = {k: [v[0], list(v[1])] for k, v in st["applied"].items()}
    changed = False
    for shard, offset, key, month, direction, b, r, q in items:
        mark = f"{shard}@{partition}"
        seen = applied.get(mark)
        if seen is not None and (offset < seen[0] or (offset == seen[0] and key in seen[1])):
            continue
        if seen is None or offset > seen[0]:
            applied[mark] = [offset, [key]]
        else:
            seen[1].append(key)
        meters = used.setdefault(month, {})
        for meter, n in zip(METER_FIELDS, (b, r, q), strict=True):
            if n:
                name = f"{direction}_{meter}"
                meters[name] = meters.get(name, 0) + n
        changed = True
    if not changed:
        return None
    for old in sorted(used)[:-MONTHS_KEPT]:
        del used[old]
    return {**st, "used": used, "applied": applied}


def decide(
    account: str,
    state: AccountState,
    caps: Iterable[Cap],
    month: str,
    now: datetime,
    refresh_s: float = 60.0,
) -> tuple[list[Decision], AccountState]:
    """The decisions to publish for ``month`` and the state that remembers them."""
    decided = dict(state["decided"])
    used_now = state["used"].get(month, {})
    out: list[Decision] = []
    by_meter = {c.meter: c for c in caps if c.meter in CAP_METERS}
    for meter in sorted(set(by_meter) | set(decided)):
        cap = by_meter.get(meter)
        prev = decided.get(meter)
        used = int(used_now.get(meter, 0))
        if cap is None:
            if prev is None or (prev["month"] == month and prev["state"] == "ok" and prev["included"] == 0):
                continue
            cap = Cap(meter, 0, "soft")
            new_state = "ok"
        else:
            new_state = "ok" if used < cap.included else cap.policy
        terms = (cap.included, cap.policy, cap.floor_bytes_per_second, cap.block_fetch)
        moved = prev is None or (prev["month"], prev["state"]) != (month, new_state)
        if not moved and prev is not None:
            same_terms = (prev["included"], prev["policy"], prev["floor"], prev["block_fetch"]) == terms
            fresh = prev["used"] == used or now.timestamp() - prev["at_s"] < refresh_s
            if same_terms and fresh:
                continue
        since = now if moved or prev is None else datetime.fromisoformat(prev["since"])
        out.append(
            Decision(
                account=account,
                meter=meter,
                month=month,
                state=new_state,  # type: ignore[arg-type]
                used=used,
                included=cap.included,
                since=since,
                at=now,
                floor_bytes_per_second=cap.floor_bytes_per_second if new_state == "throttle" else None,
                block_fetch=cap.block_fetch if new_state == "block" else False,
            )
        )
        decided[meter] = {
            "month": month,
            "state": new_state,
            "since": since.isoformat(),
            "used": used,
            "included": cap.included,
            "policy": cap.policy,
            "floor": cap.floor_bytes_per_second,
            "block_fetch": cap.block_fetch,
            "at_s": now.timestamp(),
        }
    return out, {**state, "decided": decided}


class EntitlementsFollower:
    """Every account's entitlements, read from the topic's beginning to its end (:meth:`start`,
    before the fold decides anything), then followed in a thread (no group). ``on_change(account)``
    runs in that thread after an account's caps changed."""

    def __init__(self, kafka_config: Mapping[str, Any], topic: str) -> None:
        self.config = {
            **kafka_config,
            "group.id": "streamtoll-caps-entitlements",  # required by the client; never joins or commits
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 100,
        }
        self.topic = topic
        self.by_account: dict[str, Entitlement] = {}
        self.on_change: Callable[[str], None] | None = None
        self.ready = threading.Event()  # set once the topic was read to its end
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def entitlement(self, account: str) -> Entitlement | None:
        return self.by_account.get(account)

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        account = (key or b"").decode("utf-8", "replace")
        if value is None:
            old = self.by_account.pop(account, None)
            new = None
        else:
            try:
                new = decode_entitlement(value)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("an entitlements record that is not one was skipped", extra={"error": repr(exc)})
                return
            account = new.account
            old = self.by_account.get(account)
            self.by_account[account] = new
        if (old.caps if old else None) != (new.caps if new else None) and self.on_change is not None:
            self.on_change(account)

    def start(self, timeout: float = 60.0) -> EntitlementsFollower:
        """Read the topic to its end (raises KafkaException, TimeoutError), then follow it."""
        consumer = Consumer(self.config)
        try:
            meta = consumer.list_topics(self.topic, timeout=timeout).topics.get(self.topic)
            parts = sorted(meta.partitions) if meta is not None and meta.partitions else [0]
            ends = {p: consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=timeout)[1] for p in parts}
            consumer.assign([TopicPartition(self.topic, p, -2) for p in parts])  # -2: the beginning
            positions = dict.fromkeys(parts, 0)
            deadline = time.monotonic() + timeout
            idle = 0
            # to the ends the broker reports, then until a poll brings nothing (a broker may report
            # an end short of the real one: see the kafka-stack notes on ListOffsets)
            while any(positions[p] < ends[p] for p in parts) or idle < 2:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the entitlements topic {self.topic} could not be read to its end")
                msgs = consumer.consume(500, 0.2)
                idle = 0 if msgs else idle + 1
                for msg in msgs:
                    if msg.error() is None:
                        self.apply(msg.key(), msg.value())
                        part, offset = msg.partition(), msg.offset()
                        if part is not None and offset is not None:
                            positions[part] = offset + 1
        except BaseException:
            consumer.close()
            raise
        log.info("entitlements read", extra={"accounts": len(self.by_account)})
        self.ready.set()
        self._thread = threading.Thread(target=self._follow, args=(consumer,), name="entitlements", daemon=True)
        self._thread.start()
        return self

    def _follow(self, consumer: Consumer) -> None:
        try:
            while not self._stop.is_set():
                try:
                    for msg in consumer.consume(500, 0.2):
                        if msg.error() is None:
                            self.apply(msg.key(), msg.value())
                except KafkaException as exc:  # keep following: a change must still arrive
                    log.error("reading the entitlements topic failed", extra={"error": str(exc)})
                    self._stop.wait(1.0)
        finally:
            consumer.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


def ensure_control_topics(kafka_config: Mapping[str, Any], topics: Iterable[str], timeout: float = 15.0) -> None:
    """Create each topic (one partition, compacted) unless it exists, as the gateway does."""
    admin = AdminClient({k: v for k, v in kafka_config.items() if not k.startswith("group.")})
    existing = admin.list_topics(timeout=timeout).topics
    missing = [t for t in topics if t not in existing]
    if not missing:
        return
    futures = admin.create_topics(
        [NewTopic(t, 1, replication_factor=-1, config={"cleanup.policy": "compact"}) for t in missing],
        request_timeout=timeout,
    )
    for f in futures.values():
        try:
            f.result(timeout)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise


def faust_credentials(kafka_extra: Mapping[str, str]) -> Any:
    """Faust's credentials for the ``STREAMTOLL_KAFKA_*`` security settings every other client
    passes to librdkafka: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL with PLAIN or SCRAM-SHA-256/512,
    the CA (``ssl.ca.location``) and a client certificate. None: plaintext. Raises ValueError for
    what aiokafka cannot do here (other mechanisms, other librdkafka security options)."""
    protocol = str(kafka_extra.get("security.protocol", "PLAINTEXT")).upper()
    if protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
        raise ValueError(f"security protocol {protocol} is not one streamtoll caps can use")
    known = {
        "security.protocol",
        "sasl.mechanism",
        "sasl.username",
        "sasl.password",
        "ssl.ca.location",
        "ssl.certificate.location",
        "ssl.key.location",
    }
    other = sorted(k for k in kafka_extra if k.startswith(("sasl.", "ssl.")) and k not in known)
    if other:
        raise ValueError(f"streamtoll caps cannot use the Kafka setting(s) {', '.join(other)}")
    context = None
    if protocol.endswith("SSL"):
        context = ssl.create_default_context(cafile=kafka_extra.get("ssl.ca.location"))
        if cert := kafka_extra.get("ssl.certificate.location"):
            context.load_cert_chain(cert, kafka_extra.get("ssl.key.location"))
    if protocol.startswith("SASL_"):
        mechanism = str(kafka_extra.get("sasl.mechanism", "PLAIN")).upper()
        if mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            raise ValueError(f"SASL mechanism {mechanism} is not one streamtoll caps can use")
        return faust.SASLCredentials(
            username=kafka_extra.get("sasl.username"),
            password=kafka_extra.get("sasl.password"),
            ssl_context=context,
            mechanism=mechanism,
        )
    return None if context is None else faust.SSLCredentials(context)


def _consumer_class(isolation_level: str, fetch_max_wait_ms: int = 300) -> type[faust_aiokafka.Consumer]:
    """Faust's aiokafka consumer with our isolation level (Faust reads committed only under
    exactly_once, which tansu cannot run) and fetch wait (Faust's is 1500 ms: a broker that does
    not answer a waiting fetch when data arrives makes every hop wait it out)."""

    class Thread(faust_aiokafka.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            consumer._isolation_level = isolation_level
            consumer._fetch_max_wait_ms = fetch_max_wait_ms
            return consumer

    class CapsConsumer(faust_aiokafka.Consumer):
        def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
            return Thread(self, loop=self.loop, beacon=self.beacon)

    return CapsConsumer


class CapsApp:
    """The Faust app, its topics, table and agents, built from settings (one composition root)."""

    def __init__(
        self,
        settings: MeteringSettings,
        store: str = "memory://",
        web_port: int | None = None,
        refresh_s: float = 60.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        follower: EntitlementsFollower | None = None,
    ) -> None:
        s = self.settings = settings
        self.refresh_s = refresh_s
        self.clock = clock
        self.follower = follower or EntitlementsFollower(
            s.kafka_config() if s.kafka_bootstrap else {}, s.topic_entitlements
        )
        self.follower.on_change = self._caps_changed
        self._pending: set[str] = set()
        self._pending_lock = threading.Lock()
        self._month = month_of(clock())
        broker = ";".join(f"kafka://{h}" for h in (s.kafka_bootstrap or "localhost:9092").split(","))
        self.app = faust.App(
            f"{s.group_id}-caps",
            broker=broker,
            store=store,
            topic_partitions=s.topic_partitions,
            broker_session_timeout=s.session_timeout_ms / 1000,
            broker_heartbeat_interval=max(0.3, s.session_timeout_ms / 10_000),
            web_enabled=web_port is not None,
            web_port=web_port or 6066,
            topic_allow_declare=True,
            producer_acks=-1,
            producer_linger_ms=5,
            broker_credentials=faust_credentials(s.kafka_extra),
            # one record per batch where the broker's ListOffsets is wrong (CAPS_EMBEDDED_BROKER)
            producer_max_batch_size=1 if s.caps_embedded_broker else 16384,
        )
        # read_committed: what an aborted metering transaction wrote never counts
        self.app.transport.Consumer = _consumer_class("read_committed")  # type: ignore[misc]
        self.minutes = self.app.topic(s.topic_usage_minutes, value_type=Minute)
        self.usage = self.app.topic(
            f"{s.group_id}-caps-usage",
            key_type=str,
            value_serializer="json",
            partitions=s.topic_partitions,
            internal=True,
        )
        self.decisions = self.app.topic(s.topic_enforcement, key_serializer="raw", value_serializer="raw")
        self.table = self.app.Table("month-to-date", default=None, partitions=s.topic_partitions)
        self.route = self.app.agent(self.minutes, name="route")(self._route)
        self.fold = self.app.agent(self.usage, name="fold")(self._fold)
        self.app.timer(1.0)(self._tick)
        self.published = 0
        self.publish: Callable[[Decision], Awaitable[None]] = self._send_decision

    def _caps_changed(self, account: str) -> None:
        with self._pending_lock:
            self._pending.add(account)

    async def _route(self, stream: Any) -> Any:
        async for events in stream.take_events(1000, within=0.05):
            by_partition: dict[int, list[Minute]] = {}
            for event in events:
                by_partition.setdefault(event.message.partition, []).append(event.value)
            for partition, minutes in by_partition.items():
                for account, items in route_items(minutes).items():
                    await self.usage.send(key=account, value={"p": partition, "items": items})
            yield len(events)

    async def _fold(self, stream: Any) -> Any:
        async for account, value in stream.items():
            while not self.follower.ready.is_set():  # never decide on caps not yet read
                await asyncio.sleep(0.05)
            current = self.table.get(account)
            state = current
            if value.get("items"):
                state = fold_items(current, int(value["p"]), value["items"])
            now = self.clock()
            base = state if state is not None else current
            if base is None:
                yield []
                continue
            entitlement = self.follower.entitlement(account)
            decisions, decided = (
                ([], base)  # no entitlements record (yet): nothing to decide, not even a cap removed
                if entitlement is None
                else decide(account, base, entitlement.caps, month_of(now), now, self.refresh_s)
            )
            # published (and acknowledged) before the table remembers it: a crash in between
            # publishes the same decision again, never loses it
            for d in decisions:
                await self.publish(d)
                self.published += 1
                if d.state != "ok":
                    log.info(
                        f"cap decision: {account} {d.state}: {d.reason}",  # Faust's log format drops extras
                        extra={"account": account, "meter": d.meter, "state": d.state, "reason": d.reason},
                    )
            if state is not None or decisions:
                self.table[account] = decided
            yield decisions

    async def _send_decision(self, d: Decision) -> None:
        delivered = await self.decisions.send(key=decision_key(d.account, d.meter), value=encode_decision(d))
        await delivered  # the broker has it

    async def _tick(self) -> None:
        """Re-evaluate accounts whose caps changed, and at a new month those not ``ok``."""
        with self._pending_lock:
            accounts, self._pending = self._pending, set()
        month = month_of(self.clock())
        if month != self._month:
            self._month = month
            for account, st in list(self.table.items()):
                if st and any(d["state"] != "ok" for d in st.get("decided", {}).values()):
                    accounts.add(account)
        for account in accounts:
            await self.usage.send(key=account, value={"tick": time.time()})
        if accounts:
            await asyncio.sleep(0)

    def stop(self) -> None:
        self.follower.stop()
