"""Per-account rate quotas and the monthly caps' ``throttle`` and ``block`` decisions, enforced on
the wire with Kafka's own throttle semantics (KIP-219).

**What is measured, per account and per gateway instance** (the rate is shared by every
connection of the account on this gateway; N gateways let an account through at up to N× its
rate, as Kafka's per-broker quotas do):

* ``produce`` — record-batch bytes of Produce requests (what the audit events meter), when the
  request is read;
* ``consume`` — record-batch bytes of Fetch responses (the metered bytes), when the response
  comes back from the broker;
* ``requests`` — every request the gateway forwards (a count, not Kafka's request-time
  percentage: the gateway does not see broker CPU time; requests it answers itself — SASL,
  ApiVersions before authentication, refusals — are not counted).

**The rate** (:class:`SampledRate`) is Kafka's sampled rate: samples of
:data:`SAMPLE_SECONDS` (``quota.window.size.seconds``), :data:`WINDOW_SAMPLES` of them
(``quota.window.num``, 11 × 1 s), a new sample starting when the current one is a sample long,
samples older than the whole window dropped; rate = sum of the samples ÷ the time since the
oldest sample started. **One deliberate difference:** Kafka pads that time to at least
``num − 1`` samples (10 s), which lets a fresh client through at up to 10 s × quota before the
first throttle, and then holds it almost still until that burst ages out: a producer at 3× its
quota then swings between 3× and ~0 with an 11 s period (simulated), so an 8 s measurement can
be anywhere from 0.3× to 1.4×. Here the time is at least one sample (1 s): the first throttle
comes after about one second's quota, and the rate holds at the quota from then on.
As in Kafka, the rate is an average over the window: an account that used less than its quota
in the last 11 s bursts until the average reaches it (at most 11 s × quota) before a throttle.

**The throttle** when the rate is above the quota after recording a value:
``(rate − quota) ÷ quota × window`` seconds (Kafka's formula: the time after which the same bytes
spread over window + throttle make the quota), capped at :data:`MAX_THROTTLE` (the whole window).
A response carries the largest throttle of its request's directions.

**What clients see (KIP-219).** The response goes back at once with ``throttle_time_ms`` set to
the larger of the broker's and the gateway's (patched into every response version that has the
field — Produce v3+, Fetch, Metadata v3+, … — in place where the field comes first in the body,
decoded and re-encoded for Produce and the few others), and the gateway forwards no further
request of that client connection for the throttle time (the connection is *muted*, as Kafka
mutes the channel), counted from when the throttle is known (a Produce's: when it is read). A
broker reads one request per connection at a time; clients pipeline through the gateway
(librdkafka keeps many Produce requests in flight), and a mute starting only when the response
goes out let every request already sent through in a burst (measured: up to 3.7× the quota in a
second, 1.16–1.95× over 8 s). Clients that honour ``throttle_time_ms`` (librdkafka, the Java
client) wait by themselves; clients that do not (or request versions without the field, or an ``acks=0``
Produce, which gets no response and is muted at once) are held by the mute. Older request
versions get the same (Kafka delayed their responses instead; the mute holds them either way).
A Fetch response is delivered with its data and the connection muted from then (Kafka instead
answers an empty fetch when throttled and caps the fetch size to the quota window; here a burst
above the quota is bounded by one fetch response — the client's ``fetch.max.bytes`` — and the
average is held).

**Caps decisions** (:meth:`gateway.control.EntitlementStore.in_force`, this month's, not ``ok``):

* ``throttle``: the decision's direction (``produce_*`` meters: produce, ``consume_*``:
  consume) is held to ``floor_bytes_per_second`` (the lower of it and the plan's rate); a
  throttle decision without a floor changes nothing (logged by the store as it arrives).
* ``block`` of a produce meter: every Produce of the account is answered by the gateway — each
  partition ``POLICY_VIOLATION`` (44) with the decision's reason as its error message (Produce
  v8+; older versions carry the code only) — nothing forwarded, nothing metered; an ``acks=0``
  Produce is dropped unanswered. Fetch keeps working unless the decision says ``block_fetch``.
  ``block`` of a consume meter: Fetch is answered the same way (each partition 44, throttled
  :data:`BLOCKED_FETCH_THROTTLE_MS` so consumers do not spin); Produce keeps working. The refused
  Fetch answers with fetch session 0, so a client in an incremental fetch session (KIP-227, the
  Java client) starts a full one when it fetches again.
* ``soft``: nothing on the wire.

Entitlements and decisions are re-read at most every :data:`REFRESH_SECONDS` per account, so a
change reaches traffic within that after the store has it (logged, ``account limits``, when the
account next sends something). The gateway logs one line when an account starts being throttled
in a direction and when it has not been throttled for a whole window, and when it starts and
stops being blocked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway import protocol
from gateway.episodes import Episodes
from metering.entitlements import Decision, Entitlement

if TYPE_CHECKING:
    from gateway.metering import Counted

__all__ = [
    "BLOCKED_FETCH_THROTTLE_MS",
    "DIRECTIONS",
    "MAX_THROTTLE",
    "POLICY_VIOLATION",
    "SAMPLE_SECONDS",
    "WINDOW_SAMPLES",
    "ConnectionQuota",
    "Enforcement",
    "QuotaManager",
    "SampledRate",
    "blocked_answer",
    "enforcement",
    "patch_throttle",
    "throttle_seconds",
]

log = logging.getLogger(__name__)

WINDOW_SAMPLES = 11  # Kafka's quota.window.num
SAMPLE_SECONDS = 1.0  # Kafka's quota.window.size.seconds
MAX_THROTTLE = WINDOW_SAMPLES * SAMPLE_SECONDS
REFRESH_SECONDS = 0.1
BLOCKED_FETCH_THROTTLE_MS = 1000
POLICY_VIOLATION = 44
DIRECTIONS = ("produce", "consume", "requests")


class SampledRate:
    """Kafka's sampled rate over ``samples`` × ``sample_seconds`` (times in seconds, any
    monotonic clock), measured over at least one sample (not ``samples − 1``: module docstring)."""

    def __init__(self, samples: int = WINDOW_SAMPLES, sample_seconds: float = SAMPLE_SECONDS) -> None:
        self.samples = samples
        self.sample_seconds = sample_seconds
        self._samples: deque[list[float]] = deque()  # [start, total]

    def _purge(self, now: float) -> None:
        horizon = self.samples * self.sample_seconds
        while self._samples and now - self._samples[0][0] >= horizon:
            self._samples.popleft()

    def record(self, value: float, now: float) -> None:
        self._purge(now)
        if not self._samples or now >= self._samples[-1][0] + self.sample_seconds:
            self._samples.append([now, 0.0])
        self._samples[-1][1] += value

    def window(self, now: float) -> float:
        """The time the rate is measured over: since the oldest sample began, at least one sample."""
        self._purge(now)
        if not self._samples:
            return self.sample_seconds
        return max(now - self._samples[0][0], self.sample_seconds)

    def rate(self, now: float) -> float:
        window = self.window(now)
        return sum(total for _, total in self._samples) / window

    def throttle(self, quota: float, now: float) -> float:
        """Seconds to hold a client whose rate is this one (0 at or under ``quota``)."""
        return throttle_seconds(self.rate(now), quota, self.window(now))


def throttle_seconds(rate: float, quota: float, window: float, cap: float = MAX_THROTTLE) -> float:
    """Kafka's throttle time: ``(rate − quota) / quota × window``, capped; 0 at or under the quota."""
    if rate <= quota:
        return 0.0
    if quota <= 0:
        return cap
    return min(cap, (rate - quota) / quota * window)


