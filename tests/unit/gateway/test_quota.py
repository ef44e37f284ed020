"""Rate quotas (gateway.quota): Kafka's sampled rate and throttle time, what is enforced from
entitlements and caps decisions, ``throttle_time_ms`` patched into every response version that
has it, and the block answers."""

from __future__ import annotations

import dataclasses
import sys
import typing
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kio.schema.errors import ErrorCode
from kio.static.primitive import i32Timedelta, i64Timedelta

from gateway import protocol
from gateway.metering import Counted
from gateway.quota import (
    BLOCKED_FETCH_THROTTLE_MS,
    MAX_THROTTLE,
    POLICY_VIOLATION,
    ConnectionQuota,
    QuotaManager,
    SampledRate,
    blocked_answer,
    enforcement,
    patch_throttle,
    throttle_seconds,
)
from metering.entitlements import Decision, Entitlement, Limits

# -- the rate and the throttle -----------------------------------------------------------------


def test_the_rate_is_the_samples_total_over_the_time_since_the_oldest_began_at_least_one_sample() -> None:
    r = SampledRate(11, 1.0)
    r.record(500, 100.0)
    assert r.rate(100.2) == 500  # under one sample: measured over one sample, not 0.2 s
    for t in range(1, 10):
        r.record(1000, 100.0 + t)
    assert r.rate(110.0) == pytest.approx((500 + 9000) / 10)
    # samples older than the whole window (11 × 1 s) leave it
    assert r.rate(111.5) == pytest.approx(9000 / (111.5 - 101.0))
    assert r.rate(200.0) == 0


def test_the_throttle_is_kafkas_formula_capped_at_the_window() -> None:
    assert throttle_seconds(100, 100, 10) == 0
    assert throttle_seconds(300, 100, 10) == MAX_THROTTLE  # 20 s, capped at the 11 s window
    assert throttle_seconds(150, 100, 4) == pytest.approx(2.0)  # (150 − 100) / 100 × 4 s
    assert throttle_seconds(101, 100, 11) == pytest.approx(0.11)
    assert throttle_seconds(10**9, 1, 11) == MAX_THROTTLE


def test_a_client_at_three_times_its_quota_is_held_at_the_quota() -> None:
    """The mute alone (a client that ignores throttle_time_ms): a producer that would send 16 KiB
    every 1/3 of its quota's time, muted after each throttled response, averages the quota over
    any 8 s once throttled, and its first second passes about one second's quota."""
    quota, size = 1_000_000.0, 16384
    rate = SampledRate()
    t, muted, sent = 0.0, 0.0, []
    while t < 40:
        t = max(t + size / (3 * quota), muted)
        rate.record(size, t)
        sent.append(t)
        muted = t + 0.001 + rate.throttle(quota, t)
    for start in range(2, 32, 3):
        got = sum(size for s in sent if start <= s < start + 8) / 8
        assert got == pytest.approx(quota, rel=0.03), (start, got)
    assert sum(size for s in sent if s < 1) <= 1.3 * quota


# -- what is enforced --------------------------------------------------------------------------

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)


def _decision(meter: str, state: str, **kw: Any) -> Decision:
    return Decision("acme", meter, "2026-12", state, 120, 100, NOW, NOW, **kw)  # type: ignore[arg-type]


