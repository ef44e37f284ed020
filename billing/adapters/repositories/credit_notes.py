"""The credit note repository: credit notes and their numbers in PostgreSQL.

Numbers are allocated in the issuing transaction (``allocate_number``: a counter row per year,
incremented with ``INSERT … ON CONFLICT DO UPDATE``, so concurrent issuers queue on its row lock
and a rolled-back one gives its number back: no gaps, no duplicates). The cap is checked under
the credited invoice's row lock (the service finds it ``for_update``).
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, insert, select, text

from billing.adapters.models import CreditNoteRow, InvoiceRow
from billing.domain.credit_notes import OpenCredit
from billing.errors import CreditNoteNotFound
from billing.services.ports import CreditNoteRecord

__all__ = ["CreditNoteRepository"]

_COLUMNS = [c for c in CreditNoteRow.__table__.c if c.name not in ("html", "pdf", "created_at")]


def _record(r: Any) -> CreditNoteRecord:
    pdf = getattr(r, "pdf", None)
    return CreditNoteRecord(
        id=r.id,
        number=r.number,
        invoice_id=r.invoice_id,
        invoice_number=r.invoice_number,
        account_code=r.account_code,
        currency=r.currency,
        tax_rate=r.tax_rate,
        net=r.net,
        tax=r.tax,
        total=r.total,
        reason=r.reason,
        reason_text=r.reason_text,
        settlement=r.settlement,
        lines=dict(r.lines),
        snapshot=r.snapshot,
        issued_on=r.issued_on,
        html=getattr(r, "html", None),
        pdf=None if pdf is None else bytes(pdf),
    )


class CreditNoteRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def lock_open_credits(self, account: str) -> None:
        self.conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"credits:{account}"})

    def allocate_number(self, year: int) -> int:
        return int(
            self.conn.execute(
                text(
                    "INSERT INTO credit_note_numbers (year, last) VALUES (:year, 1) "
                    "ON CONFLICT (year) DO UPDATE SET last = credit_note_numbers.last + 1 RETURNING last"
                ),
                {"year": year},
            ).scalar_one()
        )

    def credited(self, invoice_id: int) -> tuple[Decimal, Decimal]:
        row = self.conn.execute(
            text(
                "SELECT coalesce(sum(total), 0) AS total, coalesce(sum(tax), 0) AS tax "
                "FROM credit_notes WHERE invoice_id = :i"
            ),
            {"i": invoice_id},
        ).one()
        return Decimal(row.total), Decimal(row.tax)

    def insert(self, record: CreditNoteRecord) -> int:
        values = {
            "number": record.number,
            "invoice_id": record.invoice_id,
            "account_code": record.account_code,
            "currency": record.currency,
            "tax_rate": record.tax_rate,
            "net": record.net,
            "tax": record.tax,
            "total": record.total,
            "reason": record.reason,
            "reason_text": record.reason_text,
            "settlement": record.settlement,
            "lines": record.lines,
            "snapshot": record.snapshot,
            "html": record.html,
            "pdf": record.pdf,
            "issued_on": record.issued_on,
        }
        return int(self.conn.execute(insert(CreditNoteRow).values(**values).returning(CreditNoteRow.id)).scalar_one())

    def find(self, number: str) -> CreditNoteRecord:
        row = self.conn.execute(
            select(*CreditNoteRow.__table__.c, InvoiceRow.number.label("invoice_number"))
            .join(InvoiceRow, InvoiceRow.id == CreditNoteRow.invoice_id)
            .where(CreditNoteRow.number == number)
        ).first()
        if row is None:
            raise CreditNoteNotFound(f"there is no credit note {number}")
        return _record(row)

    def listing(self, account: str | None, invoice_id: int | None) -> list[CreditNoteRecord]:
        stmt = (
            select(*_COLUMNS, InvoiceRow.number.label("invoice_number"))
            .join(InvoiceRow, InvoiceRow.id == CreditNoteRow.invoice_id)
            .order_by(CreditNoteRow.id)
        )
        if account is not None:
            stmt = stmt.where(CreditNoteRow.account_code == account)
        if invoice_id is not None:
            stmt = stmt.where(CreditNoteRow.invoice_id == invoice_id)
        return [_record(r) for r in self.conn.execute(stmt).all()]

    def open_credits(self, account: str, before: date, invoice_id: int | None) -> list[OpenCredit]:
        rows = self.conn.execute(
            text(
                "SELECT c.number, c.net - coalesce(("
                "  SELECT sum(-l.amount) FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id "
                "  WHERE l.kind = 'credit_note' AND l.usage_ref->>'credit_note' = c.number "
                "  AND i.status <> 'void' AND i.id IS DISTINCT FROM :current), 0) AS remaining "
                "FROM credit_notes c JOIN invoices ci ON ci.id = c.invoice_id "
                "WHERE c.account_code = :a AND c.settlement = 'credit' AND ci.period_start < :before "
                "ORDER BY c.id"
            ),
            {"a": account, "before": before, "current": invoice_id},
        ).all()
        return [OpenCredit(r.number, Decimal(r.remaining)) for r in rows if Decimal(r.remaining) > 0]
