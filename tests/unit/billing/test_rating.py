"""Rating a billing period: worked invoices on the sample plans, then properties of rate_period."""

from __future__ import annotations

import copy
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from billing.domain.money import minor_unit, prorate, round_money
from billing.domain.plans import PlanVersion, parse_plan
from billing.domain.rating import Line, Rated, rate_period, taking_price, total_usage
from billing.domain.units import METERS

SAMPLES = Path(__file__).parents[3] / "streamtoll" / "samples"
DOCS: list[dict[str, Any]] = yaml.safe_load((SAMPLES / "plans.yaml").read_text())["plans"]
PLANS = {doc["code"]: parse_plan(doc, f"plans[{i}]") for i, doc in enumerate(DOCS)}
GROWTH, ENTERPRISE, STARTER = PLANS["growth"], PLANS["enterprise"], PLANS["starter-usd"]

D = Decimal
GB = 10**9
TB = 10**12
NOV_START, NOV_END = date(2026, 11, 1), date(2026, 12, 1)
LONG_AGO = date(2026, 1, 1)


def rate_november(
    plan: PlanVersion,
    usage: dict[tuple[str, str], int],
    active_from: date = LONG_AGO,
    active_until: date | None = None,
    tax_rate: str = "0",
) -> Rated:
    return rate_period(plan, usage, NOV_START, NOV_END, active_from, active_until, D(tax_rate))


def amounts(rated: Rated) -> list[tuple[str, Decimal]]:
    return [(line.description, line.rounded_amount) for line in rated.lines]


def with_flat_price() -> PlanVersion:
    doc = copy.deepcopy(DOCS[0])
    doc["prices"].append({"meter": "consume_requests", "model": "flat", "amount": "25.00"})
    return parse_plan(doc, "plans[0]")


# --- worked invoices --------------------------------------------------------------------------


def test_growth_full_month() -> None:
    rated = rate_november(
        GROWTH,
        {
            ("produce_bytes", "orders"): 1_000 * GB,
            ("produce_bytes", "payments"): 250 * GB,
            ("consume_bytes", "orders"): 2_000 * GB,
            ("produce_records", "orders"): 25_000_000,
        },
        tax_rate="0.19",
    )
    assert amounts(rated) == [
        ("base fee (30/30 days)", D("49.00")),  # full month: 49.00
        # 1 250 GB over both topics (tiers apply to the total): 100 × 0 + 900 × 0.08 + 250 × 0.05 = 84.50
        ("produce_bytes (graduated, per GB)", D("84.50")),
        ("consume_bytes (per_unit, per GB)", D("30.00")),  # (2 000 − 500 included) × 0.02 = 30.00
        ("produce_records (package, per million)", D("4.50")),  # ceil(25 / 10) = 3 × 1.50 = 4.50
        ("minimum commitment top-up", D("0.00")),  # max(0, 100.00 − 168.00) = 0
    ]
    assert rated.subtotal == D("168.00")  # 49.00 + 84.50 + 30.00 + 4.50 + 0
    assert rated.tax == D("31.92")  # 168.00 × 0.19 = 31.92
    assert rated.total == D("199.92")  # 168.00 + 31.92
    line = rated.lines[1]
    assert (line.quantity_raw, line.quantity_in_unit, line.usage_topics) == (
        1_250 * GB,
        D(1250),
        ("orders", "payments"),
    )
    assert [(p.tier, p.quantity, p.amount) for p in line.breakdown] == [
        (0, D(100), D(0)),
        (1, D(900), D("72.00")),
        (2, D(250), D("12.50")),
    ]
    consume = rated.lines[2]
    assert (consume.included, consume.billable) == (D(500), D(1500))


