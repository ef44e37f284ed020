"""Prepaid credits and grants over the fakes: burn order, rollover, expiry, voids, money never
below zero, and the worked example of two unit grants burned across two invoices. Every amount
is worked out by hand in the test.

The worked example (acme, EUR, 19 % tax, plan "stream": base fee 20.00; consume_bytes graduated
per GB, the first 100 GB at 0.10, above at 0.05):

* grant #1: 300 GB of consume_bytes, priority 5, effective 2026-11-01, expires 2026-12-16
  (covers usage up to 15 December);
* grant #2: 200 GB of consume_bytes a month, priority 5, recurring monthly, rollover limit 100 GB;
* grant #3: 50.00 EUR, priority 1.

Same priority for #1 and #2: the earlier expiry (#1) burns first; #2 has none, so it comes last.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from billing.domain.grants import Grant, GrantBook, RecordedBurn, burn_order, check_grant, counted_burns, room
from billing.domain.plans import PlanVersion, Price, Tier
from billing.errors import AccountNotFound, GrantError, GrantNotFound
from billing.services.billing_run import run_billing
from billing.services.grants import account_balance, add_grant, list_grants, void_grant
from tests.unit.billing.fakes import GB, FakeUnitOfWork, row

D = Decimal
STREAM = PlanVersion(
    code="stream",
    name="Stream",
    version=1,
    currency="EUR",
    base_fee=D("20.00"),
    prices=(
        Price(
            meter="consume_bytes",
            model="graduated",
            unit="GB",
            tiers=(Tier(D(100), D("0.10")), Tier(None, D("0.05"))),
        ),
    ),
)


def clock() -> datetime:
    return datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def consume(day: date, gb: int) -> Any:
    return dataclasses.replace(row("acme", "proxy", day, bytes_=gb * GB), direction="consume")


def bill(uows: FakeUnitOfWork, period: str, finalize: bool = False) -> dict[str, Any]:
    (result,) = run_billing(uows, period, finalize_drafts=finalize, clock=clock, render=False)
    lines = uows.invoices.stored[int(result.invoice_id)].lines  # type: ignore[arg-type]
    return {
        "lines": [(p.line.description, p.line.rounded_amount) for p in lines],
        "subtotal": result.subtotal,
        "tax": result.tax,
        "total": result.total,
    }


def grant(uows: FakeUnitOfWork, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("reason", "prepaid")
    kwargs.setdefault("created_by", "finance@example.com")
    kwargs.setdefault("effective_on", date(2026, 11, 1))
    return add_grant(uows, "acme", clock=clock, **kwargs)


@pytest.fixture
def uows() -> FakeUnitOfWork:
    uows = FakeUnitOfWork()
    uows.catalog.add_account("acme", tax_rate="0.19")
    uows.catalog.subscribe("acme", STREAM, date(2026, 1, 1))
    grant(uows, units=D(300), meter="consume_bytes", unit="GB", priority=5, expires_on=date(2026, 12, 16))
    grant(
        uows,
        units=D(200),
        meter="consume_bytes",
        unit="GB",
        priority=5,
        recurrence="monthly",
        rollover_limit=D(100),
        name="monthly",
    )
    grant(uows, amount=D("50.00"), priority=1, name="welcome")
    # November: 150 GB on the 10th, 100 GB on the 20th; December: 40 GB on the 5th, 500 GB on the 20th
    uows.usage.stored += [
        consume(date(2026, 11, 10), 150),
        consume(date(2026, 11, 20), 100),
        consume(date(2026, 12, 5), 40),
        consume(date(2026, 12, 20), 500),
    ]
    return uows


NOVEMBER = {
    # #1 (earliest expiry) covers 150 + 100 = 250 GB, 50 GB left; #2 burns nothing; 0 GB priced
    # subtotal before money 20.00; #3 (50.00) takes 20.00 — never below zero — 30.00 left
    "lines": [
        ("base fee (30/30 days)", D("20.00")),
        ("consume_bytes (graduated, per GB)", D("0.00")),
        ("Grant #1 applied: 250 GB of consume_bytes covered (50 GB left)", D("0.00")),
        ("Grant #3 welcome applied (30.00 EUR left)", D("-20.00")),
    ],
    "subtotal": D("0.00"),
    "tax": D("0.00"),
    "total": D("0.00"),
}


def test_two_grants_burned_across_two_invoices_priority_expiry_rollover(uows: FakeUnitOfWork) -> None:
    assert bill(uows, "2026-11", finalize=True) == NOVEMBER
    # December: #1 has 50 GB left and covers the 5th (40 GB, 10 GB left) but not the 20th (it
    # expired on the 16th: its 10 GB lapse). #2's December allotment: 200 + the carry of
    # November's unused 200 capped at 100 = 300 GB; it covers 300 of the 20th's 500 GB.
    # Priced: 200 GB graduated = 100 × 0.10 + 100 × 0.05 = 10.00 + 5.00 = 15.00.
    # Subtotal before money: 20.00 + 15.00 = 35.00; #3 has 30.00 left: −30.00 → 5.00.
    # Tax round(5.00 × 0.19) = 0.95; total 5.95.
    assert bill(uows, "2026-12") == {
        "lines": [
            ("base fee (31/31 days)", D("20.00")),
            ("consume_bytes (graduated, per GB)", D("15.00")),
            ("Grant #1 applied: 40 GB of consume_bytes covered (10 GB left)", D("0.00")),
            ("Grant #2 monthly applied: 300 GB of consume_bytes covered (0 GB left this period)", D("0.00")),
            ("Grant #3 welcome applied (0.00 EUR left)", D("-30.00")),
        ],
        "subtotal": D("5.00"),
        "tax": D("0.95"),
        "total": D("5.95"),
    }
    # a re-run recomputes the draft's burns, never counting its own: the same invoice
    assert bill(uows, "2026-12")["total"] == D("5.95")


def test_the_balance_counts_finalized_burns_and_shows_drafts_as_pending(uows: FakeUnitOfWork) -> None:
    bill(uows, "2026-11", finalize=True)
    bill(uows, "2026-12")
    got = account_balance(uows, "acme", on=date(2026, 12, 10))
    assert got["money_available"] == "0.00"  # 50.00 − 20.00 finalized − 30.00 pending
    shown = {
        g["id"]: (g["status"], g["granted"], g["burned"], g["pending"], g["left"], g["available"])
        for g in got["grants"]
    }
    assert shown == {
        # 300 granted, 250 burned in November (final), 40 on December's draft: 50 left, 10 available
        1: ("active", "300", "250", "40", "50", "10"),
        # December's allotment 300 (200 + carry 100), none final, 300 pending
        2: ("active", "300", "0", "300", "300", "0"),
        3: ("active", "50.00", "20.00", "30.00", "30.00", "0.00"),
    }
    # on the 16th #1 has expired: nothing is available of it any more
    assert account_balance(uows, "acme", on=date(2026, 12, 16))["grants"][0]["status"] == "expired"
    assert account_balance(uows, "acme", on=date(2026, 12, 16))["grants"][0]["available"] == "0"


def test_a_voided_grant_burns_nothing_on_later_runs(uows: FakeUnitOfWork) -> None:
    bill(uows, "2026-11", finalize=True)
    voided = void_grant(uows, 2, reason="sold by mistake", voided_by="finance@example.com", clock=clock)
    assert (voided["status"], voided["void_reason"]) == ("voided", "sold by mistake")
    with pytest.raises(GrantError, match="already voided"):
        void_grant(uows, 2, reason="again", voided_by="finance@example.com", clock=clock)
    with pytest.raises(GrantNotFound):
        void_grant(uows, 99, reason="none", voided_by="finance@example.com", clock=clock)
    # December without #2: #1 covers the 5th's 40 GB; the 20th's 500 GB are all priced:
    # 100 × 0.10 + 400 × 0.05 = 10.00 + 20.00 = 30.00; 20.00 + 30.00 = 50.00 − 30.00 (#3) = 20.00
    # tax round(20.00 × 0.19) = 3.80; total 23.80
    december = bill(uows, "2026-12")
    assert [d for d, _ in december["lines"] if d.startswith("Grant #2")] == []
    assert (december["subtotal"], december["tax"], december["total"]) == (D("20.00"), D("3.80"), D("23.80"))


def test_late_usage_in_a_finalized_period_keeps_what_its_grants_covered(uows: FakeUnitOfWork) -> None:
    bill(uows, "2026-11", finalize=True)
    uows.usage.stored.append(consume(date(2026, 11, 25), 10))  # arrives after November was finalized
    # November re-rated: 260 GB, of which the 250 #1 covered stay covered: 10 GB × 0.10 = 1.00
    # (not 260 GB priced again: 100 × 0.10 + 160 × 0.05 = 18.00); the money grant is not "own"
    december = bill(uows, "2026-12")
    adjustments = [(d, a) for d, a in december["lines"] if d.startswith("Adjustment")]
    assert adjustments == [("Adjustment for 2026-11 (usage after invoice INV-2026-000001)", D("1.00"))]


def test_a_money_grant_never_takes_an_invoice_below_zero() -> None:
    uows = FakeUnitOfWork()
    uows.catalog.add_account("acme", tax_rate="0.19")
    uows.catalog.subscribe("acme", STREAM, date(2026, 1, 1))
    grant(uows, amount=D("500.00"))
    # 20.00 base fee, no usage: the grant takes 20.00, 480.00 left; subtotal, tax, total 0.00
    got = bill(uows, "2026-11")
    assert got["lines"][-1] == ("Grant #1 applied (480.00 EUR left)", D("-20.00"))
    assert (got["subtotal"], got["tax"], got["total"]) == (D("0.00"), D("0.00"), D("0.00"))


def test_a_money_grant_expired_before_the_period_ends_is_not_used() -> None:
    uows = FakeUnitOfWork()
    uows.catalog.add_account("acme")
    uows.catalog.subscribe("acme", STREAM, date(2026, 1, 1))
    grant(uows, amount=D("10.00"), expires_on=date(2026, 11, 30))  # not in force on 30 November
    assert bill(uows, "2026-11")["total"] == D("20.00")


def test_a_unit_grant_is_never_spent_on_usage_no_price_bills() -> None:
    uows = FakeUnitOfWork()
    uows.catalog.add_account("acme")
    # subscribed from 15 November only; STREAM prices consume_bytes, not produce_bytes
    uows.catalog.subscribe("acme", STREAM, date(2026, 11, 15))
    grant(uows, units=D(100), meter="consume_bytes", unit="GB")
    grant(uows, units=D(100), meter="produce_bytes", unit="GB")
    uows.usage.stored += [
        consume(date(2026, 11, 10), 30),  # before the subscription: listed, not billed, not covered
        consume(date(2026, 11, 20), 50),  # covered by #1
        row("acme", "proxy", date(2026, 11, 20), bytes_=70 * GB),  # produce: no price, #2 untouched
    ]
    got = bill(uows, "2026-11")
    # #1 covers the 20th's 50 GB only (50 left); #2 burns nothing, so it has no line
    assert [d for d, _ in got["lines"] if d.startswith("Grant")] == [
        "Grant #1 applied: 50 GB of consume_bytes covered (50 GB left)"
    ]
    # base fee 16/30 of 20.00 = 10.666… → 10.67; consume 0 GB priced → 0.00
    assert got["total"] == D("10.67")


# --- the rules alone ---


def g(gid: int, **kwargs: Any) -> Grant:
    kwargs.setdefault("effective_on", date(2026, 11, 1))
    kwargs.setdefault("meter", "consume_bytes")
    kwargs.setdefault("unit", "GB")
    return Grant(id=gid, account="acme", amount=kwargs.pop("amount", D(100)), **kwargs)


def test_burn_order_is_priority_then_earliest_expiry_then_oldest() -> None:
    grants = [
        g(1, priority=10),
        g(2, priority=10, expires_on=date(2027, 1, 1)),
        g(3, priority=1),
        g(4, priority=10, expires_on=date(2026, 12, 1)),
        g(5, priority=10),
    ]
    assert [x.id for x in burn_order(grants)] == [3, 4, 2, 1, 5]


def test_rollover_carries_up_to_the_limit_and_the_rest_lapses() -> None:
    monthly = g(1, amount=D(200), recurrence="monthly", rollover_limit=D(100))
    gb = D(GB)
    burned = {date(2026, 11, 1): 50 * gb, date(2026, 12, 1): 280 * gb}
    # November: 200 (nothing to carry); 200 − 50 = 150 unused, 100 carried, 50 lapse
    assert room(monthly, date(2026, 11, 1), {}) == 200 * gb
    # December: 200 + 100 = 300; January: 300 − 280 = 20 carried → 220
    assert room(monthly, date(2026, 12, 1), {date(2026, 11, 1): 50 * gb}) == 300 * gb
    assert room(monthly, date(2027, 1, 1), burned) == 220 * gb
    # without a rollover limit nothing is carried
    assert room(g(2, amount=D(200), recurrence="monthly"), date(2026, 12, 1), {}) == 200 * gb
    assert room(monthly, date(2026, 10, 1), {}) == 0  # not in force yet


def test_counted_burns_are_finalized_ones_and_earlier_drafts_never_the_invoices_own() -> None:
    nov, dec, jan = date(2026, 11, 1), date(2026, 12, 1), date(2027, 1, 1)
    burns = [
        RecordedBurn(1, 10, nov, True, D(5)),
        RecordedBurn(1, 11, dec, False, D(7)),  # December's draft
        RecordedBurn(1, 12, jan, False, D(9)),  # a later draft: not counted by December
    ]
    assert counted_burns(burns, 11, dec) == {1: {nov: D(5)}}
    assert counted_burns(burns, 12, jan) == {1: {nov: D(5), dec: D(7)}}


def test_unit_grants_cover_only_days_they_are_in_force() -> None:
    gb = GB
    late = g(1, amount=D(100), effective_on=date(2026, 11, 15))
    book = GrantBook.open([late], {}, date(2026, 11, 1), date(2026, 12, 1))
    usage = {("consume_bytes", "a", date(2026, 11, 14)): 30 * gb, ("consume_bytes", "a", date(2026, 11, 15)): 30 * gb}
    left, burns = book.cover({"proxy": usage}, {"bytes": ("proxy",)}, lambda meter, topic, day: True)
    # the 14th is before the grant: still 30 GB; the 15th is covered (0 left to price)
    assert left["proxy"] == {
        ("consume_bytes", "a", date(2026, 11, 14)): 30 * gb,
        ("consume_bytes", "a", date(2026, 11, 15)): 0,
    }
    assert [(b.burned, b.left) for b in burns] == [(D(30 * gb), D(70 * gb))]


def test_a_new_grant_is_checked_whole() -> None:
    with pytest.raises(GrantError, match="unit 'thousand' does not fit"):
        check_grant(g(1, unit="thousand"), "EUR")
    with pytest.raises(GrantError, match=r"expires .* on or before .*; .*rollover limit needs a recurrence"):
        check_grant(g(1, expires_on=date(2026, 11, 1), rollover_limit=D(1)), "EUR")
    with pytest.raises(GrantError, match="not a whole number of bytes"):
        check_grant(g(1, amount=D("0.0000000001")), "EUR")
    with pytest.raises(GrantError, match="more than the 2 decimals EUR has"):
        check_grant(g(1, meter=None, unit=None, currency="EUR", amount=D("1.005")), "EUR")
    with pytest.raises(GrantError, match="account's currency EUR"):
        check_grant(g(1, meter=None, unit=None, currency="USD"), "EUR")


def test_adding_grants_refuses_what_makes_no_sense(uows: FakeUnitOfWork) -> None:
    with pytest.raises(GrantError, match="either an amount"):
        grant(uows, amount=D(1), units=D(1), meter="consume_bytes", unit="GB")
    with pytest.raises(GrantError, match="needs a reason"):
        grant(uows, amount=D(1), reason=" ")
    with pytest.raises(AccountNotFound):
        add_grant(uows, "nobody", amount=D(1), reason="x", created_by="me", clock=clock)
    listed = list_grants(uows, "acme", on=date(2026, 11, 1))
    assert [(x["id"], x["kind"], x["amount"], x["created_by"]) for x in listed] == [
        (1, "units", "300", "finance@example.com"),
        (2, "units", "200", "finance@example.com"),
        (3, "money", "50.00", "finance@example.com"),
    ]


# --- caps following the balance (a plan's prepaid policy) ---


PREPAID_PLAN = """
code: prepaid
name: Prepaid
currency: EUR
prices:
  - {meter: consume_bytes, unit: GB, model: per_unit, unit_price: "0.10"}
