"""Access, limits and caps in plans and accounts: the YAML validated strictly (one sentence per
mistake, each saying where), stored only when written (older plans keep their document and
digest), and combined into an account's Entitlement — worked examples."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from billing.domain.access import Access, CapSpec, entitlement_for
from billing.domain.accounts import parse_accounts
from billing.domain.plan_documents import document_digest, plan_document, plan_from_document
from billing.domain.plans import parse_plan
from billing.errors import AccountError, PlanError
from metering.entitlements import Cap, Entitlement, Grant, Limits, decode_entitlement, encode_entitlement

SAMPLES = Path(__file__).parents[3] / "streamtoll" / "samples"

PLAN = yaml.safe_load(
    """
code: partner-gold
name: Partner Gold
currency: EUR
base_fee: "99.00"
prices:
  - {meter: produce_bytes, unit: GB, model: per_unit, unit_price: "0.10"}
access:
  topics:
    - {prefix: "orders."}
    - {name: prices, operations: [read]}
    - {glob: "events-*-v2", operations: [read]}
  groups:
    - {prefix: "gold-"}
limits:
  produce_bytes_per_second: 1048576
  consume_bytes_per_second: 4194304
  requests_per_second: 200
caps:
  - {meter: produce_bytes, included: 50, unit: GB, policy: throttle, floor_bytes_per_second: 65536}
  - {meter: consume_bytes, included: "1.5", unit: TiB, policy: soft}
  - {meter: produce_records, included: 10, unit: million, policy: block, block_fetch: true}
  - {meter: consume_requests, included: 1000, policy: block}
