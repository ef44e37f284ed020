"""Cold hours: a shard keeps only its recent hours in memory; older ones are segments on the state
topic, read back (by offset) when a late record lands in them. The published totals, the
restored state and the dedup keys must be exactly what keeping everything in memory gives.

The state topic here is a list (offset = index) holding each entry as JSON, as the engine sends
them; the round is the engine's (``Engine._round``) without Kafka: segments, then a checkpoint.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from typing import Any

from metering.fold.shard import HOT_HOURS, HOUR_MS, Record, ShardConfig, ShardState
from tests.unit.decoders.helpers import TS0, limits

DAY_MS = 24 * HOUR_MS


def cfg() -> ShardConfig:
    return ShardConfig("proxy", 3_600_000, 1_000_000, 35 * DAY_MS, None, 10e9)


def event(i: int, t_ms: int, principal: str, nbytes: int) -> bytes:
    t = t_ms / 1000
    from datetime import UTC, datetime

    stamp = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{t_ms % 1000:03d}Z"
    return json.dumps(
        {
            "specversion": "1.0",
            "id": f"e{i}",
            "source": "//p",
            "type": "io.streamtoll.kafka.produce",
            "time": stamp,
            "subject": principal,
            "data": {"topic": "orders", "records": 1, "bytes": nbytes},
        }
    ).encode()


class StateTopic:
    """The shard's state partition: what was sent, in order; read back by offset."""

    def __init__(self) -> None:
        self.log: list[dict[str, Any]] = []
        self.reads = 0

    def send(self, entry: dict[str, Any]) -> list[int]:
        at = []
        for part in ShardState.split(entry):
            at.append(len(self.log))
            self.log.append(json.loads(json.dumps(part)))
        return at

    def load(self, name: str, offsets: list[int]) -> list[dict[str, Any]]:
        self.reads += 1
        return [self.log[o] for o in offsets]


def fold(st: ShardState, topic: StateTopic, records: list[Record]) -> dict[Any, list[int]]:
    out = st.fold(records, limits())
    entry = out.changelog
    at = topic.send(entry)
    if entry["dedup"]:
        st.key_marks.append((at[0], entry["dedup_ts"]))
    return {k: list(v) for k, v in out.hours.items()}


def state_round(st: ShardState, topic: StateTopic, written_ms: int = TS0) -> None:
    for hour, entry, windows in list(st.segments_due()):
        st.set_cold(hour, topic.send(entry), written_ms, windows)
    st.cold_held = 0
    topic.send(st.snapshot(st.dedup_from()))


def restore(topic: StateTopic) -> ShardState:
    """A new owner: replay from the last checkpoint (its dedup_from, if earlier) to the end."""
    last = max(i for i, e in enumerate(topic.log) if e["kind"] == "snapshot")
    start = min(last, topic.log[last]["dedup_from"] or last)
    st = ShardState("proxy/0", cfg())
    st.load_segment = topic.load
    st.cache_windows = 0
    for at in range(start, len(topic.log)):
        st.replay(topic.log[at])
        if topic.log[at]["dedup"]:
            st.key_marks.append((at, topic.log[at]["dedup_ts"]))
    return st


def test_late_records_into_cold_hours_publish_full_totals_and_survive_a_restore() -> None:
    rnd = random.Random(7)
    topic = StateTopic()
    st = ShardState("proxy/0", cfg())
    st.load_segment = topic.load
    st.cache_windows = 0  # keep only the last segment read or written: the others are read back
    truth: dict[tuple[str, int], int] = defaultdict(int)  # (principal, hour) → bytes, each event once
    now = TS0 - TS0 % HOUR_MS + 30 * 60_000
    principals = [f"User:p{i}" for i in range(5)]
    n = 0

    def batch(hours_back: list[int], offset: int) -> list[Record]:
        nonlocal n
        recs: list[Record] = []
        for hb in hours_back:
            for p in principals:
                t = now - hb * HOUR_MS - rnd.randrange(0, 600_000)
                nbytes = rnd.randrange(1, 1000)
                truth[(p, t - t % HOUR_MS)] += nbytes
                recs.append(Record(offset + len(recs), now, event(n, t, p, nbytes)))
                n += 1
        return recs

    def exact(published: dict[Any, list[int]]) -> None:
        assert published
        for (wk, hour), v in published.items():
            assert v[0] == truth[(wk[1], hour)], (wk, hour)

    # 48 hours of history, then a round: only the hot hours stay in memory
    exact(fold(st, topic, batch(list(range(48)), 0)))
    state_round(st, topic)
    hot = now - now % HOUR_MS - HOT_HOURS * HOUR_MS
    assert {hk[1] for hk in st.hours} == set(range(hot, now, HOUR_MS))
    assert len(st.cold) == 48 - (HOT_HOURS + 1)
    assert st.dirty_cold() == 0

    # late records land in three cold hours: their windows are read back and published whole
    late = fold(st, topic, batch([5, 20, 47], 1000))
    exact(late)
    assert (topic.reads, st.cold_loads) == (1, 3)  # the three hours' segments, read in one go
    assert {k[1] for k in late} == {(now - hb * HOUR_MS) - (now - hb * HOUR_MS) % HOUR_MS for hb in (5, 20, 47)}
    assert st.dirty_cold() == st.cold_held == 15  # 3 hours × 5 principals, until the next round

    # a new owner restored from the changelog goes on exactly as the live shard does
    state_round(st, topic)
    retried = batch([20, 30], 2000)
    exact(fold(st, topic, retried))
    twin = restore(topic)
    reads_before = topic.reads
    # the same records once more are duplicates (their dedup keys came back by position)
    assert twin.fold(retried, limits()).duplicates == len(retried)
    more = batch([20, 30, 40, 1], 3000)
    live_out = {k: list(v) for k, v in st.fold(more, limits()).hours.items()}
    twin_out = {k: list(v) for k, v in twin.fold(more, limits()).hours.items()}
    assert live_out == twin_out
    exact(live_out)
    assert topic.reads > reads_before  # the twin read its cold hours back from the segments


