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
* An invoice is named by its reference (``ref``): its number once finalized, ``draft-<id>``
  before — and ``draft-<id>`` keeps naming the same invoice after it is finalized (a retried
  finalize or an old link still finds it). Every function here that takes one invoice takes a
  ref and finds it with :func:`find_invoice`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, Row, select, text, tuple_, update

from billing.adapters.models import AccountRow, InvoiceLineRow, InvoiceRow
from billing.adapters.render import render_invoice
from billing.domain.documents import invoice_snapshot_view
from billing.domain.money import format_money
from billing.errors import InvoiceError, InvoiceNotFound
from billing.settings import BillingSettings

__all__ = [
    "PAYMENT_TERMS_DAYS",
    "finalize",
    "find_invoice",
    "invoice_pdf",
    "invoice_ref",
    "invoice_view",
    "list_invoices",
    "list_position",
    "render_pending",
    "void",
]

PAYMENT_TERMS_DAYS = 30
DEFAULT_ISSUER = BillingSettings().issuer


_DRAFT_REF = re.compile(r"draft-([1-9][0-9]{0,18})")
_MAX_ID = 2**63 - 1  # bigint: a larger id names no invoice (and must not reach the database)


def invoice_ref(invoice_id: int, number: str | None) -> str:
    """An invoice's reference: its number once it has one, else ``draft-<id>``."""
    return number if number is not None else f"draft-{invoice_id}"


def _named(ref: str | int) -> ColumnElement[bool]:
    """The condition selecting the invoice ``ref`` names: ``draft-<id>`` (for good, also once
    finalized) or a number; an int is an id (a caller that holds the row, e.g. a billing run)."""
    if isinstance(ref, int):
        return InvoiceRow.id == ref
    draft = _DRAFT_REF.fullmatch(ref)
    if draft is not None:
        invoice_id = int(draft[1])
        return InvoiceRow.id == (invoice_id if invoice_id <= _MAX_ID else -1)
    return InvoiceRow.number == ref


def find_invoice(conn: Connection, ref: str | int, for_update: bool = False) -> Row[Any]:
    """The invoice row ``ref`` names (``draft-<id>`` or a number), locked for update if asked;
    :class:`InvoiceNotFound` when there is none. The one lookup of every function taking a ref."""
    stmt = select(InvoiceRow).where(_named(ref))
    found = conn.execute(stmt.with_for_update() if for_update else stmt).first()
    if found is None:
        raise InvoiceNotFound(f"there is no invoice {ref if isinstance(ref, str) else f'draft-{ref}'}")
    return found


@dataclass(frozen=True)
class Finalized:
    id: int
    number: str
    account_code: str
    total: Decimal
    currency: str

    @property
    def ref(self) -> str:
        return self.number


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
    ref: str | int,
    prefix: str,
    clock: Callable[[], datetime] = _now,
    issuer: dict[str, Any] | None = None,
    render: bool = True,
) -> Finalized:
    """Number and freeze one draft (``ref``: ``draft-<id>``; an int is the id) in one transaction,
    and render its documents in it too unless ``render`` is False (then :func:`render_pending`
    does, later; see the module docstring)."""
    with engine.begin() as conn:
        inv = find_invoice(conn, ref, for_update=True)
        invoice_id = inv.id
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


def void(engine: Engine, ref: str, reason: str, clock: Callable[[], datetime] = _now) -> str:
    """Void the finalized invoice ``ref`` names (its number, or ``draft-<id>``); returns its number."""
    if not reason.strip():
        raise InvoiceError("give a reason to void an invoice")
    with engine.begin() as conn:
        inv = find_invoice(conn, ref, for_update=True)
        if inv.status != "finalized":
            raise InvoiceError(
                f"invoice {invoice_ref(inv.id, inv.number)} is {inv.status}; only a finalized invoice can be voided"
            )
        now = clock()
        conn.execute(
            update(InvoiceRow)
            .where(InvoiceRow.id == inv.id)
            .values(status="void", void_reason=reason.strip(), voided_at=now, updated_at=now)
        )
        return str(inv.number)


def list_invoices(
    engine: Engine,
    period_start: date | None = None,
    account: str | None = None,
    status: str | None = None,
    *,
    drafts: bool = True,
    after: tuple[date, str, int] | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Invoices in a stable order (period, account, id), filtered; without drafts if ``drafts``
    is False. A page: the first ``limit`` after the position ``after`` — the (period start,
    account, id) of the last invoice of the page before (see :func:`list_position`)."""
    order = (InvoiceRow.period_start, InvoiceRow.account_code, InvoiceRow.id)
    stmt = select(InvoiceRow).order_by(*order)
    if after is not None:
        stmt = stmt.where(tuple_(*order) > tuple_(*after))
    if limit is not None:
        stmt = stmt.limit(limit)
    if not drafts:
        stmt = stmt.where(InvoiceRow.status != "draft")
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
                "ref": invoice_ref(r.id, r.number),
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


def list_position(row: dict[str, Any]) -> tuple[date, str, int]:
    """Where ``row`` (one of :func:`list_invoices`) stands in the listing's order: ``after`` for
    the next page."""
    return date.fromisoformat(row["period_start"]), row["account"], int(row["id"])


def invoice_view(engine: Engine, ref: str | int) -> dict[str, Any]:
    """One invoice by ref (its number, or ``draft-<id>``): the frozen snapshot once finalized."""
    with engine.connect() as conn:
        inv = find_invoice(conn, ref)
        base = {
            "id": inv.id,
            "ref": invoice_ref(inv.id, inv.number),
            "status": inv.status,
            "void_reason": inv.void_reason,
        }
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


def invoice_pdf(engine: Engine, ref: str | int) -> bytes:
    """The stored PDF of a finalized (or void) invoice (``ref``: its number, or ``draft-<id>``),
    rendered once from its snapshot; a draft has none (:class:`InvoiceNotFound`)."""
    with engine.connect() as conn:
        row = find_invoice(conn, ref)
    if row.status == "draft":
        raise InvoiceNotFound(f"invoice draft-{row.id} is a draft: it has no document until it is finalized")
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