def test_enforcement_from_limits_and_decisions() -> None:
    e = Entitlement("acme", limits=Limits(1000, 2000, 50))
    assert enforcement(None, []) == enforcement(Entitlement("acme"), [])
    assert enforcement(None, []).quota("produce") is None
    got = enforcement(e, [])
    assert (got.produce, got.consume, got.requests, got.block) == (1000, 2000, 50, None)
    # a throttle decision lowers its direction's bytes rate to the floor (never raises it)
    got = enforcement(e, [_decision("produce_records", "throttle", floor_bytes_per_second=100)])
    assert (got.produce, got.consume, got.capped) == (100, 2000, frozenset({"produce"}))
    got = enforcement(e, [_decision("consume_bytes", "throttle", floor_bytes_per_second=5000)])
    assert (got.produce, got.consume) == (1000, 2000)
    got = enforcement(Entitlement("acme"), [_decision("consume_bytes", "throttle", floor_bytes_per_second=5000)])
    assert (got.produce, got.consume) == (None, 5000)
    # soft: nothing; a produce meter's block: produce (and fetch with block_fetch); a consume
    # meter's block: fetch only
    assert enforcement(e, [_decision("produce_bytes", "soft")]) == enforcement(e, [])
    produce_block = enforcement(e, [_decision("produce_bytes", "block")])
    assert produce_block.produce_block is not None and not produce_block.blocks_fetch
    assert enforcement(e, [_decision("produce_bytes", "block", block_fetch=True)]).blocks_fetch
    consume_block = enforcement(e, [_decision("consume_records", "block")])
    assert consume_block.blocks_fetch and consume_block.produce_block is None
    both = enforcement(e, [_decision("produce_bytes", "block"), _decision("consume_bytes", "block")])
    assert both.blocks_fetch and both.produce_block is not None
    assert both.produce_block.meter == "produce_bytes" and both.fetch_block.meter == "consume_bytes"  # type: ignore[union-attr]


# -- the wire ----------------------------------------------------------------------------------


def _zero(hint: Any, f: dataclasses.Field[Any] | None = None) -> Any:
    """A minimal value of a kio field type."""
    kind = f.metadata.get("kafka_type") if f is not None else None
    origin = typing.get_origin(hint)
    if origin is tuple:
        return ()
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _zero(args[0], f) if len(args) == 1 else None
    if kind == "timedelta_i32" or hint is i32Timedelta:
        return i32Timedelta.parse(timedelta(0))
    if kind == "timedelta_i64" or hint is i64Timedelta:
        return i64Timedelta.parse(timedelta(0))
    if kind == "datetime_i64":
        return datetime(2026, 1, 1, tzinfo=UTC)
    if kind == "uuid":
        return uuid.UUID(int=0)
    if kind in ("string",):
        return ""
    if kind in ("bytes", "records"):
        return b""
    if kind == "bool" or hint is bool:
        return False
    if kind == "error_code":
        return ErrorCode.none
    if dataclasses.is_dataclass(hint):
        return _instance(hint)  # type: ignore[arg-type]
    if (kind is not None and "int" in str(kind)) or kind == "float64":
        return hint(0)
    raise TypeError(f"no zero for {hint} ({kind})")


def _instance(cls: type[Any], **values: Any) -> Any:
    hints = typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))
    args = dict(values)
    for f in dataclasses.fields(cls):
        if f.name in args or f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
            continue
        args[f.name] = _zero(hints[f.name], f)
    return cls(**args)


def _frame(key: int, version: int, body: Any, correlation_id: int = 7) -> bytes:
    cls = protocol._response_type(key, version)
    tags = b"\x00" if cls.__flexible__ and key != protocol.API_VERSIONS else b""
    return correlation_id.to_bytes(4, "big") + tags + protocol.encode(body)


def _throttled_versions() -> list[tuple[int, int]]:
    out = []
    for key, (low, high) in sorted(protocol.SUPPORTED.items()):
        for version in range(low, high + 1):
            fields = {f.name for f in dataclasses.fields(protocol._response_type(key, version))}
            if "throttle_time" in fields:
                out.append((key, version))
    return out


THROTTLED = _throttled_versions()


def test_every_api_the_gateway_forwards_has_throttle_time_in_most_versions() -> None:
    keys = {k for k, _ in THROTTLED}
    assert {protocol.PRODUCE, protocol.FETCH, protocol.METADATA, 8, 9, 11, 12, 14} <= keys  # offsets, groups
    assert len(THROTTLED) > 200


