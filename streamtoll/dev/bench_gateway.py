"""``streamtoll bench gateway``: produce and consume throughput through ``streamtoll gateway``
against the same clients direct to the broker, measured in the same run.

A real ``streamtoll gateway`` process sits in front of the broker. The same confluent-kafka
producer settings write ``--messages`` records direct and through the gateway (to two topics),
then the same consumer reads each topic back, direct and through the gateway. Each leg is run
twice, alternating, and the better run of each is kept (the machine is shared). Rates are
records and MB of values per second of wall time; CPU seconds per GB are the gateway process's
own (psutil) over the bytes it carried (taken before the latency legs). Latency: 2,000 produces
one at a time (``acks=all``, no linger), each from ``produce`` to its delivery report, direct and
through the gateway; the difference of the percentiles is what the gateway adds.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamtoll.embedded import free_port

__all__ = ["GatewayBenchResult", "bench_gateway"]

PARTITIONS = 4


@dataclass
class GatewayBenchResult:
    messages: int
    size: int
    produce_direct: float  # records/s
    produce_gateway: float
    consume_direct: float
    consume_gateway: float
    cpu_s_per_gb: float
    metered_ok: bool
    latency_direct_ms: tuple[float, float] = (0.0, 0.0)  # p50, p99 of one produce, sent and acknowledged
    latency_gateway_ms: tuple[float, float] = (0.0, 0.0)

    def table(self) -> str:
        mb = self.size / 1e6
        rows = [
            f"messages × value bytes                 {self.messages:>10,} × {self.size}",
            f"produce direct        rec/s (MB/s)     {self.produce_direct:>10,.0f} ({self.produce_direct * mb:,.1f})",
            f"produce via gateway   rec/s (MB/s)     {self.produce_gateway:>10,.0f} ({self.produce_gateway * mb:,.1f})",
            f"produce ratio gateway/direct           {self.produce_gateway / self.produce_direct:>10.3f}",
            f"consume direct        rec/s (MB/s)     {self.consume_direct:>10,.0f} ({self.consume_direct * mb:,.1f})",
            f"consume via gateway   rec/s (MB/s)     {self.consume_gateway:>10,.0f} ({self.consume_gateway * mb:,.1f})",
            f"consume ratio gateway/direct           {self.consume_gateway / self.consume_direct:>10.3f}",
            f"gateway CPU s per GB carried           {self.cpu_s_per_gb:>10.2f}",
            "produce latency direct  p50 / p99 ms   {:>10.2f} / {:.2f}".format(*self.latency_direct_ms),
            "produce latency gateway p50 / p99 ms   {:>10.2f} / {:.2f}".format(*self.latency_gateway_ms),
            f"added latency           p50 / p99 ms   "
            f"{self.latency_gateway_ms[0] - self.latency_direct_ms[0]:>10.2f} / "
            f"{self.latency_gateway_ms[1] - self.latency_direct_ms[1]:.2f}",
            f"metered records == records moved       {'yes' if self.metered_ok else 'NO':>10}",
        ]
        return "\n".join(rows)


def _produce(bootstrap: str, topic: str, messages: int, value: bytes) -> float:
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            "acks": "all",
            "enable.idempotence": True,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    start = time.perf_counter()
    for i in range(messages):
        while True:
            try:
                p.produce(topic, value, partition=i % PARTITIONS)
                break
            except BufferError:
                p.poll(0.01)
    assert p.flush(120) == 0
    return messages / (time.perf_counter() - start)


def _latency(bootstrap: str, topic: str, n: int = 2000) -> tuple[float, float]:
    """p50 and p99 (ms) of one produce at a time, from ``produce`` to its delivery report."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "all", "enable.idempotence": True})
    p.produce(topic, b"warm-up")
    p.flush(10)
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        p.produce(topic, b"x" * 200)
        p.flush(10)
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return samples[n // 2], samples[int(n * 0.99)]


def _consume(bootstrap: str, topic: str, messages: int) -> float:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "fetch.queue.backoff.ms": 10,
        }
    )
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    got = 0
    start = time.perf_counter()
    deadline = start + 300
    while got < messages and time.perf_counter() < deadline:
        got += sum(1 for m in c.consume(10_000, 0.5) if not m.error())
    elapsed = time.perf_counter() - start
    c.close()
    if got < messages:
        raise RuntimeError(f"read {got} of {messages} records of {topic}")
    return messages / elapsed


