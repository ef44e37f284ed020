"""Credit notes: issue one against a finalized invoice, list, show, its PDF.

* A credit note credits a finalized invoice in full (``full``), by an amount (tax included), or
  by net amounts on chosen lines; with a reason (``duplicate``, ``error``, ``goodwill``,
  ``order_change``, ``other`` — ``other`` needs a free text) and a settlement: ``credit``
  (carried to the account's next invoices by the billing run) or ``refunded``.
* The rules (the cap, the tax split, applying credits to a next invoice) are
  :mod:`billing.domain.credit_notes`'; here: one transaction that locks the invoice (two credit
  notes against one invoice queue, so the cap holds), allocates the next number of the year
  (``CN-2026-0001``, without gaps), freezes a snapshot and renders its PDF from the versioned
  template, and stores it. The invoice itself never changes; its view shows ``credited`` and
  ``balance_due`` (:func:`invoice_credit`).
* Amounts leave as plain text with the currency's minor digits (``"119.00"``).

Each function takes an engine or a factory of units of work (unit tests pass fakes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from billing.adapters.render import render_credit_note
from billing.adapters.uow import Database, units_of_work
from billing.domain.credit_notes import (
    REASONS,
    SETTLEMENTS,
    CreditAmounts,
    credit_for_amount,
    credit_for_lines,
    credit_note_number,
)
from billing.domain.money import format_money
from billing.domain.webhooks import new_event
from billing.errors import CreditNoteError
from billing.services.ports import CreditNoteRecord, InvoiceRecord, UnitOfWork
from billing.settings import BillingSettings

__all__ = [
    "create_credit_note",
    "credit_note_pdf",
    "credit_note_view",
    "invoice_credit",
    "list_credit_notes",
]

DEFAULT_ISSUER = BillingSettings().issuer


def _now() -> datetime:
    return datetime.now(UTC)


def _check_terms(reason: str, reason_text: str | None, settlement: str) -> str | None:
    if reason not in REASONS:
        raise CreditNoteError(f"reason {reason!r} is not one of {', '.join(REASONS)}")
    if settlement not in SETTLEMENTS:
        raise CreditNoteError(f"settlement {settlement!r} is not one of {', '.join(SETTLEMENTS)}")
    text = (reason_text or "").strip() or None
    if reason == "other" and text is None:
        raise CreditNoteError("a credit note for reason 'other' needs a text saying why")
    return text


def _amounts(
    uow: UnitOfWork,
    inv: InvoiceRecord,
    amount: Decimal | None,
    full: bool,
    lines: Mapping[int, Decimal] | None,
) -> tuple[CreditAmounts, list[dict[str, Any]]]:
    """The credit note's amounts and the lines its document lists (description, net amount)."""
    if sum((amount is not None, full, bool(lines))) != 1:
        raise CreditNoteError("give exactly one of an amount, full, or lines to credit")
    credited_total, credited_tax = uow.credit_notes.credited(inv.id)
    if lines:
        stored = {int(line["position"]): line for line in uow.invoices.lines(inv.id)}
        amounts = credit_for_lines(
            lines,
            {p: Decimal(line["amount"]) for p, line in stored.items()},
            inv.tax_rate,
            inv.total,
            credited_total,
            inv.currency,
        )
        shown = [{"description": stored[p]["description"], "amount": a} for p, a in sorted(lines.items())]
        return amounts, shown
    amounts = credit_for_amount(amount, inv.total, inv.tax, credited_total, credited_tax, inv.currency)
    what = "in full" if amounts.total == inv.total else "in part"
    return amounts, [{"description": f"Invoice {inv.number} credited {what}", "amount": amounts.net}]


