"""Topic and group access from an account's plan, enforced by the gateway (``gateway.access``):
real broker, real gateway process with ``GATEWAY_AUTH=streamtoll``, a credential issued by the
command line against PostgreSQL, the account's entitlements published to the entitlements topic
(as billing's publisher will), confluent-kafka and aiokafka as the partner's clients."""

from __future__ import annotations

import asyncio
import datetime
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from gateway import protocol
from gateway.control import ensure_control_topic
from metering.decoders import proxy as proxy_decoder
from metering.decoders.common import Limits
from metering.entitlements import Entitlement, Grant, encode_entitlement
from streamtoll.embedded import EmbeddedBroker

from .conftest import isolated_env
from .harness import Worker, read_all, wait_caught_up, window_totals
from .test_gateway import AuditLog, GatewayProcess
from .test_gateway_credentials import PRODUCE, _cli, _sasl

pytestmark = pytest.mark.integration

FETCH = "io.streamtoll.kafka.fetch"


class World:
    def __init__(
        self, env: dict[str, str], gw: GatewayProcess, audit: AuditLog, cred: dict[str, Any], topics: dict[str, str]
    ) -> None:
        self.env, self.gw, self.audit, self.cred, self.topics = env, gw, audit, cred, topics

    def conf(self, **extra: Any) -> dict[str, Any]:
        return {**_sasl(self.gw, "SCRAM-SHA-512", self.cred), **extra}

    def aio(self) -> dict[str, Any]:
        return {
            "bootstrap_servers": self.gw.bootstrap,
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": self.cred["username"],
            "sasl_plain_password": self.cred["password"],
        }


