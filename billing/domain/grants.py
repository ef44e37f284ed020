"""Prepaid credits and grants: the rules, pure (no I/O).

A **grant** gives an account either **money** (in the account's currency: "100.00 EUR") or
**units of one meter** as plans write them ("500 GB of consume_bytes", units of
:mod:`billing.domain.units`). Finance adds grants (who, when, why) and voids them; a grant is
never changed nor deleted.

* **Dates.** A grant is in force on the days ``[effective_on, expires_on)`` (``expires_on``
  None: no expiry; like every interval here, the expiry date is the first day *not* covered).
* **Burn order.** Among the grants that can burn, the **lowest priority number burns first**
  (priority 1 before 10; the default is 10), then the earliest expiry (no expiry last), then the
  oldest grant (lowest id) — :func:`burn_order`.
* **Unit grants reduce the billable quantity before pricing.** The usage of the grant's meter
  (the source the invoice bills from, ``sources.meter_usage``) is covered day by day, oldest day
  first (topics in name order within a day), by the grants in force on that day in burn order;
  what is covered is removed from the usage and the plan prices what is left, tiers, included
  units and all (:meth:`GrantBook.cover`). Chosen over valuing the covered units at the plan's
  price because with graduated or volume tiers a unit has no single price (the 500 GB covered
  would be worth a different amount depending on which tier they are said to come from), while
  pricing the remaining quantity is exact and explains itself: the usage line shows what was
  priced and the grant line what the grant covered. So a grant's units also come before a
  plan's included units: grants and included units on one meter add up only when the grant
  is meant for usage beyond them — a documented limit.
  Usage on a day the grant is not in force (before it is effective, on or after its expiry) is
  not covered, nor is usage no price bills that day (no subscription in force, no price of the
  plan takes its meter and topic, or only a ``flat`` one, which does not depend on quantity):
  a grant is never spent on what would cost nothing (:func:`priced_by`).
* **Money grants** are used when the invoice is cut: one in force on the period's last day is
  applied as a negative line "Grant #ID applied" **before tax**, after every other line
  (usage, adjustments for late usage, credit notes applied), for at most the subtotal left, so
  an invoice never goes below zero (:meth:`GrantBook.apply_money`). Applying money after credit
  notes keeps the credit notes' order (a credit note is a debt to the customer settled first;
  a prepaid balance is spent only on what remains).
* **Recurring grants** (``monthly``: per calendar month, the billing period) give their amount
  anew each period from the one holding ``effective_on`` until they expire; what a period left
  unused is carried into the next, up to ``rollover_limit`` (0 or none: nothing is carried);
  **what is beyond the limit lapses at the end of the period**, and a carry is capped again
  at every period (it never accumulates past the limit) — :func:`room`.
* **What is left.** What a grant can still burn on an invoice is its amount (this period's for a
  recurring one) minus what the other invoices counted burned (:func:`counted_burns`):
  every **finalized** invoice's burns (final) and the burns of **drafts of earlier periods**
  (pending: they will be final first, and a later period must not burn them again). A draft's
  own burns are recomputed each time its run is re-run; void invoices' burns count for nothing.
  A voided grant burns nothing on any run after its void.
* **Balance** (:func:`balance`): granted − finalized burns is ``left``; the drafts' burns are
  shown as ``pending`` and ``available = left − pending`` (0 when voided, expired or not yet in
  force).

Amounts: money in the currency's minor units; units are kept as raw integer bytes or counts
(``500 GB`` → ``500_000_000_000`` bytes) so covering usage is exact, and shown in the grant's unit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Final, Literal

from billing.domain.invoicing import PricedLine
from billing.domain.money import exact_arithmetic, format_money, format_quantity, minor_unit, round_money
from billing.domain.plans import PlanVersion
from billing.domain.rating import Line, taking_price
from billing.domain.sources import meter_usage
from billing.domain.units import check_unit, is_meter, unit_size
from billing.domain.usage import MeterUsage
from billing.errors import GrantError

__all__ = [
    "DEFAULT_PRIORITY",
    "RECURRENCES",
    "Burn",
    "Grant",
    "GrantBalance",
    "GrantBook",
    "RecordedBurn",
    "balance",
    "burn_order",
    "check_grant",
    "counted_burns",
    "grant_line",
    "priced_by",
    "room",
]

DEFAULT_PRIORITY: Final = 10
RECURRENCES: Final = ("monthly",)
_ZERO: Final = Decimal(0)


@dataclass(frozen=True)
class Grant:
    """A grant of money (``currency`` set, ``meter`` None) or of units of ``meter`` in ``unit``.

    ``amount`` is money in ``currency`` or units in ``unit`` (per period when ``recurrence``)."""

    id: int
    account: str
    amount: Decimal
    effective_on: date
    priority: int = DEFAULT_PRIORITY
    expires_on: date | None = None
    currency: str | None = None
    meter: str | None = None
    unit: str | None = None
    recurrence: str | None = None
    rollover_limit: Decimal | None = None
    name: str = ""
    voided: bool = False

    @property
    def kind(self) -> Literal["money", "units"]:
        return "money" if self.meter is None else "units"

    @property
    def label(self) -> str:
        return f"#{self.id}" + (f" {self.name}" if self.name else "")

    def value(self, amount: Decimal) -> Decimal:
        """``amount`` (money, or units in ``unit``) in the grant's working value: money as is,
        units as raw bytes or counts (an integer)."""
        if self.unit is None:
            return amount
        with exact_arithmetic():
            return amount * unit_size(self.unit)

    def shown(self, value: Decimal) -> str:
        """A working value as a person reads it: ``"12.50"`` (money) or ``"500"`` (units in ``unit``)."""
        if self.unit is None:
            return format_money(value, str(self.currency))
        with exact_arithmetic():
            return format_quantity(value / unit_size(self.unit))

    def in_force(self, day: date) -> bool:
        return self.effective_on <= day and (self.expires_on is None or day < self.expires_on)


def check_grant(grant: Grant, account_currency: str) -> None:
    """Every problem of a new grant at once, as one :class:`GrantError` sentence."""
    problems: list[str] = []
    amount = grant.amount
    if not amount.is_finite() or amount <= 0:
        problems.append(f"the amount must be positive, got {amount}")
    if grant.meter is None:
        if grant.unit is not None:
            problems.append("a unit needs a meter (--meter)")
        if grant.currency != account_currency:
            problems.append(f"a money grant is in the account's currency {account_currency}, not {grant.currency}")
        else:
            for what, v in (("the amount", amount), ("the rollover limit", grant.rollover_limit)):
                if v is not None and v.is_finite() and round_money(v, account_currency) != v:
                    places = minor_unit(account_currency)
                    problems.append(f"{what} {v} has more than the {places} decimals {account_currency} has")
    else:
        try:
            check_unit(grant.meter, grant.unit or "")
        except ValueError as exc:
            problems.append(str(exc))
        else:
            for what, v in (("the amount", amount), ("the rollover limit", grant.rollover_limit)):
                if v is not None and v.is_finite() and grant.value(v) != grant.value(v).to_integral_value():
                    problems.append(f"{what} {v} {grant.unit} is not a whole number of {grant.meter.split('_')[1]}")
    if not 0 <= grant.priority <= 1000:
        problems.append(f"the priority must be 0 to 1000 (lower burns first), got {grant.priority}")
    if grant.expires_on is not None and grant.expires_on <= grant.effective_on:
        problems.append(f"the grant expires ({grant.expires_on}) on or before it takes effect ({grant.effective_on})")
    if grant.recurrence is not None and grant.recurrence not in RECURRENCES:
        problems.append(f"recurrence {grant.recurrence!r} is not one of {', '.join(RECURRENCES)}")
    if grant.rollover_limit is not None:
        if grant.recurrence is None:
            problems.append("a rollover limit needs a recurrence (--recurring monthly)")
        if not grant.rollover_limit.is_finite() or grant.rollover_limit < 0:
            problems.append(f"the rollover limit must be 0 or more, got {grant.rollover_limit}")
    if problems:
        raise GrantError("; ".join(problems))


def burn_order(grants: Iterable[Grant]) -> list[Grant]:
    """Lowest priority number first, then earliest expiry (no expiry last), then oldest."""
    return sorted(grants, key=lambda g: (g.priority, g.expires_on is None, g.expires_on or date.max, g.id))


def _month_start(day: date) -> date:
    return day.replace(day=1)


def _next_month(start: date) -> date:
    return date(start.year + (start.month == 12), start.month % 12 + 1, 1)


Priced = Callable[[str, str, date], bool]
"""``(meter, topic, day) →`` whether a price bills that usage (:func:`priced_by`)."""


def priced_by(subscriptions: Sequence[tuple[date, date | None, PlanVersion]]) -> Priced:
    """Whether usage of (meter, topic) on a day is billed by a quantity price of the plan version
    subscribed that day (``invoicing.active_subscriptions``): what a unit grant may cover."""

    def priced(meter: str, topic: str, day: date) -> bool:
        for since, until, plan in subscriptions:
            if since <= day and (until is None or day < until):
                index = taking_price(plan.prices, meter, topic)
                return index is not None and plan.prices[index].model != "flat"
        return False

    return priced


@dataclass(frozen=True)
class RecordedBurn:
    """What one invoice burned of one grant (a working value), as stored on its grant line."""

    grant_id: int
    invoice_id: int
    period_start: date
    finalized: bool
    burned: Decimal


def counted_burns(
    burns: Iterable[RecordedBurn], invoice_id: int | None, period_start: date
) -> dict[int, dict[date, Decimal]]:
    """grant → period → burned, as the invoice ``invoice_id`` of ``period_start`` counts them:
    every finalized invoice's burns and those of drafts of earlier periods; never its own."""
    out: dict[int, dict[date, Decimal]] = {}
    for b in burns:
        if b.invoice_id == invoice_id or not (b.finalized or b.period_start < period_start):
            continue
        per = out.setdefault(b.grant_id, {})
        per[b.period_start] = per.get(b.period_start, _ZERO) + b.burned
    return out


