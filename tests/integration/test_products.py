"""Streaming API products end to end: real PostgreSQL, a real broker, a real gateway process
(``GATEWAY_AUTH=streamtoll``) and confluent-kafka as the partner's client.

A plan that grants no topic of its own; two products on it — one self-service (produce), one
needing approval (consume). Subscribing with the command line publishes the entitlement and the
client produces through the gateway to the product's topic (and is refused on the other); the
partner's request over HTTP (``streamtoll api``, Idempotency-Key) grants nothing until finance
approves it, then the client consumes the other product's topic in its own group.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from billing.services.entitlements import entitlements
from billing.services.keys import create_key
from streamtoll.embedded import EmbeddedBroker

from .conftest import isolated_env
from .harness import api_server
from .seed import restricted_catalog
from .test_gateway import GatewayProcess
from .test_gateway_credentials import _sasl

pytestmark = pytest.mark.integration

SCHEMA = {"type": "object", "required": ["order_id"], "properties": {"order_id": {"type": "string"}}}


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "streamtoll.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def _catalog(tmp: Path, topics: dict[str, str]) -> tuple[Path, Path, Path]:
    """``seed.restricted_catalog`` with two products on its plan: ``orders`` (produce,
    self-service) and ``feed`` (consume, approval)."""
    products = [
        {
            "code": "orders-in",
            "name": "Orders in",
            "direction": "produce",
            "topics": [{"name": topics["orders"], "schema": {"type": "json", "file": "schemas/orders.json"}}],
            "plans": [{"plan": "portal", "self_service": True}],
        },
        {
            "code": "feed",
            "name": "Feed",
            "direction": "consume",
            "topics": [{"name": topics["feed"]}],
            "plans": [{"plan": "portal"}],
        },
    ]
    return restricted_catalog(tmp, products, {"orders.json": SCHEMA})


def _deliver(conf: dict[str, Any], topic: str, n: int) -> list[int | None]:
    producer = Producer({**conf, "linger.ms": 5, "message.timeout.ms": 10_000})
    results: list[int | None] = []
    for i in range(n):
        producer.produce(
            topic, b'{"order_id": "%03d"}' % i, on_delivery=lambda e, m: results.append(e.code() if e else None)
        )
    producer.flush(15)
    return results


def _consume(conf: dict[str, Any], topic: str, want: int, seconds: float = 10) -> tuple[int, list[int]]:
    consumer = Consumer({**conf, "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    got, errors = 0, []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and got < want and not errors:
            for m in consumer.consume(100, 0.2):
                if m.error():
                    errors.append(m.error().code())
                else:
                    got += 1
    finally:
        consumer.close()
    return got, errors


def _eventually(check: Callable[[], bool], seconds: float = 30) -> None:
    """The gateways follow the entitlements topic: a change reaches them within moments."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "the gateway did not apply the new entitlement in time"
        time.sleep(0.5)


def _granted(engine: sa.Engine) -> set[str]:
    acme = next(a.entitlement for a in entitlements(engine) if a.entitlement.account == "acme")
    return {g.pattern for g in acme.topics or ()}