def test_growth_topped_up_to_the_minimum_commitment() -> None:
    rated = rate_november(
        GROWTH,
        {
            ("produce_bytes", "orders"): 150 * GB,
            ("consume_bytes", "orders"): 600 * GB,
            ("produce_records", "orders"): 1_000_000,
        },
        tax_rate="0.19",
    )
    assert [line.rounded_amount for line in rated.lines] == [
        D("49.00"),  # base fee
        D("4.00"),  # 150 GB: 100 × 0 + 50 × 0.08 = 4.00
        D("2.00"),  # (600 − 500) × 0.02 = 2.00
        D("1.50"),  # ceil(1 / 10) = 1 package × 1.50
        D("43.50"),  # top-up: 100.00 − (49.00 + 4.00 + 2.00 + 1.50 = 56.50) = 43.50
    ]
    assert rated.lines[-1].kind == "minimum_topup"
    assert (rated.subtotal, rated.tax, rated.total) == (D("100.00"), D("19.00"), D("119.00"))  # tax 100 × 0.19


def test_growth_each_line_rounded_half_up_then_added() -> None:
    rated = rate_november(
        GROWTH,
        {("produce_bytes", "orders"): 123_456_789_012, ("consume_bytes", "orders"): 500 * GB + 250_000_000},
        tax_rate="0.19",
    )
    produce, consume = rated.lines[1], rated.lines[2]
    # 123.456789012 GB: 23.456789012 × 0.08 = 1.87654312096 → 1.88
    assert (produce.unrounded_amount, produce.rounded_amount) == (D("1.87654312096"), D("1.88"))
    # 500.25 GB − 500 included = 0.25 × 0.02 = 0.005 → 0.01 (half up)
    assert (consume.unrounded_amount, consume.rounded_amount) == (D("0.0050"), D("0.01"))
    # top-up: 100.00 − (49.00 + 1.88 + 0.01 + 0.00) = 49.11
    assert rated.lines[-1].rounded_amount == D("49.11")
    assert rated.subtotal == D("100.00")


def test_enterprise_prorated_with_premium_topics_narrowed() -> None:
    rated = rate_november(
        ENTERPRISE,
        {
            ("produce_bytes", "orders"): 12 * TB,
            ("consume_bytes", "premium.orders"): 2 * TB,
            ("consume_bytes", "payments"): 3 * TB,
            ("consume_bytes", "logs"): 1 * TB,
        },
        active_from=date(2026, 11, 10),  # globex starts on the 10th: active 10th–30th = 21 of 30 days
    )
    assert amounts(rated) == [
        ("base fee (21/30 days)", D("1750.00")),  # 2 500.00 × 21 / 30 = 1 750.00
        ("produce_bytes (volume, per TB)", D("410.00")),  # 12 TB in tier 1: 12 × 30.00 + 50.00 = 410.00
        ("consume_bytes premium.* (per_unit, per TB)", D("20.00")),  # premium.orders 2 TB × 10.00 = 20.00
        ("consume_bytes (per_unit, per TB)", D("20.00")),  # the rest, payments + logs = 4 TB × 5.00 = 20.00
    ]
    assert [line.usage_topics for line in rated.lines[2:]] == [("premium.orders",), ("logs", "payments")]
    assert (rated.subtotal, rated.tax, rated.total) == (D("2200.00"), D("0.00"), D("2200.00"))
    assert (rated.days_active, rated.days_in_period) == (21, 30)


def test_starter_usd_gib_and_thousands_of_requests() -> None:
    rated = rate_november(
        STARTER, {("produce_bytes", "sensors"): 10**12, ("consume_requests", "sensors"): 1_234_567}, tax_rate="0.0825"
    )
    assert amounts(rated) == [
        # 10^12 B / 2^30 = 931.322574615478515625 GiB × 0.10 = 93.1322574615478515625 → 93.13
        ("produce_bytes (per_unit, per GiB)", D("93.13")),
        # 1 234 567 / 1 000 = 1 234.567 thousand × 0.004 = 4.938268 → 4.94
        ("consume_requests (per_unit, per thousand)", D("4.94")),
    ]
    assert rated.subtotal == D("98.07")  # 93.13 + 4.94; no base fee, no minimum
    assert rated.tax == D("8.09")  # 98.07 × 0.0825 = 8.090775 → 8.09
    assert rated.total == D("106.16")  # 98.07 + 8.09