def _allotment(grant: Grant, period_start: date, burned: Mapping[date, Decimal]) -> Decimal:
    """A recurring grant's amount for the period: its own plus the carry from the previous
    period (that period's allotment − its burns, capped at the rollover limit)."""
    every = grant.value(grant.amount)
    limit = _ZERO if grant.rollover_limit is None else grant.value(grant.rollover_limit)
    carry = _ZERO
    p = _month_start(grant.effective_on)
    while p < period_start:
        carry = min(limit, max(_ZERO, every + carry - burned.get(p, _ZERO)))
        p = _next_month(p)
    return every + carry


def room(grant: Grant, period_start: date, burned: Mapping[date, Decimal]) -> Decimal:
    """What ``grant`` can still burn on the invoice of the period starting ``period_start``,
    given what the other invoices counted burned per period (``counted_burns``)."""
    if grant.voided or _month_start(grant.effective_on) > period_start:
        return _ZERO
    if grant.recurrence is None:
        return max(_ZERO, grant.value(grant.amount) - sum(burned.values(), _ZERO))
    return max(_ZERO, _allotment(grant, period_start, burned) - burned.get(period_start, _ZERO))


@dataclass(frozen=True)
class Burn:
    """What one invoice burns of a grant, and what the grant has left after it (this period's,
    for a recurring grant), both working values."""

    grant: Grant
    burned: Decimal
    left: Decimal


