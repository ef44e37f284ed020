"""Prometheus metrics of a gateway, read from its running counts at scrape time.

Served on ``/metrics`` with ``/healthz`` (ready while the listeners are open) and
``/healthz/live`` (while the event loop turns) when ``STREAMTOLL_METRICS_BIND`` is set. Names
(all prefixed ``streamtoll_gateway_``):

* ``connections`` — client connections open now; ``connections_total`` — accepted
* ``requests_total{api}`` — requests forwarded, by API name
* ``metered_records_total`` / ``metered_bytes_total{direction}`` — what the audit events carry
  (``produce`` or ``fetch``)
* ``protocol_violations_total`` — connections closed for bytes the gateway does not forward
* ``audit_events_total{outcome}`` — ``written`` (appended to the journal), ``delivered``
  (acknowledged by the audit cluster), ``failed`` (a delivery attempt failed: the event stays in
  the journal and is sent again), ``dropped`` (never journaled — the journal was full under
  ``GATEWAY_JOURNAL_FULL=drop``, or its disk refused a write: unmetered, and logged)
* ``audit_pending`` — events in the journal not yet confirmed delivered (the journal's depth)
* ``audit_journal_bytes`` / ``audit_journal_max_bytes`` — what the journal's segments take, and
  its bound; ``audit_journal_age_seconds`` — how long its oldest unconfirmed event has waited
  (0 when none waits); ``audit_journal_full`` — 1 while it is full
* ``upstream_latency_seconds{api}`` — histogram of the time from forwarding a request upstream
  to reading its response, by API name (every API the gateway forwards and expects an answer
  to; ``gateway.latency``). **Fetch's includes the broker's wait for data** (``max_wait_ms``),
  so an idle consumer's fetches sit near that wait
* ``refused_requests_total{api}`` — Produce and Fetch the gateway answered itself because the
  journal was full (``GATEWAY_JOURNAL_FULL=refuse``)
* ``denied_requests_total{api}`` — requests the account's topic or group access denied, wholly or
  in part (``gateway.access``; a restricted account's API that closes the connection counts too)
* ``throttle_seconds_total{account,direction}`` — seconds the account's connections were held
  (muted) for its rate quotas (``produce``, ``consume``, ``requests``; ``gateway.quota``), summed
  over its connections; ``throttled_responses_total{account,direction}`` — responses that carried
  a throttle of the gateway's; ``blocked_requests_total{account,api}`` — Produce and Fetch refused
  because a monthly cap blocks the account
* ``enforcement_episodes_open{account,kind,direction}`` — throttle and block episodes in force now
  (1 each; ``gateway.episodes``); ``enforcement_episode_records_total{outcome}`` — episode records
  ``published`` (handed to the producer), ``delivered`` (acknowledged), ``failed`` (not taken:
  logged, the episode's next record carries its state)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.protocol import FETCH, PRODUCE, api_name

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
        latency = HistogramMetricFamily(
            P + "upstream_latency_seconds",
            "time from forwarding a request upstream to its response, by API (Fetch's includes the broker's max wait)",
            labels=["api"],
        )
        for key, (buckets, total) in sorted(gw.latency.snapshot().items()):
            latency.add_metric([api_name(key)], buckets, total)
        yield latency
        for unit in ("records", "bytes"):
            m = CounterMetricFamily(P + f"metered_{unit}", f"{unit} in audit events", labels=["direction"])
            for direction in ("produce", "fetch"):
                m.add_metric([direction], gw.metered[f"{direction}_{unit}"])
            yield m
        yield CounterMetricFamily(P + "protocol_violations", "connections closed for bad bytes", value=gw.violations)
        events = CounterMetricFamily(P + "audit_events", "audit events by outcome", labels=["outcome"])
        for outcome in ("written", "delivered", "failed", "dropped"):
            events.add_metric([outcome], getattr(self.audit, outcome))
        yield events
        audit, journal = self.audit, self.audit.journal
        yield GaugeMetricFamily(P + "audit_pending", "audit events not yet confirmed delivered", value=audit.pending())
        yield GaugeMetricFamily(P + "audit_journal_bytes", "bytes of the audit journal", value=journal.bytes())
        yield GaugeMetricFamily(P + "audit_journal_max_bytes", "bound of the audit journal", value=journal.max_bytes)
        yield GaugeMetricFamily(P + "audit_journal_age_seconds", "wait of its oldest event", value=audit.age())
        yield GaugeMetricFamily(P + "audit_journal_full", "1 while the journal is full", value=int(journal.full()))
        refused = CounterMetricFamily(P + "refused_requests", "answered by the gateway: journal full", labels=["api"])
        for key in (PRODUCE, FETCH):
            refused.add_metric([api_name(key)], gw.refused[key])
        yield refused
        denied = CounterMetricFamily(P + "denied_requests", "denied by the account's access", labels=["api"])
        for key, n in sorted(dict(gw.denied).items()):
            denied.add_metric([api_name(key)], n)
        yield denied
        quotas = gw.quotas
        held = CounterMetricFamily(
            P + "throttle_seconds", "seconds connections were held by rate quotas", labels=["account", "direction"]
        )
        for (account, direction), seconds in sorted(quotas.throttle_seconds.items()):
            held.add_metric([account, direction], seconds)
        yield held
        throttled = CounterMetricFamily(
            P + "throttled_responses", "responses throttled by rate quotas", labels=["account", "direction"]
        )
        for (account, direction), n in sorted(quotas.throttled_responses.items()):
            throttled.add_metric([account, direction], n)
        yield throttled
        blocked = CounterMetricFamily(P + "blocked_requests", "refused: a cap blocks", labels=["account", "api"])
        for (account, api), n in sorted(quotas.blocked_requests.items()):
            blocked.add_metric([account, api], n)
        yield blocked
        episodes = quotas.episodes
        open_ = GaugeMetricFamily(
            P + "enforcement_episodes_open", "throttles and blocks in force", labels=["account", "kind", "direction"]
        )
        for account, kind, direction in sorted(episodes.open):
            open_.add_metric([account, kind, direction], 1)
        yield open_
        records = CounterMetricFamily(
            P + "enforcement_episode_records", "episode records by outcome", labels=["outcome"]
        )
        records.add_metric(["published"], episodes.published)
        for outcome in ("delivered", "failed"):
            records.add_metric([outcome], getattr(episodes.publisher, outcome, 0))
        yield records
