"""Faults the way production has them, on real processes, a real broker and a real PostgreSQL;
each case ends by comparing with the generator's independently computed ground truth.

- three workers: one killed with -9 while traffic flows; added, removed and killed while
  partitions move (soak only on the dev broker, see below);
- the sink dying exactly between its database commit and its Kafka commit, again and again;
- PostgreSQL stopped and restarted under a running sink and API;
- the broker unreachable when the worker starts, and frozen (SIGSTOP) mid-run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from metering.settings import MeteringSettings
from streamtoll.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from streamtoll.serving import running

from .harness import Traffic, Worker, committed, produce, wait_caught_up
from .test_exactness import _check_outputs
from .test_sink import hourly

pytestmark = pytest.mark.integration


def _traffic(settings: MeteringSettings, n: int, seed: int) -> Traffic:
    topics = (settings.topic_proxy_audit, settings.topic_broker_metrics, settings.topic_broker_audit)
    return Traffic.make(time.time(), topics, n_proxy=n, seed=seed)


def _feed(bootstrap: str, traffic: Traffic, pace: tuple[int, float]) -> tuple[threading.Thread, dict[Any, int]]:
    ends: dict[Any, int] = {}
    t = threading.Thread(target=lambda: ends.update(produce(bootstrap, traffic.records, pace=pace)))
    t.start()
    return t, ends


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:.0f} s"
        time.sleep(0.3)


def _sink(env: dict[str, str], log: Path, *extra: str, die_after: int | None = None) -> subprocess.Popen[bytes]:
    """``streamtoll sink``; with ``die_after=N`` the test-only sink that exits 137 right after its
    N-th database commit, before the Kafka commit (``failpoint_sink.py``)."""
    out = open(log, "ab")  # noqa: SIM115
    command = ["-m", "streamtoll.cli", "sink"]
    if die_after is not None:
        command = [str(Path(__file__).with_name("failpoint_sink.py")), str(die_after)]
    return subprocess.Popen([sys.executable, *command, *extra], env=env, stdout=out, stderr=out, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _hourly_equals_truth(url: str, traffic: Traffic, timeout: float = 120) -> None:
    want = {k: v for k, v in traffic.truth.items() if any(v)}
    deadline = time.monotonic() + timeout
    got = hourly(url)
    while got != want and time.monotonic() < deadline:
        time.sleep(0.5)
        got = hourly(url)
    missing = {k: (v, got.get(k)) for k, v in want.items() if got.get(k) != v}
    assert not missing and set(got) == set(want), f"{len(missing)} windows differ, e.g. {list(missing.items())[:3]}"


def _stop_all(feeder: threading.Thread, workers: list[Worker]) -> None:
    feeder.join()
    for w in workers:
        if w.proc is not None:
            w.stop()


def _ownership(log: Path) -> list[str] | None:
    """The input partitions a worker holds now, from its log: its last assignment, or None while
    it holds none (revoked, not yet assigned again)."""
    held: list[str] | None = None
    for line in log.read_text().splitlines():
        if '"partitions assigned"' in line or '"partitions revoked"' in line:
            doc = json.loads(line)
            held = doc["partitions"] if doc["msg"] == "partitions assigned" else None
    return held


def _settled(logdir: Path, live: list[int], settings: MeteringSettings) -> bool:
    """Every input partition is held by exactly one of the live workers (the group is stable)."""
    everything = sorted(f"{t}/{p}" for t in settings.input_topics for p in range(4))
    held = [_ownership(logdir / f"w{i}.log") for i in live]
    return all(h is not None for h in held) and sorted(p for h in held for p in h or []) == everything


# On the dev broker (tansu) the workers run as dynamic group members (STATIC_MEMBERSHIP=false,
# conftest): its coordinator never expels a static member that died and stays away. A second
# tansu bug, seen in librdkafka's cgrp debug log: a member that sends JoinGroup and then
# LeaveGroup while a rebalance is in progress stays the *leader* of the next generation, so no
# member ever gets an assignment (SyncGroup answers "rebalance in progress" for ever). The worker
# therefore lets a rebalance in progress end before it leaves (Engine._finish_rebalance); the
# test below stops a worker gracefully 1 s into a rebalance on purpose. Apache Kafka has neither
# bug. Kills (-9) land in the middle of rebalances too.


# soak only on the dev broker. The clean-clone CI run of 2026-12-02 failed here after the kill:
# 8 of the 12 partitions had no commit for 240 s — tansu never aborts a dead producer's
# transaction, and the killed worker's pending TxnOffsetCommit hid those partitions' commits from
# the group; the kill is now `for_good` (its transaction aborted as Apache Kafka's coordinator
# would after transaction.timeout.ms). Back in make test for one run on 2026-12-07, it then
# failed on CI with DLQ records written twice (not_json 5 for 3, schema 7 for 5): a survivor that
# reads a masked commit as none starts the partition from its beginning, and only the DLQ has no
# dedup (Apache Kafka answers UNSTABLE_OFFSET_COMMIT instead, and the consumer waits) — see that
# stop's note. The two-worker kill in test_exactness.py is soak-only for the same reason.
@pytest.mark.soak
def test_three_workers_one_killed_while_traffic_flows(
    broker: EmbeddedBroker, env: dict[str, str], settings: MeteringSettings, logdir: Path
) -> None:
    """Three workers share the partitions; one is killed -9 mid-stream and its partitions move
    to the other two (after the session timeout)."""
    traffic = _traffic(settings, 60_000, seed=25)
    workers = [Worker({**env, "STREAMTOLL_INSTANCE_ID": f"w{i}"}, logdir / f"w{i}.log") for i in range(3)]
    for w in workers:
        w.start()
    feeder, ends = _feed(broker.bootstrap, traffic, pace=(2_000, 0.6))
    try:
        _wait(lambda: _settled(logdir, [0, 1, 2], settings), 90, "the three workers sharing the partitions")
        before = _progress(broker.bootstrap, settings)
        _wait(lambda: _progress(broker.bootstrap, settings) > before, 60, "metering progress with three workers")
        workers[2].kill9(for_good=True)
        _wait(lambda: _settled(logdir, [0, 1], settings), 90, "the killed worker's partitions moving")
        feeder.join()
        wait_caught_up(broker.bootstrap, settings.group_id, ends, timeout=240)
    finally:
        feeder.join()
        for w in workers[:2]:
            w.stop()
    _check_outputs(broker, settings, traffic)


def _progress(bootstrap: str, settings: MeteringSettings) -> int:
    parts = {(t, p): 1 for t in settings.input_topics for p in range(4)}
    return sum(max(0, v) for v in committed(bootstrap, settings.group_id, parts).values())


# soak only on the dev broker: measured 2026-12-02 on this project's 2-core machine, tansu's group
# coordinator never finished the rebalance after "w1 back, w0 removed" in 1 of 4 runs of the code
# before issue 13 and 2 of 4 after (and 2 of 4 whole-suite runs): no member was assigned anything
# for 90 s, the stopped member still waiting for the rebalance it had to let end. Apache Kafka:
# STREAMTOLL_TEST_KAFKA_BOOTSTRAP=host:9092 pytest -m soak tests/integration/test_faults.py
@pytest.mark.soak
def test_three_workers_added_removed_and_killed_while_partitions_move(
    broker: EmbeddedBroker, env: dict[str, str], settings: MeteringSettings, logdir: Path
) -> None:
    traffic = _traffic(settings, 80_000, seed=21)
    workers = [Worker({**env, "STREAMTOLL_INSTANCE_ID": f"w{i}"}, logdir / f"w{i}.log") for i in range(3)]
    feeder, ends = _feed(broker.bootstrap, traffic, pace=(2_000, 1.0))  # about a minute of traffic
    events: list[str] = []

    def moves_on(what: str, live: list[int]) -> None:
        """The partitions are shared by ``live`` and the group commits new work after ``what``."""
        before = _progress(broker.bootstrap, settings)
        _wait(lambda: _settled(logdir, live, settings), 90, f"the group settling after {what}")

        def moved() -> bool:
            if _progress(broker.bootstrap, settings) > before:
                return True
            if feeder.is_alive():
                return False
            done = committed(broker.bootstrap, settings.group_id, ends)
            return all(done.get(k, -1) >= v for k, v in ends.items())  # nothing left to do

        _wait(moved, 90, f"metering progress after {what}")
        events.append(what)

    try:
        workers[0].start()
        moves_on("w0 started", [0])
        workers[1].start()
        moves_on("w1 added", [0, 1])
        workers[2].start()  # a rebalance starts: partitions move from w0/w1 to w2 …
        time.sleep(1.0)
        workers[1].kill9()  # … and w1 dies in the middle of it
        moves_on("w1 killed -9 during the rebalance", [0, 2])
        workers[1].start()  # another rebalance …
        time.sleep(1.0)
        assert workers[0].stop() == 0  # … and w0 is removed gracefully in the middle of it
        moves_on("w1 back, w0 removed during the rebalance", [1, 2])
        workers[0].start()
        moves_on("w0 back", [0, 1, 2])
        feeder.join()
        wait_caught_up(broker.bootstrap, settings.group_id, ends, timeout=240)
    finally:
        _stop_all(feeder, workers)
    assert len(events) == 5, events
    _check_outputs(broker, settings, traffic)


def test_sink_dying_between_database_and_kafka_commit_loses_and_doubles_nothing(
    broker: EmbeddedBroker, env: dict[str, str], settings: MeteringSettings, migrated: str, logdir: Path
) -> None:
    traffic = _traffic(settings, 40_000, seed=22)
    env = {**env, "STREAMTOLL_DATABASE_URL": migrated, "STREAMTOLL_SINK_GROUP": f"sink-{settings.group_id}"}
    worker = Worker(env, logdir / "worker.log").start()
    rnd = random.Random()
    deaths = 0
    sink: subprocess.Popen[bytes] | None = None
    try:
        ends = produce(broker.bootstrap, traffic.records)
        wait_caught_up(broker.bootstrap, settings.group_id, ends)
        # a backlog of window records; each of four sink incarnations commits 1–3 small batches to
        # PostgreSQL and dies right after the last one, before its Kafka commit: the next one
        # re-reads that batch
        for _ in range(4):
            k = rnd.randint(1, 3)
            sink = _sink(env, logdir / "sink.log", "--batch-size", "300", die_after=k)
            assert sink.wait(120) == 137, (logdir / "sink.log").read_text()[-2000:]
            deaths += 1
        sink = _sink(env, logdir / "sink.log")
        _hourly_equals_truth(migrated, traffic)
    finally:
        if sink is not None:
            _stop(sink)
        worker.stop()
    assert deaths == 4
    assert (logdir / "sink.log").read_text().count("failpoint sink.after_db_commit") == deaths


def test_postgres_restarted_under_the_sink_and_api(
    broker: EmbeddedBroker, env: dict[str, str], settings: MeteringSettings, logdir: Path, tmp_path: Path
) -> None:
    from billing.adapters.db import make_engine, upgrade
    from billing.api.app import create_app
    from billing.services.catalog import load_accounts, load_plans
    from billing.services.keys import create_key

    samples = Path(__file__).parents[2] / "streamtoll" / "samples"
    pg = EmbeddedPostgres(tmp_path / "pg").start()
    assert pg.url
    url = pg.url
    upgrade(url)
    engine = make_engine(url)
    load_plans(engine, samples / "plans.yaml")
    load_accounts(engine, samples / "accounts.yaml")
    key = create_key(engine, "finance", None)
    traffic = _traffic(settings, 30_000, seed=23)
    port = free_port()
    env = {
        **env,
        "STREAMTOLL_DATABASE_URL": url,
        "STREAMTOLL_SINK_GROUP": f"sink-{settings.group_id}",
    }
    worker = Worker(env, logdir / "worker.log").start()
    sink = _sink(env, logdir / "sink.log", "--metrics-bind", f"127.0.0.1:{port}")
    sink_health = f"http://127.0.0.1:{port}/healthz"
    auth = {"Authorization": f"Bearer {key}"}
    feeder, ends = _feed(broker.bootstrap, traffic, pace=(2_000, 0.4))
    try:
        with running(create_app(engine)) as api:
            _wait(lambda: httpx.get(api + "/v1/invoices", headers=auth, timeout=10).status_code == 200, 30, "API up")
            _wait(lambda: _get(sink_health) == 200, 60, "sink ready")
            time.sleep(3)
            pg.stop()  # the database goes away while windows keep arriving
            _wait(lambda: _get(sink_health) == 503, 60, "the sink reporting the database down")
            down = httpx.get(sink_health, timeout=5).json()
            assert down == {"ready": False, "database": "unreachable", "records": down["records"]}
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            assert "streamtoll_sink_database_up 0.0" in metrics
            r = httpx.get(api + "/v1/invoices", headers=auth, timeout=30)
            assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json"
            assert r.json() == {
                "type": "https://streamtoll.dev/problems/database-unavailable",
                "title": "The database is unavailable",
                "status": 503,
                "detail": "the database is unavailable; try again shortly",
                "instance": "/v1/invoices",
            }
            h = httpx.get(api + "/healthz", timeout=30)
            assert h.status_code == 503 and h.json()["database"] == "unreachable"
            time.sleep(8)  # an outage longer than a few sink retries
            pg = EmbeddedPostgres(tmp_path / "pg").start()
            assert pg.url == url
            _wait(lambda: httpx.get(api + "/v1/invoices", headers=auth, timeout=10).status_code == 200, 60, "API back")
            _wait(lambda: _get(sink_health) == 200, 90, "the sink writing again")
            feeder.join()
            wait_caught_up(broker.bootstrap, settings.group_id, ends)
            _hourly_equals_truth(url, traffic)
            assert sink.poll() is None, "the sink must wait for the database, not exit"
            assert "database unavailable; retrying" in (logdir / "sink.log").read_text()
    finally:
        feeder.join()
        _stop(sink)
        worker.stop()
        engine.dispose()
        pg.stop()


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError:
        return 0


def test_broker_unreachable_at_start_and_frozen_mid_run(env: dict[str, str], logdir: Path, tmp_path: Path) -> None:
    port, metrics = free_port(), free_port()
    env = {**env, "STREAMTOLL_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}", "STREAMTOLL_METRICS_BIND": f"127.0.0.1:{metrics}"}
    settings = MeteringSettings.from_env(env)
    worker = Worker(env, logdir / "worker.log").start()
    health = f"http://127.0.0.1:{metrics}/healthz"
    broker = EmbeddedBroker(port=port, log_path=tmp_path / "broker.log")
    try:
        _wait(lambda: "is unreachable" in (logdir / "worker.log").read_text(), 60, "a log line naming the problem")
        assert worker.proc is not None and worker.proc.poll() is None  # retrying, not exiting
        assert _get(health) == 503
        broker.start()  # the broker comes up: the worker carries on by itself
        traffic = _traffic(settings, 30_000, seed=24)
        feeder, ends = _feed(broker.bootstrap, traffic, pace=(2_000, 0.3))
        _wait(lambda: _get(health) == 200, 120, "the worker connected")
        time.sleep(3)
        proc = broker._proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGSTOP)  # the broker hangs: no answer, no error
        time.sleep(12)
        os.kill(proc.pid, signal.SIGCONT)
        feeder.join()
        wait_caught_up(broker.bootstrap, settings.group_id, ends, timeout=240)
        assert worker.proc.poll() is None, "the worker must ride out a broker outage in-process"
        _check_outputs(broker, settings, traffic)
    finally:
        worker.stop()
        broker.stop()


@pytest.mark.soak
def test_soak_random_worker_churn(
    broker: EmbeddedBroker, env: dict[str, str], settings: MeteringSettings, logdir: Path
) -> None:
    """Minutes of traffic while three worker slots are randomly started, stopped and killed -9
    (``pytest -m soak``; STREAMTOLL_SOAK_EVENTS sets how many churn events): kills and graceful
    stops land anywhere, in rebalances too."""
    rounds = int(os.environ.get("STREAMTOLL_SOAK_EVENTS", "40"))
    traffic = _traffic(settings, 400_000, seed=random.randint(0, 10**6))
    workers = [Worker({**env, "STREAMTOLL_INSTANCE_ID": f"w{i}"}, logdir / f"w{i}.log") for i in range(3)]
    feeder, ends = _feed(broker.bootstrap, traffic, pace=(2_000, 0.5))
    rnd = random.Random()
    done: list[str] = []
    try:
        workers[0].start()
        for _ in range(rounds):
            time.sleep(rnd.uniform(1.0, 6.0))
            w = rnd.choice(workers)
            running_ = w.proc is not None and w.proc.poll() is None
            if not running_:
                w.start()
                done.append("start")
            elif rnd.random() < 0.5:
                w.kill9()
                done.append("kill -9")
            else:
                w.stop()
                done.append("stop")
            if not any(x.proc is not None and x.proc.poll() is None for x in workers):
                workers[0].start()
        for w in workers:
            if w.proc is None or w.proc.poll() is not None:
                w.start()
        feeder.join()
        wait_caught_up(broker.bootstrap, settings.group_id, ends, timeout=600)
    finally:
        _stop_all(feeder, workers)
    print(f"churn events: {len(done)} ({', '.join(f'{k}: {done.count(k)}' for k in sorted(set(done)))})")
    _check_outputs(broker, settings, traffic)
