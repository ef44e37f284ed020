from gateway.latency import BUCKETS, LatencyHistogram


def test_observations_land_in_cumulative_buckets_with_their_sum() -> None:
    h = LatencyHistogram()
    for seconds in (0.0001, 0.0005, 0.003, 0.6, 99.0):
        h.observe(1, seconds)
    h.observe(0, 0.002)
    buckets, total = h.snapshot()[1]
    counts = dict(buckets)
    assert [b for b, _ in buckets] == [repr(b) for b in BUCKETS] + ["+Inf"]
    assert counts["0.0005"] == 2  # an upper bound is inclusive (le)
    assert counts["0.005"] == 3
    assert counts["0.75"] == 4
    assert counts["30.0"] == 4 and counts["+Inf"] == 5
    assert abs(total - 99.6036) < 1e-9
    assert dict(h.snapshot()[0][0])["+Inf"] == 1
