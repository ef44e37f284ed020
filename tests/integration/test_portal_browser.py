"""The partner portal in a real headless Chromium, end to end through the gateway: a partner signs
in, creates a credential, and the confluent-kafka configuration the page shows — run exactly as
shown — is refused on a product's topic (acme's plan restricts access: its ``access`` section
grants no topic) until the partner subscribes to that self-service product in the portal, then
produces and consumes through ``streamtoll gateway`` (``GATEWAY_AUTH=streamtoll``, a real broker,
the credential and the entitlement published by the portal); the usage page then shows that
traffic. A product needing approval shows "requested" until finance approves it over the API,
then "subscribed".

Between the gateway and the usage page, this test takes the gateway's own proxy audit events and
stores them with the sink's upsert (:func:`billing.adapters.sink.upsert_windows`) instead of
running the metering worker and the sink: that chain is proven exact elsewhere
(``test_exactness``, ``test_live``, the demo's gateway leg) and would add a minute here."""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from confluent_kafka import KafkaError
from confluent_kafka.admin import AdminClient, NewTopic

from billing.adapters.sink import upsert_windows
from billing.api.app import create_app
from billing.services.catalog import load_accounts, load_plans
from billing.services.credentials import publish_credentials
from billing.services.entitlements import publish_entitlements
from billing.services.keys import create_key
from billing.services.products import load_products
from billing.settings import BillingSettings
from metering.contracts import UsageWindow
from streamtoll.embedded import EmbeddedBroker
from streamtoll.serving import running

from .conftest import isolated_env
from .seed import restricted_catalog
from .test_gateway import AuditLog, GatewayProcess
from .webdriver import chromium

pytestmark = pytest.mark.integration

PRODUCE, FETCH = "io.streamtoll.kafka.produce", "io.streamtoll.kafka.fetch"
N = 200
SCHEMA = {"type": "object", "required": ["n"], "properties": {"n": {"type": "string"}}}


@dataclass
class Stack:
    base: str
    key: str
    engine: sa.Engine
    gateway: GatewayProcess
    audit: AuditLog
    bootstrap: str  # the broker's (for the admin client only: partners reach it through the gateway)
    topic: str  # the self-service product's topic
    finance: str  # a finance key


def _catalog(tmp: Path, topic: str) -> tuple[Path, Path, Path]:
    """``seed.restricted_catalog`` with two products on its plan: ``portal-stream`` (produce and
    consume ``topic``, self-service, a JSON Schema) and ``audit-feed`` (consume, needs approval)."""
    products = [
        {
            "code": "portal-stream",
            "name": "Portal stream",
            "description": "Write and read the portal test's records.",
            "direction": "both",
            "topics": [{"name": topic, "schema": {"type": "json", "file": "schemas/stream.json"}}],
            "plans": [{"plan": "portal", "self_service": True}],
        },
        {
            "code": "audit-feed",
            "name": "Audit feed",
            "direction": "consume",
            "topics": [{"prefix": f"{topic}.audit."}],
            "plans": [{"plan": "portal"}],
        },
    ]
    return restricted_catalog(tmp, products, {"stream.json": SCHEMA})