def test_hours_past_the_lateness_limit_leave_the_cold_index() -> None:
    topic = StateTopic()
    st = ShardState("proxy/0", cfg())
    st.load_segment = topic.load
    base = TS0 - TS0 % HOUR_MS
    fold(st, topic, [Record(0, base, event(0, base - 30 * DAY_MS, "User:a", 10))])
    state_round(st, topic)
    assert len(st.cold) == 1
    # six days later by the records' Kafka time: 36 days past, beyond the 35-day lateness
    fold(st, topic, [Record(1, base + 6 * DAY_MS, event(1, base + 6 * DAY_MS, "User:a", 1))])
    assert st.cold == {}


def test_dedup_from_is_the_oldest_entry_with_keys_inside_the_horizon() -> None:
    topic = StateTopic()
    st = ShardState("proxy/0", cfg())
    base = TS0 - TS0 % HOUR_MS
    for i in range(4):  # Kafka time advances 20 minutes per batch; the horizon is one hour
        fold(st, topic, [Record(i, base + i * 20 * 60_000, event(i, base + i * 20 * 60_000, "User:a", 1))])
    assert st.dedup_from() == 0
    fold(st, topic, [Record(4, base + 81 * 60_000, event(4, base + 81 * 60_000, "User:a", 1))])
    # the keys written at minute 0 and 20 are past the horizon at minute 81; minute 40 is not
    assert st.dedup_from() == 2


def test_a_large_segment_splits_into_segment_parts_of_the_same_hour() -> None:
    st = ShardState("proxy/0", cfg())
    hour = TS0 - TS0 % HOUR_MS - 10 * HOUR_MS
    st.stream_ms = TS0
    for i in range(50):
        st.hours[(("proxy", f"User:{i}", "", "", "orders", "produce"), hour)] = [i, 1, 1, 0]
    [(_, entry, windows)] = list(st.segments_due())
    assert len(windows) == 50
    parts = ShardState.split(entry, max_items=20)
    assert [p["kind"] for p in parts] == ["segment"] * 3
    assert {p["hour"] for p in parts} == {hour}
    assert sum(len(p["hours"]) for p in parts) == 50


def test_segments_older_than_half_the_retention_are_rewritten_before_the_topic_deletes_them() -> None:
    """A cold hour nobody touches keeps its segment; once the segment is older than the time
    given (the engine passes now − STATE_RETENTION / 2) the round writes it again, the same
    windows, and the hour's index moves to the new place."""
    topic = StateTopic()
    st = ShardState("proxy/0", cfg())
    st.load_segment = topic.load
    base = TS0 - TS0 % HOUR_MS
    fold(st, topic, [Record(i, base, event(i, base - (10 + i) * HOUR_MS, "User:a", 10 + i)) for i in range(3)])
    state_round(st, topic, written_ms=1_000)
    first = {h: ref.offsets for h, ref in st.cold.items()}
    assert len(first) == 3 and list(st.segments_due(refresh_before_ms=1_000)) == []  # not older yet
    due = list(st.segments_due(refresh_before_ms=2_000, max_refresh=2))
    assert [h for h, _, _ in due] == sorted(first)[:2]  # at most max_refresh per round, oldest hours first
    for hour, entry, windows in due:
        assert windows == []  # nothing held: the segment is rewritten from what it held
        assert [row[7] for row in entry["hours"]] == [topic.log[first[hour][0]]["hours"][0][7]]
        st.set_cold(hour, topic.send(entry), 2_000, windows)
        assert st.cold[hour].offsets != first[hour] and st.cold[hour].written_ms == 2_000
