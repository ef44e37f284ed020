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
* All amounts are Decimal; lines are rounded by ``billing.domain.money``; subtotal = sum of
  rounded lines, tax rounded once.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select, text, update

from billing.adapters.models import (
    AccountRow,
    InvoiceLineRow,
    InvoiceRow,
    PlanVersionRow,
    SubscriptionRow,
)
from billing.domain.accounts import UNASSIGNED, Attributor
from billing.domain.money import format_money, round_money
from billing.domain.plans import PlanVersion
from billing.domain.rating import Line, rate_period
from billing.domain.sources import DEFAULT_SOURCES
from billing.errors import AccountNotFound, InvoiceError, RunError
from billing.services.catalog import plan_from_document
from billing.services.invoices import finalize, invoice_ref, render_pending
from billing.services.usage import load_attributor, usage_rows

__all__ = ["PERIOD_PATTERN", "AccountBill", "Preview", "parse_period", "preview", "preview_accounts", "run_billing"]


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


@dataclass
class _Usage:
    # account → source → (meter, topic, day) → quantity
    by_account: dict[str, dict[str, dict[tuple[str, str, date], int]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    )


def _read_usage(engine: Engine, attributor: Attributor, start: date, end: date) -> _Usage:
    """The period's usage per account, source, meter, topic and UTC day (``usage.usage_rows``)."""
    return _by_meter(
        usage_rows(
            engine, datetime.combine(start, time(), UTC), datetime.combine(end, time(), UTC), attributor=attributor
        )
    )


def _by_meter(rows: Iterable[dict[str, Any]]) -> _Usage:
    """Attributed daily rows → account → source → (meter, topic, day) → quantity."""
    out = _Usage()
    for r in rows:
        per = out.by_account[r["account"]][r["source"]]
        day = date.fromisoformat(r["day"])
        for quantity in ("bytes", "records", "requests"):
            if r[quantity]:
                per[(f"{r['direction']}_{quantity}", r["topic"], day)] += r[quantity]
    return out


def _meter_usage(
    sources: dict[str, dict[tuple[str, str, date], int]], order: Mapping[str, tuple[str, ...]]
) -> tuple[dict[tuple[str, str, date], int], dict[str, str]]:
    """One source per quantity kind; returns usage by (meter, topic, day) and the source chosen."""
    chosen: dict[str, str] = {}
    usage: dict[tuple[str, str, date], int] = {}
    for quantity, preference in order.items():
        for source in preference:
            part = {k: v for k, v in sources.get(source, {}).items() if k[0].endswith("_" + quantity)}
            if part:
                chosen[quantity] = source
                usage.update(part)
                break
    return usage, chosen


def _in(day: date, since: date, until: date | None) -> bool:
    return day >= since and (until is None or day < until)


def _rate_account(
    usage: dict[tuple[str, str, date], int],
    subscriptions: list[tuple[date, date | None, PlanVersion]],
    start: date,
    end: date,
    tax_rate: Decimal,
) -> list[Line]:
    lines: list[Line] = []
    for since, until, plan in subscriptions:
        part: dict[tuple[str, str], int] = defaultdict(int)
        for (meter, topic, day), q in usage.items():
            if _in(day, since, until):
                part[(meter, topic)] += q
        rated = rate_period(plan, part, start, end, since, until, tax_rate)
        lines.extend(rated.lines)
    return lines


def _unpriced_lines(usage: dict[tuple[str, str, date], int]) -> list[Line]:
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


def _line_row(
    invoice_id: int, position: int, line: Line, source: str | None, ref: dict[str, Any] | None, start: date, end: date
) -> dict[str, Any]:
    """A line as stored; ``usage_ref`` names the usage it priced (or, for an adjustment, the
    period and invoice it adjusts)."""
    return {
        "invoice_id": invoice_id,
        "position": position,
        "kind": line.kind,
        "description": line.description,
        "meter": line.meter,
        "source": source,
        "topics": list(line.topics),
        "quantity": line.quantity_in_unit if line.quantity_in_unit is not None else line.quantity_raw,
        "unit": line.unit,
        "model": line.model,
        "amount_unrounded": line.unrounded_amount,
        "amount": line.rounded_amount,
        "breakdown": [
            {k: str(v) if isinstance(v, Decimal) else v for k, v in asdict(p).items()} for p in line.breakdown
        ],
        "usage_ref": ref
        or {
            "period": [start.isoformat(), end.isoformat()],
            "meter": line.meter,
            "source": source,
            "topic_filter": list(line.topics),
            "topics": list(line.usage_topics),
            "quantity_raw": line.quantity_raw,
        },
    }


class _Catalog:
    def __init__(self, conn: Connection) -> None:
        self.accounts = {r.code: r for r in conn.execute(select(AccountRow)).all()}
        self.plans = {
            (r.plan_code, r.version): plan_from_document(r.version, r.document)
            for r in conn.execute(select(PlanVersionRow)).all()
        }
        self.subscriptions: dict[str, list[tuple[date, date | None, str, int]]] = defaultdict(list)
        for s in conn.execute(select(SubscriptionRow).order_by(SubscriptionRow.starts_on)).all():
            self.subscriptions[s.account_code].append((s.starts_on, s.ends_on, s.plan_code, s.plan_version))

    def active(self, account: str, start: date, end: date) -> list[tuple[date, date | None, PlanVersion]]:
        out = []
        for since, until, code, version in self.subscriptions.get(account, []):
            if since < end and (until is None or until > start):
                out.append((since, until, self.plans[(code, version)]))
        return out


def _rate(
    catalog: _Catalog, usage: _Usage, account: str, start: date, end: date, order: Mapping[str, tuple[str, ...]]
) -> tuple[list[tuple[Line, str | None]], PlanVersion | None]:
    acct = catalog.accounts[account]
    meter_usage, chosen = _meter_usage(usage.by_account.get(account, {}), order)
    subs = catalog.active(account, start, end)
    if subs:
        lines = _rate_account(meter_usage, subs, start, end, acct.tax_rate)
        plan: PlanVersion | None = subs[-1][2]
    else:
        lines, plan = _unpriced_lines(meter_usage), None

    def source_of(line: Line) -> str | None:
        return chosen.get(line.meter.rsplit("_", 1)[1]) if line.meter else None

    return [(line, source_of(line)) for line in lines], plan


def _adjustments(
    conn: Connection,
    catalog: _Catalog,
    attributor: Attributor,
    past: dict[date, _Usage],
    account: str,
    before: date,
    order: Mapping[str, tuple[str, ...]],
) -> list[tuple[Line, dict[str, Any]]]:
    """Lines for late usage in periods whose invoices are already finalized."""
    # what was billed for a period: its invoice's own lines (not the adjustments it carried for
    # earlier periods) plus the finalized adjustments that named it since
    finalized = conn.execute(
        text(
            "SELECT i.period_start, i.period_end, i.number, "
            "coalesce(sum(l.amount) FILTER (WHERE l.kind <> 'adjustment'), 0) AS own "
            "FROM invoices i LEFT JOIN invoice_lines l ON l.invoice_id = i.id "
            "WHERE i.account_code = :a AND i.status = 'finalized' AND i.kind = 'standard' AND i.period_start < :before "
            "GROUP BY i.id ORDER BY i.period_start"
        ),
        {"a": account, "before": before},
    ).all()
    currency = catalog.accounts[account].currency
    out: list[tuple[Line, dict[str, Any]]] = []
    for inv in finalized:
        period = inv.period_start.strftime("%Y-%m")
        adjusted = conn.execute(
            text(
                "SELECT coalesce(sum(l.amount), 0) FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id "
                "WHERE i.account_code = :a AND i.status = 'finalized' AND l.kind = 'adjustment' "
                "AND l.usage_ref->>'adjusts_period' = :p"
            ),
            {"a": account, "p": period},
        ).scalar_one()
        usage = past.get(inv.period_start)
        if usage is None:  # read once per past period and run, not once per account
            usage = past[inv.period_start] = _read_usage(conn.engine, attributor, inv.period_start, inv.period_end)
        lines, _ = _rate(catalog, usage, account, inv.period_start, inv.period_end, order)
        now_total = sum((round_money(line.rounded_amount, currency) for line, _ in lines), Decimal(0))
        diff = now_total - Decimal(inv.own) - Decimal(adjusted)
        if diff != 0:
            line = Line("adjustment", f"Adjustment for {period} (usage after invoice {inv.number})", diff, diff)
            out.append((line, {"adjusts_period": period, "adjusts_invoice": inv.number}))
    return out


def run_billing(
    engine: Engine,
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
    with engine.connect() as conn:
        catalog = _Catalog(conn)
        attributor = load_attributor(engine)
        usage = _read_usage(engine, attributor, start, end)
    billable = sorted(
        {a for a in catalog.accounts if catalog.active(a, start, end)}
        | {a for a in usage.by_account if a != UNASSIGNED and a in catalog.accounts}
    )
    run = _Run(engine, catalog, attributor, usage, start, end, order, clock)
    results = [_bill_account(run, account) for account in progress(billable)]
    if finalize_drafts:
        for r in results:
            if r.status == "draft" and r.invoice_id is not None:
                try:
                    r.number = finalize(engine, r.invoice_id, number_prefix, clock, issuer, render=False).number
                except InvoiceError:
                    # a concurrent run finalized it first: report what it did
                    with engine.connect() as conn:
                        r.number = conn.execute(
                            select(InvoiceRow.number).where(InvoiceRow.id == r.invoice_id)
                        ).scalar_one()
                r.status = "finalized"
        # documents after numbering, in parallel; also any this period's earlier run left unrendered
        if not render:
            return results
        with engine.connect() as conn:
            ids = list(
                conn.execute(
                    select(InvoiceRow.id).where(InvoiceRow.period_start == start, InvoiceRow.status != "draft")
                ).scalars()
            )
        render_pending(engine, ids, workers=render_workers)
    return results


@dataclass
class _Run:
    """What one billing run reads once and shares between its accounts."""

    engine: Engine
    catalog: _Catalog
    attributor: Attributor
    usage: _Usage
    start: date
    end: date
    order: Mapping[str, tuple[str, ...]]
    clock: Callable[[], datetime]
    past: dict[date, _Usage] = field(default_factory=dict)  # usage of finalized periods, re-rated


def _bill_account(run: _Run, account: str) -> AccountBill:
    engine, catalog, start, end, order, clock = run.engine, run.catalog, run.start, run.end, run.order, run.clock
    acct = catalog.accounts[account]
    with engine.begin() as conn:
        # one billing run at a time per account and period: concurrent runs queue here
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"bill:{account}:{start}"})
        current = conn.execute(
            select(
                InvoiceRow.id,
                InvoiceRow.status,
                InvoiceRow.number,
                InvoiceRow.subtotal,
                InvoiceRow.tax,
                InvoiceRow.total,
            )
            .where(
                InvoiceRow.account_code == account,
                InvoiceRow.period_start == start,
                InvoiceRow.kind == "standard",
                InvoiceRow.status != "void",
            )
            # a concurrent finalize holds this row: wait, then see what it did
            .with_for_update()
        ).first()
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
        rated, plan = _rate(catalog, run.usage, account, start, end, order)
        lines: list[tuple[Line, str | None, dict[str, Any] | None]] = [(line, src, None) for line, src in rated]
        adjustments = _adjustments(conn, catalog, run.attributor, run.past, account, start, order)
        lines += [(line, None, ref) for line, ref in adjustments]
        subtotal = sum((round_money(line.rounded_amount, acct.currency) for line, _, _ in lines), Decimal(0))
        tax = round_money(subtotal * acct.tax_rate, acct.currency)
        values = {
            "currency": acct.currency,
            "tax_rate": acct.tax_rate,
            "subtotal": subtotal,
            "tax": tax,
            "total": subtotal + tax,
            "plan_code": plan.code if plan else None,
            "plan_version": plan.version if plan else None,
            "updated_at": clock(),
        }
        if current is None:
            invoice_id = conn.execute(
                insert(InvoiceRow)
                .values(account_code=account, period_start=start, period_end=end, kind="standard", **values)
                .returning(InvoiceRow.id)
            ).scalar_one()
        else:
            invoice_id = current.id
            conn.execute(update(InvoiceRow).where(InvoiceRow.id == invoice_id).values(**values))
            conn.execute(delete(InvoiceLineRow).where(InvoiceLineRow.invoice_id == invoice_id))
        rows = [_line_row(invoice_id, i, line, src, ref, start, end) for i, (line, src, ref) in enumerate(lines)]
        if rows:
            conn.execute(insert(InvoiceLineRow), rows)
        return AccountBill(account, invoice_id, "draft", acct.currency, subtotal, tax, subtotal + tax, None, len(rows))


