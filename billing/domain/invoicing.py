"""One account's invoice for one period, from its metered usage: the rules of a billing run.

* :class:`Subscription`, :func:`active_subscriptions`: which plan versions price which days.
* :func:`rate_account`: one source per quantity (:func:`billing.domain.sources.meter_usage`),
  each subscription's days priced with its own plan version (:func:`billing.domain.rating.rate_period`),
  or every meter listed at zero when the account has no subscription.
* :func:`late_usage_adjustment`: what usage that arrived after a period was finalized adds:
  the period re-rated now, minus what its invoice billed itself, minus the adjustments already
  finalized for it.
Totals are :func:`billing.domain.rating.invoice_totals`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from billing.domain.plans import PlanVersion
from billing.domain.rating import Line, rate_period
from billing.domain.sources import meter_usage
from billing.domain.usage import MeterUsage

__all__ = [
    "AccountTerms",
    "PricedLine",
    "RatedAccount",
    "Subscription",
    "active_subscriptions",
    "adjustment_line",
    "late_usage_adjustment",
    "rate_account",
]


@dataclass(frozen=True, slots=True)
class AccountTerms:
    """What billing needs of an account: its currency and tax rate (and its name for documents)."""

    code: str
    currency: str
    tax_rate: Decimal
    name: str = ""
    email: str = ""
    address: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Subscription:
    """A plan version subscribed to on the days ``[starts_on, ends_on)`` (``ends_on`` None: open)."""

    account: str
    starts_on: date
    ends_on: date | None
    plan_code: str
    plan_version: int

    def overlaps(self, start: date, end: date) -> bool:
        return self.starts_on < end and (self.ends_on is None or self.ends_on > start)


def active_subscriptions(
    subscriptions: Iterable[Subscription], plans: Mapping[tuple[str, int], PlanVersion], start: date, end: date
) -> list[tuple[date, date | None, PlanVersion]]:
    """The subscriptions (in start order) active in ``[start, end)``, each with its plan version."""
    return [
        (s.starts_on, s.ends_on, plans[(s.plan_code, s.plan_version)]) for s in subscriptions if s.overlaps(start, end)
    ]


@dataclass(frozen=True, slots=True)
class PricedLine:
    """A line of an invoice with the source it priced (None: not usage) and, for an adjustment,
    what it adjusts (``{"adjusts_period": …, "adjusts_invoice": …}``)."""

    line: Line
    source: str | None = None
    adjusts: dict[str, str] | None = None


@dataclass(frozen=True)
class RatedAccount:
    lines: list[PricedLine]
    plan: PlanVersion | None  # the last active subscription's, None without one


def _in(day: date, since: date, until: date | None) -> bool:
    return day >= since and (until is None or day < until)


def _subscribed_lines(
    usage: MeterUsage,
    subscriptions: Sequence[tuple[date, date | None, PlanVersion]],
    start: date,
    end: date,
    tax_rate: Decimal,
) -> list[Line]:
    """Each subscription's days priced with its own plan version (a plan change: both on one invoice)."""
    lines: list[Line] = []
    for since, until, plan in subscriptions:
        part: dict[tuple[str, str], int] = defaultdict(int)
        for (meter, topic, day), q in usage.items():
            if _in(day, since, until):
                part[(meter, topic)] += q
        lines.extend(rate_period(plan, part, start, end, since, until, tax_rate).lines)
    return lines


def _unpriced_lines(usage: MeterUsage) -> list[Line]:
    """Usage of an account without a subscription: one line per meter at zero, so finance sees it."""
    per: dict[str, int] = defaultdict(int)
    topics: dict[str, set[str]] = defaultdict(set)
    for (meter, topic, _), q in usage.items():
        per[meter] += q
        topics[meter].add(topic)
    zero = Decimal(0)
    return [
        Line(
            "usage",
            f"{meter} (no subscription)",
            zero,
            zero,
            meter=meter,  # type: ignore[arg-type]
            usage_topics=tuple(sorted(topics[meter])),
            quantity_raw=per[meter],
        )
        for meter in sorted(per)
    ]


def rate_account(
    by_source: Mapping[str, MeterUsage],
    subscriptions: Sequence[tuple[date, date | None, PlanVersion]],
    start: date,
    end: date,
    tax_rate: Decimal,
    order: Mapping[str, tuple[str, ...]],
) -> RatedAccount:
    """One account's lines for ``[start, end)``: its usage by source (``metered_by_source``), one
    source per quantity in ``order``, priced by ``subscriptions`` (``active_subscriptions``)."""
    usage, chosen = meter_usage(by_source, order)
    if subscriptions:
        lines = _subscribed_lines(usage, subscriptions, start, end, tax_rate)
        plan: PlanVersion | None = subscriptions[-1][2]
    else:
        lines, plan = _unpriced_lines(usage), None
    return RatedAccount(
        [PricedLine(line, chosen.get(line.meter.rsplit("_", 1)[1]) if line.meter else None) for line in lines], plan
    )


def late_usage_adjustment(now_rated: Decimal, finalized_own: Decimal, finalized_adjustments: Decimal) -> Decimal:
    """What a finalized period still owes (or is owed) after late usage: the period's total
    re-rated now (subtotal, before tax) − what its invoice billed for itself − the adjustments
    already finalized for it. Zero: nothing to bill."""
    return now_rated - finalized_own - finalized_adjustments


def adjustment_line(period: str, invoice_number: str, amount: Decimal) -> PricedLine:
    """The line billing ``amount`` (``late_usage_adjustment``) on this run's invoice, naming the
    period and invoice it adjusts."""
    line = Line("adjustment", f"Adjustment for {period} (usage after invoice {invoice_number})", amount, amount)
    return PricedLine(line, None, {"adjusts_period": period, "adjusts_invoice": invoice_number})