@pytest.fixture(scope="module")
def stack(
    broker: EmbeddedBroker, module_catalog: tuple[str, sa.Engine], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("portal")
    _, engine = module_catalog
    env = isolated_env(broker.bootstrap)
    topic = env["STREAMTOLL_TOPIC_CREDENTIALS"]
    granted = env["STREAMTOLL_TOPIC_ENTITLEMENTS"]
    kafka = {"bootstrap.servers": broker.bootstrap}
    product_topic = f"portal-{uuid.uuid4().hex[:6]}"
    admin = AdminClient(kafka)
    admin.create_topics([NewTopic(product_topic, 2, 1)])[product_topic].result(10)
    plans, accounts, products = _catalog(tmp, product_topic)
    load_plans(engine, plans)
    load_accounts(engine, accounts)
    load_products(engine, products)
    publish_credentials(engine, kafka, topic)  # the topic exists before the gateway reads it
    publish_entitlements(engine, kafka, granted)  # acme restricted (no topic) before the gateway starts
    gw = GatewayProcess({**env, "STREAMTOLL_GATEWAY_AUTH": "streamtoll"}, tmp / "gateway.log").start()
    audit = AuditLog(broker.bootstrap, env["STREAMTOLL_TOPIC_PROXY_AUDIT"])
    settings = replace(BillingSettings(), portal_gateway_bootstrap=gw.bootstrap)
    app = create_app(
        engine,
        settings,
        publish_credentials=lambda: publish_credentials(engine, kafka, topic) >= 0,
        publish_entitlements=lambda: publish_entitlements(engine, kafka, granted) >= 0,  # as `streamtoll api`
    )
    try:
        with running(app) as base:
            partner, finance = create_key(engine, "partner", "acme"), create_key(engine, "finance", None)
            yield Stack(base, partner, engine, gw, audit, broker.bootstrap, product_topic, finance)
    finally:
        gw.stop()


def _windows(events: list[dict[str, Any]], now: datetime) -> list[UsageWindow]:
    """The gateway's audit events as the current hour's proxy usage windows (one per principal,
    client id, topic and direction), as the worker would sum them."""
    sums: dict[tuple[str, str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for e in events:
        d = e["data"]
        direction = "produce" if e["type"] == PRODUCE else "consume"
        acc = sums[(e["subject"], d.get("client_id", ""), d["topic"], direction)]
        if d.get("outcome") == "denied":  # refused before the subscription: no usage, a denied request
            acc[3] += d["denied_requests"]
            continue
        acc[0] += d["bytes"]
        acc[1] += d["records"]
        acc[2] += 1
    hour = now.replace(minute=0, second=0, microsecond=0).strftime("%Y-%m-%dT%H:00:00.000Z")
    return [
        UsageWindow(hour, "", "proxy", None, p, c, "vc-test", t, d, b, r, q, n, 1, "s/0")
        for (p, c, t, d), (b, r, q, n) in sums.items()
    ]


def _run(snippet: str) -> dict[str, Any]:
    """The confluent-kafka snippet the page shows, run exactly as shown (its producer and consumer)."""
    shown: dict[str, Any] = {}
    exec(snippet, shown)  # the point of the test: the config as the partner copies it
    return shown


def _produce(producer: Any, topic: str, values: list[bytes]) -> list[int | None]:
    """Each record's delivery error code (None: delivered)."""
    results: list[int | None] = []
    for v in values:
        producer.produce(topic, v, on_delivery=lambda err, msg: results.append(err.code() if err else None))
    producer.flush(30)
    return results


def test_sign_in_subscribe_create_a_credential_and_use_the_config_shown_through_the_gateway(stack: Stack) -> None:
    topic = stack.topic
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

        browser.open(stack.base + "/portal/products")
        browser.wait("return document.getElementById('products')", what="the products page")
        states = (
            "return Object.fromEntries([...document.querySelectorAll('#products > li')]"
            ".map(li => [li.id, li.querySelector('.state').dataset.state]))"
        )
        assert browser.js(states) == {"product-portal-stream": "none", "product-audit-feed": "none"}

        browser.open(stack.base + "/portal/credentials")
        browser.wait("return document.getElementById('create')", what="the create form")
        browser.js("document.getElementById('name').value = 'portal-app'; document.getElementById('create').click()")
        snippet = browser.wait("return document.getElementById('issued-python')?.textContent", what="the config")
        password = browser.js("return document.getElementById('issued-password').textContent")
        assert f'"sasl.password": "{password}"' in snippet and stack.gateway.bootstrap in snippet

        # before the subscription: the plan grants no topic, the gateway refuses the client on it
        before = _run(snippet)
        deadline = time.monotonic() + 30
        while True:  # the credential reaches the gateway within moments (an unknown user cannot log in)
            refused = _produce(before["producer"], topic, [b"refused"])
            if refused == [KafkaError.TOPIC_AUTHORIZATION_FAILED] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert refused == [KafkaError.TOPIC_AUTHORIZATION_FAILED]
        consumer = before["consumer"]
        consumer.subscribe([topic])
        errors: list[int] = []
        for _ in range(40):
            errors += [m.error().code() for m in consumer.consume(10, 0.25) if m.error()]
            if errors:
                break
        consumer.close()
        refusals = {KafkaError.GROUP_AUTHORIZATION_FAILED, KafkaError.TOPIC_AUTHORIZATION_FAILED}
        assert errors and errors[0] in refusals, errors

        # subscribe in the portal (self-service: active at once, the entitlement published)
        browser.open(stack.base + "/portal/products/portal-stream")
        browser.wait("return document.getElementById('subscribe')", what="the Subscribe button")
        assert json.loads(browser.js("return document.getElementById('schema-0').textContent")) == SCHEMA
        browser.js("document.getElementById('subscribe').click()")
        browser.wait("return document.getElementById('notice')?.textContent.startsWith('Subscribed.')", what="done")
        assert browser.js("return document.getElementById('state').dataset.state") == "subscribed"

        # after: exactly what the page showed, pasted into Python again, produces and consumes
        deadline = time.monotonic() + 30
        while True:  # the gateway follows the entitlements topic: the grant arrives within moments
            shown = _run(snippet)
            first = _produce(shown["producer"], topic, [b"portal-0000"])
            if first != [KafkaError.TOPIC_AUTHORIZATION_FAILED] or time.monotonic() > deadline:
                break
            shown["consumer"].close()
            time.sleep(0.5)
        assert first == [None], first
        producer, consumer = shown["producer"], shown["consumer"]
        assert _produce(producer, topic, [b"portal-%04d" % i for i in range(1, N)]) == [None] * (N - 1)
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

        # a product needing approval: requested in the portal, approved by finance over the API
        browser.open(stack.base + "/portal/products/audit-feed")
        browser.wait("return document.getElementById('subscribe')", what="the Request access button")
        assert browser.js("return document.getElementById('subscribe').textContent") == "Request access"
        browser.js("document.getElementById('subscribe').click()")
        browser.wait("return document.getElementById('notice')?.textContent.startsWith('Access requested.')", what="ok")
        assert browser.js("return document.getElementById('state').dataset.state") == "requested"
        finance = {"Authorization": f"Bearer {stack.finance}"}
        queue = httpx.get(f"{stack.base}/v1/product-requests", params={"status": "requested"}, headers=finance)
        [request] = queue.json()
        assert (request["account"], request["product"]) == ("acme", "audit-feed")
        approved = httpx.post(f"{stack.base}/v1/product-requests/{request['id']}/approve", headers=finance)
        assert approved.status_code == 200 and approved.json()["status"] == "active"
        browser.open(stack.base + "/portal/products")
        browser.wait("return document.getElementById('products')", what="the products page")
        assert browser.js(states) == {"product-portal-stream": "subscribed", "product-audit-feed": "subscribed"}
