"""Prometheus metrics of a gateway, read from its running counts at scrape time.

Served on ``/metrics`` with ``/healthz`` (ready while the listeners are open) and
``/healthz/live`` (while the event loop turns) when ``STREAMTOLL_METRICS_BIND`` is set. Names
(all prefixed ``streamtoll_gateway_``):

* ``connections`` — client connections open now; ``connections_total`` — accepted
* ``requests_total{api}`` — requests forwarded, by API name
* ``metered_records_total`` / ``metered_bytes_total{direction}`` — what the audit events carry
  (``produce`` or ``fetch``)
* ``protocol_violations_total`` — connections closed for bytes the gateway does not forward
* ``audit_events_total{outcome}`` — ``written`` (handed to the producer), ``delivered``
  (acknowledged by the audit cluster), ``failed`` (given up on: unmetered, and logged)
* ``audit_pending`` — events not yet acknowledged by the audit cluster
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.protocol import api_name

if TYPE_CHECKING:
    from gateway.audit import AuditWriter
    from gateway.proxy import Gateway

__all__ = ["GatewayCollector"]

P = "streamtoll_gateway_"


class GatewayCollector(Collector):
    def __init__(self, gateway: Gateway, audit: AuditWriter) -> None:
        self.gateway = gateway
        self.audit = audit

    def collect(self) -> Iterator[Metric]:
        gw = self.gateway
        yield GaugeMetricFamily(P + "connections", "client connections open", value=len(gw.connections))
        yield CounterMetricFamily(P + "connections", "client connections accepted", value=gw.accepted)
        requests = CounterMetricFamily(P + "requests", "requests forwarded", labels=["api"])
        for key, n in sorted(dict(gw.requests).items()):
            requests.add_metric([api_name(key)], n)
        yield requests
        for unit in ("records", "bytes"):
            m = CounterMetricFamily(P + f"metered_{unit}", f"{unit} in audit events", labels=["direction"])
            for direction in ("produce", "fetch"):
                m.add_metric([direction], gw.metered[f"{direction}_{unit}"])
            yield m
        yield CounterMetricFamily(P + "protocol_violations", "connections closed for bad bytes", value=gw.violations)
        events = CounterMetricFamily(P + "audit_events", "audit events by outcome", labels=["outcome"])
        for outcome in ("written", "delivered", "failed"):
            events.add_metric([outcome], getattr(self.audit, outcome))
        yield events
        yield GaugeMetricFamily(P + "audit_pending", "audit events not yet acknowledged", value=self.audit.pending())
