"""Usage and catalog that the billing, document, API and delivery tests share."""

from __future__ import annotations

from datetime import UTC, datetime

from metering.contracts import UsageWindow

GB, TB = 10**9, 10**12
DEC1 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def w(
    day: int,
    hour: int,
    source: str,
    principal: str,
    direction: str,
    topic: str,
    b: int = 0,
    r: int = 0,
    q: int = 0,
    month: int = 11,
    shard: str = "s/0",
    version: int = 1,
) -> UsageWindow:
    start = f"2026-{month:02d}-{day:02d}T{hour:02d}:00:00.000Z"
    return UsageWindow(start, "", source, None, principal, "cli", "", topic, direction, b, r, q, 0, version, shard)


NOVEMBER = [
    # acme (growth): proxy usage, split over hours and shards; broker metrics must be ignored
    w(3, 10, "proxy", "User:acme-orders", "produce", "orders", b=1000 * GB, r=20_000_000, q=10),
    w(3, 11, "proxy", "User:acme-orders", "produce", "orders", b=250 * GB, r=5_000_000, shard="s/1"),
    w(4, 0, "proxy", "User:acme-orders", "consume", "orders", b=2000 * GB),
    w(4, 0, "broker_metrics", "User:acme-orders", "produce", "orders", b=999 * GB),
    # globex (enterprise from 2026-11-10; its rule too): before the 10th it is unassigned
    w(5, 12, "proxy", "User:globex-analytics", "produce", "orders", b=5 * TB),
    w(12, 8, "proxy", "User:globex-analytics", "produce", "orders", b=12 * TB),
    w(12, 9, "proxy", "User:globex-analytics", "consume", "premium.quotes", b=2 * TB),
    w(12, 9, "proxy", "User:globex-analytics", "consume", "orders", b=4 * TB),
    # initech (starter-usd): bytes only from broker metrics, requests from the audit log
    w(20, 1, "broker_metrics", "User:initech-iot", "produce", "telemetry.raw", b=TB),
    w(20, 1, "audit_log", "User:initech-iot", "consume", "telemetry.raw", q=1_234_567),
]
