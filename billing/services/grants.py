"""Prepaid credits and grants: add, void, list, an account's balance, and the grants an invoice burns.

* Finance adds a grant to an account (money in the account's currency, or units of one meter in
  a unit plans use: ``500 GB`` of ``consume_bytes``) with a reason, and who added it; it voids
  one with a reason (a voided grant burns nothing on any later run; what finalized invoices
  burned of it stays burned). A grant is never changed nor deleted.
* The rules (burn order, rollover, what is left, how unit and money grants apply) are
  :mod:`billing.domain.grants`'; :class:`InvoiceGrants` is how the billing run uses them
  (``billing.services.billing_run._bill_account``): read the account's grants and the burns the
  other invoices recorded, cover the usage, add the money lines, and re-cover a finalized
  period's usage the same way when late usage re-rates it.
* Balances are reported as of a day (today by default): per grant ``granted``, ``burned``
  (finalized invoices), ``pending`` (drafts), ``left`` and ``available``, in the grant's unit
  or currency; money as plain text with the currency's minor digits.

Each function takes an engine or a factory of units of work (unit tests pass fakes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from billing.adapters.uow import Database, units_of_work
from billing.domain.grants import (
    DEFAULT_PRIORITY,
    Grant,
    GrantBook,
    RecordedBurn,
    balance,
    burn_order,
    check_grant,
    counted_burns,
    grant_line,
    priced_by,
    room,
)
from billing.domain.invoicing import PricedLine
from billing.domain.money import format_money
from billing.domain.plans import PlanVersion
from billing.domain.rating import invoice_totals
from billing.domain.usage import MeterUsage
from billing.errors import AccountNotFound, GrantError
from billing.services.ports import GrantRecord, GrantRepository

__all__ = ["InvoiceGrants", "account_balance", "add_grant", "list_grants", "prepaid_units", "void_grant"]


Subscribed = Sequence[tuple[date, date | None, PlanVersion]]


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class InvoiceGrants:
    """An account's grants as one invoice (``[start, end)``, ``invoice_id`` None: a new draft) burns them."""

    grants: tuple[Grant, ...]
    burns: tuple[RecordedBurn, ...]
    book: GrantBook

    @classmethod
    def read(cls, repo: GrantRepository, account: str, start: date, end: date, invoice_id: int | None) -> InvoiceGrants:
        # a run of another period of this account may be burning the same grants: one at a time
        repo.lock_account(account)
        grants = tuple(r.grant for r in repo.listing(account))
        burns = tuple(repo.burns(account)) if grants else ()
        return cls(grants, burns, GrantBook.open(grants, counted_burns(burns, invoice_id, start), start, end))

    def cover(
        self, by_source: Mapping[str, MeterUsage], order: Mapping[str, tuple[str, ...]], subscriptions: Subscribed
    ) -> tuple[dict[str, MeterUsage], list[PricedLine]]:
        """The usage left to price after the unit grants, and one line per unit grant applied
        (``subscriptions``: ``invoicing.active_subscriptions`` of the period)."""
        usage, burns = self.book.cover(by_source, order, priced_by(subscriptions))
        return usage, [grant_line(b) for b in burns]

    def money_lines(self, lines: Sequence[PricedLine], currency: str) -> list[PricedLine]:
        """One negative line per money grant applied to an invoice of ``lines`` (every other line
        already there), for at most its subtotal."""
        subtotal = invoice_totals((p.line.rounded_amount for p in lines), Decimal(0), currency).subtotal
        return [grant_line(b) for b in self.book.apply_money(subtotal, currency)]

    def finalized_cover(
        self,
        start: date,
        end: date,
        by_source: Mapping[str, MeterUsage],
        order: Mapping[str, tuple[str, ...]],
        subscriptions: Subscribed,
    ) -> dict[str, MeterUsage]:
        """A finalized period's usage (re-read for late usage) with what its invoice's unit grants
        covered taken out again: the same units of the same grants, in the same order, so late
        usage is priced on top of what was finalized, never the covered units a second time."""
        burned: dict[int, Decimal] = {}
        for b in self.burns:
            if b.finalized and b.period_start == start:
                burned[b.grant_id] = burned.get(b.grant_id, Decimal(0)) + b.burned
        units = [g for g in burn_order(self.grants) if g.id in burned and g.kind == "units"]
        if not units:
            return {source: dict(usage) for source, usage in by_source.items()}
        return GrantBook(tuple(units), burned, start, end).cover(by_source, order, priced_by(subscriptions))[0]


def _view(record: GrantRecord, burns: Sequence[RecordedBurn], on: date) -> dict[str, Any]:
    g = record.grant
    b = balance(g, burns, on)
    return {
        "id": g.id,
        "account": g.account,
        "name": g.name,
        "kind": g.kind,
        "currency": g.currency,
        "meter": g.meter,
        "unit": g.unit,
        "amount": g.shown(g.value(g.amount)),
        "priority": g.priority,
        "effective_on": g.effective_on.isoformat(),
        "expires_on": None if g.expires_on is None else g.expires_on.isoformat(),
        "recurrence": g.recurrence,
        "rollover_limit": None if g.rollover_limit is None else g.shown(g.value(g.rollover_limit)),
        "reason": record.reason,
        "created_by": record.created_by,
        "created_at": record.created_at.isoformat(),
        "voided_at": None if record.voided_at is None else record.voided_at.isoformat(),
        "voided_by": record.voided_by,
        "void_reason": record.void_reason,
        "status": b.status,
        "granted": g.shown(b.granted),
        "burned": g.shown(b.burned),
        "pending": g.shown(b.pending),
        "left": g.shown(b.left),
        "available": g.shown(b.available),
    }


