"""The worker's and sink's metrics server: their collector, the process's own metrics, /healthz."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from streamtoll.metrics import serve_metrics


class One(Collector):
    def collect(self) -> Iterator[Metric]:
        c = CounterMetricFamily("streamtoll_things", "Things")
        c.add_metric([], 3)
        yield c


def test_metrics_has_the_collector_and_the_process_metrics() -> None:
    with serve_metrics(One(), "127.0.0.1:0", lambda: (False, {"database": "unreachable"})) as port:
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
            text = r.read().decode()
        try:
            urllib.request.urlopen(base + "/healthz", timeout=10)
            raise AssertionError("a process that is not ready answered 200")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503 and json.loads(exc.read()) == {"ready": False, "database": "unreachable"}
    samples = {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples["streamtoll_things_total"] == 3
    assert samples["process_resident_memory_bytes"] > 1_000_000
    assert samples["process_cpu_seconds_total"] > 0
    assert "process_open_fds" in samples


def test_liveness_is_the_loop_turning_not_the_outage() -> None:
    ready = (False, {"database": "unreachable"})
    with serve_metrics(One(), "127.0.0.1:0", lambda: ready, lambda: (True, {"loop_turned_s_ago": 0.5})) as port:
        r = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz/live", timeout=10)
        assert r.status == 200 and json.loads(r.read()) == {"live": True, "loop_turned_s_ago": 0.5}
    with serve_metrics(One(), "127.0.0.1:0", lambda: ready, lambda: (False, {"loop_turned_s_ago": 301})) as port:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz/live", timeout=10)
            raise AssertionError("a stuck loop answered 200")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503 and json.loads(exc.read())["live"] is False


def test_the_worker_is_alive_while_its_loop_turns_even_without_kafka() -> None:
    from metering.engine.loop import Engine
    from metering.settings import MeteringSettings

    now = [1000.0]
    engine = Engine(MeteringSettings(kafka_bootstrap="127.0.0.1:1"), clock=lambda: now[0])
    assert engine.alive()[0] and not engine.health()[0]  # not ready (never polled), but alive
    now[0] += 299
    assert engine.alive()[0]
    now[0] += 2
    assert not engine.alive()[0]  # nothing turned for 301 s: stuck
    engine.turned_at = now[0]  # a restart after a failure is a turn
    assert engine.alive()[0]