@pytest.mark.parametrize(("key", "version"), THROTTLED, ids=[f"{protocol.api_name(k)}-v{v}" for k, v in THROTTLED])
def test_throttle_time_is_patched_into_every_response_version_that_has_it(key: int, version: int) -> None:
    cls = protocol._response_type(key, version)
    broker_says = i32Timedelta.parse(timedelta(milliseconds=40))
    frame = _frame(key, version, _instance(cls, throttle_time=broker_says))

    def throttle_of(f: bytes) -> timedelta:
        body = protocol.response_body_offset(f, key, version)
        value: timedelta = protocol.decode_response(f, key, version, body).throttle_time
        return value

    patched = patch_throttle(frame, key, version, 1500)
    assert patched[:4] == frame[:4] and throttle_of(patched) == timedelta(milliseconds=1500)
    # the rest of the body is untouched: the same value with the broker's throttle back in
    body = protocol.response_body_offset(patched, key, version)
    value = protocol.decode_response(patched, key, version, body)
    assert protocol.encode(dataclasses.replace(value, throttle_time=broker_says)) == frame[body:]
    assert patch_throttle(frame, key, version, 30) == frame  # the broker's larger throttle stays


def test_a_version_without_throttle_time_is_left_as_it_is() -> None:
    body = _instance(protocol._response_type(protocol.METADATA, 0))
    frame = _frame(protocol.METADATA, 0, body)
    assert patch_throttle(frame, protocol.METADATA, 0, 900) == frame


@pytest.mark.parametrize("version", range(3, 13))
def test_a_blocked_produce_is_refused_on_every_partition_with_the_reason(version: int) -> None:
    req_cls = protocol._request_type(protocol.PRODUCE, version)
    mod = sys.modules[req_cls.__module__]
    request = _instance(
        req_cls,
        topic_data=(
            _instance(
                mod.TopicProduceData,
                name="orders",
                partition_data=tuple(_instance(mod.PartitionProduceData, index=i) for i in (0, 2)),
            ),
        ),
    )
    reason = _decision("produce_bytes", "block").reason
    frame = blocked_answer(protocol.PRODUCE, version, 9, request, reason)
    assert frame[:4] == (9).to_bytes(4, "big")
    body = protocol.response_body_offset(frame, protocol.PRODUCE, version)
    resp = protocol.decode_response(frame, protocol.PRODUCE, version, body)
    parts = [(t.name, p.index, p.error_code) for t in resp.responses for p in t.partition_responses]
    assert parts == [("orders", 0, POLICY_VIOLATION), ("orders", 2, POLICY_VIOLATION)]
    messages = {getattr(p, "error_message", None) for t in resp.responses for p in t.partition_responses}
    assert messages == ({reason} if version >= 8 else {None})


@pytest.mark.parametrize("version", range(4, 13))
def test_a_blocked_fetch_is_refused_on_every_partition_and_throttled(version: int) -> None:
    req_cls = protocol._request_type(protocol.FETCH, version)
    mod = sys.modules[req_cls.__module__]
    request = _instance(
        req_cls,
        topics=(_instance(mod.FetchTopic, topic="orders", partitions=(_instance(mod.FetchPartition, partition=1),)),),
    )
    frame = blocked_answer(protocol.FETCH, version, 3, request, "over")
    body = protocol.response_body_offset(frame, protocol.FETCH, version)
    resp = protocol.decode_response(frame, protocol.FETCH, version, body)
    assert resp.throttle_time == timedelta(milliseconds=BLOCKED_FETCH_THROTTLE_MS)
    assert [(t.topic, p.partition_index, p.error_code) for t in resp.responses for p in t.partitions] == [
        ("orders", 1, POLICY_VIOLATION)
    ]


# -- the manager: what a connection gets --------------------------------------------------------


class _Store:
    def __init__(self, entitlement: Entitlement | None, decisions: list[Decision] | None = None) -> None:
        self.entitlement, self.decisions = entitlement, decisions or []

    def get(self, account: str) -> Entitlement | None:
        return self.entitlement

    def in_force(self, account: str) -> list[Decision]:
        return self.decisions


