"""Real Kafka clients through ``streamtoll gateway``, for ``streamtoll up`` and ``streamtoll demo``.

* :func:`gateway_env` — the environment of a ``streamtoll gateway`` child in front of a cluster,
  on free local ports unless ``GATEWAY_LISTEN`` is set; :func:`wait_listening` until it serves.
* :func:`produce_through` / :func:`consume_through` — confluent-kafka producers and consumers
  with their own client ids, and what their delivery reports and consumed messages say.
* :func:`broker_batches` — records and record-batch bytes a topic holds, read straight from the
  broker with Fetch requests (not through the gateway): the independent side of a byte check.
* :func:`read_ends` — each partition's end offset, read to the fetch high watermark (a broker's
  ListOffsets answer can be short: tansu's is the last batch's base offset + 1).
"""

from __future__ import annotations

import io
import random
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kio.index import load_response_schema
from kio.schema.fetch.v12.request import FetchPartition, FetchRequest, FetchTopic
from kio.schema.fetch.v12.response import FetchResponse
from kio.schema.request_header.v2.header import RequestHeader
from kio.schema.types import BrokerId, TopicName
from kio.serial import entity_reader, entity_writer
from kio.static.primitive import i8, i16, i32, i32Timedelta, i64

from gateway.protocol import response_body_offset
from streamtoll.embedded import free_port

__all__ = [
    "ClientReport",
    "broker_batches",
    "consume_through",
    "create_topics",
    "gateway_env",
    "produce_through",
    "read_ends",
    "wait_listening",
]

FETCH = 1


def gateway_env(
    env: Mapping[str, str],
    kafka_bootstrap: str,
    virtual_cluster: str | None = None,
    journal_dir: Path | None = None,
) -> tuple[dict[str, str], str]:
    """The environment of ``streamtoll gateway`` in front of ``kafka_bootstrap`` (its audit events
    go there too) and the bootstrap address its clients use: ``GATEWAY_LISTEN`` when set, else
    free ports on 127.0.0.1 (the bootstrap port and one broker port: a local broker is one node).
    ``journal_dir``: the gateway's audit journal there (else ``GATEWAY_JOURNAL_DIR`` or its
    default)."""
    child_env = {**env, "STREAMTOLL_KAFKA_BOOTSTRAP": kafka_bootstrap}
    if journal_dir is not None:
        child_env["STREAMTOLL_GATEWAY_JOURNAL_DIR"] = str(journal_dir)
    child_env.pop("STREAMTOLL_METRICS_BIND", None)
    if not child_env.get("STREAMTOLL_GATEWAY_LISTEN"):
        child_env["STREAMTOLL_GATEWAY_LISTEN"] = f"127.0.0.1:{free_port()}"
        child_env["STREAMTOLL_GATEWAY_BROKER_PORTS"] = str(free_port())
    if virtual_cluster is not None:
        child_env["STREAMTOLL_GATEWAY_VIRTUAL_CLUSTER"] = virtual_cluster
    host, port = child_env["STREAMTOLL_GATEWAY_LISTEN"].rsplit(":", 1)
    advertised = child_env.get("STREAMTOLL_GATEWAY_ADVERTISED_HOST") or host
    return child_env, f"{advertised}:{port}"


def wait_listening(bootstrap: str, alive: Callable[[], bool], timeout: float = 30.0) -> bool:
    """True once the gateway accepts connections on ``bootstrap`` (it listens only after it has
    learned the upstream brokers); False if it stops being ``alive`` or ``timeout`` passes."""
    host, port = bootstrap.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def create_topics(bootstrap: str, config: Mapping[str, Any], topics: Mapping[str, int]) -> None:
    """Create the topics (name → partitions) that do not exist yet."""
    admin = AdminClient({**config, "bootstrap.servers": bootstrap})
    existing = admin.list_topics(timeout=15).topics
    new = [NewTopic(t, n, 1) for t, n in topics.items() if t not in existing]
    for fut in admin.create_topics(new, operation_timeout=15).values() if new else ():
        try:
            fut.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


@dataclass
class ClientReport:
    """What one client saw: records its delivery reports acknowledged (or it consumed), errors."""

    client_id: str
    topic: str
    direction: str  # produce | consume
    records: int = 0
    errors: int = 0


