"""Threshold invoices (progressive billing) on a real PostgreSQL: issued mid-month, finalized and
numbered in the one sequence, idempotent and issued once under concurrent checks; the month-end
run deducts them and its PDF shows the deduction; the database keeps them frozen. Amounts worked
out by hand.

Plan ``surge`` (EUR): base fee 100.00; produce_bytes graduated per GB, the first 100 GB at 1.00,
the rest at 0.50; ``threshold_invoice: {amount: "80.00"}``. Account ``acme``, tax 20 %."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from billing.adapters.sink import upsert_windows
from billing.services.billing_run import run_billing
from billing.services.catalog import load_accounts, load_plans
from billing.services.delivery import enqueue
from billing.services.invoices import invoice_pdf
from billing.services.progressive import check_thresholds

from .seed import GB, w

pytestmark = pytest.mark.integration

D = Decimal

PLANS = """
plans:
  - code: surge
    name: Surge
    currency: EUR
    base_fee: "100.00"
    threshold_invoice: {amount: "80.00"}
    prices:
      - meter: produce_bytes
        unit: GB
        model: graduated
        tiers:
          - {up_to: 100, unit_price: "1.00"}
          - {up_to: null, unit_price: "0.50"}
"""
ACCOUNTS = """
accounts:
  - code: acme
    name: ACME Corporation
    email: billing@acme.example
    currency: EUR
    tax_rate: "0.20"
    subscription: {plan: surge, starts_on: 2026-01-01}
    clients:
      - principal: "User:acme-*"
