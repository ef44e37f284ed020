"""Metering state at scale (issue 17): exact through kill -9 whatever the wall clock says.

Each test runs the real worker on the session's broker and compares the usage windows topic
with a truth computed independently from what was produced (each unique event counted once).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

import pytest

from metering.engine.topics import ensure_topics
from metering.settings import MeteringSettings
from streamtoll.dev.traffic import Truth, hour_iso, rfc3339
from streamtoll.embedded import EmbeddedBroker

from .harness import Traffic, Worker, committed, produce, read_all, wait_caught_up, window_totals

# serial: its kills and wall-clock timings must not share the two cores with a parallel pass
pytestmark = [pytest.mark.integration, pytest.mark.serial]

DAY = 86_400
Rec = tuple[str, bytes | None, bytes | None]


def _event(
    ev_id: str, t: float, principal: str, nbytes: int, nrec: int, direction: str = "produce", topic: str = "orders"
) -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": ev_id,
            "source": "//proxy/gw-1",
            "type": "io.streamtoll.kafka.produce" if direction == "produce" else "io.streamtoll.kafka.fetch",
            "time": rfc3339(t),
            "subject": principal,
            "data": {"topic": topic, "records": nrec, "bytes": nbytes},
        }
    ).encode()


def _add(
    truth: Truth, principal: str, t: float, nbytes: int, nrec: int, direction: str = "produce", topic: str = "orders"
) -> None:
    row = truth[("proxy", principal, "", "", topic, direction, hour_iso(t))]
    row[0] += nbytes
    row[1] += nrec
    row[2] += 1


def _new_truth() -> Truth:
    return defaultdict(lambda: [0, 0, 0, 0])


def _assert_windows(bootstrap: str, settings: MeteringSettings, truth: Truth) -> list[dict[str, object]]:
    """Every window's total (latest version per shard, shards added) equals the truth; returns
    the rows read (every version), for checks on how they were published."""
    rows = read_all(bootstrap, settings.topic_usage_windows, 4)
    got = window_totals(rows)
    want = {k: v for k, v in truth.items() if any(v)}
    differ = {k: (v, got.get(k)) for k, v in want.items() if got.get(k) != v}
    extra = {k: v for k, v in got.items() if k not in want and any(v)}
    assert not differ and not extra, (
        f"{len(differ)} of {len(want)} windows differ (want, got), e.g. {list(differ.items())[:3]}; "
        f"{len(extra)} unexpected, e.g. {list(extra.items())[:3]}"
    )
    return rows


def _progress(bootstrap: str, group: str, inputs: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
    return {k: max(0, v) for k, v in committed(bootstrap, group, inputs).items()}


# -- 1. restore by position, not by the wall clock --------------------------------------------------


def test_a_backlog_metered_slower_than_real_time_keeps_its_dedup_keys_through_kill_minus_9(
    broker: EmbeddedBroker, env: dict[str, str], logdir: Path
) -> None:
    """Issue 17, risk 1. A backlog whose Kafka timestamps all lie within 3 s is metered in
    batches of 2 records, so metering it takes far longer than 3 s of wall clock. The worker is
    killed with -9 once more than ``DEDUP_HORIZON + 3 × STATE_SNAPSHOT_INTERVAL`` of wall clock
    has passed since it committed the backlog's first records, and restarted; then those first
    records are retried (same id, source and key, and the same Kafka timestamps: within the dedup
    horizon by record time, which is what dedup goes by). Each must still count once: the
    restart must bring the dedup keys back by input position or record time, not by the wall
    clock (today's restore reads the state topic from ``now − horizon − 3 × interval`` and
    forgets them).

    Decisions: a 10 s horizon rather than a realistic hour, so the test waits seconds, not an
    hour (what matters is that the backlog's record-time span is inside the horizon while the
    wall time metering takes is well past it). One input partition (one principal), so the
    first records are metered first, at a known moment. The backlog is topped up while the
    worker runs so it is still behind at the kill on a fast machine, without a long tail after
    the restart on a slow one."""
    horizon_s, interval_s, span_ms, chunk = 10, 1, 3_000, 2_000
    env = {
        **env,
        "STREAMTOLL_DEDUP_HORIZON": f"{horizon_s}s",
        "STREAMTOLL_STATE_SNAPSHOT_INTERVAL": f"{interval_s}s",
        "STREAMTOLL_BATCH_SIZE": "2",
    }
    settings = MeteringSettings.from_env(env)
    ensure_topics(settings)  # the backlog is there before the worker starts
    rnd = random.Random()
    now = time.time()
    ts0, most = int(now * 1000), 200_000  # Kafka timestamps: ts0 + span × i / most
    principal = "User:tenant-0"
    records: list[Rec] = []
    stamps: list[int] = []
    truth = _new_truth()

    def backlog(count: int) -> dict[tuple[str, int], int]:
        """``count`` more backlog records (unique ids), produced at once; their ends."""
        start = len(records)
        for i in range(start, start + count):
            t = now - rnd.uniform(0, 1800)
            nbytes, nrec = rnd.randint(100, 1_000_000), rnd.randint(1, 500)
            topic, direction = rnd.choice(("orders", "payments")), rnd.choice(("produce", "consume"))
            value = _event(f"r{i}", t, principal, nbytes, nrec, direction, topic)
            records.append((settings.topic_proxy_audit, principal.encode(), value))
            stamps.append(ts0 + span_ms * i // most)
            _add(truth, principal, t, nbytes, nrec, direction, topic)
        return produce(broker.bootstrap, records[start:], timestamps=stamps[start:])

    head = backlog(300)
    ends = {**head}
    ends.update(backlog(3 * chunk))
    (part,) = ends
    worker = Worker(env, logdir / "worker.log").start()
    try:
        deadline = time.monotonic() + 60
        while _progress(broker.bootstrap, settings.group_id, head)[part] < head[part]:
            assert time.monotonic() < deadline, "the first records were not metered within 60 s"
            time.sleep(0.2)
        head_done_at = time.monotonic()  # from now on the changelog holds their dedup keys
        while time.monotonic() - head_done_at < horizon_s + 3 * interval_s + 2:
            if ends[part] - _progress(broker.bootstrap, settings.group_id, ends)[part] < chunk:
                ends.update(backlog(chunk))
            time.sleep(0.3)
        behind = ends[part] - _progress(broker.bootstrap, settings.group_id, ends)[part]
        # the preconditions: still behind, and the first records' changelog past the wall-clock window
        assert behind > 0, "the worker caught up before the kill"
        assert time.monotonic() - head_done_at > horizon_s + 3 * interval_s
        worker.kill9()
        worker.start()
        ends.update(produce(broker.bootstrap, records[:300], timestamps=stamps[:300]))  # the retries
        wait_caught_up(broker.bootstrap, settings.group_id, ends, timeout=120)
    finally:
        worker.stop()
    assert len(records) < most and max(stamps) - min(stamps) < horizon_s * 1000
    _assert_windows(broker.bootstrap, settings, truth)
    assert read_all(broker.bootstrap, settings.topic_dlq, 4) == []


# -- 2. cold hours through kill -9 -------------------------------------------------------------------


def test_late_records_into_hours_weeks_back_stay_exact_through_kill_minus_9(
    broker: EmbeddedBroker, env: dict[str, str], settings: MeteringSettings, logdir: Path
) -> None:
    """Issue 17: current-hour traffic with late records into 60 hours 3 to 30 days back spread
    through it (and retries of some), state rounds every 2 s, and kill -9 at random moments while
    it flows. Every window — the cold hours too — must equal the truth at the end; and the test
    checks it did what it claims: cold windows were updated in many batches, and on both sides
    of each kill (an old hour's total written before the kill is updated again after it)."""
    env = {**env, "STREAMTOLL_STATE_SNAPSHOT_INTERVAL": "2s"}
    rnd = random.Random()
    seed = rnd.randint(0, 10**6)
    topics = (settings.topic_proxy_audit, settings.topic_broker_metrics, settings.topic_broker_audit)
    traffic = Traffic.make(time.time(), topics, n_proxy=100_000, seed=seed, span_s=3600)
    # 3 to 30 days back: clear of the hour two days back where Traffic.make puts a few late
    # records of its own (those windows get a version or two, not the many checked below)
    cold_hours = set(traffic.add_cold_hours(20_000, 60, seed=seed + 1, days=(3.0, 30.0)))
    log = logdir / "worker.log"
    worker = Worker(env, log).start()
    ends: dict[tuple[str, int], int] = {}

    def feed() -> None:
        ends.update(produce(broker.bootstrap, traffic.records, pace=(2_000, 0.5)))

    feeder = threading.Thread(target=feed)
    feeder.start()
    inputs = {(t, p): 1 for t in settings.input_topics for p in range(4)}
    proxy_parts = {(settings.topic_proxy_audit, p): 1 for p in range(4)}
    at_kill: list[dict[tuple[str, int], int]] = []  # proxy partitions' committed offsets at each kill
    started = time.monotonic()
    done_before = 0
    try:
        while feeder.is_alive() and len(at_kill) < 6:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if sum(_progress(broker.bootstrap, settings.group_id, inputs).values()) > done_before:
                    break
                time.sleep(0.2)
            else:
                raise AssertionError("the restarted worker made no progress in 60 s")
            time.sleep(rnd.uniform(0.5, 2.5))
            if not feeder.is_alive():
                break
            worker.kill9()
            at_kill.append(_progress(broker.bootstrap, settings.group_id, proxy_parts))
            done_before = sum(_progress(broker.bootstrap, settings.group_id, inputs).values())
            worker.start()
        feeder.join()
        wait_caught_up(broker.bootstrap, settings.group_id, ends)
        took = time.monotonic() - started
        # Once more, after state rounds have surely written the cold hours' segments (the kills
        # above may all land before a round): kill -9, then late records into those hours. The
        # restarted worker holds none of them in memory and must read them back to publish
        # full totals.
        time.sleep(6)
        worker.kill9()
        worker.start()
        ends.update(produce(broker.bootstrap, _late(traffic, sorted(cold_hours), 400, random.Random(seed + 2))))
        wait_caught_up(broker.bootstrap, settings.group_id, ends)
    finally:
        feeder.join()
        worker.stop()
    assert len(at_kill) >= 3, f"only {len(at_kill)} kills landed while traffic flowed ({took:.0f} s)"
    rows = _assert_windows(broker.bootstrap, settings, traffic.truth)
    dlq = read_all(broker.bootstrap, settings.topic_dlq, 4)
    assert Counter(d["reason"] for d in dlq) == traffic.dlq
    # what the test claims to exercise: every cold hour has windows …
    assert cold_hours <= {k[6] for k in traffic.truth}
    # … each cold (window, shard) was published in many batches …
    versions: dict[tuple[object, ...], set[int]] = defaultdict(set)
    for r in rows:
        if r["window_start"] in cold_hours:
            key = tuple(r[f] for f in ("source", "principal", "client_id", "virtual_cluster", "topic", "direction"))
            key += (r["window_start"], r["shard"])
            versions[key].add(int(r["version"]))  # type: ignore[call-overload]
    assert len(versions) > 500 and sorted(len(v) for v in versions.values())[len(versions) // 2] >= 5
    # … and, for each kill, many cold windows were written before it and updated after the restart
    for n, offsets in enumerate(at_kill):
        straddle = [
            k
            for k, vs in versions.items()
            if min(vs) <= offsets[(settings.topic_proxy_audit, int(str(k[-1]).rsplit("/", 1)[1]))] < max(vs)
        ]
        assert len(straddle) >= len(versions) // 10, (
            f"kill {n + 1}: only {len(straddle)} of {len(versions)} cold windows were updated on both sides of it"
        )
    # the restarted worker found those hours' totals in their segments on the state topic
    assert '"cold hours read back"' in log.read_text()


def _late(traffic: Traffic, hours: list[str], n: int, rnd: random.Random) -> list[tuple[str, bytes, bytes]]:
    """``n`` new proxy audit records into these hours (ISO hour starts), added to the truth."""
    out = []
    for i in range(n):
        start = datetime.fromisoformat(rnd.choice(hours).replace("Z", "+00:00")).timestamp()
        t = start + rnd.uniform(0, 3599)
        principal, topic = f"User:tenant-{rnd.randrange(4)}", rnd.choice(("orders", "payments"))
        doc = {
            "specversion": "1.0",
            "id": f"after-restart-{i}",
            "source": "//proxy/gw-late",
            "type": "io.streamtoll.kafka.produce",
            "time": rfc3339(t),
            "subject": principal,
            "data": {"topic": topic, "records": 1, "bytes": 1000 + i},
        }
        traffic.add("proxy", principal, "", "", topic, "produce", t, 1000 + i, 1, 1)
        out.append((traffic.proxy_topic, principal.encode(), json.dumps(doc).encode()))
    return out


# -- 3. replays do not depend on the clock -----------------------------------------------------------


def test_records_with_kafka_timestamps_forty_days_back_are_metered_into_their_hours(
    broker: EmbeddedBroker, env: dict[str, str], settings: MeteringSettings, logdir: Path
) -> None:
    """Issue 17, risk 3. A backlog replayed (or mirrored) with its original Kafka timestamps, 40
    days back, events up to two hours before those: the worker judges lateness against the
    partition's newest Kafka timestamp, not its wall clock, so they are all counted (41+ days
    old by the wall clock, at most hours late by Kafka time). In the same records, events 36
    days before their Kafka time are too_old and 10 minutes after it future: those limits still
    apply, relative to Kafka time."""
    ensure_topics(settings)
    rnd = random.Random()
    old = time.time() - 40 * DAY
    principals = [f"User:tenant-{i}" for i in range(4)]
    records: list[Rec] = []
    stamps: list[int] = []
    truth = _new_truth()
    dlq: Counter[str] = Counter()
    for i in range(400):
        principal = rnd.choice(principals)
        ts = old + i * 0.005
        if i % 50 == 7:
            t, reason = ts - 36 * DAY, "too_old"
        elif i % 50 == 23:
            t, reason = ts + 600, "future"
        else:
            t, reason = ts - rnd.uniform(0, 7200), ""
        nbytes, nrec = rnd.randint(100, 1_000_000), rnd.randint(1, 500)
        records.append((settings.topic_proxy_audit, principal.encode(), _event(f"o{i}", t, principal, nbytes, nrec)))
        stamps.append(int(ts * 1000))
        if reason:
            dlq[reason] += 1
        else:
            _add(truth, principal, t, nbytes, nrec)
    worker = Worker(env, logdir / "worker.log").start()
    try:
        ends = produce(broker.bootstrap, records, timestamps=stamps)
        wait_caught_up(broker.bootstrap, settings.group_id, ends)
    finally:
        assert worker.stop() == 0, (logdir / "worker.log").read_text()[-3000:]
    _assert_windows(broker.bootstrap, settings, truth)
    rejected = read_all(broker.bootstrap, settings.topic_dlq, 4)
    assert Counter(d["reason"] for d in rejected) == dlq
    # the broker kept the timestamps given (the worker judged what the test meant it to)
    assert {d["source"]["timestamp"] for d in rejected} <= set(stamps)
