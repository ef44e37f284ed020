"""Realistic audit traffic with its own ground truth, and readers of metering's output topics.

Used by ``streamtoll demo``, the benchmarks and the tests. The ground truth is computed here by
plain arithmetic on what the generator made (each unique event's size, each counter's
increments), never by metering code, so comparing it with what metering published is a check.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

HOUR = 3600
Truth = dict[tuple[str, ...], list[int]]


def hour_iso(t: float) -> str:
    h = int(t) - int(t) % HOUR
    return datetime.fromtimestamp(h, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


BAD_PROXY: list[tuple[bytes, str]] = [
    (
        b'{"specversion":"1.0","id":"b1","source":"//p","type":"io.streamtoll.kafka.produce","time":"2026-11-03T10:15:00Z",'
        b'"subject":"User:x","data":{"topic":"orders","records":10,"bytes":-5}}',
        "negative",
    ),
    (
        b'{"specversion":"1.0","id":"b2","source":"//p","type":"io.streamtoll.kafka.produce","time":"not-a-time",'
        b'"data":{"topic":"orders","records":1,"bytes":100}}',
        "schema",
    ),
    (
        b'{"specversion":"1.0","id":"b4","source":"//p","type":"io.streamtoll.kafka.produce","time":"2026-11-03T10:15:00Z",'
        b'"data":{"topic":"orders","records":1,"bytes":NaN}}',
        "not_json",
    ),
    (b'{"specversion":"1.0","id":"b5","source":"//p","type":"io.str', "not_json"),
    (b"[1,2,3]", "schema"),
    (b'"just a string"', "schema"),
    (b"\xff\xfe\x00garbage", "not_utf8"),
    (b"[" * 3000, "not_json"),
    (
        b'{"specversion":"1.0","id":"b9","source":"//p","type":"io.streamtoll.kafka.fetch","time":"2026-11-03T10:15:00Z",'
        b'"data":{"topic":"' + b"x" * 1_000_000 + b'","records":1,"bytes":1}}',
        "schema",
    ),
    (
        b'{"specversion":"1.0","id":"b10","source":"//p","type":"io.streamtoll.kafka.fetch","time":"2099-01-01T00:00:00Z",'
        b'"data":{"topic":"orders","records":1,"bytes":1}}',
        "future",
    ),
    (
        b'{"specversion":"1.0","id":"b11","source":"//p","type":"io.streamtoll.kafka.fetch","time":"2020-01-01T00:00:00Z",'
        b'"data":{"topic":"orders","records":1,"bytes":1}}',
        "too_old",
    ),
    (
        b'{"specversion":"1.0","id":"b12","source":"//p","type":"io.streamtoll.kafka.fetch","time":"2026-11-03T10:15:00Z",'
        b'"data":{"topic":"orders","records":"12x","bytes":1}}',
        "schema",
    ),
    (
        b'{"specversion":"1.0","id":"b13","source":"//p","type":"io.streamtoll.kafka.fetch","time":"2026-11-03T10:15:00Z",'
        b'"data":{"topic":"orders","records":1,"bytes":99999999999999999999}}',
        "too_large",
    ),
]


def otlp_point(attributes: dict[str, str], start: float, time_: float, value: int) -> dict[str, Any]:
    """One cumulative data point (times in epoch seconds; a start of 0 means unset)."""
    return {
        "attributes": [{"key": k, "value": {"stringValue": v}} for k, v in attributes.items()],
        "startTimeUnixNano": str(int(start * 1e9)),
        "timeUnixNano": str(int(time_ * 1e9)),
        "asInt": str(value),
    }


def otlp_export(emitter: str, metrics: list[tuple[str, list[dict[str, Any]]]]) -> bytes:
    """An OTLP JSON ExportMetricsServiceRequest of monotonic cumulative sums from one broker."""
    return json.dumps(
        {
            "resourceMetrics": [
                {
                    "resource": {"attributes": [{"key": "kafka.broker.id", "value": {"stringValue": emitter}}]},
                    "scopeMetrics": [
                        {
                            "metrics": [
                                {
                                    "name": name,
                                    "sum": {"aggregationTemporality": 2, "isMonotonic": True, "dataPoints": points},
                                }
                                for name, points in metrics
                            ]
                        }
                    ],
                }
            ]
        }
    ).encode()


@dataclass
class Traffic:
    """Records to produce, in order, and what metering must make of them."""

    now: float
    proxy_topic: str
    metrics_topic: str
    audit_topic: str
    records: list[tuple[str, bytes | None, bytes | None]] = field(default_factory=list)
    truth: Truth = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0, 0]))
    dlq: Counter[str] = field(default_factory=Counter)

    def add(
        self,
        source: str,
        principal: str,
        client: str,
        vc: str,
        topic: str,
        direction: str,
        t: float,
        b: int = 0,
        r: int = 0,
        q: int = 0,
        d: int = 0,
    ) -> None:
        row = self.truth[(source, principal, client, vc, topic, direction, hour_iso(t))]
        row[0] += b
        row[1] += r
        row[2] += q
        row[3] += d

    @classmethod
    def make(
        cls,
        now: float,
        topics: tuple[str, str, str],
        n_proxy: int,
        seed: int = 7,
        principals: list[str] | None = None,
        span_s: float = 5 * HOUR,
    ) -> Traffic:
        """Traffic with event times in ``[now − span_s, now]`` (a few records two days late)."""
        rnd = random.Random(seed)
        tr = cls(now, *topics)
        principals = principals or [f"User:tenant-{i}" for i in range(12)]
        clients = [f"app-{i}" for i in range(6)] + [""]
        topics_ = ["orders", "payments", "telemetry.raw", "premium.quotes"]
        sent: list[tuple[bytes, bytes]] = []
        bad = list(BAD_PROXY)
        for i in range(n_proxy):
            principal = rnd.choice(principals)
            # mostly the last few hours; some late records two days back
            t = now - rnd.uniform(0, span_s) if rnd.random() > 0.02 else now - 2 * 86400 - rnd.uniform(0, HOUR)
            direction = rnd.choice(("produce", "consume"))
            nbytes, nrec = rnd.randint(100, 2_000_000), rnd.randint(1, 5000)
            client, vc, topic = rnd.choice(clients), rnd.choice(("", "prod", "staging")), rnd.choice(topics_)
            doc = {
                "specversion": "1.0",
                "id": str(uuid.UUID(int=rnd.getrandbits(128))),
                "source": f"//proxy/gw-{i % 3}",
                "type": "io.streamtoll.kafka.produce" if direction == "produce" else "io.streamtoll.kafka.fetch",
                "time": rfc3339(t),
                "subject": principal,
                "data": {
                    "client_id": client,
                    "virtual_cluster": vc,
                    "topic": topic,
                    "partition": rnd.randint(0, 11),
                    "records": nrec if rnd.random() > 0.1 else str(nrec),
                    "bytes": nbytes,
                },
            }
            value = json.dumps(doc).encode()
            key = principal.encode()
            tr.records.append((tr.proxy_topic, key, value))
            sent.append((key, value))
            tr.add("proxy", principal, client, vc, topic, direction, t, nbytes, nrec, 1)
            roll = rnd.random()
            if roll < 0.03 and sent:  # a retry of an earlier record: same id, same partition
                k, v = rnd.choice(sent[-5000:])
                tr.records.append((tr.proxy_topic, k, v))
            elif roll < 0.035 and bad:
                raw, reason = bad.pop()
                tr.records.append((tr.proxy_topic, key, raw))
                tr.dlq[reason] += 1
            elif roll < 0.037:
                tr.records.append((tr.proxy_topic, key, None))  # tombstone: skipped, not dead-lettered
            elif roll < 0.039:
                ignored = dict(doc, id=f"ign-{i}", type="io.streamtoll.kafka.metadata")
                tr.records.append((tr.proxy_topic, key, json.dumps(ignored).encode()))
        for raw, reason in bad:
            tr.records.append((tr.proxy_topic, b"User:tenant-0", raw))
            tr.dlq[reason] += 1
        tr._metrics(rnd, principals[1], principals[2], step_s=span_s / 180)
        tr._audit(rnd, principals, n=max(200, n_proxy // 20), span_s=span_s * 0.8)
        return tr

    def add_cold_hours(
        self,
        n: int,
        hours: int,
        seed: int = 7,
        days: tuple[float, float] = (1.0, 30.0),
        principals: list[str] | None = None,
        retry_share: float = 0.05,
    ) -> list[str]:
        """Interleave ``n`` late proxy audit records into :attr:`records`, landing in ``hours``
        distinct hours between ``days[0]`` and ``days[1]`` days before :attr:`now` (inside the
        default ``MAX_LATENESS`` of 35 days), and return those hours (ISO, as in the truth).

        Decisions: each record goes to a uniformly random place in the stream, so every cold hour
        is reached again and again from the first record to the last — in many batches and state
        rounds, long after it was last touched. Few identities (``principals``, default four; two
        topics, both directions, no client or virtual cluster) so each cold window and shard gets
        a dozen updates or more rather than one. ``retry_share`` of them are sent again later in
        the stream (same id, source and key: a duplicate within the dedup horizon, counted once).
        """
        rnd = random.Random(seed)
        principals = principals or [f"User:tenant-{i}" for i in range(4)]
        current = int(self.now) - int(self.now) % HOUR
        back = rnd.sample(range(int(days[0] * 24) + 1, int(days[1] * 24) + 1), hours)
        starts = [current - b * HOUR for b in back]
        m = len(self.records)
        late: list[tuple[int, int, tuple[str, bytes | None, bytes | None]]] = []  # (place, order, record)
        for i in range(n):
            principal = rnd.choice(principals)
            t = rnd.choice(starts) + rnd.uniform(0, HOUR - 0.001)
            direction = rnd.choice(("produce", "consume"))
            topic = rnd.choice(("orders", "payments"))
            nbytes, nrec = rnd.randint(100, 2_000_000), rnd.randint(1, 5000)
            doc = {
                "specversion": "1.0",
                "id": str(uuid.UUID(int=rnd.getrandbits(128))),
                "source": "//proxy/gw-late",
                "type": "io.streamtoll.kafka.produce" if direction == "produce" else "io.streamtoll.kafka.fetch",
                "time": rfc3339(t),
                "subject": principal,
                "data": {"topic": topic, "partition": 0, "records": nrec, "bytes": nbytes},
            }
            record = (self.proxy_topic, principal.encode(), json.dumps(doc).encode())
            place = rnd.randint(0, m)
            late.append((place, 2 * i, record))
            self.add("proxy", principal, "", "", topic, direction, t, nbytes, nrec, 1)
            if rnd.random() < retry_share:
                late.append((min(m, place + rnd.randint(1, max(1, m // 10))), 2 * i + 1, record))
        late.sort(key=lambda x: (x[0], x[1]))
        merged: list[tuple[str, bytes | None, bytes | None]] = []
        j = 0
        for place in range(m + 1):
            while j < len(late) and late[j][0] == place:
                merged.append(late[j][2])
                j += 1
            if place < m:
                merged.append(self.records[place])
        self.records = merged
        return sorted(hour_iso(st) for st in starts)

    def _metrics(self, rnd: random.Random, p1: str, p2: str, step_s: float = 60.0) -> None:
        """Cumulative counters from two brokers, one counter reset, duplicated exports: 120
        exports ``step_s`` apart, starting ``180 × step_s`` before now."""
        ticks = 120
        t0 = self.now - 180 * step_s
        series = [
            (e, p, c, tp) for e in ("1", "2") for p, c in ((p1, "app-1"), (p2, "")) for tp in ("orders", "payments")
        ]
        state = {s: {"start": t0 - 60, "bytes": 0, "records": 0} for s in series}
        reset_at = {series[0]: 50, series[5]: 90}
        for tick in range(ticks):
            t = t0 + tick * step_s
            for emitter in ("1", "2"):
                points_b: list[dict[str, Any]] = []
                points_r: list[dict[str, Any]] = []
                for s in series:
                    if s[0] != emitter:
                        continue
                    st = state[s]
                    inc_b, inc_r = rnd.randint(0, 5_000_000), rnd.randint(0, 3000)
                    if reset_at.get(s) == tick:  # the broker restarted: counters start over
                        st["start"], st["bytes"], st["records"] = t - 30, 0, 0
                    st["bytes"] += inc_b
                    st["records"] += inc_r
                    direction = "produce" if s[3] == "orders" else "consume"
                    self.add("broker_metrics", s[1], s[2], "", s[3], direction, t, inc_b, inc_r)
                    attrs = {"principal": s[1], "client_id": s[2], "topic": s[3]}
                    points_b.append(otlp_point(attrs, st["start"], t, int(st["bytes"])))
                    points_r.append(otlp_point(attrs, st["start"], t, int(st["records"])))
                names = {
                    "orders": ("kafka.client.produce.bytes", "kafka.client.produce.records"),
                    "payments": ("kafka.client.fetch.bytes", "kafka.client.fetch.records"),
                }
                metrics: list[tuple[str, list[dict[str, Any]]]] = []
                for tp, (nb, nr) in names.items():
                    metrics.append((nb, [p for p in points_b if p["attributes"][2]["value"]["stringValue"] == tp]))
                    metrics.append((nr, [p for p in points_r if p["attributes"][2]["value"]["stringValue"] == tp]))
                value = otlp_export(emitter, metrics)
                self.records.append((self.metrics_topic, emitter.encode(), value))
                if rnd.random() < 0.1:  # the exporter retried: the same samples again
                    self.records.append((self.metrics_topic, emitter.encode(), value))
        # one implausible export: 10^15 bytes in a minute on a fresh series
        bogus = otlp_point({"topic": "orders"}, self.now - 120, self.now - 60, 10**15)
        self.records.append((self.metrics_topic, b"3", otlp_export("3", [("kafka.client.produce.bytes", [bogus])])))
        self.dlq["counter_implausible"] += 1

    def _audit(self, rnd: random.Random, principals: list[str], n: int, span_s: float = 4 * HOUR) -> None:
        sent: list[tuple[bytes, bytes]] = []
        for i in range(n):
            p = rnd.choice(principals)
            t = self.now - rnd.uniform(0, span_s)
            method = rnd.choice(
                ("kafka.Produce", "kafka.FetchConsumer", "kafka.Fetch", "KAFKA.PRODUCE", "kafka.FetchFollower")
            )
            granted = rnd.random() > 0.15
            topic = rnd.choice(("orders", "payments"))
            client_key = "client_id" if rnd.random() > 0.3 else "clientId"
            doc = {
                "specversion": rnd.choice(("1.0", "0.3")),
                "id": f"audit-{i}",
                "source": "crn:///kafka=abc",
                "type": "io.confluent.kafka.server/authorization",
                "time": rfc3339(t),
                "data": {
                    "methodName": method,
                    "authenticationInfo": {"principal": p},
                    "authorizationInfo": {"granted": granted, "resourceType": "Topic", "resourceName": topic},
                    "request": {client_key: "cli-1"},
                },
            }
            value = json.dumps(doc).encode()
            self.records.append((self.audit_topic, p.encode(), value))
            sent.append((p.encode(), value))
            if method != "kafka.FetchFollower":
                direction = "produce" if method.lower() == "kafka.produce" else "consume"
                self.add("audit_log", p, "cli-1", "", topic, direction, t, q=int(granted), d=int(not granted))
            if rnd.random() < 0.05:
                self.records.append((self.audit_topic, *rnd.choice(sent)))


def produce(
    bootstrap: str,
    records: Iterable[tuple[str, bytes | None, bytes | None]],
    pace: tuple[int, float] | None = None,
    timestamps: Sequence[int] | None = None,
) -> dict[tuple[str, int], int]:
    """Produce in order; returns the end offset per partition (from delivery reports).

    ``timestamps``: each record's Kafka timestamp (CreateTime, Unix ms), by position, as a
    mirror or a replay writes records with their original times; default, the producer's clock.
    """
    ends: dict[tuple[str, int], int] = {}
    errors: list[str] = []

    def report(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            k = (msg.topic(), msg.partition())
            ends[k] = max(ends.get(k, 0), msg.offset() + 1)

    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "enable.idempotence": False,
            "message.max.bytes": 2_000_000,
            "queue.buffering.max.messages": 500_000,
        }
    )
    for i, (topic, key, value) in enumerate(records):
        while True:
            try:
                if timestamps is None:
                    p.produce(topic, value, key=key, on_delivery=report)
                else:
                    p.produce(topic, value, key=key, on_delivery=report, timestamp=timestamps[i])
                break
            except BufferError:
                p.poll(0.1)
        if pace and i % pace[0] == pace[0] - 1:
            p.flush()
            time.sleep(pace[1])
    p.flush(60)
    assert not errors, errors[:3]
    return ends


def each_record(
    bootstrap: str,
    topic: str,
    partitions: int | None = None,
    committed_only: bool = True,
    timeout_s: float = 120.0,
) -> Iterator[Message]:
    """Every record of ``topic`` (of every partition when ``partitions`` is None; committed
    ones only unless ``committed_only`` is false), read to each partition's end as fetches
    report it. Raises if that takes over ``timeout_s``."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "isolation.level": "read_committed" if committed_only else "read_uncommitted",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
            "fetch.queue.backoff.ms": 10,
        }
    )
    try:
        parts = (
            list(range(partitions))
            if partitions is not None
            else list(c.list_topics(topic, timeout=10).topics[topic].partitions)
        )
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        pending = set(parts)
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            for m in c.consume(10_000, 0.5):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(m.partition())
                        continue
                    raise KafkaException(err)
                yield m
        if pending:
            raise RuntimeError(f"could not read {topic} to its end in {timeout_s:.0f} s")
    finally:
        c.close()


