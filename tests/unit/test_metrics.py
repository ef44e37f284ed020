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
