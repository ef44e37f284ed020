"""Credit notes over the fakes: the cap, the tax split (19 %), applying credits to the next
invoices. Every amount is worked out by hand in the test."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from billing.domain.credit_notes import OpenCredit, apply_credits, credit_for_amount, credit_for_lines
from billing.domain.plans import PlanVersion
from billing.errors import CreditNoteError, CreditNoteNotFound
from billing.services.billing_run import run_billing
from billing.services.credit_notes import create_credit_note, credit_note_view, list_credit_notes
from billing.services.invoices import invoice_view
from tests.unit.billing.fakes import FakeUnitOfWork

D = Decimal
FLAT = PlanVersion(code="flat", name="Flat", version=1, currency="EUR", base_fee=D("100.00"))
SMALL = PlanVersion(code="small", name="Small", version=1, currency="EUR", base_fee=D("30.00"))


def clock() -> datetime:
    return datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


def no_pdf(snapshot: dict[str, Any]) -> tuple[str, bytes]:
    return f"<p>{snapshot['number']}</p>", b"%PDF-fake"


@pytest.fixture
def uows() -> FakeUnitOfWork:
    """acme pays 100.00 a month + 19 % tax: November's invoice INV-2026-000001 is 119.00."""
    uows = FakeUnitOfWork()
    uows.catalog.add_account("acme", tax_rate="0.19")
    uows.catalog.subscribe("acme", FLAT, date(2026, 1, 1))
    bill(uows, "2026-11", finalize=True)
    return uows


def bill(uows: FakeUnitOfWork, period: str, finalize: bool = False) -> dict[str, Any]:
    (result,) = run_billing(uows, period, finalize_drafts=finalize, clock=clock, render=False)
    lines = uows.invoices.stored[int(result.invoice_id)].lines  # type: ignore[arg-type]
    return {
        "lines": [(p.line.description, p.line.rounded_amount) for p in lines],
        "subtotal": result.subtotal,
        "tax": result.tax,
        "total": result.total,
        "number": result.number,
    }


