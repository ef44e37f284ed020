"""The partner portal in a real headless Chromium, end to end through the gateway: a partner signs
in, creates a credential, and the confluent-kafka configuration the page shows — run exactly as
shown — produces and consumes through ``streamtoll gateway`` (``GATEWAY_AUTH=streamtoll``, a real
broker, the credential published by the portal); the usage page then shows that traffic.

Between the gateway and the usage page, this test takes the gateway's own proxy audit events and
stores them with the sink's upsert (:func:`billing.adapters.sink.upsert_windows`) instead of
running the metering worker and the sink: that chain is proven exact elsewhere
(``test_exactness``, ``test_live``, the demo's gateway leg) and would add a minute here."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from confluent_kafka.admin import AdminClient, NewTopic

from billing.adapters.sink import upsert_windows
from billing.api.app import create_app
from billing.services.credentials import publish_credentials
from billing.services.keys import create_key
from billing.settings import BillingSettings
from metering.contracts import UsageWindow
from streamtoll.embedded import EmbeddedBroker
from streamtoll.serving import running

from .conftest import isolated_env
from .test_gateway import AuditLog, GatewayProcess
from .webdriver import chromium

pytestmark = pytest.mark.integration

PRODUCE, FETCH = "io.streamtoll.kafka.produce", "io.streamtoll.kafka.fetch"
N = 200


@dataclass
class Stack:
    base: str
    key: str
    engine: sa.Engine
    gateway: GatewayProcess
    audit: AuditLog
    bootstrap: str  # the broker's (for the admin client only: partners reach it through the gateway)


@pytest.fixture(scope="module")
def stack(
    broker: EmbeddedBroker, module_catalog: tuple[str, sa.Engine], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("portal")
    _, engine = module_catalog
    env = isolated_env(broker.bootstrap)
    topic = env["STREAMTOLL_TOPIC_CREDENTIALS"]
    kafka = {"bootstrap.servers": broker.bootstrap}
    publish_credentials(engine, kafka, topic)  # the topic exists before the gateway reads it
    gw = GatewayProcess({**env, "STREAMTOLL_GATEWAY_AUTH": "streamtoll"}, tmp / "gateway.log").start()
    audit = AuditLog(broker.bootstrap, env["STREAMTOLL_TOPIC_PROXY_AUDIT"])
    settings = replace(BillingSettings(), portal_gateway_bootstrap=gw.bootstrap)
    app = create_app(engine, settings, publish_credentials=lambda: publish_credentials(engine, kafka, topic) >= 0)
    try:
        with running(app) as base:
            yield Stack(base, create_key(engine, "partner", "acme"), engine, gw, audit, broker.bootstrap)
    finally:
        gw.stop()


def _windows(events: list[dict[str, Any]], now: datetime) -> list[UsageWindow]:
    """The gateway's audit events as the current hour's proxy usage windows (one per principal,
    client id, topic and direction), as the worker would sum them."""
    sums: dict[tuple[str, str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for e in events:
        d = e["data"]
        direction = "produce" if e["type"] == PRODUCE else "consume"
        acc = sums[(e["subject"], d.get("client_id", ""), d["topic"], direction)]
        acc[0] += d["bytes"]
        acc[1] += d["records"]
        acc[2] += 1
    hour = now.replace(minute=0, second=0, microsecond=0).strftime("%Y-%m-%dT%H:00:00.000Z")
    return [
        UsageWindow(hour, "", "proxy", None, p, c, "vc-test", t, d, b, r, q, 0, 1, "s/0")
        for (p, c, t, d), (b, r, q) in sums.items()
    ]


def test_sign_in_create_a_credential_and_use_the_config_shown_through_the_gateway(stack: Stack) -> None:
    topic = f"portal-{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": stack.bootstrap})  # kept: its futures die with it
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(10)
    with chromium(1280, 900) as browser:
        browser.open(stack.base + "/portal/usage")
        browser.wait("return location.pathname === '/portal/sign-in'", what="the sign-in page")
        browser.js(
            "document.getElementById('key').value = arguments[0];"
            "document.querySelector('main form button[type=submit]').click()",
            stack.key,
        )
        browser.wait("return location.pathname === '/portal' && document.getElementById('account')", what="overview")
        assert browser.js("return document.getElementById('account').textContent") == "acme"
        # the session is HttpOnly: no script sees it; nothing is kept in the browser's storage
        assert browser.js("return document.cookie") == ""
        assert browser.js("return localStorage.length + sessionStorage.length") == 0

        browser.open(stack.base + "/portal/credentials")
        browser.wait("return document.getElementById('create')", what="the create form")
        browser.js("document.getElementById('name').value = 'portal-app'; document.getElementById('create').click()")
        snippet = browser.wait("return document.getElementById('issued-python')?.textContent", what="the config")
        password = browser.js("return document.getElementById('issued-password').textContent")
        assert f'"sasl.password": "{password}"' in snippet and stack.gateway.bootstrap in snippet

        # exactly what the page shows, pasted into Python
        shown: dict[str, Any] = {}
        exec(snippet, shown)  # the point of the test: the config as the partner copies it
        producer, consumer = shown["producer"], shown["consumer"]
        delivered: list[Any] = []
        for i in range(N):
            producer.produce(topic, b"portal-%04d" % i, on_delivery=lambda err, msg: delivered.append(err))
        assert producer.flush(30) == 0 and delivered == [None] * N
        consumer.subscribe([topic])
        got = 0
        for _ in range(100):
            got += sum(1 for m in consumer.consume(500, 0.3) if not m.error())
            if got >= N:
                break
        consumer.close()
        assert got == N

        audit = stack.audit
        audit.wait(lambda: audit.totals(topic, PRODUCE)[0] >= N and audit.totals(topic, FETCH)[0] >= N)
        mine = audit.for_topic(topic)
        assert {e["subject"] for e in mine} == {"User:acme/portal-app"}
        produced, fetched = audit.totals(topic, PRODUCE), audit.totals(topic, FETCH)
        assert produced[0] == N and fetched[0] >= N
        upsert_windows(stack.engine, _windows(mine, datetime.now(UTC)))

        day = datetime.now(UTC).date().isoformat()
        for quantity, want in (("records", (produced[0], fetched[0])), ("bytes", (produced[1], fetched[1]))):
            browser.open(f"{stack.base}/portal/usage?granularity=hour&day={day}&by=direction&quantity={quantity}")
            browser.wait("return document.getElementById('chart')?.dataset.drawn === '24'", what="the hourly chart")
            chart = browser.js("return JSON.parse(document.getElementById('chart-data').textContent)")
            totals = {s["name"]: sum(s["values"]) for s in chart["series"]}
            assert (totals["produce"], totals["consume"]) == want, quantity
        # the table under the chart says the same, for screen readers
        cells = browser.js(
            "return Object.fromEntries([...document.querySelectorAll('#usage-table tfoot td[data-series]')]"
            ".map(td => [td.dataset.series, td.textContent]))"
        )
        assert set(cells) == {"produce", "consume"}
        browser.open(f"{stack.base}/portal/usage?granularity=hour&day={day}&by=topic&quantity=records")
        browser.wait("return document.getElementById('chart')?.dataset.drawn", what="the chart by topic")
        assert browser.js(
            f"return document.querySelector('#usage-table tfoot td[data-series=\"{topic}\"]').textContent"
        )
