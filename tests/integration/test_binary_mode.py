"""CloudEvents binary content mode end to end: a real worker on the real broker meters proxy audit
and audit log records sent in binary and structured mode — the same event sometimes once in each
mode — exactly against a ground truth computed here, dead-letters bad binary records with their
headers, and every record it publishes satisfies the output schemas of ``docs/formats.md``."""

from __future__ import annotations

import base64
import json
import random
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from jsonschema import Draft202012Validator

from metering.settings import MeteringSettings
from streamtoll.dev.traffic import hour_iso, rfc3339
from streamtoll.embedded import EmbeddedBroker

from .harness import Worker, read_all, wait_caught_up, window_totals

pytestmark = pytest.mark.integration

SCHEMAS = Path(__file__).parents[2] / "docs" / "schemas"
Headers = list[tuple[str, bytes | None]]
Rec = tuple[str, bytes, bytes | None, Headers | None]


def binary(doc: dict[str, Any]) -> tuple[bytes, Headers]:
    headers: Headers = [(f"ce_{k}", str(v).encode()) for k, v in doc.items() if k not in ("data", "datacontenttype")]
    headers.append(("content-type", b"application/json"))
    return json.dumps(doc["data"]).encode(), headers


def produce(bootstrap: str, records: list[Rec]) -> dict[tuple[str, int], int]:
    ends: dict[tuple[str, int], int] = {}
    errors: list[str] = []

    def report(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            k = (msg.topic(), msg.partition())
            ends[k] = max(ends.get(k, 0), msg.offset() + 1)

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for topic, key, value, headers in records:
        p.produce(topic, value, key=key, headers=headers, on_delivery=report)
        p.poll(0)
    p.flush(60)
    assert not errors, errors[:3]
    return ends


def test_binary_and_structured_modes_are_metered_exactly(
    broker: EmbeddedBroker, env: dict[str, str], settings: MeteringSettings, logdir: Path
) -> None:
    rnd = random.Random(13)
    now = time.time()
    truth: dict[tuple[str, ...], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    dlq: Counter[str] = Counter()
    records: list[Rec] = []
    modes: Counter[str] = Counter()

    def send(topic: str, key: bytes, doc: dict[str, Any], mode: str) -> None:
        modes[mode] += 1
        if mode == "binary":
            value, headers = binary(doc)
            records.append((topic, key, value, headers))
        else:
            records.append((topic, key, json.dumps(doc).encode(), None))

    proxy_topic, audit_topic = settings.topic_proxy_audit, settings.topic_broker_audit
    for i in range(3000):
        principal = f"User:tenant-{rnd.randrange(6)}"
        t = now - rnd.uniform(0, 3 * 3600)
        direction = rnd.choice(("produce", "consume"))
        client, vc, topic = rnd.choice(("app-1", "app-2", "")), rnd.choice(("", "prod")), rnd.choice(("a", "b"))
        nbytes, nrec = rnd.randint(1, 10**6), rnd.randint(1, 500)
        doc = {
            "specversion": "1.0",
            "id": str(uuid.UUID(int=rnd.getrandbits(128))),
            "source": f"//proxy/gw-{i % 2}",
            "type": "io.streamtoll.kafka.produce" if direction == "produce" else "io.streamtoll.kafka.fetch",
            "time": rfc3339(t),
            "subject": principal,
            "data": {"client_id": client, "virtual_cluster": vc, "topic": topic, "records": nrec, "bytes": nbytes},
        }
        mode = rnd.choice(("binary", "structured"))
        send(proxy_topic, principal.encode(), doc, mode)
        row = truth[("proxy", principal, client, vc, topic, direction, hour_iso(t))]
        row[0] += nbytes
        row[1] += nrec
        row[2] += 1
        roll = rnd.random()
        if roll < 0.15:  # the proxy retried, in the other mode: counted once
            send(proxy_topic, principal.encode(), doc, "structured" if mode == "binary" else "binary")
        elif roll < 0.2:  # retried in the same mode
            send(proxy_topic, principal.encode(), doc, mode)

    # bad binary records: dead-lettered with their headers, like structured ones
    good_value, good_headers = binary(
        {
            "specversion": "1.0",
            "id": "bad",
            "source": "//p",
            "type": "io.streamtoll.kafka.produce",
            "time": rfc3339(now),
            "subject": "User:x",
            "data": {"topic": "a", "records": 1, "bytes": 1},
        }
    )
    bad: list[tuple[bytes | None, Headers, str]] = [
        (good_value, [h for h in good_headers if h[0] != "ce_id"], "schema"),
        (good_value, [*good_headers, ("ce_id", b"again")], "schema"),
        (good_value, [(n, b"\xff\xfe" if n == "ce_id" else v) for n, v in good_headers], "not_utf8"),
        (good_value, [(n, None if n == "ce_time" else v) for n, v in good_headers], "schema"),
        (b'{"topic": "a", "records": 1', good_headers, "not_json"),
        (json.dumps({"topic": "a", "records": -1, "bytes": 1}).encode(), good_headers, "negative"),
    ]
    for value, headers, reason in bad:
        records.append((proxy_topic, b"User:x", value, headers))
        dlq[reason] += 1
    records.append((proxy_topic, b"User:x", None, good_headers))  # a tombstone: skipped
    ignored = [(n, b"io.streamtoll.kafka.metadata" if n == "ce_type" else v) for n, v in good_headers]
    records.append((proxy_topic, b"User:x", b"", ignored))  # another type, no data: ignored

    for i in range(400):
        principal = f"User:tenant-{rnd.randrange(6)}"
        t = now - rnd.uniform(0, 2 * 3600)
        granted = rnd.random() > 0.2
        method = rnd.choice(("kafka.Produce", "kafka.FetchConsumer", "kafka.FetchFollower"))
        doc = {
            "specversion": rnd.choice(("1.0", "0.3")),
            "id": f"audit-{i}",
            "source": "crn:///kafka=abc",
            "type": "io.confluent.kafka.server/authorization",
            "time": rfc3339(t),
            "data": {
                "methodName": method,
                "authenticationInfo": {"principal": principal},
                "authorizationInfo": {"granted": granted, "resourceType": "Topic", "resourceName": "a"},
                "request": {"client_id": "cli"},
            },
        }
        mode = rnd.choice(("binary", "structured"))
        send(audit_topic, principal.encode(), doc, mode)
        if rnd.random() < 0.2:
            send(audit_topic, principal.encode(), doc, "structured" if mode == "binary" else "binary")
        if method != "kafka.FetchFollower":
            direction = "produce" if method == "kafka.Produce" else "consume"
            row = truth[("audit_log", principal, "cli", "", "a", direction, hour_iso(t))]
            row[2] += int(granted)
            row[3] += int(not granted)

    assert modes["binary"] > 1000 and modes["structured"] > 1000
    worker = Worker(env, logdir / "worker.log").start()
    try:
        ends = produce(broker.bootstrap, records)
        wait_caught_up(broker.bootstrap, settings.group_id, ends)
    finally:
        assert worker.stop() == 0, (logdir / "worker.log").read_text()[-3000:]

    windows = read_all(broker.bootstrap, settings.topic_usage_windows, 4)
    got = window_totals(windows)
    want = {k: v for k, v in truth.items() if any(v)}
    assert {k: v for k, v in got.items() if any(v)} == want

    dead = read_all(broker.bootstrap, settings.topic_dlq, 4)
    assert Counter(d["reason"] for d in dead) == dlq
    for d in dead:  # the original headers are kept, in order, duplicates and null values too
        headers = [(n, None if v is None else base64.b64decode(v)) for n, v in d["headers"]]
        assert any(headers == h for _, h, _ in bad), d

    minutes = read_all(broker.bootstrap, settings.topic_usage_minutes, 4)
    for name, rows in (("usage-window", windows), ("usage-minute", minutes), ("dlq-record", dead)):
        v = Draft202012Validator(json.loads((SCHEMAS / f"{name}.schema.json").read_text()))
        assert rows
        for row in rows:
            errors = [e.message for e in v.iter_errors(row)]
            assert not errors, (name, errors[:3], row)


_RAW_PRODUCER = r"""
import asyncio, json, os, sys
os.environ["AIOKAFKA_NO_EXTENSIONS"] = "1"  # the pure-Python record builder, which calls str.encode
from aiokafka import AIOKafkaProducer

class NotUtf8(str):
    def encode(self, *args, **kwargs):
        return b"trace\xff\xfe"

async def main(bootstrap, records):
    p = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await p.start()
    ends = []
    try:
        for topic, value in records:
            md = await p.send_and_wait(topic, value.encode(), key=b"User:x", headers=[(NotUtf8("x"), b"1")])
            ends.append([md.topic, md.partition, md.offset + 1])
    finally:
        await p.stop()
    print(json.dumps(ends))

asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))
"""


def test_a_header_name_that_is_not_utf8_is_dead_lettered_and_the_worker_lives_on(
    broker: EmbeddedBroker, env: dict[str, str], settings: MeteringSettings, logdir: Path
) -> None:
    """No Kafka client writes such a header name, but a raw producer can; confluent-kafka cannot
    convert it (it raises once, then hands out a list holding a NULL pointer)."""
    import subprocess
    import sys

    from streamtoll.dev.traffic import otlp_export, otlp_point

    now = time.time()

    def event(i: int) -> str:
        return json.dumps(
            {
                "specversion": "1.0",
                "id": f"e{i}",
                "source": "//p",
                "type": "io.streamtoll.kafka.produce",
                "time": rfc3339(now),
                "subject": "User:x",
                "data": {"topic": "a", "records": 1, "bytes": 10},
            }
        )

    bad_point = otlp_point({"principal": "User:x"}, now - 60, now, 5)  # no topic: a schema error
    raw = [
        (settings.topic_proxy_audit, event(1)),
        (settings.topic_broker_metrics, otlp_export("1", [("kafka.client.produce.bytes", [bad_point])]).decode()),
    ]
    done = subprocess.run(
        [sys.executable, "-c", _RAW_PRODUCER, broker.bootstrap, json.dumps(raw)],
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    )
    ends = {(t, p): o for t, p, o in json.loads(done.stdout.strip().splitlines()[-1])}
    worker = Worker(env, logdir / "worker.log").start()
    try:
        after = [(settings.topic_proxy_audit, b"User:x", event(2).encode(), [("ce_none", None)])]
        for k, v in produce(broker.bootstrap, after).items():
            ends[k] = max(ends.get(k, 0), v)
        wait_caught_up(broker.bootstrap, settings.group_id, ends)
    finally:
        assert worker.stop() == 0, (logdir / "worker.log").read_text()[-3000:]
    dead = read_all(broker.bootstrap, settings.topic_dlq, 4)
    assert sorted((d["reason"], d["headers"]) for d in dead) == [("not_utf8", []), ("schema", [])]
    got = window_totals(read_all(broker.bootstrap, settings.topic_usage_windows, 4))
    assert [v for k, v in got.items() if k[0] == "proxy"] == [[10, 1, 1, 0]]  # event 2 only
    assert "metering loop failed" not in (logdir / "worker.log").read_text()