def credit(uows: FakeUnitOfWork, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("reason", "goodwill")
    return create_credit_note(uows, "INV-2026-000001", clock=clock, render=no_pdf, **kwargs)


# --- the rules alone ---


def test_a_partial_credit_takes_the_invoices_tax_in_proportion() -> None:
    # 50.00 of 119.00 (tax 19.00): tax = round(50 × 19 / 119 = 7.98319…) = 7.98, net = 42.02
    first = credit_for_amount(D("50.00"), D("119.00"), D("19.00"), D(0), D(0), "EUR")
    assert (first.net, first.tax, first.total) == (D("42.02"), D("7.98"), D("50.00"))
    # the rest (69.00) takes exactly the tax not yet credited: 19.00 − 7.98 = 11.02, net 57.98
    rest = credit_for_amount(None, D("119.00"), D("19.00"), D("50.00"), D("7.98"), "EUR")
    assert (rest.net, rest.tax, rest.total) == (D("57.98"), D("11.02"), D("69.00"))
    assert first.net + rest.net == D("100.00") and first.tax + rest.tax == D("19.00")


def test_the_cap_refuses_more_than_is_left() -> None:
    with pytest.raises(CreditNoteError, match=r"more than the 69\.00 EUR left"):
        credit_for_amount(D("69.01"), D("119.00"), D("19.00"), D("50.00"), D("7.98"), "EUR")
    with pytest.raises(CreditNoteError, match="nothing is left"):
        credit_for_amount(None, D("119.00"), D("19.00"), D("119.00"), D("19.00"), "EUR")
    with pytest.raises(CreditNoteError, match="minor units"):
        credit_for_amount(D("1.005"), D("119.00"), D("19.00"), D(0), D(0), "EUR")
    with pytest.raises(CreditNoteError, match="positive"):
        credit_for_amount(D("0"), D("119.00"), D("19.00"), D(0), D(0), "EUR")


def test_chosen_lines_are_credited_net_with_tax_rounded_once() -> None:
    # lines 0 (100.00) and 1 (0.33): 10.00 + 0.33 = 10.33 net; tax round(10.33 × 0.19 = 1.9627) = 1.96
    amounts = credit_for_lines(
        {0: D("10.00"), 1: D("0.33")}, {0: D("100.00"), 1: D("0.33")}, D("0.19"), D("119.39"), D(0), "EUR"
    )
    assert (amounts.net, amounts.tax, amounts.total) == (D("10.33"), D("1.96"), D("12.29"))
    with pytest.raises(CreditNoteError, match=r"line 1 is 0\.33 EUR"):
        credit_for_lines({1: D("0.34")}, {0: D("100.00"), 1: D("0.33")}, D("0.19"), D("119.39"), D(0), "EUR")
    with pytest.raises(CreditNoteError, match="no line 7"):
        credit_for_lines({7: D("1.00")}, {0: D("100.00")}, D("0.19"), D("119.00"), D(0), "EUR")


def test_credits_apply_oldest_first_and_never_below_zero() -> None:
    credits = [OpenCredit("CN-2026-0001", D("20.00")), OpenCredit("CN-2026-0002", D("50.00"))]
    assert apply_credits(D("30.00"), credits) == [("CN-2026-0001", D("20.00")), ("CN-2026-0002", D("10.00"))]
    assert apply_credits(D("0.00"), credits) == []
    assert apply_credits(D("-5.00"), credits) == []  # a negative adjustment: nothing to take a credit from


# --- the service and the billing run ---


def test_a_partial_credit_at_19_percent_is_applied_to_the_next_invoice(uows: FakeUnitOfWork) -> None:
    note = credit(uows, amount=D("50.00"))
    assert note["number"] == "CN-2026-0001"
    assert (note["net"], note["tax"], note["total"]) == ("42.02", "7.98", "50.00")
    view = invoice_view(uows, "INV-2026-000001")
    assert (view["total"], view["credited"], view["balance_due"]) == ("119.00", "50.00", "69.00")

    # December: 100.00 − 42.02 (the credit note's net) = 57.98; tax round(57.98 × 0.19 = 11.0162) = 11.02
    december = bill(uows, "2026-12")
    assert december["lines"] == [
        ("base fee (31/31 days)", D("100.00")),
        ("Credit note CN-2026-0001 applied", D("-42.02")),
    ]
    assert (december["subtotal"], december["tax"], december["total"]) == (D("57.98"), D("11.02"), D("69.00"))
    # re-running the draft applies the same credit once, not twice
    assert bill(uows, "2026-12")["total"] == D("69.00")


def test_a_credit_larger_than_the_next_invoice_is_carried_on() -> None:
    uows = FakeUnitOfWork()
    uows.catalog.add_account("acme", tax_rate="0.19")
    uows.catalog.subscribe("acme", FLAT, date(2026, 1, 1), date(2026, 12, 1))
    uows.catalog.subscribe("acme", SMALL, date(2026, 12, 1))
    bill(uows, "2026-11", finalize=True)
    note = credit(uows, full=True, reason="duplicate")
    assert (note["net"], note["tax"], note["total"]) == ("100.00", "19.00", "119.00")  # net 100.00 to carry

    december = bill(uows, "2026-12", finalize=True)  # 30.00 − 30.00: zero, 70.00 left
    assert december["lines"][-1] == ("Credit note CN-2026-0001 applied", D("-30.00"))
    assert (december["subtotal"], december["tax"], december["total"]) == (D("0.00"), D("0.00"), D("0.00"))
    assert bill(uows, "2027-01", finalize=True)["total"] == D("0.00")  # 40.00 left
    assert bill(uows, "2027-02", finalize=True)["total"] == D("0.00")  # 10.00 left
    march = bill(uows, "2027-03")  # 30.00 − 10.00 = 20.00; tax 3.80
    assert march["lines"][-1] == ("Credit note CN-2026-0001 applied", D("-10.00"))
    assert (march["subtotal"], march["tax"], march["total"]) == (D("20.00"), D("3.80"), D("23.80"))
    assert bill(uows, "2027-04")["total"] == D("35.70")  # used up: 30.00 + 5.70


def test_the_cap_refuses_an_over_credit_and_spends_no_number(uows: FakeUnitOfWork) -> None:
    credit(uows, amount=D("50.00"))
    with pytest.raises(CreditNoteError, match=r"more than the 69\.00 EUR left"):
        credit(uows, amount=D("69.01"))
    rest = credit(uows, full=True, reason="error")
    assert (rest["number"], rest["net"], rest["tax"], rest["total"]) == ("CN-2026-0002", "57.98", "11.02", "69.00")
    assert invoice_view(uows, "INV-2026-000001")["balance_due"] == "0.00"
    with pytest.raises(CreditNoteError, match="nothing is left"):
        credit(uows, full=True)
    assert [n["number"] for n in list_credit_notes(uows, invoice_ref="INV-2026-000001")] == [
        "CN-2026-0001",
        "CN-2026-0002",
    ]


def test_a_refunded_credit_note_is_not_carried(uows: FakeUnitOfWork) -> None:
    credit(uows, amount=D("50.00"), settlement="refunded")
    assert bill(uows, "2026-12")["total"] == D("119.00")
    assert invoice_view(uows, "INV-2026-000001")["balance_due"] == "69.00"


def test_what_a_credit_note_needs(uows: FakeUnitOfWork) -> None:
    with pytest.raises(CreditNoteError, match="needs a text"):
        credit(uows, amount=D("1.00"), reason="other")
    with pytest.raises(CreditNoteError, match="is not one of"):
        credit(uows, amount=D("1.00"), reason="bored")
    with pytest.raises(CreditNoteError, match="exactly one"):
        credit(uows, amount=D("1.00"), full=True)
    draft = bill(uows, "2026-12")
    assert draft["number"] is None
    with pytest.raises(CreditNoteError, match="only a finalized invoice"):
        create_credit_note(uows, "draft-2", amount=D("1.00"), reason="error", render=no_pdf)
    note = credit(uows, amount=D("1.00"), reason="other", reason_text="  late delivery ")
    assert credit_note_view(uows, note["number"])["reason_text"] == "late delivery"
    with pytest.raises(CreditNoteNotFound):
        credit_note_view(uows, "CN-2026-9999")


def test_chosen_lines_of_an_invoice_are_credited(uows: FakeUnitOfWork) -> None:
    # line 0 is the base fee, 100.00: 10.00 net credited, tax round(10.00 × 0.19) = 1.90, total 11.90
    note = credit(uows, lines={0: D("10.00")}, reason="order_change")
    assert (note["net"], note["tax"], note["total"], note["lines"]) == ("10.00", "1.90", "11.90", {"0": "10.00"})
    assert uows.credit_notes.find(note["number"]).snapshot["lines"] == [
        {"description": "base fee (30/30 days)", "amount": "10.00"}
    ]
    with pytest.raises(CreditNoteError, match=r"line 0 is 100\.00 EUR"):
        credit(uows, lines={0: D("100.01")})


def test_issuing_a_credit_note_emits_one_webhook_event_with_it_and_a_refused_one_none(uows: FakeUnitOfWork) -> None:
    before = len(uows.webhooks.emitted)
    note = credit(uows, amount=D("11.90"))
    (event,) = uows.webhooks.emitted[before:]
    body = json.loads(event.body)
    assert (event.type, event.account, body["type"], body["account"]) == (
        "credit_note.issued",
        "acme",
        "credit_note.issued",
        "acme",
    )
    assert body["data"]["credit_note"] == note
    assert (note["net"], note["tax"], note["total"]) == ("10.00", "1.90", "11.90")  # 11.90 × 0.19 / 1.19 = 1.90
    with pytest.raises(CreditNoteError):
        credit(uows, amount=D("100000.00"))
    assert len(uows.webhooks.emitted) == before + 1
