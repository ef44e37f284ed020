"""The usage sink on a real PostgreSQL and broker: idempotent upserts, exact after kill -9."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC
from pathlib import Path

import pytest
import sqlalchemy as sa

from billing.adapters.sink import upsert_windows
from metering.contracts import UsageWindow
from metering.settings import MeteringSettings
from streamtoll.embedded import EmbeddedBroker

from .harness import Traffic, Worker, produce, wait_caught_up

pytestmark = pytest.mark.integration


def window(version: int, b: int, shard: str = "proxy-audit/0", hour: str = "2026-11-03T10:00:00.000Z") -> UsageWindow:
    return UsageWindow(hour, "", "proxy", None, "User:a", "c", "", "orders", "produce", b, 1, 1, 0, version, shard)


def hourly(url: str) -> dict[tuple[str, ...], list[int]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT source, principal, client_id, virtual_cluster, topic, direction, hour, "
                    "bytes, records, requests, denied_requests FROM usage_hourly"
                )
            ).all()
    finally:
        engine.dispose()
    out = {}
    for r in rows:
        iso = r.hour.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        out[(r.source, r.principal, r.client_id, r.virtual_cluster, r.topic, r.direction, iso)] = [
            int(r.bytes),
            int(r.records),
            int(r.requests),
            int(r.denied_requests),
        ]
    return out


def test_upsert_keeps_the_newest_version_and_is_idempotent(migrated: str) -> None:
    engine = sa.create_engine(migrated, connect_args={"options": "-c timezone=UTC"})
    try:
        assert upsert_windows(engine, [window(5, 100), window(9, 150), window(7, 120)]) == 1
        upsert_windows(engine, [window(9, 150)])  # a replay
        upsert_windows(engine, [window(3, 10)])  # an older snapshot arriving late
        upsert_windows(engine, [window(4, 40, shard="proxy-audit/1")])  # another shard of the same key
        with engine.connect() as conn:
            got = conn.execute(sa.text("SELECT bytes FROM usage_hourly")).scalar_one()
            shard_rows = conn.execute(sa.text("SELECT count(*) FROM usage_shard_rows")).scalar_one()
        assert (got, shard_rows) == (190, 2)
    finally:
        engine.dispose()


def test_sink_killed_repeatedly_loses_and_doubles_nothing(
    broker: EmbeddedBroker, env: dict[str, str], settings: MeteringSettings, migrated: str, logdir: Path
) -> None:
    traffic = Traffic.make(
        time.time(),
        (settings.topic_proxy_audit, settings.topic_broker_metrics, settings.topic_broker_audit),
        n_proxy=40_000,
        seed=5,
    )
    env = {**env, "STREAMTOLL_DATABASE_URL": migrated, "STREAMTOLL_SINK_GROUP": f"sink-{settings.group_id}"}
    worker = Worker(env, logdir / "worker.log").start()
    sink_log = open(logdir / "sink.log", "ab")  # noqa: SIM115

    def start_sink() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "streamtoll.cli", "sink"],
            env=env,
            stdout=sink_log,
            stderr=sink_log,
            start_new_session=True,
        )

    sink = start_sink()
    ends: dict[tuple[str, int], int] = {}
    feeder = threading.Thread(target=lambda: ends.update(produce(broker.bootstrap, traffic.records, pace=(2_000, 0.3))))
    feeder.start()
    rnd = random.Random()
    kills = 0
    try:
        while feeder.is_alive() and kills < 5:
            time.sleep(rnd.uniform(1.0, 3.0))
            os.killpg(sink.pid, signal.SIGKILL)
            sink.wait()
            kills += 1
            sink = start_sink()
        feeder.join()
        wait_caught_up(broker.bootstrap, settings.group_id, ends)
        want = {k: v for k, v in traffic.truth.items() if any(v)}
        deadline = time.monotonic() + 120
        got = hourly(migrated)
        while got != want and time.monotonic() < deadline:
            time.sleep(0.5)
            got = hourly(migrated)
    finally:
        feeder.join()
        sink.send_signal(signal.SIGTERM)
        sink.wait(30)
        worker.stop()
    assert kills >= 2
    missing = {k: (v, got.get(k)) for k, v in want.items() if got.get(k) != v}
    assert not missing and set(got) == set(want), f"{len(missing)} differ, e.g. {list(missing.items())[:3]}"


def test_daily_usage_stays_the_sum_of_the_hourly_shard_rows(migrated: str) -> None:
    """The trigger-kept daily table equals the hourly rows added up per UTC day, after new
    rows, newer versions, replays, older versions arriving late and a deletion; and the usage
    read over whole days (daily table) equals the same read over hour bounds (shard rows)."""
    from datetime import datetime, timedelta

    from billing.services.usage import usage_rows

    engine = sa.create_engine(migrated)
    rnd = random.Random(9)
    hours = [f"2026-11-{d:02d}T{h:02d}:00:00.000Z" for d in (1, 2, 30) for h in (0, 5, 23)]
    try:
        for version in range(1, 40):
            batch = [
                UsageWindow(
                    rnd.choice(hours),
                    "",
                    rnd.choice(["proxy", "audit_log"]),
                    None,
                    f"User:{rnd.randrange(4)}",
                    "c",
                    "",
                    rnd.choice(["orders", "pay"]),
                    rnd.choice(["produce", "consume"]),
                    rnd.randrange(10**9),
                    rnd.randrange(10**5),
                    rnd.randrange(100),
                    rnd.randrange(5),
                    version if rnd.random() > 0.2 else rnd.randrange(1, version + 1),
                    f"p/{rnd.randrange(3)}",
                )
                for _ in range(40)
            ]
            upsert_windows(engine, batch)
            upsert_windows(engine, batch[:10])  # a replay
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM usage_shard_rows WHERE principal = 'User:3' AND direction = 'consume'"))
            mismatch = conn.execute(
                sa.text(
                    "SELECT count(*) FROM (SELECT source, principal, client_id, virtual_cluster, topic, direction, "
                    "(hour AT TIME ZONE 'UTC')::date AS day, sum(bytes) b, sum(records) r, sum(requests) q, "
                    "sum(denied_requests) d FROM usage_shard_rows GROUP BY 1, 2, 3, 4, 5, 6, 7) h "
                    "FULL JOIN (SELECT * FROM usage_daily WHERE (bytes, records, requests, denied_requests) "
                    "<> (0, 0, 0, 0)) d USING (source, principal, client_id, virtual_cluster, topic, direction, day) "
                    "WHERE h.b IS DISTINCT FROM d.bytes OR h.r IS DISTINCT FROM d.records "
                    "OR h.q IS DISTINCT FROM d.requests OR h.d IS DISTINCT FROM d.denied_requests"
                )
            ).scalar_one()
        assert mismatch == 0
        start = datetime(2026, 11, 1, tzinfo=UTC)
        end = datetime(2026, 12, 1, tzinfo=UTC)
        by_days = usage_rows(engine, start, end)
        by_hours = usage_rows(engine, start, end - timedelta(microseconds=1))  # not midnight: shard rows
        assert by_days and sorted(by_days, key=str) == sorted(by_hours, key=str)
    finally:
        engine.dispose()


def test_a_sink_started_before_its_topic_exists_waits_for_it(
    broker: EmbeddedBroker, env: dict[str, str], settings: MeteringSettings, migrated: str, logdir: Path
) -> None:
    """In compose or Kubernetes the sink may start before any worker created the usage windows
    topic: it waits (alive, a warning), then sinks what arrives."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    env = {**env, "STREAMTOLL_DATABASE_URL": migrated}
    with open(logdir / "sink.log", "ab") as sink_log:
        sink = subprocess.Popen(
            [sys.executable, "-m", "streamtoll.cli", "sink"], env=env, stdout=sink_log, stderr=sink_log
        )
        try:
            deadline = time.monotonic() + 60
            while "does not exist yet" not in (logdir / "sink.log").read_text():
                assert sink.poll() is None, (logdir / "sink.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "the sink never said it waits for its topic"
                time.sleep(0.2)
            admin = AdminClient({"bootstrap.servers": broker.bootstrap})
            admin.create_topics([NewTopic(settings.topic_usage_windows, 2, 1)])[settings.topic_usage_windows].result()
            producer = Producer({"bootstrap.servers": broker.bootstrap})
            # records no worker wrote (not JSON; a window_start that is no time) are logged and
            # skipped: they never stop the windows after them
            bad = {**dataclasses.asdict(window(1, 1)), "window_start": 1762164000000}
            w = window(3, 4242)
            for value in (b"not json", json.dumps(bad).encode(), json.dumps(dataclasses.asdict(w)).encode()):
                producer.produce(settings.topic_usage_windows, value, partition=0)
            producer.flush(10)
            deadline = time.monotonic() + 90
            while not hourly(migrated):
                assert sink.poll() is None, (logdir / "sink.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "the window never reached the database"
                time.sleep(0.5)
            assert [v[0] for v in hourly(migrated).values()] == [4242]
            assert (logdir / "sink.log").read_text().count("unreadable usage window record skipped") == 2
        finally:
            sink.send_signal(signal.SIGTERM)
            sink.wait(30)
