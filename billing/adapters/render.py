"""Invoice documents: HTML from a versioned Jinja2 template, PDF with WeasyPrint.

Rendered once, at finalize, from the frozen snapshot, and stored with the invoice: a download
serves the stored bytes, so a finalized invoice's PDF is the same on every download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

from billing.domain.documents import credit_note_view_model, invoice_view_model, statement_view_model

__all__ = [
    "CREDIT_NOTE_TEMPLATE",
    "INVOICE_TEMPLATE",
    "STATEMENT_TEMPLATE",
    "render_credit_note",
    "render_invoice",
    "render_statement_pdf",
]

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
INVOICE_TEMPLATE = "invoice/v1.html.j2"
STATEMENT_TEMPLATE = "statement/v1.html.j2"
CREDIT_NOTE_TEMPLATE = "credit_note/v1.html.j2"

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    undefined=jinja2.StrictUndefined,  # a missing value is an error, never an empty cell
    autoescape=True,
)


def render_invoice(snapshot: dict[str, Any], issuer: dict[str, Any], status: str = "finalized") -> tuple[str, bytes]:
    """(HTML, PDF) of one invoice snapshot."""
    import weasyprint

    html = _env.get_template(INVOICE_TEMPLATE).render(**invoice_view_model(snapshot, issuer, status))
    pdf = weasyprint.HTML(string=html, base_url=str(TEMPLATES)).write_pdf()
    assert pdf is not None
    return html, pdf


def render_statement_pdf(doc: dict[str, Any]) -> bytes:
    import weasyprint

    html = _env.get_template(STATEMENT_TEMPLATE).render(**statement_view_model(doc))
    pdf = weasyprint.HTML(string=html, base_url=str(TEMPLATES)).write_pdf()
    assert pdf is not None
    return bytes(pdf)


def render_credit_note(snapshot: dict[str, Any]) -> tuple[str, bytes]:
    """(HTML, PDF) of one credit note snapshot."""
    import weasyprint

    html = _env.get_template(CREDIT_NOTE_TEMPLATE).render(**credit_note_view_model(snapshot))
    pdf = weasyprint.HTML(string=html, base_url=str(TEMPLATES)).write_pdf()
    assert pdf is not None
    return html, bytes(pdf)
