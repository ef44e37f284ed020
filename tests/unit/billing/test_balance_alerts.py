"""Balance alerts over the fakes: the money an account's prepaid grants would have left once its
invoice of the period, rated now, is cut (``billing_run.projected_money``), and a ``balance``
threshold reached at or below an amount, once per period. Amounts worked out by hand.

acme (EUR, no tax), plan "bytes": produce_bytes per unit at 1.00 per GB, no base fee; a money
grant of 120.00 effective 2026-11-01."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal

from billing.domain.alerts import reached
from billing.domain.plans import PlanVersion, Price
from billing.services.billing_run import projected_money, run_billing
from billing.services.grants import add_grant
from billing.services.invoices import finalize
from billing.services.webhooks import cross_thresholds, new_threshold
from tests.unit.billing.fakes import GB, FakeUnitOfWork, row
from tests.unit.billing.fakes_edge import FakeWebhooks

D = Decimal
BYTES = PlanVersion(
    "bytes", "Bytes", 1, "EUR", prices=(Price("produce_bytes", "per_unit", "GB", unit_price=D("1.00")),)
)


def at(day: int, month: int = 11) -> datetime:
    return datetime(2026, month, day, 9, 0, tzinfo=UTC)


def test_the_money_left_counts_this_periods_usage_once_whether_or_not_a_draft_exists() -> None:
    uows = FakeUnitOfWork()
    uows.catalog.add_account("acme")
    uows.catalog.add_account("globex")
    uows.catalog.subscribe("acme", BYTES, date(2026, 1, 1))
    uows.catalog.subscribe("globex", BYTES, date(2026, 1, 1))
    add_grant(
        uows, "acme", reason="prepaid", created_by="finance", amount=D("120.00"), effective_on=date(2026, 11, 1),
        clock=lambda: at(1),
    )  # fmt: skip
    uows.usage.stored.append(row("acme", "proxy", date(2026, 11, 3), bytes_=100 * GB))
    uows.usage.stored.append(row("globex", "proxy", date(2026, 11, 3), bytes_=5 * GB))
    # 100 GB × 1.00 = 100.00 burned of 120.00 → 20.00 left; globex holds no money grant: left out
    assert projected_money(uows, "2026-11", ["acme", "globex"], clock=lambda: at(4)) == {"acme": (D("20.00"), "EUR")}
    # a draft written (it records a pending burn of 100.00): the same 20.00, not 120 − 100 − 100
    run_billing(uows, "2026-11", clock=lambda: at(4), render=False)
    assert projected_money(uows, "2026-11", ["acme"], clock=lambda: at(4)) == {"acme": (D("20.00"), "EUR")}
    # +15 GB on the 10th: 115.00 → 5.00 left; +30 GB more: 145.00 > 120.00 → 0.00 (never below)
    uows.usage.stored.append(row("acme", "proxy", date(2026, 11, 10), bytes_=15 * GB))
    assert projected_money(uows, "2026-11", ["acme"], clock=lambda: at(11)) == {"acme": (D("5.00"), "EUR")}
    uows.usage.stored.append(row("acme", "proxy", date(2026, 11, 12), bytes_=30 * GB))
    assert projected_money(uows, "2026-11", ["acme"], clock=lambda: at(13)) == {"acme": (D("0.00"), "EUR")}


def test_after_a_finalized_period_the_next_one_starts_from_what_it_left() -> None:
    uows = FakeUnitOfWork()
    uows.catalog.add_account("acme")
    uows.catalog.subscribe("acme", BYTES, date(2026, 1, 1))
    add_grant(
        uows, "acme", reason="prepaid", created_by="finance", amount=D("120.00"), effective_on=date(2026, 11, 1),
        clock=lambda: at(1),
    )  # fmt: skip
    uows.usage.stored.append(row("acme", "proxy", date(2026, 11, 3), bytes_=100 * GB))
    [nov] = run_billing(uows, "2026-11", clock=lambda: at(1, 12), render=False)
    assert nov.invoice_id is not None and nov.total == D("0.00")  # 100.00 − 100.00 of the grant
    finalize(uows, nov.invoice_id, "INV", lambda: at(1, 12), render=False)
    # November finalized: it burned 100.00 → 20.00 for December; December's 8 GB → 12.00 left
    assert projected_money(uows, "2026-11", ["acme"], clock=lambda: at(2, 12)) == {"acme": (D("20.00"), "EUR")}
    uows.usage.stored.append(row("acme", "proxy", date(2026, 12, 1), bytes_=8 * GB))
    assert projected_money(uows, "2026-12", ["acme"], clock=lambda: at(2, 12)) == {"acme": (D("12.00"), "EUR")}


def test_a_balance_threshold_is_reached_at_or_below_its_amount_once_per_period() -> None:
    assert reached("balance", D("20.00"), D("20.00")) and not reached("balance", D("20.00"), D("20.01"))
    store = FakeWebhooks()
    low = new_threshold(store, "acme", "25.00", "balance")
    lower = new_threshold(store, "acme", "15.00", "balance")
    money = {"acme": (D("20.00"), "EUR")}
    # 20.00 left: at or below 25.00 (reached), above 15.00 (not)
    assert [t.id for t in cross_thresholds(store, "2026-11", {}, at(4), None, money)] == [low.id]
    [event] = store.events
    assert event.type == "alert.balance_low"
    assert json.loads(event.body)["data"] == {
        "threshold": {"id": low.id, "amount": "25.00"},
        "period": "2026-11",
        "currency": "EUR",
        "money_left": "20.00",
    }
    # once per period: still 20.00, nothing more; 10.00 reaches the lower one; a new period again
    assert cross_thresholds(store, "2026-11", {}, at(5), None, money) == []
    money = {"acme": (D("10.00"), "EUR")}
    assert [t.id for t in cross_thresholds(store, "2026-11", {}, at(6), None, money)] == [lower.id]
    assert {t.id for t in cross_thresholds(store, "2026-12", {}, at(1, 12), None, money)} == {low.id, lower.id}
