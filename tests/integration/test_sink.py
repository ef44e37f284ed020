"""The usage sink on a real PostgreSQL and broker: idempotent upserts, exact after kill -9."""

from __future__ import annotations

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

from billing.services.sink import upsert_windows
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
