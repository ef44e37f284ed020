"""``streamtoll bench ingest``: the worker's proxy-audit throughput against a raw-client baseline.

Both are measured in the same run on the same topic:

* **baseline** — a bare confluent-kafka consumer in its own process that reads every record and
  ``orjson``-parses its value on one core (``consume(10000)``);
* **worker** — a real ``streamtoll worker`` process, from its first committed batch until its
  committed offsets reach the end of the input (every usage window snapshot written, since
  they commit in the same transactions).

With ``--reference`` the same input is metered once more, in the same run, by workers whose
shards take the per-record scan (``ShardState.scan``, what the batch scan of
``metering.fold.batch`` replaced and is property-tested against): the before/after figure.

Rates count input records per second of wall time. CPU seconds and peak RSS are the worker
process's own (psutil). The worker's start (group join, state restore) is not counted: the clock
starts when a worker logs that it owns partitions (polled every 20 ms).

``streamtoll bench memory``: a worker's RSS holding N live series in the current hour; with
``--hours N``, a worker metering a *history* (every series with traffic in each of the last N
hours) and what holding it costs: RSS, bytes written to the state topic per snapshot round
(``STATE_SNAPSHOT_INTERVAL`` 30 s in the bench, so rounds come quickly) and the restart time after
``kill -9`` (:func:`bench_history`). Everything is measured from outside the worker process, so
the figures compare state designs.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamtoll.dev.traffic import each_record, produce

__all__ = ["HistoryResult", "IngestResult", "MemoryResult", "bench_history", "bench_ingest", "bench_memory", "history"]

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
    one_worker_cpu_s_per_million: float | None = None
    reference_eps: float | None = None  # the per-record scan, same run (--reference)
    reference_cpu_s_per_million: float | None = None

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
                *(
                    [f"one worker CPU s per million     {self.one_worker_cpu_s_per_million:>12.2f}"]
                    if self.one_worker_cpu_s_per_million
                    else []
                ),
                *(
                    [
                        f"per-record scan x{self.workers} ev/s (same run) {self.reference_eps:>9,.0f}",
                        f"ratio per-record scan/baseline {self.reference_eps / self.baseline_eps:>12.3f}",
                        f"per-record scan CPU s per million {self.reference_cpu_s_per_million:>9.2f}",
                    ]
                    if self.reference_eps and self.reference_cpu_s_per_million
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
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
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


# a worker whose shards take the per-record scan (the batch scan's reference)
_REFERENCE_WORKER = """
import sys
from metering.fold import batch
batch.scan = lambda state, records, limits, out: state.scan(records, limits, out)
from streamtoll.cli import main
sys.exit(main(["worker"]))
"""


def bench_ingest(bootstrap: str, events: int, workers: int = 1, reference: bool = False) -> IngestResult:
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
    ref = _run_workers(bootstrap, topic, total, workers, _REFERENCE_WORKER) if reference else None
    return IngestResult(
        total,
        baseline,
        many[0],
        many[1] / total * 1e6,
        many[2] / 2**20,
        workers,
        one[0] if workers > 1 else None,
        one[1] / total * 1e6 if workers > 1 else None,
        ref[0] if ref else None,
        ref[1] / total * 1e6 if ref else None,
    )


def _run_workers(
    bootstrap: str, topic: str, total: int, workers: int, code: str | None = None
) -> tuple[float, float, float]:
    """``workers`` worker processes (a fresh group) over the topic: (events/s, CPU s, peak RSS).
    ``code``: the worker's program (``python -c``) in place of ``streamtoll worker``."""
    import psutil

    tag = uuid.uuid4().hex[:8]
    env = {**os.environ, **_bench_env(bootstrap, topic, tag)}
    logdir = Path(tempfile.mkdtemp(prefix="streamtoll-bench-"))
    procs = []
    for i in range(workers):
        log = open(logdir / f"worker{i}.log", "wb")  # noqa: SIM115
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", code] if code else [sys.executable, "-m", "streamtoll.cli", "worker"],
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


# -- bench memory --hours: a worker holding hours of history ------------------------------------

SETTLE_ROUNDS = 3  # snapshot rounds watched once everything is committed
RESTART_RECORDS = 100  # the small batch a restarted worker must commit


