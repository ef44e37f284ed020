"""An account's entitlement as partners read it, over in-memory stores: its plan's grants and
caps with this month's usage from the source billing would pick, its credentials (revoked too,
no secret) and this month's throttles and blocks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from billing.domain.plans import parse_plan
from billing.errors import EntitlementNotFound
from billing.services.catalog import plan_document
from billing.services.credentials import issue_credential, withdraw_credential
from billing.services.entitlements import account_entitlements, view_entitlement
from billing.services.episodes import episode_docs
from billing.services.ports import AccountPlanDoc
from metering.entitlements import Episode

from .fakes_edge import FakeCatalogReads, FakeCredentials, FakeEpisodes, usage_rows

NOW = datetime(2026, 12, 15, 12, 0, tzinfo=UTC)

PLAN = plan_document(
    parse_plan(
        yaml.safe_load(
            """
code: partner-gold
name: Partner Gold
currency: EUR
base_fee: "99.00"
prices:
  - {meter: produce_bytes, unit: GB, model: per_unit, unit_price: "0.10"}
access:
  topics:
    - {prefix: "orders."}
limits:
  produce_bytes_per_second: 1048576
caps:
  - {meter: produce_records, included: 2, unit: thousand, policy: soft}
  - {meter: consume_requests, included: 10, policy: block}
"""
        ),
        "plans[0]",
    )
)


def _catalog() -> FakeCatalogReads:
    return FakeCatalogReads(
        [
            AccountPlanDoc("acme", {"topics": [{"pattern": "shared"}]}, "partner-gold", 2, PLAN),
            AccountPlanDoc("acme", None, "partner-gold", 1, PLAN),  # an older start also in force: ignored
            AccountPlanDoc("globex", None, None, None, None),
        ]
    )


def _usage(source: str, direction: str, **quantities: int) -> dict[str, Any]:
    return {"source": source, "direction": direction, "bytes": 0, "records": 0, "requests": 0, **quantities}


def _episode(n: int, started: datetime, ended: datetime | None, updated: datetime | None = None) -> Episode:
    return Episode(
        f"gw-1/acme/throttle/produce/{n}", "gw-1", "acme", "throttle", "produce", "cap", "produce_bytes cap reached",
        started, updated or ended or started, ended, 1.5, 3, 65536, "produce_bytes",
    )  # fmt: skip


def test_each_account_gets_its_plan_in_force_and_an_account_without_one_is_unrestricted() -> None:
    found = {a.entitlement.account: a for a in account_entitlements(_catalog(), NOW.date())}
    assert list(found) == ["acme", "globex"]
    acme = found["acme"].entitlement
    assert (acme.plan, acme.plan_version) == ("partner-gold", 2)
    assert acme.topics is not None and {g.pattern for g in acme.topics} == {"orders.", "shared"}
    assert [c.unit for c in found["acme"].caps] == ["thousand", None]
    globex = found["globex"].entitlement
    assert (globex.plan, globex.topics, globex.caps, found["globex"].caps) == (None, None, (), ())


def test_the_view_shows_caps_with_this_months_usage_from_the_preferred_source() -> None:
    usage = usage_rows(
        [
            _usage("proxy", "produce", records=1500),
            _usage("broker_metrics", "produce", records=9999),  # proxy has data: broker metrics not used
            _usage("audit_log", "consume", requests=12),
        ]
    )
    view = view_entitlement(_catalog(), FakeCredentials({"acme"}), FakeEpisodes(), usage, "acme", NOW)
    assert (view["plan"], view["plan_version"], view["limits"]["produce_bytes_per_second"]) == (
        "partner-gold",
        2,
        1048576,
    )
    caps = {c["meter"]: c for c in view["caps"]}
    assert {k: caps["produce_records"][k] for k in ("used", "used_source", "remaining", "reached", "month")} == {
        "used": 1500,
        "used_source": "proxy",
        "remaining": 500,
        "reached": False,
        "month": "2026-12",
    }
    assert caps["produce_records"]["included_in_unit"] == "2"
    assert {k: caps["consume_requests"][k] for k in ("used", "used_source", "remaining", "reached")} == {
        "used": 12,
        "used_source": "audit_log",
        "remaining": 0,
        "reached": True,
    }


def test_the_view_lists_the_accounts_credentials_revoked_too_and_this_months_episodes() -> None:
    creds = FakeCredentials({"acme", "globex"})
    kept = issue_credential(creds, "acme", "etl")
    gone = issue_credential(creds, "acme", "old")
    issue_credential(creds, "globex", "etl")
    withdraw_credential(creds, gone.id, NOW)
    month = NOW.replace(day=1, hour=0)
    episodes = FakeEpisodes(
        [
            _episode(1, month - timedelta(days=3), month - timedelta(days=2)),  # last month
            _episode(2, month + timedelta(days=2), month + timedelta(days=2, minutes=5)),
            _episode(3, NOW - timedelta(minutes=1), None, NOW - timedelta(seconds=10)),  # still open
        ]
    )
    view = view_entitlement(_catalog(), creds, episodes, usage_rows([]), "acme", NOW)
    assert [(c["id"], c["state"]) for c in view["credentials"]] == [(kept.id, "active"), (gone.id, "revoked")]
    assert kept.password not in repr(view)
    assert [(e["id"][-1], e["open"], e["duration_seconds"]) for e in view["episodes"]] == [
        ("2", False, 300.0),
        ("3", True, 60.0),
    ]


def test_an_open_episode_not_refreshed_for_two_minutes_ended_at_its_last_update() -> None:
    stale = _episode(4, NOW - timedelta(hours=1), None, NOW - timedelta(minutes=30))
    [doc] = episode_docs(FakeEpisodes([stale]), "acme", NOW - timedelta(days=1), NOW, NOW)
    assert (doc["open"], doc["ended_at"], doc["duration_seconds"]) == (False, "2026-12-15T11:30:00.000Z", 1800.0)
    # ended by staleness before the period: not the period's
    assert episode_docs(FakeEpisodes([stale]), "acme", NOW - timedelta(minutes=10), NOW, NOW) == []


def test_an_unknown_account_has_no_entitlement() -> None:
    with pytest.raises(EntitlementNotFound, match="there is no account 'nobody'"):
        view_entitlement(_catalog(), FakeCredentials(), FakeEpisodes(), usage_rows([]), "nobody", NOW)