@dataclass(frozen=True)
class GrantBook:
    """An account's grants as the invoice of ``[start, end)`` sees them: burn order, room each."""

    grants: tuple[Grant, ...]
    room: Mapping[int, Decimal]
    start: date
    end: date

    @classmethod
    def open(
        cls, grants: Iterable[Grant], counted: Mapping[int, Mapping[date, Decimal]], start: date, end: date
    ) -> GrantBook:
        usable = [g for g in burn_order(grants) if not g.voided]
        return cls(tuple(usable), {g.id: room(g, start, counted.get(g.id, {})) for g in usable}, start, end)

    def cover(
        self, by_source: Mapping[str, MeterUsage], order: Mapping[str, tuple[str, ...]], priced: Priced
    ) -> tuple[dict[str, MeterUsage], list[Burn]]:
        """The usage left for the plan to price after the unit grants (same sources, same keys:
        a covered entry becomes 0, so the source chosen per quantity does not change), and
        what each unit grant burned; only usage ``priced`` says a price bills is covered."""
        units = [g for g in self.grants if g.kind == "units" and self.room[g.id] > 0]
        out = {source: dict(usage) for source, usage in by_source.items()}
        if not units:
            return out, []
        usage, chosen = meter_usage(by_source, order)
        left = {g.id: self.room[g.id] for g in units}
        for meter, topic, day in sorted(usage, key=lambda k: (k[2], k[0], k[1])):
            key = (meter, topic, day)
            q = Decimal(usage[key])
            if not self.start <= day < self.end or not priced(meter, topic, day):
                continue
            for g in units:
                if q == 0:
                    break
                if g.meter != meter or not g.in_force(day) or left[g.id] == 0:
                    continue
                take = min(q, left[g.id])
                left[g.id] -= take
                q -= take
            out[chosen[meter.rsplit("_", 1)[1]]][key] = int(q)
        burns = [Burn(g, self.room[g.id] - left[g.id], left[g.id]) for g in units if left[g.id] != self.room[g.id]]
        return out, burns

    def apply_money(self, subtotal: Decimal, currency: str) -> list[Burn]:
        """The money grants used on an invoice whose subtotal before them is ``subtotal``: in
        burn order, those in force on the period's last day, never below zero."""
        last_day = self.end - timedelta(days=1)
        rest = max(_ZERO, subtotal)
        burns: list[Burn] = []
        for g in self.grants:
            if rest <= 0:
                break
            if g.kind != "money" or g.currency != currency or not g.in_force(last_day) or self.room[g.id] <= 0:
                continue
            take = min(rest, self.room[g.id])
            rest -= take
            burns.append(Burn(g, take, self.room[g.id] - take))
        return burns


