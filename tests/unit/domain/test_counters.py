from __future__ import annotations

from metering.domain.counters import CUMULATIVE, DELTA, CounterState, Delta, Sample, apply
from metering.domain.events import Rejection

S = 1_000_000_000
RATE = 10e9


def sample(value: int, t: int, start: int = 100, temporality: int = CUMULATIVE, series: str = "a") -> Sample:
    return Sample(
        ("1", "m", "topic", series),
        temporality,
        start * S if start else 0,
        t * S,
        value,
        "produce",
        "bytes",
        "User:a",
        "c",
        "",
        "orders",
    )


def run(samples: list[Sample], since: int | None = None) -> list[Delta | Rejection]:
    state: CounterState = {}
    return [apply(state, s, since, RATE) for s in samples]


def amounts(got: list[Delta | Rejection]) -> list[object]:
    return [g.amount if isinstance(g, Delta) else g.reason for g in got]


def test_first_sample_with_start_counts_whole_value_then_deltas() -> None:
    assert amounts(run([sample(500, 160), sample(800, 220), sample(800, 280)])) == [500, 300, 0]


def test_first_sample_without_start_or_before_meter_since_is_baseline() -> None:
    assert amounts(run([sample(500, 160, start=0), sample(800, 220, start=0)])) == [0, 300]
    assert amounts(run([sample(500, 160, start=160)])) == [0]  # start == time: not set
    assert amounts(run([sample(500, 160), sample(700, 220)], since=150 * S)) == [0, 200]
    assert amounts(run([sample(500, 160)], since=100 * S)) == [500]


def test_duplicate_and_late_add_nothing() -> None:
    assert amounts(run([sample(500, 160), sample(500, 160), sample(400, 150), sample(900, 220)])) == [500, 0, 0, 400]


def test_reset_by_value_or_start_time() -> None:
    got = run([sample(500, 160), sample(800, 220), sample(50, 280), sample(120, 340)])
    assert amounts(got) == [500, 300, 50, 70]
    assert [g.reset for g in got if isinstance(g, Delta)] == [False, False, True, False]
    got = run([sample(500, 160), sample(900, 280, start=250)])
    assert amounts(got) == [500, 900] and isinstance(got[1], Delta) and got[1].reset


def test_implausible_delta_is_rejected_and_state_kept() -> None:
    got = run([sample(500, 160), sample(500 + 11 * 10**9 * 60, 220), sample(900, 280)])
    assert amounts(got) == [500, "counter_implausible", 400]


def test_series_are_independent() -> None:
    got = run([sample(500, 160, series="a"), sample(10, 160, series="b"), sample(600, 220, series="a")])
    assert amounts(got) == [500, 10, 100]


def test_delta_points_used_as_they_are() -> None:
    assert amounts(run([sample(5, 160, temporality=DELTA), sample(5, 160, temporality=DELTA)])) == [5, 5]
