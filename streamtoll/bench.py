"""``streamtoll bench ingest``: the worker's proxy-audit throughput against a raw-client baseline.

Both are measured in the same run on the same topic:

* **baseline** — a bare confluent-kafka consumer in its own process that reads every record and
  ``orjson``-parses its value on one core (``consume(10000)``);
* **worker** — a real ``streamtoll worker`` process, from its first committed batch until its
  committed offsets reach the end of the input (every usage window snapshot written, since
  they commit in the same transactions).

Rates count input records per second of wall time. CPU seconds and peak RSS are the worker
process's own (psutil). The worker's start (group join, state restore) is not counted: the clock
starts when a worker logs that it owns partitions (polled every 20 ms).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamtoll.traffic import produce

__all__ = ["IngestResult", "MemoryResult", "bench_ingest", "bench_memory"]

PARTITIONS = 4


@dataclass
class IngestResult:
    events: int
    baseline_eps: float
    worker_eps: float
    worker_cpu_s_per_million: float
    worker_peak_rss_mb: float
    workers: int
    one_worker_eps: float | None = None  # measured in the same run when workers > 1

    @property
    def ratio(self) -> float:
        return self.worker_eps / self.baseline_eps

    def table(self) -> str:
        return "\n".join(
            [
                f"events                         {self.events:>12,}",
                f"baseline (consume+orjson) ev/s {self.baseline_eps:>12,.0f}",
                f"worker x{self.workers} ev/s                 {self.worker_eps:>12,.0f}",
                f"ratio worker/baseline          {self.ratio:>12.3f}",
                f"worker CPU s per million       {self.worker_cpu_s_per_million:>12.2f}",
                f"worker peak RSS MB             {self.worker_peak_rss_mb:>12.1f}",
                *(
                    [
                        f"one worker ev/s (same run)     {self.one_worker_eps:>12,.0f}",
                        f"scaling x{self.workers} / x1                {self.worker_eps / self.one_worker_eps:>12.2f}",
                    ]
                    if self.one_worker_eps
                    else []
                ),
            ]
        )


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def _records(n: int, seed: int = 1) -> list[tuple[bytes, bytes]]:
    rnd = random.Random(seed)
    # Audit events arrive roughly in time order, as if at 100k/s (the rate the worker must
    # sustain), with a few seconds of jitter, and 1 % late by up to two hours.
    now = time.time()
    span = n / 100_000
    principals = [f"User:tenant-{i}" for i in range(50)]
    out: list[tuple[bytes, bytes]] = []
    for i in range(n):
        if out and rnd.random() < 0.01:
            out.append(out[rnd.randrange(max(0, len(out) - 1000), len(out))])  # a retried record
            continue
        p = rnd.choice(principals)
        doc = {
            "specversion": "1.0",
            "id": str(uuid.UUID(int=rnd.getrandbits(128))),
            "source": f"//proxy/gw-{i % 4}",
            "type": "io.streamtoll.kafka.produce" if rnd.random() < 0.4 else "io.streamtoll.kafka.fetch",
            "time": _rfc3339(
                now - span + span * i / n - rnd.uniform(0, 3) - (rnd.uniform(0, 7200) if rnd.random() < 0.01 else 0)
            ),
            "subject": p,
            "data": {
                "client_id": f"app-{rnd.randrange(8)}",
                "virtual_cluster": "prod",
                "topic": f"topic-{rnd.randrange(20)}",
                "partition": rnd.randrange(12),
                "records": rnd.randint(1, 500),
                "bytes": rnd.randint(100, 1_000_000),
            },
        }
        out.append((p.encode(), json.dumps(doc, separators=(",", ":")).encode()))
    return out


_BASELINE = r"""
import sys, time, orjson
from confluent_kafka import Consumer, TopicPartition
bootstrap, topic, total, parts = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-baseline", "fetch.queue.backoff.ms": 10,
              "enable.auto.commit": False})
