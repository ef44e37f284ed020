"""Throttles and blocks as the people they affect see them: the gateway (a real process, real
broker, confluent-kafka clients) publishes each as an episode on ``TOPIC_ENFORCEMENT_EVENTS``; the
real ``streamtoll sink`` stores them; ``GET /v1/entitlements`` and the statement (JSON, CSV, PDF)
show them — the same episodes, the same figures. Entitlements and caps decisions are published
straight to their topics (the fixtures of test_gateway_quotas.py)."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from billing.adapters.sink import upsert_episodes
from metering.entitlements import Episode, decode_episode, month_of

from .test_gateway_credentials import _topic
from .test_gateway_quotas import QUOTA, PacedProducer, Setup, quotas

# serial: a rate is measured and the throttle time compared with what the client saw
pytestmark = [pytest.mark.integration, pytest.mark.serial]

__all__ = ["quotas"]  # the module fixture of test_gateway_quotas.py, one gateway for this module


class EpisodeTopic:
    """The episodes topic read from the start: the newest record per id, and every record."""

    def __init__(self, setup: Setup) -> None:
        self.topic = setup.env["STREAMTOLL_TOPIC_ENFORCEMENT_EVENTS"]
        self.consumer = Consumer(
            {
                "bootstrap.servers": setup.broker.bootstrap,
                "group.id": f"ep-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
            }
        )
        self.consumer.assign([TopicPartition(self.topic, 0, 0)])
        self.records: list[Episode] = []
        self.newest: dict[str, Episode] = {}

    def read(self, seconds: float = 0.2) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            m = self.consumer.poll(min(left, 0.1))
            if m is None or m.error() is not None:
                continue
            e = decode_episode(m.value() or b"")
            self.records.append(e)
            self.newest[e.id] = e

    def wait(self, match: Any, timeout: float, what: str) -> Episode:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.read()
            found = [e for e in self.newest.values() if match(e)]
            if found:
                return found[-1]
        raise AssertionError(f"no episode {what} within {timeout} s: {list(self.newest.values())}")


class _Told(PacedProducer):
    """Also sums the ``throttle_time_ms`` the client was told (librdkafka's per-interval window)."""

    def __init__(self, *args: Any) -> None:
        self.told_ms: list[int] = []
        super().__init__(*args)

    def _stats(self, doc: str) -> None:
        super()._stats(doc)
        for b in json.loads(doc)["brokers"].values():
            t = b.get("throttle", {})
            if t.get("cnt"):
                self.told_ms.append(int(t.get("sum", 0)))


@pytest.fixture(scope="module")
def episodes(quotas: Setup) -> Iterator[EpisodeTopic]:
    topic = EpisodeTopic(quotas)
    yield topic
    topic.consumer.close()


def test_a_producer_over_its_quota_makes_a_quota_episode_that_ends_after_the_traffic(
    quotas: Setup, episodes: EpisodeTopic
) -> None:
    topic = _topic(quotas.broker, "episode-quota")
    client = _Told(quotas, "acme", topic, 3 * QUOTA, 4)
    began = datetime.now(UTC)
    client.start()
    opened = episodes.wait(
        lambda e: e.account == "acme" and e.kind == "throttle" and e.started >= began - timedelta(seconds=1),
        10,
        "opened for acme",
    )
    assert (opened.cause, opened.direction, opened.limit, opened.meter) == ("quota", "produce", QUOTA, None)
    assert opened.gateway and opened.id.startswith(opened.gateway + "/acme/throttle/produce/")
    gauge = 'streamtoll_gateway_enforcement_episodes_open{account="acme",direction="produce",kind="throttle"} 1.0'
    assert gauge in quotas.metrics()  # ops see it in force
    client.join(30)
    stopped = time.monotonic()
    # the gateway ends it once acme has not been throttled for a whole quota window (11 s)
    ended = episodes.wait(lambda e: e.id == opened.id and e.ended is not None, 20, "ended for acme")
    closed_after = time.monotonic() - stopped
    assert ended.started == opened.started and ended.ended is not None
    assert opened.started < ended.ended <= datetime.now(UTC)
    assert ended.ended - ended.started < timedelta(seconds=4 + 11)  # held while the 4 s of traffic lasted
    assert ended.requests > 0
    metrics = quotas.metrics()
    assert gauge not in metrics
    delivered = re.search(r'enforcement_episode_records_total\{outcome="delivered"\} (\d+)', metrics)
    assert delivered and int(delivered.group(1)) >= 2
    told = sum(client.told_ms) / 1000  # throttle_time_ms summed over the responses the client got
    print(
        f"\nquota episode: held {ended.held_seconds:.2f} s over {ended.requests} throttled requests, "
        f"lasted {(ended.ended - ended.started).total_seconds():.2f} s; client told {told:.2f} s in "
        f"throttle_time_ms (max {client.throttled_ms} ms); closed {closed_after:.1f} s after the traffic stopped"
    )
    assert client.throttled_ms > 0 and ended.held_seconds > 0
    # what the gateway held is what it told the client (each hold is a response's throttle_time_ms;
    # a hold a later one overlaps is counted once by the gateway, every time by the client)
    assert 0.5 * told <= ended.held_seconds <= 1.5 * told + 0.5


def test_a_block_decision_makes_a_cap_episode_with_its_reason_ended_when_lifted(
    quotas: Setup, episodes: EpisodeTopic
) -> None:
    topic = _topic(quotas.broker, "episode-block")
    decision = quotas.decide("initech", "produce_bytes", "block")
    producer = Producer(quotas.config("initech", **{"message.send.max.retries": 0, "retries": 0}))
    errors: list[KafkaError] = []
    deadline = time.monotonic() + 10
    while not errors and time.monotonic() < deadline:  # the gateway re-reads decisions every 0.1 s
        producer.produce(topic, b"x", on_delivery=lambda err, _m: errors.append(err) if err else None)
        producer.flush(5)
    assert errors and errors[0].code() == KafkaError.POLICY_VIOLATION
    opened = episodes.wait(lambda e: e.account == "initech" and e.kind == "block", 10, "of initech's block")
    assert (opened.cause, opened.meter, opened.direction, opened.reason) == (
        "cap",
        "produce_bytes",
        "produce",
        decision.reason,
    )
    quotas.decide("initech", "produce_bytes", "ok")
    ended = episodes.wait(lambda e: e.id == opened.id and e.ended is not None, 10, "of initech's block ended")
    assert ended.requests >= 1 and ended.ended is not None and ended.ended >= ended.started
    del producer


def test_a_gateway_stopping_ends_the_episodes_it_has_open(quotas: Setup, episodes: EpisodeTopic) -> None:
    topic = _topic(quotas.broker, "episode-drain")
    began = datetime.now(UTC)
    client = PacedProducer(quotas, "acme", topic, 3 * QUOTA, 2)
    client.start()
    opened = episodes.wait(
        lambda e: e.account == "acme" and e.started >= began - timedelta(seconds=1), 10, "opened for acme"
    )
    client.join(30)
    assert quotas.gw.stop() == 0  # SIGTERM: drained within the 11 s the episode would still last
    stopped = datetime.now(UTC)
    try:
        ended = episodes.wait(lambda e: e.id == opened.id and e.ended is not None, 10, "ended at the drain")
        assert ended.ended is not None and opened.started < ended.ended <= ended.updated <= stopped
        assert ended.held_seconds > 0 and "enforcement episodes published" in quotas.gw.log()
    finally:
        quotas.gw.start()  # the module's other tests go on with it


def _episode(id_: str, updated: datetime, ended: datetime | None = None) -> Episode:
    start = updated - timedelta(seconds=30)
    return Episode(id_, "gw", "globex", "throttle", "produce", "quota", "plan rate", start, updated, ended, 1.5, 3, 10)


def test_the_sink_keeps_the_newest_record_of_each_episode_whatever_the_order(quotas: Setup) -> None:
    engine = sa.create_engine(quotas.env["STREAMTOLL_DATABASE_URL"])
    try:
        now = datetime.now(UTC).replace(microsecond=0)
        first, last = (
            _episode("gw/x/1", now),
            _episode("gw/x/1", now + timedelta(seconds=60), now + timedelta(seconds=61)),
        )
        for batch in ([first, last], [last], [first], [last, first]):  # replays, late and out of order
            upsert_episodes(engine, batch)
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.text("SELECT updated_at, ended_at FROM enforcement_episodes WHERE id = 'gw/x/1'")
                ).all()
            assert rows == [(last.updated, last.ended)]
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM enforcement_episodes WHERE id = 'gw/x/1'"))
    finally:
        engine.dispose()


