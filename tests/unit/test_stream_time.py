"""``too_old`` and ``future`` are judged against the shard's stream time, never the wall clock.

The rule (issue 17, risk 3): a shard's *stream time* at a record is the newest Kafka timestamp
among its partition's records up to and including that record, in offset order. An event is
``too_old`` when its time is before stream time − ``MAX_LATENESS``, ``future`` when it is after
stream time + ``MAX_FUTURE_SKEW``; a held hourly window is dropped once it ends before stream
time − ``MAX_LATENESS``. A replay of the same records therefore judges every record the same way
whatever the clock says when it runs. The expected outcomes below are worked out from that rule
by hand (times and sizes chosen so each record is clearly on one side of a limit), never read
back from the implementation.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from metering.decoders.common import Limits
from metering.fold.shard import HOUR_MS, Record, ShardConfig, ShardState
from streamtoll.dev.traffic import otlp_export, otlp_point, rfc3339

DAY_MS = 86_400_000
MINUTE_MS = 60_000
LATENESS_MS = 35 * DAY_MS
SKEW_MS = 5 * MINUTE_MS
T = 1_794_312_000_000  # 2026-11-10T12:00:00Z: the newest Kafka timestamp of most tests


def cfg(kind: str = "proxy") -> ShardConfig:
    return ShardConfig(kind, 3_600_000, 100_000, LATENESS_MS, None, 10e9)


def wall(now_ms: int) -> Limits:
    """The limits a worker would pass, with ``now_ms`` as its wall clock."""
    return Limits(now_ms, LATENESS_MS, SKEW_MS, 2**31)


def proxy(ev_id: str, t_ms: int, nbytes: int = 10, principal: str = "User:a") -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": ev_id,
            "source": "//p",
            "type": "io.streamtoll.kafka.produce",
            "time": rfc3339(t_ms / 1000),
            "subject": principal,
            "data": {"topic": "orders", "records": 1, "bytes": nbytes},
        }
    ).encode()


def audit(ev_id: str, t_ms: int) -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": ev_id,
            "source": "crn:///kafka=abc",
            "type": "io.confluent.kafka.server/authorization",
            "time": rfc3339(t_ms / 1000),
            "data": {
                "methodName": "kafka.Produce",
                "authenticationInfo": {"principal": "User:a"},
                "authorizationInfo": {"granted": True, "resourceType": "Topic", "resourceName": "orders"},
                "request": {"client_id": "cli-1"},
            },
        }
    ).encode()


def counter(t_ms: int, value: int) -> bytes:
    """A fresh cumulative counter whose start is set a minute before: its first sample counts whole."""
    point = otlp_point({"principal": "User:a", "topic": "orders"}, (t_ms - MINUTE_MS) / 1000, t_ms / 1000, value)
    return otlp_export("1", [("kafka.client.produce.bytes", [point])])


def hour(t_ms: int) -> int:
    return t_ms - t_ms % HOUR_MS


def proxy_window(t_ms: int, principal: str = "User:a") -> tuple[tuple[str, ...], int]:
    return (("proxy", principal, "", "", "orders", "produce"), hour(t_ms))


def reasons(result: Any) -> dict[int, str]:
    """Input offset → DLQ reason of every rejected record of a fold."""
    return {rec.offset(): rej.reason for rec, rej in result.rejected}


def outcome(result: Any, state: ShardState) -> dict[str, Any]:
    """Everything a fold publishes or keeps, in plain (comparable) values."""
    return {
        "rejected": sorted((rec.offset(), rej.reason, rej.detail) for rec, rej in result.rejected),
        "hours": {k: list(v) for k, v in result.hours.items()},
        "minutes": {k: list(v) for k, v in result.minutes.items()},
        "changelog": orjson.loads(orjson.dumps(result.changelog)),
        "counts": (result.counted, result.duplicates, result.tombstones, result.ignored, result.next_offset),
        "snapshot": orjson.loads(orjson.dumps(state.snapshot())),
    }


def batches() -> list[list[Record]]:
    """A partition's records in three batches, with Kafka timestamps going 40 days back and
    forth (a mirrored backlog, then live traffic) and event times on both sides of each limit."""
    old = T - 40 * DAY_MS
    return [
        [  # a backlog produced 40 days ago (explicit timestamps): stream time is old - 40 d
            Record(0, old, proxy("b0", old - 2 * HOUR_MS, 5)),
            Record(1, old + 1_000, proxy("b1", old - 34 * DAY_MS, 7)),  # 34 d late: counted
            Record(2, old + 2_000, proxy("b2", old - 36 * DAY_MS, 9)),  # 36 d late: too_old
            Record(3, old + 3_000, proxy("b3", old + 4 * MINUTE_MS, 11)),  # 4 min ahead: counted
            Record(4, old + 4_000, proxy("b4", old + 10 * MINUTE_MS, 13)),  # 10 min ahead: future
            Record(5, old + 5_000, proxy("b0", old - 2 * HOUR_MS, 5)),  # a retry of b0
        ],
        [  # live traffic: stream time jumps to T; the backlog's hours end long before T - 35 d
            Record(6, T - 1_000, proxy("l0", T - 3 * HOUR_MS, 17)),
            Record(7, T, proxy("l1", T - 30 * DAY_MS, 19)),
            Record(8, T - 5_000, proxy("l2", T - 36 * DAY_MS, 23)),  # too_old against T, not its own ts
            Record(9, T - 9 * MINUTE_MS, proxy("l3", T + 3 * MINUTE_MS, 29)),  # ahead of its ts, within skew of T
            Record(10, T - HOUR_MS, proxy("l4", T + 8 * MINUTE_MS, 31)),  # future against T
            Record(11, T, None),
        ],
        [Record(12, T + 2_000, proxy("l5", T - 2 * DAY_MS, 37)), Record(13, T + 2_000, proxy("l1", T - 30 * DAY_MS))],
    ]


def run(now_ms: int) -> list[dict[str, Any]]:
    state = ShardState("proxy-audit/0", cfg())
    return [outcome(state.fold(b, wall(now_ms)), state) for b in batches()]


@pytest.mark.parametrize("clock", [T - 60 * DAY_MS, T + 60 * DAY_MS, T + 400 * DAY_MS])
def test_the_same_batches_fold_identically_whatever_the_wall_clock(clock: int) -> None:
    """Rejections, hourly totals, minutes, changelog and kept state do not depend on the clock:
    a replay after an abort or a restart, at any time, publishes what the first run did."""
    assert run(clock) == run(T)


def test_the_rule_applied_by_hand_to_the_same_batches() -> None:
    """What the batches above must give (worked out from the stream-time rule, not read back)."""
    old = T - 40 * DAY_MS
    state = ShardState("proxy-audit/0", cfg())
    first, second, third = (state.fold(b, wall(T + 123 * DAY_MS)) for b in batches())
    assert reasons(first) == {2: "too_old", 4: "future"}
    assert (first.counted, first.duplicates) == (3, 1)
    assert first.hours == {
        proxy_window(old - 2 * HOUR_MS): [5, 1, 1, 0],
        proxy_window(old - 34 * DAY_MS): [7, 1, 1, 0],
        proxy_window(old + 4 * MINUTE_MS): [11, 1, 1, 0],
    }
    assert reasons(second) == {8: "too_old", 10: "future"}
    assert second.hours == {
        proxy_window(T - 3 * HOUR_MS): [17, 1, 1, 0],
        proxy_window(T - 30 * DAY_MS): [19, 1, 1, 0],
        proxy_window(T + 3 * MINUTE_MS): [29, 1, 1, 0],
    }
    assert reasons(third) == {} and third.duplicates == 1
    assert third.hours == {proxy_window(T - 2 * DAY_MS): [37, 1, 1, 0]}
    # the backlog's windows end before T - 35 d: no longer held (no late record can reach them)
    held = {(tuple(h[:6]), h[6]) for h in state.snapshot()["hours"]}
    assert not held & set(first.hours)


def _window_of(kind: str, t_ms: int) -> tuple[tuple[str, ...], int]:
    source = {"proxy": "proxy", "audit_log": "audit_log", "broker_metrics": "broker_metrics"}[kind]
    client = "cli-1" if kind == "audit_log" else ""
    return ((source, "User:a", client, "", "orders", "produce"), hour(t_ms))


@pytest.mark.parametrize(
    ("kind", "value", "totals"),
    [
        ("proxy", lambda t: proxy("e1", t, 4_321), [4_321, 1, 1, 0]),
        ("audit_log", lambda t: audit("a1", t), [0, 0, 1, 0]),
        ("broker_metrics", lambda t: counter(t, 9_876), [9_876, 0, 0, 0]),
    ],
)
def test_a_record_forty_days_old_by_the_clock_counts_when_its_kafka_time_is_that_old_too(
    kind: str, value: Any, totals: list[int]
) -> None:
    """A backlog replayed (or mirrored) with its original Kafka timestamps, 40 days back, whose
    events happened a day before their Kafka time: 41 days old by the wall clock, one day late
    by stream time, so counted in its hourly window."""
    now = T
    kafka_ts = now - 40 * DAY_MS
    event = kafka_ts - DAY_MS - 17 * MINUTE_MS
    state = ShardState(f"{kind}/0", cfg(kind))
    out = state.fold([Record(0, kafka_ts, value(event))], wall(now))
    assert reasons(out) == {}
    assert {k: list(v) for k, v in out.hours.items()} == {_window_of(kind, event): totals}


def test_too_old_is_judged_against_the_newest_kafka_timestamp_seen_before_in_the_partition() -> None:
    """An event 36 days before the partition's stream time is too_old even though its own Kafka
    timestamp is that old too (and the wall clock, two days behind, would accept it); one 34
    days before is counted."""
    clock = wall(T - 2 * DAY_MS)
    state = ShardState("proxy-audit/0", cfg())
    assert reasons(state.fold([Record(0, T, proxy("live", T - 2 * DAY_MS))], clock)) == {}
    late = state.fold(
        [
            Record(1, T - 36 * DAY_MS, proxy("old", T - 36 * DAY_MS - HOUR_MS, 3)),
            Record(2, T - 36 * DAY_MS, proxy("ok", T - 34 * DAY_MS, 5)),
        ],
        clock,
    )
    assert reasons(late) == {1: "too_old"}
    assert {k: list(v) for k, v in late.hours.items()} == {proxy_window(T - 34 * DAY_MS): [5, 1, 1, 0]}


def test_stream_time_follows_offset_order_within_a_batch() -> None:
    """The same two records in either offset order: the old one is judged against the newest
    timestamp up to itself, so it counts when it comes first and is too_old when it follows.
    Counted, it is published in its window even though the live record behind it in the same
    batch moves stream time past that window's lateness (a counted record is never lost)."""
    old_ts = T - 36 * DAY_MS
    old_event = old_ts - HOUR_MS  # an hour before its own Kafka time: fine until the live one
    clock = wall(T - 2 * DAY_MS)
    first = ShardState("proxy-audit/0", cfg()).fold(
        [Record(0, old_ts, proxy("old", old_event, 3)), Record(1, T, proxy("live", T - 2 * DAY_MS, 5))], clock
    )
    assert reasons(first) == {}
    assert {k: list(v) for k, v in first.hours.items()} == {
        proxy_window(old_event): [3, 1, 1, 0],
        proxy_window(T - 2 * DAY_MS): [5, 1, 1, 0],
    }
    after = ShardState("proxy-audit/0", cfg()).fold(
        [Record(0, T, proxy("live", T - 2 * DAY_MS, 5)), Record(1, old_ts, proxy("old", old_event, 3))], clock
    )
    assert reasons(after) == {1: "too_old"}
    assert {k: list(v) for k, v in after.hours.items()} == {proxy_window(T - 2 * DAY_MS): [5, 1, 1, 0]}


