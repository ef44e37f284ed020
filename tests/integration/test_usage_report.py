"""`streamtoll usage`: rows from PostgreSQL, attributed with the stored client rules, grouped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from billing.adapters.sink import upsert_windows
from billing.services.catalog import load_accounts, load_plans
from billing.services.usage import usage_report
from metering.contracts import UsageWindow

pytestmark = pytest.mark.integration


def w(
    hour: str,
    principal: str,
    b: int,
    source: str = "proxy",
    shard: str = "p/0",
    direction: str = "produce",
    topic: str = "orders",
) -> UsageWindow:
    return UsageWindow(hour, "", source, None, principal, "cli", "", topic, direction, b, 1, 1, 0, 1, shard)


@pytest.fixture
def seeded(migrated: str, samples: Path) -> str:
    engine = sa.create_engine(migrated)
    load_plans(engine, samples / "plans.yaml")
    load_accounts(engine, samples / "accounts.yaml")
    upsert_windows(
        engine,
        [
            w("2026-11-03T10:00:00Z", "User:acme-orders", 100),
            w("2026-11-03T10:00:00Z", "User:acme-orders", 50, shard="p/1"),  # another shard: added
            w("2026-11-03T10:00:00Z", "User:acme-orders", 70, source="broker_metrics"),  # another source: apart
            w("2026-11-09T23:00:00Z", "User:globex-analytics", 5),  # before globex's rule is valid
            w("2026-11-10T00:00:00Z", "User:globex-analytics", 7),
            w("2026-11-30T23:00:00Z", "User:initech-iot", 9, direction="consume"),
            w("2026-12-01T00:00:00Z", "User:initech-iot", 1000),  # outside [from, to)
        ],
    )
    engine.dispose()
    return migrated


def test_attribution_grouping_and_half_open_interval(seeded: str) -> None:
    engine = sa.create_engine(seeded)
    try:
        got = usage_report(
            engine, datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC), ("source", "account")
        )
    finally:
        engine.dispose()
    assert [(r["source"], r["account"], r["bytes"]) for r in got] == [
        ("broker_metrics", "acme", 70),
        ("proxy", "acme", 150),
        ("proxy", "globex", 7),
        ("proxy", "initech", 9),
        ("proxy", "unassigned", 5),
    ]


def test_cli_json_and_bad_group(seeded: str) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STREAMTOLL_")},
        "STREAMTOLL_DATABASE_URL": seeded,
    }
    base = [sys.executable, "-m", "streamtoll.cli", "usage", "--from", "2026-11-01", "--to", "2026-12-01"]
    out = subprocess.run(
        [*base, "--account", "globex", "--group-by", "account,day", "--json"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [
        {"account": "globex", "day": "2026-11-10", "bytes": 7, "records": 1, "requests": 1, "denied_requests": 0}
    ]
    bad = subprocess.run([*base, "--group-by", "colour"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "cannot group by colour" in bad.stderr