def test_subscribed_products_grant_their_topics_through_the_gateway_and_requests_only_once_approved(
    engine: sa.Engine, migrated: str, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    env = {**isolated_env(broker.bootstrap), "STREAMTOLL_DATABASE_URL": migrated}
    hexa = uuid.uuid4().hex[:6]
    topics = {"orders": f"orders-{hexa}", "feed": f"feed-{hexa}", "other": f"other-{hexa}"}
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for f in admin.create_topics([NewTopic(t, 1, 1) for t in topics.values()]).values():
        f.result(10)
    # three records already in the feed (written to the broker directly, as the product's owner would)
    assert _deliver({"bootstrap.servers": broker.bootstrap}, topics["feed"], 3) == [None] * 3

    plans, accounts, products = _catalog(tmp_path, topics)
    _cli(env, "plans", "load", str(plans))
    _cli(env, "accounts", "load", str(accounts))
    loaded = json.loads(_cli(env, "products", "load", str(products), "-o", "json").stdout)
    assert loaded == [{"name": "orders-in v1", "change": "created"}, {"name": "feed v1", "change": "created"}]
    assert json.loads(_cli(env, "products", "load", str(products), "-o", "json").stdout) == [
        {"name": "orders-in", "change": "unchanged"},
        {"name": "feed", "change": "unchanged"},
    ]
    cred = json.loads(_cli(env, "credentials", "create", "--account", "acme", "--name", "app", "-o", "json").stdout)
    assert _granted(engine) == set()  # the plan grants no topic

    # self-service: active at once, published by the command
    sub = json.loads(_cli(env, "products", "subscribe", "acme", "orders-in", "-o", "json").stdout)
    assert (sub["status"], sub["decided_by"]) == ("active", "self-service")
    assert _granted(engine) == {topics["orders"]}

    gw = GatewayProcess({**env, "STREAMTOLL_GATEWAY_AUTH": "streamtoll"}, tmp_path / "gateway.log").start()
    partner, finance = create_key(engine, "partner", "acme"), create_key(engine, "finance", None)
    try:
        conf = _sasl(gw, "SCRAM-SHA-512", cred)
        _eventually(lambda: _deliver(conf, topics["orders"], 5) == [None] * 5)
        assert _deliver(conf, topics["feed"], 1) == [KafkaError.TOPIC_AUTHORIZATION_FAILED]  # not subscribed
        assert _deliver(conf, topics["other"], 1) == [KafkaError.TOPIC_AUTHORIZATION_FAILED]  # in no product

        with api_server(env, tmp_path / "api.log", ready="/healthz/live") as base:
            as_partner = {"Authorization": f"Bearer {partner}", "Idempotency-Key": f"sub-{hexa}"}
            as_finance = {"Authorization": f"Bearer {finance}"}
            listed = httpx.get(f"{base}/v1/products", headers=as_partner, timeout=30).json()
            assert [(p["code"], p["access"], (p["subscription"] or {}).get("status")) for p in listed] == [
                ("orders-in", "self_service", "active"),
                ("feed", "approval", None),
            ]
            one = httpx.get(f"{base}/v1/products/orders-in", headers=as_partner, timeout=30).json()
            assert json.loads(one["topics"][0]["schema"]["text"]) == SCHEMA  # the contract, as written

            # the partner asks for the feed: a request (twice with the same key: the same answer)
            asked = httpx.post(f"{base}/v1/products/feed/subscriptions", headers=as_partner, timeout=30)
            again = httpx.post(f"{base}/v1/products/feed/subscriptions", headers=as_partner, timeout=30)
            assert asked.status_code == 200 and again.json() == asked.json()
            assert again.headers["idempotent-replayed"] == "true"
            request = asked.json()
            assert (request["status"], request["requested_by"]) == ("requested", f"partner:{partner.split('_')[1]}")
            assert _granted(engine) == {topics["orders"]}
            got, errors = _consume({**conf, "group.id": f"acme-{hexa}"}, topics["feed"], 3, seconds=5)
            # refused: neither the group (acme-…, granted by a consume product) nor the topic yet
            refused = {KafkaError.GROUP_AUTHORIZATION_FAILED, KafkaError.TOPIC_AUTHORIZATION_FAILED}
            assert got == 0 and errors and errors[0] in refused, errors

            queue = httpx.get(
                f"{base}/v1/product-requests", params={"status": "requested"}, headers=as_finance, timeout=30
            )
            assert [r["id"] for r in queue.json()] == [request["id"]]
            denied = httpx.get(f"{base}/v1/product-requests", headers={"Authorization": f"Bearer {partner}"})
            assert denied.status_code == 403

            approved = httpx.post(
                f"{base}/v1/product-requests/{request['id']}/approve", headers=as_finance, timeout=30
            ).json()
            assert (approved["status"], approved["decided_by"]) == ("active", f"finance:{finance.split('_')[1]}")
            assert _granted(engine) == {topics["orders"], topics["feed"]}
            # published by the API: the client now reads the feed in its own group (acme-…)
            _eventually(lambda: _consume({**conf, "group.id": f"acme-{hexa}"}, topics["feed"], 3) == (3, []))
            # read-only: a consume product gives no write
            assert _deliver(conf, topics["feed"], 1) == [KafkaError.TOPIC_AUTHORIZATION_FAILED]

        # cancelled: the topic is taken back
        _cli(env, "products", "unsubscribe", "acme", "orders-in")
        assert _granted(engine) == {topics["feed"]}
        _eventually(lambda: _deliver(conf, topics["orders"], 1) == [KafkaError.TOPIC_AUTHORIZATION_FAILED])
    finally:
        gw.stop()