def test_future_is_judged_against_stream_time() -> None:
    """With the wall clock a day ahead, an event 8 minutes past the partition's newest Kafka
    timestamp is future and one 4 minutes past it counts; with the clock a day behind, an event
    a minute past its own Kafka time counts (nothing is ahead of the stream)."""
    ahead = wall(T + DAY_MS)
    state = ShardState("proxy-audit/0", cfg())
    assert reasons(state.fold([Record(0, T, proxy("now", T, 10))], ahead)) == {}
    out = state.fold(
        [
            Record(1, T - HOUR_MS, proxy("far", T + 8 * MINUTE_MS, 3)),
            Record(2, T - HOUR_MS, proxy("near", T + 4 * MINUTE_MS, 5)),
            Record(3, T - HOUR_MS, proxy("self", T + 6 * MINUTE_MS, 7)),  # stream time is still T
        ],
        ahead,
    )
    assert reasons(out) == {1: "future", 3: "future"}
    # "near" shares the hour of "now": the window's full total is both
    assert {k: list(v) for k, v in out.hours.items()} == {proxy_window(T + 4 * MINUTE_MS): [10 + 5, 2, 2, 0]}
    # the record's own Kafka timestamp is part of its stream time
    own = ShardState("proxy-audit/0", cfg()).fold(
        [Record(0, T, proxy("x", T + MINUTE_MS, 11)), Record(1, T, proxy("y", T + 10 * MINUTE_MS, 13))],
        wall(T - DAY_MS),
    )
    assert reasons(own) == {1: "future"}
    assert {k: list(v) for k, v in own.hours.items()} == {proxy_window(T + MINUTE_MS): [11, 1, 1, 0]}