def read_all(bootstrap: str, topic: str, partitions: int) -> list[Any]:
    """Every committed record of ``topic``, read to each partition's end as fetches report it."""
    return [json.loads(m.value() or b"null") for m in each_record(bootstrap, topic, partitions)]


def committed(bootstrap: str, group: str, ends: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        got = c.committed([TopicPartition(t, p) for t, p in ends], timeout=10)
    finally:
        c.close()
    return {(tp.topic, tp.partition): tp.offset for tp in got}


def wait_caught_up(
    bootstrap: str,
    group: str,
    ends: dict[tuple[str, int], int],
    timeout: float = 180,
    alive: Callable[[], bool] = lambda: True,
) -> None:
    """Wait until ``group`` has committed every offset in ``ends`` (``alive``: give up early)."""
    deadline = time.monotonic() + timeout
    last: dict[tuple[str, int], int] = {}
    while time.monotonic() < deadline and alive():
        last = committed(bootstrap, group, ends)
        if all(last.get(k, -1) >= v for k, v in ends.items()):
            return
        time.sleep(0.5)
    raise AssertionError(f"worker did not catch up: committed {last}, ends {ends}")


def window_totals(rows: list[dict[str, Any]]) -> Truth:
    """Latest version per (window key, shard), then shards added up per window key."""
    latest: dict[tuple[str, ...], dict[str, Any]] = {}
    for r in rows:
        k: tuple[str, ...] = (
            r["source"],
            r["principal"],
            r["client_id"],
            r["virtual_cluster"],
            r["topic"],
            r["direction"],
            r["window_start"],
            r["shard"],
        )
        if k not in latest or r["version"] > latest[k]["version"]:
            latest[k] = r
    out: Truth = defaultdict(lambda: [0, 0, 0, 0])
    for k, r in latest.items():
        row = out[k[:7]]
        row[0] += r["bytes"]
        row[1] += r["records"]
        row[2] += r["requests"]
        row[3] += r["denied_requests"]
    return out
