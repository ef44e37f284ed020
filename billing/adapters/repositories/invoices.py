"""The invoice repository: invoices and their lines in PostgreSQL.

The locks are the ones billing's correctness rests on: a billing run holds an advisory lock per
account and period (``lock_run``: concurrent runs queue) and the current invoice row ``FOR
UPDATE`` (a concurrent finalize holds it: the run waits, then sees what it did); finalize and void
lock the invoice they change (``find(…, for_update=True)``); numbers are allocated in the
finalizing transaction (``allocate_number``: a gap-free counter per prefix and year).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Connection, delete, insert, select, text, tuple_, update

from billing.adapters.models import InvoiceLineRow, InvoiceRow
from billing.domain.invoicing import PricedLine
from billing.domain.progressive import ThresholdInvoiced
from billing.errors import InvoiceNotFound
from billing.services.ports import DraftValues, FinalizedPeriod, InvoiceRecord

__all__ = ["InvoiceRepository"]

_DRAFT_REF = re.compile(r"draft-([1-9][0-9]{0,18})")
_MAX_ID = 2**63 - 1  # bigint: a larger id names no invoice (and must not reach the database)


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


# every column but the documents (a run locking its current invoice reads no PDF)
_SUMMARY = [c for c in InvoiceRow.__table__.c if c.name not in ("snapshot", "html", "pdf")]


def _record(r: Any) -> InvoiceRecord:
    pdf = getattr(r, "pdf", None)
    return InvoiceRecord(
        id=r.id,
        account_code=r.account_code,
        period_start=r.period_start,
        period_end=r.period_end,
        kind=r.kind,
        status=r.status,
        number=r.number,
        currency=r.currency,
        tax_rate=r.tax_rate,
        subtotal=r.subtotal,
        tax=r.tax,
        total=r.total,
        plan_code=r.plan_code,
        plan_version=r.plan_version,
        snapshot=getattr(r, "snapshot", None),
        pdf=None if pdf is None else bytes(pdf),
        void_reason=r.void_reason,
    )


def _line_row(invoice_id: int, position: int, priced: PricedLine, start: date, end: date) -> dict[str, Any]:
    """A line as stored; ``usage_ref`` names the usage it priced (or, for an adjustment, the
    period and invoice it adjusts)."""
    line, source = priced.line, priced.source
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
        "usage_ref": priced.adjusts
        or {
            "period": [start.isoformat(), end.isoformat()],
            "meter": line.meter,
            "source": source,
            "topic_filter": list(line.topics),
            "topics": list(line.usage_topics),
            "quantity_raw": line.quantity_raw,
        },
    }


class InvoiceRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def lock_run(self, account: str, period_start: date) -> None:
        # one billing run at a time per account and period: concurrent runs queue here
        self.conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"bill:{account}:{period_start}"})

    def current(self, account: str, period_start: date) -> InvoiceRecord | None:
        row = self.conn.execute(
            select(*_SUMMARY)
            .where(
                InvoiceRow.account_code == account,
                InvoiceRow.period_start == period_start,
                InvoiceRow.kind == "standard",
                InvoiceRow.status != "void",
            )
            # a concurrent finalize holds this row: wait, then see what it did
            .with_for_update()
        ).first()
        return None if row is None else _record(row)

    def insert_draft(self, account: str, start: date, end: date, values: DraftValues, kind: str = "standard") -> int:
        return int(
            self.conn.execute(
                insert(InvoiceRow)
                .values(account_code=account, period_start=start, period_end=end, kind=kind, **asdict(values))
                .returning(InvoiceRow.id)
            ).scalar_one()
        )

    def update_draft(self, invoice_id: int, values: DraftValues) -> None:
        self.conn.execute(update(InvoiceRow).where(InvoiceRow.id == invoice_id).values(**asdict(values)))

    def replace_lines(self, invoice_id: int, lines: Sequence[PricedLine], start: date, end: date) -> int:
        self.conn.execute(delete(InvoiceLineRow).where(InvoiceLineRow.invoice_id == invoice_id))
        rows = [_line_row(invoice_id, i, priced, start, end) for i, priced in enumerate(lines)]
        if rows:
            self.conn.execute(insert(InvoiceLineRow), rows)
        return len(rows)

    def finalized_periods(self, account: str, before: date) -> list[FinalizedPeriod]:
        # what was billed for a period: its invoice's own lines (not the adjustments it carried for
        # earlier periods, nor the credit notes or money grants applied to it, nor the deductions of
        # its threshold invoices: own is the whole period, as re-rating it is)
        rows = self.conn.execute(
            text(
                "SELECT i.period_start, i.period_end, i.number, "
                "coalesce(sum(l.amount) FILTER (WHERE l.kind NOT IN "
                "('adjustment', 'credit_note', 'threshold', 'grant')), 0) AS own "
                "FROM invoices i LEFT JOIN invoice_lines l ON l.invoice_id = i.id "
                "WHERE i.account_code = :a AND i.status = 'finalized' AND i.kind = 'standard' "
                "AND i.period_start < :before "
                "GROUP BY i.id ORDER BY i.period_start"
            ),
            {"a": account, "before": before},
        ).all()
        return [FinalizedPeriod(r.period_start, r.period_end, r.number, Decimal(r.own)) for r in rows]

    def threshold_invoices(self, account: str, period_start: date) -> list[ThresholdInvoiced]:
        rows = self.conn.execute(
            select(InvoiceRow.number, InvoiceRow.subtotal)
            .where(
                InvoiceRow.account_code == account,
                InvoiceRow.period_start == period_start,
                InvoiceRow.kind == "threshold",
                InvoiceRow.status == "finalized",
            )
            .order_by(InvoiceRow.id)
        ).all()
        return [ThresholdInvoiced(str(r.number), Decimal(r.subtotal)) for r in rows]

    def finalized_adjustments(self, account: str, period: str) -> Decimal:
        return Decimal(
            self.conn.execute(
                text(
                    "SELECT coalesce(sum(l.amount), 0) FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id "
                    "WHERE i.account_code = :a AND i.status = 'finalized' AND l.kind = 'adjustment' "
                    "AND l.usage_ref->>'adjusts_period' = :p"
                ),
                {"a": account, "p": period},
            ).scalar_one()
        )

    def find(self, ref: str | int, for_update: bool = False) -> InvoiceRecord:
        stmt = select(InvoiceRow).where(_named(ref))
        found = self.conn.execute(stmt.with_for_update() if for_update else stmt).first()
        if found is None:
            raise InvoiceNotFound(f"there is no invoice {ref if isinstance(ref, str) else f'draft-{ref}'}")
        return _record(found)

    def lines(self, invoice_id: int) -> list[dict[str, Any]]:
        rows = self.conn.execute(
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

    def allocate_number(self, prefix: str, year: int) -> str:
        last = self.conn.execute(
            text(
                "INSERT INTO invoice_numbers (prefix, year, last) VALUES (:prefix, :year, 1) "
                "ON CONFLICT (prefix, year) DO UPDATE SET last = invoice_numbers.last + 1 RETURNING last"
            ),
            {"prefix": prefix, "year": year},
        ).scalar_one()
        return f"{prefix}-{year}-{last:06d}"

    def mark_finalized(
        self,
        invoice_id: int,
        number: str,
        snapshot: dict[str, Any],
        html: str | None,
        pdf: bytes | None,
        issued: date,
        due: date,
        now: datetime,
    ) -> None:
        self.conn.execute(
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

    def mark_void(self, invoice_id: int, reason: str, now: datetime) -> None:
        self.conn.execute(
            update(InvoiceRow)
            .where(InvoiceRow.id == invoice_id)
            .values(status="void", void_reason=reason, voided_at=now, updated_at=now)
        )

    def listing(
        self,
        period_start: date | None,
        account: str | None,
        status: str | None,
        drafts: bool,
        after: tuple[date, str, int] | None,
        limit: int | None,
    ) -> list[InvoiceRecord]:
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
        return [_record(r) for r in self.conn.execute(stmt).all()]

    def ids_not_draft(self, period_start: date) -> list[int]:
        return list(
            self.conn.execute(
                select(InvoiceRow.id).where(InvoiceRow.period_start == period_start, InvoiceRow.status != "draft")
            ).scalars()
        )

    def without_documents(self, invoice_ids: list[int] | None) -> list[tuple[int, dict[str, Any]]]:
        query = select(InvoiceRow.id, InvoiceRow.snapshot).where(
            InvoiceRow.status == "finalized", InvoiceRow.pdf.is_(None)
        )
        if invoice_ids is not None:
            query = query.where(InvoiceRow.id.in_(invoice_ids))
        return [(r.id, r.snapshot) for r in self.conn.execute(query)]

    def store_documents(self, invoice_id: int, html: str, pdf: bytes) -> int:
        done = self.conn.execute(
            update(InvoiceRow).where(InvoiceRow.id == invoice_id, InvoiceRow.pdf.is_(None)).values(html=html, pdf=pdf)
        )
        return int(done.rowcount)
