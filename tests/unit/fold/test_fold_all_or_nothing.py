"""A record's effect on a shard's state is all or nothing (issue 17, "a decoder bug mid-record").

An OTLP record carries many points; each advances its counter series. If an unexpected exception
is raised after some of them advanced the counters, the record is dead-lettered (reason
``schema``) — and then none of it may have changed the state, or those points' deltas are lost:
the counters moved on, the events were never counted, and a re-delivery of the same points
measures against the advanced counters and counts nothing.
"""

from __future__ import annotations

from typing import Any

import pytest

from metering.domain import counters
from metering.fold.shard import Record, ShardConfig, ShardState
from streamtoll.dev.traffic import otlp_export, otlp_point
from tests.unit.decoders.helpers import NOW, limits

NOW_S = NOW.timestamp()
TS = int(NOW_S * 1000)  # the records' Kafka timestamps: written when the samples were taken
TOPICS = ("orders", "payments", "audit")


def export(at: float, values: tuple[int, int, int]) -> bytes:
    """One OTLP record from broker 1: three produce-bytes series (one per topic), cumulative
    since ``NOW_S - 3600``."""
    return otlp_export(
        "1",
        [
            (
                "kafka.client.produce.bytes",
                [
                    otlp_point({"principal": "User:a", "topic": t}, NOW_S - 3600, at, v)
                    for t, v in zip(TOPICS, values, strict=True)
                ],
            )
        ],
    )


def metered(out: Any) -> dict[str, int]:
    """Bytes counted per topic in a batch."""
    got: dict[str, int] = {}
    for mk, (b, *_rest) in out.minutes.items():
        got[mk[4]] = got.get(mk[4], 0) + b
    return got


def shard() -> ShardState:
    config = ShardConfig("broker_metrics", 3_600_000, 100_000, 35 * 86_400_000, None, 10e9)
    return ShardState("broker-metrics/0", config)


def test_an_exception_mid_record_leaves_the_state_as_before_and_a_redelivery_counts_it_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    st = shard()
    first = st.fold([Record(0, TS - 600_000, export(NOW_S - 600, (100, 200, 300)))], limits())
    assert metered(first) == {"orders": 100, "payments": 200, "audit": 300} and not first.rejected
    before = dict(st.counters)
    hours_before = {k: list(v) for k, v in st.hours.items()}

    real_apply = counters.apply
    calls = 0

    def apply_failing_on_the_second_point(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("a bug")
        return real_apply(*args)

    monkeypatch.setattr(counters, "apply", apply_failing_on_the_second_point)
    record = Record(1, TS - 300_000, export(NOW_S - 300, (150, 260, 370)))
    failed = st.fold([record], limits())
    assert calls == 2  # the first point had been applied when the second one raised
    assert [(r.offset(), rej.reason) for r, rej in failed.rejected] == [(1, "schema")]
    assert failed.counted == 0 and not failed.minutes and not failed.hours
    assert st.counters == before  # nothing of the record changed the counters
    assert {k: list(v) for k, v in st.hours.items()} == hours_before

    # the bug fixed, the same points re-delivered count their full deltas
    monkeypatch.setattr(counters, "apply", real_apply)
    again = st.fold([Record(2, TS - 299_000, export(NOW_S - 300, (150, 260, 370)))], limits())
    assert not again.rejected
    assert metered(again) == {"orders": 50, "payments": 60, "audit": 70}
    assert [v.value for v in st.counters.values()] == [150, 260, 370]


def test_a_record_with_a_rejected_point_still_counts_its_good_points() -> None:
    """All or nothing is about exceptions: a point the rules reject (an implausible delta) is
    dead-lettered alone and the record's other points count, as before."""
    st = shard()
    st.fold([Record(0, TS - 600_000, export(NOW_S - 600, (100, 200, 300)))], limits())
    out = st.fold([Record(1, TS - 599_000, export(NOW_S - 599, (150, 10**15, 370)))], limits())
    assert [rej.reason for _, rej in out.rejected] == ["counter_implausible"]
    assert metered(out) == {"orders": 50, "audit": 70}