"""


def at(day: int, month: int = 11) -> datetime:
    return datetime(2026, month, day, 9, 0, tzinfo=UTC)


@pytest.fixture
def surge(migrated: str, tmp_path: Path) -> sa.Engine:
    engine = sa.create_engine(migrated)
    (tmp_path / "plans.yaml").write_text(PLANS)
    (tmp_path / "accounts.yaml").write_text(ACCOUNTS)
    load_plans(engine, tmp_path / "plans.yaml")
    load_accounts(engine, tmp_path / "accounts.yaml")
    return engine


def use(engine: sa.Engine, day: int, gb: int) -> None:
    upsert_windows(engine, [w(day, 10, "proxy", "User:acme-orders", "produce", "orders", b=gb * GB)])


def lines(engine: sa.Engine, number: str) -> list[tuple[str, str, Decimal]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT l.kind, l.description, l.amount FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id "
                "WHERE i.number = :n ORDER BY l.position"
            ),
            {"n": number},
        ).all()
    return [(r.kind, r.description, D(r.amount)) for r in rows]


BYTES = "produce_bytes (graduated, per GB)"


def test_threshold_invoices_and_their_deduction_at_month_end(surge: sa.Engine) -> None:
    # Nov 3: 120 GB → 100 × 1.00 + 20 × 0.50 = 110.00 ≥ 80.00; tax 22.00, total 132.00
    use(surge, 3, 120)
    [t1] = check_thresholds(surge, lambda: at(10))
    assert (t1.number, t1.subtotal, t1.tax, t1.total) == ("INV-2026-000001", D("110.00"), D("22.00"), D("132.00"))
    assert check_thresholds(surge, lambda: at(10)) == []  # idempotent: nothing new
    with surge.connect() as conn:
        row = conn.execute(
            sa.text("SELECT kind, status, total, pdf IS NOT NULL AS rendered FROM invoices WHERE number = :n"),
            {"n": t1.number},
        ).one()
        events = conn.execute(sa.text("SELECT count(*) FROM webhook_events WHERE type = 'invoice.finalized'")).scalar()
    assert (row.kind, row.status, D(row.total), row.rendered) == ("threshold", "finalized", D("132.00"), True)
    assert events == 1
    assert lines(surge, t1.number) == [("usage", BYTES, D("110.00"))]

    # Nov 20: +250 GB = 370 GB → 100 + 270 × 0.50 = 235.00; 235.00 − 110.00 = 125.00 ≥ 80.00
    use(surge, 20, 250)
    [t2] = check_thresholds(surge, lambda: at(21))
    assert (t2.number, t2.subtotal, t2.tax, t2.total) == ("INV-2026-000002", D("125.00"), D("25.00"), D("150.00"))
    assert lines(surge, t2.number) == [
        ("usage", BYTES, D("235.00")),
        ("threshold", "Invoiced on threshold INV-2026-000001", D("-110.00")),
    ]

    # late usage of Nov 5: +10 GB = 380 GB → 100 + 280 × 0.50 = 240.00
    use(surge, 5, 10)
    [final] = run_billing(surge, "2026-11", finalize_drafts=True, clock=lambda: at(2, 12))
    # 100.00 + 240.00 − 110.00 − 125.00 = 105.00; tax 21.00; total 126.00, numbered next
    assert (final.number, final.subtotal, final.tax, final.total) == (
        "INV-2026-000003",
        D("105.00"),
        D("21.00"),
        D("126.00"),
    )
    assert lines(surge, "INV-2026-000003") == [
        ("base_fee", "base fee (30/30 days)", D("100.00")),
        ("usage", BYTES, D("240.00")),
        ("threshold", "Invoiced on threshold INV-2026-000001", D("-110.00")),
        ("threshold", "Invoiced on threshold INV-2026-000002", D("-125.00")),
    ]
    # one invoice: 340.00 + 68.00 = 408.00 = 132.00 + 150.00 + 126.00
    assert t1.total + t2.total + final.total == D("408.00")
    with surge.connect() as conn:
        html = conn.execute(sa.text("SELECT html FROM invoices WHERE number = 'INV-2026-000003'")).scalar_one()
    assert "Invoiced on threshold INV-2026-000001" in html and "Invoiced on threshold INV-2026-000002" in html
    assert invoice_pdf(surge, "INV-2026-000003").startswith(b"%PDF")
    assert invoice_pdf(surge, t2.number).startswith(b"%PDF")
    assert enqueue(surge, "2026-11") == 3  # the threshold invoices are emailed like the final one

    # the period's final invoice is out: no more threshold invoices; a re-run leaves it alone
    use(surge, 28, 500)
    assert check_thresholds(surge, lambda: at(29)) == []
    assert run_billing(surge, "2026-11", clock=lambda: at(3, 12))[0].status == "skipped-finalized"
    # December: the 500 GB of Nov 28 → 380 + 500 = 880 GB → 100 + 780 × 0.50 = 490.00; adjustment
    # 590.00 − 340.00 (what November billed for itself, deductions apart) = 250.00 = 500 × 0.50
    [december] = run_billing(surge, "2026-12", clock=lambda: at(2, 12))
    with surge.connect() as conn:
        adjustment = conn.execute(
            sa.text("SELECT amount FROM invoice_lines WHERE invoice_id = :i AND kind = 'adjustment'"),
            {"i": december.invoice_id},
        ).scalar_one()
    assert D(adjustment) == D("250.00")

    # frozen: the database refuses to change a threshold invoice or its lines
    with pytest.raises(sa.exc.DBAPIError, match="cannot be changed"), surge.begin() as conn:
        conn.execute(sa.text("UPDATE invoices SET total = 1 WHERE number = 'INV-2026-000001'"))
    with pytest.raises(sa.exc.DBAPIError, match="cannot be changed"), surge.begin() as conn:
        conn.execute(sa.text("DELETE FROM invoice_lines WHERE invoice_id = :i"), {"i": t1.invoice_id})


def test_concurrent_checks_issue_one_threshold_invoice(surge: sa.Engine) -> None:
    use(surge, 3, 120)  # 110.00 ≥ 80.00
    barrier = threading.Barrier(4)
    issued: list[int] = []

    def check() -> None:
        barrier.wait()
        issued.append(len(check_thresholds(surge, lambda: at(10), render=False)))

    threads = [threading.Thread(target=check) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(issued) == [0, 0, 0, 1]
    with surge.connect() as conn:
        rows = conn.execute(sa.text("SELECT number, kind FROM invoices ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [("INV-2026-000001", "threshold")]


def test_a_mid_month_draft_takes_the_deduction_when_a_threshold_invoice_is_issued(surge: sa.Engine) -> None:
    use(surge, 3, 120)  # 110.00
    [draft] = run_billing(surge, "2026-11", clock=lambda: at(9))  # 100.00 + 110.00 = 210.00
    assert draft.subtotal == D("210.00")
    [t1] = check_thresholds(surge, lambda: at(10), render=False)
    # 210.00 − 110.00 = 100.00, tax 20.00: finalizing the draft alone bills the usage once
    with surge.connect() as conn:
        row = conn.execute(
            sa.text("SELECT status, subtotal, total FROM invoices WHERE id = :i"), {"i": draft.invoice_id}
        )
        status, subtotal, total = row.one()
    assert (status, D(subtotal), D(total)) == ("draft", D("100.00"), D("120.00"))
    assert lines(surge, t1.number) == [("usage", BYTES, D("110.00"))]


def test_the_command_checks_the_current_month_and_refuses_an_ended_one(surge: sa.Engine, migrated: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMTOLL_")} | {
        "STREAMTOLL_DATABASE_URL": migrated
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "streamtoll.cli", "thresholds", "check", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    ended = cli("--period", "2000-01", "--json")
    assert ended.returncode == 2 and "2000-01 has ended" in ended.stderr and "Traceback" not in ended.stderr
    now = cli("--json")  # the current month: no usage in it, nothing issued
    assert now.returncode == 0, now.stderr
    assert json.loads(now.stdout) == []
