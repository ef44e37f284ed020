"""Streaming API products over in-memory stores: the catalog file's validation (every problem at
once), versions and deprecation dates, what a subscription grants in the published entitlement
(unioned with the plan's and the account's grants), deprecation past its date, and the approval
flow (requested → active / rejected, cancelled), each step done twice where it is a write."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import yaml

from billing.domain.products import Product, parse_products, product_access
from billing.errors import CatalogError, ProductError, ProductNotFound, ProductNotOffered
from billing.services.entitlements import account_entitlements
from billing.services.ports import AccountPlanDoc, PlanSummary
from billing.services.products import (
    cancel,
    catalog_products,
    decide,
    product_detail,
    publish_products,
    subscribe_account,
)
from metering.entitlements import Grant

from .fakes import FakeProducts
from .fakes_edge import FakeCatalogReads

NOW = datetime(2026, 12, 15, 12, 0, tzinfo=UTC)
TODAY = NOW.date()
SCHEMA = '{"type": "object", "required": ["order_id"]}'
# a plan document restricting access
RESTRICTED = {"access": {"topics": [{"pattern": "internal.", "match": "prefix"}], "groups": []}}

CATALOG = """
products:
  - code: orders-feed
    name: Orders feed
    description: every order
    direction: consume
    topics:
      - name: orders.v1
        schema: {type: json, file: orders.json}
    plans:
      - {plan: growth, self_service: true}
  - code: payments-ingest
    name: Payments ingest
    direction: produce
    topics:
      - prefix: payments.in.
    plans:
      - {plan: growth}
"""


def _read(files: dict[str, str]) -> Any:
    def read(name: str) -> str:
        if name not in files:
            raise OSError(f"no such file: {name}")
        return files[name]

    return read


def _parse(text: str = CATALOG, files: dict[str, str] | None = None) -> list[Product]:
    return parse_products(
        yaml.safe_load(text), "products.yaml", _read({"orders.json": SCHEMA} if files is None else files)
    )


def _catalog(
    plan: str | None = "growth", account: str = "acme", extra: dict[str, Any] | None = None
) -> FakeCatalogReads:
    return FakeCatalogReads(
        [AccountPlanDoc(account, extra, plan, None if plan is None else 1, None if plan is None else RESTRICTED)],
        plans=[PlanSummary("growth", "Growth", 1, "EUR", 1), PlanSummary("enterprise", "Enterprise", 1, "EUR", 1)],
    )


def _loaded(text: str = CATALOG) -> FakeProducts:
    repo = FakeProducts()
    publish_products(repo, _catalog(), _parse(text), "products.yaml", NOW)
    return repo


def _topics(repo: FakeProducts, catalog: FakeCatalogReads, on: date = TODAY) -> dict[str, frozenset[str]] | None:
    e = account_entitlements(catalog, on, "acme", products=repo)[0].entitlement
    return None if e.topics is None else {g.pattern: g.operations for g in e.topics}


# --- the catalog file ---


def test_every_mistake_of_the_file_is_reported_at_once_naming_entry_and_field() -> None:
    bad = """
products:
  - code: Orders Feed
    name: ""
    direction: sideways
    topics:
      - {name: a, prefix: b}
      - name: orders.v1
        schema: {type: xml, file: orders.xsd}
      - name: orders.v2
        schema: {type: json, file: missing.json}
      - name: orders.v3
        schema: {type: json, file: list.json}
    plans: []
    colour: blue
  - code: feed
    name: Feed
    direction: both
    topics: [{name: t}]
    plans: [{plan: growth, self_service: "yes"}]
    deprecated_until: someday
