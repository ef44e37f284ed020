"""Usage alerts over fakes: a meter's quantity of a period so far (one source per quantity, as
billing picks it) against limits in GB (10^9 bytes) and GiB (2^30 bytes), each threshold
reached once per period; the quantities are worked out by hand in the comments."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from billing.domain.alerts import base_quantity, in_unit, metered, reached, usage_limit
from billing.domain.sources import DEFAULT_SOURCES
from billing.errors import WebhookError, WebhookNotFound
from billing.services.webhooks import cross_thresholds, new_endpoint, new_threshold, new_usage_threshold
from tests.unit.billing.fakes_edge import FakeWebhooks

T = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
D3, D4 = date(2026, 11, 3), date(2026, 11, 4)


def test_a_usage_limit_is_exact_in_base_units_and_says_every_mistake() -> None:
    assert usage_limit("consume_bytes", "500", "GB").base == Decimal(500_000_000_000)  # 500 × 10^9
    # 465 GiB = 465 × 1 073 741 824 = 429 496 729 600 + 64 424 509 440 + 5 368 709 120
    assert usage_limit("consume_bytes", "465", "GiB").base == Decimal(499_289_948_160)
    assert base_quantity(Decimal("0.5"), "GiB") == Decimal(536_870_912)  # 2^29
    assert base_quantity(Decimal("0.1"), "GiB") == Decimal("107374182.4")  # not whole: compared as is
    assert usage_limit("produce_records", "2.5", "million").base == Decimal(2_500_000)
    assert in_unit(500_250_000_000, "GB") == Decimal("500.25")
    assert in_unit(3 * 2**29, "GiB") == Decimal("1.5")
    with pytest.raises(WebhookError, match="does not fit meter 'consume_records'"):
        usage_limit("consume_records", "5", "GB")
    with pytest.raises(WebhookError, match=r"'bytes_out' is not a meter.*'-1' is not a quantity above zero"):
        usage_limit("bytes_out", "-1", "GB")
    with pytest.raises(WebhookError, match="not a quantity above zero"):
        usage_limit("consume_bytes", "lots", "GB")
    with pytest.raises(WebhookError, match="unknown unit 'PB'"):
        usage_limit("consume_bytes", "1", "PB")


def test_reached_is_at_or_above_the_limit() -> None:
    assert reached("usage", Decimal(500), Decimal(500)) and reached("amount", Decimal(1), Decimal(2))
    assert not reached("usage", Decimal("107374182.4"), Decimal(107_374_182))
    assert reached("usage", Decimal("107374182.4"), Decimal(107_374_183))
    with pytest.raises(ValueError, match="unknown threshold kind"):
        reached("mood", Decimal(1), Decimal(1))


def test_metered_usage_takes_one_source_per_quantity_and_sums_topics_and_days() -> None:
    by_source = {
        "proxy": {
            ("consume_bytes", "orders", D3): 300_000_000_000,
            ("consume_bytes", "payments", D4): 200_250_000_000,
            ("produce_records", "orders", D3): 7,
        },
        # the broker saw more consume bytes: never added to the proxy's (bytes come from proxy)
        "broker_metrics": {("consume_bytes", "orders", D3): 1_000_000_000_000},
        "audit_log": {("produce_requests", "orders", D3): 40},
    }
    totals, sources = metered(by_source, DEFAULT_SOURCES)
    # 300 000 000 000 + 200 250 000 000 = 500 250 000 000 bytes
    assert totals == {"consume_bytes": 500_250_000_000, "produce_records": 7, "produce_requests": 40}
    assert sources == {"bytes": "proxy", "records": "proxy", "requests": "audit_log"}
    # with broker metrics first for bytes, the broker's figure alone
    order = {**DEFAULT_SOURCES, "bytes": ("broker_metrics", "proxy")}
    assert metered(by_source, order)[0]["consume_bytes"] == 1_000_000_000_000


def test_a_usage_threshold_reached_emits_one_event_per_period() -> None:
    hooks = FakeWebhooks({"acme", "globex"})
    new_endpoint(hooks, "acme", "https://hooks.example/in", ["alert.usage_reached"])
    gb500 = new_usage_threshold(hooks, "acme", "consume_bytes", "500", "GB")
    gib466 = new_usage_threshold(hooks, "acme", "consume_bytes", "466", "GiB")
    gib465 = new_usage_threshold(hooks, "acme", "consume_bytes", "465", "GiB")
    records = new_usage_threshold(hooks, "acme", "consume_records", "1", "million")
    globex = new_usage_threshold(hooks, "globex", "consume_bytes", "500", "GB")
    amount = new_threshold(hooks, "acme", "150")  # beside them, its own kind
    with pytest.raises(WebhookNotFound):
        new_usage_threshold(hooks, "nobody", "consume_bytes", "1", "GB")
    with pytest.raises(WebhookError, match="does not fit"):
        new_usage_threshold(hooks, "acme", "consume_bytes", "1", "million")
    assert [t.id for t in hooks.thresholds("acme", False)] == [amount.id, gib465.id, gb500.id, gib466.id, records.id]

    # acme consumed 500 250 000 000 bytes (from proxy) so far; globex 499 999 999 999 (broker metrics)
    usage = {
        "acme": ({"consume_bytes": 500_250_000_000}, {"bytes": "proxy"}),
        "globex": ({"consume_bytes": 499_999_999_999}, {"bytes": "broker_metrics"}),
    }
    # 500 GB = 500 000 000 000 ≤ 500 250 000 000: reached
    # 466 GiB = 499 289 948 160 + 1 073 741 824 = 500 363 689 984 > 500 250 000 000: not reached
    # 465 GiB = 499 289 948 160 ≤ 500 250 000 000: reached
    # globex: 499 999 999 999 < 500 000 000 000 by one byte: not reached; no consume records at all
    crossed = cross_thresholds(hooks, "2026-11", {}, T, usage)
    assert {t.id for t in crossed} == {gb500.id, gib465.id}
    assert cross_thresholds(hooks, "2026-11", {}, T, usage) == []  # once per period
    assert hooks.measures[(gb500.id, "2026-11")] == Decimal(500_250_000_000)
    by_threshold = {json.loads(e.body)["data"]["threshold"]["id"]: json.loads(e.body) for e in hooks.events}
    event = by_threshold[gb500.id]
    assert (event["type"], event["account"]) == ("alert.usage_reached", "acme")
    assert event["data"] == {
        "threshold": {"id": gb500.id, "meter": "consume_bytes", "quantity": "500", "unit": "GB"},
        "period": "2026-11",
        "meter": "consume_bytes",
        "quantity": 500_250_000_000,
        "unit": "GB",
        "quantity_in_unit": "500.25",  # 500 250 000 000 / 10^9
        "source": "proxy",
    }
    in_gib = by_threshold[gib465.id]["data"]
    assert in_gib["unit"] == "GiB" and in_gib["quantity"] == 500_250_000_000
    # 500 250 000 000 − 465 GiB (499 289 948 160) = 960 051 840 bytes, / 1 073 741 824 = 0.894…:
    # 465.894… GiB, exact (a power of two divides into a finite decimal), so it multiplies back
    assert Decimal(in_gib["quantity_in_unit"]) * 2**30 == 500_250_000_000
    assert in_gib["quantity_in_unit"].startswith("465.894")
    assert len(hooks.deliveries("acme", "pending", 10)) == 2  # the endpoint takes usage alerts

    # one more byte for globex; acme's 466 GiB later in the month
    usage["globex"] = ({"consume_bytes": 500_000_000_000}, {"bytes": "broker_metrics"})
    usage["acme"] = ({"consume_bytes": 500_363_689_984}, {"bytes": "proxy"})
    assert {t.id for t in cross_thresholds(hooks, "2026-11", {}, T, usage)} == {globex.id, gib466.id}
    later = {json.loads(e.body)["data"]["threshold"]["id"]: json.loads(e.body)["data"] for e in hooks.events[-2:]}
    assert later[gib466.id]["quantity_in_unit"] == "466"  # exactly 466 GiB
    assert (later[globex.id]["quantity_in_unit"], later[globex.id]["source"]) == ("500", "broker_metrics")

    # a new period: each is reached again once
    december = {"acme": ({"consume_bytes": 600_000_000_000}, {"bytes": "proxy"})}
    assert {t.id for t in cross_thresholds(hooks, "2026-12", {}, T, december)} == {gb500.id, gib465.id, gib466.id}
    assert hooks.remove_threshold(gb500.id)
    assert {t.id for t in cross_thresholds(hooks, "2027-01", {}, T, december)} == {gib465.id, gib466.id}
