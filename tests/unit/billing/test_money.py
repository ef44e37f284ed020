"""Money and quantities as text: plain digits, the currency's minor digits, nothing lost."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from billing.domain.documents import invoice_snapshot_view, invoice_view_model, money_text, quantity_text
from billing.domain.money import MINOR_UNITS, format_money, format_quantity, minor_unit, round_money

D = Decimal
PLAIN = re.compile(r"^-?\d+(\.\d+)?$")


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        (D("2.1E+2"), "EUR", "210.00"),  # what a finalized invoice used to show
        (D("99"), "EUR", "99.00"),
        (D("0"), "EUR", "0.00"),
        (D("0E-7"), "EUR", "0.00"),
        (D("-0.00"), "EUR", "0.00"),  # zero has no sign
        (D("1.5"), "EUR", "1.50"),
        (D("210.000000"), "EUR", "210.00"),  # as a numeric(20, 6) column returns it
        (D("1500"), "JPY", "1500"),
        (D("1.5E+3"), "JPY", "1500"),
        (D("1.5"), "KWD", "1.500"),
        (D("-12.3"), "EUR", "-12.30"),  # a credit
        (D("1E+12"), "EUR", "1000000000000.00"),
        ("31.92", "EUR", "31.92"),  # a snapshot's text
        (7, "CHF", "7.00"),
        # unrounded amounts and unit prices keep every digit, with at least the minor ones
        (D("0.0425"), "EUR", "0.0425"),
        (D("12.3"), "EUR", "12.30"),
        (D("93.13225746154785156250"), "USD", "93.1322574615478515625"),
        (D("7.5"), "JPY", "7.5"),
        (D("1.23E-7"), "EUR", "0.000000123"),
    ],
)
def test_format_money(amount: Decimal | str | int, currency: str, expected: str) -> None:
    assert format_money(amount, currency) == expected


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        (D("1.5E+3"), "1500"),
        (D("0.5"), "0.5"),
        (D("0.500000000"), "0.5"),
        (D("1E+9"), "1000000000"),
        (D("1.23E-7"), "0.000000123"),
        (D("-0"), "0"),
        (D("0E-9"), "0"),
        (D("931.322574615478515625"), "931.322574615478515625"),
        (1234567, "1234567"),
        ("0.19", "0.19"),
    ],
)
def test_format_quantity(quantity: Decimal | str | int, expected: str) -> None:
    assert format_quantity(quantity) == expected


def test_thousands_only_when_asked() -> None:
    assert format_money(D("1234567.5"), "EUR", thousands=True) == "1,234,567.50"
    assert format_money(D("-1234.5"), "EUR", thousands=True) == "-1,234.50"
    assert format_money(D("123"), "EUR", thousands=True) == "123.00"
    assert format_money(D("1.5E+3"), "JPY", thousands=True) == "1,500"
    assert format_quantity(D("1.25E+12"), thousands=True) == "1,250,000,000,000"
    assert format_quantity(D("1234.5678"), thousands=True) == "1,234.5678"


def test_refuses_floats_unknown_currencies_and_non_numbers() -> None:
    with pytest.raises(TypeError, match="float"):
        format_money(0.1, "EUR")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown currency"):
        format_money(D("1"), "EURO")
    for bad in (D("NaN"), D("Infinity"), "abc"):
        with pytest.raises(ValueError):
            format_quantity(bad)


# Decimals of every shape: tuples give huge, tiny, negative zero and exponents such as 2.1E+2
# (which st.decimals alone rarely produces); kept under round_money's 100 digits.
decimals = st.one_of(
    st.builds(
        lambda sign, digits, exponent: Decimal((sign, tuple(digits), exponent)),
        st.integers(0, 1),
        st.lists(st.integers(0, 9), min_size=1, max_size=40),
        st.integers(-40, 40),
    ),
    st.decimals(allow_nan=False, allow_infinity=False, min_value=D("-1E+30"), max_value=D("1E+30")),
)
currencies = st.sampled_from(sorted(MINOR_UNITS))


@given(decimals, currencies)
@example(D("2.1E+2"), "EUR")
@example(D("0E-7"), "EUR")
@example(D("-0E+3"), "JPY")
@example(D("-1.5E-30"), "KWD")
@example(D("9" * 40 + "E+40"), "CLF")
def test_any_amount_is_plain_text_that_reads_back_as_the_same_value(amount: Decimal, currency: str) -> None:
    places = minor_unit(currency)
    text = format_money(amount, currency)
    assert PLAIN.match(text), text
    assert D(text) == amount  # never rounded: not one digit lost
    assert not re.match(r"^-0(\.0+)?$", text)  # zero is written without a sign
    assert len(text.partition(".")[2]) >= places  # at least the minor digits

    rounded = round_money(amount, currency)
    text = format_money(rounded, currency)
    assert PLAIN.match(text) and D(text) == rounded
    assert len(text.partition(".")[2]) == places  # a rounded amount: exactly the minor digits

    grouped = format_money(amount, currency, thousands=True)
    assert grouped.replace(",", "") == format_money(amount, currency)


@given(decimals)
@example(D("1E+9"))
@example(D("-0E-5"))
def test_any_quantity_is_plain_text_with_its_significant_digits(quantity: Decimal) -> None:
    text = format_quantity(quantity)
    assert PLAIN.match(text), text
    assert D(text) == quantity
    assert text != "-0"
    assert not (text.endswith("0") and "." in text)  # no trailing zeros after the point


# --- snapshots and documents ------------------------------------------------------------------

# A snapshot as finalize froze it before amounts were formatted: str(Decimal.normalize()).
OLD_SNAPSHOT: dict[str, Any] = {
    "number": "INV-2026-000002",
    "account": {"code": "globex", "name": "Globex", "email": "ap@globex.example", "address": []},
    "period": {"start": "2026-11-01", "end": "2026-12-01"},
    "kind": "standard",
    "currency": "EUR",
    "plan": {"code": "enterprise", "version": 1},
    "lines": [
        {
            "position": 0,
            "kind": "base_fee",
            "description": "base fee (21/30 days)",
            "quantity": None,
            "unit": None,
            "amount_unrounded": "1.75E+3",
            "amount": "1.75E+3",
            "breakdown": [],
        },
        {
            "position": 1,
            "kind": "usage",
            "description": "produce_bytes (volume, per TB)",
            "quantity": "1.2E+1",
            "unit": "TB",
            "amount_unrounded": "4.1E+2",
            "amount": "4.1E+2",
            "breakdown": [{"tier": 1, "quantity": "12", "unit_price": "3E+1", "flat_fee": "50.00", "amount": "410.00"}],
        },
        {
            "position": 2,
            "kind": "usage",
            "description": "consume_bytes (per_unit, per GB)",
            "quantity": "0.000000123",
            "unit": "GB",
            "amount_unrounded": "1.23E-9",
            "amount": "0",
            "breakdown": [
                {"tier": 0, "quantity": "1.23E-7", "unit_price": "0.01", "flat_fee": "0", "amount": "1.23E-9"}
            ],
        },
    ],
    "subtotal": "2.16E+3",
    "tax_rate": "0",
    "tax": "0",
    "total": "2.16E+3",
    "issued_on": "2026-12-01",
    "due_on": "2026-12-31",
    "payment_terms_days": 30,
    "issuer": {"name": "streamtoll", "address": [], "email": "billing@streamtoll.invalid"},
}


def test_an_old_snapshot_is_shown_plain_and_left_as_it_was() -> None:
    before = repr(OLD_SNAPSHOT)
    view = invoice_snapshot_view(OLD_SNAPSHOT)
    assert repr(OLD_SNAPSHOT) == before  # the frozen snapshot is not touched
    assert (view["subtotal"], view["tax"], view["total"], view["tax_rate"]) == ("2160.00", "0.00", "2160.00", "0")
    assert [(ln["quantity"], ln["amount_unrounded"], ln["amount"]) for ln in view["lines"]] == [
        (None, "1750.00", "1750.00"),
        ("12", "410.00", "410.00"),
        ("0.000000123", "0.00000000123", "0.00"),
    ]
    assert view["lines"][1]["breakdown"] == [
        {"tier": 1, "quantity": "12", "unit_price": "30.00", "flat_fee": "50.00", "amount": "410.00"}
    ]
    assert view["lines"][2]["breakdown"][0]["quantity"] == "0.000000123"
    assert invoice_snapshot_view(view) == view  # idempotent: a new snapshot reads the same
    assert {k: v for k, v in view.items() if k not in ("lines", "subtotal", "tax", "total", "tax_rate")} == {
        k: v for k, v in OLD_SNAPSHOT.items() if k not in ("lines", "subtotal", "tax", "total", "tax_rate")
    }


def test_documents_show_the_same_digits_with_thousands_separated() -> None:
    doc = invoice_view_model(OLD_SNAPSHOT, OLD_SNAPSHOT["issuer"])
    assert (doc["subtotal"], doc["tax"], doc["total"], doc["tax_rate"]) == ("2,160.00", "0.00", "2,160.00", "0 %")
    assert [ln["amount"] for ln in doc["lines"]] == ["1,750.00", "410.00", "0.00"]
    assert doc["lines"][1]["breakdown"] == ["tier 2: 12 × 30.00 + 50.00 = 410.00"]
    # an unrounded tier amount is shown whole, never rounded by the formatting
    assert doc["lines"][2]["breakdown"] == ["tier 1: 0.000000123 × 0.01 = 0.00000000123"]
    assert money_text("1234.5", "EUR") == "1,234.50" and money_text(D("1.5E+3"), "JPY") == "1,500"
    assert quantity_text(D("1.25E+3")) == "1,250" and quantity_text(None) == ""