def _get(base: str, path: str, key: str) -> httpx.Response:
    r = httpx.get(base + path, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert r.status_code == 200, r.text
    return r


def test_partners_see_every_episode_in_their_entitlements_and_statement_as_the_gateway_published_it(
    quotas: Setup, episodes: EpisodeTopic, tmp_path: Path
) -> None:
    from billing.api.app import create_app
    from billing.services.keys import create_key
    from streamtoll.serving import running

    # an episode of its own (a block of hooli's), so this test stands alone
    topic = _topic(quotas.broker, "episode-view")
    quotas.decide("hooli", "produce_records", "block")
    producer = Producer(quotas.config("hooli", **{"retries": 0}))
    failed: list[KafkaError] = []
    deadline = time.monotonic() + 10
    while not failed and time.monotonic() < deadline:
        producer.produce(topic, b"x", on_delivery=lambda err, _m: failed.append(err) if err else None)
        producer.flush(5)
    quotas.decide("hooli", "produce_records", "ok")
    episodes.wait(lambda e: e.account == "hooli" and e.ended is not None, 10, "of hooli's block ended")
    del producer
    episodes.read(1)
    published = {e.id: e for e in episodes.newest.values()}
    accounts = sorted({e.account for e in published.values()})
    # the real sink stores them
    engine = sa.create_engine(quotas.env["STREAMTOLL_DATABASE_URL"])
    log = tmp_path / "sink.log"
    with open(log, "wb") as out:
        sink = subprocess.Popen(
            [sys.executable, "-m", "streamtoll.cli", "sink"],
            env={**quotas.env, "STREAMTOLL_SINK_GROUP": f"sink-{uuid.uuid4().hex[:8]}"},
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            with engine.connect() as conn:
                stored = {
                    r.id: r
                    for r in conn.execute(sa.text("SELECT * FROM enforcement_episodes WHERE id LIKE :g"), {"g": "%/%"})
                    if r.id in published
                }
            if all(i in stored and stored[i].updated_at == e.updated for i, e in published.items()):
                break
            assert sink.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
    finally:
        sink.terminate()
        sink.wait(30)
    keys = {a: create_key(engine, "partner", a) for a in accounts}
    period = month_of(datetime.now(UTC))
    try:
        with running(create_app(engine, auth_limit=1000)) as base:
            for account in accounts:
                mine = sorted((e for e in published.values() if e.account == account), key=lambda e: (e.started, e.id))
                shown = _get(base, "/v1/entitlements", keys[account]).json()["episodes"]
                assert [s["id"] for s in shown] == [e.id for e in mine]
                for s, e in zip(shown, mine, strict=True):
                    assert (s["kind"], s["direction"], s["cause"], s["meter"], s["reason"]) == (
                        e.kind,
                        e.direction,
                        e.cause,
                        e.meter,
                        e.reason,
                    )
                    assert (s["limit_per_second"], s["requests"], s["held_seconds"]) == (
                        e.limit,
                        e.requests,
                        round(e.held_seconds, 3),
                    )
                    assert datetime.fromisoformat(s["started_at"]) == e.started
                    assert e.ended is not None and datetime.fromisoformat(s["ended_at"]) == e.ended and not s["open"]
                    assert s["duration_seconds"] == pytest.approx((e.ended - e.started).total_seconds(), abs=0.002)
                statement = _get(base, f"/v1/statements/{period}", keys[account]).json()
                assert statement["throttles_and_blocks"] == shown
                table = list(
                    csv.DictReader(io.StringIO(_get(base, f"/v1/statements/{period}?format=csv", keys[account]).text))
                )
                assert [r["id"] for r in table if r["section"] == "throttles_and_blocks"] == [e.id for e in mine]
                pdf = tmp_path / f"{account}.pdf"
                pdf.write_bytes(_get(base, f"/v1/statements/{period}.pdf", keys[account]).content)
                text = " ".join(
                    subprocess.run(
                        ["pdftotext", str(pdf), "-"], capture_output=True, check=True, text=True
                    ).stdout.split()
                )
                assert "Throttles and blocks" in text and "No throttle or block" not in text
                for e in mine:
                    assert e.started.strftime("%Y-%m-%d %H:%M:%S UTC") in text
                    # the cell wraps, its lines interleaved with the next cells': every word is there
                    assert set(e.reason.split()) <= set(text.split())
            # an episode stored after the statement was: it is refreshed with it (the month's mark moved)
            later = datetime.now(UTC)
            late = Episode(
                f"gw-late/{accounts[0]}/block/produce/1", "gw-late", accounts[0], "block", "produce", "cap",
                "monthly cap reached", later, later, later + timedelta(seconds=2), 0.0, 4, None, "produce_bytes",
            )  # fmt: skip
            upsert_episodes(engine, [late])
            deadline = time.monotonic() + 10  # a stored statement is served for up to a minute while it is refreshed
            while (
                _get(base, f"/v1/statements/{period}", keys[accounts[0]]).json()["throttles_and_blocks"][-1]["id"]
                != late.id
            ):
                assert time.monotonic() < deadline, "the statement never showed an episode stored after it"
                time.sleep(0.2)
            with engine.begin() as conn:
                conn.execute(sa.text("DELETE FROM enforcement_episodes WHERE id = :id"), {"id": late.id})
            # an account the gateways never held: its statement says so
            globex = create_key(engine, "partner", "globex")
            assert "globex" not in accounts
            assert _get(base, "/v1/entitlements", globex).json()["episodes"] == []
            pdf = tmp_path / "globex.pdf"
            pdf.write_bytes(_get(base, f"/v1/statements/{period}.pdf", globex).content)
            text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, check=True, text=True).stdout
            assert "No throttle or block in this period." in text
    finally:
        engine.dispose()