def grant_line(burn: Burn) -> PricedLine:
    """The invoice line naming a grant applied and what it has left: for money a negative amount;
    for units an amount of 0 with the units covered as its quantity (the usage line already
    prices only what the grant left)."""
    g = burn.grant
    ref = {"grant": str(g.id), "burned": str(burn.burned), "left": str(burn.left)}
    if g.unit is None:
        currency = str(g.currency)
        text = f"Grant {g.label} applied ({g.shown(burn.left)} {currency} left)"
        line = Line("grant", text, -burn.burned, -burn.burned)
        return PricedLine(line, None, ref)
    meter = g.meter if is_meter(g.meter) else None
    left = "this period" if g.recurrence else ""
    text = (
        f"Grant {g.label} applied: {g.shown(burn.burned)} {g.unit} of {g.meter} covered "
        f"({g.shown(burn.left)} {g.unit} left{' ' + left if left else ''})"
    )
    with exact_arithmetic():
        in_unit = burn.burned / unit_size(g.unit)
    line = Line(
        "grant", text, _ZERO, _ZERO, meter=meter, quantity_raw=int(burn.burned), quantity_in_unit=in_unit, unit=g.unit
    )
    return PricedLine(line, None, ref)


@dataclass(frozen=True)
class GrantBalance:
    """A grant's balance on a day: ``granted`` (this period's allotment for a recurring grant,
    carry included), ``burned`` by finalized invoices, ``pending`` on drafts, ``left = granted −
    burned``, ``available = left − pending`` (0 unless the grant is active); working values."""

    grant: Grant
    status: Literal["active", "scheduled", "expired", "voided"]
    granted: Decimal
    burned: Decimal
    pending: Decimal
    left: Decimal
    available: Decimal


def balance(grant: Grant, burns: Sequence[RecordedBurn], on: date) -> GrantBalance:
    """``grant``'s balance on day ``on`` from every burn recorded against it (void invoices' left out)."""
    mine = [b for b in burns if b.grant_id == grant.id]
    if grant.recurrence is None:
        granted = grant.value(grant.amount)
        scope = mine
    else:
        period = _month_start(on)
        # the carry into this period counts earlier periods' burns, pending ones too (as a run does)
        earlier = counted_burns(mine, None, period).get(grant.id, {})
        granted = _allotment(grant, period, earlier)
        scope = [b for b in mine if b.period_start == period]
    burned = sum((b.burned for b in scope if b.finalized), _ZERO)
    pending = sum((b.burned for b in scope if not b.finalized), _ZERO)
    status: Literal["active", "scheduled", "expired", "voided"]
    if grant.voided:
        status = "voided"
    elif on < grant.effective_on:
        status = "scheduled"
    elif grant.expires_on is not None and on >= grant.expires_on:
        status = "expired"
    else:
        status = "active"
    left = granted - burned
    available = max(_ZERO, left - pending) if status == "active" else _ZERO
    return GrantBalance(grant, status, granted, burned, pending, left, available)
