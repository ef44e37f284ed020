from __future__ import annotations

import json
from typing import Any

import orjson

from metering.fold.shard import HOUR_MS, Record, ShardConfig, ShardState
from tests.unit.decoders.helpers import NOW, TS0, limits

T0 = "2026-11-10T10:15:00Z"


def cfg(kind: str = "proxy", horizon_ms: int = 3_600_000, max_keys: int = 100_000) -> ShardConfig:
    return ShardConfig(kind, horizon_ms, max_keys, 35 * 86_400_000, None, 10e9)


def proxy(i: str, nbytes: int = 10, time: str = T0, principal: str = "User:a") -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": i,
            "source": "//p",
            "type": "io.streamtoll.kafka.produce",
            "time": time,
            "subject": principal,
            "data": {"topic": "orders", "records": 1, "bytes": nbytes},
        }
    ).encode()


def recs(values: list[bytes | None], start: int = 0, ts: int = 1_000) -> list[Record]:
    return [Record(start + i, TS0 + ts + i, v) for i, v in enumerate(values)]


def totals(state: ShardState) -> dict[Any, list[int]]:
    return {k: list(v) for k, v in state.hours.items()}


def test_fold_counts_dedups_and_rejects() -> None:
    st = ShardState("proxy-audit/0", cfg())
    out = st.fold(
        recs([proxy("a"), proxy("a"), proxy("b", 5), None, b"{bad", proxy("c", 7, "2026-11-10T11:00:00Z")]), limits()
    )
    assert (out.counted, out.duplicates, out.tombstones, len(out.rejected), out.next_offset) == (3, 1, 1, 1, 6)
    assert out.rejected[0][0].offset() == 4 and out.rejected[0][1].reason == "not_json"
    hours = sorted(out.hours.items(), key=lambda kv: kv[0][1])
    assert [v for _, v in hours] == [[15, 2, 2, 0], [7, 1, 1, 0]]
    assert hours[1][0][1] - hours[0][0][1] == HOUR_MS
    # a later batch re-sending "a" is still a duplicate; totals are full totals, not increments
    out2 = st.fold(recs([proxy("a"), proxy("d", 1)], start=6, ts=2_000), limits())
    assert out2.duplicates == 1 and [v for v in out2.hours.values()] == [[16, 3, 3, 0]]


def test_changelog_replay_rebuilds_the_same_state() -> None:
    live = ShardState("proxy-audit/0", cfg())
    log: list[dict[str, Any]] = []
    for n in range(5):
        batch = [proxy(f"e{n}-{i}", i, principal=f"User:{i % 3}") for i in range(20)] + [proxy("dup", 1)]
        log.append(orjson.loads(orjson.dumps(live.fold(recs(batch, start=n * 21, ts=n * 1000), limits()).changelog)))
        if n == 2:
            log.append(orjson.loads(orjson.dumps(live.snapshot())))
    rebuilt = ShardState("proxy-audit/0", cfg())
    other = ShardState("proxy-audit/1", cfg())
    for entry in log:
        rebuilt.replay(entry)
        other.replay(entry)  # entries of another shard are ignored
    assert totals(rebuilt) == totals(live) and rebuilt.next_offset == live.next_offset == 105
    assert set(rebuilt.dedup._keys) == set(live.dedup._keys)
    assert other.hours == {} and len(other.dedup) == 0
    # and they go on identically
    nxt = recs([proxy("dup"), proxy("new", 3)], start=105, ts=9_000)
    assert rebuilt.fold(nxt, limits()).hours == live.fold(nxt, limits()).hours


def test_dedup_horizon_follows_record_time_and_memory_is_bounded() -> None:
    st = ShardState("p/0", cfg(horizon_ms=10_000, max_keys=1000))
    st.fold(recs([proxy("x")], ts=0), limits())
    assert st.fold(recs([proxy("x")], start=1, ts=5_000), limits()).duplicates == 1
    st.fold(recs([proxy("y")], start=2, ts=20_000), limits())
    assert st.fold(recs([proxy("x")], start=3, ts=21_000), limits()).counted == 1  # past the horizon
    st.fold(recs([proxy(f"m{i}") for i in range(3000)], start=4, ts=22_000), limits())
    assert len(st.dedup) <= 1000 and st.dedup.evicted > 0


def test_old_hours_leave_memory() -> None:
    st = ShardState("p/0", cfg())
    st.fold(recs([proxy("a", time="2026-10-10T10:00:00Z")]), limits())
    assert len(st.hours) == 1
    # a month later by the records' Kafka timestamps (the shard's stream time), whatever the
    # wall clock says: the October hour has ended more than MAX_LATENESS before it
    month_ms = int((NOW.replace(month=12) - NOW).total_seconds() * 1000)
    st.fold(recs([proxy("b", time="2026-11-30T10:00:00Z")], start=1, ts=month_ms), limits())
    assert [k[1] for k in st.hours] == [int(NOW.replace(month=11, day=30, hour=10).timestamp() * 1000)]


def test_large_entries_split_into_parts_that_replay_to_the_same_state() -> None:
    live = ShardState("proxy-audit/0", cfg())
    log: list[dict[str, Any]] = []
    batch = [proxy(f"e{i}", 1, principal=f"User:{i}") for i in range(300)]
    first = live.fold(recs(batch), limits()).changelog
    parts = ShardState.split(first, max_items=64)
    assert len(parts) == 5 and parts[0]["kind"] == "delta" and {p["kind"] for p in parts[1:]} == {"part"}
    assert sum(len(p["hours"]) for p in parts) == 300 and all(p["dedup"] == "" for p in parts[1:])
    log += parts
    snap = ShardState.split(live.snapshot(), max_items=64)
    assert snap[0]["kind"] == "snapshot" and len(snap) == 5
    log += snap
    rebuilt = ShardState("proxy-audit/0", cfg())
    for entry in log:
        rebuilt.replay(orjson.loads(orjson.dumps(entry)))
    assert totals(rebuilt) == totals(live) and set(rebuilt.dedup._keys) == set(live.dedup._keys)