def test_flat_price_is_charged_whatever_the_usage_and_not_prorated() -> None:
    plan = with_flat_price()  # growth + consume_requests flat 25.00 per period
    rated = rate_november(plan, {("consume_requests", "orders"): 7_000_000, ("produce_bytes", "orders"): 1_100 * GB})
    assert amounts(rated) == [
        ("base fee (30/30 days)", D("49.00")),
        ("produce_bytes (graduated, per GB)", D("77.00")),  # 900 × 0.08 + 100 × 0.05 = 72.00 + 5.00
        ("consume_bytes (per_unit, per GB)", D("0.00")),
        ("produce_records (package, per million)", D("0.00")),
        ("consume_requests (flat)", D("25.00")),  # fixed: 25.00
        ("minimum commitment top-up", D("0.00")),  # 49 + 77 + 25 = 151.00 ≥ 100.00
    ]
    flat_line = rated.lines[4]
    assert (flat_line.kind, flat_line.quantity_raw, flat_line.quantity_in_unit) == ("flat", 7_000_000, None)
    # starting on the 10th: base fee 49 × 21/30 = 34.30 but the flat price stays 25.00
    late = rate_november(plan, {}, active_from=date(2026, 11, 10))
    assert [line.rounded_amount for line in late.lines if line.kind in ("base_fee", "flat")] == [D("34.30"), D("25.00")]


def test_usage_no_price_takes_is_listed_at_zero() -> None:
    rated = rate_november(
        GROWTH,
        {
            ("consume_requests", "orders"): 900,
            ("consume_requests", "payments"): 100,
            ("consume_records", "orders"): 0,  # nothing to list
            ("produce_bytes", "orders"): 1_000 * GB,
        },
    )
    unpriced = [line for line in rated.lines if line.model is None and line.kind == "usage"]
    assert unpriced == [
        Line(
            kind="usage",
            description="consume_requests: no price in plan growth (not billed)",
            unrounded_amount=D(0),
            rounded_amount=D("0.00"),
            meter="consume_requests",
            usage_topics=("orders", "payments"),
            quantity_raw=1_000,
        )
    ]


def test_a_narrowed_price_only_leaves_unmatched_topics_unpriced() -> None:
    doc = copy.deepcopy(DOCS[1])
    del doc["prices"][2]  # enterprise without the consume_bytes price that takes the rest
    plan = parse_plan(doc, "plans[1]")
    rated = rate_november(plan, {("consume_bytes", "premium.a"): TB, ("consume_bytes", "logs"): 3 * TB})
    assert [(line.description, line.quantity_raw, line.rounded_amount) for line in rated.lines[2:]] == [
        ("consume_bytes premium.* (per_unit, per TB)", TB, D("10.00")),  # 1 TB × 10.00
        ("consume_bytes: no price in plan enterprise (not billed)", 3 * TB, D("0.00")),
    ]


def test_which_price_takes_a_topic() -> None:
    prices = ENTERPRISE.prices
    assert taking_price(prices, "consume_bytes", "premium.orders") == 1
    assert taking_price(prices, "consume_bytes", "premium") == 2  # the glob needs the dot
    assert taking_price(prices, "consume_bytes", "Premium.orders") == 2  # topic names are case-sensitive
    assert taking_price(prices, "produce_bytes", "premium.orders") == 0
    assert taking_price(prices, "consume_requests", "orders") is None


