"""Billing the samples on a real PostgreSQL gives the amounts a person computes by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from billing.adapters.sink import upsert_windows
from billing.services.billing_run import run_billing
from billing.services.invoices import void

from .seed import DEC1, GB, w

pytestmark = pytest.mark.integration


def totals(results: list) -> dict[str, tuple[str, Decimal, Decimal, Decimal]]:  # type: ignore[type-arg]
    return {r.account: (r.currency, r.subtotal, r.tax, r.total) for r in results}


def lines(engine: sa.Engine, invoice_id: int) -> list[tuple[str, str, Decimal]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT kind, description, amount FROM invoice_lines WHERE invoice_id = :i ORDER BY position"),
            {"i": invoice_id},
        ).all()
    return [(r.kind, r.description, r.amount) for r in rows]


def test_worked_invoices_for_the_samples(engine: sa.Engine) -> None:
    got = totals(run_billing(engine, "2026-11"))
    assert got == {
        # acme: base 49.00 + produce 100×0 + 900×0.08 + 250×0.05 = 84.50 + consume (2000−500)×0.02 = 30.00
        #       + records ceil(25/10)=3 × 1.50 = 4.50 → 168.00 (over the 100.00 minimum); tax 19 % = 31.92
        "acme": ("EUR", Decimal("168.00"), Decimal("31.92"), Decimal("199.92")),
        # globex: base 2500 × 21/30 = 1750.00 + volume 12 TB × 30.00 + 50.00 = 410.00
        #         + premium.* 2 TB × 10.00 = 20.00 + other 4 TB × 5.00 = 20.00 → 2200.00; no tax
        "globex": ("EUR", Decimal("2200.00"), Decimal("0.00"), Decimal("2200.00")),
        # initech: 10^12 B = 931.3225746… GiB × 0.10 = 93.13 + 1,234.567 thousand requests × 0.004 = 4.94
        #          → 98.07; tax 8.25 % = 8.090775 → 8.09
        "initech": ("USD", Decimal("98.07"), Decimal("8.09"), Decimal("106.16")),
    }


def test_rerun_recomputes_drafts_without_duplicates(engine: sa.Engine) -> None:
    first = run_billing(engine, "2026-11")
    upsert_windows(engine, [w(4, 0, "proxy", "User:acme-orders", "consume", "orders", b=2100 * GB, version=2)])
    second = run_billing(engine, "2026-11")
    assert [r.invoice_id for r in first] == [r.invoice_id for r in second]
    assert totals(second)["acme"][1] == Decimal("170.00")  # +100 GB consumed × 0.02
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM invoices")).scalar_one() == 3


def test_finalize_numbers_freezes_and_late_usage_becomes_an_adjustment(engine: sa.Engine) -> None:
    done = run_billing(engine, "2026-11", finalize_drafts=True, clock=lambda: DEC1)
    assert [(r.account, r.number) for r in done] == [
        ("acme", "INV-2026-000001"),
        ("globex", "INV-2026-000002"),
        ("initech", "INV-2026-000003"),
    ]
    acme_id = done[0].invoice_id
    with pytest.raises(sa.exc.DBAPIError, match="cannot be changed"), engine.begin() as conn:
        conn.execute(sa.text("UPDATE invoices SET total = 1 WHERE id = :i"), {"i": acme_id})
    with pytest.raises(sa.exc.DBAPIError, match="cannot be changed"), engine.begin() as conn:
        conn.execute(sa.text("UPDATE invoice_lines SET amount = 0 WHERE invoice_id = :i"), {"i": acme_id})
    with pytest.raises(sa.exc.DBAPIError, match="cannot be deleted"), engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM invoices WHERE id = :i"), {"i": acme_id})
    # billing November again leaves finalized invoices alone
    assert {r.status for r in run_billing(engine, "2026-11")} == {"skipped-finalized"}

    # late usage for November: 100 GB more consumed by acme → 2.00 more, billed in December
    upsert_windows(engine, [w(28, 5, "proxy", "User:acme-orders", "consume", "orders", b=100 * GB)])
    december = {r.account: r for r in run_billing(engine, "2026-12")}
    acme = december["acme"]
    assert ("adjustment", "Adjustment for 2026-11 (usage after invoice INV-2026-000001)", Decimal("2.00")) in lines(
        engine, acme.invoice_id
    )
    # base 49.00 + top-up to the 100.00 minimum 51.00 + adjustment 2.00
    assert acme.subtotal == Decimal("102.00")
    again = {r.account: r for r in run_billing(engine, "2026-12")}
    assert again["acme"].subtotal == Decimal("102.00")  # recomputed, not added twice
    run_billing(engine, "2026-12", finalize_drafts=True, clock=lambda: datetime(2027, 1, 1, tzinfo=UTC))
    # once billed, the adjustment is not billed again in January
    january = {r.account: r for r in run_billing(engine, "2027-01")}
    assert not [ln for ln in lines(engine, january["acme"].invoice_id) if ln[0] == "adjustment"]


def test_void_keeps_the_invoice(engine: sa.Engine) -> None:
    done = run_billing(engine, "2026-11", finalize_drafts=True, clock=lambda: DEC1)
    void(engine, done[0].number or "", "wrong address")
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT status, void_reason, total FROM invoices WHERE id = :i"), {"i": done[0].invoice_id}
        ).one()
    assert tuple(row) == ("void", "wrong address", Decimal("199.92"))


def test_two_concurrent_finalizing_runs_neither_duplicate_nor_skip_numbers(
    engine: sa.Engine, migrated: str, tmp_path: Path
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STREAMTOLL_")},
        "STREAMTOLL_DATABASE_URL": migrated,
    }
    cmd = [sys.executable, "-m", "streamtoll.cli", "bill", "--period", "2026-11", "--finalize", "--json"]
    # output goes to files: a full pipe nobody reads would stall a process inside its transaction
    files = [(tmp_path / f"out{i}.json", tmp_path / f"err{i}.log") for i in range(2)]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=out.open("w"), stderr=err.open("w"), text=True) for out, err in files
    ]
    for p in procs:
        p.wait(timeout=120)
    outs = [(out.read_text(), err.read_text()) for out, err in files]
    assert all(p.returncode == 0 for p in procs), [err[-2500:] for _, err in outs]
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT account_code, number FROM invoices ORDER BY number")).all()
    assert [r.number for r in rows] == ["INV-2026-000001", "INV-2026-000002", "INV-2026-000003"]
    assert sorted(r.account_code for r in rows) == ["acme", "globex", "initech"]
    for out, _ in outs:  # each run reports every account's invoice, finalized by it or by the other run
        report = json.loads(out)
        assert {r["status"] for r in report} <= {"finalized", "skipped-finalized"}
        assert sorted(r["number"] for r in report) == [r.number for r in rows]


def test_billing_sources_setting_changes_which_source_is_billed(engine: sa.Engine) -> None:
    """docs/billing.md, "Meters and sources": the source order is a setting. Bytes from the broker
    metrics first: acme's 999 GB produced (the metrics saw no consume) replace the proxy's 1,250 GB
    and 2,000 GB."""
    from billing.services.statements import statement
    from billing.settings import BillingSettings

    order = BillingSettings.from_env({"STREAMTOLL_BILLING_SOURCES": "bytes=broker_metrics,proxy"}).source_order
    assert order["records"] == ("proxy", "broker_metrics")  # not named: the default
    got = totals(run_billing(engine, "2026-11", source_order=order))
    # base 49.00 + produce 100×0 + 899×0.08 = 71.92 + consume 0 + records 3 × 1.50 = 4.50 → 125.42;
    # tax 19 % = 23.8298 → 23.83
    assert got["acme"] == ("EUR", Decimal("125.42"), Decimal("23.83"), Decimal("149.25"))
    assert got["initech"] == totals(run_billing(engine, "2026-11"))["initech"]  # proxy-less: unchanged
    rated = statement(engine, "acme", "2026-11", source_order=order)["rated_so_far"]
    assert rated["subtotal"] == "125.42"
    assert {ln["source"] for ln in rated["lines"] if "byte" in ln["description"].lower()} <= {"broker_metrics"}


def test_previews_of_all_accounts_at_once_equal_one_by_one(engine: sa.Engine) -> None:
    """The live view rates every account with the catalog read once: the same as one by one."""
    from billing.services.billing_run import preview, preview_accounts
    from billing.services.usage import read_usage

    rows = read_usage(engine, datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
    together = preview_accounts(engine, "2026-11", rows)
    assert set(together) == {"acme", "globex", "initech"}  # unassigned traffic is nobody's bill
    for account, p in together.items():
        assert p == preview(engine, account, "2026-11", [r for r in rows if r.account == account])
    assert together["acme"].subtotal == Decimal("168.00")
