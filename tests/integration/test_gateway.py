"""``streamtoll gateway`` as a real process in front of the session's broker, real clients
through it: what it meters equals what the clients sent and received and what the broker holds.

Byte counts are checked against record batches read straight from the broker (not through the
gateway); every audit event is checked with the worker's own decoder, and one test runs the
worker over them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kio.schema.api_versions.v3.request import ApiVersionsRequest
from kio.schema.find_coordinator.v4.request import FindCoordinatorRequest
from kio.schema.metadata.v1.request import MetadataRequest as MetadataRequestV1
from kio.schema.metadata.v12.request import MetadataRequest
from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData
from kio.static.primitive import i8, i16, i32

from metering.decoders.common import Limits
from metering.decoders.proxy import decode
from metering.domain.events import UsageEvent
from streamtoll.embedded import EmbeddedBroker, free_port

from .conftest import isolated_env
from .harness import Worker, read_all, wait_caught_up, window_totals
from .kafka_wire import RawClient, broker_batches

pytestmark = pytest.mark.integration

PARTITIONS = 4
META_ALL = MetadataRequest(topics=None, allow_auto_topic_creation=False, include_topic_authorized_operations=False)
PRODUCE = "io.streamtoll.kafka.produce"
FETCH = "io.streamtoll.kafka.fetch"


class GatewayProcess:
    """``streamtoll gateway`` as a child process on free ports."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port, self.broker_port, self.metrics_port = free_port(), free_port(), free_port()
        self.env = {
            **env,
            "STREAMTOLL_METRICS_BIND": f"127.0.0.1:{self.metrics_port}",
            "STREAMTOLL_GATEWAY_LISTEN": f"127.0.0.1:{self.port}",
            "STREAMTOLL_GATEWAY_BROKER_PORTS": str(self.broker_port),
            "STREAMTOLL_GATEWAY_VIRTUAL_CLUSTER": "vc-test",
            "STREAMTOLL_GATEWAY_JOURNAL_DIR": str(log_path.parent / f"journal-{self.port}"),
            **env,
        }
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> GatewayProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamtoll.cli", "gateway"], env=self.env, stdout=log, stderr=log
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                socket.create_connection(("127.0.0.1", self.broker_port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("the gateway did not listen:\n" + self.log())

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class AuditLog:
    """The proxy audit topic, read straight from the broker as events arrive."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": f"audit-{uuid.uuid4().hex}", "enable.auto.commit": False}
        )
        self.consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        self.events: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self.ends: dict[tuple[str, int], int] = {}

    def poll(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            for m in self.consumer.consume(10_000, 0.1):
                if m.error():
                    continue
                self.raw.append(m.value())
                self.events.append(json.loads(m.value()))
                self.ends[(m.topic(), m.partition())] = m.offset() + 1
            if time.monotonic() >= deadline:
                return

    def totals(self, topic: str, kind: str) -> tuple[int, int]:
        evs = [e["data"] for e in self.events if e["type"] == kind and e["data"]["topic"] == topic]
        return sum(d["records"] for d in evs), sum(d["bytes"] for d in evs)

    def wait(self, done: Callable[[], bool], timeout: float = 20.0, settle: float = 0.3) -> None:
        """Read until ``done()``; then a little longer, so an extra (wrong) event would show."""
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            self.poll(0.2)
        self.poll(settle)

    def for_topic(self, topic: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["data"]["topic"] == topic]


@pytest.fixture(scope="module")
def gw_env(broker: EmbeddedBroker) -> dict[str, str]:
    return isolated_env(broker.bootstrap)


@pytest.fixture(scope="module")
def gateway(gw_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(gw_env, tmp_path_factory.mktemp("gateway") / "gateway.log").start()
    yield gw
    assert gw.stop() == 0, gw.log()


@pytest.fixture(scope="module")
def audit(gateway: GatewayProcess, gw_env: dict[str, str]) -> Iterator[AuditLog]:
    log = AuditLog(gw_env["STREAMTOLL_KAFKA_BOOTSTRAP"], gw_env["STREAMTOLL_TOPIC_PROXY_AUDIT"])
    yield log
    log.consumer.close()


def _topic(broker: EmbeddedBroker, name: str, config: dict[str, str] | None = None) -> str:
    topic = f"gw-{name}-{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1, config=config or {})])[topic].result(10)
    return topic


def _values(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    # compressible and incompressible, small and large: batches of every shape
    return [(rng.randbytes(rng.randint(1, 400)) if i % 3 else b"x" * rng.randint(0, 3000)) for i in range(n)]


def _decodes(raw: list[bytes]) -> list[UsageEvent]:
    """Every event is valid by the published JSON Schema, and the worker's decoder accepts it
    (not a type it ignores, not a rejection)."""
    from jsonschema import Draft202012Validator

    schema = json.loads((Path(__file__).parents[2] / "docs" / "schemas" / "proxy-audit.schema.json").read_text())
    check = Draft202012Validator(schema)
    now = int(time.time() * 1000)
    limits = Limits(now, 86_400_000, 300_000, 2**40)
    out = []
    for value in raw:
        assert check.is_valid(json.loads(value)), [e.message for e in check.iter_errors(json.loads(value))]
        ev = decode(value, limits)
        assert isinstance(ev, UsageEvent), value
        out.append(ev)
    return out


def test_confluent_producers_every_compression_and_acks_are_metered_exactly(
    broker: EmbeddedBroker, gateway: GatewayProcess, audit: AuditLog
) -> None:
    cases = [(c, "all", True) for c in ("none", "gzip", "lz4", "zstd", "snappy")] + [
        ("zstd", "1", False),
        ("lz4", "0", False),
    ]
    runs = []
    for i, (compression, acks, idempotent) in enumerate(cases):
        topic = _topic(broker, f"{compression}-acks{acks}")
        delivered: list[int] = []
        p = Producer(
            {
                "bootstrap.servers": gateway.bootstrap,
                "client.id": f"producer-{i}",
                "enable.idempotence": idempotent,
                "acks": acks,
                "compression.type": compression,
                "linger.ms": 5,
                "batch.num.messages": 100,
            }
        )
        for j, v in enumerate(_values(500, i)):
            p.produce(topic, v, key=str(j % 7).encode(), on_delivery=lambda e, m, d=delivered: d.append(e is None))
        runs.append((topic, acks, p, delivered))
    for topic, _, p, delivered in runs:
        assert p.flush(30) == 0
        assert delivered.count(True) == 500, topic

    for topic, acks, _, _ in runs:
        audit.wait(lambda t=topic: audit.totals(t, PRODUCE)[0] >= 500)
        stored = broker_batches(broker.bootstrap, topic, PARTITIONS)
        assert audit.totals(topic, PRODUCE) == stored, topic
        assert stored[0] == 500
        for e in audit.for_topic(topic):
            assert e["subject"] == "User:ANONYMOUS"
            assert e["data"]["virtual_cluster"] == "vc-test"
            assert e["data"]["client_id"].startswith("producer-")
            assert e["data"]["acknowledged"] is (acks != "0")
            assert e["data"]["acks"] == {"all": -1, "1": 1, "0": 0}[acks]
    events = _decodes(audit.raw)
    assert len({ev.event_key for ev in events}) == len(events), "every event has its own id"


def test_consumer_group_fetches_are_metered_as_delivered(
    broker: EmbeddedBroker, gateway: GatewayProcess, audit: AuditLog
) -> None:
    topic = _topic(broker, "group")
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5, "compression.type": "lz4"})
    for j, v in enumerate(_values(2000, 99)):
        p.produce(topic, v, key=str(j).encode())
    assert p.flush(30) == 0
    stored = broker_batches(broker.bootstrap, topic, PARTITIONS)

    c = Consumer(
        {
            "bootstrap.servers": gateway.bootstrap,
            "group.id": f"g-{uuid.uuid4().hex[:6]}",
            "client.id": "group-consumer",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "fetch.queue.backoff.ms": 10,
            "fetch.max.bytes": 50_000,  # many fetches, some ending in a partial batch
            "message.max.bytes": 50_000,
            "max.partition.fetch.bytes": 20_000,
        }
    )
    c.subscribe([topic])
    consumed = 0
    deadline = time.monotonic() + 40
    while consumed < 2000 and time.monotonic() < deadline:
        consumed += sum(1 for m in c.consume(1000, 0.5) if not m.error())
    c.close()
    assert consumed == 2000
    audit.wait(lambda: audit.totals(topic, FETCH)[0] >= 2000)
    assert audit.totals(topic, FETCH) == stored
    assert {e["data"]["client_id"] for e in audit.for_topic(topic)} == {"group-consumer"}
    _decodes(audit.raw)


def _audit_pending(gateway: GatewayProcess) -> float:
    import httpx

    text = httpx.get(f"http://127.0.0.1:{gateway.metrics_port}/metrics").text
    lines = text.splitlines()
    return next(float(line.split()[-1]) for line in lines if line.startswith("streamtoll_gateway_audit_pending "))


def test_a_rebalancing_group_is_metered_at_least_what_it_consumed_plus_bounded_discards(
    broker: EmbeddedBroker, gateway: GatewayProcess, audit: AuditLog
) -> None:
    """Two confluent-kafka members through the gateway, the second joining mid-stream, so a
    rebalance revokes partitions whose prefetched records the first member discards. The gateway
    meters Fetch as what went over the wire: per partition, metered records ≥ records consumed
    (each consumption, a record consumed twice after a rebalance was also fetched twice), and the
    excess is what librdkafka prefetched and dropped at a revoke — at most its prefetch queue
    (``queued.max.messages.kbytes``) plus one fetch in flight (``fetch.max.bytes``) per revoke,
    counted at ≥ 100 bytes a record — plus, per assignment, one batch (≤ 20 records) begun
    before the committed offset it resumes from."""
    per_partition, batch_records, value = 500, 20, b"v" * 100
    topic = _topic(broker, "rebalance")
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5, "batch.num.messages": batch_records})
    for i in range(per_partition):
        for part in range(PARTITIONS):
            p.produce(topic, value, partition=part)
        if i % 100 == 0:
            p.poll(0)
    assert p.flush(30) == 0

    queue_kb, fetch_max = 16, 16_384
    group = f"g-{uuid.uuid4().hex[:6]}"
    assigned: Counter[str] = Counter()
    revokes: Counter[str] = Counter()

    def member(name: str) -> Consumer:
        c = Consumer(
            {
                "bootstrap.servers": gateway.bootstrap,
                "group.id": group,
                "client.id": f"rebalance-{name}",
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 300,
                "partition.assignment.strategy": "range",
                "fetch.queue.backoff.ms": 10,
                "queued.max.messages.kbytes": queue_kb,
                "fetch.max.bytes": fetch_max,
                "message.max.bytes": fetch_max,
                "max.partition.fetch.bytes": 4096,
            }
        )

        def on_assign(consumer: Consumer, parts: list[TopicPartition]) -> None:
            assigned[name] += len(parts)

        def on_revoke(consumer: Consumer, parts: list[TopicPartition]) -> None:
            if parts and not finished:  # at close every record was consumed: nothing queued to discard
                revokes[name] += 1

        c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
        return c

    consumed: Counter[int] = Counter()
    seen: dict[int, set[int]] = {part: set() for part in range(PARTITIONS)}
    by_member: Counter[str] = Counter()

    def take(name: str, c: Consumer, n: int, timeout: float) -> None:
        for m in c.consume(n, timeout):
            if m.error() is None:
                consumed[m.partition()] += 1
                seen[m.partition()].add(m.offset())
                by_member[name] += 1

    finished = False
    started = time.monotonic()
    a = member("a")
    while sum(consumed.values()) < 300 and time.monotonic() - started < 20:
        take("a", a, 100, 0.1)
    b = member("b")
    while not b.assignment() and time.monotonic() - started < 25:  # a slowly, with a queue to discard
        take("a", a, 5, 0.05)
        take("b", b, 100, 0.05)
        time.sleep(0.05)
    while any(len(s) < per_partition for s in seen.values()) and time.monotonic() - started < 30:
        take("a", a, 500, 0.05)
        take("b", b, 500, 0.05)
    finished = True
    a.close()
    b.close()
    elapsed = time.monotonic() - started
    assert all(len(s) == per_partition for s in seen.values()), {k: len(v) for k, v in seen.items()}
    assert by_member["b"] > 0 and revokes["a"] >= 1  # the rebalance moved partitions to b

    def metered() -> Counter[int]:
        out: Counter[int] = Counter()
        for e in audit.for_topic(topic):
            if e["type"] == FETCH:
                out[e["data"]["partition"]] += e["data"]["records"]
        return out

    audit.wait(lambda: all(metered()[k] >= consumed[k] for k in consumed) and _audit_pending(gateway) == 0)
    got = metered()
    excess = {k: got[k] - consumed[k] for k in range(PARTITIONS)}
    assert all(x >= 0 for x in excess.values()), (got, consumed)
    bound = sum(revokes.values()) * (queue_kb * 1024 + fetch_max) // len(value) + sum(assigned.values()) * batch_records
    print(f"rebalance: {elapsed:.1f}s consumed {dict(consumed)} metered {dict(got)} excess {excess} bound {bound}")
    print(f"  assigned {dict(assigned)} revokes {dict(revokes)} by member {dict(by_member)}")
    assert sum(excess.values()) <= bound
    assert {e["data"]["client_id"] for e in audit.for_topic(topic)} == {"rebalance-a", "rebalance-b"}


def test_transactional_producer_through_the_gateway(
    broker: EmbeddedBroker, gateway: GatewayProcess, audit: AuditLog
) -> None:
    """Transactions work through the gateway (their coordinator is found through it); a
    committed transaction is metered as the broker stores it, an aborted one as acknowledged
    produces (the records went over the wire and the broker took them; aborting is the client's
    later decision)."""
    committed, aborted = _topic(broker, "txn-commit"), _topic(broker, "txn-abort")
    p = Producer(
        {
            "bootstrap.servers": gateway.bootstrap,
            "transactional.id": f"txn-{uuid.uuid4().hex[:6]}",
            "client.id": "txn-producer",
            "linger.ms": 5,
        }
    )
    p.init_transactions(20)
    for topic, n, commit in ((committed, 300, True), (aborted, 100, False)):
        p.begin_transaction()
        for v in _values(n, 3):
            p.produce(topic, v)
        assert p.flush(20) == 0
        (p.commit_transaction if commit else p.abort_transaction)(20)

    c = Consumer(
        {
            "bootstrap.servers": gateway.bootstrap,
            "group.id": f"g-{uuid.uuid4().hex[:6]}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    c.assign([TopicPartition(committed, p, 0) for p in range(PARTITIONS)])
    got = 0
    deadline = time.monotonic() + 20
    while got < 300 and time.monotonic() < deadline:
        got += sum(1 for m in c.consume(1000, 0.5) if not m.error())
    c.close()
    assert got == 300
    stored = broker_batches(broker.bootstrap, committed, PARTITIONS)
    audit.wait(
        lambda: (
            audit.totals(committed, FETCH)[0] >= 300
            and audit.totals(committed, PRODUCE)[0] >= 300
            and audit.totals(aborted, PRODUCE)[0] >= 100
        )
    )
    assert audit.totals(committed, PRODUCE) == stored
    assert audit.totals(committed, FETCH) == stored
    assert audit.totals(aborted, PRODUCE)[0] == 100


def test_aiokafka_through_the_gateway_is_metered(
    broker: EmbeddedBroker, gateway: GatewayProcess, audit: AuditLog
) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka import TopicPartition as AioTP

    topic = _topic(broker, "aiokafka")

    async def run() -> int:
        producer = AIOKafkaProducer(
            bootstrap_servers=gateway.bootstrap, client_id="aio-producer", compression_type="gzip", acks=1
        )
        await producer.start()
        try:
            futures = [await producer.send(topic, v, partition=j % PARTITIONS) for j, v in enumerate(_values(300, 5))]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=gateway.bootstrap, client_id="aio-consumer", group_id=None)
        await consumer.start()
        got = 0
        try:
            tps = [AioTP(topic, p) for p in range(PARTITIONS)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            deadline = time.monotonic() + 20
            while got < 300 and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                got += sum(len(msgs) for msgs in batch.values())
        finally:
            await consumer.stop()
        return got

    assert asyncio.run(run()) == 300
    stored = broker_batches(broker.bootstrap, topic, PARTITIONS)
    assert stored[0] == 300
    audit.wait(lambda: audit.totals(topic, PRODUCE)[0] >= 300 and audit.totals(topic, FETCH)[0] >= 300)
    assert audit.totals(topic, PRODUCE) == stored
    assert audit.totals(topic, FETCH) == stored
    assert {e["data"]["client_id"] for e in audit.for_topic(topic)} == {"aio-producer", "aio-consumer"}


def _one_batch(broker: EmbeddedBroker, size: int) -> bytes:
    """A real record batch (one record of ``size`` bytes) as a client would send it."""
    topic = _topic(broker, "source")
    p = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": False})
    p.produce(topic, b"v" * size, partition=0)
    assert p.flush(10) == 0
    from kio.schema.fetch.v12.request import FetchPartition, FetchRequest, FetchTopic
    from kio.static.primitive import i64

    host, port = broker.bootstrap.rsplit(":", 1)
    c = RawClient(host, int(port))
    resp = c.request(
        1,
        12,
        FetchRequest(
            replica_id=i32(-1),
            max_wait=timedelta(milliseconds=10),
            min_bytes=i32(1),
            max_bytes=i32(1 << 24),
            isolation_level=i8(0),
            session_id=i32(0),
            session_epoch=i32(-1),
            topics=(
                FetchTopic(
                    topic=topic,
                    partitions=(
                        FetchPartition(partition=i32(0), fetch_offset=i64(0), partition_max_bytes=i32(1 << 24)),
                    ),
                ),
            ),
            forgotten_topics_data=(),
            rack_id="",
        ),
    )
    c.close()
    return bytes(resp.responses[0].partitions[0].records)


def _with_producer_id(batch: bytes, producer_id: int) -> bytes:
    """The batch as an idempotent producer the broker never registered would send it."""
    from crc32c import crc32c

    out = bytearray(batch)
    struct.pack_into(">qhi", out, 43, producer_id, 0, 0)
    struct.pack_into(">I", out, 17, crc32c(bytes(out[21:])))  # crc covers attributes to the end
    return bytes(out)


def test_a_produce_the_broker_rejects_is_not_metered(
    broker: EmbeddedBroker, gateway: GatewayProcess, audit: AuditLog
) -> None:
    """Partitions the broker answers with an error are not metered. Every broker rejects a batch
    of a producer id it never issued; Apache Kafka also rejects a record over the topic's
    max.message.bytes (tansu takes it: then it is metered, as acknowledged)."""
    topic = _topic(broker, "rejected")
    small = _topic(broker, "small", {"max.message.bytes": "100"})
    batch = _one_batch(broker, 200)
    client = RawClient("127.0.0.1", gateway.broker_port)
    resp = client.request(
        0,
        9,
        ProduceRequest(
            transactional_id=None,
            acks=i16(-1),
            timeout=timedelta(seconds=10),
            topic_data=(
                TopicProduceData(
                    name=topic,
                    partition_data=(
                        PartitionProduceData(index=i32(0), records=batch),
                        PartitionProduceData(index=i32(1), records=_with_producer_id(batch, 987_654_321)),
                    ),
                ),
                TopicProduceData(name=small, partition_data=(PartitionProduceData(index=i32(0), records=batch),)),
            ),
        ),
        client_id="raw-producer",
    )
    client.close()
    errors = {(t.name, p.index): p.error_code for t in resp.responses for p in t.partition_responses}
    assert errors[(topic, 0)] == 0
    assert errors[(topic, 1)] != 0
    accepted = sorted(k for k, code in errors.items() if code == 0)
    audit.wait(lambda: audit.totals(topic, PRODUCE)[0] >= 1, settle=1.0)
    metered = sorted(
        (e["data"]["topic"], e["data"]["partition"])
        for e in audit.events
        if e["data"]["topic"] in (topic, small) and e["type"] == PRODUCE
    )
    assert metered == accepted
    assert audit.totals(topic, PRODUCE) == (1, len(batch))


def test_pipelined_requests_are_answered_in_order_with_the_gateways_addresses(gateway: GatewayProcess) -> None:
    client = RawClient("127.0.0.1", gateway.port)
    sent = [
        client.send(3, 12, META_ALL),
        client.send(18, 3, ApiVersionsRequest(client_software_name="t", client_software_version="1")),
        client.send(3, 1, MetadataRequestV1(topics=None)),
        client.send(10, 4, FindCoordinatorRequest(key_type=i8(0), coordinator_keys=("g1", "g2"))),
    ]
    got = [client.receive() for _ in sent]
    client.close()
    assert [cid for cid, _ in got] == sent
    meta12, versions, meta1, coordinators = (v for _, v in got)
    for meta in (meta12, meta1):
        assert [(b.host, b.port) for b in meta.brokers] == [("127.0.0.1", gateway.broker_port)]
    assert {(c.host, c.port) for c in coordinators.coordinators} == {("127.0.0.1", gateway.broker_port)}
    ranges = {k.api_key: (k.min_version, k.max_version) for k in versions.api_keys}
    assert ranges[0][1] <= 12 and ranges[1][1] <= 12  # Produce and Fetch capped
    assert 78 not in ranges  # ShareFetch moves records the gateway does not meter


def test_hostile_bytes_close_only_that_connection(gateway: GatewayProcess, audit: AuditLog) -> None:
    good = RawClient("127.0.0.1", gateway.port)
    assert good.request(3, 12, META_ALL).brokers
    rng = random.Random(3)
    hostile = {
        "random frame": struct.pack(">i", 64) + rng.randbytes(64),
        "2 GB length": struct.pack(">i", 2**31 - 1) + b"\x00" * 16,
        "negative length": struct.pack(">i", -5),
        "truncated header": struct.pack(">i", 6) + b"\x00\x00\x00\x01\x00\x00",
        "client id past the end": struct.pack(">i", 12) + struct.pack(">hhih", 3, 1, 7, 500) + b"ab",
        "unknown api key": struct.pack(">i", 12) + struct.pack(">hhih", 999, 0, 7, 0) + b"\x00\x00",
        "produce v0": struct.pack(">i", 10) + struct.pack(">hhih", 0, 0, 7, 0),
        "produce that does not decode": struct.pack(">i", 20) + struct.pack(">hhih", 0, 9, 7, 0) + b"\xff" * 10,
    }
    before = gateway.log().count("not a request the gateway forwards")
    for name, data in hostile.items():
        bad = RawClient("127.0.0.1", gateway.port)
        bad.send_bytes(data)
        assert bad.closed_by_peer(), name
        bad.close()
        # the other client is unaffected
        assert good.request(3, 1, MetadataRequestV1(topics=None)).brokers, name
    good.close()
    deadline = time.monotonic() + 5
    while gateway.log().count("not a request the gateway forwards") < before + len(hostile):
        assert time.monotonic() < deadline, gateway.log()[-3000:]
        time.sleep(0.05)
    audit.poll(0.3)
    assert not [e for e in audit.events if e["data"]["client_id"] == "raw" and e["data"]["topic"].startswith("gw-")]


def test_the_worker_meters_the_gateways_events(
    broker: EmbeddedBroker, gateway: GatewayProcess, audit: AuditLog, gw_env: dict[str, str], tmp_path: Path
) -> None:
    topic = _topic(broker, "worker")
    p = Producer({"bootstrap.servers": gateway.bootstrap, "client.id": "billed", "linger.ms": 5})
    for v in _values(400, 11):
        p.produce(topic, v)
    assert p.flush(20) == 0
    audit.wait(lambda: audit.totals(topic, PRODUCE)[0] >= 400)
    metered = audit.totals(topic, PRODUCE)
    worker = Worker(gw_env, tmp_path / "worker.log").start()
    try:
        wait_caught_up(broker.bootstrap, gw_env["STREAMTOLL_METERING_GROUP"], dict(audit.ends), timeout=60)
    finally:
        assert worker.stop() == 0
    rows = read_all(broker.bootstrap, gw_env["STREAMTOLL_TOPIC_USAGE_WINDOWS"], PARTITIONS)
    totals = Counter()
    for key, (nbytes, records, _, _) in window_totals(rows).items():
        source, principal, client_id, vcluster, t, direction, _ = key
        if t == topic:
            assert (source, principal, client_id, vcluster, direction) == (
                "proxy",
                "User:ANONYMOUS",
                "billed",
                "vc-test",
                "produce",
            )
            totals["records"] += records
            totals["bytes"] += nbytes
    assert (totals["records"], totals["bytes"]) == metered


def test_sigterm_drains_every_acknowledged_produce_is_metered(
    broker: EmbeddedBroker, gw_env: dict[str, str], tmp_path: Path
) -> None:
    gw = GatewayProcess(gw_env, tmp_path / "gateway.log").start()
    topic = _topic(broker, "drain")
    stop = threading.Event()
    delivered = Counter()

    def traffic() -> None:
        p = Producer(
            {
                "bootstrap.servers": gw.bootstrap,
                "enable.idempotence": True,
                "linger.ms": 2,
                "message.timeout.ms": 4000,
                "client.id": "drained",
            }
        )
        while not stop.is_set():
            with contextlib.suppress(BufferError):
                p.produce(topic, os.urandom(50), on_delivery=lambda e, m: delivered.update([e is None]))
            p.poll(0.001)
        p.flush(10)

    t = threading.Thread(target=traffic)
    t.start()
    deadline = time.monotonic() + 30
    while delivered[True] < 200 and time.monotonic() < deadline:  # traffic flowing, whatever the machine's load
        time.sleep(0.05)
    assert gw.stop() == 0, gw.log()
    stop.set()
    t.join()
    assert '"not_written": 0' in gw.log()
    log = AuditLog(gw_env["STREAMTOLL_KAFKA_BOOTSTRAP"], gw_env["STREAMTOLL_TOPIC_PROXY_AUDIT"])
    stored = broker_batches(broker.bootstrap, topic, PARTITIONS)
    log.wait(lambda: log.totals(topic, PRODUCE)[0] >= stored[0], timeout=10)
    log.consumer.close()
    assert delivered[True] > 0
    assert stored[0] >= delivered[True]
    assert log.totals(topic, PRODUCE) == stored


def test_metrics_and_health(broker: EmbeddedBroker, gateway: GatewayProcess, audit: AuditLog) -> None:
    import httpx

    topic = _topic(broker, "metrics")
    p = Producer({"bootstrap.servers": gateway.bootstrap, "linger.ms": 5})
    for v in _values(50, 1):
        p.produce(topic, v)
    assert p.flush(10) == 0
    c = Consumer({"bootstrap.servers": gateway.bootstrap, "group.id": "unused", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, part, 0) for part in range(PARTITIONS)])
    got = 0
    deadline = time.monotonic() + 10
    while got < 50 and time.monotonic() < deadline:
        got += sum(1 for m in c.consume(100, 0.2) if not m.error())
    c.close()
    assert got == 50
    audit.wait(lambda: audit.totals(topic, PRODUCE)[0] >= 50)
    base = f"http://127.0.0.1:{gateway.metrics_port}"
    text = httpx.get(base + "/metrics").text
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("streamtoll_gateway_")
    }
    # (the audit topic also holds another gateway's events: this one's counters are checked alone)
    assert values['streamtoll_gateway_metered_records_total{direction="produce"}'] >= 50
    assert values['streamtoll_gateway_metered_bytes_total{direction="produce"}'] >= audit.totals(topic, PRODUCE)[1]
    assert values['streamtoll_gateway_requests_total{api="produce"}'] > 0
    assert values['streamtoll_gateway_audit_events_total{outcome="delivered"}'] > 0
    assert values['streamtoll_gateway_audit_events_total{outcome="failed"}'] == 0
    # upstream latency: one observation per answered request of that API, cumulative buckets
    lat = "streamtoll_gateway_upstream_latency_seconds"
    for api in ("produce", "fetch", "metadata"):
        count, total = values[f'{lat}_count{{api="{api}"}}'], values[f'{lat}_sum{{api="{api}"}}']
        buckets = [v for k, v in values.items() if k.startswith(f'{lat}_bucket{{api="{api}",')]
        assert buckets == sorted(buckets) and buckets[-1] == count, api
        # every forwarded request is answered (acks=0 produces are not: they expect no answer)
        assert 0 < count <= values[f'streamtoll_gateway_requests_total{{api="{api}"}}'], api
        assert 0 < total / count < 1.0, api  # a local broker; a Fetch waits at most its 500 ms
    assert values[f'{lat}_count{{api="metadata"}}'] == values['streamtoll_gateway_requests_total{api="metadata"}']
    assert values[f'{lat}_bucket{{api="produce",le="0.25"}}'] >= 0.9 * values[f'{lat}_count{{api="produce"}}']
    ready = httpx.get(base + "/healthz")
    assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["brokers"] == 1
    assert httpx.get(base + "/healthz/live").json()["live"] is True


def test_an_api_versions_request_newer_than_the_gateway_gets_the_versions_it_reads(gateway: GatewayProcess) -> None:
    """KIP-511: a client asks with its newest ApiVersions version; the answer (version 0, error
    UNSUPPORTED_VERSION) lists the versions to ask with instead, and the connection goes on."""
    from kio.schema.api_versions.v0.response import ApiVersionsResponse as V0
    from kio.serial import entity_reader

    client = RawClient("127.0.0.1", gateway.port)
    body = struct.pack(">hhih", 18, 99, 5, 1) + b"c" + b"\x00" + b"\x00" * 8
    client.send_bytes(struct.pack(">i", len(body)) + body)
    (size,) = struct.unpack(">i", client._read(4))
    frame = client._read(size)
    answer, _ = entity_reader(V0)(frame, 4)
    assert struct.unpack(">i", frame[:4])[0] == 5
    assert answer.error_code == 35
    assert [(k.api_key, k.max_version) for k in answer.api_keys] == [(18, 4)]
    versions = client.request(18, 4, ApiVersionsRequest(client_software_name="t", client_software_version="1"))
    assert versions.error_code == 0 and len(versions.api_keys) > 10
    client.close()
