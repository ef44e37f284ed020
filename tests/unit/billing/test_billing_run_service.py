"""The billing run, the preview and the invoice lifecycle as use cases over in-memory fakes of the
repositories (tests/unit/billing/fakes.py): no PostgreSQL. Expected amounts are worked by hand.

Plan ``basic`` (EUR): base fee 10.00 a month, produce_bytes 0.50 per GB, produce_requests 1.00 per
thousand; no price for records (listed at zero). November 2026 has 30 days."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from billing.domain.accounts import UNASSIGNED
from billing.domain.plans import PlanVersion, Price
from billing.domain.usage import UsageRow
from billing.errors import AccountNotFound, InvoiceError
from billing.services.billing_run import preview, preview_accounts, run_billing
from billing.services.invoices import finalize, invoice_view, list_invoices, void
from tests.unit.billing.fakes import GB, FakeUnitOfWork, row

D = Decimal
BASIC = PlanVersion(
    code="basic",
    name="Basic",
    version=1,
    currency="EUR",
    base_fee=D("10.00"),
    prices=(
        Price("produce_bytes", "per_unit", "GB", unit_price=D("0.50")),
        Price("produce_requests", "per_unit", "thousand", unit_price=D("1.00")),
    ),
)


def clock() -> datetime:
    return datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


NOV3, NOV4 = date(2026, 11, 3), date(2026, 11, 4)


@pytest.fixture
def uows() -> FakeUnitOfWork:
    uows = FakeUnitOfWork()
    uows.catalog.add_account("acme", tax_rate="0.20")
    uows.catalog.subscribe("acme", BASIC, date(2026, 1, 1))
    uows.usage.stored += [
        row("acme", "proxy", NOV3, bytes_=4 * GB, records=100, requests=2_000),
        row("acme", "broker_metrics", NOV3, bytes_=5 * GB, records=120),  # proxy has bytes: not billed
        row("acme", "audit_log", NOV4, requests=3_000),  # requests come from the audit log first
    ]
    return uows


def amounts(uows: FakeUnitOfWork, invoice_id: int) -> list[tuple[str, str | None, Decimal]]:
    return [(p.line.description, p.source, p.line.rounded_amount) for p in uows.invoices.stored[invoice_id].lines]


def test_a_run_writes_one_draft_per_account_with_one_source_per_quantity(uows: FakeUnitOfWork) -> None:
    [bill] = run_billing(uows, "2026-11", clock=clock)
    # 10.00 base + 4 GB × 0.50 (proxy, not the broker's 5 GB) + 3 thousand requests × 1.00 (audit
    # log, not the proxy's 2,000); records have no price: listed at 0
    assert (bill.account, bill.status, bill.lines) == ("acme", "draft", 4)
    assert (bill.subtotal, bill.tax, bill.total) == (D("15.00"), D("3.00"), D("18.00"))
    assert bill.invoice_id is not None
    assert amounts(uows, bill.invoice_id) == [
        ("base fee (30/30 days)", None, D("10.00")),
        ("produce_bytes (per_unit, per GB)", "proxy", D("2.00")),
        ("produce_requests (per_unit, per thousand)", "audit_log", D("3.00")),
        ("produce_records: no price in plan basic (not billed)", "proxy", D("0.00")),
    ]
    record = uows.invoices.stored[bill.invoice_id].record
    assert (record.plan_code, record.plan_version, record.status, record.total) == ("basic", 1, "draft", D("18.00"))
    assert uows.invoices.locks == [("acme", date(2026, 11, 1))]


def test_bytes_fall_back_to_the_broker_metrics_without_proxy_usage(uows: FakeUnitOfWork) -> None:
    uows.usage.stored = [r for r in uows.usage.stored if r.source != "proxy"]
    [bill] = run_billing(uows, "2026-11", clock=clock)
    assert bill.invoice_id is not None
    lines = amounts(uows, bill.invoice_id)
    # 5 GB × 0.50 from the broker metrics; requests still from the audit log
    assert lines[1] == ("produce_bytes (per_unit, per GB)", "broker_metrics", D("2.50"))
    assert lines[2] == ("produce_requests (per_unit, per thousand)", "audit_log", D("3.00"))
    assert bill.subtotal == D("15.50")


def test_a_rerun_recomputes_the_draft_in_place(uows: FakeUnitOfWork) -> None:
    [first] = run_billing(uows, "2026-11", clock=clock)
    uows.usage.stored.append(row("acme", "proxy", NOV4, bytes_=2 * GB))
    [again] = run_billing(uows, "2026-11", clock=clock)
    assert again.invoice_id == first.invoice_id
    assert len(uows.invoices.of("acme", date(2026, 11, 1))) == 1
    # 6 GB × 0.50 = 3.00 now: 16.00 + 20 % tax
    assert (again.subtotal, again.tax, again.total) == (D("16.00"), D("3.20"), D("19.20"))
    assert again.invoice_id is not None
    assert amounts(uows, again.invoice_id)[1] == ("produce_bytes (per_unit, per GB)", "proxy", D("3.00"))


def test_a_finalized_invoice_is_skipped(uows: FakeUnitOfWork) -> None:
    [first] = run_billing(uows, "2026-11", clock=clock, finalize_drafts=True, render=False)
    assert (first.status, first.number) == ("finalized", "INV-2026-000001")
    assert first.invoice_id is not None
    lines_before = list(uows.invoices.stored[first.invoice_id].lines)
    uows.usage.stored.append(row("acme", "proxy", NOV4, bytes_=2 * GB))
    [again] = run_billing(uows, "2026-11", clock=clock)
    assert (again.status, again.invoice_id, again.number, again.total) == (
        "skipped-finalized",
        first.invoice_id,
        "INV-2026-000001",
        D("18.00"),
    )
    assert uows.invoices.stored[first.invoice_id].lines == lines_before


def test_late_usage_in_a_finalized_period_is_billed_once_as_an_adjustment(uows: FakeUnitOfWork) -> None:
    oct3 = date(2026, 10, 3)
    uows.usage.stored.append(row("acme", "proxy", oct3, bytes_=2 * GB))
    [october] = run_billing(uows, "2026-10", clock=clock, finalize_drafts=True, render=False)
    # 10.00 base (31/31 days) + 2 GB × 0.50
    assert (october.subtotal, october.number) == (D("11.00"), "INV-2026-000001")
    # 3 GB more arrive for October after it was finalized: 1.50 more, billed in November
    uows.usage.stored.append(row("acme", "proxy", oct3, bytes_=3 * GB))
    [november] = run_billing(uows, "2026-11", clock=clock, finalize_drafts=True, render=False)
    assert november.invoice_id is not None
    adjustment = amounts(uows, november.invoice_id)[-1]
    assert adjustment == ("Adjustment for 2026-10 (usage after invoice INV-2026-000001)", None, D("1.50"))
    assert uows.invoices.stored[november.invoice_id].lines[-1].adjusts == {
        "adjusts_period": "2026-10",
        "adjusts_invoice": "INV-2026-000001",
    }
    # November's own 15.00 + 1.50; tax once on the sum: 16.50 × 20 % = 3.30
    assert (november.subtotal, november.tax, november.total) == (D("16.50"), D("3.30"), D("19.80"))
    # December: October is billed in full now (its own 11.00 + the finalized 1.50)
    [december] = run_billing(uows, "2026-12", clock=clock)
    assert december.invoice_id is not None
    assert [d for d, _, _ in amounts(uows, december.invoice_id)] == [
        "base fee (31/31 days)",
        "produce_bytes (per_unit, per GB)",
        "produce_requests (per_unit, per thousand)",
    ]
    assert december.subtotal == D("10.00")


def test_usage_without_a_subscription_is_listed_at_zero(uows: FakeUnitOfWork) -> None:
    uows.catalog.add_account("beta")
    uows.usage.stored += [
        row("beta", "proxy", NOV3, bytes_=7 * GB, topic="b"),
        row("beta", "proxy", NOV4, bytes_=1 * GB, topic="a"),
        row(UNASSIGNED, "proxy", NOV3, bytes_=GB),  # nobody's: never billed
        row("ghost", "proxy", NOV3, bytes_=GB),  # not an account of the catalog
    ]
    bills = {b.account: b for b in run_billing(uows, "2026-11", clock=clock)}
    assert sorted(bills) == ["acme", "beta"]
    beta = bills["beta"]
    assert (beta.status, beta.subtotal, beta.tax, beta.total) == ("draft", D("0"), D("0"), D("0"))
    assert beta.invoice_id is not None
    [line] = uows.invoices.stored[beta.invoice_id].lines
    assert (line.line.description, line.source, line.line.quantity_raw, line.line.usage_topics) == (
        "produce_bytes (no subscription)",
        "proxy",
        8 * GB,
        ("a", "b"),
    )
    assert uows.invoices.stored[beta.invoice_id].record.plan_code is None


def test_a_subscription_without_usage_pays_its_base_fee() -> None:
    uows = FakeUnitOfWork()
    uows.catalog.add_account("idle", tax_rate="0.19")
    # from 16 November: 15 of 30 days; 5.00 × 19 % = 0.95
    uows.catalog.subscribe("idle", BASIC, date(2026, 11, 16))
    [bill] = run_billing(uows, "2026-11", clock=clock)
    assert (bill.subtotal, bill.tax, bill.total) == (D("5.00"), D("0.95"), D("5.95"))


def test_the_preview_says_what_the_run_would_write(uows: FakeUnitOfWork) -> None:
    rows = list(uows.usage.stored)
    p = preview(uows, "acme", "2026-11", rows)
    assert (p.currency, p.plan, p.subtotal, p.tax, p.total) == ("EUR", "basic v1", D("15.00"), D("3.00"), D("18.00"))
    assert p.lines[1] == {"description": "produce_bytes (per_unit, per GB)", "source": "proxy", "amount": "2.00"}
    # rows read back from their JSON form (a statement's rating rows) rate the same
    assert preview(uows, "acme", "2026-11", [UsageRow.from_dict(r.as_dict()) for r in rows]) == p
    assert uows.invoices.stored == {}  # nothing was written
    with pytest.raises(AccountNotFound):
        preview(uows, "nobody", "2026-11", rows)


def test_preview_accounts_rates_each_account_of_the_catalog(uows: FakeUnitOfWork) -> None:
    uows.catalog.add_account("beta")
    rows = [*uows.usage.stored, row("beta", "proxy", NOV3, bytes_=GB), row("ghost", "proxy", NOV3, bytes_=GB)]
    previews = preview_accounts(uows, "2026-11", rows)
    assert sorted(previews) == ["acme", "beta"]
    assert previews["acme"].total == D("18.00")
    assert (previews["beta"].plan, previews["beta"].total) == (None, D("0"))


def test_finalize_numbers_and_freezes_a_draft_once(uows: FakeUnitOfWork) -> None:
    [bill] = run_billing(uows, "2026-11", clock=clock)
    done = finalize(uows, f"draft-{bill.invoice_id}", "INV", clock, render=False)
    assert (done.number, done.account_code, done.total, done.currency) == ("INV-2026-000001", "acme", D("18.00"), "EUR")
    view = invoice_view(uows, "INV-2026-000001")
    assert (view["status"], view["number"], view["due_on"], view["total"]) == (
        "finalized",
        "INV-2026-000001",
        "2027-01-01",
        "18.00",
    )
    assert view["account"]["name"] == "acme Ltd"
    with pytest.raises(InvoiceError, match="already finalized"):
        finalize(uows, "INV-2026-000001", "INV", clock, render=False)


def test_void_needs_a_reason_and_a_finalized_invoice(uows: FakeUnitOfWork) -> None:
    [bill] = run_billing(uows, "2026-11", clock=clock)
    with pytest.raises(InvoiceError, match="only a finalized invoice"):
        void(uows, f"draft-{bill.invoice_id}", "wrong plan", clock)
    number = finalize(uows, f"draft-{bill.invoice_id}", "INV", clock, render=False).number
    with pytest.raises(InvoiceError, match="reason"):
        void(uows, number, "  ", clock)
    assert void(uows, number, " wrong plan ", clock) == number
    assert invoice_view(uows, number)["void_reason"] == "wrong plan"
    with pytest.raises(InvoiceError, match="is void"):
        void(uows, number, "again", clock)
    # a voided period is billed afresh
    [again] = run_billing(uows, "2026-11", clock=clock)
    assert again.status == "draft" and again.invoice_id != bill.invoice_id


def test_list_invoices_filters_and_pages(uows: FakeUnitOfWork) -> None:
    uows.catalog.add_account("beta")
    uows.catalog.subscribe("beta", BASIC, date(2026, 1, 1))
    run_billing(uows, "2026-11", clock=clock)
    finalize(uows, 1, "INV", clock, render=False)
    listed = list_invoices(uows)
    assert [(r["ref"], r["account"], r["status"], r["total"]) for r in listed] == [
        ("INV-2026-000001", "acme", "finalized", "18.00"),
        ("draft-2", "beta", "draft", "10.00"),
    ]
    assert [r["ref"] for r in list_invoices(uows, drafts=False)] == ["INV-2026-000001"]
    assert [r["ref"] for r in list_invoices(uows, after=(date(2026, 11, 1), "acme", 1), limit=5)] == ["draft-2"]


def test_finalize_and_void_each_emit_one_webhook_event_in_their_transaction(uows: FakeUnitOfWork) -> None:
    [bill] = run_billing(uows, "2026-11", clock=clock)
    assert uows.webhooks.emitted == []  # a draft has no event
    number = finalize(uows, f"draft-{bill.invoice_id}", "INV", clock, render=False).number
    void(uows, number, "wrong plan", clock)
    finalized, voided = uows.webhooks.emitted
    doc = json.loads(finalized.body)
    assert (doc["type"], doc["account"], doc["created_at"]) == ("invoice.finalized", "acme", "2026-12-02T09:00:00Z")
    assert doc["id"] == finalized.id and finalized.id.startswith("evt_")
    # 10.00 base + 4 GB × 0.50 + 3 thousand requests × 1.00 = 15.00; tax 20 % = 3.00
    assert doc["data"]["invoice"] == {
        "number": "INV-2026-000001",
        "account": "acme",
        "period": {"start": "2026-11-01", "end": "2026-12-01"},
        "kind": "standard",
        "currency": "EUR",
        "subtotal": "15.00",
        "tax": "3.00",
        "total": "18.00",
        "issued_on": "2026-12-02",
        "due_on": "2027-01-01",
    }
    vdoc = json.loads(voided.body)
    assert vdoc["type"] == "invoice.voided" and vdoc["id"] != doc["id"]
    assert vdoc["data"]["invoice"]["void_reason"] == "wrong plan"
    assert vdoc["data"]["invoice"]["total"] == "18.00"


def test_a_refused_finalize_emits_nothing(uows: FakeUnitOfWork) -> None:
    [bill] = run_billing(uows, "2026-11", clock=clock)
    finalize(uows, f"draft-{bill.invoice_id}", "INV", clock, render=False)
    with pytest.raises(InvoiceError):
        finalize(uows, f"draft-{bill.invoice_id}", "INV", clock, render=False)
    assert [e.type for e in uows.webhooks.emitted] == ["invoice.finalized"]
