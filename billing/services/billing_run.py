"""A billing run: every account with a subscription or usage in a period gets a draft invoice.

* Usage is read from ``usage_shard_rows`` (shards added up) for ``[period_start, period_end)``, attributed with the
  client rules as they are now (a rule fixed before finalizing re-attributes on the next run)
  and turned into meters: ``{produce,consume}_{bytes,records,requests}`` per topic.
* Each meter reads one source per account and period (docs/billing.md, "Meters and sources"):
  bytes and records from ``proxy`` when the account has any proxy usage in the period, else
  ``broker_metrics``; requests from ``audit_log`` when it has any there, else ``proxy``. Denied
  requests are never billed.
* Usage is priced by the subscription active when it happened: a period with two
  subscriptions (a plan change) prices each one's days with its own plan version, on one
  invoice. An account with usage but no subscription gets a draft listing its usage at zero so
  finance sees it.
* Re-running recomputes drafts in place (one live invoice per account, period and kind); a
  finalized invoice is never touched. Usage that arrived for an already finalized period is
  billed on this run's invoice as an adjustment line naming the original period: the period is
  re-rated now and the line is the difference from what was finalized for it so far.
* The period's threshold invoices (progressive billing) are deducted as negative lines
  "Invoiced on threshold INV-…", before credit notes (``billing.domain.progressive``).
* Credit notes settled as credit are applied as negative lines "Credit note CN-… applied"
  (``_credits``; the rules in ``billing.domain.credit_notes``), never below zero.
* Grants (``billing.services.grants.InvoiceGrants``; the rules in ``billing.domain.grants``):
  unit grants cover usage before it is priced (a line "Grant #ID applied: … covered (… left)"
  each); money grants are applied last, before tax, as negative lines "Grant #ID applied",
  never below zero. A finalized period re-rated for late usage keeps what its grants covered.
* All amounts are Decimal; lines are rounded by ``billing.domain.money``; subtotal = sum of
  rounded lines, tax rounded once.

Where it lives: the rules in :mod:`billing.domain` (source choice: ``sources.meter_usage``;
rating an account: ``invoicing.rate_account``; late usage: ``invoicing.late_usage_adjustment``;
totals: ``rating.invoice_totals``); the reads and writes behind the ports of
:mod:`billing.services.ports`. This module is the orchestration: read once, then one unit of work
(transaction) per account.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from billing.adapters.uow import Database, units_of_work
from billing.domain.accounts import UNASSIGNED, Attributor
from billing.domain.credit_notes import apply_credits, credit_line
from billing.domain.grants import balance
from billing.domain.invoicing import (
    AccountTerms,
    PricedLine,
    RatedAccount,
    Subscription,
    active_subscriptions,
    adjustment_line,
    late_usage_adjustment,
    rate_account,
)
from billing.domain.money import format_money
from billing.domain.plans import PlanVersion
from billing.domain.progressive import deduction_lines
from billing.domain.rating import invoice_totals
from billing.domain.sources import DEFAULT_SOURCES
from billing.domain.usage import MeterUsage, UsageRow, metered_by_source
from billing.errors import AccountNotFound, InvoiceError, RunError
from billing.services.grants import InvoiceGrants
from billing.services.invoices import finalize, invoice_ref, render_pending
from billing.services.ports import (
    CatalogRepository,
    CreditNoteRepository,
    DraftValues,
    InvoiceRecord,
    InvoiceRepository,
    UnitOfWork,
    UnitsOfWork,
    UsageRepository,
)

__all__ = [
    "PERIOD_PATTERN",
    "AccountBill",
    "Preview",
    "parse_period",
    "preview",
    "preview_accounts",
    "rebill_draft",
    "run_billing",
]


@dataclass
class AccountBill:
    account: str
    invoice_id: int | None
    status: str  # draft | finalized (this run) | skipped-finalized
    currency: str
    subtotal: Decimal
    tax: Decimal
    total: Decimal
    number: str | None = None
    lines: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: money as plain strings with the currency's minor digits (``"210.00"``), never floats."""
        return {
            "account": self.account,
            "invoice_id": self.invoice_id,
            "ref": self.number if self.invoice_id is None else invoice_ref(self.invoice_id, self.number),
            "number": self.number,
            "status": self.status,
            "currency": self.currency,
            "subtotal": format_money(self.subtotal, self.currency),
            "tax": format_money(self.tax, self.currency),
            "total": format_money(self.total, self.currency),
        }


# A billing period's one spelling: ASCII digits, years 1970-9998 (the end of 9999-12 is not a
# date), months 01-12. The API declares this pattern in OpenAPI and enforces it before any lookup.
PERIOD_PATTERN = r"^(19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])$"
_PERIOD = re.compile(r"([0-9]{4})-([0-9]{2})")


