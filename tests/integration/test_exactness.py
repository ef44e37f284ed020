"""Billing-grade exactness: kill -9 the real worker at random moments; totals equal the truth."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from metering.settings import MeteringSettings
from streamtoll.dev.traffic import otlp_export, otlp_point, rfc3339
from streamtoll.embedded import EmbeddedBroker

from .harness import Traffic, Worker, committed, produce, read_all, wait_caught_up, window_totals

# serial: make test runs this file alone (its kills and timings see no parallel neighbour)
pytestmark = [pytest.mark.integration, pytest.mark.serial]


def _check_outputs(broker: EmbeddedBroker, settings: MeteringSettings, traffic: Traffic) -> None:
    rows = read_all(broker.bootstrap, settings.topic_usage_windows, 4)
    got = window_totals(rows)
    want = {k: v for k, v in traffic.truth.items() if any(v)}
    missing = {k: v for k, v in want.items() if got.get(k) != v}
    extra = {k: v for k, v in got.items() if k not in want and any(v)}
    assert not missing and not extra, (
        f"{len(missing)} windows differ, e.g. {list(missing.items())[:3]} "
        f"got {[got.get(k) for k in list(missing)[:3]]}; "
        f"{len(extra)} unexpected"
    )
    dlq = read_all(broker.bootstrap, settings.topic_dlq, 4)
    assert Counter(d["reason"] for d in dlq) == traffic.dlq
    for d in dlq:  # the original bytes and coordinates are kept
        assert d["source"]["topic"] in settings.input_topics and d["source"]["offset"] >= 0
        assert d["value_b64"] and d["detail"]


def _log_tail(log: Path, lines: int = 40) -> str:
    """The last lines of a worker's log (its periodic progress lines left out)."""
    text = log.read_text() if log.exists() else ""
    kept = [ln[:600] for ln in text.splitlines() if '"metering progress"' not in ln]
    return f"--- {log.name} (last {lines} lines)\n" + "\n".join(kept[-lines:])


def test_known_stream_is_metered_exactly(
    broker: EmbeddedBroker, env: dict[str, str], settings: MeteringSettings, logdir: Path
) -> None:
    traffic = Traffic.make(
        time.time(),
        (settings.topic_proxy_audit, settings.topic_broker_metrics, settings.topic_broker_audit),
        n_proxy=5_000,
    )
    worker = Worker(env, logdir / "worker.log").start()
    try:
        ends = produce(broker.bootstrap, traffic.records)
        wait_caught_up(broker.bootstrap, settings.group_id, ends)
    finally:
        assert worker.stop() == 0, (logdir / "worker.log").read_text()[-3000:]
    _check_outputs(broker, settings, traffic)


def test_kill_minus_9_at_random_moments_loses_and_doubles_nothing(
    broker: EmbeddedBroker, env: dict[str, str], settings: MeteringSettings, logdir: Path
) -> None:
    rnd = random.Random()
    traffic = Traffic.make(
        time.time(),
        (settings.topic_proxy_audit, settings.topic_broker_metrics, settings.topic_broker_audit),
        n_proxy=160_000,
        seed=rnd.randint(0, 10**6),
    )
    log = logdir / "worker.log"
    worker = Worker(env, log).start()
    ends: dict[tuple[str, int], int] = {}

    def feed() -> None:
        # about 35 s of traffic: room for several kill-and-restart cycles (each ~5 s of group join)
        ends.update(produce(broker.bootstrap, traffic.records, pace=(2_000, 0.4)))

    feeder = threading.Thread(target=feed)
    feeder.start()
    inputs = {(t, p): 1 for t in settings.input_topics for p in range(4)}
    kills, done_before = 0, 0
    try:
        # Kill only while traffic still flows and after the restarted worker has committed new
        # work, at a random moment after that: each kill lands while batches are being folded.
        while feeder.is_alive() and kills < 6:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                done = sum(max(0, v) for v in committed(broker.bootstrap, settings.group_id, inputs).values())
                if done > done_before:
                    break
                time.sleep(0.2)
            else:
                raise AssertionError("the restarted worker made no progress in 60 s")
            time.sleep(rnd.uniform(0.0, 1.5))
            if not feeder.is_alive():
                break
            worker.kill9()
            kills += 1
            done_before = sum(max(0, v) for v in committed(broker.bootstrap, settings.group_id, inputs).values())
            worker.start()
        feeder.join()
        wait_caught_up(broker.bootstrap, settings.group_id, ends)
    finally:
        feeder.join()
        worker.stop()
    assert kills >= 3, f"only {kills} kills landed while traffic flowed"
    _check_outputs(broker, settings, traffic)


def _proxy(i: int, t: float, nbytes: int) -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": f"e{i}",
            "source": "//p",
            "type": "io.streamtoll.kafka.produce",
            "time": rfc3339(t),
            "subject": "User:a",
            "data": {"topic": "orders", "records": 1, "bytes": nbytes},
        }
    ).encode()


def _counter(t: float, value: int) -> bytes:
    # start time "1" ns: set, so the first sample counts whole
    point = otlp_point({"principal": "User:a", "topic": "orders"}, 1e-9, t, value)
    return otlp_export("1", [("kafka.client.produce.bytes", [point])])