@dataclass(frozen=True)
class Enforcement:
    """What applies to one account now: its rates (``None``: unlimited) and the block in force."""

    produce: float | None = None
    consume: float | None = None
    requests: float | None = None
    block: Decision | None = None
    capped: frozenset[str] = frozenset()  # directions a throttle decision lowered
    floors: tuple[Decision, ...] = ()  # those throttle decisions
    produce_block: Decision | None = None  # a produce meter's block: Produce refused
    fetch_block: Decision | None = None  # a consume meter's block, or a produce one's with block_fetch

    def floor(self, direction: str) -> Decision | None:
        """The throttle decision holding ``direction`` to its floor, if one does."""
        return next((d for d in self.floors if d.direction == direction), None)

    @property
    def blocks_fetch(self) -> bool:
        return self.fetch_block is not None

    def quota(self, direction: str) -> float | None:
        value: float | None = getattr(self, direction)
        return value


def _lower(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def enforcement(entitlement: Entitlement | None, decisions: Iterable[Decision]) -> Enforcement:
    """Pure: the rates and blocks of an account from its entitlements and its decisions in force.
    A produce meter's block refuses Produce (and Fetch with ``block_fetch``); a consume meter's
    refuses Fetch only. ``block`` (logged, made an episode) is the one that also blocks fetch if
    any (then the earliest)."""
    limits = entitlement.limits if entitlement is not None else None
    produce: float | None = None if limits is None else limits.produce_bytes_per_second
    consume: float | None = None if limits is None else limits.consume_bytes_per_second
    requests: float | None = None if limits is None else limits.requests_per_second
    block: Decision | None = None
    produce_block: Decision | None = None
    fetch_block: Decision | None = None
    capped: set[str] = set()
    floors: list[Decision] = []
    for d in sorted(decisions, key=lambda d: (d.since, d.meter)):
        if d.state == "throttle" and d.floor_bytes_per_second is not None:
            capped.add(d.direction)
            floors.append(d)
            if d.direction == "produce":
                produce = _lower(produce, d.floor_bytes_per_second)
            else:
                consume = _lower(consume, d.floor_bytes_per_second)
        elif d.state == "block":
            fetch = d.block_fetch or d.direction == "consume"
            if block is None or (fetch and not (block.block_fetch or block.direction == "consume")):
                block = d
            if d.direction == "produce" and produce_block is None:
                produce_block = d
            if fetch and fetch_block is None:
                fetch_block = d
    return Enforcement(
        None if produce is None else float(produce),
        None if consume is None else float(consume),
        None if requests is None else float(requests),
        block,
        frozenset(capped),
        tuple(floors),
        produce_block,
        fetch_block,
    )


def _other_block(a: Decision, b: Decision) -> bool:
    """Not the same block (a decision republished with newer usage is the same one)."""
    return (a.meter, a.since) != (b.meter, b.since)


# -- the wire ---------------------------------------------------------------------------------


@functools.cache
def _throttle_first(api_key: int, version: int) -> bool | None:
    """True: ``throttle_time`` is the body's first field; False: elsewhere; None: absent."""
    names = [f.name for f in dataclasses.fields(protocol._response_type(api_key, version))]
    if "throttle_time" not in names:
        return None
    return names[0] == "throttle_time"


def patch_throttle(frame: bytes, api_key: int, version: int, throttle_ms: int) -> bytes:
    """A response frame (correlation id first) whose ``throttle_time_ms`` is at least
    ``throttle_ms``; unchanged if the version has no such field or already says more."""
    layout = _throttle_first(api_key, version)
    if layout is None:
        return frame
    throttle_ms = min(throttle_ms, 2**31 - 1)
    body = protocol.response_body_offset(frame, api_key, version)
    if layout:
        current = int.from_bytes(frame[body : body + 4], "big", signed=True)
        if current >= throttle_ms:
            return frame
        return frame[:body] + throttle_ms.to_bytes(4, "big", signed=True) + frame[body + 4 :]
    import datetime

    from kio.static.primitive import i32Timedelta

    value = protocol.decode_response(frame, api_key, version, body)
    if value.throttle_time >= datetime.timedelta(milliseconds=throttle_ms):
        return frame
    throttle = i32Timedelta.parse(datetime.timedelta(milliseconds=throttle_ms))
    return frame[:body] + protocol.encode(dataclasses.replace(value, throttle_time=throttle))


def blocked_answer(api_key: int, version: int, correlation_id: int, request: Any, reason: str) -> bytes:
    """The response frame (correlation id first) refusing a blocked account's Produce or Fetch:
    every partition ``POLICY_VIOLATION`` with ``reason`` as the error message where the version
    has one (Produce v8+); a Fetch is throttled :data:`BLOCKED_FETCH_THROTTLE_MS`."""
    import datetime

    from kio.schema.errors import ErrorCode
    from kio.static.primitive import i32, i32Timedelta, i64

    if api_key == protocol.PRODUCE:
        return protocol.produce_error_answer(version, correlation_id, request, POLICY_VIOLATION, reason)
    if api_key != protocol.FETCH:
        raise ValueError(f"no block answer for {protocol.api_name(api_key)}")
    cls = protocol._response_type(api_key, version)
    mod = sys.modules[cls.__module__]
    build = protocol._build
    topics = tuple(
        build(
            mod.FetchableTopicResponse,
            topic=t.topic,
            partitions=tuple(
                build(
                    mod.PartitionData,
                    partition_index=p.partition,
                    error_code=ErrorCode(POLICY_VIOLATION),
                    high_watermark=i64(-1),
                    last_stable_offset=i64(-1),
                    log_start_offset=i64(-1),
                    records=None,
                )
                for p in t.partitions
            ),
        )
        for t in request.topics
    )
    throttle = i32Timedelta.parse(datetime.timedelta(milliseconds=BLOCKED_FETCH_THROTTLE_MS))
    body = build(cls, throttle_time=throttle, error_code=ErrorCode.none, session_id=i32(0), responses=topics)
    return protocol.answer_frame(cls, correlation_id, body)


# -- state --------------------------------------------------------------------------------------


@dataclass
class ConnectionQuota:
    """One client connection's throttle state: muted until (monotonic), and the throttle each
    request in flight earned (correlation id → seconds, direction)."""

    muted_until: float = 0.0
    throttles: dict[int, tuple[float, str]] = field(default_factory=dict)
    fetched: tuple[float, str] | None = None  # the consume throttle of the response being answered


@dataclass
class _Account:
    rates: dict[str, SampledRate] = field(default_factory=lambda: {d: SampledRate() for d in DIRECTIONS})
    enforcement: Enforcement = field(default_factory=Enforcement)
    checked: float = -math.inf
    throttled_at: dict[str, float] = field(default_factory=dict)  # direction → last throttle given
    blocked: Decision | None = None  # the block being enforced (logged once)


class QuotaManager:
    """The quota state of a gateway: per account, its rates and what is in force; per connection,
    its mute. Connections without an account (no streamtoll credential) are never touched.

    ``store`` gives the :class:`gateway.control.EntitlementStore` (or None); counters feed
    ``gateway.metrics``."""

    def __init__(self, store: Callable[[], Any], clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.clock = clock
        self.accounts: dict[str, _Account] = {}
        self.throttle_seconds: Counter[tuple[str, str]] = Counter()  # (account, direction) → seconds held
        self.throttled_responses: Counter[tuple[str, str]] = Counter()  # (account, direction)
        self.blocked_requests: Counter[tuple[str, str]] = Counter()  # (account, api name)
        self.episodes = Episodes()  # throttle and block episodes (gateway.episodes); run.py names and publishes

    def _account(self, account: str, now: float) -> _Account:
        state = self.accounts.get(account)
        if state is None:
            state = self.accounts[account] = _Account()
        if now - state.checked >= REFRESH_SECONDS:
            state.checked = now
            store = self.store()
            if store is not None:
                new = enforcement(store.get(account), store.in_force(account))
                if new != state.enforcement:
                    log.info(
                        "account limits",
                        extra={
                            "account": account,
                            "produce_bytes_per_second": new.produce,
                            "consume_bytes_per_second": new.consume,
                            "requests_per_second": new.requests,
                            "blocked_by": None if new.block is None else new.block.meter,
                        },
                    )
                state.enforcement = new
        return state

    # -- hooks of gateway.proxy.Connection -------------------------------------------------------

    async def hold(self, conn: Any) -> None:
        """KIP-219's mute: a throttled connection's next request waits until its throttle ends."""
        delay = conn.quota.muted_until - self.clock()
        if delay > 0:
            await asyncio.sleep(delay)

    def refusal(self, conn: Any, frame: bytes, key: int, version: int, correlation_id: int, end: int) -> bytes | None:
        """The answer to a blocked account's Produce or Fetch (``b""``: an ``acks=0`` Produce,
        no answer); None: not blocked, go on."""
        account = conn.account
        if account is None or key not in (protocol.PRODUCE, protocol.FETCH):
            return None
        state = self._account(account, self.clock())
        block = state.enforcement.block
        self._log_block(account, state, block)
        refusing = state.enforcement.produce_block if key == protocol.PRODUCE else state.enforcement.fetch_block
        if refusing is None:  # a consume cap's block leaves Produce alone; a produce one Fetch, unless it says
            return None
        self.blocked_requests[(account, protocol.api_name(key))] += 1
        self.episodes.refused(account, block or refusing)  # the account's block episode counts it
        request = protocol.decode_request(frame, key, version, protocol.request_body_offset(frame, key, version, end))
        if key == protocol.PRODUCE and request.acks == 0:
            return b""
        return blocked_answer(key, version, correlation_id, request, refusing.reason)

    def requested(
        self, conn: Any, correlation_id: int, key: int, produced: list[Counted] | None, expects_response: bool
    ) -> None:
        """A request is being forwarded: record it (and a Produce's bytes); the throttle it earned
        goes with its response, or mutes the connection now when no response will come."""
        account = conn.account
        if account is None:
            return
        now = self.clock()
        state = self._account(account, now)
        throttle = self._record(account, state, "requests", 1, now)
        if key == protocol.PRODUCE and produced:
            throttle = max(throttle, self._record(account, state, "produce", sum(c.bytes for c in produced), now))
        if throttle[0] <= 0:
            return
        self._mute(account, conn, throttle, now)
        if expects_response:
            conn.quota.throttles[correlation_id] = throttle

    def consumed(self, conn: Any, fetched_bytes: int) -> None:
        """A Fetch response carries ``fetched_bytes`` (metered) to the client: record them."""
        account = conn.account
        if account is None or not fetched_bytes:
            return
        now = self.clock()
        throttle = self._record(account, self._account(account, now), "consume", fetched_bytes, now)
        if throttle[0] > 0:
            self._mute(account, conn, throttle, now)
            conn.quota.fetched = throttle

    def answered(self, conn: Any, correlation_id: int, key: int, version: int, frame: bytes) -> bytes:
        """The response frame as it goes to the client, with the throttle its request (or, for a
        Fetch, its response) earned in ``throttle_time_ms``."""
        q = conn.quota
        throttle = q.throttles.pop(correlation_id, None) if q.throttles else None
        if q.fetched is not None:
            throttle = q.fetched if throttle is None else max(throttle, q.fetched)
            q.fetched = None
        if throttle is None or conn.account is None:
            return frame
        self.throttled_responses[(conn.account, throttle[1])] += 1
        return patch_throttle(frame, key, version, math.ceil(throttle[0] * 1000))

    # -- inside -------------------------------------------------------------------------------

    def _record(self, account: str, state: _Account, direction: str, value: float, now: float) -> tuple[float, str]:
        rate = state.rates[direction]
        rate.record(value, now)
        quota = state.enforcement.quota(direction)
        if quota is None:
            return 0.0, direction
        throttle = rate.throttle(quota, now)
        if throttle > 0:
            if direction not in state.throttled_at:
                log.info(
                    "account throttled",
                    extra={
                        "account": account,
                        "direction": direction,
                        "quota_per_second": quota,
                        "rate_per_second": round(rate.rate(now), 1),
                        "reason": "monthly cap: floor rate" if direction in state.enforcement.capped else "plan rate",
                    },
                )
            state.throttled_at[direction] = now
            self.episodes.throttled(account, direction, quota, state.enforcement.floor(direction))
        return throttle, direction

    def _mute(self, account: str, conn: Any, throttle: tuple[float, str], now: float) -> None:
        """Hold the connection's next requests for the throttle, from when it is known (module
        docstring: pipelined requests)."""
        seconds, direction = throttle
        q = conn.quota
        until = now + seconds
        held = until - max(q.muted_until, now)
        if held > 0:
            q.muted_until = until
            self.throttle_seconds[(account, direction)] += held
            self.episodes.held(account, direction, held, until)

    def _log_block(self, account: str, state: _Account, block: Decision | None) -> None:
        if block is not None and state.blocked is None:
            log.warning(
                "account blocked",
                extra={
                    "account": account,
                    "meter": block.meter,
                    "fetch": state.enforcement.blocks_fetch,
                    "reason": block.reason,
                },
            )
            self.episodes.blocked(account, block)
        elif block is None and state.blocked is not None:
            log.info("account no longer blocked", extra={"account": account, "meter": state.blocked.meter})
            self.episodes.unblocked(account)
        elif block is not None and state.blocked is not None and _other_block(block, state.blocked):
            self.episodes.unblocked(account)  # another decision blocks now: a new episode, with its reason
            self.episodes.blocked(account, block)
        state.blocked = block

    def sweep(self) -> None:
        """Once a second: log the accounts whose throttling ended (none for a whole window) or
        whose block was lifted."""
        now = self.clock()
        for account, state in list(self.accounts.items()):
            for direction, at in list(state.throttled_at.items()):
                if now - at >= MAX_THROTTLE:
                    del state.throttled_at[direction]
                    log.info("account no longer throttled", extra={"account": account, "direction": direction})
                    self.episodes.unthrottled(account, direction)
            if state.blocked is not None:
                self._log_block(account, state, self._account(account, now).enforcement.block)
        self.episodes.refresh()