def parse_period(text_: str) -> tuple[date, date]:
    """``"2026-11"`` → ``[2026-11-01, 2026-12-01)``. One spelling only (ASCII digits, no spaces),
    so one period has one stored name; years 1970–9998 (the end of 9999-12 is not a date)."""
    m = _PERIOD.fullmatch(text_)
    year, month = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    if not (1970 <= year <= 9998 and 1 <= month <= 12):
        raise RunError(f"{text_!r} is not a billing period like 2026-11")
    start = date(year, month, 1)
    end = date(year + (month == 12), month % 12 + 1, 1)
    return start, end


Usage = dict[str, dict[str, MeterUsage]]  # account → source → (meter, topic, day) → quantity


def _midnight(d: date) -> datetime:
    return datetime.combine(d, time(), UTC)


def _read_usage(usage: UsageRepository, attributor: Attributor, start: date, end: date) -> Usage:
    """The period's usage per account, source, meter, topic and UTC day."""
    return metered_by_source(usage.rows(_midnight(start), _midnight(end), attributor))


@dataclass
class _Catalog:
    """The catalog as a run reads it once."""

    accounts: dict[str, AccountTerms]
    plans: dict[tuple[str, int], PlanVersion]
    subscriptions: dict[str, list[Subscription]]

    @classmethod
    def read(cls, catalog: CatalogRepository) -> _Catalog:
        subscriptions: dict[str, list[Subscription]] = {}
        for s in catalog.subscriptions():
            subscriptions.setdefault(s.account, []).append(s)
        return cls(catalog.accounts(), catalog.plan_versions(), subscriptions)

    def active(self, account: str, start: date, end: date) -> list[tuple[date, date | None, PlanVersion]]:
        return active_subscriptions(self.subscriptions.get(account, []), self.plans, start, end)

    def rate(
        self, usage: Usage, account: str, start: date, end: date, order: Mapping[str, tuple[str, ...]]
    ) -> RatedAccount:
        return rate_account(
            usage.get(account, {}), self.active(account, start, end), start, end, self.accounts[account].tax_rate, order
        )


@dataclass
class _Run:
    """What one billing run reads once and shares between its accounts."""

    uows: UnitsOfWork
    catalog: _Catalog
    attributor: Attributor
    usage: Usage
    start: date
    end: date
    order: Mapping[str, tuple[str, ...]]
    clock: Callable[[], datetime]
    past: dict[date, Usage] = field(default_factory=dict)  # usage of finalized periods, re-rated


def run_billing(
    engine: Database,
    period: str,
    finalize_drafts: bool = False,
    number_prefix: str = "INV",
    issuer: dict[str, Any] | None = None,
    source_order: Mapping[str, tuple[str, ...]] | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    progress: Callable[[Iterable[str]], Iterable[str]] = lambda it: it,
    render_workers: int | None = None,
    render: bool = True,
) -> list[AccountBill]:
    start, end = parse_period(period)
    order = source_order or DEFAULT_SOURCES
    uows = units_of_work(engine)
    with uows() as uow:
        catalog = _Catalog.read(uow.catalog)
        attributor = uow.catalog.attributor()
        usage = _read_usage(uow.usage, attributor, start, end)
    billable = sorted(
        {a for a in catalog.accounts if catalog.active(a, start, end)}
        | {a for a in usage if a != UNASSIGNED and a in catalog.accounts}
    )
    run = _Run(uows, catalog, attributor, usage, start, end, order, clock)
    results = [_bill_account(run, account) for account in progress(billable)]
    if finalize_drafts:
        for r in results:
            if r.status == "draft" and r.invoice_id is not None:
                try:
                    r.number = finalize(uows, r.invoice_id, number_prefix, clock, issuer, render=False).number
                except InvoiceError:
                    # a concurrent run finalized it first: report what it did
                    with uows() as uow:
                        r.number = uow.invoices.find(r.invoice_id).number
                r.status = "finalized"
        # documents after numbering, in parallel; also any this period's earlier run left unrendered
        if not render:
            return results
        with uows() as uow:
            ids = uow.invoices.ids_not_draft(start)
        render_pending(uows, ids, workers=render_workers)
    return results


