"""Cumulative counter samples → deltas, per series (``docs/formats.md``, broker metrics, rules 1–5).

Pure: the state is a plain dict the caller persists (it travels in the metering state
changelog so it survives restarts). Never adds cumulative values of different emitters: the
emitter is part of the series.
"""

from __future__ import annotations

from typing import NamedTuple

from metering.domain.events import Rejection

__all__ = ["CUMULATIVE", "DELTA", "CounterState", "Delta", "Sample", "SeriesState", "apply"]

# a sample's temporality (OTLP's AggregationTemporality numbers)
DELTA = 1
CUMULATIVE = 2


class Sample(NamedTuple):
    """One data point of a monotonic sum, with the series it belongs to."""

    series: tuple[str, ...]  # (emitter, metric, k1, v1, k2, v2 …) attributes sorted
    temporality: int
    start_ns: int
    time_ns: int
    value: int
    direction: str
    quantity: str  # "bytes" | "records"
    principal: str
    client_id: str
    virtual_cluster: str
    topic: str


class SeriesState(NamedTuple):
    start_ns: int
    time_ns: int
    value: int


CounterState = dict[tuple[str, ...], SeriesState]


class Delta(NamedTuple):
    """What a sample adds: ``amount`` at ``time_ns``; ``reset`` when the counter restarted."""

    amount: int
    reset: bool


_SKIP = Delta(0, False)


def apply(
    state: CounterState,
    s: Sample,
    meter_since_ns: int | None,
    max_rate: float,
) -> Delta | Rejection:
    """Fold one sample into ``state``; return what it adds (0 for baseline, duplicate, late).

    An implausible delta is returned as a rejection and does not move the state, so the next
    good sample is measured against the last good one.
    """
    if s.temporality == DELTA:
        interval_ns = s.time_ns - s.start_ns if s.start_ns else 0
        return _plausible(Delta(s.value, False), interval_ns, max_rate)
    last = state.get(s.series)
    has_start = s.start_ns != 0 and s.start_ns != s.time_ns
    if last is None:
        state[s.series] = SeriesState(s.start_ns, s.time_ns, s.value)
        if has_start and (meter_since_ns is None or s.start_ns >= meter_since_ns):
            got = _plausible(Delta(s.value, False), s.time_ns - s.start_ns, max_rate)
            if isinstance(got, Rejection):
                del state[s.series]
            return got
        return _SKIP
    if s.time_ns <= last.time_ns:
        return _SKIP  # duplicate (equal) or late (older): adds nothing
    if (has_start and s.start_ns != last.start_ns) or s.value < last.value:
        interval = s.time_ns - s.start_ns if has_start else s.time_ns - last.time_ns
        got = _plausible(Delta(s.value, True), interval, max_rate)
    else:
        got = _plausible(Delta(s.value - last.value, False), s.time_ns - last.time_ns, max_rate)
    if not isinstance(got, Rejection):
        state[s.series] = SeriesState(s.start_ns, s.time_ns, s.value)
    return got


def _plausible(d: Delta, interval_ns: int, max_rate: float) -> Delta | Rejection:
    seconds = max(interval_ns, 1_000_000_000) / 1e9  # an interval under 1 s is judged as 1 s
    if d.amount > max_rate * seconds:
        return Rejection(
            "counter_implausible",
            f"a delta of {d.amount} over {seconds:.0f} s is more than {max_rate:.3g} per second",
        )
    return d
