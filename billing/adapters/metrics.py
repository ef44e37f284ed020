"""Prometheus collectors of the billing side: the usage sink, the API and its live feed.

Names (prefix ``streamtoll_``):

* sink — ``sink_records_total`` (window records read), ``sink_upserts_total`` (rows written: a
  newer version arrived), ``sink_batches_total`` (committed to the database, then to Kafka),
  ``sink_database_errors_total``, ``sink_database_up`` (0 while it waits for the database)
* API — ``http_requests_total{route, status}``, ``http_request_duration_seconds{route, method,
  status}`` (a histogram; ``route`` is the path template, e.g. ``/v1/invoices/{ref}``, or
  ``unmatched``), ``billing_runs_total{finalize}``, ``invoices{status}`` (counted in the database
  at scrape time), ``api_limited_total{role, reason}`` (requests refused by a key's limits:
  ``rate`` or ``concurrency``), ``statements_served_total{how}`` (``stored``, ``stale`` or
  ``computed``) and ``statement_pdfs_total{how}`` (``stored`` or ``rendered``)
* live feed — ``metering_lag_records{topic, partition}``, ``metering_lag_seconds{topic, partition}``
  (the metering group against each input partition's end), ``dlq_records_today{reason}`` (from
  the DLQ topic, all workers), ``live_minutes_applied_total``, ``live_minutes_replayed_total``
  (usage minute partials folded / recognized as already folded), ``live_kafka_up``,
  ``accounts_held{kind, cause}`` (accounts throttled or blocked now — ``kind`` throttle or block,
  ``cause`` cap or quota — as the live view shows them; which accounts: ``/v1/live``, or the
  gateways' ``gateway_throttle_seconds_total`` and ``gateway_blocked_requests_total``)
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

if TYPE_CHECKING:
    from billing.adapters.live_feed import LiveFeed
    from billing.adapters.sink import UsageSink

__all__ = ["ApiCollector", "ServedCounts", "SinkCollector"]


class ServedCounts(Protocol):
    """What the statement store counts (``billing.services.statements.StatementStore``)."""

    @property
    def served(self) -> dict[str, int]: ...  # statements answered: stored, stale or computed
    @property
    def pdfs(self) -> dict[str, int]: ...  # statement PDFs answered: stored or rendered


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    c = CounterMetricFamily(name, doc)
    c.add_metric([], value)
    return c


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    g.add_metric([], value)
    return g


class SinkCollector(Collector):
    def __init__(self, sink: UsageSink) -> None:
        self.sink = sink

    def collect(self) -> Iterator[Metric]:
        s = self.sink
        yield _counter("streamtoll_sink_records", "Usage window records read", s.records)
        yield _counter("streamtoll_sink_upserts", "Usage rows written (newer versions)", s.upserted)
        yield _counter("streamtoll_sink_batches", "Batches committed to the database and Kafka", s.batches)
        yield _counter("streamtoll_sink_database_errors", "Failed database writes (retried)", s.db_failures)
        yield _gauge("streamtoll_sink_database_up", "1 while the sink's database writes succeed", int(s.db_up))


class ApiCollector(Collector):
    """Request and billing-run counts of one API process, its live feed, and invoices by status."""

    def __init__(self, engine: Engine, feed: LiveFeed | None, statements: ServedCounts | None = None) -> None:
        self.engine = engine
        self.feed = feed
        self.statements = statements
        self.requests: Counter[tuple[str, str]] = Counter()
        self.billing_runs: Counter[str] = Counter()
        self.limited: Counter[tuple[str, str]] = Counter()  # (role, rate | concurrency)
        # registered nowhere itself: collected through this collector, one per API process
        self.latency = Histogram(
            "streamtoll_http_request_duration_seconds",
            "HTTP request latency, from the request to the response's start",
            ["route", "method", "status"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
            registry=None,
        )

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        self.requests[(route, str(status))] += 1
        self.latency.labels(route, method, str(status)).observe(seconds)

    def collect(self) -> Iterator[Metric]:
        req = CounterMetricFamily("streamtoll_http_requests", "HTTP requests", labels=["route", "status"])
        for (route, status), n in sorted(self.requests.copy().items()):
            req.add_metric([route, status], n)
        yield req
        yield from self.latency.collect()
        runs = CounterMetricFamily("streamtoll_billing_runs", "Billing runs through the API", labels=["finalize"])
        for fin, n in sorted(self.billing_runs.copy().items()):
            runs.add_metric([fin], n)
        yield runs
        limited = CounterMetricFamily(
            "streamtoll_api_limited", "Requests refused by their key's limits", labels=["role", "reason"]
        )
        for (role, reason), n in sorted(self.limited.copy().items()):
            limited.add_metric([role, reason], n)
        yield limited
        if self.statements is not None:
            for name, doc, counts in (
                ("streamtoll_statements_served", "Statements answered, by how", self.statements.served),
                ("streamtoll_statement_pdfs", "Statement PDFs answered: stored or rendered", self.statements.pdfs),
            ):
                family = CounterMetricFamily(name, doc, labels=["how"])
                for how, n in sorted(counts.copy().items()):
                    family.add_metric([how], n)
                yield family
        invoices = GaugeMetricFamily("streamtoll_invoices", "Invoices by status", labels=["status"])
        try:
            with self.engine.connect() as conn:
                for status, n in conn.execute(text("SELECT status, count(*) FROM invoices GROUP BY status")):
                    invoices.add_metric([status], n)
        except SQLAlchemyError:
            pass  # the database being down shows in /healthz; the other metrics still matter
        yield invoices
        if self.feed is None:
            return
        board = self.feed.board
        lag_r = GaugeMetricFamily(
            "streamtoll_metering_lag_records", "Records not yet metered", labels=["topic", "partition"]
        )
        lag_s = GaugeMetricFamily(
            "streamtoll_metering_lag_seconds", "Age of the oldest record not yet metered", labels=["topic", "partition"]
        )
        for p in board.lag:
            labels = [p["topic"], str(p["partition"])]
            lag_r.add_metric(labels, p["records_behind"])
            if p["seconds_behind"] is not None:
                lag_s.add_metric(labels, p["seconds_behind"])
        yield lag_r
        yield lag_s
        dlq = GaugeMetricFamily(
            "streamtoll_dlq_records_today", "DLQ records today (UTC), all workers", labels=["reason"]
        )
        for reason, n in sorted(board.view_dlq_today(time.time()).items()):
            dlq.add_metric([reason], n)
        yield dlq
        yield _counter("streamtoll_live_minutes_applied", "Usage minute partials folded", board.minutes_applied)
        yield _counter(
            "streamtoll_live_minutes_replayed", "Usage minute partials already folded (ignored)", board.minutes_replayed
        )
        yield _gauge("streamtoll_live_kafka_up", "1 while the live feed reads Kafka", int(self.feed.kafka_ok()))
        held = GaugeMetricFamily(
            "streamtoll_accounts_held",
            "Accounts throttled or blocked now (a monthly cap's decision or a rate limit)",
            labels=["kind", "cause"],
        )
        accounts: dict[tuple[str, str], set[str]] = {
            (k, c): set() for k in ("throttle", "block") for c in ("cap", "quota")
        }
        for row in board.view_enforcement(time.time())["in_force"]:
            accounts.setdefault((row["kind"], row["cause"]), set()).add(row["account"])
        for (kind, cause), names in sorted(accounts.items()):
            held.add_metric([kind, cause], len(names))
        yield held