class _Conn:
    def __init__(self, account: str | None = "acme") -> None:
        self.account = account
        self.quota = ConnectionQuota()


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _produce_frame(version: int, acks: int, correlation_id: int = 5) -> tuple[bytes, int]:
    """A Produce request frame (no size prefix) and where its header's client id ends."""
    from kio.schema.request_header.v1.header import RequestHeader as HeaderV1
    from kio.schema.request_header.v2.header import RequestHeader as HeaderV2
    from kio.static.primitive import i16, i32

    from gateway.wire import parse_request_header

    req_cls = protocol._request_type(protocol.PRODUCE, version)
    mod = sys.modules[req_cls.__module__]
    request = _instance(
        req_cls,
        acks=i16(acks),
        topic_data=(
            _instance(mod.TopicProduceData, name="t", partition_data=(_instance(mod.PartitionProduceData, index=0),)),
        ),
    )
    header_cls = HeaderV2 if req_cls.__flexible__ else HeaderV1
    header = header_cls(
        request_api_key=i16(protocol.PRODUCE),
        request_api_version=i16(version),
        correlation_id=i32(correlation_id),
        client_id="c",
    )
    frame = protocol.encode(header) + protocol.encode(request)
    return frame, parse_request_header(frame).end


def _produced(n: int) -> list[Counted]:
    return [Counted("t", 0, 1, n)]


def test_a_throttle_mutes_the_connection_from_when_it_is_known_and_goes_into_the_response() -> None:
    clock = _Clock()
    manager = QuotaManager(lambda: _Store(Entitlement("acme", limits=Limits(1000, None, None))), clock)
    conn = _Conn()
    manager.requested(conn, 1, protocol.PRODUCE, _produced(900), True)  # under the quota
    assert conn.quota.muted_until == 0 and not conn.quota.throttles
    manager.requested(conn, 2, protocol.PRODUCE, _produced(1600), True)  # 2500 B in 1 s: 1.5 s
    assert conn.quota.muted_until == pytest.approx(clock.now + 1.5)
    # a request pipelined behind it waits (hold) before it is forwarded; the response carries it
    frame = _frame(protocol.PRODUCE, 9, _instance(protocol._response_type(protocol.PRODUCE, 9)), 2)
    patched = manager.answered(conn, 2, protocol.PRODUCE, 9, frame)
    body = protocol.response_body_offset(patched, protocol.PRODUCE, 9)
    assert protocol.decode_response(patched, protocol.PRODUCE, 9, body).throttle_time == timedelta(seconds=1.5)
    assert manager.answered(conn, 1, protocol.PRODUCE, 9, frame) == frame  # not throttled
    assert manager.throttled_responses == {("acme", "produce"): 1}
    assert manager.throttle_seconds[("acme", "produce")] == pytest.approx(1.5)
    # the rate is the account's: its other connection is throttled by what the first sent
    other = _Conn()
    manager.requested(other, 1, protocol.PRODUCE, _produced(10), True)
    assert other.quota.muted_until > clock.now


def test_connections_without_an_account_or_limits_are_never_throttled() -> None:
    clock = _Clock()
    manager = QuotaManager(lambda: _Store(None), clock)
    for conn in (_Conn(None), _Conn("acme")):
        manager.requested(conn, 1, protocol.PRODUCE, _produced(10**9), True)
        assert conn.quota.muted_until == 0 and not conn.quota.throttles
    assert QuotaManager(lambda: None, clock).refusal(_Conn(), b"", protocol.PRODUCE, 9, 1, 0) is None


