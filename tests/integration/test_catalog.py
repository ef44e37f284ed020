"""Loading accounts and plans into a real PostgreSQL: idempotent, versioned, all errors at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from billing.domain.plans import parse_plan
from billing.errors import CatalogError
from billing.services.catalog import load_accounts, load_plans, plan_from_document

pytestmark = pytest.mark.integration


def rows(url: str, sql: str) -> list[tuple[object, ...]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql)).all()]
    finally:
        engine.dispose()


def test_samples_load_idempotently(migrated: str, samples: Path) -> None:
    engine = sa.create_engine(migrated)
    try:
        first = load_plans(engine, samples / "plans.yaml")
        assert first.created == ["growth v1", "enterprise v1", "starter-usd v1"]
        assert load_plans(engine, samples / "plans.yaml").unchanged == ["growth", "enterprise", "starter-usd"]
        accounts = load_accounts(engine, samples / "accounts.yaml")
        assert accounts.created == ["acme", "globex", "initech"]
        before = rows(migrated, "SELECT * FROM accounts ORDER BY code")
        again = load_accounts(engine, samples / "accounts.yaml")
        assert again.unchanged == ["acme", "globex", "initech"] and not again.created and not again.updated
        assert rows(migrated, "SELECT * FROM accounts ORDER BY code") == before  # not even updated_at moved
        assert rows(migrated, "SELECT account_code, plan_code, plan_version FROM subscriptions ORDER BY 1") == [
            ("acme", "growth", 1),
            ("globex", "enterprise", 1),
            ("initech", "starter-usd", 1),
        ]
        sample = yaml.safe_load((samples / "accounts.yaml").read_text())
        sample_rules = sum(len(a["clients"]) for a in sample["accounts"])
        assert rows(migrated, "SELECT count(*) FROM client_rules") == [(sample_rules,)]
    finally:
        engine.dispose()


def test_a_changed_plan_publishes_a_new_immutable_version(migrated: str, samples: Path, tmp_path: Path) -> None:
    engine = sa.create_engine(migrated)
    try:
        load_plans(engine, samples / "plans.yaml")
        load_accounts(engine, samples / "accounts.yaml")
        changed = tmp_path / "plans.yaml"
        changed.write_text((samples / "plans.yaml").read_text().replace('base_fee: "49.00"', 'base_fee: "59.00"'))
        report = load_plans(engine, changed)
        assert report.updated == ["growth v2"] and report.unchanged == ["enterprise", "starter-usd"]
        doc = rows(migrated, "SELECT document FROM plan_versions WHERE plan_code = 'growth' AND version = 2")[0][0]
        assert plan_from_document(2, doc).base_fee == 59  # type: ignore[arg-type]
        # the subscription keeps the version it has
        assert rows(migrated, "SELECT plan_version FROM subscriptions WHERE account_code = 'acme'") == [(1,)]
        with pytest.raises(sa.exc.DBAPIError, match="immutable"), engine.begin() as conn:
            conn.execute(sa.text("UPDATE plan_versions SET currency = 'USD' WHERE plan_code = 'growth'"))
        with pytest.raises(sa.exc.DBAPIError, match="immutable"), engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM plan_versions"))
    finally:
        engine.dispose()


def test_stored_plan_reads_back_equal(migrated: str, samples: Path) -> None:
    import yaml

    engine = sa.create_engine(migrated)
    try:
        load_plans(engine, samples / "plans.yaml")
    finally:
        engine.dispose()
    for entry in yaml.safe_load((samples / "plans.yaml").read_text())["plans"]:
        (doc,) = rows(migrated, f"SELECT document FROM plan_versions WHERE plan_code = '{entry['code']}'")[0]
        assert plan_from_document(1, doc) == parse_plan(entry, "x")


def test_a_bad_file_changes_nothing_and_names_every_mistake(migrated: str, samples: Path, tmp_path: Path) -> None:
    engine = sa.create_engine(migrated)
    try:
        load_plans(engine, samples / "plans.yaml")
        bad = tmp_path / "accounts.yaml"
        bad.write_text(
            "accounts:\n"
            "  - {code: fine, name: Fine, email: f@x.io, currency: EUR}\n"
            "  - {code: broken, name: B, email: not-an-email, currency: EUR, tax_rate: 0.2}\n"
        )
        with pytest.raises(CatalogError) as exc:
            load_accounts(engine, bad)
        assert any("accounts[1] (broken).email" in p for p in exc.value.problems)
        assert any("accounts[1] (broken).tax_rate" in p for p in exc.value.problems)
        assert rows(migrated, "SELECT count(*) FROM accounts") == [(0,)]
        with pytest.raises(CatalogError, match="plan 'gold' is not loaded"):
            bad.write_text(
                "accounts:\n  - {code: other, name: O, email: o@x.io, currency: EUR,"
                " subscription: {plan: gold, starts_on: 2026-01-01}}\n"
            )
            load_accounts(engine, bad)
        bad.write_text("accounts: [\n")
        with pytest.raises(CatalogError, match="not valid YAML"):
            load_accounts(engine, bad)
    finally:
        engine.dispose()


def test_cli_reports_problems_in_sentences(migrated: str, samples: Path, tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STREAMTOLL_")},
        "STREAMTOLL_DATABASE_URL": migrated,
    }
    ok = subprocess.run(
        [sys.executable, "-m", "streamtoll.cli", "plans", "load", str(samples / "plans.yaml")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and "plans created: growth v1" in ok.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "streamtoll.cli", "accounts", "load", str(tmp_path / "nope.yaml")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "no such file" in missing.stderr and "Traceback" not in missing.stderr
