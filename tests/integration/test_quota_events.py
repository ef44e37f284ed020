"""Quota events from real enforcement episode records: a real broker, the real ``streamtoll sink``
and PostgreSQL. A throttle's records — its opening delivered twice, then its end delivered twice
and once more out of order — queue exactly one ``quota.throttled`` and one ``quota.released``
delivery; a block first seen already lifted queues ``quota.blocked`` then ``quota.released``; an
account without an endpoint queues nothing. The events reach the HTTP receiver of
test_webhooks.py, which checks every signature with its own HMAC code."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, Producer, TopicPartition

from billing.services.webhooks import add_endpoint, send_pending
from metering.engine.topics import ensure_topics
from metering.entitlements import Episode, encode_episode
from metering.settings import MeteringSettings

from .test_webhooks import Receiver, receiver

pytestmark = pytest.mark.integration

__all__ = ["receiver"]  # test_webhooks.py's fixture: an HTTP server that verifies signatures


def _produce(bootstrap: str, topic: str, records: list[Episode]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for e in records:
        producer.produce(topic, encode_episode(e), e.id.encode())  # keyed by id, as the gateway does
    assert producer.flush(15) == 0


def _consumed(env: dict[str, str], topic: str) -> bool:
    """Whether the sink's group has committed every record of ``topic``."""
    consumer = Consumer(
        {"bootstrap.servers": env["STREAMTOLL_KAFKA_BOOTSTRAP"], "group.id": env["STREAMTOLL_SINK_GROUP"]}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        # a partition without records has no committed offset (negative): nothing to consume
        # (the embedded broker's high watermark can lag the offset committed after its last record)
        return all(max(c.offset, 0) >= consumer.get_watermark_offsets(c, timeout=10)[1] for c in committed)
    finally:
        consumer.close()


def _queued(engine: sa.Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT v.type, v.account_code, v.body, e.episode_id FROM webhook_deliveries d "
                    "JOIN webhook_events v ON v.id = d.event_id "
                    "LEFT JOIN episode_events e ON e.event_id = v.id ORDER BY d.id"
                )
            )
        )


