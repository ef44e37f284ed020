"""Emailing finalized invoices through an outbox (``invoice_deliveries``).

1. **Enqueue**: every finalized invoice of the period gets one outbox row (insert-if-absent, so
   running ``send`` twice queues nothing twice). Void invoices are not sent.
2. **Send**: each row is claimed (``FOR UPDATE SKIP LOCKED``: two senders never take the same
   row), marked ``sending`` and committed, then sent over SMTP with the PDF attached and a
   Message-ID fixed per invoice, then marked ``sent``.

If the process dies between the SMTP server accepting a message and the ``sent`` commit, the
row stays ``sending`` and the next run sends it again — with the same Message-ID, so the
duplicate is recognizable. That window is the only way an invoice goes out twice; nothing is
ever skipped: a row leaves the outbox only as ``sent`` (or ``failed`` after ``max_attempts``
errors, reported).
"""

from __future__ import annotations

import contextlib
import smtplib
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formataddr

from sqlalchemy import Engine, text

from billing.domain.documents import money_text
from billing.services.billing_run import parse_period
from billing.services.invoices import invoice_pdf
from billing.settings import SmtpSettings

__all__ = ["SendReport", "SmtpSettings", "enqueue", "send_pending", "send_period"]


@dataclass
class SendReport:
    queued: int = 0
    sent: int = 0
    failed: int = 0


def enqueue(engine: Engine, period: str) -> int:
    start, _ = parse_period(period)
    with engine.begin() as conn:
        result = conn.execute(
            text(
                "INSERT INTO invoice_deliveries (invoice_id, to_address, message_id) "
                "SELECT i.id, a.email, '<' || i.number || '@streamtoll.invoice>' "
                "FROM invoices i JOIN accounts a ON a.code = i.account_code "
                "WHERE i.status = 'finalized' AND i.period_start = :start "
                "ON CONFLICT (invoice_id) DO NOTHING"
            ),
            {"start": start},
        )
        return int(result.rowcount or 0)


def _message(
    smtp: SmtpSettings,
    number: str,
    account: str,
    to: str,
    total: str,
    currency: str,
    due: str,
    message_id: str,
    pdf: bytes,
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = formataddr((smtp.sender_name, smtp.sender))
    msg["To"] = to
    msg["Subject"] = f"Invoice {number}"
    msg["Message-ID"] = message_id
    body = (
        f"Hello {account},\n\nattached is invoice {number} for {currency} {total}, due on {due}.\n"
        f"Please quote {number} with your payment.\n"
    )
    msg.set_content(body)
    msg.add_alternative(
        f"<p>Hello {account},</p><p>attached is invoice <strong>{number}</strong> for "
        f"{currency} {total}, due on {due}.</p><p>Please quote {number} with your payment.</p>",
        subtype="html",
    )
    msg.add_attachment(pdf, maintype="application", subtype="pdf", filename=f"{number}.pdf")
    return msg


def _connect(smtp: SmtpSettings) -> smtplib.SMTP:
    if smtp.tls == "ssl":
        client: smtplib.SMTP = smtplib.SMTP_SSL(smtp.host, smtp.port, context=ssl.create_default_context(), timeout=30)
    else:
        client = smtplib.SMTP(smtp.host, smtp.port, timeout=30)
        if smtp.tls == "starttls":
            client.starttls(context=ssl.create_default_context())
    if smtp.username:
        client.login(smtp.username, smtp.password or "")
    return client


def send_pending(engine: Engine, smtp: SmtpSettings, max_attempts: int = 5) -> SendReport:
    report = SendReport()
    client: smtplib.SMTP | None = None
    try:
        while True:
            with engine.begin() as conn:
                row = conn.execute(
                    text(
                        "SELECT d.invoice_id, d.to_address, d.message_id, i.number, i.account_code, i.total::text, "
                        "i.currency, i.due_on::text, i.pdf "
                        "FROM invoice_deliveries d JOIN invoices i ON i.id = d.invoice_id "
                        "WHERE d.status IN ('pending', 'sending') AND i.status = 'finalized' "
                        "ORDER BY d.invoice_id LIMIT 1 FOR UPDATE OF d SKIP LOCKED"
                    )
                ).first()
                if row is None:
                    return report
                conn.execute(
                    text(
                        "UPDATE invoice_deliveries SET status = 'sending', attempts = attempts + 1 "
                        "WHERE invoice_id = :i"
                    ),
                    {"i": row.invoice_id},
                )
            total = money_text(row.total, row.currency)
            msg = _message(
                smtp,
                row.number,
                row.account_code,
                row.to_address,
                total,
                row.currency,
                row.due_on,
                row.message_id,
                bytes(row.pdf) if row.pdf is not None else invoice_pdf(engine, row.number),
            )
            try:
                if client is None:
                    client = _connect(smtp)
                client.send_message(msg)
            except (smtplib.SMTPException, OSError) as exc:
                client = None
                with engine.begin() as conn:
                    attempts = conn.execute(
                        text(
                            "UPDATE invoice_deliveries SET status = CASE WHEN attempts >= :max THEN 'failed' "
                            "ELSE 'pending' END, last_error = :err WHERE invoice_id = :i RETURNING attempts"
                        ),
                        {"i": row.invoice_id, "err": str(exc)[:500], "max": max_attempts},
                    ).scalar_one()
                if attempts >= max_attempts:
                    report.failed += 1
                    continue
                raise
            with engine.begin() as conn:
                conn.execute(
                    text(
                        "UPDATE invoice_deliveries SET status = 'sent', sent_at = :now, last_error = NULL "
                        "WHERE invoice_id = :i"
                    ),
                    {"i": row.invoice_id, "now": datetime.now(UTC)},
                )
            report.sent += 1
    finally:
        if client is not None:
            with contextlib.suppress(smtplib.SMTPException):
                client.quit()


def send_period(engine: Engine, period: str, smtp: SmtpSettings) -> SendReport:
    queued = enqueue(engine, period)
    report = send_pending(engine, smtp)
    report.queued = queued
    return report
