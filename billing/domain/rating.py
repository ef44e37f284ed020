"""Rating: a plan version and one billing period's usage → priced, rounded invoice lines and totals.

Owns :func:`rate_period` and its result (:class:`Rated` made of :class:`Line`), and
:func:`total_usage`, which adds usage windows up to the period total. Tiers apply to the
billing period total, never window by window, so callers add windows up first and rate once.

Rules (docs/billing.md, "Price models" and "Subscriptions, proration and the minimum commitment"),
and how they are read here:

* **Who takes which usage.** For each (meter, topic), the first price in plan order whose
  ``topics`` globs match the topic (:func:`fnmatch.fnmatchcase`) takes it; otherwise the
  meter's price without ``topics`` does; otherwise no price does. A narrowed price wins over the
  un-narrowed one wherever either appears in the file. Usage is never priced twice.
* **Lines.** Every price of the plan gives one line, in plan order, even with zero usage (its
  amount is then 0, or the fixed amount for ``flat``). Usage no price takes gives one line per
  meter at amount 0 (model and unit empty, ``usage_topics`` naming the topics) — listed, never
  dropped. Entries of zero usage are ignored, so they change nothing (not even ``usage_topics``).
* **Proration.** A subscription is active on the half-open dates ``[active_from, active_until)``
  (``active_until`` ``None`` = open-ended; an end date is the first day no longer billed, like
  every interval here). Base fee and minimum commitment are multiplied by
  ``days_active / days_in_period`` where days_active counts the days of ``[period_start,
  period_end)`` inside that interval. Usage is priced as used, whatever the proration. A flat
  price is a price, not a base fee, so it is not prorated. With no active day, there is no base
  fee and no minimum line.
* **Minimum commitment.** When the plan has one (and the subscription has an active day), a
  ``minimum commitment top-up`` line of ``max(0, prorated minimum − sum of the other rounded
  lines)`` is added last — shown at 0 when the minimum is met. The other lines are already whole
  minor units, so rounding the top-up equals rounding the minimum first.
* **Totals.** Each line is rounded by :func:`~billing.domain.money.round_money`; ``subtotal`` is
  the sum of rounded lines; ``tax = round(subtotal × tax_rate)`` once; ``total = subtotal + tax``.
  Written once, in :func:`invoice_totals`: rating, billing runs and previews all call it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from fnmatch import fnmatchcase
from typing import Final, Literal

from billing.domain.money import exact_arithmetic, prorate, round_money
from billing.domain.plans import Meter, Model, PlanVersion, Price
from billing.domain.pricing import TierPart, billable_quantity, price_quantity
from billing.domain.units import METERS, is_meter, to_unit

__all__ = [
    "Line",
    "LineKind",
    "Rated",
    "Totals",
    "Usage",
    "invoice_totals",
    "rate_period",
    "taking_price",
    "total_usage",
]

LineKind = Literal["usage", "base_fee", "minimum_topup", "flat", "adjustment", "credit_note", "threshold", "grant"]

Usage = Mapping[tuple[str, str], int]
"""Raw integer quantity per (meter, topic) for a whole billing period."""

_ZERO: Final = Decimal(0)


@dataclass(frozen=True)
class Line:
    """One invoice line: what was priced, how (breakdown), its unrounded and rounded amount.

    ``topics`` is the price's topic filter (globs; empty = not narrowed); ``usage_topics`` are the
    topics whose usage the line priced, so the line can be traced to its usage rows.
    ``quantity_raw`` is bytes or counts; ``quantity_in_unit`` the same in ``unit``; ``billable``
    is what is left after ``included`` units. Base fee and top-up lines have no quantity.
    """

    kind: LineKind
    description: str
    unrounded_amount: Decimal
    rounded_amount: Decimal
    meter: Meter | None = None
    topics: tuple[str, ...] = ()
    usage_topics: tuple[str, ...] = ()
    quantity_raw: int | None = None
    quantity_in_unit: Decimal | None = None
    included: Decimal | None = None
    billable: Decimal | None = None
    unit: str | None = None
    model: Model | None = None
    breakdown: tuple[TierPart, ...] = ()


@dataclass(frozen=True)
class Rated:
    """A plan version applied to one billing period ``[period_start, period_end)``."""

    plan_code: str
    plan_version: int
    currency: str
    period_start: date
    period_end: date
    days_active: int
    days_in_period: int
    lines: tuple[Line, ...]
    subtotal: Decimal
    tax_rate: Decimal
    tax: Decimal
    total: Decimal


@dataclass(frozen=True)
class Totals:
    subtotal: Decimal
    tax: Decimal
    total: Decimal


def invoice_totals(amounts: Iterable[Decimal], tax_rate: Decimal, currency: str) -> Totals:
    """An invoice's totals from its line amounts: subtotal = sum of the rounded lines, tax rounded
    once (``round(subtotal × tax_rate)``), total = subtotal + tax."""
    with exact_arithmetic():
        subtotal = sum((round_money(a, currency) for a in amounts), round_money(_ZERO, currency))
        tax = round_money(subtotal * tax_rate, currency)
        return Totals(subtotal, tax, subtotal + tax)


def total_usage(windows: Iterable[Usage]) -> dict[tuple[str, str], int]:
    """Add usage windows up per (meter, topic): rate the period total, never window by window."""
    totals: dict[tuple[str, str], int] = defaultdict(int)
    for window in windows:
        for key, quantity in window.items():
            totals[key] += quantity
    return dict(totals)


def taking_price(prices: Sequence[Price], meter: str, topic: str) -> int | None:
    """Index of the price that takes ``meter`` usage on ``topic``, or ``None`` if no price does."""
    rest: int | None = None
    for i, price in enumerate(prices):
        if price.meter != meter:
            continue
        if not price.topics:
            if rest is None:
                rest = i
        elif any(fnmatchcase(topic, glob) for glob in price.topics):
            return i
    return rest


def rate_period(
    plan: PlanVersion,
    usage: Usage,
    period_start: date,
    period_end: date,
    active_from: date,
    active_until: date | None,
    tax_rate: Decimal,
) -> Rated:
    """Price one period's total ``usage`` with ``plan`` for a subscription active on ``[active_from, active_until)``."""
    _check_arguments(usage, period_start, period_end, active_from, active_until, tax_rate)
    currency = plan.currency
    days_in_period = (period_end - period_start).days
    start = max(period_start, active_from)
    end = period_end if active_until is None else min(period_end, active_until)
    days_active = max(0, (end - start).days)

    taken: dict[int, dict[str, int]] = defaultdict(dict)
    untaken: dict[str, dict[str, int]] = defaultdict(dict)
    for (meter, topic), quantity in sorted(usage.items()):
        if not quantity:
            continue  # a zero entry must not change the invoice, not even the topics a line lists
        index = taking_price(plan.prices, meter, topic)
        if index is None:
            untaken[meter][topic] = quantity
        else:
            taken[index][topic] = quantity

    lines: list[Line] = []
    with exact_arithmetic():
        if plan.base_fee and days_active:
            fee = prorate(plan.base_fee, days_active, days_in_period)
            lines.append(_line("base_fee", f"base fee ({days_active}/{days_in_period} days)", fee, currency))

        for index, price in enumerate(plan.prices):
            lines.append(_price_line(price, taken.get(index, {}), currency))

        for meter in METERS:
            topics = untaken.get(meter, {})
            if topics:
                lines.append(
                    Line(
                        kind="usage",
                        description=f"{meter}: no price in plan {plan.code} (not billed)",
                        unrounded_amount=_ZERO,
                        rounded_amount=round_money(_ZERO, currency),
                        meter=meter,
                        usage_topics=tuple(sorted(topics)),
                        quantity_raw=sum(topics.values()),
                    )
                )

        if plan.minimum_commitment and days_active:
            minimum = prorate(plan.minimum_commitment, days_active, days_in_period)
            others = sum((line.rounded_amount for line in lines), _ZERO)
            lines.append(_line("minimum_topup", "minimum commitment top-up", max(_ZERO, minimum - others), currency))

        totals = invoice_totals((line.rounded_amount for line in lines), tax_rate, currency)
        return Rated(
            plan_code=plan.code,
            plan_version=plan.version,
            currency=currency,
            period_start=period_start,
            period_end=period_end,
            days_active=days_active,
            days_in_period=days_in_period,
            lines=tuple(lines),
            subtotal=totals.subtotal,
            tax_rate=tax_rate,
            tax=totals.tax,
            total=totals.total,
        )


