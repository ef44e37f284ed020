"""The invoice email outbox in PostgreSQL (``invoice_deliveries``): the
:class:`~billing.services.ports.Outbox` port.

Rows are claimed ``FOR UPDATE OF d SKIP LOCKED``, so two senders never take the same row."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Connection, text

from billing.services.ports import OutboxItem

__all__ = ["OutboxRepository"]

_ENQUEUE = text(
    "INSERT INTO invoice_deliveries (invoice_id, to_address, message_id) "
    "SELECT i.id, a.email, '<' || i.number || '@streamtoll.invoice>' "
    "FROM invoices i JOIN accounts a ON a.code = i.account_code "
    "WHERE i.status = 'finalized' AND i.period_start = :start "
    "ON CONFLICT (invoice_id) DO NOTHING"
)
_NEXT = text(
    "SELECT d.invoice_id, d.to_address, d.message_id, i.number, i.account_code, i.total::text, "
    "i.currency, i.due_on::text, i.pdf "
    "FROM invoice_deliveries d JOIN invoices i ON i.id = d.invoice_id "
    "WHERE d.status IN ('pending', 'sending') AND i.status = 'finalized' "
    "ORDER BY d.invoice_id LIMIT 1 FOR UPDATE OF d SKIP LOCKED"
)
_SENDING = text("UPDATE invoice_deliveries SET status = 'sending', attempts = attempts + 1 WHERE invoice_id = :i")
_FAILED = text(
    "UPDATE invoice_deliveries SET status = CASE WHEN attempts >= :max THEN 'failed' "
    "ELSE 'pending' END, last_error = :err WHERE invoice_id = :i RETURNING attempts"
)
_SENT = text("UPDATE invoice_deliveries SET status = 'sent', sent_at = :now, last_error = NULL WHERE invoice_id = :i")


class OutboxRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def enqueue_finalized(self, period_start: date) -> int:
        return int(self._conn.execute(_ENQUEUE, {"start": period_start}).rowcount or 0)

    def claim_next(self) -> OutboxItem | None:
        row = self._conn.execute(_NEXT).first()
        if row is None:
            return None
        self._conn.execute(_SENDING, {"i": row.invoice_id})
        return OutboxItem(
            row.invoice_id,
            row.to_address,
            row.message_id,
            row.number,
            row.account_code,
            row.total,
            row.currency,
            row.due_on,
            bytes(row.pdf) if row.pdf is not None else None,
        )

    def record_failure(self, invoice_id: int, error: str, max_attempts: int) -> int:
        return int(self._conn.execute(_FAILED, {"i": invoice_id, "err": error, "max": max_attempts}).scalar_one())

    def mark_sent(self, invoice_id: int, at: datetime) -> None:
        self._conn.execute(_SENT, {"i": invoice_id, "now": at})
