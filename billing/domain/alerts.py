"""Alert thresholds: what each kind measures, when it is reached, and the event it emits (pure).

A threshold belongs to an account and has a **kind** (:data:`THRESHOLD_KINDS`):

* ``amount``: the account's rated amount of a period so far (the invoice's subtotal, before
  tax) at or above an amount in its currency → ``alert.amount_reached``.
* ``usage``: the account's metered quantity of one meter in a period so far at or above a
  quantity in a unit (``500 GB`` of ``consume_bytes``) → ``alert.usage_reached``. The quantity
  is read with the billing sources' rules (:func:`billing.domain.sources.meter_usage`: one source
  per quantity, never two added together) and summed over topics and days. The limit is
  compared exactly in base units: 500 GB is 500 × 10^9 bytes, 0.5 GiB is 2^29 bytes
  (:mod:`billing.domain.units`); a limit that is not a whole number of base units (0.1 GiB =
  107374182.4 bytes) is reached by the first whole quantity at or above it.

* ``balance``: the money the account's prepaid grants would have left once its invoice of the
  period, rated now, is cut (``billing.services.billing_run.projected_money``: unit grants,
  credit notes and threshold deductions first, then the money grants burned, never below zero)
  at or **below** an amount in its currency → ``alert.balance_low``. Reached from above, so a
  prepaid account hears of it before its grants run out, not at month end.

Each threshold is reached at most once per period (the caller records the crossing with its
event); a measure that falls again does not un-reach it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from billing.domain.money import exact_arithmetic
from billing.domain.sources import meter_usage
from billing.domain.units import METERS, check_unit, unit_size
from billing.domain.usage import MeterUsage
from billing.errors import WebhookError

__all__ = [
    "EVENT_OF_KIND",
    "THRESHOLD_KINDS",
    "UsageLimit",
    "base_quantity",
    "in_unit",
    "meter_totals",
    "metered",
    "plain",
    "reached",
    "usage_event_data",
    "usage_limit",
]

THRESHOLD_KINDS = ("amount", "usage", "balance")
"""The kinds a threshold may have (see the module docstring)."""

EVENT_OF_KIND: Mapping[str, str] = {
    "amount": "alert.amount_reached",
    "usage": "alert.usage_reached",
    "balance": "alert.balance_low",
}


@dataclass(frozen=True)
class UsageLimit:
    """A usage threshold's limit: ``quantity`` of ``unit`` of ``meter``."""

    meter: str
    quantity: Decimal
    unit: str

    @property
    def base(self) -> Decimal:
        """The limit in the meter's base units (bytes, records or requests), exactly."""
        return base_quantity(self.quantity, self.unit)


def usage_limit(meter: str, quantity: str, unit: str) -> UsageLimit:
    """A usage limit as a person types it (``consume_bytes``, ``500``, ``GB``);
    :class:`WebhookError` naming every problem at once."""
    problems = []
    if meter not in METERS:
        problems.append(f"{meter!r} is not a meter (one of {', '.join(METERS)})")
    else:
        try:
            check_unit(meter, unit)
        except ValueError as exc:
            problems.append(str(exc))
    try:
        value = Decimal(quantity)
    except InvalidOperation:
        value = Decimal(0)
    if not value.is_finite() or value <= 0:
        problems.append(f"{quantity!r} is not a quantity above zero")
    if problems:
        raise WebhookError("; ".join(problems))
    return UsageLimit(meter, value, unit)


def base_quantity(quantity: Decimal, unit: str) -> Decimal:
    """``quantity`` of ``unit`` in base units, exactly (500 GB → 500000000000)."""
    with exact_arithmetic():
        return quantity * unit_size(unit)


def in_unit(raw: int, unit: str) -> Decimal:
    """A raw count in ``unit``, exactly (523_456_789_012 bytes in GB → 523.456789012)."""
    with exact_arithmetic():
        return Decimal(raw) / unit_size(unit)


def meter_totals(usage: MeterUsage) -> dict[str, int]:
    """Usage by (meter, topic, day) → the total per meter (meters without usage left out)."""
    totals: dict[str, int] = {}
    for (meter, _topic, _day), quantity in usage.items():
        totals[meter] = totals.get(meter, 0) + quantity
    return {m: q for m, q in totals.items() if q}


def reached(kind: str, limit: Decimal, measure: Decimal) -> bool:
    """Whether a threshold of ``kind`` with ``limit`` is reached by ``measure`` (the period's
    amount so far, or its quantity in base units: at or above the limit; the money left: at or
    below it)."""
    if kind not in THRESHOLD_KINDS:
        raise ValueError(f"unknown threshold kind {kind!r}")
    if kind == "balance":
        return measure <= limit
    return measure >= limit


def plain(d: Decimal) -> str:
    """A decimal without exponent or trailing zeros (``5E+2`` → ``500``, ``1.50`` → ``1.5``)."""
    return format(d.normalize(), "f")


def usage_event_data(
    threshold_id: str, limit: UsageLimit, period: str, quantity: int, source: str | None
) -> dict[str, Any]:
    """The ``data`` of ``alert.usage_reached``: the threshold, the period, the meter and the
    quantity reached in base units (an integer) and in the threshold's unit (an exact string)."""
    return {
        "threshold": {
            "id": threshold_id,
            "meter": limit.meter,
            "quantity": plain(limit.quantity),
            "unit": limit.unit,
        },
        "period": period,
        "meter": limit.meter,
        "quantity": quantity,
        "unit": limit.unit,
        "quantity_in_unit": plain(in_unit(quantity, limit.unit)),
        "source": source,
    }


def metered(
    by_source: Mapping[str, MeterUsage], order: Mapping[str, tuple[str, ...]]
) -> tuple[dict[str, int], dict[str, str]]:
    """One account's period so far as usage thresholds read it: the total per meter, with one
    source per quantity as billing chooses it (:func:`billing.domain.sources.meter_usage`), and
    the source chosen per quantity (``bytes`` → ``proxy``)."""
    usage, chosen = meter_usage(by_source, order)
    return meter_totals(usage), chosen
