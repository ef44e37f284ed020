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
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formataddr
from typing import Protocol

from sqlalchemy import Engine

from billing.adapters.uow import UnitOfWork
from billing.domain.documents import money_text
from billing.services.billing_run import parse_period
from billing.services.invoices import invoice_pdf
from billing.services.ports import Outbox
from billing.settings import SmtpSettings

__all__ = ["Mailer", "SendReport", "SmtpSettings", "deliver", "enqueue", "send_pending", "send_period"]


@dataclass
class SendReport:
    queued: int = 0
    sent: int = 0
    failed: int = 0


def enqueue(engine: Engine, period: str) -> int:
    start, _ = parse_period(period)
    with UnitOfWork(engine) as uow:
        return uow.outbox.enqueue_finalized(start)


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


class Mailer(Protocol):
    """What sending needs of an SMTP connection (:class:`smtplib.SMTP`)."""

    def send_message(self, msg: EmailMessage) -> object: ...
    def quit(self) -> object: ...


def deliver(
    transaction: Callable[[], AbstractContextManager[Outbox]],
    connect: Callable[[], Mailer],
    render_pdf: Callable[[str], bytes],
    smtp: SmtpSettings,
    max_attempts: int = 5,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> SendReport:
    """Send the outbox until it is empty: each row claimed and committed as ``sending`` before its
    message goes out, then committed as ``sent``. An SMTP or network error puts the row back
    (``failed`` after ``max_attempts``: counted, and the next row is sent) and, before that,
    ends the run with the error (the next run retries). ``transaction()`` opens a transaction
    (committed when its block ends normally), ``connect()`` an SMTP connection, ``render_pdf``
    renders an invoice's PDF by number when the row has none."""
    report = SendReport()
    client: Mailer | None = None
    try:
        while True:
            with transaction() as outbox:
                item = outbox.claim_next()
            if item is None:
                return report
            msg = _message(
                smtp,
                item.number,
                item.account,
                item.to_address,
                money_text(item.total, item.currency),
                item.currency,
                item.due_on,
                item.message_id,
                item.pdf if item.pdf is not None else render_pdf(item.number),
            )
            try:
                if client is None:
                    client = connect()
                client.send_message(msg)
            except (smtplib.SMTPException, OSError) as exc:
                client = None
                with transaction() as outbox:
                    attempts = outbox.record_failure(item.invoice_id, str(exc)[:500], max_attempts)
                if attempts >= max_attempts:
                    report.failed += 1
                    continue
                raise
            with transaction() as outbox:
                outbox.mark_sent(item.invoice_id, clock())
            report.sent += 1
    finally:
        if client is not None:
            with contextlib.suppress(smtplib.SMTPException):
                client.quit()


@contextmanager
def _transaction(engine: Engine) -> Iterator[Outbox]:
    with UnitOfWork(engine) as uow:
        yield uow.outbox


def send_pending(engine: Engine, smtp: SmtpSettings, max_attempts: int = 5) -> SendReport:
    return deliver(
        lambda: _transaction(engine),
        lambda: _connect(smtp),
        lambda number: invoice_pdf(engine, number),
        smtp,
        max_attempts,
    )


def send_period(engine: Engine, period: str, smtp: SmtpSettings) -> SendReport:
    queued = enqueue(engine, period)
    report = send_pending(engine, smtp)
    report.queued = queued
    return report
