"""Amendments on a real PostgreSQL, through the command line: acme's usage exported with
``streamtoll usage -o csv``, corrected, imported with a reason. November is finalized, December a
draft: the draft changes to the hand-computed amount, the finalized invoice stays the same to the
byte, December carries November's adjustment, ``amendments list`` shows who, when, why and the
amounts, and the same import again changes nothing."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from billing.adapters.sink import upsert_windows
from billing.api import models
from billing.api.app import create_app
from billing.services.billing_run import run_billing
from billing.services.keys import create_key
from billing.services.usage import usage_report
from streamtoll.serving import running

from .seed import DEC1, GB, w

pytestmark = pytest.mark.integration

D = Decimal
KEY = ["source", "principal", "client_id", "virtual_cluster", "topic", "direction"]


def _stored(engine: sa.Engine, invoice_id: int) -> tuple[Any, list[Any]]:
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM invoices WHERE id = :i"), {"i": invoice_id}).one()
        lines = conn.execute(
            sa.text("SELECT * FROM invoice_lines WHERE invoice_id = :i ORDER BY position"), {"i": invoice_id}
        ).all()
    return tuple(row), [tuple(r) for r in lines]


def _cli(migrated: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMTOLL_")}
    env["STREAMTOLL_DATABASE_URL"] = migrated
    return subprocess.run(
        [sys.executable, "-m", "streamtoll.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_an_import_changes_the_draft_and_adds_an_adjustment_to_the_finalized_period(
    engine: sa.Engine, migrated: str, tmp_path: Path
) -> None:
    # December: acme produces 600 GB → 100 × 0.00 + 500 × 0.08 = 40.00; 49.00 + 40.00 = 89.00,
    # topped up to the 100.00 minimum: 100.00, tax 19 % 19.00, total 119.00
    upsert_windows(engine, [w(2, 10, "proxy", "User:acme-orders", "produce", "orders", b=600 * GB, month=12)])
    november = {r.account: r for r in run_billing(engine, "2026-11", finalize_drafts=True, clock=lambda: DEC1)}
    assert (november["acme"].number, november["acme"].subtotal) == ("INV-2026-000001", D("168.00"))
    december = {r.account: r for r in run_billing(engine, "2026-12")}["acme"]
    assert (december.subtotal, december.total) == (D("100.00"), D("119.00"))
    finalized = _stored(engine, int(november["acme"].invoice_id or 0))

    # acme's usage of the range as `streamtoll usage` exports it, one row per key and hour
    exported = _cli(
        migrated, "usage", "--from", "2026-11-03", "--to", "2026-12-03", "--account", "acme",
        "--group-by", ",".join([*KEY, "hour"]), "-o", "csv",
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert len(rows) == 5  # produce 10h and 11h, consume, broker metrics (Nov); produce (Dec)
    for r in rows:  # the corrections: Nov 3 10h 1000 → 1400 GB, Dec 2 10h 600 → 1600 GB
        if (r["source"], r["direction"], r["hour"]) == ("proxy", "produce", "2026-11-03T10:00:00Z"):
            r["bytes"] = str(1400 * GB)
        if (r["source"], r["direction"], r["hour"]) == ("proxy", "produce", "2026-12-02T10:00:00Z"):
            r["bytes"] = str(1600 * GB)
    corrected = tmp_path / "acme.csv"
    with corrected.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    imported = [
        "usage", "import", str(corrected), "--from", "2026-11-03", "--to", "2026-12-03",
        "--reason", "proxy shard s/0 undercounted produce (ticket 812)", "--actor", "finance@example.com",
    ]  # fmt: skip
    first = _cli(migrated, *imported)
    assert first.returncode == 0, first.stderr
    # November: 1,650 GB produced: 100 × 0.00 + 900 × 0.08 + 650 × 0.05 = 104.50 (was 84.50):
    # 49.00 + 104.50 + 30.00 + 4.50 = 188.00 (was 168.00)
    # December: 1,600 GB: 900 × 0.08 + 600 × 0.05 = 102.00; 49.00 + 102.00 = 151.00 (was 100.00)
    assert "amendment 1: 2 usage difference(s)" in first.stdout
    assert "acme 2026-11 (INV-2026-000001, finalized): 168.00 → 188.00 EUR (+20.00)" in first.stdout
    assert "proxy produce bytes: 1250000000000 → 1650000000000" in first.stdout
    assert "billed again: 2026-12" in first.stdout

    # the finalized invoice, row (documents included) and lines, is the same to the byte
    assert _stored(engine, int(november["acme"].invoice_id or 0)) == finalized
    # the draft: 151.00 + the adjustment for November 20.00 = 171.00; tax 19 % 32.49; 203.49
    dec_row, dec_lines = _stored(engine, int(december.invoice_id or 0))
    with engine.connect() as conn:
        draft = conn.execute(
            sa.text("SELECT status, subtotal, tax, total FROM invoices WHERE id = :i"), {"i": december.invoice_id}
        ).one()
        adjustment = conn.execute(
            sa.text("SELECT description, amount FROM invoice_lines WHERE invoice_id = :i AND kind = 'adjustment'"),
            {"i": december.invoice_id},
        ).one()
    assert tuple(draft) == ("draft", D("171.00"), D("32.49"), D("203.49"))
    assert tuple(adjustment) == ("Adjustment for 2026-11 (usage after invoice INV-2026-000001)", D("20.00"))

    # every read sees the corrected usage: whole days (usage_daily) and hours (the hourly rows)
    by_day = usage_report(engine, datetime(2026, 11, 3, tzinfo=UTC), datetime(2026, 11, 4, tzinfo=UTC), ["source"])
    by_hour = usage_report(
        engine, datetime(2026, 11, 3, 10, tzinfo=UTC), datetime(2026, 11, 3, 11, tzinfo=UTC), ["source", "hour"]
    )
    assert [r["bytes"] for r in by_day] == [1650 * GB] and [r["bytes"] for r in by_hour] == [1400 * GB]
    # and a partner's own hourly report (its rows looked up by key, hour by hour)
    own = usage_report(
        engine, datetime(2026, 11, 3, tzinfo=UTC), datetime(2026, 11, 4, tzinfo=UTC), ["direction", "hour"], "acme"
    )
    assert [(r["hour"], r["bytes"]) for r in own] == [
        ("2026-11-03T10:00:00Z", 1400 * GB),
        ("2026-11-03T11:00:00Z", 250 * GB),
    ]

    # the audit trail
    listed = _cli(migrated, "amendments", "list", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    (amendment,) = json.loads(listed.stdout)
    assert (amendment["id"], amendment["kind"], amendment["actor"], amendment["reason"]) == (
        1,
        "import",
        "finance@example.com",
        "proxy shard s/0 undercounted produce (ticket 812)",
    )
    assert (amendment["from"], amendment["to"], amendment["rows"]) == (
        "2026-11-03T00:00:00Z",
        "2026-12-03T00:00:00Z",
        2,
    )
    created = datetime.fromisoformat(amendment["created_at"].replace("Z", "+00:00"))
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=5)
    assert [(m["account"], m["period"], m["amount_before"], m["amount_after"], m["difference"])
            for m in amendment["amounts"]] == [
        ("acme", "2026-11", "168.00", "188.00", "20.00"),
        ("acme", "2026-12", "100.00", "151.00", "51.00"),
    ]  # fmt: skip
    shown = _cli(migrated, "amendments", "show", "1")
    assert "by finance@example.com" in shown.stdout and "ticket 812" in shown.stdout, shown.stderr
    assert _cli(migrated, "amendments", "show", "2").returncode == 3

    # over HTTP, for finance only; and a partner's statement shows the corrected month
    keys = {"finance": create_key(engine, "finance", None), "acme": create_key(engine, "partner", "acme")}
    with running(create_app(engine, auth_limit=1000)) as base:

        def get(path: str, key: str) -> httpx.Response:
            return httpx.get(base + path, headers={"Authorization": f"Bearer {key}"}, timeout=30)

        served = get("/v1/amendments", keys["finance"])
        assert served.status_code == 200 and served.json() == json.loads(listed.stdout)
        models.Amendment.model_validate(served.json()[0])
        assert get("/v1/amendments/1", keys["finance"]).json()["actor"] == "finance@example.com"
        assert get("/v1/amendments/2", keys["finance"]).status_code == 404
        assert get("/v1/amendments", keys["acme"]).status_code == 403
        statement = get("/v1/statements/2026-11", keys["acme"]).json()
        totals = {(r["source"], r["direction"]): r["bytes"] for r in statement["totals"]}
        assert totals[("proxy", "produce")] == 1650 * GB and statement["rated_so_far"]["subtotal"] == "188.00"

    # the same import again changes nothing: no amendment, no row, no invoice touched
    again = _cli(migrated, *imported)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("nothing to change")
    assert _stored(engine, int(december.invoice_id or 0)) == (dec_row, dec_lines)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM amendments")).scalar_one() == 1
        assert conn.execute(sa.text("SELECT count(*) FROM usage_amendment_rows")).scalar_one() == 2
    # the trail is append-only
    with pytest.raises(sa.exc.DBAPIError, match="audit trail"), engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM usage_amendment_rows"))


def test_a_file_with_mistakes_is_refused_whole(engine: sa.Engine, migrated: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "source,principal,client_id,virtual_cluster,topic,direction,hour,bytes,records,requests,denied_requests\n"
        "proxy,User:acme-orders,cli,,orders,produce,2026-11-03T10:00:00Z,12.5,0,0,0\n"
        "kafka,User:acme-orders,cli,,orders,produce,2026-11-09T10:00:00Z,1,0,0,0\n"
    )
    done = _cli(migrated, "usage", "import", str(bad), "--from", "2026-11-03", "--to", "2026-11-04", "--reason", "x")
    assert done.returncode == 2
    assert "row 1: bytes '12.5' is not a whole number of 0 or more" in done.stderr
    assert "row 2: source 'kafka' is not one of proxy, broker_metrics, audit_log" in done.stderr
    assert "row 2: hour 2026-11-09T10:00:00Z is outside the range" in done.stderr
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM amendments")).scalar_one() == 0


def test_remeter_takes_a_replays_usage_for_the_whole_range(engine: sa.Engine, migrated: str, pg_server: str) -> None:
    from billing.adapters.db import upgrade

    from .conftest import fresh_database
    from .seed import NOVEMBER

    run_billing(engine, "2026-11")
    # the replay (runbook: a new metering group into a scratch database) metered acme's produce
    # on 3 November 10:00 as 1,400 GB, and nothing of globex's produce on 12 November 08:00
    replay = [
        w(3, 10, "proxy", "User:acme-orders", "produce", "orders", b=1400 * GB, r=20_000_000, q=10)
        if (x.principal, x.direction, x.window_start[:13]) == ("User:acme-orders", "produce", "2026-11-03T10")
        else x
        for x in NOVEMBER
        if (x.principal, x.direction, x.topic, x.window_start[:13])
        != ("User:globex-analytics", "produce", "orders", "2026-11-12T08")
    ]
    with fresh_database(pg_server) as scratch:
        upgrade(scratch)
        scratch_engine = sa.create_engine(scratch)
        upsert_windows(scratch_engine, replay)
        scratch_engine.dispose()
        args = ["usage", "remeter", "--replayed", scratch, "--from", "2026-11-03", "--to", "2026-11-13"]
        args += ["--reason", "decoder fix 1.4.2, replayed", "--actor", "ops", "-o", "json"]
        done = _cli(migrated, *args)
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        again = _cli(migrated, *args[:-2])
        assert again.returncode == 0 and again.stdout.startswith("nothing to change"), again.stderr
    assert (doc["id"], doc["kind"], doc["rows"], doc["rerun"]) == (1, "remeter", 2, ["2026-11"])
    moved = {m["account"]: m for m in doc["amounts"]}
    # acme: 1,650 GB produced: 168.00 → 188.00, as in the import above
    assert (moved["acme"]["amount_before"], moved["acme"]["amount_after"]) == ("168.00", "188.00")
    # globex: its 12 TB produced on the 12th are gone (the rest of the range is as metered)
    assert moved["globex"]["usage"] == [
        {
            "source": "proxy",
            "direction": "produce",
            "before": {"bytes": 12 * 10**12, "records": 0, "requests": 0, "denied_requests": 0},
            "after": {"bytes": 0, "records": 0, "requests": 0, "denied_requests": 0},
        }
    ]
    with engine.connect() as conn:
        acme = conn.execute(
            sa.text("SELECT subtotal FROM invoices WHERE account_code = 'acme' AND status = 'draft'")
        ).scalar_one()
    assert acme == D("188.00")
