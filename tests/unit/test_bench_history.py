"""``bench memory --hours`` meters the history it claims: every record is one the worker accepts
(none too old, even 840 hours back an hour later, none in the future) and the records make
exactly series × hours × 2 hourly windows, each record its own event."""

from __future__ import annotations

from metering.decoders import proxy
from metering.decoders.common import Limits
from metering.fold.shard import HOUR_MS
from streamtoll.dev.bench import history

NOW = 1_796_650_000.0  # 2026-12-07T13:26:40Z: 26 minutes into an hour


def test_the_history_is_accepted_and_makes_every_window_once() -> None:
    series, hours = 7, 840
    chunks = list(history(series, hours, NOW))
    assert len(chunks) == hours and all(len(c) == 2 * series for c in chunks)
    ids, windows = set(), set()
    hour_of_chunk = []
    # judged as the worker would judge them up to 59 minutes later (35 days of lateness, 5 min of skew)
    for now_ms in (int(NOW * 1000), int(NOW * 1000) + 59 * 60_000):
        limits = Limits(now_ms, 35 * 86_400_000, 300_000, 2**31)
        for chunk in chunks:
            hours_here = set()
            for key, value in chunk:
                ev = proxy.decode(value, limits)
                assert not isinstance(ev, str), ev
                assert key == ev[3].encode()  # keyed by principal
                ids.add(ev[0])
                windows.add((ev[3:8], ev[2] - ev[2] % HOUR_MS))
                hours_here.add(ev[2] - ev[2] % HOUR_MS)
                assert ev[2] <= NOW * 1000
            assert len(hours_here) == 1
            hour_of_chunk.append(hours_here.pop())
    assert len(ids) == len(windows) == 2 * series * hours
    assert hour_of_chunk[:hours] == sorted(hour_of_chunk[:hours])  # oldest hour first
    assert hour_of_chunk[hours - 1] == int(NOW * 1000) - int(NOW * 1000) % HOUR_MS  # ends in the current hour