def create_credit_note(
    engine: Database,
    invoice_ref: str,
    *,
    reason: str,
    amount: Decimal | None = None,
    full: bool = False,
    lines: Mapping[int, Decimal] | None = None,
    reason_text: str | None = None,
    settlement: str = "credit",
    clock: Callable[[], datetime] = _now,
    render: Callable[[dict[str, Any]], tuple[str, bytes]] = render_credit_note,
) -> dict[str, Any]:
    """Issue a credit note against the finalized invoice ``invoice_ref`` names; returns its view."""
    text = _check_terms(reason, reason_text, settlement)
    with units_of_work(engine)() as uow:
        inv = uow.invoices.find(invoice_ref, for_update=True)  # credit notes of one invoice queue here
        if inv.status != "finalized" or inv.number is None or inv.snapshot is None:
            raise CreditNoteError(
                f"invoice {inv.number or f'draft-{inv.id}'} is {inv.status}: only a finalized invoice can be credited"
            )
        amounts, shown = _amounts(uow, inv, amount, full, lines)
        issued = clock().date()
        number = credit_note_number(issued.year, uow.credit_notes.allocate_number(issued.year))
        snapshot = {
            "number": number,
            "invoice": {"number": inv.number, "issued_on": inv.snapshot.get("issued_on"), "total": str(inv.total)},
            "account": inv.snapshot["account"],
            "currency": inv.currency,
            "tax_rate": str(inv.tax_rate),
            "reason": reason,
            "reason_text": text,
            "settlement": settlement,
            "lines": [
                {"description": s["description"], "amount": format_money(s["amount"], inv.currency)} for s in shown
            ],
            "net": format_money(amounts.net, inv.currency),
            "tax": format_money(amounts.tax, inv.currency),
            "total": format_money(amounts.total, inv.currency),
            "issued_on": issued.isoformat(),
            "issuer": inv.snapshot.get("issuer") or DEFAULT_ISSUER,
        }
        html, pdf = render(snapshot)
        record = CreditNoteRecord(
            id=0,
            number=number,
            invoice_id=inv.id,
            invoice_number=inv.number,
            account_code=inv.account_code,
            currency=inv.currency,
            tax_rate=inv.tax_rate,
            net=amounts.net,
            tax=amounts.tax,
            total=amounts.total,
            reason=reason,
            reason_text=text,
            settlement=settlement,
            lines={str(p): format_money(a, inv.currency) for p, a in sorted((lines or {}).items())},
            snapshot=snapshot,
            issued_on=issued,
            html=html,
            pdf=pdf,
        )
        uow.credit_notes.insert(record)
        view = _view(record)
        # written with the credit note: one is never issued without its event, nor the other way
        uow.webhooks.emit(new_event("credit_note.issued", inv.account_code, {"credit_note": view}, clock()))
        return view


def _view(r: CreditNoteRecord) -> dict[str, Any]:
    return {
        "number": r.number,
        "invoice": r.invoice_number,
        "account": r.account_code,
        "currency": r.currency,
        "net": format_money(r.net, r.currency),
        "tax": format_money(r.tax, r.currency),
        "total": format_money(r.total, r.currency),
        "reason": r.reason,
        "reason_text": r.reason_text,
        "settlement": r.settlement,
        "lines": dict(r.lines),
        "issued_on": r.issued_on.isoformat(),
    }


def credit_note_view(engine: Database, number: str) -> dict[str, Any]:
    """One credit note by number (:class:`~billing.errors.CreditNoteNotFound` when none)."""
    with units_of_work(engine)() as uow:
        return _view(uow.credit_notes.find(number))


def list_credit_notes(
    engine: Database, account: str | None = None, invoice_ref: str | None = None
) -> list[dict[str, Any]]:
    """Credit notes in issue order, of one account or one invoice when given."""
    with units_of_work(engine)() as uow:
        invoice_id = None if invoice_ref is None else uow.invoices.find(invoice_ref).id
        return [_view(r) for r in uow.credit_notes.listing(account, invoice_id)]


def credit_note_pdf(engine: Database, number: str) -> bytes:
    """The PDF stored when the credit note was issued."""
    with units_of_work(engine)() as uow:
        found = uow.credit_notes.find(number)
    if found.pdf is None:  # issued without a document (a test's renderer): render it from the snapshot
        return render_credit_note(found.snapshot)[1]
    return found.pdf


def invoice_credit(uow: UnitOfWork, inv: InvoiceRecord) -> dict[str, str]:
    """``credited`` (the credit notes issued against the invoice) and ``balance_due`` (its total
    minus them; zero once void), as text."""
    credited, _ = uow.credit_notes.credited(inv.id)
    due = Decimal(0) if inv.status == "void" else inv.total - credited
    return {"credited": format_money(credited, inv.currency), "balance_due": format_money(due, inv.currency)}
