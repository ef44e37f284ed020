"""Billing's side of entitlements: a plan with access, limits and caps and an account's own grants
are loaded with the command line, published to the entitlements topic the gateways follow (read
back here with the broker's own bytes and a real client), and shown over HTTP — a partner sees
its own account's only; finance and ops issue credentials, a partner lists and rotates its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml
from confluent_kafka import Consumer, TopicPartition

from billing.adapters.sink import upsert_windows
from billing.api import models
from billing.api.app import create_app
from billing.services.catalog import load_accounts, load_plans
from billing.services.entitlements import entitlements
from billing.services.keys import create_key
from metering.entitlements import Cap, Entitlement, Grant, Limits, decode_entitlement
from streamtoll.dev.gateway_clients import broker_batches
from streamtoll.embedded import EmbeddedBroker
from streamtoll.serving import running

from .conftest import isolated_env
from .harness import api_server
from .seed import GB, w

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).parents[2] / "streamtoll" / "samples"
GOLD = {
    "code": "partner-gold",
    "name": "Partner Gold",
    "currency": "EUR",
    "base_fee": "99.00",
    "prices": [{"meter": "produce_bytes", "unit": "GB", "model": "per_unit", "unit_price": "0.10"}],
    "access": {
        "topics": [{"prefix": "orders."}, {"name": "prices", "operations": ["read"]}],
        "groups": [{"prefix": "acme-"}],
    },
    "limits": {"produce_bytes_per_second": 1048576, "requests_per_second": 200},
    "caps": [
        {"meter": "produce_bytes", "included": 50, "unit": "GB", "policy": "throttle", "floor_bytes_per_second": 65536},
        {"meter": "consume_bytes", "included": 500, "unit": "GB", "policy": "soft"},
        {"meter": "produce_records", "included": 10, "unit": "million", "policy": "block", "block_fetch": True},
    ],
}
ACME = Entitlement(
    account="acme",
    plan="partner-gold",
    plan_version=1,
    topics=(
        Grant("orders.", "prefix"),
        Grant("prices", "literal", frozenset({"read"})),
        Grant("acme.private", "literal", frozenset({"read"})),  # the account's own grant
    ),
    groups=(Grant("acme-", "prefix"),),
    limits=Limits(1048576, None, 200),
    caps=(
        Cap("produce_bytes", 50 * GB, "throttle", 65536),
        Cap("consume_bytes", 500 * GB, "soft"),
        Cap("produce_records", 10_000_000, "block", None, True),
    ),
)


def _catalog(tmp_path: Path) -> tuple[Path, Path]:
    """The sample catalog plus the gold plan, acme moved onto it today with a grant of its own."""
    plans = yaml.safe_load((SAMPLES / "plans.yaml").read_text())
    plans["plans"].append(GOLD)
    accounts = yaml.safe_load((SAMPLES / "accounts.yaml").read_text())
    acme = accounts["accounts"][0]
    acme["subscription"] = {"plan": "partner-gold", "starts_on": datetime.now(UTC).date()}
    acme["access"] = {"topics": [{"name": "acme.private", "operations": ["read"]}]}
    (tmp_path / "plans.yaml").write_text(yaml.safe_dump(plans))
    (tmp_path / "accounts.yaml").write_text(yaml.safe_dump(accounts))
    return tmp_path / "plans.yaml", tmp_path / "accounts.yaml"


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "streamtoll.cli", *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def _newest(bootstrap: str, topic: str) -> dict[str, Entitlement]:
    """The newest record per key of ``topic``, read with confluent-kafka: as many records as the
    broker's batches hold (tansu's ListOffsets understates the end: docs of the stack, bug 1)."""
    count = broker_batches(bootstrap, topic, 1)[0]
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        newest: dict[str, Entitlement] = {}
        for read in range(count):
            msg = consumer.poll(5)
            assert msg is not None, f"{topic}: {read} of {count} records read"
            assert msg.error() is None, msg.error()
            newest[msg.key().decode()] = decode_entitlement(msg.value())
        return newest
    finally:
        consumer.close()


def test_plans_and_accounts_loaded_are_published_per_account_and_republishing_changes_nothing(
    engine: sa.Engine, migrated: str, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    env = {**isolated_env(broker.bootstrap), "STREAMTOLL_DATABASE_URL": migrated}
    topic = env["STREAMTOLL_TOPIC_ENTITLEMENTS"]
    plans, accounts = _catalog(tmp_path)

    loaded = _cli(env, "plans", "load", str(plans), "-o", "json")
    # the sample plans (loaded before access existed) keep their versions: nothing re-versioned
    changes = {r["name"]: r["change"] for r in json.loads(loaded.stdout)}
    assert changes == {
        "growth": "unchanged",
        "enterprise": "unchanged",
        "starter-usd": "unchanged",
        "partner-gold v1": "created",
    }
    _cli(env, "accounts", "load", str(accounts))
    # each load published every account: 3 records, then 3 more (acme on its new plan)
    assert broker_batches(broker.bootstrap, topic, 1)[0] == 6
    published = _newest(broker.bootstrap, topic)
    assert published["acme"] == ACME
    assert published["globex"] == Entitlement("globex", "enterprise", 1)  # no access section: unrestricted
    assert published["initech"] == Entitlement("initech", "starter-usd", 1)
    assert published == {a.entitlement.account: a.entitlement for a in entitlements(engine)}

    out = _cli(env, "entitlements", "publish")
    assert out.stdout.strip() == "published 3 entitlement(s)"
    assert broker_batches(broker.bootstrap, topic, 1)[0] == 9
    assert _newest(broker.bootstrap, topic) == published  # the same state again: nothing changes

    # what a partner would see, from the command line: caps in base units and the plan's units
    shown = json.loads(_cli(env, "entitlements", "show", "--account", "acme").stdout)
    assert (shown["plan"], shown["plan_version"]) == ("partner-gold", 1)
    assert [(c["meter"], c["included"], c["unit"], c["included_in_unit"]) for c in shown["caps"]] == [
        ("produce_bytes", 50 * GB, "GB", "50"),
        ("consume_bytes", 500 * GB, "GB", "500"),
        ("produce_records", 10_000_000, "million", "10"),
    ]


@pytest.fixture
def api(engine: sa.Engine, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    plans, accounts = _catalog(tmp_path)
    load_plans(engine, plans)
    load_accounts(engine, accounts)
    month = datetime.now(UTC).month
    upsert_windows(
        engine,
        [  # this month's usage of acme: 20 GB and 12 million records produced (over the block cap)
            w(1, 0, "proxy", "User:acme-orders", "produce", "orders.eu", b=20 * GB, r=12_000_000, month=month),
            w(1, 1, "broker_metrics", "User:acme-orders", "produce", "orders.eu", b=99 * GB, month=month),
        ],
    )
    keys = {
        "acme": create_key(engine, "partner", "acme"),
        "globex": create_key(engine, "partner", "globex"),
        "finance": create_key(engine, "finance", None),
        "ops": create_key(engine, "ops", None),
    }
    with running(create_app(engine, auth_limit=1000)) as base:
        yield base, keys


def _call(base: str, method: str, path: str, key: str, **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    if "idempotency" in params:
        headers["Idempotency-Key"] = params.pop("idempotency")
    return httpx.request(method, base + path, headers=headers, params=params, timeout=30)


def test_entitlements_over_http_a_partner_sees_its_own_account_only(api: tuple[str, dict[str, str]]) -> None:
    base, keys = api
    mine = _call(base, "GET", "/v1/entitlements", keys["acme"])
    assert mine.status_code == 200, mine.text
    doc = mine.json()
    models.Entitlements.model_validate(doc)  # the OpenAPI model holds, extra fields refused
    assert (doc["account"], doc["plan"], doc["plan_version"]) == ("acme", "partner-gold", 1)
    assert [(g["match"], g["pattern"], g["operations"]) for g in doc["topics"]] == [
        ("prefix", "orders.", ["read", "write"]),
        ("literal", "prices", ["read"]),
        ("literal", "acme.private", ["read"]),
    ]
    assert doc["groups"] == [{"pattern": "acme-", "match": "prefix"}]
    assert doc["limits"] == {
        "produce_bytes_per_second": 1048576,
        "consume_bytes_per_second": None,
        "requests_per_second": 200,
    }
    caps = {c["meter"]: c for c in doc["caps"]}
    # month to date from the billing database, from the source billing picks (proxy, not broker metrics)
    assert (caps["produce_bytes"]["used"], caps["produce_bytes"]["used_source"]) == (20 * GB, "proxy")
    assert caps["produce_bytes"]["remaining"] == 30 * GB and not caps["produce_bytes"]["reached"]
    assert (caps["produce_records"]["used"], caps["produce_records"]["reached"]) == (12_000_000, True)
    assert (caps["consume_bytes"]["used"], caps["consume_bytes"]["used_source"]) == (0, "proxy")  # bytes: one source

    # another account's: the same 404 as an account that does not exist
    for key, account in ((keys["acme"], "globex"), (keys["globex"], "acme"), (keys["acme"], "nobody")):
        other = _call(base, "GET", "/v1/entitlements", key, account=account)
        assert (other.status_code, other.json()["type"]) == (404, "https://streamtoll.dev/problems/not-found")
    globex = _call(base, "GET", "/v1/entitlements", keys["globex"]).json()
    assert (globex["account"], globex["topics"], globex["caps"]) == ("globex", None, [])  # unrestricted

    # finance and ops name the account, and see what the partner sees
    assert _call(base, "GET", "/v1/entitlements", keys["finance"]).status_code == 422
    for role in ("finance", "ops"):
        assert _call(base, "GET", "/v1/entitlements", keys[role], account="acme").json() == doc


def test_finance_and_ops_issue_credentials_a_partner_lists_and_rotates_its_own(
    api: tuple[str, dict[str, str]],
) -> None:
    base, keys = api
    issued = _call(
        base, "POST", "/v1/credentials", keys["finance"], account="acme", name="orders-svc", idempotency="i1"
    )
    assert issued.status_code == 200, issued.text
    cred = issued.json()
    models.IssuedCredential.model_validate(cred)
    assert cred["username"] == "acme/orders-svc" and len(cred["password"]) >= 24
    assert cred["published"] is False  # this app publishes nowhere
    # a retry gets the same credential — and never the password again (it is stored nowhere)
    again = _call(base, "POST", "/v1/credentials", keys["finance"], account="acme", name="orders-svc", idempotency="i1")
    assert again.headers["Idempotent-Replayed"] == "true" and again.json() == {**cred, "password": None}
    duplicate = _call(base, "POST", "/v1/credentials", keys["ops"], account="acme", name="orders-svc")
    assert duplicate.status_code == 422 and "already has a credential named" in duplicate.json()["detail"]
    ops = _call(base, "POST", "/v1/credentials", keys["ops"], account="globex", name="reports").json()
    assert _call(base, "POST", "/v1/credentials", keys["acme"], account="acme").status_code == 403

    listed = _call(base, "GET", "/v1/credentials", keys["acme"])
    assert [c["id"] for c in listed.json()] == [cred["id"]]  # its own account's only
    for c in listed.json():
        models.Credential.model_validate(c)
    assert all("password" not in c and "stored_key" not in c for c in listed.json())
    assert [c["id"] for c in _call(base, "GET", "/v1/credentials", keys["finance"]).json()] == [cred["id"], ops["id"]]

    # a partner rotates its own credential; another account's is a 404, revoking is not its to do
    assert _call(base, "POST", f"/v1/credentials/{ops['id']}/rotate", keys["acme"]).status_code == 404
    rotated = _call(base, "POST", f"/v1/credentials/{cred['id']}/rotate", keys["acme"], overlap=3600)
    assert rotated.status_code == 200 and rotated.json()["password"] not in (None, cred["password"])
    assert _call(base, "POST", f"/v1/credentials/{cred['id']}/revoke", keys["acme"]).status_code == 403

    shown = _call(base, "GET", "/v1/entitlements", keys["acme"]).json()["credentials"]
    assert [(c["id"], c["state"]) for c in shown] == [(cred["id"], "active")]
    assert shown[0]["rotated_at"] is not None and shown[0]["old_password_valid_until"] is not None
    assert shown[0]["mechanisms"] == ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]

    revoked = _call(base, "POST", f"/v1/credentials/{cred['id']}/revoke", keys["ops"])
    assert revoked.json() == {"id": cred["id"], "revoked": True, "published": False}
    shown = _call(base, "GET", "/v1/entitlements", keys["acme"]).json()["credentials"]
    assert shown[0]["state"] == "revoked" and shown[0]["revoked_at"] is not None
    assert _call(base, "POST", f"/v1/credentials/{cred['id']}/rotate", keys["finance"]).status_code == 404


def test_api_start_publishes_entitlements_and_credentials_issued_over_http_reach_the_gateways_topic(
    engine: sa.Engine, migrated: str, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """``streamtoll api`` publishes every account's entitlement at start (in the background) and
    publishes a credential issued through it, as the command line does."""
    env = {**isolated_env(broker.bootstrap), "STREAMTOLL_DATABASE_URL": migrated, "STREAMTOLL_LOG_LEVEL": "WARNING"}
    finance = create_key(engine, "finance", None)
    with api_server(env, tmp_path / "api.log", ready="/healthz/live") as base:
        deadline = time.monotonic() + 30
        topic = env["STREAMTOLL_TOPIC_ENTITLEMENTS"]
        while True:
            try:
                if broker_batches(broker.bootstrap, topic, 1)[0] >= 3:
                    break
            except Exception:  # the topic is not there yet
                pass
            assert time.monotonic() < deadline, (tmp_path / "api.log").read_text()[-2000:]
            time.sleep(0.2)
        assert set(_newest(broker.bootstrap, topic)) == {"acme", "globex", "initech"}

        issued = _call(base, "POST", "/v1/credentials", finance, account="initech", name="iot")
        assert issued.status_code == 200 and issued.json()["published"] is True
        assert broker_batches(broker.bootstrap, env["STREAMTOLL_TOPIC_CREDENTIALS"], 1)[0] == 1
