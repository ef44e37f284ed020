"""Invoice documents rendered for real, read back the way a person would (pdftotext, pdftoppm)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from billing.services.billing_run import run_billing
from billing.services.invoices import invoice_pdf, invoice_view

from .seed import DEC1

pytestmark = pytest.mark.integration


def pdf_text(pdf: bytes, tmp: Path) -> str:
    assert shutil.which("pdftotext"), "pdftotext is missing: `make test` installs poppler-utils"
    path = tmp / "invoice.pdf"
    path.write_bytes(pdf)
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True).stdout


def test_finalized_invoice_pdf_reads_like_an_invoice(engine: sa.Engine, tmp_path: Path) -> None:
    issuer = {
        "name": "Streamtoll Demo GmbH",
        "address": ["Kafkastrasse 9", "10117 Berlin"],
        "email": "billing@streamtoll.example",
        "vat_id": "DE123456789",
        "bank": "IBAN DE00 1234 5678 9012",
    }
    done = run_billing(engine, "2026-11", finalize_drafts=True, clock=lambda: DEC1, issuer=issuer)
    acme = next(r for r in done if r.account == "acme")
    assert acme.number
    pdf = invoice_pdf(engine, acme.number)
    assert pdf == invoice_pdf(engine, acme.number)  # served as stored: identical bytes every time
    text = pdf_text(pdf, tmp_path)
    for expected in (
        "Invoice",
        "INV-2026-000001",
        "ACME Corporation",
        "Hauptstrasse 1",
        "Streamtoll Demo GmbH",
        "DE123456789",
        "2026-12-01",
        "2026-12-31",
        "November 2026",
        "base fee (30/30 days)",
        "EUR 168.00",
        "EUR 31.92",
        "EUR 199.92",
        "19 %",
        "Payable within 30 days",
        "Page 1 of 1",
    ):
        assert expected in text, expected
    view = invoice_view(engine, acme.number)
    for line in view["lines"]:  # every line of the invoice is on the page, with its amount
        assert line["description"].split(" (")[0] in text
    assert "tier 2: 900 × 0.08 = 72.00" in text  # the graduated tier breakdown
    png = tmp_path / "invoice"
    subprocess.run(["pdftoppm", "-png", "-r", "60", str(tmp_path / "invoice.pdf"), str(png)], check=True)
    pages = sorted(tmp_path.glob("invoice*.png"))
    assert len(pages) == 1 and pages[0].stat().st_size > 10_000
    keep = Path("out") / "test-invoice.png"  # for a person to look at after the run
    keep.parent.mkdir(exist_ok=True)
    shutil.copy(pages[0], keep)


def test_a_long_invoice_breaks_cleanly_across_pages(tmp_path: Path) -> None:
    from billing.adapters.render import render_invoice

    lines = [
        {
            "kind": "usage",
            "description": f"consume_bytes on topic-{i:03d}",
            "meter": "consume_bytes",
            "source": "proxy",
            "topics": [],
            "quantity": "12.5",
            "unit": "GB",
            "model": "per_unit",
            "amount_unrounded": "0.25",
            "amount": "0.25",
            "breakdown": [{"tier": 0, "quantity": "12.5", "unit_price": "0.02", "flat_fee": "0", "amount": "0.25"}],
            "usage_ref": {},
        }
        for i in range(90)
    ]
    snapshot = {
        "number": "INV-2026-000042",
        "account": {"code": "big", "name": "Big Co", "email": "ap@big.example", "address": ["1 Long Road"]},
        "period": {"start": "2026-11-01", "end": "2026-12-01"},
        "kind": "standard",
        "currency": "EUR",
        "plan": {"code": "growth", "version": 1},
        "lines": lines,
        "subtotal": "22.50",
        "tax_rate": "0.19",
        "tax": "4.28",
        "total": "26.78",
        "issued_on": "2026-12-01",
        "due_on": "2026-12-31",
        "payment_terms_days": 30,
    }
    _, pdf = render_invoice(snapshot, {"name": "Issuer", "address": [], "email": "i@x.io", "vat_id": "", "bank": ""})
    pages = pdf_text(pdf, tmp_path).split("\f")
    pages = [p for p in pages if p.strip()]
    assert len(pages) >= 3
    for page in pages:  # the table header repeats, every page is numbered, no line is cut in two
        assert "Description" in page and f"of {len(pages)}" in page
    text = "\n".join(pages)
    assert all(f"topic-{i:03d}" in text for i in range(90))
    assert "EUR 26.78" in pages[-1]


def test_documents_rendered_after_numbering_in_parallel_and_once(engine: sa.Engine, tmp_path: Path) -> None:
    """A billing run numbers its drafts first and renders afterwards in a process pool; an
    invoice finalized but not rendered (a crash in between) gets its document on first download
    or at the next finalizing run — the same bytes as a direct render of its snapshot."""
    from billing.adapters.render import render_invoice
    from billing.services.invoices import finalize, render_pending

    bills = run_billing(engine, "2026-11", finalize_drafts=True, clock=lambda: DEC1, render_workers=2)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT number, snapshot, pdf, html FROM invoices WHERE status = 'finalized'")
        ).all()
    assert len(rows) == len(bills) == 3 and all(r.pdf is not None for r in rows)
    for r in rows:
        html, _ = render_invoice(r.snapshot, r.snapshot["issuer"])
        assert html == r.html  # the stored document is the snapshot's rendering
    # a draft numbered without its documents, as if the process died right after numbering
    drafts = run_billing(engine, "2026-12")
    crashed = finalize(engine, drafts[0].invoice_id, "INV", lambda: DEC1, render=False)  # type: ignore[arg-type]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT pdf FROM invoices WHERE id = :i"), {"i": crashed.id}).scalar_one() is None
    first = invoice_pdf(engine, crashed.number)
    assert first.startswith(b"%PDF") and invoice_pdf(engine, crashed.number) == first
    assert render_pending(engine) == 0  # nothing left; a second render would not be stored anyway
    # voided between numbering and rendering: the document is still there, rendered on demand
    from billing.services.invoices import void

    other = finalize(engine, drafts[1].invoice_id, "INV", lambda: DEC1, render=False)  # type: ignore[arg-type]
    void(engine, other.number, "issued in error")
    voided = invoice_pdf(engine, other.number)
    assert voided.startswith(b"%PDF") and pdf_text(voided, tmp_path).count(other.number) >= 1