def preview(
    engine: Engine,
    account: str,
    period: str,
    rows: Iterable[dict[str, Any]],
    source_order: Mapping[str, tuple[str, ...]] | None = None,
) -> Preview:
    """What the account's invoice for ``period`` would say now (rated, not written): month-to-date.

    ``rows``: the account's attributed daily usage rows of the period (``usage.usage_rows``).
    """
    with engine.connect() as conn:
        catalog = _Catalog(conn)
    if account not in catalog.accounts:
        raise AccountNotFound(f"there is no account {account!r}")
    return _preview(catalog, account, period, rows, source_order or DEFAULT_SOURCES)


def preview_accounts(
    engine: Engine,
    period: str,
    rows: Iterable[dict[str, Any]],
    source_order: Mapping[str, tuple[str, ...]] | None = None,
) -> dict[str, Preview]:
    """``preview`` of every account that has ``rows`` (attributed rows of many accounts), with
    the catalog read once (the live view rates every account every few minutes)."""
    with engine.connect() as conn:
        catalog = _Catalog(conn)
    per_account: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["account"] in catalog.accounts:
            per_account[r["account"]].append(r)
    order = source_order or DEFAULT_SOURCES
    return {a: _preview(catalog, a, period, rows_of, order) for a, rows_of in sorted(per_account.items())}


def _preview(
    catalog: _Catalog, account: str, period: str, rows: Iterable[dict[str, Any]], order: Mapping[str, tuple[str, ...]]
) -> Preview:
    start, end = parse_period(period)
    usage = _by_meter(r for r in rows if r["account"] == account)
    rated, plan = _rate(catalog, usage, account, start, end, order)
    acct = catalog.accounts[account]
    subtotal = sum((round_money(line.rounded_amount, acct.currency) for line, _ in rated), Decimal(0))
    tax = round_money(subtotal * acct.tax_rate, acct.currency)
    return Preview(
        currency=acct.currency,
        plan=f"{plan.code} v{plan.version}" if plan else None,
        lines=[
            {"description": line.description, "source": src, "amount": format_money(line.rounded_amount, acct.currency)}
            for line, src in rated
        ],
        subtotal=subtotal,
        tax=tax,
        total=subtotal + tax,
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
