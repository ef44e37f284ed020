"""Emailing invoices to a real SMTP server (aiosmtpd) through the outbox."""

from __future__ import annotations

import email
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from email.message import Message
from typing import Any

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller

from billing.services.billing_run import run_billing
from billing.services.invoices import invoice_pdf
from streamtoll.embedded import free_port

from .seed import DEC1

pytestmark = pytest.mark.integration


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.kill_on: int | None = None  # kill this pid when the nth message arrives
        self.victim: int | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content))
        if self.kill_on is not None and len(self.messages) == self.kill_on and self.victim:
            os.kill(self.victim, signal.SIGKILL)  # the sender dies before it hears "250"
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def send(migrated: str, port: int) -> subprocess.Popen[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STREAMTOLL_")},
        "STREAMTOLL_DATABASE_URL": migrated,
        "STREAMTOLL_SMTP_HOST": "127.0.0.1",
        "STREAMTOLL_SMTP_PORT": str(port),
        "STREAMTOLL_SMTP_SENDER": "invoices@streamtoll.example",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "streamtoll.cli", "invoices", "send", "--period", "2026-11"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_each_invoice_is_sent_once_with_its_pdf(
    engine: sa.Engine,
    migrated: str,
    smtp: tuple[Inbox, int],
) -> None:
    inbox, port = smtp
    done = run_billing(engine, "2026-11", finalize_drafts=True, clock=lambda: DEC1)
    first = send(migrated, port)
    out, _ = first.communicate(timeout=120)
    assert first.returncode == 0 and "queued 3, sent 3, failed 0" in out, out
    again = send(migrated, port)
    out, _ = again.communicate(timeout=120)
    assert "queued 0, sent 0" in out, out  # nothing twice
    by_to = {m["To"]: m for m in inbox.messages}
    assert sorted(by_to) == ["ap@globex.example", "billing@acme.example", "finance@initech.example"]
    acme = by_to["billing@acme.example"]
    assert acme["Subject"] == "Invoice INV-2026-000001" and acme["Message-ID"] == "<INV-2026-000001@streamtoll.invoice>"
    parts = list(acme.walk())
    pdf = next(p for p in parts if p.get_content_type() == "application/pdf")
    assert pdf.get_filename() == "INV-2026-000001.pdf"
    assert pdf.get_payload(decode=True) == invoice_pdf(engine, done[0].number or "")
    text = next(p for p in parts if p.get_content_type() == "text/plain").get_payload(decode=True).decode()
    assert "EUR 199.92" in text and "2026-12-31" in text


def test_killed_midway_nothing_is_skipped_and_a_resend_keeps_its_message_id(
    engine: sa.Engine,
    migrated: str,
    smtp: tuple[Inbox, int],
) -> None:
    inbox, port = smtp
    run_billing(engine, "2026-11", finalize_drafts=True, clock=lambda: DEC1)
    first = send(migrated, port)
    inbox.kill_on, inbox.victim = 2, first.pid
    first.communicate(timeout=120)
    assert first.returncode == -signal.SIGKILL
    inbox.kill_on = None
    rerun = send(migrated, port)
    out, _ = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, out
    ids = [m["Message-ID"] for m in inbox.messages]
    assert set(ids) == {f"<INV-2026-00000{n}@streamtoll.invoice>" for n in (1, 2, 3)}  # none skipped
    # only the message in flight at the kill may arrive twice, and then with the same Message-ID
    assert len(ids) <= 4 and all(ids.count(i) == 1 for i in ids if i != ids[1])
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM invoice_deliveries WHERE status = 'sent'")).scalar_one() == 3
