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
  ref and finds it with the invoice repository's ``find``.

Where it lives: the reads, writes and locks are the invoice repository's
(:mod:`billing.adapters.repositories.invoices`, behind :class:`billing.services.ports.InvoiceRepository`);
here are the rules (what may be finalized or voided, the snapshot, payment terms) over it. Each
function takes an engine or a factory of units of work (unit tests pass fakes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from billing.adapters.render import render_invoice
from billing.adapters.uow import Database, units_of_work
from billing.domain.documents import invoice_snapshot_view
from billing.domain.money import format_money
from billing.domain.webhooks import WebhookEvent, new_event
from billing.errors import InvoiceError, InvoiceNotFound
from billing.services.credit_notes import invoice_credit
from billing.services.ports import InvoiceRecord
from billing.settings import BillingSettings

__all__ = [
    "PAYMENT_TERMS_DAYS",
    "finalize",
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


def invoice_ref(invoice_id: int, number: str | None) -> str:
    """An invoice's reference: its number once it has one, else ``draft-<id>``."""
    return number if number is not None else f"draft-{invoice_id}"


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


def finalize(
    engine: Database,
    ref: str | int,
    prefix: str,
    clock: Callable[[], datetime] = _now,
    issuer: dict[str, Any] | None = None,
    render: bool = True,
) -> Finalized:
    """Number and freeze one draft (``ref``: ``draft-<id>``; an int is the id) in one transaction,
    and render its documents in it too unless ``render`` is False (then :func:`render_pending`
    does, later; see the module docstring)."""
    with units_of_work(engine)() as uow:
        inv = uow.invoices.find(ref, for_update=True)
        if inv.status != "draft":
            raise InvoiceError(f"invoice {inv.number} is already {inv.status}")
        acct = uow.catalog.account(inv.account_code)
        now = clock()
        issued = now.date()
        number = uow.invoices.allocate_number(prefix, issued.year)
        due = issued + timedelta(days=PAYMENT_TERMS_DAYS)
        snapshot = invoice_snapshot_view(
            {
                "number": number,
                "account": {
                    "code": acct.code,
                    "name": acct.name,
                    "email": acct.email,
                    "address": list(acct.address),
                },
                "period": {"start": inv.period_start.isoformat(), "end": inv.period_end.isoformat()},
                "kind": inv.kind,
                "currency": inv.currency,
                "plan": {"code": inv.plan_code, "version": inv.plan_version},
                "lines": uow.invoices.lines(inv.id),
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
        uow.invoices.mark_finalized(inv.id, number, snapshot, html, pdf, issued, due, now)
        dates = {"issued_on": issued.isoformat(), "due_on": due.isoformat()}
        uow.webhooks.emit(_invoice_event("invoice.finalized", inv, number, now, dates))
        return Finalized(inv.id, number, inv.account_code, inv.total, inv.currency)


def void(engine: Database, ref: str, reason: str, clock: Callable[[], datetime] = _now) -> str:
    """Void the finalized invoice ``ref`` names (its number, or ``draft-<id>``); returns its number."""
    if not reason.strip():
        raise InvoiceError("give a reason to void an invoice")
    with units_of_work(engine)() as uow:
        inv = uow.invoices.find(ref, for_update=True)
        if inv.status != "finalized":
            raise InvoiceError(
                f"invoice {invoice_ref(inv.id, inv.number)} is {inv.status}; only a finalized invoice can be voided"
            )
        now = clock()
        uow.invoices.mark_void(inv.id, reason.strip(), now)
        uow.webhooks.emit(_invoice_event("invoice.voided", inv, str(inv.number), now, {"void_reason": reason.strip()}))
        return str(inv.number)


def _invoice_event(kind: str, inv: InvoiceRecord, number: str, at: datetime, extra: dict[str, str]) -> WebhookEvent:
    """The webhook event of a finalized or voided invoice (written in the same transaction)."""
    money = {
        k: format_money(v, inv.currency)
        for k, v in (("subtotal", inv.subtotal), ("tax", inv.tax), ("total", inv.total))
    }
    doc = {
        "number": number,
        "account": inv.account_code,
        "period": {"start": inv.period_start.isoformat(), "end": inv.period_end.isoformat()},
        "kind": inv.kind,
        "currency": inv.currency,
        **money,
        **extra,
    }
    return new_event(kind, inv.account_code, {"invoice": doc}, at)


def _listed(r: InvoiceRecord) -> dict[str, Any]:
    return {
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


def list_invoices(
    engine: Database,
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
    with units_of_work(engine)() as uow:
        return [_listed(r) for r in uow.invoices.listing(period_start, account, status, drafts, after, limit)]


def list_position(row: dict[str, Any]) -> tuple[date, str, int]:
    """Where ``row`` (one of :func:`list_invoices`) stands in the listing's order: ``after`` for
    the next page."""
    return date.fromisoformat(row["period_start"]), row["account"], int(row["id"])


def invoice_view(engine: Database, ref: str | int) -> dict[str, Any]:
    """One invoice by ref (its number, or ``draft-<id>``): the frozen snapshot once finalized,
    with ``credited`` and ``balance_due`` (its credit notes, :mod:`billing.services.credit_notes`)."""
    with units_of_work(engine)() as uow:
        inv = uow.invoices.find(ref)
        base = {
            "id": inv.id,
            "ref": invoice_ref(inv.id, inv.number),
            "status": inv.status,
            "void_reason": inv.void_reason,
        }
        if inv.snapshot is not None:
            base |= invoice_credit(uow, inv)  # credit notes: shown beside the frozen invoice, never in it
            # formatted as it is read: a snapshot frozen by an earlier version may say "2.1E+2"
            return {**invoice_snapshot_view(inv.snapshot), **base}
        draft = {
            "number": None,
            "account": {"code": inv.account_code},
            "period": {"start": inv.period_start.isoformat(), "end": inv.period_end.isoformat()},
            "currency": inv.currency,
            "lines": uow.invoices.lines(inv.id),
            "subtotal": inv.subtotal,
            "tax": inv.tax,
            "total": inv.total,
        }
        return {**base, **invoice_snapshot_view(draft)}


def invoice_pdf(engine: Database, ref: str | int) -> bytes:
    """The stored PDF of a finalized (or void) invoice (``ref``: its number, or ``draft-<id>``),
    rendered once from its snapshot; a draft has none (:class:`InvoiceNotFound`)."""
    uows = units_of_work(engine)
    with uows() as uow:
        row = uow.invoices.find(ref)
    if row.status == "draft":
        raise InvoiceNotFound(f"invoice draft-{row.id} is a draft: it has no document until it is finalized")
    if row.pdf is None:
        if row.status == "finalized":
            render_pending(uows, [row.id], workers=1)
        with uows() as uow:
            found = uow.invoices.find(row.id)
        if found.pdf is not None:
            return found.pdf
        # voided before its document was stored: the database keeps a void invoice as it is, so
        # the same document is rendered from its snapshot each time instead
        assert found.snapshot is not None  # finalized or void: frozen
        return _render_one((row.id, found.snapshot))[2]
    return row.pdf


def _render_one(item: tuple[int, dict[str, Any]]) -> tuple[int, str, bytes]:
    invoice_id, snapshot = item
    html, pdf = render_invoice(snapshot, snapshot.get("issuer") or DEFAULT_ISSUER)
    return invoice_id, html, pdf


def render_pending(engine: Database, invoice_ids: list[int] | None = None, workers: int | None = None) -> int:
    """Render and store the documents of finalized invoices that have none yet (those of
    ``invoice_ids``, or all). Rendering runs in ``workers`` processes (default: one per core);
    each document is stored once — a concurrent renderer's copy is identical and not written.
    Returns how many were stored."""
    import os
    from concurrent.futures import ProcessPoolExecutor

    uows = units_of_work(engine)
    with uows() as uow:
        todo = uow.invoices.without_documents(invoice_ids)
    if not todo:
        return 0
    if workers is None:  # a pool costs a second or two to start: worth it for many documents only
        workers = 1 if len(todo) < 16 else os.cpu_count() or 1
    workers = max(1, min(workers, len(todo)))

    def store(rendered: tuple[int, str, bytes]) -> int:
        invoice_id, html, pdf = rendered
        with uows() as uow:
            return uow.invoices.store_documents(invoice_id, html, pdf)

    if workers == 1:
        return sum(store(_render_one(item)) for item in todo)
    import multiprocessing

    # spawned, not forked: the parent holds database connections and may hold threads
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return sum(store(r) for r in pool.map(_render_one, todo, chunksize=8))