def _line(kind: LineKind, description: str, amount: Decimal, currency: str) -> Line:
    return Line(kind, description, amount, round_money(amount, currency))


def _price_line(price: Price, usage_by_topic: Mapping[str, int], currency: str) -> Line:
    raw = sum(usage_by_topic.values())
    in_unit = None if price.unit is None else to_unit(raw, price.meter, price.unit)
    # A flat price may have no unit: it is shown against the raw count, which it does not depend on.
    quantity = Decimal(raw) if in_unit is None else in_unit
    priced = price_quantity(price, quantity)
    narrowed = f" {', '.join(price.topics)}" if price.topics else ""
    unit = f", per {price.unit}" if price.unit else ""
    return Line(
        kind="flat" if price.model == "flat" else "usage",
        description=f"{price.meter}{narrowed} ({price.model}{unit})",
        unrounded_amount=priced.amount,
        rounded_amount=round_money(priced.amount, currency),
        meter=price.meter,
        topics=price.topics,
        usage_topics=tuple(sorted(usage_by_topic)),
        quantity_raw=raw,
        quantity_in_unit=in_unit,
        included=price.included,
        billable=billable_quantity(price, quantity),
        unit=price.unit,
        model=price.model,
        breakdown=priced.breakdown,
    )


def _check_arguments(
    usage: Usage,
    period_start: date,
    period_end: date,
    active_from: date,
    active_until: date | None,
    tax_rate: Decimal,
) -> None:
    if period_end <= period_start:
        raise ValueError(f"a billing period ends after it starts, got [{period_start}, {period_end})")
    if active_until is not None and active_until < active_from:
        raise ValueError(f"a subscription cannot end ({active_until}) before it starts ({active_from})")
    if not isinstance(tax_rate, Decimal) or not tax_rate.is_finite() or tax_rate < 0:
        raise ValueError(f"tax_rate must be a non-negative Decimal, got {tax_rate!r}")
    for key, quantity in usage.items():
        if not (isinstance(key, tuple) and len(key) == 2 and is_meter(key[0]) and isinstance(key[1], str)):
            raise ValueError(f"usage keys are (meter, topic) with a known meter, got {key!r}")
        if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 0:
            raise ValueError(f"usage of {key!r} must be a non-negative int, got {quantity!r}")
