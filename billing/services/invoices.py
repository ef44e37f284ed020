"""The invoice lifecycle: draft → finalized (numbered, frozen) → void.

* Numbers are allocated only at finalize, as ``PREFIX-YEAR-NNNNNN``, sequential per prefix and
  year. The counter row is incremented in the same transaction that finalizes the invoice, so
  concurrent finalizers queue on its row lock and a rolled-back finalize gives its number back:
  no gaps, no duplicates.
* Finalizing freezes a snapshot (account block, lines, totals, dates) that documents render
  from; the database refuses any later change of amounts, lines, number or snapshot.
* A finalized invoice is corrected by voiding it (with a reason), never by editing it.
* Amounts leave as plain text with the currency's minor digits (``"210.00"``; unrounded ones
  keep their digits), quantities as plain decimals (``billing.domain.money.format_money`` and
  ``format_quantity``). Snapshots frozen before that (``"2.1E+2"``, ``"0"``) are shown the same
  way when read (``invoice_snapshot_view``); the stored snapshot and documents stay as they are.
* Documents (HTML and PDF) render from the snapshot alone (it holds the issuer block too), so
  they can be rendered after the numbering transaction: a billing run numbers its drafts in
  short transactions, then renders in a pool of processes (both cores) and stores each document
  once (the database accepts html/pdf only while they are empty). An invoice finalized but not
  yet rendered (a crash in between) is rendered by the next ``bill --finalize`` for its period,
  or when its PDF is first asked for — the same bytes either way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, select, text, update

from billing.adapters.models import AccountRow, InvoiceLineRow, InvoiceRow
from billing.adapters.render import render_invoice
from billing.domain.documents import invoice_snapshot_view
from billing.domain.money import format_money
from billing.errors import NotFound
from billing.settings import BillingSettings

__all__ = [
    "PAYMENT_TERMS_DAYS",
    "InvoiceError",
    "InvoiceNotFound",
    "finalize",
    "invoice_pdf",
    "invoice_view",
    "list_invoices",
    "render_pending",
    "void",
]

PAYMENT_TERMS_DAYS = 30
DEFAULT_ISSUER = BillingSettings().issuer


class InvoiceError(Exception):
    """An invoice operation is not possible (unknown invoice, wrong status …); one sentence."""


class InvoiceNotFound(InvoiceError, NotFound):
    """There is no such invoice."""


@dataclass(frozen=True)
class Finalized:
    id: int
    number: str
    account_code: str
    total: Decimal
    currency: str


def _now() -> datetime:
    return datetime.now(UTC)


def allocate_number(conn: Connection, prefix: str, year: int) -> str:
    last = conn.execute(
        text(
            "INSERT INTO invoice_numbers (prefix, year, last) VALUES (:prefix, :year, 1) "
            "ON CONFLICT (prefix, year) DO UPDATE SET last = invoice_numbers.last + 1 RETURNING last"
        ),
        {"prefix": prefix, "year": year},
    ).scalar_one()
    return f"{prefix}-{year}-{last:06d}"


def _lines(conn: Connection, invoice_id: int) -> list[dict[str, Any]]:
    """The lines, numbers still ``Decimal``: ``invoice_snapshot_view`` writes them as text."""
    rows = conn.execute(
        select(InvoiceLineRow).where(InvoiceLineRow.invoice_id == invoice_id).order_by(InvoiceLineRow.position)
    ).all()
    return [
        {
            "position": r.position,
            "kind": r.kind,
            "description": r.description,
            "meter": r.meter,
            "source": r.source,
            "topics": r.topics,
            "quantity": r.quantity,
            "unit": r.unit,
            "model": r.model,
            "amount_unrounded": r.amount_unrounded,
            "amount": r.amount,
            "breakdown": r.breakdown,
            "usage_ref": r.usage_ref,
        }
        for r in rows
    ]


def finalize(
    engine: Engine,
    invoice_id: int,
    prefix: str,
    clock: Callable[[], datetime] = _now,
    issuer: dict[str, Any] | None = None,
    render: bool = True,
) -> Finalized:
    """Number and freeze one draft in one transaction, and render its documents in it too unless
    ``render`` is False (then :func:`render_pending` does, later; see the module docstring)."""
    with engine.begin() as conn:
        inv = conn.execute(select(InvoiceRow).where(InvoiceRow.id == invoice_id).with_for_update()).first()
        if inv is None:
            raise InvoiceNotFound(f"there is no invoice with id {invoice_id}")
        if inv.status != "draft":
            raise InvoiceError(f"invoice {inv.number} is already {inv.status}")
        acct = conn.execute(select(AccountRow).where(AccountRow.code == inv.account_code)).one()
        now = clock()
        issued = now.date()
        number = allocate_number(conn, prefix, issued.year)
        due = issued + timedelta(days=PAYMENT_TERMS_DAYS)
        snapshot = invoice_snapshot_view(
            {
                "number": number,
                "account": {
                    "code": acct.code,
                    "name": acct.name,
                    "email": acct.email,
                    "address": acct.address,
                },
                "period": {"start": inv.period_start.isoformat(), "end": inv.period_end.isoformat()},
                "kind": inv.kind,
                "currency": inv.currency,
                "plan": {"code": inv.plan_code, "version": inv.plan_version},
                "lines": _lines(conn, invoice_id),
                "subtotal": inv.subtotal,
                "tax_rate": inv.tax_rate,
                "tax": inv.tax,
                "total": inv.total,
                "issued_on": issued.isoformat(),
                "due_on": due.isoformat(),
                "payment_terms_days": PAYMENT_TERMS_DAYS,
                "issuer": issuer or DEFAULT_ISSUER,
            }
        )
        html, pdf = render_invoice(snapshot, snapshot["issuer"]) if render else (None, None)
        conn.execute(
            update(InvoiceRow)
            .where(InvoiceRow.id == invoice_id)
            .values(
                status="finalized",
                number=number,
                snapshot=snapshot,
                html=html,
                pdf=pdf,
                issued_on=issued,
                due_on=due,
                finalized_at=now,
                updated_at=now,
            )
        )
        return Finalized(invoice_id, number, inv.account_code, inv.total, inv.currency)


def void(engine: Engine, number: str, reason: str, clock: Callable[[], datetime] = _now) -> None:
    if not reason.strip():
        raise InvoiceError("give a reason to void an invoice")
    with engine.begin() as conn:
        inv = conn.execute(select(InvoiceRow.status).where(InvoiceRow.number == number).with_for_update()).first()
        if inv is None:
            raise InvoiceNotFound(f"there is no invoice numbered {number}")
        if inv.status != "finalized":
            raise InvoiceError(f"invoice {number} is {inv.status}; only a finalized invoice can be voided")
        now = clock()
        conn.execute(
            update(InvoiceRow)
            .where(InvoiceRow.number == number)
            .values(status="void", void_reason=reason.strip(), voided_at=now, updated_at=now)
        )


def list_invoices(
    engine: Engine, period_start: date | None = None, account: str | None = None, status: str | None = None
) -> list[dict[str, Any]]:
    stmt = select(InvoiceRow).order_by(InvoiceRow.period_start, InvoiceRow.account_code, InvoiceRow.id)
    if period_start is not None:
        stmt = stmt.where(InvoiceRow.period_start == period_start)
    if account is not None:
        stmt = stmt.where(InvoiceRow.account_code == account)
    if status is not None:
        stmt = stmt.where(InvoiceRow.status == status)
    with engine.connect() as conn:
        return [
            {
                "id": r.id,
                "number": r.number,
                "account": r.account_code,
                "period_start": r.period_start.isoformat(),
                "period_end": r.period_end.isoformat(),
                "kind": r.kind,
                "status": r.status,
                "currency": r.currency,
                "subtotal": format_money(r.subtotal, r.currency),
                "tax": format_money(r.tax, r.currency),
                "total": format_money(r.total, r.currency),
            }
            for r in conn.execute(stmt).all()
        ]


def invoice_view(engine: Engine, ref: str) -> dict[str, Any]:
    """One invoice by number (or ``#id`` for a draft): the frozen snapshot once finalized."""
    with engine.connect() as conn:
        cond = InvoiceRow.id == int(ref[1:]) if ref.startswith("#") and ref[1:].isdigit() else InvoiceRow.number == ref
        inv = conn.execute(select(InvoiceRow).where(cond)).first()
        if inv is None:
            raise InvoiceNotFound(f"there is no invoice {ref}")
        base = {"id": inv.id, "status": inv.status, "void_reason": inv.void_reason}
        if inv.snapshot is not None:
            # formatted as it is read: a snapshot frozen by an earlier version may say "2.1E+2"
            return {**invoice_snapshot_view(inv.snapshot), **base}
        draft = {
            "number": None,
            "account": {"code": inv.account_code},
            "period": {"start": inv.period_start.isoformat(), "end": inv.period_end.isoformat()},
            "currency": inv.currency,
            "lines": _lines(conn, inv.id),
            "subtotal": inv.subtotal,
            "tax": inv.tax,
            "total": inv.total,
        }
        return {**base, **invoice_snapshot_view(draft)}


def invoice_pdf(engine: Engine, number: str) -> bytes:
    """The stored PDF of a finalized (or void) invoice, rendered once from its snapshot."""
    with engine.connect() as conn:
        row = conn.execute(
            select(InvoiceRow.id, InvoiceRow.status, InvoiceRow.pdf).where(InvoiceRow.number == number)
        ).first()
    if row is None:
        raise InvoiceNotFound(f"there is no invoice numbered {number}")
    if row.pdf is None:
        if row.status == "finalized":
            render_pending(engine, [row.id], workers=1)
        with engine.connect() as conn:
            found = conn.execute(select(InvoiceRow.pdf, InvoiceRow.snapshot).where(InvoiceRow.id == row.id)).one()
        if found.pdf is not None:
            return bytes(found.pdf)
        # voided before its document was stored: the database keeps a void invoice as it is, so
        # the same document is rendered from its snapshot each time instead
        return _render_one((row.id, found.snapshot))[2]
    return bytes(row.pdf)


def _render_one(item: tuple[int, dict[str, Any]]) -> tuple[int, str, bytes]:
    invoice_id, snapshot = item
    html, pdf = render_invoice(snapshot, snapshot.get("issuer") or DEFAULT_ISSUER)
    return invoice_id, html, pdf


def render_pending(engine: Engine, invoice_ids: list[int] | None = None, workers: int | None = None) -> int:
    """Render and store the documents of finalized invoices that have none yet (those of
    ``invoice_ids``, or all). Rendering runs in ``workers`` processes (default: one per core);
    each document is stored once — a concurrent renderer's copy is identical and not written.
    Returns how many were stored."""
    import os
    from concurrent.futures import ProcessPoolExecutor

    query = select(InvoiceRow.id, InvoiceRow.snapshot).where(InvoiceRow.status == "finalized", InvoiceRow.pdf.is_(None))
    if invoice_ids is not None:
        query = query.where(InvoiceRow.id.in_(invoice_ids))
    with engine.connect() as conn:
        todo = [(r.id, r.snapshot) for r in conn.execute(query)]
    if not todo:
        return 0
    if workers is None:  # a pool costs a second or two to start: worth it for many documents only
        workers = 1 if len(todo) < 16 else os.cpu_count() or 1
    workers = max(1, min(workers, len(todo)))

    def store(rendered: tuple[int, str, bytes]) -> int:
        invoice_id, html, pdf = rendered
        with engine.begin() as conn:
            done = conn.execute(
                update(InvoiceRow)
                .where(InvoiceRow.id == invoice_id, InvoiceRow.pdf.is_(None))
                .values(html=html, pdf=pdf)
            )
        return int(done.rowcount)

    if workers == 1:
        return sum(store(_render_one(item)) for item in todo)
    import multiprocessing

    # spawned, not forked: the parent holds database connections and may hold threads
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return sum(store(r) for r in pool.map(_render_one, todo, chunksize=8))
