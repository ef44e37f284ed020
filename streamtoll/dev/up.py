"""``streamtoll up``: everything running locally, as child processes of one supervisor.

The command line starts the embedded broker and PostgreSQL where their settings are unset; this
module migrates the database, loads the sample catalog into an *embedded* database that has no
accounts yet, and runs six children — ``streamtoll worker``, ``streamtoll caps`` (the monthly
caps fold: the decisions the gateway enforces), ``streamtoll sink``, ``streamtoll jobs`` (the
periodic billing jobs of :data:`billing.services.jobs.JOBS` — thresholds check, alerts check, webhooks send —
every :data:`JOBS_EVERY_S` seconds; a new periodic job is one line there, not a new child),
``streamtoll gateway`` (in front of the broker: ``GATEWAY_LISTEN`` when set, else free local
ports) and ``streamtoll api`` (with the live page) — each with its own log under
``.streamtoll/logs``. A child that exits on
its own is restarted with backoff (1 s doubling to 30 s). Ctrl-C or SIGTERM stops the children
in order (API; gateway, which drains and flushes its audit events; jobs, whose job in progress
finishes; sink; caps; worker: each finishes its batch and commits), then the broker and the
database. Every child gets SIGTERM if the supervisor itself dies, however it dies (Linux
``PR_SET_PDEATHSIG``), so no orphan worker or API is left behind.

With an embedded broker there is no other traffic, so :func:`gateway_traffic` runs real
confluent-kafka producers and consumers through the gateway (client ids the sample client rules
give to acme and initech, and one nobody's), a few hundred records a second, to make the live
page move with gateway-metered usage; ``--no-traffic`` turns it off, ``--traffic`` turns it on
against a real cluster (it creates and writes ``demo.*`` topics there: never in production).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
from confluent_kafka import Consumer, Producer

from metering.settings import MeteringSettings
from streamtoll.dev.gateway_clients import create_topics, gateway_env
from streamtoll.embedded import _die_with_parent, free_port

__all__ = ["JOBS_EVERY_S", "Child", "Supervisor", "gateway_traffic", "traffic"]

SAMPLES = Path(__file__).parents[1] / "samples"  # streamtoll/samples
JOBS_EVERY_S = 30  # `streamtoll jobs --every`: webhooks sent and alerts checked twice a minute


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

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

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
        for c in reversed(self.children):  # API, gateway, jobs, sink, caps, then worker
            c.stop()


def wait_healthy(base: str, timeout: float = 90.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                return True
        time.sleep(0.3)
    return False


TRAFFIC_TOPICS = {"demo.orders": 3, "demo.payments": 2, "demo.telemetry": 2}
# client id, topic, records a second, value bytes (about): acme-* and initech-* are the sample
# accounts' client id rules; hooli-test matches no rule (unassigned)
TRAFFIC_PRODUCERS = [
    ("acme-orders", "demo.orders", 60, 500),
    ("acme-billing", "demo.payments", 30, 300),
    ("initech-sensors", "demo.telemetry", 120, 120),
    ("hooli-test", "demo.orders", 10, 1000),
]
TRAFFIC_CONSUMERS = [("acme-fulfilment", "demo.orders"), ("initech-dashboard", "demo.telemetry")]


def gateway_traffic(bootstrap: str, stop: threading.Event) -> None:
    """Producers and consumers through the gateway at ``bootstrap`` until ``stop``."""
    producers = [
        (Producer({"bootstrap.servers": bootstrap, "client.id": cid, "linger.ms": 20}), topic, rate, size)
        for cid, topic, rate, size in TRAFFIC_PRODUCERS
    ]
    readers = [threading.Thread(target=_read, args=(bootstrap, c, t, stop), daemon=True) for c, t in TRAFFIC_CONSUMERS]
    for r in readers:
        r.start()
    rnd = random.Random()
    while not stop.wait(0.1):
        for p, topic, rate, size in producers:
            for _ in range(rate // 10):
                with contextlib.suppress(BufferError):  # the gateway is restarting: skip, not pile up
                    p.produce(topic, rnd.randbytes(rnd.randint(size // 2, size * 3 // 2)), key=str(rnd.randrange(64)))
            p.poll(0)
    for p, *_ in producers:
        p.flush(5)
    for r in readers:
        r.join(15)


def _read(bootstrap: str, client_id: str, topic: str, stop: threading.Event) -> None:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "client.id": client_id,
            "group.id": client_id,
            "session.timeout.ms": 6000,
            "auto.offset.reset": "latest",
            "fetch.queue.backoff.ms": 10,
        }
    )
    c.subscribe([topic])
    try:
        while not stop.is_set():
            c.consume(1000, 0.5)
    finally:
        c.close()


@contextlib.contextmanager
def traffic(settings: MeteringSettings, gateway: str | None, enabled: bool) -> Iterator[None]:
    """:func:`gateway_traffic` in a thread while the block runs (nothing without a gateway)."""
    if not enabled or gateway is None:
        yield
        return
    assert settings.kafka_bootstrap
    create_topics(settings.kafka_bootstrap, settings.kafka_config(), TRAFFIC_TOPICS)
    stop = threading.Event()
    thread = threading.Thread(target=gateway_traffic, args=(gateway, stop), name="traffic", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(20)


def children(
    settings: MeteringSettings, database_url: str, api_bind: str, logs: Path, embedded_kafka: bool = False
) -> tuple[list[Child], dict[str, str]]:
    """The six children, the URLs they serve and the gateway's bootstrap address."""
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
    worker_port, sink_port, gateway_port = free_port(), free_port(), free_port()
    gw_env, gateway = gateway_env(base, settings.kafka_bootstrap)
    logs.mkdir(parents=True, exist_ok=True)
    caps_env = dict(base)
    if embedded_kafka:  # the dev broker's quirks the caps fold works around (metering.streams.caps)
        caps_env.setdefault("STREAMTOLL_CAPS_EMBEDDED_BROKER", "true")
    kids = [  # stopped in reverse: the API, the gateway (its last events still reach the worker), …
        Child("worker", ["worker", "--metrics-bind", f"127.0.0.1:{worker_port}"], base, logs / "worker.log"),
        Child("caps", ["caps"], caps_env, logs / "caps.log"),
        Child("sink", ["sink", "--metrics-bind", f"127.0.0.1:{sink_port}"], base, logs / "sink.log"),
        Child("jobs", ["jobs", "--every", str(JOBS_EVERY_S)], base, logs / "jobs.log"),
        Child("gateway", ["gateway", "--metrics-bind", f"127.0.0.1:{gateway_port}"], gw_env, logs / "gateway.log"),
        # the portal's client configs name this gateway (unless PORTAL_GATEWAY_BOOTSTRAP is set)
        Child(
            "api",
            ["api", "--bind", api_bind],
            {"STREAMTOLL_PORTAL_GATEWAY_BOOTSTRAP": gateway, **base},
            logs / "api.log",
        ),
    ]
    urls = {
        "api": f"http://{api_bind}",
        "portal": f"http://{api_bind}/portal",
        "worker_metrics": f"http://127.0.0.1:{worker_port}/metrics",
        "sink_metrics": f"http://127.0.0.1:{sink_port}/metrics",
        "gateway_metrics": f"http://127.0.0.1:{gateway_port}/metrics",
        "gateway": gateway,
    }
    return kids, urls
