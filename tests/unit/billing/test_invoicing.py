"""The rating policy written once in billing.domain: source choice, totals, late-usage adjustments."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from billing.domain.invoicing import late_usage_adjustment
from billing.domain.rating import invoice_totals
from billing.domain.sources import DEFAULT_SOURCES, meter_usage, pick_source

D = Decimal
DAY = date(2026, 11, 3)


def test_pick_source_takes_the_first_source_with_usage() -> None:
    has = {"broker_metrics", "audit_log"}.__contains__
    assert pick_source(("proxy", "broker_metrics"), has) == "broker_metrics"
    assert pick_source(("audit_log", "proxy"), has) == "audit_log"
    assert pick_source(("proxy",), has) is None


def test_meter_usage_reads_one_source_per_quantity_never_a_sum() -> None:
    by_source = {
        "proxy": {("produce_bytes", "t", DAY): 4, ("produce_requests", "t", DAY): 2},
        "broker_metrics": {("produce_bytes", "t", DAY): 5, ("produce_records", "t", DAY): 7},
        "audit_log": {("produce_requests", "t", DAY): 3},
    }
    usage, chosen = meter_usage(by_source, DEFAULT_SOURCES)
    # records: the proxy saw none, so they come from the broker metrics
    assert chosen == {"bytes": "proxy", "records": "broker_metrics", "requests": "audit_log"}
    assert usage == {
        ("produce_bytes", "t", DAY): 4,
        ("produce_records", "t", DAY): 7,
        ("produce_requests", "t", DAY): 3,
    }


def test_invoice_totals_round_lines_then_tax_once() -> None:
    # 0.005 + 0.005 → lines 0.01 + 0.01 (half up); tax 0.02 × 0.25 = 0.005 → 0.01
    totals = invoice_totals([D("0.005"), D("0.005")], D("0.25"), "EUR")
    assert (totals.subtotal, totals.tax, totals.total) == (D("0.02"), D("0.01"), D("0.03"))
    assert invoice_totals([D("1499.5")], D("0.10"), "JPY").total == D("1650")  # 1500 + 150


def test_late_usage_adjustment_is_what_the_period_still_owes() -> None:
    assert late_usage_adjustment(D("12.50"), D("11.00"), D("1.00")) == D("0.50")
    assert late_usage_adjustment(D("10.00"), D("11.00"), D("0")) == D("-1.00")  # usage removed
    assert late_usage_adjustment(D("11.00"), D("11.000000"), D("0")) == 0