def test_a_consume_throttle_comes_from_the_fetched_bytes_and_requests_per_second_count() -> None:
    clock = _Clock()
    manager = QuotaManager(lambda: _Store(Entitlement("acme", limits=Limits(None, 1000, 10))), clock)
    conn = _Conn()
    manager.consumed(conn, 3000)
    assert conn.quota.muted_until == pytest.approx(clock.now + 2.0)
    frame = _frame(protocol.FETCH, 12, _instance(protocol._response_type(protocol.FETCH, 12)), 4)
    patched = manager.answered(conn, 4, protocol.FETCH, 12, frame)
    body = protocol.response_body_offset(patched, protocol.FETCH, 12)
    assert protocol.decode_response(patched, protocol.FETCH, 12, body).throttle_time == timedelta(seconds=2)
    for i in range(12):  # 12 requests in a second against 10/s
        manager.requested(conn, 100 + i, protocol.METADATA, None, True)
    assert conn.quota.throttles[111] == (pytest.approx(0.2), "requests")
    # an acks=0 Produce has no response: the mute alone holds it
    manager.requested(conn, 200, protocol.PRODUCE, None, False)
    assert 200 not in conn.quota.throttles


def test_a_block_answers_produce_and_fetch_only_when_the_decision_says_so() -> None:
    clock = _Clock()
    store = _Store(Entitlement("acme"), [_decision("produce_bytes", "block")])
    manager = QuotaManager(lambda: store, clock)
    conn = _Conn()
    frame, end = _produce_frame(9, acks=-1)
    answer = manager.refusal(conn, frame, protocol.PRODUCE, 9, 5, end)
    assert answer is not None and answer[:4] == (5).to_bytes(4, "big")
    resp = protocol.decode_response(answer, protocol.PRODUCE, 9, protocol.response_body_offset(answer, 0, 9))
    assert resp.responses[0].partition_responses[0].error_message == store.decisions[0].reason
    frame0, end0 = _produce_frame(9, acks=0)
    assert manager.refusal(conn, frame0, protocol.PRODUCE, 9, 6, end0) == b""  # no answer expected
    assert manager.refusal(conn, b"", protocol.FETCH, 12, 7, 0) is None  # fetch keeps working
    assert manager.refusal(conn, b"", protocol.METADATA, 12, 8, 0) is None
    assert manager.blocked_requests == {("acme", "produce"): 2}
    assert manager.refusal(_Conn("globex"), frame, protocol.PRODUCE, 9, 5, end) is not None  # same store
    store.decisions = []
    clock.now += 1  # entitlements are re-read every 0.1 s at most
    assert manager.refusal(conn, frame, protocol.PRODUCE, 9, 5, end) is None


def test_ops_see_one_line_when_an_account_starts_and_stops_being_throttled_or_blocked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock()
    store = _Store(Entitlement("acme", limits=Limits(1000, None, None)))
    manager = QuotaManager(lambda: store, clock)
    conn = _Conn()
    with caplog.at_level("INFO", logger="gateway.quota"):
        for i in range(5):
            manager.requested(conn, i, protocol.PRODUCE, _produced(800), True)
        manager.sweep()
        clock.now += MAX_THROTTLE
        manager.sweep()
        store.decisions = [_decision("produce_bytes", "block")]
        clock.now += 1
        frame, end = _produce_frame(9, acks=-1)
        for _ in range(3):
            assert manager.refusal(conn, frame, protocol.PRODUCE, 9, 5, end)
        store.decisions = []
        clock.now += 1
        manager.sweep()
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "account limits",
        "account throttled",
        "account no longer throttled",
        "account limits",
        "account blocked",
        "account limits",
        "account no longer blocked",
    ]


