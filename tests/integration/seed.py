"""Usage and catalog that the billing, document, API and delivery tests share."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from metering.contracts import UsageWindow

SAMPLES = Path(__file__).parents[2] / "streamtoll" / "samples"

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


def restricted_catalog(
    tmp: Path, products: Sequence[Mapping[str, Any]], schemas: Mapping[str, Any]
) -> tuple[Path, Path, Path]:
    """The sample catalog plus a plan ``portal`` whose ``access`` grants no topic (acme on it from
    today), ``products`` on it and their schema files (``schemas``: a name under ``schemas/`` →
    its JSON): what the products' tests and the portal's need to see a subscription grant a
    topic. Returns the plans, accounts and products files."""
    plans = yaml.safe_load((SAMPLES / "plans.yaml").read_text())
    plans["plans"].append(
        {
            "code": "portal",
            "name": "Portal",
            "currency": "EUR",
            "prices": [{"meter": "produce_bytes", "unit": "GB", "model": "per_unit", "unit_price": "0.10"}],
            "access": {"topics": [], "groups": []},  # nothing but what the products give
        }
    )
    accounts = yaml.safe_load((SAMPLES / "accounts.yaml").read_text())
    accounts["accounts"][0]["subscription"] = {"plan": "portal", "starts_on": datetime.now(UTC).date()}
    (tmp / "schemas").mkdir()
    for name, schema in schemas.items():
        (tmp / "schemas" / name).write_text(json.dumps(schema))
    for name, doc in (("plans", plans), ("accounts", accounts), ("products", {"products": list(products)})):
        (tmp / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    return tmp / "plans.yaml", tmp / "accounts.yaml", tmp / "products.yaml"