@dataclass
class HistoryResult:
    """What ``bench memory --hours`` measured (sizes in MB of 2**20 bytes, times in seconds)."""

    series: int
    hours: int
    records: int
    windows: int  # hourly windows in the history: series × hours × 2 directions
    snapshot_interval_s: float
    produce_s: float  # making and producing the history
    meter_s: float  # first record produced → every record committed by the worker
    idle_rss_mb: float  # partitions held, nothing metered
    peak_rss_mb: float
    settled_rss_mb: float  # everything committed, then SETTLE_ROUNDS snapshot rounds
    state_load_mb: float  # written to the state topic while metering the history
    state_load_mb_per_round: float  # the same per snapshot interval (mean)
    state_load_max_round_mb: float  # the most written in one snapshot interval while metering
    state_idle_mb_per_round: float  # per snapshot interval, holding the history, no input
    restore_s: float  # "restore_s" of the restarted worker's "partitions assigned" log line
    restart_s: float  # start after kill -9 → assigned and a new batch committed
    restarted_rss_mb: float  # the restarted worker's RSS once that batch is committed
    run_s: float

    def table(self) -> str:
        return "\n".join(
            [
                f"history: series x hours x 2        {self.series:>9,} x {self.hours:,} x 2",
                f"records / hourly windows           {self.records:>12,} / {self.windows:,}",
                f"produced in                        {self.produce_s:>12.1f} s"
                f"  ({self.records / max(self.produce_s, 1e-9):,.0f} rec/s)",
                f"metered (first produced → committed) {self.meter_s:>10.1f} s"
                f"  ({self.records / max(self.meter_s, 1e-9):,.0f} rec/s)",
                f"worker RSS idle, partitions held   {self.idle_rss_mb:>12.1f} MB",
                f"worker peak RSS                    {self.peak_rss_mb:>12.1f} MB",
                f"worker RSS settled (all committed) {self.settled_rss_mb:>12.1f} MB",
                f"state snapshot interval            {self.snapshot_interval_s:>12.0f} s"
                "  (STREAMTOLL_STATE_SNAPSHOT_INTERVAL)",
                f"state written while metering       {self.state_load_mb:>12.1f} MB"
                f"  ({self.state_load_mb_per_round:,.1f} MB per round, at most {self.state_load_max_round_mb:,.1f})",
                f"state written per round, idle      {self.state_idle_mb_per_round:>12.1f} MB",
                f"restart after kill -9              {self.restart_s:>12.1f} s  (restore_s {self.restore_s:.1f})",
                f"worker RSS after the restart       {self.restarted_rss_mb:>12.1f} MB",
                f"bench run time                     {self.run_s:>12.0f} s",
            ]
        )


def _rfc3339_ms(ms: int) -> bytes:
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z").encode()


def history(series: int, hours: int, now: float, seed: int = 5) -> Iterator[list[tuple[bytes, bytes]]]:
    """Proxy audit records, as (key, value), for ``series`` series (principal, client id, topic)
    with produce and fetch traffic in each of the last ``hours`` hours: one list per hour.

    Order: hour ascending (oldest first), as a worker catching up on an input topic that retains
    those hours reads it; within an hour, the 2 × ``series`` records come in one fixed shuffled
    order, so every input partition gets a share of every hour. Each record is the only one of its
    window key in its hour: the history holds exactly ``2 × series × hours`` hourly windows.

    Event times: in the current hour, spread over what has passed of it; in a past hour, in its
    last minute, so the oldest of 840 hours (the default ``MAX_LATENESS``, 35 days) is not too old
    for an hour after ``now``. Values are byte templates (one per series and direction, built once)
    filled with ``%``: no ``json.dumps`` per record.
    """
    rnd = random.Random(seed)
    keys: list[bytes] = []
    templates: list[bytes] = []
    for direction in ("produce", "fetch"):
        for k in range(series):
            principal = f"User:tenant-{k % 1000}"
            keys.append(principal.encode())
            templates.append(
                (
                    '{"specversion":"1.0","id":"h%d","source":"//bench","type":"io.streamtoll.kafka.'
                    + direction
                    + '","time":"%s","subject":"'
                    + principal
                    + f'","data":{{"client_id":"app-{k // 1000}","topic":"topic-{k % 7}","records":1,"bytes":100}}}}'
                ).encode()
            )
    order = list(range(2 * series))
    rnd.shuffle(order)
    now_ms = int(now * 1000)
    current = now_ms - now_ms % 3_600_000
    seq = 0
    for back in range(hours - 1, -1, -1):
        start = current - back * 3_600_000
        if back == 0:
            times = [_rfc3339_ms(start + (now_ms - start) * j // 60) for j in range(60)]
        else:
            times = [_rfc3339_ms(start + 3_599_999 - 1001 * j) for j in range(60)]
        yield [(keys[o], templates[o] % (seq + n, times[o % 60])) for n, o in enumerate(order)]
        seq += len(order)


def _produce_fast(bootstrap: str, topic: str, chunks: Iterable[list[tuple[bytes, bytes]]]) -> int:
    """Produce every (key, value) of ``chunks`` in order; returns how many (all delivered).

    Tuned for volume: 50 ms linger, 1 MB batches of up to 100k records, no compression, delivery
    reports only for failures (no Python call per record)."""
    errors: list[str] = []
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "batch.num.messages": 100_000,
            "compression.type": "none",
            "enable.idempotence": False,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "delivery.report.only.error": True,
            "on_delivery": lambda err, _msg: errors.append(str(err)),
        }
    )
    produce, poll = p.produce, p.poll
    n = 0
    for chunk in chunks:
        for key, value in chunk:
            while True:
                try:
                    produce(topic, value, key)
                    break
                except BufferError:
                    poll(0.05)
        n += len(chunk)
        poll(0)
    left = p.flush(600)
    if left or errors:
        raise RuntimeError(f"producing the history failed: {left} undelivered, errors {errors[:3]}")
    return n


