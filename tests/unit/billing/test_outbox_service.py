"""The invoice email outbox over an in-memory store: each finalized invoice queued once, sent once
with its PDF, put back after an SMTP error (the run stops; the next retries it) and given up
after ``max_attempts``."""

from __future__ import annotations

import smtplib
from datetime import date
from email.message import EmailMessage

import pytest

from billing.services.delivery import SendReport, deliver
from billing.settings import SmtpSettings

from .fakes_edge import T0, FakeMailer, FakeOutbox, FakeOutboxStore, Invoice

NOV = date(2026, 11, 1)


def _store() -> FakeOutboxStore:
    store = FakeOutboxStore()
    for i, (number, account, status, period) in enumerate(
        [
            ("INV-2026-000001", "acme", "finalized", NOV),
            ("INV-2026-000002", "globex", "finalized", NOV),
            ("INV-2026-000003", "initech", "void", NOV),
            ("INV-2026-000004", "acme", "finalized", date(2026, 10, 1)),
        ],
        start=1,
    ):
        store.invoices[i] = Invoice(i, number, account, f"billing@{account}.example", period, status)
    return store


class Smtp:
    """Opens :class:`FakeMailer` connections failing with ``fail`` in turn."""

    def __init__(self, *fail: Exception) -> None:
        self.sent: list[EmailMessage] = []
        self.fail = list(fail)
        self.connections: list[FakeMailer] = []

    def __call__(self) -> FakeMailer:
        self.connections.append(FakeMailer(self.sent, self.fail))
        return self.connections[-1]


def _send(store: FakeOutboxStore, smtp: Smtp, max_attempts: int = 5, rendered: list[str] | None = None) -> SendReport:
    def render(number: str) -> bytes:
        (rendered if rendered is not None else []).append(number)
        return b"%PDF-rendered"

    return deliver(store.transaction, smtp, render, SmtpSettings(), max_attempts, clock=lambda: T0)


def test_each_finalized_invoice_of_the_period_is_queued_once() -> None:
    store = _store()
    assert FakeOutbox(store).enqueue_finalized(NOV) == 2  # not the void one, not October's
    assert FakeOutbox(store).enqueue_finalized(NOV) == 0
    assert sorted(store.deliveries) == [1, 2]


def test_queued_invoices_are_sent_once_each_with_their_pdf_and_a_fixed_message_id() -> None:
    store = _store()
    FakeOutbox(store).enqueue_finalized(NOV)
    store.invoices[2].pdf = None
    rendered: list[str] = []
    smtp = Smtp()
    report = _send(store, smtp, rendered=rendered)
    assert (report.sent, report.failed) == (2, 0)
    assert [(m["To"], m["Message-ID"], m["Subject"]) for m in smtp.sent] == [
        ("billing@acme.example", "<INV-2026-000001@streamtoll.invoice>", "Invoice INV-2026-000001"),
        ("billing@globex.example", "<INV-2026-000002@streamtoll.invoice>", "Invoice INV-2026-000002"),
    ]
    pdfs = [[p.get_content() for p in m.iter_attachments()] for m in smtp.sent]
    assert pdfs == [[b"%PDF-fake"], [b"%PDF-rendered"]] and rendered == ["INV-2026-000002"]
    assert "EUR 119.00, due on 2026-12-31" in smtp.sent[0].get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert [(d.status, d.attempts, d.sent_at) for d in store.deliveries.values()] == [("sent", 1, T0)] * 2
    assert len(smtp.connections) == 1 and smtp.connections[0].quit_called
    assert _send(store, Smtp()).sent == 0


def test_an_smtp_error_puts_the_invoice_back_stops_the_run_and_the_next_run_sends_it() -> None:
    store = _store()
    FakeOutbox(store).enqueue_finalized(NOV)
    smtp = Smtp(smtplib.SMTPServerDisconnected("connection lost"))
    with pytest.raises(smtplib.SMTPServerDisconnected):
        _send(store, smtp)
    first = store.deliveries[1]
    assert (first.status, first.attempts, first.last_error) == ("pending", 1, "connection lost")
    assert store.deliveries[2].status == "pending" and smtp.sent == []
    report = _send(store, smtp)
    assert report.sent == 2
    assert (first.status, first.attempts, first.last_error) == ("sent", 2, None)
    assert [m["Message-ID"] for m in smtp.sent] == [f"<INV-2026-00000{i}@streamtoll.invoice>" for i in (1, 2)]


def test_after_max_attempts_an_invoice_is_given_up_counted_and_the_others_still_go_out() -> None:
    store = _store()
    FakeOutbox(store).enqueue_finalized(NOV)
    smtp = Smtp(OSError("refused"), OSError("refused"))
    with pytest.raises(OSError):
        _send(store, smtp, max_attempts=2)
    report = _send(store, smtp, max_attempts=2)
    assert (report.sent, report.failed) == (1, 1)
    assert (store.deliveries[1].status, store.deliveries[1].attempts) == ("failed", 2)
    assert store.deliveries[2].status == "sent"
    assert _send(store, smtp, max_attempts=2).sent == 0  # a failed one stays failed


def test_a_row_another_sender_holds_is_skipped_and_one_left_sending_is_sent_again() -> None:
    store = _store()
    FakeOutbox(store).enqueue_finalized(NOV)
    store.held.add(1)
    store.deliveries[2].status = "sending"  # its sender died before committing "sent"
    smtp = Smtp()
    assert _send(store, smtp).sent == 1
    assert [m["Message-ID"] for m in smtp.sent] == ["<INV-2026-000002@streamtoll.invoice>"]
    assert store.deliveries[1].status == "pending"
