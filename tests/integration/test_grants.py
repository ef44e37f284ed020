"""Prepaid credits and grants on a real PostgreSQL: three grants of acme burned across two billing
runs (November finalized, December a draft), the invoice lines naming each grant applied and
what is left, the balance through the command line and the HTTP API, an idempotent POST, a grant
that never changes. Amounts worked out by hand.

acme (growth, EUR, 19 % tax; base fee 49.00, minimum 100.00; produce_bytes graduated per GB:
first 100 free, to 1000 at 0.08, above at 0.05) gets, effective 2026-11-01:
* #1 2000 GB of produce_bytes, priority 5, expires 2026-12-16 (the command line);
* #2 300 GB of produce_bytes a month, priority 5, rollover limit 100 GB (HTTP, retried);
* #3 120.00 EUR, priority 1 (HTTP).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from billing.adapters.sink import upsert_windows
from billing.api.app import create_app
from billing.services.billing_run import run_billing
from billing.services.keys import create_key
from streamtoll.serving import running

from .seed import DEC1, GB, w

pytestmark = pytest.mark.integration

D = Decimal


def _cli(migrated: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMTOLL_")}
    env["STREAMTOLL_DATABASE_URL"] = migrated
    return subprocess.run(
        [sys.executable, "-m", "streamtoll.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def _lines(engine: sa.Engine, invoice_id: int | None) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT kind, description, amount FROM invoice_lines WHERE invoice_id = :i ORDER BY position"),
            {"i": invoice_id},
        ).all()
    return [tuple(r) for r in rows]


@pytest.fixture
def api(engine: sa.Engine) -> Iterator[tuple[str, dict[str, str]]]:
    keys = {
        "acme": create_key(engine, "partner", "acme"),
        "finance": create_key(engine, "finance", None),
    }
    with running(create_app(engine, auth_limit=1000)) as base:
        yield base, keys


def test_grants_burned_across_two_billing_runs(engine: sa.Engine, migrated: str, api: tuple[str, Any]) -> None:
    base, keys = api
    added = _cli(
        migrated,
        *("grants", "add", "acme", "--units", "2000", "--meter", "produce_bytes", "--unit", "GB"),
        *("--priority", "5", "--effective", "2026-11-01", "--expires", "2026-12-16", "--reason", "launch", "--json"),
    )
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["id"] == 1 and json.loads(added.stdout)["created_by"].startswith("cli")

    finance = {"Authorization": f"Bearer {keys['finance']}", "Idempotency-Key": "grant-2"}
    params = {"units": "300", "meter": "produce_bytes", "unit": "GB", "priority": "5", "effective": "2026-11-01"}
    params |= {"recurring": "monthly", "rollover_limit": "100", "reason": "monthly allowance"}
    first = httpx.post(base + "/v1/accounts/acme/grants", params=params, headers=finance, timeout=30)
    again = httpx.post(base + "/v1/accounts/acme/grants", params=params, headers=finance, timeout=30)
    assert first.status_code == again.status_code == 200, first.text
    assert again.json() == first.json() and first.json()["id"] == 2  # a retried POST adds nothing
    money = {"amount": "120.00", "priority": "1", "effective": "2026-11-01", "reason": "prepaid"}
    third = httpx.post(base + "/v1/accounts/acme/grants", params=money, headers={**finance, "Idempotency-Key": "g3"})
    assert third.json()["id"] == 3, third.text
    partner = {"Authorization": f"Bearer {keys['acme']}"}
    refused = httpx.post(base + "/v1/accounts/acme/grants", params=money, headers=partner, timeout=30)
    assert refused.status_code == 403
    bad = httpx.post(
        base + "/v1/accounts/acme/grants",
        params={**money, "amount": "1.005"},
        headers={**finance, "Idempotency-Key": "g4"},
    )
    assert bad.status_code == 422 and "decimals" in bad.json()["detail"]

    november = {r.account: r for r in run_billing(engine, "2026-11", finalize_drafts=True, clock=lambda: DEC1)}
    # November: produce 1250 GB on the 3rd; #1 (earlier expiry than #2) covers all 1250, 750 left;
    # priced: base 49.00 + produce 0.00 + consume (2000 − 500 included) × 0.02 = 30.00 + records
    # 3 packages × 1.50 = 4.50 → 83.50, top-up to the 100.00 minimum 16.50 → 100.00;
    # #3 (120.00) takes 100.00, never below zero: subtotal 0.00, 20.00 left
    acme = november["acme"]
    assert _lines(engine, acme.invoice_id) == [
        ("base_fee", "base fee (30/30 days)", D("49.00")),
        ("usage", "produce_bytes (graduated, per GB)", D("0.00")),
        ("usage", "consume_bytes (per_unit, per GB)", D("30.00")),
        ("usage", "produce_records (package, per million)", D("4.50")),
        ("usage", "produce_requests: no price in plan growth (not billed)", D("0.00")),
        ("minimum_topup", "minimum commitment top-up", D("16.50")),
        ("grant", "Grant #1 applied: 1250 GB of produce_bytes covered (750 GB left)", D("0.00")),
        ("grant", "Grant #3 applied (20.00 EUR left)", D("-100.00")),
    ]
    assert (acme.subtotal, acme.tax, acme.total) == (D("0.00"), D("0.00"), D("0.00"))
    with engine.connect() as conn:
        html = conn.execute(sa.text("SELECT html FROM invoices WHERE id = :i"), {"i": acme.invoice_id}).scalar_one()
    assert "Grant #1 applied: 1250 GB of produce_bytes covered (750 GB left)" in html  # the document shows it

    # a balance alert: December rated now (no usage yet: base fee 49.00 + top-up 51.00 to the
    # 100.00 minimum) would burn #3's last 20.00 → 0.00 left, at or below 25.00: one event, once
    assert _cli(migrated, "alerts", "add", "acme", "--balance", "25.00").returncode == 0
    checked = _cli(migrated, "alerts", "check", "--period", "2026-12", "--json")
    assert checked.returncode == 0, checked.stderr
    assert [t["kind"] for t in json.loads(checked.stdout)] == ["balance"]
    again = _cli(migrated, "alerts", "check", "--period", "2026-12", "--json")
    assert json.loads(again.stdout) == []
    with engine.connect() as conn:
        body = conn.execute(sa.text("SELECT body FROM webhook_events WHERE type = 'alert.balance_low'")).scalar_one()
    assert json.loads(body)["data"]["money_left"] == "0.00"

    upsert_windows(
        engine,
        [
            w(5, 10, "proxy", "User:acme-orders", "produce", "orders", b=500 * GB, month=12),
            w(20, 10, "proxy", "User:acme-orders", "produce", "orders", b=1000 * GB, month=12),
        ],
    )
    december = {r.account: r for r in run_billing(engine, "2026-12")}["acme"]
    # December: #1 covers the 5th's 500 GB (250 left) but not the 20th (expired on the 16th);
    # #2: 300 + November's unused 300 carried up to 100 = 400 of the 20th's 1000 GB; 600 GB priced:
    # 100 free + 500 × 0.08 = 40.00; 49.00 + 40.00 = 89.00, top-up 11.00 → 100.00;
    # #3's last 20.00 → 80.00; tax round(80.00 × 0.19) = 15.20; total 95.20
    assert _lines(engine, december.invoice_id)[-4:] == [
        ("minimum_topup", "minimum commitment top-up", D("11.00")),
        ("grant", "Grant #1 applied: 500 GB of produce_bytes covered (250 GB left)", D("0.00")),
        ("grant", "Grant #2 applied: 400 GB of produce_bytes covered (0 GB left this period)", D("0.00")),
        ("grant", "Grant #3 applied (0.00 EUR left)", D("-20.00")),
    ]
    assert (december.subtotal, december.tax, december.total) == (D("80.00"), D("15.20"), D("95.20"))
    assert {r.account: r for r in run_billing(engine, "2026-12")}["acme"].total == D("95.20")  # re-run: same

    # the balance on 10 December: finalized burns are burned, December's draft's are pending
    shown = _cli(migrated, "balance", "acme", "--on", "2026-12-10", "--json")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["money_available"] == "0.00"
    assert [(g["id"], g["granted"], g["burned"], g["pending"], g["left"], g["available"]) for g in doc["grants"]] == [
        (1, "2000", "1250", "500", "750", "250"),
        (2, "400", "0", "400", "400", "0"),
        (3, "120.00", "100.00", "20.00", "20.00", "0.00"),
    ]
    seen = httpx.get(base + "/v1/balance", params={"on": "2026-12-10"}, headers=partner, timeout=30)
    assert seen.status_code == 200 and seen.json() == doc
    assert httpx.get(base + "/v1/balance", params={"account": "globex"}, headers=partner).status_code == 404
    assert httpx.get(base + "/v1/balance", headers={"Authorization": finance["Authorization"]}).status_code == 422
    listed = httpx.get(base + "/v1/grants", headers=partner, timeout=30).json()
    assert [g["id"] for g in listed] == [1, 2, 3]

    voided = _cli(migrated, "grants", "void", "1", "--reason", "sold by mistake")
    assert voided.returncode == 0 and "voided grant 1" in voided.stdout, voided.stderr
    assert _cli(migrated, "grants", "void", "1", "--reason", "again").returncode == 2  # a user mistake
    assert _cli(migrated, "grants", "void", "99", "--reason", "none").returncode == 3
    with pytest.raises(sa.exc.DBAPIError, match="cannot be changed"), engine.begin() as conn:
        conn.execute(sa.text("UPDATE grants SET amount = 1 WHERE id = 2"))
    with pytest.raises(sa.exc.DBAPIError, match="cannot be changed"), engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM grants WHERE id = 3"))
