"""Money, units and the price models: worked examples on the sample plans, then properties."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from billing.domain.money import minor_unit, prorate, round_money, to_decimal
from billing.domain.plans import PlanVersion, Price, Tier, parse_plan
from billing.domain.pricing import Priced, flat, graduated, package, per_unit, price_quantity, volume
from billing.domain.units import to_unit

SAMPLES = Path(__file__).parents[3] / "streamtoll" / "samples"


def _load_plans() -> dict[str, PlanVersion]:
    docs: list[dict[str, Any]] = yaml.safe_load((SAMPLES / "plans.yaml").read_text())["plans"]
    return {doc["code"]: parse_plan(doc, f"plans[{i}]") for i, doc in enumerate(docs)}


PLANS = _load_plans()
GROWTH, ENTERPRISE, STARTER = PLANS["growth"], PLANS["enterprise"], PLANS["starter-usd"]
D = Decimal


def price_of(plan: PlanVersion, meter: str, topics: tuple[str, ...] = ()) -> Price:
    return next(p for p in plan.prices if p.meter == meter and p.topics == topics)


def parts(priced: Priced) -> list[tuple[int, Decimal, Decimal, Decimal, Decimal]]:
    return [(p.tier, p.quantity, p.unit_price, p.flat_fee, p.amount) for p in priced.breakdown]


# --- money -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        ("0.125", "EUR", "0.13"),  # half up, not half even (which would give 0.12)
        ("0.135", "EUR", "0.14"),
        ("-0.125", "EUR", "-0.13"),  # half away from zero
        ("2.5", "JPY", "3"),  # JPY has no minor unit
        ("1.0005", "KWD", "1.001"),  # KWD has three decimals
        ("1.0004", "BHD", "1.000"),
        ("93.13225746154785156250", "USD", "93.13"),
        ("7", "CHF", "7.00"),
    ],
)
def test_round_money_half_up_to_the_minor_unit(amount: str, currency: str, expected: str) -> None:
    rounded = round_money(D(amount), currency)
    assert rounded == D(expected)
    assert rounded.as_tuple().exponent == -minor_unit(currency)


def test_unknown_currency_is_a_clear_value_error() -> None:
    with pytest.raises(ValueError, match="unknown currency 'EURO'"):
        minor_unit("EURO")
    with pytest.raises(ValueError, match="unknown currency 'XYZ'"):
        round_money(D("1.00"), "XYZ")


def test_minor_units_follow_iso_4217() -> None:
    assert {c: minor_unit(c) for c in ("EUR", "USD", "GBP", "CHF", "JPY", "KWD", "BHD")} == {
        "EUR": 2,
        "USD": 2,
        "GBP": 2,
        "CHF": 2,
        "JPY": 0,
        "KWD": 3,
        "BHD": 3,
    }


def test_to_decimal_refuses_float_and_bool() -> None:
    assert to_decimal("0.08") == D("0.08")
    assert to_decimal(500) == D(500)
    assert to_decimal(D("1.5")) == D("1.5")
    with pytest.raises(TypeError, match="float"):
        to_decimal(0.08)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        to_decimal(True)
    with pytest.raises(ValueError, match="not a decimal number"):
        to_decimal("eight cents")
    with pytest.raises(ValueError, match="finite"):
        to_decimal("NaN")


def test_prorate_exact_when_it_terminates_and_fine_enough_when_not() -> None:
    assert prorate(D("49.00"), 21, 30) == D("34.30")  # 49 × 21 / 30 = 34.3
    assert prorate(D("49.00"), 30, 30) == D("49.00")
    assert round_money(prorate(D("49.00"), 10, 31), "EUR") == D("15.81")  # 490 / 31 = 15.806451…
    with pytest.raises(ValueError):
        prorate(D(1), 31, 30)


# --- units ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "meter", "unit", "expected"),
    [
        (1_500_000_000, "produce_bytes", "GB", "1.5"),
        (123_456_789_012, "produce_bytes", "GB", "123.456789012"),
        (2**30 * 3, "consume_bytes", "GiB", "3"),
        (10**12, "produce_bytes", "GiB", "931.322574615478515625"),  # 10^12 / 2^30, exact
        (10**12, "produce_bytes", "TB", "1"),
        (1, "produce_bytes", "TiB", "9.094947017729282379150390625E-13"),  # 2^-40 has 28 significant digits
        (10**18 + 1, "produce_bytes", "TiB", "909494.7017729282388245337642729282379150390625"),  # wider than 28 digits
        (1_234_567, "consume_requests", "thousand", "1234.567"),
        (25_000_000, "produce_records", "million", "25"),
        (7, "consume_records", "1", "7"),
    ],
)
def test_to_unit_divides_exactly(raw: int, meter: str, unit: str, expected: str) -> None:
    assert to_unit(raw, meter, unit) == D(expected)


@pytest.mark.parametrize(
    ("meter", "unit", "message"),
    [
        ("produce_records", "GB", "does not fit meter 'produce_records'"),
        ("consume_bytes", "million", "does not fit meter 'consume_bytes'"),
        ("produce_bytes", "MB", "unknown unit 'MB'"),
        ("produce_messages", "1", "unknown meter"),
    ],
)
def test_to_unit_refuses_a_unit_that_does_not_fit(meter: str, unit: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_unit(1, meter, unit)


# --- worked examples, one per model, on the sample plans -------------------------------------


def test_graduated_growth_produce_bytes() -> None:
    price = price_of(GROWTH, "produce_bytes")
    # 1 250 GB: 100 GB × 0.00 = 0; 900 GB × 0.08 = 72.00; 250 GB × 0.05 = 12.50 → 84.50
    priced = price_quantity(price, D(1250))
    assert priced.amount == D("84.50")
    assert parts(priced) == [
        (0, D(100), D("0.00"), D(0), D(0)),
        (1, D(900), D("0.08"), D(0), D("72.00")),
        (2, D(250), D("0.05"), D(0), D("12.50")),
    ]
    # 100 GB: all in the free first tier (up_to inclusive) → 0
    assert price_quantity(price, D(100)).amount == 0
    # 1 000 GB: 900 × 0.08 = 72.00, nothing enters the open tier
    assert price_quantity(price, D(1000)).amount == D("72.00")
    assert len(price_quantity(price, D(1000)).breakdown) == 2
    # 123.456789012 GB: 23.456789012 × 0.08 = 1.87654312096 (unrounded; the line rounds to 1.88)
    assert price_quantity(price, D("123.456789012")).amount == D("1.87654312096")


def test_per_unit_growth_consume_bytes_with_included_units() -> None:
    price = price_of(GROWTH, "consume_bytes")
    # 2 000 GB − 500 included = 1 500 GB × 0.02 = 30.00
    assert price_quantity(price, D(2000)).amount == D("30.00")
    # 400 GB is within the 500 GB allowance → 0
    assert price_quantity(price, D(400)).amount == 0
    # 500.5 GB: 0.5 GB × 0.02 = 0.01
    assert price_quantity(price, D("500.5")).amount == D("0.010")


def test_package_growth_produce_records() -> None:
    price = price_of(GROWTH, "produce_records")
    # 25 million records: ceil(25 / 10) = 3 packages × 1.50 = 4.50
    priced = price_quantity(price, D(25))
    assert priced.amount == D("4.50")
    assert parts(priced) == [(0, D(3), D("1.50"), D(0), D("4.50"))]
    # exactly 20 million: 2 packages × 1.50 = 3.00
    assert price_quantity(price, D(20)).amount == D("3.00")
    # one record (0.000001 million): 1 package × 1.50 = 1.50
    assert price_quantity(price, D("0.000001")).amount == D("1.50")
    # none: 0 packages → 0
    assert price_quantity(price, D(0)).amount == 0


def test_package_ceiling_is_exact_for_non_terminating_quotients() -> None:
    # 10 / 3 = 3.33… → 4 packages × 2 = 8; 9 / 3 = 3 packages × 2 = 6
    assert package(D(10), D(3), D(2)).amount == D(8)
    assert package(D(9), D(3), D(2)).amount == D(6)


def test_volume_enterprise_produce_bytes() -> None:
    price = price_of(ENTERPRISE, "produce_bytes")
    # 8 TB falls in tier 0: 8 × 40.00 = 320.00
    assert price_quantity(price, D(8)).amount == D("320.00")
    # 10 TB is still tier 0 (up_to inclusive): 10 × 40.00 = 400.00
    assert price_quantity(price, D(10)).amount == D("400.00")
    # 12 TB falls in tier 1: 12 × 30.00 + 50.00 flat fee = 410.00
    priced = price_quantity(price, D(12))
    assert priced.amount == D("410.00")
    assert parts(priced) == [(1, D(12), D("30.00"), D("50.00"), D("410.00"))]
    # 100 TB: 100 × 30.00 + 50.00 = 3 050.00
    assert price_quantity(price, D(100)).amount == D("3050.00")
    # 150 TB falls in the open tier: 150 × 20.00 = 3 000.00
    assert price_quantity(price, D(150)).amount == D("3000.00")


def test_volume_is_not_monotonic_when_tier_prices_fall() -> None:
    # A known property of volume pricing, so the monotonicity property below only covers rising
    # tiers: 10 TB × 40.00 = 400.00 but 11 TB × 30.00 + 50.00 = 380.00.
    price = price_of(ENTERPRISE, "produce_bytes")
    assert price_quantity(price, D(11)).amount < price_quantity(price, D(10)).amount


def test_per_unit_enterprise_and_starter() -> None:
    # enterprise premium.* consume: 2 TB × 10.00 = 20.00; the rest: 4 TB × 5.00 = 20.00
    assert price_quantity(price_of(ENTERPRISE, "consume_bytes", ("premium.*",)), D(2)).amount == D("20.00")
    assert price_quantity(price_of(ENTERPRISE, "consume_bytes"), D(4)).amount == D("20.00")
    # starter-usd: 10^12 bytes = 931.322574615478515625 GiB × 0.10 = 93.1322574615478515625 (→ 93.13)
    gib = to_unit(10**12, "produce_bytes", "GiB")
    assert price_quantity(price_of(STARTER, "produce_bytes"), gib).amount == D("93.1322574615478515625")
    # starter-usd: 1 234 567 requests = 1 234.567 thousand × 0.004 = 4.938268 (→ 4.94)
    assert price_quantity(price_of(STARTER, "consume_requests"), D("1234.567")).amount == D("4.938268")


def test_flat_is_the_fixed_amount_whatever_the_quantity() -> None:
    price = Price(meter="consume_requests", model="flat", unit="thousand", amount=D("25.00"))
    # no sample plan has a flat price: 25.00 per period, for 0 and for 1 000 000 thousand requests
    assert price_quantity(price, D(0)).amount == D("25.00")
    assert price_quantity(price, D(10**6)).amount == D("25.00")
    assert parts(flat(D(3), D("25.00"))) == [(0, D(3), D(0), D("25.00"), D("25.00"))]


def test_graduated_flat_fee_is_charged_per_tier_entered() -> None:
    tiers = (Tier(D(10), D(1), D(5)), Tier(D(20), D(2), D(7)), Tier(None, D(3), D(11)))
    # 0 enters no tier → 0
    assert graduated(D(0), tiers).amount == 0
    assert graduated(D(0), tiers).breakdown == ()
    # 10: tier 0 only: 10 × 1 + 5 = 15
    assert graduated(D(10), tiers).amount == D(15)
    # 10.5: 10 × 1 + 5 = 15, plus 0.5 × 2 + 7 = 8 → 23
    assert graduated(D("10.5"), tiers).amount == D(23)
    # 25: 15 + (10 × 2 + 7 = 27) + (5 × 3 + 11 = 26) = 68
    assert graduated(D(25), tiers).amount == D(68)


def test_volume_zero_quantity_costs_nothing_not_even_the_flat_fee() -> None:
    tiers = (Tier(D(10), D(1), D(5)), Tier(None, D(2), D(7)))
    assert volume(D(0), tiers) == Priced(D(0), ())
    assert volume(D("0.001"), tiers).amount == D("5.001")  # 0.001 × 1 + 5


def test_pricing_refuses_negative_quantities_and_bad_tiers() -> None:
    with pytest.raises(ValueError):
        per_unit(D(-1), D(1))
    with pytest.raises(ValueError, match="last one open"):
        graduated(D(1), (Tier(D(10), D(1)),))
    with pytest.raises(ValueError, match="ascend"):
        volume(D(1), (Tier(D(10), D(1)), Tier(D(5), D(1)), Tier(None, D(1))))


# --- properties -------------------------------------------------------------------------------


def decimals(max_units: int = 10**8, places: int = 4) -> st.SearchStrategy[Decimal]:
    """Non-negative Decimals built from integers (no float ever involved)."""
    return st.integers(0, max_units).map(lambda i: Decimal(i).scaleb(-places))


quantities = decimals(10**12, 3)
positive_sizes = st.integers(1, 10**6).map(lambda i: Decimal(i).scaleb(-2))


@st.composite
def tier_lists(draw: st.DrawFn, rising: bool = False) -> tuple[Tier, ...]:
    n = draw(st.integers(1, 5))
    bounds = sorted(draw(st.sets(st.integers(1, 10**8), min_size=n - 1, max_size=n - 1)))
    prices = draw(st.lists(decimals(), min_size=n, max_size=n))
    fees = draw(st.lists(decimals(), min_size=n, max_size=n))
    if rising:
        prices, fees = sorted(prices), sorted(fees)
    ups: list[Decimal | None] = [Decimal(b).scaleb(-2) for b in bounds]
    return tuple(Tier(up, p, f) for up, p, f in zip([*ups, None], prices, fees, strict=True))


def assert_breakdown_adds_up(priced: Priced) -> None:
    for part in priced.breakdown:
        assert part.amount == part.quantity * part.unit_price + part.flat_fee
    assert priced.amount == sum((p.amount for p in priced.breakdown), Decimal(0))


@given(quantities, quantities, decimals())
def test_per_unit_never_decreases(a: Decimal, b: Decimal, unit_price: Decimal) -> None:
    low, high = sorted((a, b))
    assert per_unit(low, unit_price).amount <= per_unit(high, unit_price).amount
    assert_breakdown_adds_up(per_unit(high, unit_price))


@given(quantities, quantities, tier_lists())
def test_graduated_never_decreases(a: Decimal, b: Decimal, tiers: tuple[Tier, ...]) -> None:
    low, high = sorted((a, b))
    assert graduated(low, tiers).amount <= graduated(high, tiers).amount
    assert_breakdown_adds_up(graduated(high, tiers))
    assert sum((p.quantity for p in graduated(high, tiers).breakdown), Decimal(0)) == high


@given(quantities, quantities, tier_lists(rising=True))
def test_volume_never_decreases_when_tier_prices_and_fees_rise(a: Decimal, b: Decimal, tiers: tuple[Tier, ...]) -> None:
    low, high = sorted((a, b))
    assert volume(low, tiers).amount <= volume(high, tiers).amount
    assert_breakdown_adds_up(volume(high, tiers))


@given(quantities, quantities, positive_sizes, decimals())
def test_package_never_decreases(a: Decimal, b: Decimal, size: Decimal, package_price: Decimal) -> None:
    low, high = sorted((a, b))
    assert package(low, size, package_price).amount <= package(high, size, package_price).amount
    (part,) = package(high, size, package_price).breakdown
    assert (part.quantity - 1) * size < high <= part.quantity * size or high == part.quantity == 0


@given(quantities, quantities, decimals())
def test_flat_never_changes_with_quantity(a: Decimal, b: Decimal, amount: Decimal) -> None:
    assert flat(a, amount).amount == flat(b, amount).amount == amount


@given(quantities, decimals(), decimals())
def test_one_tier_graduated_equals_volume(quantity: Decimal, unit_price: Decimal, flat_fee: Decimal) -> None:
    tiers = (Tier(None, unit_price, flat_fee),)
    assert graduated(quantity, tiers) == volume(quantity, tiers)


@given(quantities, quantities, st.sampled_from([p for plan in PLANS.values() for p in plan.prices]))
def test_sample_prices_never_decrease_with_quantity_except_volume(a: Decimal, b: Decimal, price: Price) -> None:
    low, high = sorted((a, b))
    if price.model != "volume":
        assert price_quantity(price, low).amount <= price_quantity(price, high).amount
    assert_breakdown_adds_up(price_quantity(price, high))


@given(st.sampled_from(["graduated", "volume"]), tier_lists())
def test_zero_quantity_costs_nothing_in_tiered_models(model: str, tiers: tuple[Tier, ...]) -> None:
    fn = graduated if model == "graduated" else volume
    assert fn(Decimal(0), tiers) == Priced(Decimal(0), ())