def add_grant(
    engine: Database,
    account: str,
    *,
    reason: str,
    created_by: str,
    amount: Decimal | None = None,
    units: Decimal | None = None,
    meter: str | None = None,
    unit: str | None = None,
    priority: int = DEFAULT_PRIORITY,
    effective_on: date | None = None,
    expires_on: date | None = None,
    recurrence: str | None = None,
    rollover_limit: Decimal | None = None,
    name: str = "",
    clock: Callable[[], datetime] = _now,
) -> dict[str, Any]:
    """Add a grant of money (``amount``) or of ``units`` of ``meter`` in ``unit``; returns its view."""
    if (amount is None) == (units is None):
        raise GrantError("give either an amount of money or units of a meter, not both")
    if amount is not None and (meter is not None or unit is not None):
        raise GrantError("a meter and a unit go with units, not with an amount of money")
    if units is not None and (meter is None or unit is None):
        raise GrantError("units need a meter and a unit (e.g. --meter consume_bytes --unit GB)")
    if not reason.strip():
        raise GrantError("a grant needs a reason")
    now = clock()
    with units_of_work(engine)() as uow:
        terms = uow.catalog.accounts().get(account)
        if terms is None:
            raise AccountNotFound(f"there is no account {account!r}")
        grant = Grant(
            id=0,
            account=account,
            amount=amount if amount is not None else units,  # type: ignore[arg-type]
            effective_on=effective_on or now.date(),
            priority=priority,
            expires_on=expires_on,
            currency=terms.currency if amount is not None else None,
            meter=meter if units is not None else None,
            unit=unit if units is not None else None,
            recurrence=recurrence,
            rollover_limit=rollover_limit,
            name=name,
        )
        check_grant(grant, terms.currency)
        grant_id = uow.grants.insert(grant, reason.strip(), created_by, now)
        return _view(uow.grants.find(grant_id), [], now.date())


def void_grant(
    engine: Database, grant_id: int, *, reason: str, voided_by: str, clock: Callable[[], datetime] = _now
) -> dict[str, Any]:
    """Void a grant (once, with a reason): it burns nothing on later runs; returns its view."""
    if not reason.strip():
        raise GrantError("voiding a grant needs a reason")
    now = clock()
    with units_of_work(engine)() as uow:
        found = uow.grants.find(grant_id)
        if found.grant.voided:
            raise GrantError(f"grant {grant_id} is already voided")
        uow.grants.void(grant_id, voided_by, reason.strip(), now)
        return _view(uow.grants.find(grant_id), uow.grants.burns(found.grant.account), now.date())


def list_grants(engine: Database, account: str | None = None, on: date | None = None) -> list[dict[str, Any]]:
    """Grants in the order they were added (one account's when given), each with its balance on ``on``."""
    day = on or _now().date()
    with units_of_work(engine)() as uow:
        records = uow.grants.listing(account)
        burns: dict[str, list[RecordedBurn]] = {}
        for r in records:
            if r.grant.account not in burns:
                burns[r.grant.account] = uow.grants.burns(r.grant.account)
        return [_view(r, burns[r.grant.account], day) for r in records]


def account_balance(engine: Database, account: str, on: date | None = None) -> dict[str, Any]:
    """An account's balance on ``on`` (today by default): its money available across money grants
    in force, and every grant with its own balance."""
    day = on or _now().date()
    with units_of_work(engine)() as uow:
        terms = uow.catalog.accounts().get(account)
        if terms is None:
            raise AccountNotFound(f"there is no account {account!r}")
        records = uow.grants.listing(account)
        burns = uow.grants.burns(account)
    money = sum(
        (balance(r.grant, burns, day).available for r in records if r.grant.kind == "money"),
        Decimal(0),
    )
    return {
        "account": account,
        "on": day.isoformat(),
        "currency": terms.currency,
        "money_available": format_money(money, terms.currency),
        "grants": [_view(r, burns, day) for r in records],
    }


def prepaid_units(repo: GrantRepository, account: str, on: date) -> dict[str, int]:
    """meter → the base units ``account``'s unit grants had left at the start of ``on``'s month
    (what the caps fold's month-to-date usage is compared with: ``domain.access.prepaid_caps``).

    Counts the grants in force on ``on`` (not voided), each with what it could burn on this
    month's invoice before any of this month's usage: the burns of finalized invoices and of
    earlier periods' drafts, never this month's draft. A meter the account holds a unit grant of
    that is not in force (expired, not yet effective) appears with 0: at zero the policy applies."""
    records = [r for r in repo.listing(account) if r.grant.kind == "units" and not r.grant.voided]
    if not records:
        return {}
    period = on.replace(day=1)
    burns = [b for b in repo.burns(account) if b.period_start != period]
    counted = counted_burns(burns, None, period)
    out: dict[str, int] = {}
    for r in records:
        g = r.grant
        meter = str(g.meter)
        left = room(g, period, counted.get(g.id, {})) if g.in_force(on) else Decimal(0)
        out[meter] = out.get(meter, 0) + int(left)
    return out
