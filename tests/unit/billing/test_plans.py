"""Plan validation: the sample plans parse; every problem of a bad plan is reported at once, by path."""

from __future__ import annotations

import copy
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from billing.domain.plans import PlanVersion, Price, Tier, parse_plan
from billing.errors import PlanError

SAMPLES = Path(__file__).parents[3] / "streamtoll" / "samples"
D = Decimal


def sample_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = yaml.safe_load((SAMPLES / "plans.yaml").read_text())["plans"]
    return docs


def growth_doc() -> dict[str, Any]:
    return copy.deepcopy(sample_docs()[0])


def problems_of(doc: Any, where: str = "plans[0]") -> list[str]:
    with pytest.raises(PlanError) as raised:
        parse_plan(doc, where)
    return raised.value.problems


def test_sample_plans_parse() -> None:
    plans = [parse_plan(doc, f"plans[{i}]") for i, doc in enumerate(sample_docs())]
    assert [p.code for p in plans] == ["growth", "enterprise", "starter-usd"]
    growth, enterprise, starter = plans
    assert growth == PlanVersion(
        code="growth",
        name="Growth",
        version=1,
        currency="EUR",
        base_fee=D("49.00"),
        minimum_commitment=D("100.00"),
        prices=(
            Price(
                meter="produce_bytes",
                model="graduated",
                unit="GB",
                tiers=(Tier(D(100), D("0.00")), Tier(D(1000), D("0.08")), Tier(None, D("0.05"))),
            ),
            Price(meter="consume_bytes", model="per_unit", unit="GB", unit_price=D("0.02"), included=D(500)),
            Price(
                meter="produce_records",
                model="package",
                unit="million",
                package_size=D(10),
                package_price=D("1.50"),
            ),
        ),
    )
    assert enterprise.minimum_commitment == 0
    assert enterprise.prices[0].tiers[1] == Tier(D(100), D("30.00"), D("50.00"))
    assert enterprise.prices[1].topics == ("premium.*",)
    assert enterprise.prices[2].topics == ()
    assert starter.currency == "USD"
    assert starter.base_fee == 0
    assert starter.prices[1].unit_price == D("0.004")


def test_yaml_float_money_is_rejected_with_a_hint_to_quote_it() -> None:
    doc = yaml.safe_load(
        """
        code: growth
        name: Growth
        currency: EUR
        base_fee: 49.00
        prices:
          - {meter: consume_bytes, unit: GB, model: per_unit, unit_price: 0.02}
        """
    )
    problems = problems_of(doc)
    assert problems == [
        'plans[0] (growth).base_fee: 49.0 is a YAML float, which is inexact; quote it as a string: "49.0"',
        'plans[0] (growth).prices[0].unit_price: 0.02 is a YAML float, which is inexact; quote it as a string: "0.02"',
    ]


def test_unknown_currency_is_reported() -> None:
    doc = growth_doc()
    doc["currency"] = "EURO"
    assert problems_of(doc) == [
        "plans[0] (growth).currency: unknown currency 'EURO': expected an ISO 4217 code such as EUR, USD, JPY"
    ]


def test_every_problem_is_reported_together_with_its_path() -> None:
    doc = growth_doc()
    doc["currency"] = "ZZZ"
    doc["colour"] = "green"
    tiers = doc["prices"][0]["tiers"]
    tiers[1]["up_to"] = 50  # not above the previous 100
    tiers[2]["unit_price"] = 0.05  # a YAML float
    doc["prices"][1]["unit"] = "million"  # a count unit on a bytes meter
    del doc["prices"][2]["package_price"]
    problems = problems_of(doc)
    assert problems == [
        "plans[0] (growth).colour: unknown field; expected one of code, name, currency, base_fee, "
        "minimum_commitment, prices, access, limits, caps, threshold_invoice, prepaid",
        "plans[0] (growth).currency: unknown currency 'ZZZ': expected an ISO 4217 code such as EUR, USD, JPY",
        "plans[0] (growth).prices[0].tiers[1].up_to: 50 must be greater than the previous tier's up_to (100)",
        "plans[0] (growth).prices[0].tiers[2].unit_price: 0.05 is a YAML float, which is inexact; "
        'quote it as a string: "0.05"',
        "plans[0] (growth).prices[1].unit: unit 'million' does not fit meter 'consume_bytes': "
        "use one of GB, GiB, TB, TiB",
        "plans[0] (growth).prices[2].package_price: required by model package",
    ]
    assert "prices[0].tiers[2].unit_price" in str(PlanError(problems))