# --- proration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("active_from", "active_until", "days", "base_fee", "minimum"),
    [
        (date(2026, 11, 10), None, 21, "34.30", "70.00"),  # 49 × 21/30 = 34.30; 100 × 21/30 = 70.00
        (LONG_AGO, date(2026, 11, 20), 19, "31.03", "63.33"),  # ends on the 20th (not billed): 49 × 19/30 = 31.0333…
        (date(2026, 11, 30), None, 1, "1.63", "3.33"),  # 49 / 30 = 1.6333…; 100 / 30 = 3.333…
        (date(2026, 11, 10), date(2026, 11, 11), 1, "1.63", "3.33"),
        (LONG_AGO, date(2026, 12, 5), 30, "49.00", "100.00"),
    ],
)
def test_base_fee_and_minimum_prorated_by_days_active(
    active_from: date, active_until: date | None, days: int, base_fee: str, minimum: str
) -> None:
    rated = rate_november(GROWTH, {}, active_from=active_from, active_until=active_until)
    assert rated.days_active == days
    assert rated.lines[0].rounded_amount == D(base_fee)
    # with no usage, the top-up makes the subtotal the prorated minimum
    assert rated.subtotal == D(minimum)


def test_proration_in_a_31_day_month() -> None:
    rated = rate_period(GROWTH, {}, date(2026, 12, 1), date(2027, 1, 1), date(2026, 12, 22), None, D(0))
    assert (rated.days_active, rated.days_in_period) == (10, 31)
    assert rated.lines[0].rounded_amount == D("15.81")  # 49 × 10/31 = 15.806451… → 15.81
    assert rated.subtotal == D("32.26")  # minimum 100 × 10/31 = 32.258064… → 32.26


def test_no_active_day_means_no_base_fee_or_minimum_but_usage_is_priced() -> None:
    rated = rate_november(GROWTH, {("produce_bytes", "orders"): 200 * GB}, active_from=date(2026, 12, 1))
    assert [(line.kind, line.rounded_amount) for line in rated.lines] == [
        ("usage", D("8.00")),  # 100 GB × 0.08
        ("usage", D("0.00")),
        ("usage", D("0.00")),
    ]


def test_rate_period_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="ends after it starts"):
        rate_period(GROWTH, {}, NOV_END, NOV_START, LONG_AGO, None, D(0))
    with pytest.raises(ValueError, match="known meter"):
        rate_november(GROWTH, {("produce_messages", "orders"): 1})
    with pytest.raises(ValueError, match="non-negative int"):
        rate_november(GROWTH, {("produce_bytes", "orders"): -1})
    with pytest.raises(ValueError, match="tax_rate"):
        rate_period(GROWTH, {}, NOV_START, NOV_END, LONG_AGO, None, 0.19)  # type: ignore[arg-type]


# --- properties -------------------------------------------------------------------------------

TOPICS = ["orders", "payments", "premium.orders", "premium.trades", "logs"]
usages: st.SearchStrategy[dict[tuple[str, str], int]] = st.dictionaries(
    st.tuples(st.sampled_from(METERS), st.sampled_from(TOPICS)),
    st.integers(0, 10**15),
    max_size=12,
)
plans = st.sampled_from([GROWTH, ENTERPRISE, STARTER, with_flat_price()])
days_of_november = st.dates(date(2026, 10, 15), date(2026, 12, 5))
tax_rates = st.integers(0, 3000).map(lambda i: Decimal(i).scaleb(-4))


@st.composite
def split_into_windows(draw: st.DrawFn, totals: dict[tuple[str, str], int]) -> list[dict[tuple[str, str], int]]:
    """Split each total over 1–5 windows at random cut points (some windows may miss some keys)."""
    windows: list[dict[tuple[str, str], int]] = [{} for _ in range(draw(st.integers(1, 5)))]
    for key, total in totals.items():
        cuts = sorted(draw(st.lists(st.integers(0, total), min_size=len(windows) - 1, max_size=len(windows) - 1)))
        for window, low, high in zip(windows, [0, *cuts], [*cuts, total], strict=True):
            if high > low or draw(st.booleans()):
                window[key] = high - low
    return windows