"""
)


def problems_of(doc: Any) -> list[str]:
    with pytest.raises(PlanError) as raised:
        parse_plan(doc, "plans[0]")
    return raised.value.problems


def with_(**sections: Any) -> dict[str, Any]:
    doc = {k: v for k, v in copy.deepcopy(PLAN).items() if k not in ("access", "limits", "caps")}
    return {**doc, **sections}


def test_a_plan_with_access_limits_and_caps_parses_to_base_units() -> None:
    pv = parse_plan(PLAN, "plans[0]")
    assert pv.access == Access(
        topics=(
            Grant("orders.", "prefix", frozenset({"read", "write"})),
            Grant("prices", "literal", frozenset({"read"})),
            Grant("events-*-v2", "glob", frozenset({"read"})),
        ),
        groups=(Grant("gold-", "prefix"),),
    )
    assert pv.limits == Limits(1048576, 4194304, 200)
    assert pv.caps == (
        CapSpec(Cap("produce_bytes", 50 * 10**9, "throttle", 65536), "GB"),
        CapSpec(Cap("consume_bytes", 3 * 2**39, "soft"), "TiB"),  # 1.5 TiB
        CapSpec(Cap("produce_records", 10_000_000, "block", None, True), "million"),
        CapSpec(Cap("consume_requests", 1000, "block"), None),
    )
    # stored and read back as it was
    assert plan_from_document(1, plan_document(pv)) == pv


def test_plans_without_the_sections_keep_their_stored_document_and_digest() -> None:
    """A plan version published before access existed is not re-versioned by the next load: its
    stored document, and so its digest, are what they were (digests as main computed them)."""
    before = {
        "growth": "9b836d8f52bfda78d201efedf73b1cff5c6d8e41c6bb6f0ea2917759dd3d8968",
        "enterprise": "2f1dfcc42b63050b8f5d667100ad0870c147527a6f86600c866e665ef3a40d96",
        "starter-usd": "69707c1ddf55b829545111811f30d02077f8989fb18ea233107573fa3748388e",
    }
    for doc in yaml.safe_load((SAMPLES / "plans.yaml").read_text())["plans"]:
        pv = parse_plan(doc, "plans[0]")
        assert (pv.access, pv.limits, pv.caps) == (None, None, None)
        stored = plan_document(pv)
        assert set(stored) == {"code", "name", "currency", "base_fee", "minimum_commitment", "prices"}
        assert document_digest(stored) == before[pv.code]
    # a section written is part of the version
    assert document_digest(plan_document(parse_plan(with_(limits={"requests_per_second": 5}), "p"))) != document_digest(
        plan_document(parse_plan(with_(), "p"))
    )


@pytest.mark.parametrize(
    ("sections", "problem"),
    [
        ({"access": ["orders"]}, "plans[0] (partner-gold).access: must be a mapping with topics and/or groups"),
        (
            {"access": {"users": []}},
            "plans[0] (partner-gold).access.users: unknown field; expected one of topics, groups",
        ),
        (
            {"access": {"topics": [{"prefix": "a", "name": "b"}]}},
            "plans[0] (partner-gold).access.topics[0]: give exactly one of name, prefix or glob, got 2",
        ),
        (
            {"access": {"topics": [{"name": ""}]}},
            "plans[0] (partner-gold).access.topics[0].name: must be a non-empty string",
        ),
        (
            {"access": {"topics": [{"name": "x", "operations": ["delete"]}]}},
            "plans[0] (partner-gold).access.topics[0].operations: must be a non-empty list of read and/or write, "
            "each once, got ['delete']",
        ),
        (
            {"access": {"topics": [{"name": "x", "operations": []}]}},
            "plans[0] (partner-gold).access.topics[0].operations: must be a non-empty list of read and/or write, "
            "each once, got []",
        ),
        (
            {"access": {"groups": [{"prefix": "g", "operations": ["read"]}]}},
            "plans[0] (partner-gold).access.groups[0].operations: a group grant has no operations "
            "(it lets a consumer use the group)",
        ),
        (
            {"access": {"topics": "orders.*"}},
            "plans[0] (partner-gold).access.topics: must be a list of grants such as {prefix: orders.} "
            "([] grants none)",
        ),
        (
            {"limits": {"produce_bytes_per_second": 1.5}},
            "plans[0] (partner-gold).limits.produce_bytes_per_second: must be a positive integer, got 1.5",
        ),
        (
            {"limits": {"requests_per_second": 0}},
            "plans[0] (partner-gold).limits.requests_per_second: must be greater than 0, got 0",
        ),
        (
            {"limits": {"requests_per_second": "100"}},
            "plans[0] (partner-gold).limits.requests_per_second: must be a positive integer, got '100'",
        ),
        (
            {"limits": {"bytes_per_second": 1}},
            "plans[0] (partner-gold).limits.bytes_per_second: unknown field; expected one of "
            "produce_bytes_per_second, consume_bytes_per_second, requests_per_second",
        ),
        (
            {"caps": [{"meter": "storage_bytes", "included": 1, "policy": "soft"}]},
            "plans[0] (partner-gold).caps[0].meter: 'storage_bytes' is not a meter; expected one of produce_bytes, "
            "produce_records, produce_requests, consume_bytes, consume_records, consume_requests",
        ),
        (
            {"caps": [{"meter": "produce_bytes", "included": 1, "policy": "stop"}]},
            "plans[0] (partner-gold).caps[0].policy: 'stop' is not a policy; expected one of soft, throttle, block",
        ),
        (
            {"caps": [{"meter": "produce_bytes", "included": 1, "policy": "throttle"}]},
            "plans[0] (partner-gold).caps[0].floor_bytes_per_second: required by policy throttle "
            "(the rate it holds the account to)",
        ),
        (
            {"caps": [{"meter": "produce_bytes", "included": 1, "policy": "soft", "floor_bytes_per_second": 10}]},
            "plans[0] (partner-gold).caps[0].floor_bytes_per_second: only a throttle cap has a floor; remove it",
        ),
        (
            {"caps": [{"meter": "consume_bytes", "included": 1, "policy": "block", "block_fetch": True}]},
            "plans[0] (partner-gold).caps[0].block_fetch: only a block cap on a produce meter can also refuse "
            "fetch (a consume meter's block refuses fetch already); remove it",
        ),
        (
            {"caps": [{"meter": "produce_bytes", "included": 50, "unit": "million", "policy": "soft"}]},
            "plans[0] (partner-gold).caps[0].unit: unit 'million' does not fit meter 'produce_bytes': "
            "use one of GB, GiB, TB, TiB",
        ),
        (
            {"caps": [{"meter": "produce_bytes", "included": 0.5, "unit": "GB", "policy": "soft"}]},
            "plans[0] (partner-gold).caps[0].included: 0.5 is a YAML float, which is inexact; quote it as a "
            'string: "0.5"',
        ),
        (
            {"caps": [{"meter": "produce_records", "included": "0.0000001", "unit": "thousand", "policy": "soft"}]},
            "plans[0] (partner-gold).caps[0].included: 0.0000001 thousand is not a whole number of base units "
            "(bytes, records or requests)",
        ),
        (
            {"caps": [{"meter": "produce_bytes", "policy": "soft"}]},
            "plans[0] (partner-gold).caps[0].included: required (the monthly volume before the policy applies)",
        ),
        (
            {"caps": [{"meter": "produce_bytes", "included": -1, "policy": "soft"}]},
            "plans[0] (partner-gold).caps[0].included: must be a number of 0 or more, got -1",
        ),
        (
            {
                "caps": [
                    {"meter": "produce_bytes", "included": 1, "policy": "soft"},
                    {"meter": "produce_bytes", "included": 2, "policy": "block"},
                ]
            },
            "plans[0] (partner-gold).caps[1]: plans[0] (partner-gold).caps[0] already caps produce_bytes; "
            "one cap per meter",
        ),
    ],
)
def test_each_mistake_is_one_sentence_saying_where(sections: dict[str, Any], problem: str) -> None:
    assert problems_of(with_(**sections)) == [problem]


def test_every_mistake_of_a_plan_is_reported_at_once() -> None:
    found = problems_of(
        with_(
            access={"topics": [{"glob": 3}]},
            limits={"requests_per_second": -2},
            caps=[{"meter": "produce_bytes", "included": 1, "policy": "throttle"}],
        )
    )
    assert len(found) == 3 and [p.split(":")[0].split(".")[1] for p in found] == ["access", "limits", "caps[0]"]


def _accounts(access: Any) -> dict[str, Any]:
    return {
        "accounts": [
            {
                "code": "acme",
                "name": "ACME",
                "email": "billing@acme.example",
                "currency": "EUR",
                "access": access,
            }
        ]
    }


def test_an_account_may_carry_its_own_grants_validated_the_same_way() -> None:
    [acme] = parse_accounts(_accounts({"topics": [{"name": "acme.private"}], "groups": [{"glob": "acme-*"}]}))
    assert acme.access == Access((Grant("acme.private"),), (Grant("acme-*", "glob"),))
    with pytest.raises(AccountError) as raised:
        parse_accounts(_accounts({"topics": [{"regex": "acme.*"}]}))
    assert raised.value.problems == [
        "accounts: accounts[0] (acme).access.topics[0].regex: unknown field; expected one of name, prefix, glob, "
        "operations",
        "accounts: accounts[0] (acme).access.topics[0]: give exactly one of name, prefix or glob, got none",
    ]


def test_entitlement_worked_examples() -> None:
    pv = parse_plan(PLAN, "plans[0]")
    extra = Access(topics=(Grant("acme.private", "literal", frozenset({"read"})),))
    e = entitlement_for("acme", pv.code, 3, pv.access, pv.limits, pv.caps or (), extra)
    # the plan's grants, then the account's
    assert e.topics is not None and [g.pattern for g in e.topics] == [
        "orders.",
        "prices",
        "events-*-v2",
        "acme.private",
    ]
    assert e.may_topic("orders.eu", "write") and e.may_topic("orders.eu", "read")
    assert e.may_topic("prices", "read") and not e.may_topic("prices", "write")
    assert e.may_topic("events-eu-v2", "read") and not e.may_topic("events-eu-v3", "read")
    assert e.may_topic("acme.private", "read") and not e.may_topic("globex.private", "read")
    assert e.may_see("prices") and not e.may_see("orders")  # "orders" lacks the prefix's dot
    assert e.groups == (Grant("gold-", "prefix"),) and e.may_group("gold-1") and not e.may_group("acme-1")
    assert e.limits == Limits(1048576, 4194304, 200)
    assert [c.meter for c in e.caps] == ["produce_bytes", "consume_bytes", "produce_records", "consume_requests"]
    assert decode_entitlement(encode_entitlement(e)) == e

    # a plan that says nothing about access: the account's extras add nothing to "everything"
    open_ = entitlement_for("acme", "growth", 1, None, None, (), extra)
    assert open_ == Entitlement("acme", "growth", 1) and open_.may_topic("anything", "write")
    # a plan that restricts topics but not groups: groups stay open; account extras extend the topics
    topics_only = entitlement_for("acme", "p", 1, Access(topics=()), None, (), extra)
    assert topics_only.topics == extra.topics and topics_only.groups is None
    assert not entitlement_for("acme", "p", 1, Access(topics=())).may_topic("orders.eu", "read")
    # no plan in force: nothing restricted, whatever the account says
    assert entitlement_for("acme", account_access=extra) == Entitlement("acme")


def test_the_entitlements_record_in_docs_formats_is_what_the_code_writes() -> None:
    text = (Path(__file__).parents[3] / "docs" / "formats.md").read_text(encoding="utf-8")
    section = text[text.index("## Entitlements (control topic)") :]
    example = section[section.index("```json\n") + 8 : section.index("\n```", section.index("```json"))]
    e = decode_entitlement(example.encode())
    assert encode_entitlement(e) == example.encode()  # keys sorted, compact: byte for byte
    assert e.account == "acme" and e.may_topic("orders.eu", "write") and not e.may_topic("prices", "write")