@pytest.fixture(scope="module")
def world(
    broker: EmbeddedBroker, module_catalog: tuple[str, sa.Engine], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("gwaccess")
    url, _ = module_catalog
    env = isolated_env(broker.bootstrap)
    tag = env["STREAMTOLL_TOPIC_PROXY_AUDIT"].split(".")[0]
    env["STREAMTOLL_TOPIC_CREDENTIALS"] = f"{tag}.credentials"
    env["STREAMTOLL_TOPIC_ENTITLEMENTS"] = f"{tag}.entitlements"
    env["STREAMTOLL_TOPIC_ENFORCEMENT"] = f"{tag}.enforcement"
    env["STREAMTOLL_DATABASE_URL"] = url
    out = _cli(env, "create", "--account", "acme", "--name", "orders-svc", "-o", "json")
    assert out.returncode == 0, out.stderr
    cred = json.loads(out.stdout)

    # the partner's topics: orders-* read and write (by prefix), one read-only, one write-only,
    # and one it has no grant on at all
    hexa = uuid.uuid4().hex[:6]
    topics = {
        "orders": f"orders-{hexa}",
        "read_only": f"feed-{hexa}",
        "write_only": f"drop-{hexa}",
        "secret": f"secret-{hexa}",
    }
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for f in admin.create_topics([NewTopic(t, 2, 1) for t in topics.values()]).values():
        f.result(10)
    ent = Entitlement(
        "acme",
        plan="growth",
        topics=(
            Grant("orders-", "prefix", frozenset({"read", "write"})),
            Grant(topics["read_only"], "literal", frozenset({"read"})),
            Grant(topics["write_only"], "literal", frozenset({"write"})),
        ),
        groups=(Grant("orders-", "prefix"),),
    )
    kafka = {"bootstrap.servers": broker.bootstrap}
    ensure_control_topic(kafka, env["STREAMTOLL_TOPIC_ENTITLEMENTS"])
    producer = Producer(kafka)
    producer.produce(env["STREAMTOLL_TOPIC_ENTITLEMENTS"], encode_entitlement(ent), key=b"acme")
    assert producer.flush(10) == 0

    gw = GatewayProcess({**env, "STREAMTOLL_GATEWAY_AUTH": "streamtoll"}, tmp / "gateway.log").start()
    audit = AuditLog(broker.bootstrap, env["STREAMTOLL_TOPIC_PROXY_AUDIT"])
    try:
        yield World(env, gw, audit, cred, topics)
    finally:
        gw.stop()


def _deliver(conf: dict[str, Any], topic: str, n: int) -> list[KafkaError | None]:
    producer = Producer({**conf, "linger.ms": 5, "message.timeout.ms": 10_000})
    results: list[KafkaError | None] = []
    for i in range(n):
        producer.produce(topic, b"v%03d" % i, partition=i % 2, on_delivery=lambda err, msg: results.append(err))
    producer.flush(15)
    return results


def _consume_errors(consumer: Consumer, want: int, seconds: float = 15) -> tuple[int, list[KafkaError]]:
    got, errors = 0, []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and got < want and not errors:
        for m in consumer.consume(500, 0.2):
            if m.error():
                errors.append(m.error())
            else:
                got += 1
    return got, errors


def test_confluent_kafka_works_within_its_grants_and_is_refused_outside_them(world: World) -> None:
    t = world.topics
    # allowed: produce and consume in an allowed group, committing offsets
    assert _deliver(world.conf(**{"client.id": "acl-producer"}), t["orders"], 40) == [None] * 40
    # (assigned, not subscribed: a rebalance on the dev broker takes seconds; the group's
    # coordinator and offset commit go through access all the same)
    group = f"orders-g-{uuid.uuid4().hex[:6]}"
    consumer = Consumer(world.conf(**{"group.id": group, "enable.auto.commit": False}))
    consumer.assign([TopicPartition(t["orders"], p, 0) for p in range(2)])
    got, errors = _consume_errors(consumer, 40)
    assert (got, errors) == (40, [])
    committed = consumer.commit(asynchronous=False)
    assert committed is not None and all(tp.error is None for tp in committed)
    assert sum(tp.offset for tp in consumer.committed(committed, timeout=10)) == 40
    consumer.close()

    # Metadata lists only the topics the account has a grant on
    listed = set(AdminClient(world.conf()).list_topics(timeout=10).topics)
    assert {t["orders"], t["read_only"], t["write_only"]} <= listed
    assert t["secret"] not in listed
    assert not any(name.startswith("secret-") or ".proxy-audit" in name for name in listed)

    # produce to a topic it may read but not write: the Produce is denied (29)
    results = _deliver(world.conf(**{"client.id": "acl-denied"}), t["read_only"], 3)
    assert [r.code() if r else None for r in results] == [KafkaError.TOPIC_AUTHORIZATION_FAILED] * 3
    # produce to a topic it has no grant on: denied already in Metadata
    results = _deliver(world.conf(), t["secret"], 1)
    assert [r.code() if r else None for r in results] == [KafkaError.TOPIC_AUTHORIZATION_FAILED]

    # consume a topic it may write but not read: the Fetch is denied
    consumer = Consumer(world.conf(**{"group.id": f"orders-g-{uuid.uuid4().hex[:6]}", "client.id": "acl-reader"}))
    consumer.assign([TopicPartition(t["write_only"], p, 0) for p in range(2)])
    _, errors = _consume_errors(consumer, 1)
    consumer.close()
    assert errors and errors[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, errors

    # a group outside its grants
    consumer = Consumer(world.conf(**{"group.id": f"other-{uuid.uuid4().hex[:6]}"}))
    consumer.subscribe([t["orders"]])
    _, errors = _consume_errors(consumer, 1)
    consumer.close()
    assert errors and errors[0].code() == KafkaError.GROUP_AUTHORIZATION_FAILED, errors

    # the denied requests are denied events, never metered; the allowed ones are metered
    audit = world.audit
    audit.wait(
        lambda: (
            any(e["data"].get("outcome") == "denied" for e in audit.for_topic(t["write_only"]))
            and audit.totals(t["orders"], PRODUCE)[0] >= 40
        )
    )
    assert audit.totals(t["orders"], PRODUCE)[0] == 40
    assert audit.totals(t["orders"], FETCH)[0] >= 40
    denied_produce = [e for e in audit.for_topic(t["read_only"]) if e["type"] == PRODUCE]
    assert denied_produce and all(e["data"]["outcome"] == "denied" for e in denied_produce)
    assert audit.totals(t["read_only"], PRODUCE) == (0, 0) and audit.totals(t["write_only"], FETCH) == (0, 0)
    assert audit.for_topic(t["secret"]) == []  # never reached a Produce
    usage = _usage(audit.raw)
    ro = [u for u in usage if u.topic == t["read_only"]]
    # denied_requests counts the partitions each denied request named
    assert sum(u.denied_requests for u in ro) >= 1 and sum(u.bytes + u.records + u.requests for u in ro) == 0
    wo = [u for u in usage if u.topic == t["write_only"] and u.direction == "consume"]
    assert sum(u.denied_requests for u in wo) >= 1 and sum(u.bytes + u.requests for u in wo) == 0
    orders = [u for u in usage if u.topic == t["orders"]]
    assert sum(u.denied_requests for u in orders) == 0 and sum(u.bytes for u in orders) > 0

    metrics = httpx.get(f"http://127.0.0.1:{world.gw.metrics_port}/metrics").text
    for api in ("produce", "fetch", "metadata", "find_coordinator"):
        assert f'streamtoll_gateway_denied_requests_total{{api="{api}"}}' in metrics, api


def _usage(raw: list[bytes]) -> list[Any]:
    """The audit events as the metering worker decodes them."""
    limits = Limits(int(time.time() * 1000), 86_400_000, 300_000, 2**31)
    out = [proxy_decoder.decode(v, limits) for v in raw]
    return [u for u in out if not isinstance(u, str)]


def test_aiokafka_works_within_its_grants_and_is_refused_outside_them(world: World) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka import TopicPartition as AioTP
    from aiokafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError

    t = world.topics

    async def main() -> None:
        p = AIOKafkaProducer(client_id="aio-acl", acks=1, request_timeout_ms=10_000, **world.aio())
        await p.start()
        try:
            await asyncio.gather(*[await p.send(t["orders"], b"a%03d" % i, partition=i % 2) for i in range(20)])
            with pytest.raises(TopicAuthorizationFailedError):
                await (await p.send(t["read_only"], b"no", partition=0))
        finally:
            await p.stop()

        c = AIOKafkaConsumer(client_id="aio-acl-reader", group_id=None, **world.aio())
        await c.start()
        try:
            tps = [AioTP(t["orders"], q) for q in range(2)]
            c.assign(tps)
            await c.seek_to_beginning(*tps)
            n, end = 0, time.monotonic() + 20
            while n < 60 and time.monotonic() < end:
                n += sum(len(v) for v in (await c.getmany(timeout_ms=500)).values())
            assert n >= 60  # 40 from confluent-kafka's test (when it ran first) + 20, or more
            assert set(await c.topics()) >= {t["orders"], t["read_only"]}
            assert t["secret"] not in await c.topics()
            denied = [AioTP(t["write_only"], 0)]
            c.assign(denied)
            c.seek(denied[0], 0)
            with pytest.raises(TopicAuthorizationFailedError):
                end = time.monotonic() + 15
                while time.monotonic() < end:
                    await c.getmany(timeout_ms=500)
        finally:
            await c.stop()

        g = AIOKafkaConsumer(
            t["orders"], client_id="aio-acl-group", group_id=f"other-{uuid.uuid4().hex[:6]}", **world.aio()
        )
        with pytest.raises(GroupAuthorizationFailedError):
            await g.start()
            try:
                end = time.monotonic() + 15
                while time.monotonic() < end:
                    await g.getmany(timeout_ms=500)
            finally:
                await g.stop()

    asyncio.run(main())
    audit = world.audit
    audit.wait(lambda: any(e["data"].get("client_id") == "aio-acl" for e in audit.for_topic(t["read_only"])))
    denied = [e for e in audit.for_topic(t["read_only"]) if e["data"].get("client_id") == "aio-acl"]
    assert denied and all(e["data"]["outcome"] == "denied" and e["data"]["bytes"] == 0 for e in denied)


def test_the_worker_counts_denied_requests_apart_and_never_as_usage(world: World, tmp_path: Path) -> None:
    """The metered output: the worker over the gateway's audit events, as billing reads it."""
    t, audit = world.topics, world.audit
    audit.wait(lambda: any(e["data"].get("outcome") == "denied" for e in audit.for_topic(t["read_only"])))
    worker = Worker(world.env, tmp_path / "worker.log").start()
    try:
        wait_caught_up(
            world.env["STREAMTOLL_KAFKA_BOOTSTRAP"], world.env["STREAMTOLL_METERING_GROUP"], dict(audit.ends), 60
        )
    finally:
        assert worker.stop() == 0
    rows = read_all(world.env["STREAMTOLL_KAFKA_BOOTSTRAP"], world.env["STREAMTOLL_TOPIC_USAGE_WINDOWS"], 4)
    by_topic: dict[tuple[str, str], list[int]] = {}
    for key, quantities in window_totals(rows).items():
        source, principal, _, _, topic, direction, _ = key
        assert (source, principal) == ("proxy", "User:acme/orders-svc")
        acc = by_topic.setdefault((topic, direction), [0, 0, 0, 0])
        for i, q in enumerate(quantities):
            acc[i] += q
    denied = [e["data"] for e in audit.events if e["data"].get("outcome") == "denied"]
    expected = sum(d["denied_requests"] for d in denied if d["topic"] == t["read_only"])
    assert by_topic[(t["read_only"], "produce")] == [0, 0, 0, expected] and expected >= 1
    wo = by_topic[(t["write_only"], "consume")]
    assert wo[:3] == [0, 0, 0] and wo[3] >= 1
    orders = by_topic[(t["orders"], "produce")]
    assert orders[0] > 0 and orders[1] == audit.totals(t["orders"], PRODUCE)[0] and orders[3] == 0


def test_a_fetch_session_naming_a_denied_partition_becomes_a_sessionless_fetch(world: World) -> None:
    """KIP-227: a client opening a fetch session (epoch 0) with a denied partition gets session id
    0 (none), the denied partition error 29 without records, and the allowed partitions' records
    from the real broker; an acks=0 produce of a denied topic gets no answer and writes nothing."""
    from kio.schema.fetch.v12.request import FetchPartition, FetchRequest, FetchTopic
    from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData
    from kio.static.primitive import i8, i32, i32Timedelta, i64

    from gateway.access import blank

    from .test_gateway_credentials import _login_eventually

    t = world.topics
    assert _deliver(world.conf(), t["orders"], 2) == [None, None]
    raw = _login_eventually(world.gw, world.cred["username"], world.cred["password"])

    def part(p: int) -> FetchPartition:
        return FetchPartition(
            partition=i32(p),
            current_leader_epoch=i32(-1),
            fetch_offset=i64(0),
            last_fetched_epoch=i32(-1),
            log_start_offset=i64(-1),
            partition_max_bytes=i32(1 << 20),
        )

    request = FetchRequest(
        cluster_id=None,
        replica_id=i32(-1),
        max_wait=i32Timedelta.parse(datetime.timedelta(milliseconds=100)),
        min_bytes=i32(1),
        max_bytes=i32(1 << 22),
        isolation_level=i8(0),
        session_id=i32(0),
        session_epoch=i32(0),  # open a session
        topics=(
            FetchTopic(topic=t["write_only"], partitions=(part(0),)),
            FetchTopic(topic=t["orders"], partitions=(part(0), part(1))),
        ),
        forgotten_topics_data=(),
        rack_id="",
    )
    response = raw.request(protocol.FETCH, 12, request)
    assert response.session_id == 0 and response.error_code == 0
    got = {(r.topic, int(p.partition_index)): p for r in response.responses for p in r.partitions}
    denied = got[(t["write_only"], 0)]
    assert (int(denied.error_code), int(denied.high_watermark), denied.records) == (29, -1, b"")
    assert all(int(got[(t["orders"], p)].error_code) == 0 for p in (0, 1))
    assert sum(len(got[(t["orders"], p)].records or b"") for p in (0, 1)) > 0

    # acks=0 to a denied topic: no answer; the next request on the connection is answered in turn
    produce = blank(
        ProduceRequest,
        acks=0,
        timeout=i32Timedelta.parse(datetime.timedelta(seconds=5)),
        topic_data=(
            TopicProduceData(name=t["read_only"], partition_data=(PartitionProduceData(index=i32(0), records=b""),)),
        ),
    )
    raw.send(protocol.PRODUCE, 9, produce)
    again = raw.request(protocol.FETCH, 12, request)
    assert again.session_id == 0 and {r.topic for r in again.responses} == {t["write_only"], t["orders"]}
    raw.close()
    direct = Consumer({"bootstrap.servers": world.env["STREAMTOLL_KAFKA_BOOTSTRAP"], "group.id": "x"})
    assert direct.get_watermark_offsets(TopicPartition(t["read_only"], 0), timeout=10) == (0, 0)  # nothing written
    direct.close()


def test_a_withdrawn_grant_applies_to_open_connections_from_their_next_request(world: World) -> None:
    """Runs last in this module: it takes the orders grant away."""
    from kio.schema.list_offsets.v7.request import ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic
    from kio.static.primitive import i8, i32, i64

    from .test_gateway_credentials import _login_eventually

    t = world.topics
    raw = _login_eventually(world.gw, world.cred["username"], world.cred["password"])
    request = ListOffsetsRequest(
        replica_id=i32(-1),
        isolation_level=i8(0),
        topics=(
            ListOffsetsTopic(
                name=t["orders"],
                partitions=(
                    ListOffsetsPartition(partition_index=i32(0), current_leader_epoch=i32(-1), timestamp=i64(-1)),
                ),
            ),
        ),
    )

    def error() -> int:
        return int(raw.request(2, 7, request).topics[0].partitions[0].error_code)

    assert error() == 0
    narrower = Entitlement("acme", topics=(Grant(t["read_only"], "literal", frozenset({"read"})),), groups=())
    producer = Producer({"bootstrap.servers": world.env["STREAMTOLL_KAFKA_BOOTSTRAP"]})
    started = time.monotonic()
    producer.produce(world.env["STREAMTOLL_TOPIC_ENTITLEMENTS"], encode_entitlement(narrower), key=b"acme")
    assert producer.flush(10) == 0
    while error() != 29:
        assert time.monotonic() - started < 10
        time.sleep(0.02)
    print(f"a withdrawn grant applied {time.monotonic() - started:.2f} s after it was published")
    raw.close()
