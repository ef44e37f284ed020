"""Prometheus metrics of a metering worker, read from its running counts at scrape time.

Each worker process serves its own ``/metrics`` (``STREAMTOLL_METRICS_BIND``); Prometheus adds
workers up (``sum by (...)``). Counters restart at zero with the process, which ``rate()`` and
``increase()`` handle. Names (all prefixed ``streamtoll_``):

* ``events_in_total{source, outcome}`` — input records by source kind and what became of them:
  ``counted``, ``duplicate`` (a dedup hit), ``ignored`` (e.g. a non-billable audit event),
  ``tombstone``
* ``dedup_hits_total{source}`` — duplicates dropped
* ``metered_bytes_total`` / ``metered_records_total{source, direction}`` — usage counted
* ``dlq_records_total{reason}`` — records sent to the DLQ
* ``counter_resets_total`` — broker counter resets detected
* ``windows_published_total`` — hourly window snapshots written
* ``metering_transactions_total`` — Kafka transactions committed
* ``metering_partitions_owned`` — input partitions this worker holds now
* ``metering_segments_written_total`` / ``metering_segments_read_total`` — cold hours' segments
  written to / read back from the state topic; ``metering_checkpoints_total`` — checkpoints
* ``metering_windows_held`` — hourly windows this worker holds in memory now (hot hours and
  cold windows changed since their segment); ``metering_cold_hours`` — cold hours it knows the
  segment of
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from metering.engine.loop import Engine

__all__ = ["EngineCollector"]

_OUTCOMES = {"events_in": "counted", "dedup_hits": "duplicate", "ignored": "ignored", "tombstones": "tombstone"}


class EngineCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        stats = _copy(self.engine.stats)
        events = CounterMetricFamily(
            "streamtoll_events_in", "Input records by source and outcome", labels=["source", "outcome"]
        )
        dedup = CounterMetricFamily("streamtoll_dedup_hits", "Duplicate records dropped", labels=["source"])
        mbytes = CounterMetricFamily("streamtoll_metered_bytes", "Bytes metered", labels=["source", "direction"])
        mrecs = CounterMetricFamily("streamtoll_metered_records", "Records metered", labels=["source", "direction"])
        dlq = CounterMetricFamily("streamtoll_dlq_records", "Records sent to the DLQ", labels=["reason"])
        for key, n in sorted(stats.items()):
            name, _, rest = key.partition(".")
            if name in _OUTCOMES:
                events.add_metric([rest, _OUTCOMES[name]], n)
                if name == "dedup_hits":
                    dedup.add_metric([rest], n)
            elif name in ("bytes", "records"):
                source, _, direction = rest.partition(".")
                (mbytes if name == "bytes" else mrecs).add_metric([source, direction], n)
            elif name == "dlq":
                dlq.add_metric([rest], n)
        yield from (events, dedup, mbytes, mrecs, dlq)
        for name, metric, doc in (
            ("counter_resets", "counter_resets", "Broker counter resets detected"),
            ("windows_published", "windows_published", "Hourly usage window snapshots published"),
            ("transactions", "metering_transactions", "Kafka transactions committed"),
            ("segments_written", "metering_segments_written", "Cold hours' segments written to the state topic"),
            ("cold_segments_read", "metering_segments_read", "Reads of cold hours' segments from the state topic"),
            ("checkpoints", "metering_checkpoints", "State checkpoints written"),
        ):
            c = CounterMetricFamily(f"streamtoll_{metric}", doc)
            c.add_metric([], stats.get(name, 0))
            yield c
        shards = list(self.engine.shards.values())
        for metric, doc, value in (
            ("metering_partitions_owned", "Input partitions this worker holds", len(shards)),
            ("metering_windows_held", "Hourly windows held in memory", sum(len(st.hours) for st in shards)),
            ("metering_cold_hours", "Cold hours whose segment this worker knows", sum(len(st.cold) for st in shards)),
        ):
            g = GaugeMetricFamily(f"streamtoll_{metric}", doc)
            g.add_metric([], value)
            yield g


def _copy(stats: dict[str, int]) -> dict[str, int]:
    # the loop thread may add a key while we copy; the copy is retried, never half-read
    for _ in range(100):
        try:
            return dict(stats)
        except RuntimeError:
            continue
    return {}