def test_restore_reads_only_recent_state_and_idle_snapshots_keep_it_whole(
    broker: EmbeddedBroker, env: dict[str, str], settings: MeteringSettings, logdir: Path
) -> None:
    """A short horizon and snapshot interval: the restore reads back only a few seconds, so the
    open windows and counter series must come from the snapshots an idle worker kept writing."""
    env = {**env, "STREAMTOLL_DEDUP_HORIZON": "1s", "STREAMTOLL_STATE_SNAPSHOT_INTERVAL": "1s"}
    now = time.time()
    hour = now - now % 3600 + 60 if now % 3600 < 3000 else now - 300  # keep both halves in one hour
    first = [(settings.topic_proxy_audit, b"User:a", _proxy(i, hour, 10)) for i in range(100)]
    first += [
        (settings.topic_broker_metrics, b"1", _counter(hour, 1_000)),
        (settings.topic_broker_metrics, b"1", _counter(hour + 1, 1_500)),
    ]
    second = [(settings.topic_proxy_audit, b"User:a", _proxy(100 + i, hour + 2, 1)) for i in range(50)]
    second += [(settings.topic_broker_metrics, b"1", _counter(hour + 2, 1_700))]
    worker = Worker(env, logdir / "worker.log").start()
    try:
        ends = produce(broker.bootstrap, first)
        wait_caught_up(broker.bootstrap, settings.group_id, ends)
        time.sleep(6)  # idle: the worker writes snapshots; the restore window slides past the deltas
        worker.kill9()
        worker.start()
        ends.update(produce(broker.bootstrap, second))
        wait_caught_up(broker.bootstrap, settings.group_id, ends)
    finally:
        worker.stop()
    got = window_totals(read_all(broker.bootstrap, settings.topic_usage_windows, 4))
    by_source = {k[0]: v for k, v in got.items()}
    # proxy: 100 × 10 + 50 × 1 bytes, all in one hourly window, a full total after the restart
    assert by_source["proxy"] == [1050, 150, 150, 0]
    # counter: the first sample counts whole (1000), then +500, then +200 across the restart
    assert by_source["broker_metrics"][0] == 1_700
    restores = [
        json.loads(line) for line in (logdir / "worker.log").read_text().splitlines() if '"partitions assigned"' in line
    ]
    assert restores[-1]["full_reads"] == 0, "the restart rebuilt from recent snapshots only"


# soak only on the dev broker (2026-12-07): after the kill the survivor can read the dead worker's
# pending offset commit as "no commit" (tansu never aborts a dead producer's transaction; the
# harness aborts it, but a survivor may fetch offsets first) and start those partitions over —
# windows stay exact (dedup), the DLQ gets records twice (one clean-clone CI run: schema 7 for
# 5). Apache Kafka answers UNSTABLE_OFFSET_COMMIT and the consumer waits. Run it there with
# STREAMTOLL_TEST_KAFKA_BOOTSTRAP=host:9092 pytest -m soak tests/integration/test_exactness.py.
@pytest.mark.soak
def test_two_workers_share_the_partitions_and_one_killed_hands_them_back_exactly(
    broker: EmbeddedBroker, env: dict[str, str], settings: MeteringSettings, logdir: Path
) -> None:
    """A second worker joins mid-stream (a rebalance moves partitions and their state), then the
    first is killed with -9 while traffic flows: after the session timeout its partitions and
    their state move to the survivor. Nothing is lost or counted twice."""
    topics = (settings.topic_proxy_audit, settings.topic_broker_metrics, settings.topic_broker_audit)
    traffic = Traffic.make(time.time(), topics, n_proxy=60_000, seed=11)
    one = Worker(env, logdir / "w1.log").start()
    two = Worker({**env, "STREAMTOLL_INSTANCE_ID": "w2"}, logdir / "w2.log")
    half = len(traffic.records) // 2
    ends: dict[tuple[str, int], int] = {}
    inputs = {(t, p): 1 for t in settings.input_topics for p in range(4)}

    def progress() -> int:
        return sum(max(0, v) for v in committed(broker.bootstrap, settings.group_id, inputs).values())

    def wait(cond: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, f"{what} did not happen within {timeout:.0f} s"
            time.sleep(0.2)

    def holds_everything(log: Path) -> bool:
        """The worker's last assignment is every input partition."""
        assigned = [ln for ln in log.read_text().splitlines() if '"partitions assigned"' in ln]
        return bool(assigned) and len(json.loads(assigned[-1])["partitions"]) == len(inputs)

    try:
        ends.update(produce(broker.bootstrap, traffic.records[:half]))
        two.start()
        # the second half goes in while the group rebalances, while one member dies and after
        feeder = threading.Thread(
            target=lambda: ends.update(produce(broker.bootstrap, traffic.records[half:], pace=(2_000, 0.3)))
        )
        feeder.start()
        wait(lambda: "partitions assigned" in (logdir / "w2.log").read_text(), "the second worker getting partitions")
        before = progress()
        wait(lambda: progress() > before, "metering progress with two workers")
        one.kill9(for_good=True)
        wait(lambda: holds_everything(logdir / "w2.log"), "the killed worker's partitions moving to the other", 90)
        feeder.join()
        wait_caught_up(broker.bootstrap, settings.group_id, ends)
    except AssertionError as exc:
        # what each worker said, for a failure seen only elsewhere (a CI machine)
        raise AssertionError(f"{exc}\n{_log_tail(logdir / 'w1.log')}\n{_log_tail(logdir / 'w2.log')}") from None
    finally:
        if one.proc is not None and one.proc.poll() is None:
            one.stop()
        assert two.stop() == 0
    _check_outputs(broker, settings, traffic)
