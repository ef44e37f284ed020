"""Threshold invoices (progressive billing): the check that issues them mid-period.

:func:`check_thresholds` rates every account's usage of a period so far and, for each account
whose plan sets ``threshold_invoice`` and whose un-invoiced usage reached it
(:func:`billing.domain.progressive.threshold_due`), issues a threshold invoice: a draft of kind
``threshold`` numbered and frozen by :func:`billing.services.invoices.finalize` in the same
transaction (the one gapless sequence, the ``invoice.finalized`` webhook event, emailed by
``invoices send`` with the period's other finalized invoices), then rendered like a billing
run's. The month-end billing run deducts them (``billing_run._bill_account``).

Decided here:

* **Which plan.** The threshold is the plan's of the account's last subscription active in the
  period (the one a plan change moves to), as the invoice's plan is.
* **Idempotent and one at a time.** Each account is checked under the billing run's lock of its
  account and period (``lock_run``): a check and a run, or two checks, never interleave, and a
  second check finds the usage invoiced (nothing new is issued until ``amount`` more is used).
* **When not.** Not once the period's final invoice is finalized (late usage becomes an
  adjustment line, ``billing.domain.invoicing``), and not for a period that has ended
  (:class:`~billing.errors.RunError`): its final invoice bills the rest.
* **A draft of the final invoice** written before (a mid-month ``bill``) is recomputed at once
  after the threshold invoice commits (``billing_run.rebill_draft``), so it carries the deduction
  and finalizing it by itself (``invoices finalize``) never bills twice. Only a finalize of that
  draft in the instant between the two transactions would miss it.
* **Grants.** Unit grants cover the usage before it is rated, day by day as the final invoice
  covers it (``billing.services.grants.InvoiceGrants``), so a threshold invoice bills only what
  no grant covers and the final invoice's deduction matches; the threshold invoice records no
  burn of its own (the final invoice of the period records the period's burns, so a balance
  shows a threshold invoice's coverage once the period is billed). Money grants are applied on
  the period's final invoice only (they must be in force on its last day).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from types import TracebackType
from typing import Any, cast

from billing.adapters.uow import Database, units_of_work
from billing.domain.invoicing import active_subscriptions, rate_account
from billing.domain.money import format_money
from billing.domain.progressive import threshold_due
from billing.domain.rating import invoice_totals
from billing.domain.sources import DEFAULT_SOURCES
from billing.domain.usage import metered_by_source
from billing.errors import RunError
from billing.services.billing_run import parse_period, rebill_draft
from billing.services.grants import InvoiceGrants
from billing.services.invoices import finalize, render_pending
from billing.services.ports import DraftValues, UnitOfWork, UnitsOfWork

__all__ = ["ThresholdIssued", "check_thresholds", "current_period"]


@dataclass(frozen=True)
class ThresholdIssued:
    account: str
    invoice_id: int
    number: str
    currency: str
    subtotal: Decimal
    tax: Decimal
    total: Decimal

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: money as plain strings with the currency's minor digits."""
        money = {k: format_money(getattr(self, k), self.currency) for k in ("subtotal", "tax", "total")}
        return {"account": self.account, "number": self.number, "currency": self.currency, **money}


class _Joined:
    """The caller's unit of work entered again: ``finalize`` numbers the draft in the caller's
    transaction (it commits or rolls back with the draft)."""

    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow

    def __enter__(self) -> UnitOfWork:
        return self.uow

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return None


def _joined(uow: UnitOfWork) -> UnitsOfWork:
    return lambda: cast(UnitOfWork, _Joined(uow))


def current_period(now: datetime) -> str:
    """The billing period ``now`` is in (``2026-11``)."""
    return now.strftime("%Y-%m")


def _midnight(d: date) -> datetime:
    return datetime.combine(d, time(), UTC)


def check_thresholds(
    engine: Database,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    period: str | None = None,
    number_prefix: str = "INV",
    issuer: dict[str, Any] | None = None,
    source_order: Mapping[str, tuple[str, ...]] | None = None,
    render: bool = True,
) -> list[ThresholdIssued]:
    """Issue the threshold invoices due now in ``period`` (default: the clock's); returns them."""
    now = clock()
    period = period or current_period(now)
    start, end = parse_period(period)
    if now.date() >= end:
        raise RunError(f"{period} has ended: its final invoice bills the rest (streamtoll bill --period {period})")
    order = source_order or DEFAULT_SOURCES
    uows = units_of_work(engine)
    with uows() as uow:
        accounts = uow.catalog.accounts()
        plans = uow.catalog.plan_versions()
        subscriptions = uow.catalog.subscriptions()
        # no plan in force sets a threshold (the usual case, every round of `streamtoll jobs`): read no usage
        if not any(plans[(s.plan_code, s.plan_version)].threshold_invoice is not None for s in subscriptions):
            return []
        usage = metered_by_source(uow.usage.rows(_midnight(start), _midnight(end), uow.catalog.attributor()))
    issued: list[ThresholdIssued] = []
    stale: list[str] = []  # accounts whose draft of the period predates their new threshold invoice
    for code in sorted(accounts):
        active = active_subscriptions([s for s in subscriptions if s.account == code], plans, start, end)
        if not active or active[-1][2].threshold_invoice is None:
            continue
        acct = accounts[code]
        with uows() as uow:
            uow.invoices.lock_run(code, start)
            final = uow.invoices.current(code, start)
            if final is not None and final.status != "draft":
                continue
            # unit grants cover the usage as the period's final invoice will (its deduction is
            # then exactly what was billed here); money grants wait for the final invoice
            grants = InvoiceGrants.read(uow.grants, code, start, end, None)
            covered, _ = grants.cover(usage.get(code, {}), order, active)
            rated = rate_account(covered, active, start, end, acct.tax_rate, order)
            plan = active[-1][2]
            lines = threshold_due(
                plan.threshold_invoice, rated.lines, uow.invoices.threshold_invoices(code, start), acct.currency
            )
            if not lines:
                continue
            totals = invoice_totals((p.line.rounded_amount for p in lines), acct.tax_rate, acct.currency)
            values = DraftValues(
                currency=acct.currency,
                tax_rate=acct.tax_rate,
                subtotal=totals.subtotal,
                tax=totals.tax,
                total=totals.total,
                plan_code=plan.code,
                plan_version=plan.version,
                updated_at=now,
            )
            invoice_id = uow.invoices.insert_draft(code, start, end, values, kind="threshold")
            uow.invoices.replace_lines(invoice_id, lines, start, end)
            done = finalize(_joined(uow), invoice_id, number_prefix, clock, issuer, render=False)
            issued.append(
                ThresholdIssued(code, invoice_id, done.number, acct.currency, totals.subtotal, totals.tax, totals.total)
            )
            if final is not None:
                stale.append(code)
    for code in stale:
        rebill_draft(uows, period, code, order, clock)
    if render and issued:
        render_pending(uows, [i.invoice_id for i in issued], workers=1)
    return issued
