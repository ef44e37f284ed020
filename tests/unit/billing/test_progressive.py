"""Threshold invoices (progressive billing) over fakes: the plan field, the rules, the check and
the month-end deduction. Amounts worked out by hand.

Plan ``surge`` (EUR): base fee 100.00 a month; produce_bytes graduated per GB: the first 100 GB at
1.00, the rest at 0.50; ``threshold_invoice: {amount: "80.00"}``. Account ``acme``, tax 20 %.
November 2026 (30 days)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from billing.domain.invoicing import PricedLine
from billing.domain.plan_documents import document_digest, plan_document, plan_from_document
from billing.domain.plans import PlanVersion, Price, Tier, parse_plan
from billing.domain.progressive import ThresholdInvoiced, deduction_lines, threshold_due, uninvoiced
from billing.domain.rating import Line
from billing.errors import PlanError, RunError
from billing.services.billing_run import run_billing
from billing.services.invoices import finalize
from billing.services.progressive import check_thresholds
from billing.services.shadow import shadow_run
from tests.unit.billing.fakes import GB, FakeUnitOfWork, row

D = Decimal
NOV = date(2026, 11, 1)
SURGE = PlanVersion(
    code="surge",
    name="Surge",
    version=1,
    currency="EUR",
    base_fee=D("100.00"),
    prices=(Price("produce_bytes", "graduated", "GB", tiers=(Tier(D(100), D("1.00")), Tier(None, D("0.50")))),),
    threshold_invoice=D("80.00"),
)


def at(day: int, month: int = 11) -> datetime:
    return datetime(2026, month, day, 9, 0, tzinfo=UTC)


def clock_at(when: datetime):  # type: ignore[no-untyped-def]
    return lambda: when


@pytest.fixture
def uows() -> FakeUnitOfWork:
    uows = FakeUnitOfWork()
    uows.catalog.add_account("acme", tax_rate="0.20")
    uows.catalog.subscribe("acme", SURGE, date(2026, 1, 1))
    return uows


def use(uows: FakeUnitOfWork, day: int, gb: int) -> None:
    uows.usage.stored.append(row("acme", "proxy", date(2026, 11, day), bytes_=gb * GB))


def described(uows: FakeUnitOfWork, invoice_id: int) -> list[tuple[str, str, Decimal]]:
    return [(p.line.kind, p.line.description, p.line.rounded_amount) for p in uows.invoices.stored[invoice_id].lines]


BYTES = "produce_bytes (graduated, per GB)"


# --- the plan field ---


def _plan(**extra: object) -> dict[str, object]:
    return {"code": "surge", "name": "Surge", "currency": "EUR", **extra}


def test_a_plan_may_set_a_threshold_and_it_is_part_of_the_version_document_and_digest() -> None:
    plan = parse_plan(_plan(threshold_invoice={"amount": "1000.00"}), "plans[0]")
    assert plan.threshold_invoice == D("1000.00")
    doc = plan_document(plan)
    assert doc["threshold_invoice"] == {"amount": "1000.00"}
    assert plan_from_document(1, doc) == plan
    without = plan_document(parse_plan(_plan(), "plans[0]"))
    assert "threshold_invoice" not in without  # a plan written before the field keeps its digest
    changed = plan_document(parse_plan(_plan(threshold_invoice={"amount": "500"}), "plans[0]"))
    assert len({document_digest(doc), document_digest(without), document_digest(changed)}) == 3


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"amount": 0.5}, "threshold_invoice.amount: 0.5 is a YAML float"),
        ({"amount": "0"}, "threshold_invoice.amount: must be greater than 0"),
        ({"amount": "10.001"}, "threshold_invoice.amount: 10.001 is finer than EUR's minor unit"),
        ({"amount": "10", "every": 2}, "threshold_invoice.every: unknown field"),
        ("1000", "threshold_invoice: must be a mapping with an amount"),
    ],
)
def test_a_wrong_threshold_is_refused_by_its_path(value: object, message: str) -> None:
    with pytest.raises(PlanError) as refused:
        parse_plan(_plan(threshold_invoice=value), "plans[0]")
    assert any(message in p for p in refused.value.problems), refused.value.problems


# --- the rules ---


def _line(kind: str, amount: str) -> PricedLine:
    return PricedLine(Line(kind, kind, D(amount), D(amount)))  # type: ignore[arg-type]


def test_only_usage_lines_count_and_each_earlier_threshold_invoice_is_deducted() -> None:
    lines = [_line("base_fee", "100.00"), _line("usage", "60.00"), _line("flat", "30.00"), _line("usage", "25.00")]
    # usage only: 60.00 + 25.00 = 85.00 (the base fee and the flat price wait for the final invoice)
    assert uninvoiced(lines, [], "EUR") == D("85.00")
    assert threshold_due(D("86.00"), lines, [], "EUR") == []
    assert threshold_due(None, lines, [], "EUR") == []
    assert [p.line.rounded_amount for p in threshold_due(D("85.00"), lines, [], "EUR")] == [D("60.00"), D("25.00")]
    earlier = [ThresholdInvoiced("INV-2026-000001", D("50.00"))]
    # 85.00 − 50.00 = 35.00 not yet invoiced
    assert uninvoiced(lines, earlier, "EUR") == D("35.00")
    assert threshold_due(D("40.00"), lines, earlier, "EUR") == []
    due = threshold_due(D("35.00"), lines, earlier, "EUR")
    assert [(p.line.kind, p.line.description, p.line.rounded_amount) for p in due[2:]] == [
        ("threshold", "Invoiced on threshold INV-2026-000001", D("-50.00"))
    ]
    assert deduction_lines(earlier)[0].adjusts == {"threshold_invoice": "INV-2026-000001"}


# --- the check and the month end ---


def test_a_threshold_invoice_mid_month_and_its_deduction_at_month_end_add_up_to_one_invoice(
    uows: FakeUnitOfWork,
) -> None:
    # Nov 3: 120 GB → 100 × 1.00 + 20 × 0.50 = 110.00 of usage ≥ 80.00: a threshold invoice
    use(uows, 3, 120)
    [t1] = check_thresholds(uows, clock_at(at(10)), render=False)
    assert (t1.account, t1.number) == ("acme", "INV-2026-000001")
    # 110.00, tax 20 % = 22.00, total 132.00; finalized at once, kind threshold, no base fee
    assert (t1.subtotal, t1.tax, t1.total) == (D("110.00"), D("22.00"), D("132.00"))
    record = uows.invoices.stored[t1.invoice_id].record
    assert (record.kind, record.status, record.number) == ("threshold", "finalized", "INV-2026-000001")
    assert described(uows, t1.invoice_id) == [("usage", BYTES, D("110.00"))]
    [event] = uows.webhooks.emitted
    assert event.type == "invoice.finalized"
    invoice = json.loads(event.body)["data"]["invoice"]
    assert (invoice["kind"], invoice["number"], invoice["total"]) == ("threshold", "INV-2026-000001", "132.00")
    assert uows.invoices.locks == [("acme", NOV)]

    # a second check at once: 110.00 − 110.00 = 0 not invoiced: nothing
    assert check_thresholds(uows, clock_at(at(10)), render=False) == []

    # Nov 12: +100 GB = 220 GB → 100 + 120 × 0.50 = 160.00; 160.00 − 110.00 = 50.00 < 80.00: nothing
    use(uows, 12, 100)
    assert check_thresholds(uows, clock_at(at(13)), render=False) == []

    # Nov 20: +150 GB = 370 GB → 100 + 270 × 0.50 = 235.00; 235.00 − 110.00 = 125.00 ≥ 80.00
    use(uows, 20, 150)
    [t2] = check_thresholds(uows, clock_at(at(21)), render=False)
    assert t2.number == "INV-2026-000002"
    assert described(uows, t2.invoice_id) == [
        ("usage", BYTES, D("235.00")),
        ("threshold", "Invoiced on threshold INV-2026-000001", D("-110.00")),
    ]
    # 125.00, tax 25.00, total 150.00
    assert (t2.subtotal, t2.tax, t2.total) == (D("125.00"), D("25.00"), D("150.00"))

    # late usage for Nov 5 arrives after: +10 GB = 380 GB → 100 + 280 × 0.50 = 240.00
    use(uows, 5, 10)
    [final] = run_billing(uows, "2026-11", clock=clock_at(at(2, 12)))
    assert final.invoice_id is not None
    assert described(uows, final.invoice_id) == [
        ("base_fee", "base fee (30/30 days)", D("100.00")),
        ("usage", BYTES, D("240.00")),
        ("threshold", "Invoiced on threshold INV-2026-000001", D("-110.00")),
        ("threshold", "Invoiced on threshold INV-2026-000002", D("-125.00")),
    ]
    # 100.00 + 240.00 − 110.00 − 125.00 = 105.00, tax 21.00, total 126.00
    assert (final.subtotal, final.tax, final.total) == (D("105.00"), D("21.00"), D("126.00"))
    # one invoice would have been 100.00 + 240.00 = 340.00, tax 68.00, total 408.00:
    # 110.00 + 125.00 + 105.00 = 340.00; 22.00 + 25.00 + 21.00 = 68.00; 132.00 + 150.00 + 126.00 = 408.00
    assert t1.subtotal + t2.subtotal + final.subtotal == D("340.00")
    assert t1.tax + t2.tax + final.tax == D("68.00")
    assert t1.total + t2.total + final.total == D("408.00")

    # the final invoice finalized, late usage of November billed in December is only the new usage:
    # +2 GB on Nov 28 = 382 GB → 241.00; the adjustment is 341.00 − 340.00 = 1.00 (not 236.00:
    # the deductions are not what November billed for itself)
    finalize(uows, final.invoice_id, "INV", clock_at(at(2, 12)), render=False)
    assert check_thresholds(uows, clock_at(at(29)), render=False) == []  # November's final invoice is out
    use(uows, 28, 2)
    [december] = run_billing(uows, "2026-12", clock=clock_at(at(2, 12)))
    assert december.invoice_id is not None
    adjustments = [a for k, _, a in described(uows, december.invoice_id) if k == "adjustment"]
    assert adjustments == [D("1.00")]


def test_the_base_fee_does_not_count_towards_the_threshold(uows: FakeUnitOfWork) -> None:
    # 70 GB → 70.00 of usage < 80.00, though with the 100.00 base fee the invoice would be 170.00
    use(uows, 3, 70)
    assert check_thresholds(uows, clock_at(at(10)), render=False) == []


def test_a_void_threshold_invoice_is_not_deducted_and_its_usage_is_invoiced_again(uows: FakeUnitOfWork) -> None:
    use(uows, 3, 90)  # 90.00 ≥ 80.00
    [t1] = check_thresholds(uows, clock_at(at(10)), render=False)
    uows.invoices.set_status(t1.invoice_id, "void")
    # nothing is deducted: 90.00 − 0 ≥ 80.00, another threshold invoice without a deduction line
    [t2] = check_thresholds(uows, clock_at(at(11)), render=False)
    assert described(uows, t2.invoice_id) == [("usage", BYTES, D("90.00"))]


def test_no_threshold_invoice_for_a_plan_without_one_or_an_ended_period(uows: FakeUnitOfWork) -> None:
    use(uows, 3, 500)
    with pytest.raises(RunError, match="2026-11 has ended"):
        check_thresholds(uows, clock_at(at(1, 12)), period="2026-11", render=False)
    other = FakeUnitOfWork()
    other.catalog.add_account("acme")
    other.catalog.subscribe("acme", PlanVersion("basic", "Basic", 1, "EUR", prices=SURGE.prices), date(2026, 1, 1))
    other.usage.stored = list(uows.usage.stored)
    assert check_thresholds(other, clock_at(at(10)), render=False) == []


def test_a_draft_written_before_a_threshold_invoice_takes_its_deduction_at_once(uows: FakeUnitOfWork) -> None:
    use(uows, 3, 120)  # 110.00
    [draft] = run_billing(uows, "2026-11", clock=clock_at(at(9)))  # a mid-month run: 100.00 + 110.00
    assert draft.subtotal == D("210.00") and draft.invoice_id is not None
    [t1] = check_thresholds(uows, clock_at(at(10)), render=False)
    # the draft is recomputed: 100.00 + 110.00 − 110.00 = 100.00, tax 20.00; finalizing it alone
    # bills the usage once
    record = uows.invoices.stored[draft.invoice_id].record
    assert (record.status, record.subtotal, record.tax, record.total) == ("draft", D("100.00"), D("20.00"), D("120.00"))
    assert described(uows, draft.invoice_id)[-1] == ("threshold", f"Invoiced on threshold {t1.number}", D("-110.00"))


def test_tax_is_rounded_once_per_invoice_so_it_may_differ_from_one_invoice_by_a_cent() -> None:
    tiny = PlanVersion(
        "tiny",
        "Tiny",
        1,
        "EUR",
        prices=(Price("produce_bytes", "per_unit", "GB", unit_price=D("0.50")),),
        threshold_invoice=D("0.50"),
    )
    uows = FakeUnitOfWork()
    uows.catalog.add_account("acme", tax_rate="0.19")
    uows.catalog.subscribe("acme", tiny, date(2026, 1, 1))
    use(uows, 3, 1)  # 1 GB × 0.50 = 0.50 ≥ 0.50; tax 0.50 × 0.19 = 0.095 → 0.10 (half up)
    [t1] = check_thresholds(uows, clock_at(at(10)), render=False)
    assert (t1.subtotal, t1.tax) == (D("0.50"), D("0.10"))
    use(uows, 12, 1)  # month end: 2 GB = 1.00 − 0.50 = 0.50, tax 0.10
    [final] = run_billing(uows, "2026-11", clock=clock_at(at(2, 12)))
    assert (final.subtotal, final.tax) == (D("0.50"), D("0.10"))
    # one invoice: 1.00, tax 0.19. Subtotals add up exactly (1.00); the taxes, 0.20, are one cent
    # over: two invoices, at most ⌊(2 + 1) / 2⌋ = 1 minor unit (billing.domain.progressive)
    assert t1.subtotal + final.subtotal == D("1.00")
    assert t1.tax + final.tax - D("0.19") == D("0.01")


def test_a_shadow_run_carries_the_threshold_deductions_so_the_difference_is_the_candidates(
    uows: FakeUnitOfWork,
) -> None:
    use(uows, 3, 120)  # 110.00: INV-2026-000001
    check_thresholds(uows, clock_at(at(10)), render=False)
    run_billing(uows, "2026-11", clock=clock_at(at(2, 12)))  # 100.00 + 110.00 − 110.00 = 100.00
    flat = PlanVersion(
        "flat", "Flat", 1, "EUR", base_fee=D("100.00"), prices=(Price("produce_bytes", "per_unit", "GB", D("1.00")),)
    )
    uows.catalog.plans[("flat", 1)] = flat
    [row_] = shadow_run(uows, "2026-11", "flat")
    # the candidate: 100.00 + 120 × 1.00 = 220.00, − 110.00 already invoiced = 110.00; real 100.00:
    # the difference 10.00 is the candidate's alone (120.00 against the graduated 110.00)
    assert row_.shadow is not None
    assert (row_.real.totals.subtotal, row_.shadow.subtotal) == (D("100.00"), D("110.00"))


def test_a_unit_grant_covers_usage_before_the_threshold_and_the_final_invoice_deducts_what_was_billed(
    uows: FakeUnitOfWork,
) -> None:
    from billing.services.grants import add_grant

    add_grant(
        uows, "acme", reason="launch", created_by="finance", units=D(50), meter="produce_bytes", unit="GB",
        effective_on=NOV, clock=clock_at(at(1)),
    )  # fmt: skip
    # Nov 3: 120 GB, the grant covers 50 → 70 GB priced = 70.00 < 80.00: no threshold invoice yet
    # (uncovered it would have been 110.00)
    use(uows, 3, 120)
    assert check_thresholds(uows, clock_at(at(3)), render=False) == []
    # Nov 4: +40 GB = 160 GB, 50 covered → 110 GB priced = 100 + 10 × 0.50 = 105.00 ≥ 80.00
    use(uows, 4, 40)
    [t1] = check_thresholds(uows, clock_at(at(5)), render=False)
    assert described(uows, t1.invoice_id) == [("usage", BYTES, D("105.00"))]  # no burn of its own
    # month end: 100.00 base fee + 105.00 (the same 50 GB covered) + the grant line at 0 − 105.00 = 100.00
    [final] = run_billing(uows, "2026-11", clock=clock_at(at(1, 12)))
    assert final.invoice_id is not None
    lines = described(uows, final.invoice_id)
    assert [(k, a) for k, _, a in lines] == [
        ("base_fee", D("100.00")),
        ("usage", D("105.00")),
        ("grant", D("0.00")),
        ("threshold", D("-105.00")),
    ]
    assert final.subtotal == D("100.00")
    # one invoice would have been 100.00 + 105.00 = 205.00 = 105.00 + 100.00
    assert t1.subtotal + final.subtotal == D("205.00")