def test_each_episode_queues_its_quota_events_once_however_often_its_records_arrive(
    env: dict[str, str], migrated: str, engine: sa.Engine, receiver: Receiver, tmp_path: Path
) -> None:
    types = ["quota.throttled", "quota.blocked", "quota.released"]
    receiver.secret = add_endpoint(engine, "acme", receiver.url, types).secret
    ensure_topics(MeteringSettings.from_env(env))
    topic = env["STREAMTOLL_TOPIC_ENFORCEMENT_EVENTS"]

    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    opened = Episode(
        "gw-1/acme/throttle/produce/1", "gw-1", "acme", "throttle", "produce", "quota",
        "plan rate: produce bytes above 1048576 per second", t0, t0 + timedelta(seconds=10),
        None, 2.5, 40, 1_048_576, None,
    )  # fmt: skip
    ended = Episode(
        opened.id, "gw-1", "acme", "throttle", "produce", "quota", opened.reason, t0,
        t0 + timedelta(seconds=31), t0 + timedelta(seconds=30), 7.25, 120, 1_048_576, None,
    )  # fmt: skip
    block = Episode(
        "gw-2/acme/block/consume/2", "gw-2", "acme", "block", "consume", "cap",
        "monthly cap reached: consume_bytes 2000000000000 of 1000000000000 included in 2026-12 (policy block)",
        t0 + timedelta(seconds=40), t0 + timedelta(seconds=50), t0 + timedelta(seconds=49), 0.0, 3, None,
        "consume_bytes",
    )  # fmt: skip
    initech = Episode(
        "gw-1/initech/throttle/requests/3", "gw-1", "initech", "throttle", "requests", "quota",
        "plan rate: requests above 50 per second", t0, t0 + timedelta(seconds=5), None, 0.5, 4, 50, None,
    )  # fmt: skip
    # the opening delivered twice (a producer retry), the end twice, then the opening again, late
    _produce(env["STREAMTOLL_KAFKA_BOOTSTRAP"], topic, [opened, opened, initech])

    log = tmp_path / "sink.log"
    with open(log, "wb") as out:
        sink = subprocess.Popen(
            [sys.executable, "-m", "streamtoll.cli", "sink"],
            env={**env, "STREAMTOLL_DATABASE_URL": migrated},
            stdout=out,
            stderr=out,
        )
    try:

        def stored(episode: Episode) -> bool:
            with engine.connect() as conn:
                at = conn.execute(
                    sa.text("SELECT updated_at FROM enforcement_episodes WHERE id = :id"), {"id": episode.id}
                ).scalar()
            return at == episode.updated

        def wait(*episodes: Episode) -> None:
            deadline = time.monotonic() + 60
            while not all(stored(e) for e in episodes):
                assert sink.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)

        wait(opened, initech)
        assert [(q.type, q.episode_id) for q in _queued(engine)] == [("quota.throttled", opened.id)]
        _produce(env["STREAMTOLL_KAFKA_BOOTSTRAP"], topic, [ended, ended, opened, block, block])
        wait(ended, block)
        _produce(env["STREAMTOLL_KAFKA_BOOTSTRAP"], topic, [opened, ended, block])  # replayed once more
        deadline = time.monotonic() + 60
        while not _consumed(env, topic):  # the sink committed every record: all stored and evented
            assert sink.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
    finally:
        sink.terminate()
        assert sink.wait(30) == 0, log.read_text()[-3000:]

    queued = _queued(engine)
    # exactly one delivery per episode and event type (each to the one endpoint taking its type)
    assert sorted((q.type, q.episode_id or "?") for q in queued) == [
        ("quota.blocked", block.id),
        ("quota.released", opened.id),
        ("quota.released", block.id),
        ("quota.throttled", opened.id),
    ]
    assert all(q.account_code == "acme" for q in queued)  # initech has no endpoint: its event is not sent
    with engine.connect() as conn:
        initech_events = conn.execute(
            sa.text("SELECT type FROM episode_events WHERE episode_id = :id"), {"id": initech.id}
        ).all()
    assert initech_events == [("quota.throttled",)]
    block_order = [q.type for q in queued if q.episode_id == block.id]
    assert block_order == ["quota.blocked", "quota.released"]  # first seen lifted: its start first

    assert send_pending(engine).delivered == 4
    assert send_pending(engine).delivered == 0
    assert all(r.verified for r in receiver.got) and len(receiver.got) == 4
    got = {(e["type"], e["data"]["episode"]["id"]): e for e in receiver.accepted()}
    assert len(got) == 4
    throttled = got[("quota.throttled", opened.id)]
    assert throttled["account"] == "acme"
    start = t0.isoformat().replace("+00:00", ".000Z")
    assert throttled["data"] == {
        "episode": {
            "id": opened.id,
            "gateway": "gw-1",
            "kind": "throttle",
            "direction": "produce",
            "cause": "quota",
            "meter": None,
            "limit_per_second": 1_048_576,
            "reason": "plan rate: produce bytes above 1048576 per second",
            "started_at": start,
            "ended_at": None,
        }
    }
    lifted = got[("quota.released", block.id)]["data"]["episode"]
    assert (lifted["kind"], lifted["cause"], lifted["meter"], lifted["reason"]) == (
        "block",
        "cap",
        "consume_bytes",
        block.reason,
    )
    assert lifted["ended_at"] == (t0 + timedelta(seconds=49)).isoformat().replace("+00:00", ".000Z")
    assert got[("quota.released", opened.id)]["data"]["episode"]["ended_at"] == (
        t0 + timedelta(seconds=30)
    ).isoformat().replace("+00:00", ".000Z")