c.assign([TopicPartition(topic, p, 0) for p in range(parts)])
n = 0; t0 = None
while n < total:
    msgs = c.consume(10000, 1.0)
    if msgs and t0 is None:
        t0 = time.perf_counter()
    for m in msgs:
        if m.error() is None:
            orjson.loads(m.value()); n += 1
print(n / (time.perf_counter() - t0))
"""


def _baseline(bootstrap: str, topic: str, total: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _BASELINE, bootstrap, topic, str(total), str(PARTITIONS)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return float(out.stdout.strip().splitlines()[-1])


def _committed(bootstrap: str, group: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        got = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
    finally:
        c.close()
    return sum(max(0, tp.offset) for tp in got)


def bench_ingest(bootstrap: str, events: int, workers: int = 1) -> IngestResult:
    tag = uuid.uuid4().hex[:8]
    topic = f"bench{tag}.proxy-audit"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        fut.result()
    records = _records(events)
    ends = produce(bootstrap, ((topic, key, value) for key, value in records))
    total = sum(ends.values())
    baseline = _baseline(bootstrap, topic, total)

    runs = [_run_workers(bootstrap, topic, total, k) for k in sorted({1, workers})]
    one, many = runs[0], runs[-1]
    return IngestResult(
        total,
        baseline,
        many[0],
        many[1] / total * 1e6,
        many[2] / 2**20,
        workers,
        one[0] if workers > 1 else None,
    )


def _run_workers(bootstrap: str, topic: str, total: int, workers: int) -> tuple[float, float, float]:
    """``workers`` worker processes (a fresh group) over the topic: (events/s, CPU s, peak RSS)."""
    import psutil

    tag = uuid.uuid4().hex[:8]
    env = {**os.environ, **_bench_env(bootstrap, topic, tag)}
    logdir = Path(tempfile.mkdtemp(prefix="streamtoll-bench-"))
    procs = []
    for i in range(workers):
        log = open(logdir / f"worker{i}.log", "wb")  # noqa: SIM115
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "streamtoll.cli", "worker"],
                env={**env, "STREAMTOLL_INSTANCE_ID": f"b{i}"},
                stdout=log,
                stderr=log,
            )
        )
    ps = [psutil.Process(p.pid) for p in procs]
    try:
        cpu0: float | None = None
        t0 = 0.0
        logs = [logdir / f"worker{i}.log" for i in range(workers)]
        peak = 0
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a worker exited during the benchmark; logs in {logdir}")
            done = _committed(bootstrap, f"bench{tag}", topic)
            rss = sum(p.memory_info().rss for p in ps)
            peak = max(peak, rss)
            if cpu0 is None and any("partitions assigned" in f.read_text() for f in logs):
                # the clock starts when a worker owns partitions (group join and restore excluded)
                t0 = time.perf_counter()
                cpu0 = sum(sum(p.cpu_times()[:2]) for p in ps)
            if done >= total:
                break
            time.sleep(0.02)
        else:
            raise RuntimeError(f"workers did not finish; logs in {logdir}")
        t1 = time.perf_counter()
        cpu1 = sum(sum(p.cpu_times()[:2]) for p in ps)
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
    assert cpu0 is not None
    return total / (t1 - t0), cpu1 - cpu0, float(peak)


@dataclass
class MemoryResult:
    series: int
    idle_rss_mb: float
    loaded_rss_mb: float
    peak_rss_mb: float

    def table(self) -> str:
        per = (self.loaded_rss_mb - self.idle_rss_mb) * 2**20 / self.series
        return "\n".join(
            [
                f"live series (client x topic)    {self.series:>12,}  (x2 directions = window keys)",
                f"worker RSS idle, partitions held {self.idle_rss_mb:>11.1f} MB",
                f"worker RSS with the series       {self.loaded_rss_mb:>11.1f} MB",
                f"worker peak RSS                  {self.peak_rss_mb:>11.1f} MB  (target < 500 MB)",
                f"bytes per live series            {per:>11,.0f}",
            ]
        )


def bench_memory(bootstrap: str, series: int = 100_000) -> MemoryResult:
    """A worker's RSS holding ``series`` live window keys: each key (principal, client id, topic)
    gets records in the current hour; RSS is read idle (partitions held, nothing metered), then
    once every record is committed and the process has settled."""
    import psutil

    tag = uuid.uuid4().hex[:8]
    topic = f"bench{tag}.proxy-audit"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        fut.result()
    env = {**os.environ, **_bench_env(bootstrap, topic, tag), "STREAMTOLL_INSTANCE_ID": "m0"}
    logdir = Path(tempfile.mkdtemp(prefix="streamtoll-bench-"))
    log = open(logdir / "worker.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "streamtoll.cli", "worker"], env=env, stdout=log, stderr=log)
    ps = psutil.Process(proc.pid)
    try:
        deadline = time.monotonic() + 120
        while "partitions assigned" not in (logdir / "worker.log").read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start; log in {logdir}")
            time.sleep(0.1)
        time.sleep(2)
        idle = ps.memory_info().rss
        now = time.time()
        hour0 = now - now % 3600
        rnd = random.Random(3)

        def records() -> Iterator[tuple[str, bytes, bytes]]:
            for i in range(series * 2):  # every series twice: one produce, one fetch record
                k = i % series
                principal = f"User:tenant-{k % 1000}"
                doc = {
                    "specversion": "1.0",
                    "id": f"m-{i}",
                    "source": "//bench",
                    "type": "io.streamtoll.kafka.produce" if i < series else "io.streamtoll.kafka.fetch",
                    "time": _rfc3339(max(hour0, now - rnd.uniform(0, 600))),
                    "subject": principal,
                    "data": {"client_id": f"app-{k // 1000}", "topic": f"topic-{k % 7}", "records": 1, "bytes": 100},
                }
                yield topic, principal.encode(), json.dumps(doc, separators=(",", ":")).encode()

        ends = produce(bootstrap, records())
        total = sum(ends.values())
        peak = idle
        deadline = time.monotonic() + 900
        while _committed(bootstrap, f"bench{tag}", topic) < total:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not finish; log in {logdir}")
            peak = max(peak, ps.memory_info().rss)
            time.sleep(0.05)
        time.sleep(3)
        loaded = ps.memory_info().rss
        peak = max(peak, loaded)
    finally:
        proc.terminate()
        proc.wait(30)
    return MemoryResult(series, idle / 2**20, loaded / 2**20, peak / 2**20)


def _bench_env(bootstrap: str, topic: str, tag: str) -> dict[str, str]:
    return {
        "STREAMTOLL_KAFKA_BOOTSTRAP": bootstrap,
        "STREAMTOLL_TOPIC_PROXY_AUDIT": topic,
        "STREAMTOLL_TOPIC_BROKER_METRICS": f"bench{tag}.broker-metrics",
        "STREAMTOLL_TOPIC_BROKER_AUDIT": f"bench{tag}.audit-log",
        "STREAMTOLL_TOPIC_DLQ": f"bench{tag}.dlq",
        "STREAMTOLL_TOPIC_USAGE_WINDOWS": f"bench{tag}.usage-windows",
        "STREAMTOLL_TOPIC_USAGE_MINUTES": f"bench{tag}.usage-minutes",
        "STREAMTOLL_TOPIC_STATE": f"bench{tag}.state",
        "STREAMTOLL_METERING_GROUP": f"bench{tag}",
        "STREAMTOLL_SESSION_TIMEOUT_MS": "6000",
        "STREAMTOLL_TOPIC_PARTITIONS": str(PARTITIONS),
        "STREAMTOLL_LOG_LEVEL": "INFO",  # the bench watches for "partitions assigned"
    }
