"""Loading the catalog over an in-memory store: a plan gets a new version only when it changed,
loading the same file twice writes nothing, a new subscription takes the newest version of its
plan and ends the earlier one, a subscription keeps the version it has."""

from __future__ import annotations

import copy
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from billing.domain.accounts import parse_accounts
from billing.errors import CatalogError
from billing.services.catalog import parse_plans, publish_plans, write_accounts

from .fakes_edge import FakeCatalogWrites

SAMPLES = Path(__file__).parents[3] / "streamtoll" / "samples"


def _doc(name: str) -> Any:
    return yaml.safe_load((SAMPLES / name).read_text(encoding="utf-8"))


def _load_plans(store: FakeCatalogWrites, doc: Any) -> tuple[list[str], list[str], list[str]]:
    report = publish_plans(store, parse_plans(doc, "plans.yaml"))
    return report.created, report.updated, report.unchanged


def _load_accounts(store: FakeCatalogWrites, doc: Any) -> tuple[list[str], list[str], list[str]]:
    report = write_accounts(store, parse_accounts(doc, "accounts.yaml"), "accounts.yaml")
    return report.created, report.updated, report.unchanged


def test_a_plan_gets_a_new_version_only_when_it_changed() -> None:
    store = FakeCatalogWrites()
    plans = _doc("plans.yaml")
    assert _load_plans(store, plans) == (["growth v1", "enterprise v1", "starter-usd v1"], [], [])
    writes = store.writes
    assert _load_plans(store, plans) == ([], [], ["growth", "enterprise", "starter-usd"])
    assert store.writes == writes
    changed = copy.deepcopy(plans)
    changed["plans"][0]["base_fee"] = "149.00"
    assert _load_plans(store, changed) == ([], ["growth v2"], ["enterprise", "starter-usd"])
    assert store.versions[("growth", 2)][1]["base_fee"] == "149.00"


def test_every_mistake_in_a_plans_file_is_reported_and_nothing_written() -> None:
    plans = _doc("plans.yaml")
    plans["plans"].append(copy.deepcopy(plans["plans"][0]))
    plans["plans"].append("not a plan")
    with pytest.raises(CatalogError) as exc:
        parse_plans(plans, "plans.yaml")
    assert exc.value.problems == ["plans.yaml: plans[4]: must be a mapping", "plans.yaml: plan 'growth' appears twice"]


def test_accounts_load_once_and_a_second_load_of_the_same_file_writes_nothing() -> None:
    store = FakeCatalogWrites()
    _load_plans(store, _doc("plans.yaml"))
    accounts = _doc("accounts.yaml")
    assert _load_accounts(store, accounts) == (["acme", "globex", "initech"], [], [])
    assert store.subscriptions[("acme", date(2026, 1, 1))] == ("growth", 1, None)
    writes = store.writes
    assert _load_accounts(store, accounts) == ([], [], ["acme", "globex", "initech"])
    assert store.writes == writes
    # a reordered file moves accounts without rewriting them
    accounts["accounts"].reverse()
    assert _load_accounts(store, accounts) == ([], [], ["initech", "globex", "acme"])
    assert [store.accounts[c][1] for c in ("initech", "globex", "acme")] == [0, 1, 2]


def test_an_account_missing_from_a_later_file_is_kept_and_a_changed_one_updated() -> None:
    store = FakeCatalogWrites()
    _load_plans(store, _doc("plans.yaml"))
    _load_accounts(store, _doc("accounts.yaml"))
    later = _doc("accounts.yaml")
    later["accounts"] = later["accounts"][:2]
    later["accounts"][1]["email"] = "billing@globex.example"
    assert _load_accounts(store, later) == ([], ["globex"], ["acme"])
    assert store.accounts["globex"][0].email == "billing@globex.example"
    assert "initech" in store.accounts


def test_a_new_subscription_takes_the_newest_version_and_ends_the_open_earlier_one() -> None:
    store = FakeCatalogWrites()
    plans = _doc("plans.yaml")
    _load_plans(store, plans)
    _load_accounts(store, _doc("accounts.yaml"))
    plans["plans"][0]["base_fee"] = "149.00"
    _load_plans(store, plans)  # growth v2: acme's subscription keeps v1
    assert _load_accounts(store, _doc("accounts.yaml"))[2] == ["acme", "globex", "initech"]
    moved = _doc("accounts.yaml")
    moved["accounts"][0]["subscription"] = {"plan": "growth", "starts_on": date(2026, 12, 1)}
    assert _load_accounts(store, moved) == ([], ["acme"], ["globex", "initech"])
    assert store.subscriptions[("acme", date(2026, 1, 1))] == ("growth", 1, date(2026, 12, 1))
    assert store.subscriptions[("acme", date(2026, 12, 1))] == ("growth", 2, None)


def test_a_subscription_to_a_plan_not_loaded_is_refused_before_anything_is_written() -> None:
    store = FakeCatalogWrites()
    with pytest.raises(CatalogError) as exc:
        _load_accounts(store, _doc("accounts.yaml"))
    assert exc.value.problems[0] == (
        "accounts.yaml: accounts[0] (acme).subscription.plan: plan 'growth' is not loaded; "
        "run `streamtoll plans load` first"
    )
    assert store.writes == 0