def _metered(bootstrap: str, topic: str) -> dict[str, int]:
    import orjson

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}"})
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    out: dict[str, int] = {}
    idle = time.monotonic() + 3
    while time.monotonic() < idle:
        msgs = c.consume(10_000, 0.5)
        for m in msgs:
            if m.error():
                continue
            e = orjson.loads(m.value() or b"{}")
            key = f"{e['type'].rsplit('.', 1)[1]} {e['data']['topic']}"
            out[key] = out.get(key, 0) + e["data"]["records"]
        if msgs:
            idle = time.monotonic() + 2
    c.close()
    return out


def bench_gateway(bootstrap: str, messages: int, size: int) -> GatewayBenchResult:
    tag = uuid.uuid4().hex[:8]
    port, broker_port = free_port(), free_port()
    audit = f"bench-{tag}.proxy-audit"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMTOLL_")}
    env.update(
        STREAMTOLL_KAFKA_BOOTSTRAP=bootstrap,
        STREAMTOLL_TOPIC_PROXY_AUDIT=audit,
        STREAMTOLL_TOPIC_PARTITIONS=str(PARTITIONS),
        STREAMTOLL_GATEWAY_LISTEN=f"127.0.0.1:{port}",
        STREAMTOLL_GATEWAY_BROKER_PORTS=str(broker_port),
        STREAMTOLL_LOG_LEVEL="WARNING",
    )
    names = [f"bench-{tag}-{leg}-{run}" for leg in ("direct", "gateway") for run in (0, 1, "latency")]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in names]).values():
        fut.result(30)
    log = Path(tempfile.mkdtemp(prefix="bench-gateway-")) / "gateway.log"
    env["STREAMTOLL_GATEWAY_JOURNAL_DIR"] = str(log.parent / "journal")  # its own: never another gateway's
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamtoll.cli", "gateway"], env=env, stdout=out, stderr=out)
    try:
        _wait_listening(broker_port, proc, log)
        ps = psutil.Process(proc.pid)
        cpu0 = sum(ps.cpu_times()[:2])
        gw = f"127.0.0.1:{port}"
        value = os.urandom(size // 2) + b"\x00" * (size - size // 2)  # half compressible
        best: dict[str, float] = {}

        def leg(name: str, fn: Callable[[], float]) -> None:
            best[name] = max(best.get(name, 0.0), fn())

        for run in (0, 1):
            d, g = f"bench-{tag}-direct-{run}", f"bench-{tag}-gateway-{run}"
            leg("produce direct", lambda d=d: _produce(bootstrap, d, messages, value))  # type: ignore[misc]
            leg("produce gateway", lambda g=g: _produce(gw, g, messages, value))  # type: ignore[misc]
            leg("consume direct", lambda g=g: _consume(bootstrap, g, messages))  # type: ignore[misc]
            leg("consume gateway", lambda d=d: _consume(gw, d, messages))  # type: ignore[misc]
        cpu = sum(ps.cpu_times()[:2]) - cpu0
        lat_direct = _latency(bootstrap, f"bench-{tag}-direct-latency")
        lat_gateway = _latency(gw, f"bench-{tag}-gateway-latency")
        carried_gb = 4 * messages * size / 1e9  # two produce and two consume legs went through it
        metered = _metered(bootstrap, audit)
        ok = all(metered.get(f"produce bench-{tag}-gateway-{r}") == messages for r in (0, 1)) and all(
            metered.get(f"fetch bench-{tag}-direct-{r}", 0) >= messages for r in (0, 1)
        )
    finally:
        proc.terminate()
        proc.wait(60)
        for fut in admin.delete_topics([*names, audit]).values():
            with contextlib.suppress(Exception):  # a leftover bench topic is harmless
                fut.result(30)
    return GatewayBenchResult(
        messages,
        size,
        best["produce direct"],
        best["produce gateway"],
        best["consume direct"],
        best["consume gateway"],
        cpu / carried_gb,
        ok,
        lat_direct,
        lat_gateway,
    )


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the gateway exited at start:\n" + log.read_text(errors="replace")[-2000:])
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the gateway did not listen in 30 s")