@given(plans, usages.flatmap(lambda u: st.tuples(st.just(u), split_into_windows(u))), days_of_november, tax_rates)
def test_splitting_usage_across_windows_never_changes_the_invoice(
    plan: PlanVersion,
    usage_and_windows: tuple[dict[tuple[str, str], int], list[dict[tuple[str, str], int]]],
    active_from: date,
    tax_rate: Decimal,
) -> None:
    usage, windows = usage_and_windows
    assert {k: v for k, v in total_usage(windows).items() if v} == {k: v for k, v in usage.items() if v}
    assert rate_november(plan, total_usage(windows), active_from, None, str(tax_rate)) == rate_november(
        plan, usage, active_from, None, str(tax_rate)
    )


@given(st.lists(st.integers(0, 10**14), min_size=1, max_size=len(TOPICS)))
def test_tiers_apply_to_a_price_total_not_per_topic(per_topic: list[int]) -> None:
    # growth's produce_bytes price is graduated and takes every topic: however the usage is spread
    # over topics, the price is that of the total.
    spread = {("produce_bytes", topic): quantity for topic, quantity in zip(TOPICS, per_topic, strict=False)}
    together = {("produce_bytes", "orders"): sum(per_topic)}
    assert rate_november(GROWTH, spread).lines[1].unrounded_amount == (
        rate_november(GROWTH, together).lines[1].unrounded_amount
    )


@given(plans, usages, days_of_november, st.one_of(st.none(), days_of_november), tax_rates)
def test_rounded_lines_add_up_to_the_subtotal(
    plan: PlanVersion,
    usage: dict[tuple[str, str], int],
    active_from: date,
    active_until: date | None,
    tax_rate: Decimal,
) -> None:
    if active_until is not None and active_until < active_from:
        active_from, active_until = active_until, active_from
    rated = rate_november(plan, usage, active_from, active_until, str(tax_rate))
    for line in rated.lines:
        assert line.rounded_amount == round_money(line.unrounded_amount, plan.currency)
        assert line.rounded_amount >= 0
    assert rated.subtotal == sum((line.rounded_amount for line in rated.lines), Decimal(0))
    assert rated.tax == round_money(rated.subtotal * tax_rate, plan.currency)
    assert rated.total == rated.subtotal + rated.tax
    assert rated.total.as_tuple().exponent == -minor_unit(plan.currency)
    # the invoice never falls below the prorated minimum
    minimum = round_money(prorate(plan.minimum_commitment, rated.days_active, rated.days_in_period), plan.currency)
    assert rated.subtotal >= minimum


@given(plans, usages)
def test_usage_is_priced_once_and_never_dropped(plan: PlanVersion, usage: dict[tuple[str, str], int]) -> None:
    rated = rate_november(plan, usage)
    for meter in METERS:
        listed = sum(line.quantity_raw or 0 for line in rated.lines if line.meter == meter)
        assert listed == sum(q for (m, _), q in usage.items() if m == meter)
    seen = [(line.meter, topic) for line in rated.lines for topic in line.usage_topics]
    assert len(seen) == len(set(seen))


@given(plans, days_of_november, st.one_of(st.none(), days_of_november), tax_rates)
def test_zero_usage_costs_only_the_fixed_parts(
    plan: PlanVersion, active_from: date, active_until: date | None, tax_rate: Decimal
) -> None:
    if active_until is not None and active_until < active_from:
        active_from, active_until = active_until, active_from
    zero: dict[tuple[str, str], int] = {(meter, "orders"): 0 for meter in METERS}
    for usage in ({}, zero):
        rated = rate_november(plan, usage, active_from, active_until, str(tax_rate))
        assert all(line.rounded_amount == 0 for line in rated.lines if line.kind == "usage")
        fixed = [line.rounded_amount for line in rated.lines if line.kind in ("base_fee", "flat", "minimum_topup")]
        assert rated.subtotal == sum(fixed, Decimal(0))
        days = rated.days_active
        expected_fixed = round_money(prorate(plan.base_fee, days, 30), plan.currency) + sum(
            (p.amount or Decimal(0) for p in plan.prices if p.model == "flat"), Decimal(0)
        )
        minimum = round_money(prorate(plan.minimum_commitment, days, 30), plan.currency)
        assert rated.subtotal == max(expected_fixed, minimum)
