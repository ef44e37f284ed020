"""Money: currencies' minor units, exact arithmetic, and the one place amounts are rounded.

Owns:

* the ISO 4217 minor unit (exponent) of every currency we bill in — an unknown code is a
  ``ValueError``, never a guessed two decimals;
* :func:`round_money` — an amount to its currency's minor unit, ``ROUND_HALF_UP``; no other
  module rounds money;
* :func:`to_decimal` — ``str``/``int``/``Decimal`` to ``Decimal``, refusing ``float`` (a float
  such as ``0.1`` is already wrong before it reaches us);
* :func:`exact_arithmetic` — the decimal context every pricing computation runs in: wide enough
  (100 digits) that quantities and amounts are never silently rounded, and trapping ``Inexact``
  so that if one ever would be, the computation fails loudly instead;
* :func:`prorate` — the only inexact step before rounding: ``amount × part / whole`` for day
  fractions such as 10/31, which have no finite decimal expansion. It is carried to 50
  significant digits, far below any minor unit, and the result is rounded later like any line;
* :func:`proportion` — the same for a share of money (``amount × part / whole``: a credit
  note's tax in proportion to its invoice's);
* :func:`format_money` and :func:`format_quantity` — the text of every amount and quantity that
  leaves the system (API, CLI, CSV, snapshots, documents): plain digits, never exponent
  notation (``Decimal("2.1E+2")`` is ``"210.00"``, not ``"2.1E+2"``), never rounded.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from decimal import (
    ROUND_HALF_EVEN,
    ROUND_HALF_UP,
    Context,
    Decimal,
    DivisionByZero,
    FloatOperation,
    Inexact,
    InvalidOperation,
    Overflow,
    localcontext,
)
from types import MappingProxyType
from typing import Final

__all__ = [
    "MINOR_UNITS",
    "exact_arithmetic",
    "format_money",
    "format_quantity",
    "minor_unit",
    "proportion",
    "prorate",
    "round_money",
    "to_decimal",
]

# ISO 4217 exponents. Currencies with two decimals are listed too, so that a typo ("EURO") is
# refused instead of being billed with two decimals by default.
_CODES_BY_EXPONENT: Final = {
    0: "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX VND VUV XAF XOF XPF",
    2: (
        "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BRL BSD BTN BWP BYN BZD CAD CDF CHF "
        "CNY COP CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF "
        "IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR "
        "MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD "
        "SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD UYU UZS VES WST XCD YER ZAR "
        "ZMW ZWG"
    ),
    3: "BHD IQD JOD KWD LYD OMR TND",
    4: "CLF UYW",
}
MINOR_UNITS: Final = MappingProxyType(
    {code: exponent for exponent, codes in _CODES_BY_EXPONENT.items() for code in codes.split()}
)

_DIGITS: Final = 100
_TRAPS: Final = [InvalidOperation, DivisionByZero, Overflow, FloatOperation]

# Pricing runs in this context: nothing a real invoice meets comes near 100 digits, and Inexact is
# trapped so that "unrounded" is a guarantee, not a hope.
_EXACT: Final = Context(prec=_DIGITS, rounding=ROUND_HALF_EVEN, traps=[*_TRAPS, Inexact])
_ROUNDING: Final = Context(prec=_DIGITS, rounding=ROUND_HALF_UP, traps=_TRAPS)
_PRORATION: Final = Context(prec=50, rounding=ROUND_HALF_EVEN, traps=_TRAPS)


def minor_unit(currency: str) -> int:
    """The ISO 4217 exponent of ``currency`` (EUR 2, JPY 0, KWD 3); ``ValueError`` if unknown."""
    try:
        return MINOR_UNITS[currency]
    except (KeyError, TypeError):
        raise ValueError(f"unknown currency {currency!r}: expected an ISO 4217 code such as EUR, USD, JPY") from None


def round_money(amount: Decimal, currency: str) -> Decimal:
    """``amount`` rounded to ``currency``'s minor unit, half up (0.125 EUR → 0.13, -0.125 → -0.13)."""
    if not isinstance(amount, Decimal):
        raise TypeError(f"round_money needs a Decimal, got {type(amount).__name__}")
    if not amount.is_finite():
        raise ValueError(f"cannot round {amount} to money")
    quantum = Decimal(1).scaleb(-minor_unit(currency))
    return amount.quantize(quantum, rounding=ROUND_HALF_UP, context=_ROUNDING)


def to_decimal(value: str | int | Decimal) -> Decimal:
    """``value`` as a finite ``Decimal``; refuses ``float`` and ``bool`` and text that is not a number."""
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise TypeError(
            f"money and quantities must be str, int or Decimal, not {type(value).__name__} ({value!r}); "
            "a float is inexact — write it as a string, e.g. '0.08'"
        )
    if isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a decimal number") from None
    else:
        result = Decimal(value)
    if not result.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    return result