caps:
  - {meter: produce_bytes, included: 50, unit: GB, policy: soft}
  - {meter: consume_bytes, included: 1000, unit: GB, policy: soft}
prepaid: {policy: throttle, floor_bytes_per_second: 65536}
"""


def test_a_prepaid_policy_is_validated_like_a_cap() -> None:
    import yaml

    from billing.domain.plans import parse_plan
    from billing.errors import PlanError

    plan = parse_plan(yaml.safe_load(PREPAID_PLAN), "plans[0]")
    assert plan.prepaid is not None and (plan.prepaid.policy, plan.prepaid.floor_bytes_per_second) == (
        "throttle",
        65536,
    )
    for bad, message in (
        ("{policy: soft}", "not a prepaid policy"),
        ("{policy: throttle}", "required by policy throttle"),
        ("{policy: block, floor_bytes_per_second: 10}", "only a throttle policy has a floor"),
        ("{policy: block, extra: 1}", "extra"),
    ):
        with pytest.raises(PlanError, match=message):
            parse_plan(
                yaml.safe_load(PREPAID_PLAN.replace("{policy: throttle, floor_bytes_per_second: 65536}", bad)), "p"
            )


def test_prepaid_caps_follow_the_month_start_balance(uows: FakeUnitOfWork) -> None:
    import yaml

    from billing.domain.plans import parse_plan
    from billing.services.catalog import plan_document
    from billing.services.entitlements import account_entitlements
    from billing.services.grants import prepaid_units
    from billing.services.ports import AccountPlanDoc

    from .fakes_edge import FakeCatalogReads

    bill(uows, "2026-11", finalize=True)
    bill(uows, "2026-12")  # December's draft: its burns are this month's usage, not the month-start balance
    # on 10 December: #1 300 GB − 250 finalized in November = 50 GB; #2 200 + carry 100 = 300 GB
    # → consume_bytes 350 GB = 350 × 10^9 bytes (the money grant makes no cap)
    assert prepaid_units(uows.grants, "acme", date(2026, 12, 10)) == {"consume_bytes": 350 * GB}
    # on the 16th #1 has expired: only #2's 300 GB
    assert prepaid_units(uows.grants, "acme", date(2026, 12, 16)) == {"consume_bytes": 300 * GB}
    doc = plan_document(parse_plan(yaml.safe_load(PREPAID_PLAN), "plans[0]"))
    catalog = FakeCatalogReads([AccountPlanDoc("acme", None, "prepaid", 1, doc)])
    (found,) = account_entitlements(
        catalog, date(2026, 12, 10), "acme", balances=lambda a: prepaid_units(uows.grants, a, date(2026, 12, 10))
    )
    caps = {c.meter: (c.included, c.policy, c.floor_bytes_per_second) for c in found.entitlement.caps}
    # the plan's produce cap stays; consume: 350 GB prepaid < the plan's 1000 GB → the prepaid cap wins
    assert caps == {"produce_bytes": (50 * GB, "soft", None), "consume_bytes": (350 * GB, "throttle", 65536)}
    # without balances (or without grants) the plan's caps are unchanged
    (plain,) = account_entitlements(catalog, date(2026, 12, 10), "acme")
    assert {c.meter: c.included for c in plain.entitlement.caps} == {
        "produce_bytes": 50 * GB,
        "consume_bytes": 1000 * GB,
    }
    # every unit grant voided: no prepaid meter at all; an empty balance at zero blocks
    for gid in (1, 2):
        void_grant(uows, gid, reason="x", voided_by="finance", clock=clock)
    assert prepaid_units(uows.grants, "acme", date(2026, 12, 10)) == {}


def test_a_prepaid_meter_at_zero_is_capped_at_zero_and_a_tie_keeps_the_plans_cap() -> None:
    from billing.domain.access import CapSpec, PrepaidSpec, prepaid_caps
    from metering.entitlements import Cap

    plan_cap = CapSpec(Cap("consume_bytes", 100, "soft"))
    got = prepaid_caps(PrepaidSpec("block"), {"produce_bytes": 0, "consume_bytes": 100}, (plan_cap,))
    assert [c.cap for c in got] == [Cap("consume_bytes", 100, "soft"), Cap("produce_bytes", 0, "block")]