def produce_through(
    bootstrap: str,
    client_id: str,
    topic: str,
    messages: int,
    value_bytes: int,
    config: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> ClientReport:
    """``messages`` records of about ``value_bytes`` each, as ``client_id``; the report counts the
    delivery reports without an error."""
    report = ClientReport(client_id, topic, "produce")

    def delivered(err: Any, msg: Any) -> None:
        if err is None:
            report.records += 1
        else:
            report.errors += 1

    rnd = random.Random(seed)
    p = Producer({"bootstrap.servers": bootstrap, "client.id": client_id, "linger.ms": 5, **(config or {})})
    for i in range(messages):
        value = rnd.randbytes(rnd.randint(value_bytes // 2, value_bytes * 3 // 2))
        while True:
            try:
                p.produce(topic, value, key=f"{client_id}-{i % 97}".encode(), on_delivery=delivered)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    left = p.flush(60)
    report.errors += left
    return report


def consume_through(
    bootstrap: str, client_id: str, topic: str, partitions: int, expect: int, timeout: float = 60.0
) -> ClientReport:
    """Read ``topic`` from its start as ``client_id`` until every partition reached its end and
    ``expect`` records came; the report counts the messages consumed."""
    report = ClientReport(client_id, topic, "consume")
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "client.id": client_id,
            "group.id": f"{client_id}-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.queue.backoff.ms": 10,
        }
    )
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while (len(at_end) < partitions or report.records < expect) and time.monotonic() < deadline:
            for m in c.consume(10_000, 0.2):
                err = m.error()
                if err is None:
                    report.records += 1
                    at_end.discard(m.partition())
                elif err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(m.partition() or 0)
                else:
                    report.errors += 1
    finally:
        c.close()
    return report


def run_parallel(jobs: list[Any]) -> list[Any]:
    """Run callables in threads at once; their results in order (the first exception re-raised)."""
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = jobs[i]()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


class _Raw:
    """One broker connection speaking Fetch v12 (kio types)."""

    def __init__(self, bootstrap: str) -> None:
        host, port = bootstrap.split(",")[0].rsplit(":", 1)
        self.sock = socket.create_connection((host.strip("[]"), int(port)), timeout=15)
        self.correlation = 0

    def fetch(self, topic: str, partition: int, offset: int) -> Any:
        self.correlation += 1
        header = RequestHeader(
            request_api_key=i16(FETCH), request_api_version=i16(12), correlation_id=i32(self.correlation), client_id=""
        )
        body = FetchRequest(
            replica_id=BrokerId(-1),
            max_wait=i32Timedelta.parse(timedelta(milliseconds=10)),
            min_bytes=i32(1),
            max_bytes=i32(8 << 20),
            isolation_level=i8(0),
            session_id=i32(0),
            session_epoch=i32(-1),
            topics=(
                FetchTopic(
                    topic=TopicName(topic),
                    partitions=(
                        FetchPartition(
                            partition=i32(partition), fetch_offset=i64(offset), partition_max_bytes=i32(8 << 20)
                        ),
                    ),
                ),
            ),
            forgotten_topics_data=(),
            rack_id="",
        )
        buf = io.BytesIO()
        entity_writer(RequestHeader)(buf, header)
        entity_writer(FetchRequest)(buf, body)
        data = buf.getvalue()
        self.sock.sendall(struct.pack(">i", len(data)) + data)
        (size,) = struct.unpack(">i", self._read(4))
        frame = self._read(size)
        value, _ = entity_reader(load_response_schema(FETCH, 12))(frame, response_body_offset(frame, FETCH, 12))
        assert isinstance(value, FetchResponse)
        return value.responses[0].partitions[0]

    def _read(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            out += chunk
        return bytes(out)

    def close(self) -> None:
        self.sock.close()


def broker_batches(bootstrap: str, topic: str, partitions: int) -> tuple[int, int]:
    """(records, record-batch bytes) that ``topic`` holds, read straight from the broker up to each
    partition's high watermark: every batch's 12-byte log overhead plus its length, and the record
    count from its header (control batches — transaction markers — left out)."""
    raw = _Raw(bootstrap)
    records = nbytes = 0
    try:
        for partition in range(partitions):
            offset = 0
            while True:
                part = raw.fetch(topic, partition, offset)
                data: bytes = part.records or b""
                pos, last = 0, offset
                while pos + 61 <= len(data):
                    base, length = struct.unpack_from(">qi", data, pos)
                    if pos + 12 + length > len(data):
                        break  # cut short by the size limit: fetched again from its start
                    (attributes, delta) = struct.unpack_from(">hi", data, pos + 21)
                    if not attributes & 0x20:
                        (count,) = struct.unpack_from(">i", data, pos + 57)
                        records += count
                        nbytes += 12 + length
                    last = base + delta + 1
                    pos += 12 + length
                if last <= offset or last >= part.high_watermark:
                    break
                offset = last
    finally:
        raw.close()
    return records, nbytes


def read_ends(
    bootstrap: str, config: Mapping[str, Any], topic: str, timeout: float = 30.0
) -> dict[tuple[str, int], int]:
    """Each partition's end offset (the offset after its last record), read to the end."""
    c = Consumer(
        {
            **config,
            "bootstrap.servers": bootstrap,
            "group.id": f"ends-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        partitions = len(c.list_topics(topic, timeout=15).topics[topic].partitions)
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        ends = {(topic, p): 0 for p in range(partitions)}
        pending = set(range(partitions))
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for m in c.consume(10_000, 0.2):
                err = m.error()
                if err is None:
                    ends[(topic, m.partition() or 0)] = (m.offset() or 0) + 1
                elif err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(m.partition())
        if pending:
            raise RuntimeError(f"could not read {topic} to its end in {timeout:.0f} s")
        return ends
    finally:
        c.close()