"""
    with pytest.raises(CatalogError) as exc:
        _parse(bad, {"list.json": "[1, 2]"})
    assert exc.value.problems == [
        "products.yaml: products[0].code: required, lower case letters, digits, '.', '_' or '-' (e.g. orders-feed)",
        "products.yaml: products[0].colour: unknown field; expected one of code, name, description, direction, "
        "topics, plans, deprecated_until, deprecated_versions",
        "products.yaml: products[0].name: required, a non-empty string",
        "products.yaml: products[0].direction: 'sideways' is not a direction; expected one of produce, consume, both",
        "products.yaml: products[0].topics[0]: give exactly one of name or prefix, got 2",
        "products.yaml: products[0].topics[1].schema.type: 'xml' is not a schema type; expected one of json, avro, "
        "protobuf",
        "products.yaml: products[0].topics[2].schema.file: missing.json cannot be read (no such file: missing.json)",
        "products.yaml: products[0].topics[3].schema.file: list.json is not a JSON Schema (the top level must be an "
        "object)",
        "products.yaml: products[0].plans: must be a non-empty list such as [{plan: growth, self_service: true}]",
        "products.yaml: products[1] (feed).plans[0].self_service: must be true or false, got 'yes'",
        "products.yaml: products[1] (feed).deprecated_until: must be a date such as 2027-06-30, got 'someday'",
    ]


def test_a_product_naming_a_plan_not_loaded_changes_nothing() -> None:
    repo = FakeProducts()
    text = CATALOG.replace("- {plan: growth}", "- {plan: platinum}")
    with pytest.raises(CatalogError) as exc:
        publish_products(repo, _catalog(), _parse(text), "products.yaml", NOW)
    assert exc.value.problems == [
        "products.yaml: product 'payments-ingest': plan 'platinum' is not loaded; run `streamtoll plans load` first"
    ]
    assert repo.stored == {}


# --- versions ---


def test_loading_twice_changes_nothing_and_a_changed_contract_is_a_new_version() -> None:
    repo = _loaded()
    assert {(c, v) for c, v in repo.stored} == {("orders-feed", 1), ("payments-ingest", 1)}
    again = publish_products(repo, _catalog(), _parse(), "products.yaml", NOW)
    assert (again.created, again.updated, again.unchanged) == ([], [], ["orders-feed", "payments-ingest"])

    # the schema's text is part of the contract: a new field required → version 2
    changed = publish_products(
        repo, _catalog(), _parse(files={"orders.json": SCHEMA.replace('"order_id"', '"order_id", "total"')}), "p", NOW
    )
    assert (changed.created, changed.updated, changed.unchanged) == ([], ["orders-feed v2"], ["payments-ingest"])
    assert repo.version("orders-feed", 1) is not None and repo.version("orders-feed", 1).schemas == {
        "orders.v1": SCHEMA
    }  # type: ignore[union-attr]


def test_deprecation_dates_change_the_version_they_name_not_the_version_number() -> None:
    repo = _loaded()
    publish_products(repo, _catalog(), _parse(CATALOG.replace("every order", "every order, v2")), "p", NOW)
    text = CATALOG.replace("every order", "every order, v2").replace(
        "    plans:\n      - {plan: growth, self_service: true}",
        "    plans:\n      - {plan: growth, self_service: true}\n    deprecated_versions: {1: 2027-01-31}",
    )
    report = publish_products(repo, _catalog(), _parse(text), "p", NOW)
    assert report.updated == ["orders-feed v2 (deprecation dates)"] and report.created == []
    assert [(v.version, v.deprecated_until) for v in repo.versions("orders-feed")] == [
        (1, date(2027, 1, 31)),
        (2, None),
    ]
    assert publish_products(repo, _catalog(), _parse(text), "p", NOW).unchanged == ["orders-feed", "payments-ingest"]

    wrong = text.replace("{1: 2027-01-31}", "{2: 2027-01-31}")
    with pytest.raises(CatalogError) as exc:
        publish_products(repo, _catalog(), _parse(wrong), "p", NOW)
    assert "deprecated_versions names version 2, but the version this file describes is 2" in exc.value.problems[0]


# --- grants ---


def test_produce_grants_write_consume_grants_read_and_the_accounts_groups() -> None:
    consume, produce = _parse()
    # acme's groups start with "acme-"; a topic in both products gets both operations
    both = product_access("acme", [consume, produce])
    assert both.topics == (
        Grant("orders.v1", "literal", frozenset({"read"})),
        Grant("payments.in.", "prefix", frozenset({"write"})),
    )
    assert both.groups == (Grant("acme-", "prefix"),)
    assert product_access("acme", [produce]).groups == ()  # a producer needs no group


def test_the_entitlement_is_the_plans_grants_plus_the_accounts_plus_its_products() -> None:
    repo = _loaded()
    catalog = _catalog(extra={"topics": [{"pattern": "shared", "operations": ["read"]}]})
    assert _topics(repo, catalog) == {"internal.": frozenset({"read", "write"}), "shared": frozenset({"read"})}

    sub = subscribe_account(repo, catalog, "acme", "orders-feed", "partner:k1", NOW)
    assert (sub.status, sub.version, sub.decided_by) == ("active", 1, "self-service")  # growth: self-service
    assert _topics(repo, catalog) == {
        "internal.": frozenset({"read", "write"}),  # the plan's
        "shared": frozenset({"read"}),  # the account's own
        "orders.v1": frozenset({"read"}),  # the product's
    }
    e = account_entitlements(catalog, TODAY, "acme", products=repo)[0].entitlement
    assert e.groups == (Grant("acme-", "prefix"),)  # the plan allows no group; the consume product adds acme-*

    # a plan without access restricts nothing: products add nothing to "everything"
    open_plan = FakeCatalogReads([AccountPlanDoc("acme", None, "growth", 1, {})])
    assert _topics(repo, open_plan) is None
    # moved to a plan that does not include the product: the row stays, the topics go
    assert _topics(repo, _catalog(plan="enterprise")) == {"internal.": frozenset({"read", "write"})}


def test_a_deprecated_version_works_through_its_date_and_grants_nothing_after() -> None:
    repo = _loaded()
    catalog = _catalog()
    subscribe_account(repo, catalog, "acme", "orders-feed", "partner:k1", NOW)
    repo.set_deprecation("orders-feed", 1, TODAY)
    assert "orders.v1" in (_topics(repo, catalog, TODAY) or {})  # the date is the last day it works
    assert "orders.v1" not in (_topics(repo, catalog, TODAY + timedelta(days=1)) or {})
    # and a deprecated product takes no new subscriptions
    with pytest.raises(ProductError, match=r"orders-feed v1 is deprecated \(it works until 2026-12-15\)"):
        subscribe_account(repo, _catalog(account="globex"), "globex", "orders-feed", "partner:k2", NOW)


# --- subscriptions ---


def test_a_request_grants_nothing_until_approved_then_its_topics() -> None:
    repo = _loaded()
    catalog = _catalog()
    req = subscribe_account(repo, catalog, "acme", "payments-ingest", "partner:k1", NOW)
    assert (req.id, req.status, req.requested_by, req.requested_at, req.decided_by) == (
        1, "requested", "partner:k1", NOW, None,
    )  # fmt: skip
    assert subscribe_account(repo, catalog, "acme", "payments-ingest", "partner:k1", NOW) == req  # twice: the same
    assert "payments.in." not in (_topics(repo, catalog) or {})
    assert [r.id for r in repo.subscriptions(status="requested")] == [1]

    later = NOW + timedelta(hours=2)
    done = decide(repo, 1, True, "finance:k9", later)
    assert (done.status, done.decided_by, done.decided_at) == ("active", "finance:k9", later)
    assert decide(repo, 1, True, "finance:k9", later + timedelta(hours=1)) == done  # approving twice: the same
    assert (_topics(repo, catalog) or {})["payments.in."] == frozenset({"write"})
    with pytest.raises(ProductError, match="product request 1 is active; only a requested one can be rejected"):
        decide(repo, 1, False, "ops:k3", later, "too late")


def test_a_rejection_needs_a_reason_and_keeps_it() -> None:
    repo = _loaded()
    subscribe_account(repo, _catalog(), "acme", "payments-ingest", "partner:k1", NOW)
    with pytest.raises(ProductError, match="a rejection needs a reason"):
        decide(repo, 1, False, "ops:k3", NOW, "  ")
    rejected = decide(repo, 1, False, "ops:k3", NOW, "no PCI attestation")
    assert (rejected.status, rejected.reason, rejected.decided_by) == ("rejected", "no PCI attestation", "ops:k3")
    assert decide(repo, 1, False, "ops:k3", NOW, "no PCI attestation") == rejected
    with pytest.raises(ProductError, match="is rejected; only a requested one can be approved"):
        decide(repo, 1, True, "ops:k3", NOW)
    with pytest.raises(ProductNotFound, match="there is no product request 7"):
        decide(repo, 7, True, "ops:k3", NOW)
    # a rejected request is not live: the account may ask again
    assert subscribe_account(repo, _catalog(), "acme", "payments-ingest", "partner:k1", NOW).id == 2


def test_cancelling_removes_the_grant_and_twice_gives_the_same_answer() -> None:
    repo = _loaded()
    catalog = _catalog()
    subscribe_account(repo, catalog, "acme", "orders-feed", "partner:k1", NOW)
    gone = cancel(repo, "acme", "orders-feed", "cli:ann", NOW)
    assert (gone.status, gone.cancelled_by, gone.cancelled_at) == ("cancelled", "cli:ann", NOW)
    assert cancel(repo, "acme", "orders-feed", "cli:ann", NOW + timedelta(days=1)) == gone
    assert "orders.v1" not in (_topics(repo, catalog) or {})
    with pytest.raises(ProductNotFound, match="acme has no subscription to product payments-ingest"):
        cancel(repo, "acme", "payments-ingest", "cli:ann", NOW)


def test_only_accounts_whose_plan_includes_the_product_subscribe_or_see_it() -> None:
    repo = _loaded()
    with pytest.raises(ProductNotOffered, match=r"acme's plan \(starter-usd\) does not include product orders-feed"):
        subscribe_account(repo, _catalog(plan="starter-usd"), "acme", "orders-feed", "partner:k1", NOW)
    with pytest.raises(ProductNotOffered, match=r"acme's plan \(none in force\)"):
        subscribe_account(repo, _catalog(plan=None), "acme", "orders-feed", "partner:k1", NOW)
    with pytest.raises(ProductNotFound, match="there is no account 'nobody'"):
        subscribe_account(repo, _catalog(), "nobody", "orders-feed", "partner:k1", NOW)
    assert catalog_products(repo, _catalog(plan="starter-usd"), TODAY, "acme") == []
    with pytest.raises(ProductNotFound):
        product_detail(repo, _catalog(plan="starter-usd"), "orders-feed", TODAY, "acme")
    mine = catalog_products(repo, _catalog(), TODAY, "acme")
    assert [(p["code"], p["access"], p["subscription"]) for p in mine] == [
        ("orders-feed", "self_service", None),
        ("payments-ingest", "approval", None),
    ]
    detail = product_detail(repo, _catalog(), "orders-feed", TODAY, "acme")
    assert detail["topics"] == [
        {"pattern": "orders.v1", "match": "literal", "schema": {"type": "json", "file": "orders.json", "text": SCHEMA}}
    ]
    assert detail["versions"] == [{"version": 1, "deprecated_until": None, "works": True}]


def test_subscribing_again_moves_a_live_subscription_to_the_newest_version() -> None:
    repo = _loaded()
    catalog = _catalog()
    first = subscribe_account(repo, catalog, "acme", "orders-feed", "partner:k1", NOW)
    publish_products(repo, _catalog(), _parse(CATALOG.replace("every order", "every order, v2")), "p", NOW)
    assert repo.subscriptions("acme")[0].version == 1  # a new version moves nobody
    moved = subscribe_account(repo, catalog, "acme", "orders-feed", "partner:k1", NOW)
    assert (moved.id, moved.version, moved.status) == (first.id, 2, "active")
