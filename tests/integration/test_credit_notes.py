"""Credit notes on a real PostgreSQL: a partial credit note for the samples carried to the next
month's invoice, the credited invoice unchanged to the byte, numbers without gaps under
concurrent issuers. Amounts worked out by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from billing.services.billing_run import run_billing
from billing.services.credit_notes import create_credit_note, credit_note_pdf, list_credit_notes
from billing.services.invoices import invoice_view

from .seed import DEC1

pytestmark = pytest.mark.integration

D = Decimal


def _stored(engine: sa.Engine, invoice_id: int) -> tuple[Any, list[Any]]:
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM invoices WHERE id = :i"), {"i": invoice_id}).one()
        lines = conn.execute(
            sa.text("SELECT * FROM invoice_lines WHERE invoice_id = :i ORDER BY position"), {"i": invoice_id}
        ).all()
    return tuple(row), [tuple(r) for r in lines]


def test_a_partial_credit_note_is_carried_to_the_next_invoice(engine: sa.Engine) -> None:
    november = {r.account: r for r in run_billing(engine, "2026-11", finalize_drafts=True, clock=lambda: DEC1)}
    acme = november["acme"]
    # acme, November: 168.00 + 19 % = 31.92 → 199.92 (test_billing.py works it out)
    assert (acme.number, acme.subtotal, acme.tax, acme.total) == (
        "INV-2026-000001",
        D("168.00"),
        D("31.92"),
        D("199.92"),
    )
    before = _stored(engine, int(acme.invoice_id or 0))

    issued = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
    note = create_credit_note(engine, "INV-2026-000001", amount=D("59.50"), reason="goodwill", clock=lambda: issued)
    # tax = round(59.50 × 31.92 / 199.92) = round(59.50 × 0.19 / 1.19) = 9.50; net = 50.00
    assert (note["number"], note["net"], note["tax"], note["total"]) == ("CN-2026-0001", "50.00", "9.50", "59.50")
    assert credit_note_pdf(engine, "CN-2026-0001").startswith(b"%PDF")
    view = invoice_view(engine, "INV-2026-000001")
    assert (view["total"], view["credited"], view["balance_due"]) == ("199.92", "59.50", "140.42")

    december = {r.account: r for r in run_billing(engine, "2026-12")}["acme"]
    # base 49.00 + top-up to the 100.00 minimum 51.00 = 100.00 − credit 50.00 = 50.00; tax 19 % 9.50
    with engine.connect() as conn:
        applied = conn.execute(
            sa.text("SELECT kind, description, amount FROM invoice_lines WHERE invoice_id = :i ORDER BY position"),
            {"i": december.invoice_id},
        ).all()
    assert tuple(applied[-1]) == ("credit_note", "Credit note CN-2026-0001 applied", D("-50.00"))
    assert (december.subtotal, december.tax, december.total) == (D("50.00"), D("9.50"), D("59.50"))
    # a re-run applies it once; the credited invoice is unchanged, row and lines, to the byte
    assert {r.account: r for r in run_billing(engine, "2026-12")}["acme"].total == D("59.50")
    assert _stored(engine, int(acme.invoice_id or 0)) == before
    with pytest.raises(sa.exc.DBAPIError, match="cannot be changed"), engine.begin() as conn:
        conn.execute(sa.text("UPDATE credit_notes SET total = 1"))


def test_concurrent_credit_notes_are_numbered_without_gaps_and_capped(
    engine: sa.Engine, migrated: str, tmp_path: Path
) -> None:
    run_billing(engine, "2026-11", finalize_drafts=True, clock=lambda: DEC1, render=False)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STREAMTOLL_")},
        "STREAMTOLL_DATABASE_URL": migrated,
    }
    # globex, November: 2200.00 without tax; two issuers at once of 1000.00 each
    cmd = [sys.executable, "-m", "streamtoll.cli", "credit-notes", "create", "INV-2026-000002"]
    cmd += ["--amount", "1000.00", "--reason", "error", "--json"]
    files = [(tmp_path / f"out{i}.json", tmp_path / f"err{i}.log") for i in range(2)]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=out.open("w"), stderr=err.open("w"), text=True) for out, err in files
    ]
    for p in procs:
        p.wait(timeout=120)
    outs = [(out.read_text(), err.read_text()) for out, err in files]
    assert all(p.returncode == 0 for p in procs), [err[-2500:] for _, err in outs]
    assert sorted(json.loads(out)["number"] for out, _ in outs) == ["CN-2026-0001", "CN-2026-0002"]

    # 200.00 is left: more is refused (exit 2) and spends no number; --full takes the rest
    over = subprocess.run(
        [*cmd[:-5], "--amount", "200.01", "--reason", "error"], env=env, capture_output=True, text=True
    )
    assert over.returncode == 2 and "200.00 EUR left" in over.stderr
    rest = subprocess.run(
        [*cmd[:-5], "--full", "--reason", "error", "--settle", "refunded", "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert rest.returncode == 0, rest.stderr
    assert (json.loads(rest.stdout)["number"], json.loads(rest.stdout)["total"]) == ("CN-2026-0003", "200.00")
    listed = list_credit_notes(engine, invoice_ref="INV-2026-000002")
    assert [(n["number"], n["total"]) for n in listed] == [
        ("CN-2026-0001", "1000.00"),
        ("CN-2026-0002", "1000.00"),
        ("CN-2026-0003", "200.00"),
    ]
    assert invoice_view(engine, "INV-2026-000002")["balance_due"] == "0.00"


def test_credit_notes_over_http_finance_issues_once_partners_read_their_own(engine: sa.Engine) -> None:
    import httpx

    from billing.api.app import create_app
    from billing.services.keys import create_key
    from streamtoll.serving import running

    run_billing(engine, "2026-11", finalize_drafts=True, clock=lambda: DEC1, render=False)
    finance, acme, globex = (
        create_key(engine, "finance", None),
        create_key(engine, "partner", "acme"),
        create_key(engine, "partner", "globex"),
    )
    with running(create_app(engine, auth_limit=1000)) as base:

        def post(key: str, **params: str) -> httpx.Response:
            headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "cn-1"}
            return httpx.post(base + "/v1/invoices/INV-2026-000001/credit-notes", headers=headers, params=params)

        def get(key: str, path: str) -> httpx.Response:
            return httpx.get(base + path, headers={"Authorization": f"Bearer {key}"}, timeout=30)

        assert post(acme, amount="10.00", reason="goodwill").status_code == 403
        first = post(finance, amount="59.50", reason="goodwill")
        assert first.status_code == 200, first.text
        # 59.50 of 199.92 (tax 31.92): tax 59.50 × 0.19 / 1.19 = 9.50, net 50.00
        assert (first.json()["number"], first.json()["net"], first.json()["tax"]) == ("CN-2026-0001", "50.00", "9.50")
        again = post(finance, amount="59.50", reason="goodwill")  # a retry: the first answer, nothing issued
        assert again.headers["Idempotent-Replayed"] == "true" and again.content == first.content
        over = httpx.post(
            base + "/v1/invoices/INV-2026-000001/credit-notes",
            headers={"Authorization": f"Bearer {finance}"},
            params={"amount": "140.43", "reason": "error"},
        )
        assert over.status_code == 409 and "140.42 EUR left" in over.json()["detail"]
        invoice = get(acme, "/v1/invoices/INV-2026-000001").json()
        assert (invoice["credited"], invoice["balance_due"]) == ("59.50", "140.42")
        assert [n["number"] for n in get(acme, "/v1/credit-notes").json()] == ["CN-2026-0001"]
        assert get(globex, "/v1/credit-notes").json() == []
        assert get(globex, "/v1/credit-notes/CN-2026-0001").status_code == 404
        assert get(acme, "/v1/credit-notes/CN-2026-0001/pdf").content.startswith(b"%PDF")


def test_runs_of_two_periods_apply_an_open_credit_once_between_them(engine: sa.Engine) -> None:
    """December's and January's runs both see the November credit as open; they apply it one
    after the other (a lock per account), so the two drafts together never take more than it."""
    import threading

    run_billing(engine, "2026-11", finalize_drafts=True, clock=lambda: DEC1, render=False)
    create_credit_note(engine, "INV-2026-000001", amount=D("59.50"), reason="goodwill")  # net 50.00
    done: dict[str, Any] = {}

    def bill(period: str) -> None:
        done[period] = {r.account: r for r in run_billing(engine, period)}["acme"]

    # while another transaction holds acme's open credits, a run waits for it
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('credits:acme'))"))
        runs = [threading.Thread(target=bill, args=(p,)) for p in ("2026-12", "2027-01")]
        for t in runs:
            t.start()
        runs[0].join(2.0)
        assert not done, "a run applied credits while they were held"
    for t in runs:
        t.join(60)
    assert set(done) == {"2026-12", "2027-01"}
    with engine.connect() as conn:
        applied = conn.execute(
            sa.text(
                "SELECT coalesce(sum(l.amount), 0) FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id "
                "WHERE i.account_code = 'acme' AND l.kind = 'credit_note'"
            )
        ).scalar_one()
    assert applied == D("-50.00")