def rebill_draft(
    engine: Database,
    period: str,
    account: str,
    source_order: Mapping[str, tuple[str, ...]] | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> AccountBill | None:
    """Recompute ``account``'s draft of ``period`` in place, as a run would; nothing if it has no
    draft (none, or finalized). A threshold invoice just issued is deducted on the draft at once
    (``billing.services.progressive``), so finalizing the draft by itself never bills twice."""
    start, end = parse_period(period)
    uows = units_of_work(engine)
    with uows() as uow:
        current = uow.invoices.current(account, start)
        if current is None or current.status != "draft":
            return None
        catalog = _Catalog.read(uow.catalog)
        attributor = uow.catalog.attributor()
        rows = uow.usage.rows(_midnight(start), _midnight(end), attributor, account)
    run = _Run(uows, catalog, attributor, metered_by_source(rows), start, end, source_order or DEFAULT_SOURCES, clock)
    return _bill_account(run, account)


def _adjustments(
    run: _Run, usage: UsageRepository, invoices: InvoiceRepository, account: str, grants: InvoiceGrants
) -> list[PricedLine]:
    """Lines for late usage in periods whose invoices are already finalized (what their unit
    grants covered stays covered: ``InvoiceGrants.finalized_cover``)."""
    currency = run.catalog.accounts[account].currency
    out: list[PricedLine] = []
    for inv in invoices.finalized_periods(account, run.start):
        period = inv.period_start.strftime("%Y-%m")
        adjusted = invoices.finalized_adjustments(account, period)
        past = run.past.get(inv.period_start)
        if past is None:  # read once per past period and run, not once per account
            past = run.past[inv.period_start] = _read_usage(usage, run.attributor, inv.period_start, inv.period_end)
        subscribed = run.catalog.active(account, inv.period_start, inv.period_end)
        covered = grants.finalized_cover(inv.period_start, inv.period_end, past.get(account, {}), run.order, subscribed)
        rated = run.catalog.rate({account: covered}, account, inv.period_start, inv.period_end, run.order)
        now_rated = invoice_totals((p.line.rounded_amount for p in rated.lines), Decimal(0), currency).subtotal
        diff = late_usage_adjustment(now_rated, inv.own, adjusted)
        if diff != 0:
            out.append(adjustment_line(period, inv.number, diff))
    return out


def _credits(
    credit_notes: CreditNoteRepository,
    account: str,
    start: date,
    current: InvoiceRecord | None,
    lines: list[PricedLine],
    currency: str,
) -> list[PricedLine]:
    """Credit notes settled as credit, applied to this invoice as negative lines (oldest first,
    never below zero; the rest stays for the next invoice): ``domain.credit_notes.apply_credits``."""
    # a run of another period of this account may be applying the same credits: one at a time
    credit_notes.lock_open_credits(account)
    open_credits = credit_notes.open_credits(account, start, None if current is None else current.id)
    if not open_credits:
        return []
    before = invoice_totals((p.line.rounded_amount for p in lines), Decimal(0), currency).subtotal
    return [credit_line(number, amount) for number, amount in apply_credits(before, open_credits)]


def _invoice_lines(
    run: _Run, uow: UnitOfWork, account: str, current: InvoiceRecord | None
) -> tuple[list[PricedLine], RatedAccount, InvoiceGrants]:
    """The lines of ``account``'s invoice of the run's period as it would be written now (its
    draft ``current``, or None for a new one): unit grants cover the usage, the plans rate it,
    then late usage adjustments, threshold deductions, credit notes and money grants."""
    start, end = run.start, run.end
    currency = run.catalog.accounts[account].currency
    grants = InvoiceGrants.read(uow.grants, account, start, end, None if current is None else current.id)
    usage, grant_lines = grants.cover(run.usage.get(account, {}), run.order, run.catalog.active(account, start, end))
    rated = run.catalog.rate({account: usage}, account, start, end, run.order)
    lines = rated.lines + grant_lines + _adjustments(run, uow.usage, uow.invoices, account, grants)
    lines += deduction_lines(uow.invoices.threshold_invoices(account, start))  # domain.progressive
    lines += _credits(uow.credit_notes, account, start, current, lines, currency)
    lines += grants.money_lines(lines, currency)
    return lines, rated, grants


def projected_money(
    engine: Database,
    period: str,
    accounts: Iterable[str],
    source_order: Mapping[str, tuple[str, ...]] | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> dict[str, tuple[Decimal, str]]:
    """account → (the money its grants would have left once its invoice of ``period``, rated now,
    is cut; its currency): the money grants' balance without this period's draft, minus what the
    invoice as it would be written now burns of them (``_invoice_lines``: unit grants, credit
    notes and threshold deductions first). Nothing is written. A finalized invoice of the period
    burned what it burned: the balance as it stands. Accounts without money grants are left out."""
    start, end = parse_period(period)
    uows = units_of_work(engine)
    with uows() as uow:
        catalog = _Catalog.read(uow.catalog)
        attributor = uow.catalog.attributor()
        wanted = [a for a in accounts if a in catalog.accounts]
        rows = [r for a in wanted for r in uow.usage.rows(_midnight(start), _midnight(end), attributor, a)]
    run = _Run(uows, catalog, attributor, metered_by_source(rows), start, end, source_order or DEFAULT_SOURCES, clock)
    on = min(clock().date(), end - timedelta(days=1))
    out: dict[str, tuple[Decimal, str]] = {}
    for account in wanted:
        currency = catalog.accounts[account].currency
        with uows() as uow:
            current = uow.invoices.current(account, start)
            if current is not None and current.status == "finalized":
                lines: list[PricedLine] = []
                grants = InvoiceGrants.read(uow.grants, account, start, end, current.id)
                mine: int | None = None
            else:
                lines, _, grants = _invoice_lines(run, uow, account, current)
                mine = None if current is None else current.id
        money = [g for g in grants.grants if g.kind == "money"]
        if not money:
            continue
        others = [b for b in grants.burns if b.invoice_id != mine]
        before = sum((balance(g, others, on).available for g in money), Decimal(0))
        burned = -sum((p.line.rounded_amount for p in lines if p.line.kind == "grant"), Decimal(0))
        out[account] = (before - burned, currency)
    return out


def _bill_account(run: _Run, account: str) -> AccountBill:
    start, end = run.start, run.end
    acct = run.catalog.accounts[account]
    with run.uows() as uow:
        uow.invoices.lock_run(account, start)
        current = uow.invoices.current(account, start)
        if current is not None and current.status == "finalized":
            return AccountBill(
                account,
                current.id,
                "skipped-finalized",
                acct.currency,
                current.subtotal,
                current.tax,
                current.total,
                current.number,
            )
        lines, rated, _ = _invoice_lines(run, uow, account, current)
        totals = invoice_totals((p.line.rounded_amount for p in lines), acct.tax_rate, acct.currency)
        plan = rated.plan
        values = DraftValues(
            currency=acct.currency,
            tax_rate=acct.tax_rate,
            subtotal=totals.subtotal,
            tax=totals.tax,
            total=totals.total,
            plan_code=plan.code if plan else None,
            plan_version=plan.version if plan else None,
            updated_at=run.clock(),
        )
        if current is None:
            invoice_id = uow.invoices.insert_draft(account, start, end, values)
        else:
            invoice_id = current.id
            uow.invoices.update_draft(invoice_id, values)
        count = uow.invoices.replace_lines(invoice_id, lines, start, end)
        return AccountBill(
            account, invoice_id, "draft", acct.currency, totals.subtotal, totals.tax, totals.total, None, count
        )


def preview(
    engine: Database,
    account: str,
    period: str,
    rows: Iterable[UsageRow],
    source_order: Mapping[str, tuple[str, ...]] | None = None,
) -> Preview:
    """What the account's invoice for ``period`` would say now (rated, not written): month-to-date.

    ``rows``: the account's attributed daily usage rows of the period (``usage.read_usage``).
    """
    with units_of_work(engine)() as uow:
        catalog = _Catalog.read(uow.catalog)
    if account not in catalog.accounts:
        raise AccountNotFound(f"there is no account {account!r}")
    typed = [r for r in rows if r.account == account]
    return _preview(catalog, account, period, typed, source_order or DEFAULT_SOURCES)


def preview_accounts(
    engine: Database,
    period: str,
    rows: Iterable[UsageRow],
    source_order: Mapping[str, tuple[str, ...]] | None = None,
) -> dict[str, Preview]:
    """``preview`` of every account that has ``rows`` (attributed rows of many accounts), with
    the catalog read once (the live view rates every account every few minutes)."""
    with units_of_work(engine)() as uow:
        catalog = _Catalog.read(uow.catalog)
    per_account: dict[str, list[UsageRow]] = {}
    for r in rows:
        if r.account in catalog.accounts:
            per_account.setdefault(r.account, []).append(r)
    order = source_order or DEFAULT_SOURCES
    return {a: _preview(catalog, a, period, rows_of, order) for a, rows_of in sorted(per_account.items())}


def _preview(
    catalog: _Catalog, account: str, period: str, rows: list[UsageRow], order: Mapping[str, tuple[str, ...]]
) -> Preview:
    start, end = parse_period(period)
    rated = catalog.rate(metered_by_source(rows), account, start, end, order)
    acct = catalog.accounts[account]
    totals = invoice_totals((p.line.rounded_amount for p in rated.lines), acct.tax_rate, acct.currency)
    plan = rated.plan
    return Preview(
        currency=acct.currency,
        plan=f"{plan.code} v{plan.version}" if plan else None,
        lines=[
            {
                "description": p.line.description,
                "source": p.source,
                "amount": format_money(p.line.rounded_amount, acct.currency),
            }
            for p in rated.lines
        ],
        subtotal=totals.subtotal,
        tax=totals.tax,
        total=totals.total,
    )


@dataclass(frozen=True)
class Preview:
    """A period rated now, without writing anything (statements: the rated amount so far)."""

    currency: str
    plan: str | None
    lines: list[dict[str, Any]]
    subtotal: Decimal
    tax: Decimal
    total: Decimal
