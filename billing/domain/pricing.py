"""Pricing: one pure function per price model, and the factory that picks one for a price.

Each model function takes the *billable* quantity — in the price's unit, after included units —
and returns a :class:`Priced`: the unrounded amount and its breakdown. Every
:class:`TierPart` satisfies ``amount == quantity × unit_price + flat_fee`` and the parts add up to
the amount, so a document can show the arithmetic without doing any.

* ``per_unit``  — quantity × unit price (one part).
* ``graduated`` — each tier's slice of the quantity at that tier's price, plus the tier's flat
  fee for every tier the quantity enters (one part per tier entered).
* ``volume``    — the whole quantity at the price of the tier it falls in, plus that tier's flat
  fee (one part).
* ``package``   — ceil(quantity / package size) × package price (one part whose quantity is the
  number of packages and whose unit price is the package price).
* ``flat``      — the fixed amount per period, whatever the quantity (one part: the quantity at
  a unit price of 0 plus the amount as its flat fee).

Zero quantity costs nothing in every model but ``flat``: a tier's flat fee applies only when a
quantity greater than zero enters that tier (the quantity enters tier *i* when it exceeds the
previous tier's ``up_to``; ``up_to`` is inclusive). Tiered models list no parts for zero.

Note that ``volume`` is, by its definition, not monotonic when tier prices fall: on the
enterprise plan 10 TB costs 400.00 and 11 TB 330.00 + 50.00 = 380.00. The other models never
cost less for more when prices are non-negative.

Included units: the billable quantity is ``max(0, quantity − included)`` (a free allowance).
Nothing is rounded here; :mod:`billing.domain.money` rounds a line's amount.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from billing.domain.money import exact_arithmetic
from billing.domain.plans import Model, Price, Tier

__all__ = [
    "MODEL_FUNCTIONS",
    "Priced",
    "TierPart",
    "billable_quantity",
    "flat",
    "graduated",
    "package",
    "per_unit",
    "price_quantity",
    "volume",
]

_ZERO: Final = Decimal(0)


@dataclass(frozen=True)
class TierPart:
    """One step of a price's arithmetic: ``amount = quantity × unit_price + flat_fee`` (unrounded).

    ``tier`` is the tier's index (0 for untiered models). For ``package``, ``quantity`` counts
    packages and ``unit_price`` is the package price.
    """

    tier: int
    quantity: Decimal
    unit_price: Decimal
    flat_fee: Decimal
    amount: Decimal


@dataclass(frozen=True)
class Priced:
    """An unrounded amount and the parts it is the sum of."""

    amount: Decimal
    breakdown: tuple[TierPart, ...]


def _part(tier: int, quantity: Decimal, unit_price: Decimal, flat_fee: Decimal = _ZERO) -> TierPart:
    return TierPart(tier, quantity, unit_price, flat_fee, quantity * unit_price + flat_fee)


def _priced(parts: Sequence[TierPart]) -> Priced:
    return Priced(sum((p.amount for p in parts), _ZERO), tuple(parts))


def _check_quantity(quantity: Decimal) -> None:
    if not isinstance(quantity, Decimal):
        raise TypeError(f"a quantity is a Decimal, got {type(quantity).__name__}")
    if not quantity.is_finite() or quantity < 0:
        raise ValueError(f"a quantity must be finite and non-negative, got {quantity}")


def _check_tiers(tiers: Sequence[Tier]) -> None:
    if not tiers or tiers[-1].up_to is not None:
        raise ValueError("tiers must be non-empty and the last one open (up_to None)")
    previous = _ZERO
    for tier in tiers[:-1]:
        if tier.up_to is None or tier.up_to <= previous:
            raise ValueError(f"tier bounds must be positive and ascend strictly, got {[t.up_to for t in tiers]}")
        previous = tier.up_to


def per_unit(quantity: Decimal, unit_price: Decimal) -> Priced:
    """``quantity × unit_price``."""
    _check_quantity(quantity)
    with exact_arithmetic():
        return _priced([_part(0, quantity, unit_price)])


def graduated(quantity: Decimal, tiers: Sequence[Tier]) -> Priced:
    """Each tier's slice of ``quantity`` at its price, plus the flat fee of each tier entered (quantity > 0)."""
    _check_quantity(quantity)
    _check_tiers(tiers)
    parts: list[TierPart] = []
    with exact_arithmetic():
        lower = _ZERO
        for i, tier in enumerate(tiers):
            if quantity <= lower:
                break
            upper = quantity if tier.up_to is None else min(quantity, tier.up_to)
            parts.append(_part(i, upper - lower, tier.unit_price, tier.flat_fee))
            if tier.up_to is None:
                break
            lower = tier.up_to
        return _priced(parts)


def volume(quantity: Decimal, tiers: Sequence[Tier]) -> Priced:
    """All of ``quantity`` at the price of the tier it falls in, plus that tier's flat fee (quantity > 0)."""
    _check_quantity(quantity)
    _check_tiers(tiers)
    if quantity == 0:
        return Priced(_ZERO, ())
    with exact_arithmetic():
        for i, tier in enumerate(tiers):
            if tier.up_to is None or quantity <= tier.up_to:
                return _priced([_part(i, quantity, tier.unit_price, tier.flat_fee)])
    raise AssertionError("unreachable: the last tier is open")


def package(quantity: Decimal, package_size: Decimal, package_price: Decimal) -> Priced:
    """``ceil(quantity / package_size) × package_price``; the part's quantity is the number of packages."""
    _check_quantity(quantity)
    if package_size <= 0:
        raise ValueError(f"package_size must be positive, got {package_size}")
    with exact_arithmetic():
        # divmod instead of a rounded quotient: q/3 has no finite decimal, its ceiling must still be exact.
        whole, rest = divmod(quantity, package_size)
        packages = whole + (1 if rest else 0)
        return _priced([_part(0, packages, package_price)])


def flat(quantity: Decimal, amount: Decimal) -> Priced:
    """The fixed ``amount`` per period, whatever the quantity (shown as the part's flat fee)."""
    _check_quantity(quantity)
    with exact_arithmetic():
        return _priced([_part(0, quantity, _ZERO, amount)])


def _need(value: Decimal | None, field: str, price: Price) -> Decimal:
    if value is None:
        raise ValueError(f"a {price.model} price for {price.meter} needs {field}")
    return value


MODEL_FUNCTIONS: Final[Mapping[Model, Callable[[Decimal, Price], Priced]]] = {
    "per_unit": lambda q, p: per_unit(q, _need(p.unit_price, "unit_price", p)),
    "graduated": lambda q, p: graduated(q, p.tiers),
    "volume": lambda q, p: volume(q, p.tiers),
    "package": lambda q, p: package(
        q, _need(p.package_size, "package_size", p), _need(p.package_price, "package_price", p)
    ),
    "flat": lambda q, p: flat(q, _need(p.amount, "amount", p)),
}


def billable_quantity(price: Price, quantity_in_unit: Decimal) -> Decimal:
    """``max(0, quantity − included)``: what is left to price after the free allowance."""
    _check_quantity(quantity_in_unit)
    with exact_arithmetic():
        return max(_ZERO, quantity_in_unit - price.included)


def price_quantity(price: Price, quantity_in_unit: Decimal) -> Priced:
    """Price a period's total ``quantity_in_unit`` (in ``price.unit``) with ``price``'s model, after included units."""
    return MODEL_FUNCTIONS[price.model](billable_quantity(price, quantity_in_unit), price)
