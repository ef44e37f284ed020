"""The grant repository: grants in PostgreSQL, and what invoices burned of them.

A burn is not a table of its own: it is the invoice line of kind ``grant`` that applied it
(``usage_ref``: ``grant``, ``burned``, ``left``), so it is replaced with a draft's lines on each
run and frozen with a finalized invoice's (migration 0016). A grant is never deleted; its void is
the only update the table's trigger lets through.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, insert, select, text, update

from billing.adapters.models import GrantRow
from billing.domain.grants import Grant, RecordedBurn
from billing.errors import GrantError, GrantNotFound
from billing.services.ports import GrantRecord

__all__ = ["GrantRepository"]


def _plain(value: Any) -> Decimal:
    """``500.000000`` (numeric(20, 6)) as ``500``, ``0.500000`` as ``0.5``: the amount as typed."""
    d = Decimal(value)
    return d.quantize(Decimal(1)) if d == d.to_integral_value() else d.normalize()


def _record(r: Any) -> GrantRecord:
    grant = Grant(
        id=r.id,
        account=r.account_code,
        amount=_plain(r.amount),
        effective_on=r.effective_on,
        priority=r.priority,
        expires_on=r.expires_on,
        currency=r.currency,
        meter=r.meter,
        unit=r.unit,
        recurrence=r.recurrence,
        rollover_limit=None if r.rollover_limit is None else _plain(r.rollover_limit),
        name=r.name,
        voided=r.voided_at is not None,
    )
    return GrantRecord(grant, r.reason, r.created_by, r.created_at, r.voided_at, r.voided_by, r.void_reason)


class GrantRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def lock_account(self, account: str) -> None:
        self.conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"grants:{account}"})

    def insert(self, grant: Grant, reason: str, created_by: str, created_at: datetime) -> int:
        return int(
            self.conn.execute(
                insert(GrantRow)
                .values(
                    account_code=grant.account,
                    name=grant.name,
                    amount=grant.amount,
                    currency=grant.currency,
                    meter=grant.meter,
                    unit=grant.unit,
                    priority=grant.priority,
                    effective_on=grant.effective_on,
                    expires_on=grant.expires_on,
                    recurrence=grant.recurrence,
                    rollover_limit=grant.rollover_limit,
                    reason=reason,
                    created_by=created_by,
                    created_at=created_at,
                )
                .returning(GrantRow.id)
            ).scalar_one()
        )

    def find(self, grant_id: int) -> GrantRecord:
        found = self.conn.execute(select(GrantRow).where(GrantRow.id == grant_id).with_for_update()).first()
        if found is None:
            raise GrantNotFound(f"there is no grant {grant_id}")
        return _record(found)

    def void(self, grant_id: int, voided_by: str, reason: str, at: datetime) -> None:
        done = self.conn.execute(
            update(GrantRow)
            .where(GrantRow.id == grant_id, GrantRow.voided_at.is_(None))
            .values(voided_at=at, voided_by=voided_by, void_reason=reason)
        )
        if done.rowcount != 1:
            raise GrantError(f"grant {grant_id} is already voided")

    def listing(self, account: str | None) -> list[GrantRecord]:
        stmt = select(GrantRow).order_by(GrantRow.id)
        if account is not None:
            stmt = stmt.where(GrantRow.account_code == account)
        return [_record(r) for r in self.conn.execute(stmt).all()]

    def burns(self, account: str) -> list[RecordedBurn]:
        rows = self.conn.execute(
            text(
                "SELECT (l.usage_ref->>'grant')::bigint AS grant_id, i.id AS invoice_id, i.period_start, "
                "i.status = 'finalized' AS finalized, l.usage_ref->>'burned' AS burned "
                "FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id "
                "WHERE l.kind = 'grant' AND i.account_code = :a AND i.status <> 'void' "
                "ORDER BY i.id, l.position"
            ),
            {"a": account},
        ).all()
        return [RecordedBurn(r.grant_id, r.invoice_id, r.period_start, r.finalized, Decimal(r.burned)) for r in rows]