def exact_arithmetic() -> AbstractContextManager[Context]:
    """A local decimal context for pricing: 100 digits, ``Inexact`` trapped, floats refused."""
    return localcontext(_EXACT)


def prorate(amount: Decimal, part: int, whole: int) -> Decimal:
    """``amount × part / whole`` (e.g. a base fee × days active / days in period), not yet rounded.

    Exact when ``part == whole`` or the quotient terminates (21/30); otherwise carried to 50
    significant digits (10/31), which :func:`round_money` then rounds like any other line.
    """
    if whole <= 0 or not 0 <= part <= whole:
        raise ValueError(f"proration needs 0 <= part <= whole and whole > 0, got {part}/{whole}")
    if part == whole:
        return amount
    with localcontext(_PRORATION):
        return amount * part / whole


def proportion(amount: Decimal, part: Decimal, whole: Decimal) -> Decimal:
    """``amount × part / whole`` for money shares such as a credit note's tax (``amount × invoice
    tax / invoice total``), not yet rounded: carried to 50 significant digits like
    :func:`prorate`, then rounded by the caller with :func:`round_money`."""
    if whole == 0:
        raise ValueError("a proportion of a whole of zero")
    with localcontext(_PRORATION):
        return amount * part / whole


def format_money(amount: Decimal | str | int, currency: str, *, thousands: bool = False) -> str:
    """``amount`` as plain decimal text with at least ``currency``'s minor digits.

    ``Decimal("2.1E+2")`` EUR → ``"210.00"``; ``0`` → ``"0.00"``; ``1.5`` → ``"1.50"``;
    ``1500`` JPY → ``"1500"``; ``1.5`` KWD → ``"1.500"``; ``-12.3`` → ``"-12.30"``.

    * Never exponent notation, and never rounds: a rounded amount (:func:`round_money`) comes out
      with exactly the minor digits; an unrounded amount or a unit price keeps every digit it
      has beyond them (``0.0425`` EUR → ``"0.0425"``, ``93.13225746`` → ``"93.13225746"``).
      Trailing zeros beyond the minor digits are dropped (``1.500000`` EUR → ``"1.50"``), as a
      ``numeric(20, 6)`` column returns them: they are not digits of the value.
    * Zero has no sign: ``Decimal("-0.00")`` → ``"0.00"``.
    * ``thousands=True`` separates thousands with commas (``"1,234.50"``), for documents a person
      reads (invoice and statement PDFs, e-mails); machine-read text (JSON, CSV) never has them.

    ``str``/``int`` are read with :func:`to_decimal` (a ``float`` is refused); an unknown currency
    or a non-finite amount is a ``ValueError``.
    """
    return _plain(_finite(amount), minor_unit(currency), thousands)


def format_quantity(quantity: Decimal | str | int, *, thousands: bool = False) -> str:
    """``quantity`` (or any other number that is not money, such as a tax rate) as plain decimal
    text with its significant digits only: ``Decimal("1.5E+3")`` → ``"1500"``, ``0.50`` → ``"0.5"``,
    ``1E+9`` → ``"1000000000"``, ``1.23E-7`` → ``"0.000000123"``, ``-0`` → ``"0"``.

    Never exponent notation, never rounded; ``thousands=True`` as in :func:`format_money`.
    """
    return _plain(_finite(quantity), 0, thousands)


def _finite(value: Decimal | str | int) -> Decimal:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} is not a finite number")
        return value
    return to_decimal(value)


def _plain(value: Decimal, places: int, thousands: bool) -> str:
    """Digits of ``value`` written out by hand from its tuple: no context, so nothing can round."""
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite
    if not any(digits):
        sign, digits, exponent = 0, (0,), 0
    kept = list(digits)
    # drop zeros after the point beyond the minor digits (zero was made (0,) above: this ends)
    while exponent < -places and kept[-1] == 0:
        kept.pop()
        exponent += 1
    if exponent > -places:  # pad to the minor digits (and write out a positive exponent)
        kept += [0] * (exponent + places)
        exponent = -places
    text = "".join(map(str, kept))
    whole, fraction = (text[:exponent], text[exponent:]) if exponent < 0 else (text, "")
    whole = whole.lstrip("0") or "0"
    fraction = fraction.rjust(-exponent, "0") if exponent < 0 else ""
    if thousands:
        whole = _group(whole)
    return ("-" if sign else "") + whole + ("." + fraction if fraction else "")


def _group(whole: str) -> str:
    head = len(whole) % 3 or 3
    return ",".join([whole[:head], *(whole[i : i + 3] for i in range(head, len(whole), 3))])