def test_throttles_and_blocks_become_episodes_published_at_start_while_they_last_and_at_their_end() -> None:
    from gateway.episodes import Episodes
    from metering.entitlements import Episode, decode_episode, encode_episode

    clock = _Clock()
    start = datetime(2026, 12, 7, 12, tzinfo=UTC)
    sent: list[Episode] = []
    store = _Store(Entitlement("acme", limits=Limits(1000, None, None)))
    manager = QuotaManager(lambda: store, clock)
    manager.episodes = Episodes(
        "gw-1",
        lambda e: sent.append(decode_episode(encode_episode(e))),
        lambda: start + timedelta(seconds=clock.now - 1000),
        clock,
    )
    conn = _Conn()
    for i in range(5):  # 4000 B in a second against 1000/s
        manager.requested(conn, i, protocol.PRODUCE, _produced(800), True)
        conn.quota.muted_until = 0  # as if each hold were over: every request earns one
    first = sent[-1]
    assert len(sent) == 1 and first.ended is None and first.started == start
    assert (first.account, first.kind, first.direction, first.cause, first.limit) == (
        "acme",
        "throttle",
        "produce",
        "quota",
        1000,
    )
    assert first.id == f"gw-1/acme/throttle/produce/{int(start.timestamp() * 1000)}"
    for step in (1, 2):  # still throttled 30 s and 60 s later
        clock.now += 30
        manager.requested(conn, 10 + step, protocol.PRODUCE, _produced(50_000), True)
        conn.quota.muted_until = 0
        manager.sweep()
        assert len(sent) == step  # refreshed at most once a minute
    assert sent[-1].ended is None and sent[-1].updated == start + timedelta(seconds=60)
    clock.now += MAX_THROTTLE
    manager.sweep()  # no throttle for a whole window: the episode ended when its last hold ran out
    ended = sent[-1]
    assert ended.id == first.id and ended.ended == start + timedelta(seconds=60 + MAX_THROTTLE)
    assert ended.requests == 6  # the first 800 B were within the quota
    assert ended.held_seconds == pytest.approx(manager.throttle_seconds[("acme", "produce")], abs=0.001)
    # a block decision: an episode with its reason, the requests it refused, ended when lifted
    decision = _decision("produce_bytes", "block")
    store.decisions = [decision]
    clock.now += 1
    frame, end = _produce_frame(9, acks=-1)
    for _ in range(3):
        assert manager.refusal(conn, frame, protocol.PRODUCE, 9, 5, end)
    store.decisions = []
    clock.now += 1
    manager.sweep()
    block = sent[-1]
    assert (block.kind, block.cause, block.meter, block.reason, block.requests) == (
        "block",
        "cap",
        "produce_bytes",
        decision.reason,
        3,
    )
    assert block.ended is not None and [e.id for e in sent].count(block.id) == 2
    # a drain ends what is open
    store.entitlement = Entitlement("acme", limits=Limits(None, None, 1))
    clock.now += 1
    manager.requested(conn, 9, protocol.METADATA, None, True)
    manager.requested(conn, 10, protocol.METADATA, None, True)
    assert sent[-1].direction == "requests" and sent[-1].ended is None
    assert manager.episodes.close_all() == 1 and sent[-1].ended is not None and not manager.episodes.open


def test_a_caps_floor_makes_a_cap_throttle_episode_and_a_change_of_cause_starts_another() -> None:
    from gateway.episodes import Episodes
    from metering.entitlements import Episode

    clock = _Clock()
    sent: list[Episode] = []
    floor = _decision("produce_bytes", "throttle", floor_bytes_per_second=500)
    store = _Store(Entitlement("acme", limits=Limits(1000, None, None)), [floor])
    manager = QuotaManager(lambda: store, clock)
    manager.episodes = Episodes("gw-1", sent.append, clock=clock)
    conn = _Conn()
    manager.requested(conn, 1, protocol.PRODUCE, _produced(800), True)  # over the 500 B/s floor
    capped = sent[-1]
    assert (capped.cause, capped.meter, capped.limit, capped.reason) == ("cap", "produce_bytes", 500, floor.reason)
    store.decisions = []  # the cap lifted while acme is still over its plan rate
    clock.now += 1
    manager.requested(conn, 2, protocol.PRODUCE, _produced(5000), True)
    assert [(e.id == capped.id, e.cause, e.ended is None) for e in sent[1:]] == [
        (True, "cap", False),  # the cap's episode ends
        (False, "quota", True),  # and the plan rate's starts
    ]
    assert sent[-1].limit == 1000 and sent[-1].meter is None