@pytest.mark.parametrize(
    ("tiers", "problem"),
    [
        (
            [{"up_to": 10, "unit_price": "1"}, {"up_to": 20, "unit_price": "1"}],
            "tiers[1].up_to: the last tier must be open (up_to: null), got 20",
        ),
        (
            [{"up_to": None, "unit_price": "1"}, {"up_to": None, "unit_price": "1"}],
            "tiers[0].up_to: only the last tier is open (null); give this one a bound",
        ),
        ([{"unit_price": "1"}], "tiers[0].up_to: required (null for the last, open tier)"),
        ([{"up_to": None}], "tiers[0].unit_price: required"),
        ([{"up_to": 0, "unit_price": "1"}, {"up_to": None, "unit_price": "1"}],
         "tiers[0].up_to: must be greater than 0"),
        ([{"up_to": 5, "unit_price": "1"}, {"up_to": "5", "unit_price": "1"}, {"up_to": None, "unit_price": "1"}],
         "tiers[1].up_to: 5 must be greater than the previous tier's up_to (5)"),
        ([], "tiers: must be a non-empty list of tiers"),
        ([{"up_to": None, "unit_price": "1", "flat_fee": "-2"}], "tiers[0].flat_fee: must not be negative, got -2"),
        ([{"up_to": None, "unit_price": "1", "price": "2"}], "tiers[0].price: unknown field"),
    ],
)  # fmt: skip
def test_tier_rules(tiers: list[dict[str, Any]], problem: str) -> None:
    doc = growth_doc()
    doc["prices"][0]["tiers"] = tiers
    problems = problems_of(doc)
    assert any(p.startswith(f"plans[0] (growth).prices[0].{problem}") for p in problems), problems


PER_UNIT_GB: dict[str, Any] = {"meter": "produce_bytes", "unit": "GB", "model": "per_unit", "unit_price": "1"}
DROP = object()


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"meter": "produce_messages"}, "meter: 'produce_messages' is not a meter"),
        ({"model": "stairstep"}, "model: 'stairstep' is not a price model"),
        ({"unit": DROP}, "unit: required"),
        ({"unit_price": DROP}, "unit_price: required by model per_unit"),
        ({"package_size": 2}, "package_size: not used by model per_unit; remove it"),
        ({"unit_price": "-0.01"}, "unit_price: must not be negative"),
        ({"unit_price": "cheap"}, "unit_price: 'cheap' is not a decimal number"),
        ({"unit_price": True}, "unit_price: must be a decimal string"),
        ({"unit_price": DROP, "model": "package", "package_size": 0, "package_price": "1"},
         "package_size: must be greater than 0"),
        ({"unit_price": DROP, "model": "flat", "amount": "10.005"}, "amount: 10.005 is finer than EUR's minor unit"),
        ({"unit_price": DROP, "model": "flat", "amount": "10", "included": 5}, "included: a flat price is independent"),
        ({"topics": "premium.*"}, "topics: must be a non-empty list of topic globs"),
        ({"topics": []}, "topics: must be a non-empty list of topic globs"),
        ({"included": 1.5}, 'included: 1.5 is a YAML float, which is inexact; quote it as a string: "1.5"'),
    ],
)  # fmt: skip
def test_price_rules(changes: dict[str, Any], problem: str) -> None:
    price = {**PER_UNIT_GB, **changes}
    doc = growth_doc()
    doc["prices"] = [{key: value for key, value in price.items() if value is not DROP}]
    problems = problems_of(doc)
    assert any(p.startswith(f"plans[0] (growth).prices[0].{problem}") for p in problems), problems


def test_count_unit_one_may_be_written_as_an_int() -> None:
    doc = growth_doc()
    doc["prices"] = [{"meter": "consume_requests", "unit": 1, "model": "per_unit", "unit_price": "0.0001"}]
    assert parse_plan(doc, "plans[0]").prices[0].unit == "1"


def test_flat_price_needs_no_unit() -> None:
    doc = growth_doc()
    doc["prices"] = [{"meter": "consume_requests", "model": "flat", "amount": "25.00"}]
    assert parse_plan(doc, "plans[0]").prices[0] == Price(
        meter="consume_requests", model="flat", unit=None, amount=D("25.00")
    )


def test_a_meter_has_at_most_one_price_for_each_topic_filter() -> None:
    doc = growth_doc()
    doc["prices"].append({"meter": "consume_bytes", "unit": "GB", "model": "per_unit", "unit_price": "0.03"})
    assert problems_of(doc) == [
        "plans[0] (growth).prices[3]: prices[1] already prices consume_bytes with no topics (the price taking "
        "the rest); this one would never take any usage"
    ]


def test_fixed_amounts_respect_the_currency_minor_unit() -> None:
    doc = growth_doc()
    doc["currency"] = "JPY"
    doc["base_fee"] = "4900.5"
    doc["minimum_commitment"] = "10000"
    assert problems_of(doc) == ["plans[0] (growth).base_fee: 4900.5 is finer than JPY's minor unit (0 decimals)"]


def test_missing_code_and_not_a_mapping() -> None:
    assert problems_of(["growth"], "plans[3]") == ["plans[3]: a plan must be a mapping, got list"]
    problems = problems_of({"name": "Nameless", "currency": "EUR", "prices": []}, "plans[2]")
    assert problems == ["plans[2].code: required, a non-empty string"]


def test_plan_error_is_a_value_error_listing_all_problems() -> None:
    error = PlanError(["a: x", "b: y"])
    assert isinstance(error, ValueError)
    assert str(error) == "Invalid plan: a: x; b: y"
