"""``streamtoll up``: everything running locally, as child processes of one supervisor.

The command line starts the embedded broker and PostgreSQL where their settings are unset; this
module migrates the database, loads the sample catalog into an *embedded* database that has no
accounts yet, and runs three children — ``streamtoll worker``, ``streamtoll sink`` and
``streamtoll api`` (with the live page) — each with its own log under ``.streamtoll/logs``. A
child that exits on its own is restarted with backoff (1 s doubling to 30 s). Ctrl-C or SIGTERM
stops the children in order (API, sink, worker: each finishes its batch and commits), then the
broker and the database. Every child gets SIGTERM if the supervisor itself dies, however it
dies (Linux ``PR_SET_PDEATHSIG``), so no orphan worker or API is left behind.

With an embedded broker there is no other traffic, so a small generator produces proxy audit
records for the sample principals (a few hundred a second, some retries and a bad record now and
then) to make the live page move; ``--no-traffic`` turns it off, ``--traffic`` turns it on
against a real cluster (it writes to the proxy audit topic: never do that in production).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
from confluent_kafka import Producer

from metering.settings import MeteringSettings
from streamtoll.embedded import _die_with_parent, free_port
from streamtoll.traffic import rfc3339

__all__ = ["Child", "Supervisor", "demo_trickle"]

SAMPLES = Path(__file__).parent / "samples"
PRINCIPALS = ["User:acme-orders", "User:acme-billing", "User:globex-analytics", "User:initech-iot", "User:hooli-test"]


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    backoff: float = 1.0
    next_start: float = 0.0
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self._log = self._log or open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamtoll.cli", *self.argv],
            env=self.env,
            stdout=self._log,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )

    def stop(self, timeout: float = 30.0) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None


class Supervisor:
    """Starts the children, restarts one that dies, stops them all in order."""

    def __init__(self, children: list[Child]) -> None:
        self.children = children
        self.stopping = threading.Event()

    def start(self) -> None:
        for c in self.children:
            c.start()

    def watch(self, say: IO[str]) -> None:
        while not self.stopping.wait(0.5):
            now = time.monotonic()
            for c in self.children:
                if c.proc is None or c.proc.poll() is None:
                    continue
                if c.next_start == 0.0:
                    c.next_start = now + c.backoff
                    print(
                        f"{c.name} exited with code {c.proc.returncode}; restarting in {c.backoff:.0f} s "
                        f"(see {c.log_path})",
                        file=say,
                        flush=True,
                    )
                elif now >= c.next_start:
                    c.backoff = min(c.backoff * 2, 30.0)
                    c.next_start = 0.0
                    c.start()

    def stop(self) -> None:
        self.stopping.set()
        for c in reversed(self.children):  # API, then sink, then worker
            c.stop()


def wait_healthy(base: str, timeout: float = 90.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                return True
        time.sleep(0.3)
    return False


def demo_trickle(settings: MeteringSettings, stop: threading.Event, per_second: int = 200) -> None:
    """Proxy audit records for the sample principals, now, until ``stop`` (with retries and a
    bad record every ten seconds or so, so the DLQ and dedup show up too)."""
    assert settings.kafka_bootstrap
    producer = Producer({**settings.kafka_config(), "linger.ms": 20})
    rnd = random.Random()
    recent: list[bytes] = []
    tick = 0
    while not stop.wait(0.1):
        tick += 1
        for _ in range(per_second // 10):
            principal = rnd.choice(PRINCIPALS)
            direction = rnd.choice(("produce", "consume", "consume"))
            doc = {
                "specversion": "1.0",
                "id": str(uuid.uuid4()),
                "source": "//proxy/streamtoll-up",
                "type": "io.streamtoll.kafka.produce" if direction == "produce" else "io.streamtoll.kafka.fetch",
                "time": rfc3339(time.time()),
                "subject": principal,
                "data": {
                    "client_id": rnd.choice(("app-1", "app-2")),
                    "topic": rnd.choice(("orders", "payments", "telemetry.raw")),
                    "records": rnd.randint(1, 500),
                    "bytes": rnd.randint(1_000, 400_000),
                },
            }
            value = json.dumps(doc).encode()
            recent = [*recent[-99:], value]
            producer.produce(settings.topic_proxy_audit, value, key=principal.encode())
        if rnd.random() < 0.05:
            producer.produce(settings.topic_proxy_audit, rnd.choice(recent))  # a retry
        if tick % 100 == 0:
            producer.produce(settings.topic_proxy_audit, b'{"specversion":"1.0","id":', key=b"User:hooli-test")
        producer.poll(0)
    producer.flush(10)


@contextlib.contextmanager
def trickle(settings: MeteringSettings, enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    stop = threading.Event()
    thread = threading.Thread(target=demo_trickle, args=(settings, stop), name="traffic", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(15)


def children(
    settings: MeteringSettings, database_url: str, api_bind: str, logs: Path
) -> tuple[list[Child], dict[str, str]]:
    """The three children and the URLs they serve."""
    assert settings.kafka_bootstrap
    base = {k: v for k, v in os.environ.items()}
    base.update(
        {
            "STREAMTOLL_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "STREAMTOLL_DATABASE_URL": database_url,
            "STREAMTOLL_API_BIND": api_bind,
            "STREAMTOLL_MAX_LATENESS": f"{int(settings.max_lateness_s)}s",
            "STREAMTOLL_SESSION_TIMEOUT_MS": str(settings.session_timeout_ms),
            "STREAMTOLL_STATIC_MEMBERSHIP": str(settings.static_membership).lower(),
            "STREAMTOLL_TOPIC_PARTITIONS": str(settings.topic_partitions),
        }
    )
    base.pop("STREAMTOLL_METRICS_BIND", None)
    worker_port, sink_port = free_port(), free_port()
    logs.mkdir(parents=True, exist_ok=True)
    kids = [
        Child("worker", ["worker", "--metrics-bind", f"127.0.0.1:{worker_port}"], base, logs / "worker.log"),
        Child("sink", ["sink", "--metrics-bind", f"127.0.0.1:{sink_port}"], base, logs / "sink.log"),
        Child("api", ["api", "--bind", api_bind], base, logs / "api.log"),
    ]
    urls = {
        "api": f"http://{api_bind}",
        "worker_metrics": f"http://127.0.0.1:{worker_port}/metrics",
        "sink_metrics": f"http://127.0.0.1:{sink_port}/metrics",
    }
    return kids, urls