class _PeakRss(threading.Thread):
    """The highest RSS of a process, sampled every 50 ms (and the kernel's VmHWM where there is one)."""

    def __init__(self, pid: int) -> None:
        import psutil

        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            with contextlib.suppress(Exception):
                self.peak = max(self.peak, self.proc.memory_info().rss)

    def high_water(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return max(self.peak, int(line.split()[1]) * 1024)
        return self.peak


def _assigned(log: Path) -> float | None:
    """``restore_s`` of the first "partitions assigned" line of a worker's JSON log, if any."""
    for line in log.read_text(errors="replace").splitlines():
        if "partitions assigned" in line:
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if doc.get("msg") == "partitions assigned":
                    return float(doc.get("restore_s", 0.0))
    return None


def _state_bytes(bootstrap: str, topic: str) -> dict[int, int]:
    """Bytes (key + value) of every record of ``topic`` — aborted transactions included — by its
    timestamp in ms (the writer's clock: the worker runs on this machine)."""
    by_ms: dict[int, int] = {}
    for m in each_record(bootstrap, topic, committed_only=False, timeout_s=600):
        ms = m.timestamp()[1]
        by_ms[ms] = by_ms.get(ms, 0) + len(m.value() or b"") + len(m.key() or b"")
    return by_ms


def _between(by_ms: dict[int, int], t0: float, t1: float) -> int:
    """Bytes written from ``t0`` to ``t1`` (epoch seconds)."""
    return sum(b for ms, b in by_ms.items() if t0 * 1000 <= ms < t1 * 1000)


def bench_history(bootstrap: str, series: int, hours: int, snapshot_interval_s: int = 30) -> HistoryResult:
    """One worker meters a history (:func:`history`) produced while it runs; then it is left idle
    for ``SETTLE_ROUNDS`` snapshot rounds, killed with SIGKILL and started again.

    Measured in the same run, from outside the worker (nothing here depends on how it keeps its
    state): its RSS idle, at its peak and settled; the bytes it wrote to the state topic (read
    back at the end, bucketed by record timestamp) while metering and per snapshot interval once
    idle; and its restart: from the new process's start until it has logged "partitions assigned"
    and committed ``RESTART_RECORDS`` records produced after the kill.
    """
    import psutil

    t_start = time.monotonic()
    tag = uuid.uuid4().hex[:8]
    topic = f"bench{tag}.proxy-audit"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        fut.result()
    bench_env = _bench_env(bootstrap, topic, tag)
    env = {
        **os.environ,
        **bench_env,
        "STREAMTOLL_INSTANCE_ID": "h0",
        "STREAMTOLL_STATE_SNAPSHOT_INTERVAL": f"{snapshot_interval_s}s",
    }
    logdir = Path(tempfile.mkdtemp(prefix="streamtoll-bench-"))
    group = f"bench{tag}"

    def start(name: str) -> tuple[subprocess.Popen[bytes], Path]:
        path = logdir / name
        with open(path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "streamtoll.cli", "worker"], env=env, stdout=log, stderr=log)
        return proc, path

    def alive(proc: subprocess.Popen[bytes], what: str) -> None:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited while {what}; logs in {logdir}")

    proc, log = start("worker.log")
    watch = _PeakRss(proc.pid)
    try:
        deadline = time.monotonic() + 120
        while _assigned(log) is None:
            alive(proc, "starting")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start; log in {logdir}")
            time.sleep(0.1)
        time.sleep(2)
        idle = psutil.Process(proc.pid).memory_info().rss
        watch.start()

        t_load0 = time.time()
        total = _produce_fast(bootstrap, topic, history(series, hours, t_load0))
        produce_s = time.time() - t_load0
        deadline = time.monotonic() + max(900.0, total / 5_000)
        while _committed(bootstrap, group, topic) < total:
            alive(proc, "metering the history")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not meter the history in time; log in {logdir}")
            time.sleep(0.2)
        t_done = time.time()

        settle_until = time.monotonic() + SETTLE_ROUNDS * snapshot_interval_s + 5
        while time.monotonic() < settle_until:
            alive(proc, "holding the history")
            time.sleep(0.5)
        t_settled = time.time()
        settled = psutil.Process(proc.pid).memory_info().rss
        peak = max(watch.high_water(), settled)
        watch.done.set()

        proc.kill()  # kill -9: no graceful shutdown, nothing flushed
        proc.wait(30)
        t0 = time.monotonic()
        proc, log = start("worker-restarted.log")
        now = time.time()
        principal = b"User:tenant-restart"
        extra = _produce_fast(
            bootstrap,
            topic,
            [
                [
                    (
                        principal,
                        b'{"specversion":"1.0","id":"r%d","source":"//bench","type":"io.streamtoll.kafka.produce",'
                        b'"time":"%s","subject":"User:tenant-restart","data":{"topic":"topic-0","records":1,"bytes":100}}'
                        % (i, _rfc3339_ms(int(now * 1000) - i)),
                    )
                    for i in range(RESTART_RECORDS)
                ]
            ],
        )
        deadline = time.monotonic() + 600
        restore_s = None
        while True:
            alive(proc, "restarting")
            if restore_s is None:
                restore_s = _assigned(log)
            if restore_s is not None and _committed(bootstrap, group, topic) >= total + extra:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the restarted worker did not commit the new records; logs in {logdir}")
            time.sleep(0.05)
        restart_s = time.monotonic() - t0
        assert restore_s is not None
        restarted = psutil.Process(proc.pid).memory_info().rss
    finally:
        watch.done.set()
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)

    state = _state_bytes(bootstrap, bench_env["STREAMTOLL_TOPIC_STATE"])
    rounds_loading = max((t_done - t_load0) / snapshot_interval_s, 1.0)
    load = _between(state, t_load0, t_done)
    per_round = [
        _between(state, t_load0 + i * snapshot_interval_s, min(t_load0 + (i + 1) * snapshot_interval_s, t_done))
        for i in range(int(rounds_loading) + 1)
    ]
    idle_state = _between(state, t_settled - SETTLE_ROUNDS * snapshot_interval_s, t_settled)
    mb = 2**20
    return HistoryResult(
        series=series,
        hours=hours,
        records=total,
        windows=2 * series * hours,
        snapshot_interval_s=snapshot_interval_s,
        produce_s=round(produce_s, 2),
        meter_s=round(t_done - t_load0, 2),
        idle_rss_mb=round(idle / mb, 1),
        peak_rss_mb=round(peak / mb, 1),
        settled_rss_mb=round(settled / mb, 1),
        state_load_mb=round(load / mb, 2),
        state_load_mb_per_round=round(load / rounds_loading / mb, 2),
        state_load_max_round_mb=round(max(per_round) / mb, 2),
        state_idle_mb_per_round=round(idle_state / SETTLE_ROUNDS / mb, 2),
        restore_s=restore_s,
        restart_s=round(restart_s, 2),
        restarted_rss_mb=round(restarted / mb, 1),
        run_s=round(time.monotonic() - t_start, 1),
    )


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
