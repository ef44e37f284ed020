"""Billing-grade exactness: kill -9 the real worker at random moments; totals equal the truth."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from metering.settings import MeteringSettings
from streamtoll.embedded import EmbeddedBroker

from .harness import Traffic, Worker, committed, produce, read_all, wait_caught_up, window_totals

pytestmark = pytest.mark.integration


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
        n_proxy=200_000,
        seed=rnd.randint(0, 10**6),
    )
    log = logdir / "worker.log"
    worker = Worker(env, log).start()
    ends: dict[tuple[str, int], int] = {}

    def feed() -> None:
        ends.update(produce(broker.bootstrap, traffic.records, pace=(4_000, 0.4)))

    feeder = threading.Thread(target=feed)
    feeder.start()
    inputs = {(t, p): 1 for t in settings.input_topics for p in range(4)}
    kills, done_before = 0, 0
    try:
        # Kill only after the restarted worker has committed new work, at a random moment after
        # that: each kill lands while batches are being folded and transactions are open.
        while kills < 3 or (feeder.is_alive() and kills < 6):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                done = sum(max(0, v) for v in committed(broker.bootstrap, settings.group_id, inputs).values())
                if done > done_before:
                    break
                time.sleep(0.2)
            else:
                raise AssertionError("the restarted worker made no progress in 60 s")
            time.sleep(rnd.uniform(0.0, 1.5))
            worker.kill9()
            kills += 1
            done_before = sum(max(0, v) for v in committed(broker.bootstrap, settings.group_id, inputs).values())
            assert done_before < len(traffic.records), "the stream was already fully metered before this kill"
            worker.start()
        feeder.join()
        wait_caught_up(broker.bootstrap, settings.group_id, ends)
    finally:
        feeder.join()
        worker.stop()
    assert kills >= 3
    _check_outputs(broker, settings, traffic)