def test_a_window_weeks_back_keeps_its_full_total_while_stream_time_allows_late_records() -> None:
    """A window 34 days behind the stream is still held: a late record updates it to the full
    total of both records, whatever the wall clock (here 40 days past the window)."""
    event = T - 34 * DAY_MS + 10 * MINUTE_MS
    clock = wall(T + 6 * DAY_MS)
    state = ShardState("proxy-audit/0", cfg())
    state.fold([Record(0, event + MINUTE_MS, proxy("w1", event, 100))], clock)
    state.fold([Record(1, T, proxy("live", T, 1))], clock)  # stream time: 34 days past the window
    out = state.fold([Record(2, T, proxy("w2", event + MINUTE_MS, 20))], clock)
    assert reasons(out) == {}
    assert {k: list(v) for k, v in out.hours.items()} == {proxy_window(event): [120, 2, 2, 0]}


def test_stream_time_survives_a_restore_from_the_changelog() -> None:
    """Stream time belongs to the partition, not to the process: a shard rebuilt from the
    changelog after a restart judges the next record as the live one would have."""
    clock = wall(T - 2 * DAY_MS)
    live = ShardState("proxy-audit/0", cfg())
    log = [orjson.loads(orjson.dumps(live.fold([Record(0, T, proxy("live", T - 2 * DAY_MS))], clock).changelog))]
    log.append(orjson.loads(orjson.dumps(live.snapshot())))
    rebuilt = ShardState("proxy-audit/0", cfg())
    for entry in log:
        rebuilt.replay(entry)
    nxt = [Record(1, T - 36 * DAY_MS, proxy("old", T - 36 * DAY_MS - HOUR_MS, 3))]
    assert reasons(rebuilt.fold(nxt, clock)) == {1: "too_old"}
    assert reasons(live.fold(nxt, clock)) == {1: "too_old"}
