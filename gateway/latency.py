"""Upstream latency: how long the broker took to answer each forwarded request, by API.

Measured from the moment the gateway wrote a request to its upstream connection to the moment
it read the response's frame (before the gateway decodes or rewrites it). Kafka answers in order
on a connection, so a response queued behind a slower one on the same connection includes that
wait, as a client would see it. A Fetch's time includes the broker's wait for data (the request's
``max_wait_ms``, 500 ms by default in most clients): an idle consumer's fetches sit near that
value by design, not because the broker is slow.

Plain counters (no lock: the proxy runs on one event loop; a scrape reads a copy) exposed by
:mod:`gateway.metrics` as the histogram ``streamtoll_gateway_upstream_latency_seconds{api}``.
"""

from __future__ import annotations

from bisect import bisect_left

__all__ = ["BUCKETS", "LatencyHistogram"]

# upper bounds in seconds: sub-millisecond local brokers up to a Fetch's long waits
BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class LatencyHistogram:
    """Per API key: a count per bucket (the last one +Inf, not cumulative) and the sum."""

    def __init__(self) -> None:
        self.counts: dict[int, list[int]] = {}
        self.sums: dict[int, float] = {}

    def observe(self, api_key: int, seconds: float) -> None:
        counts = self.counts.get(api_key)
        if counts is None:
            counts = self.counts[api_key] = [0] * (len(BUCKETS) + 1)
            self.sums[api_key] = 0.0
        counts[bisect_left(BUCKETS, seconds)] += 1
        self.sums[api_key] += seconds

    def snapshot(self) -> dict[int, tuple[list[tuple[str, int]], float]]:
        """Per API key: cumulative ``(le, count)`` pairs ending with ``+Inf``, and the sum."""
        out = {}
        for key, counts in list(self.counts.items()):
            cumulative, total = [], 0
            for bound, n in zip((*(repr(b) for b in BUCKETS), "+Inf"), list(counts), strict=True):
                total += n
                cumulative.append((bound, total))
            out[key] = (cumulative, self.sums[key])
        return out
