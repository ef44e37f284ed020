"""Amounts leave the system as money reads: ``"210.00"``, ``"0.00"``, JPY ``"1500"``, KWD ``"1.500"``
— in the API, the command line, statements, and invoices frozen before that rule (real PostgreSQL)."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from billing.adapters.sink import upsert_windows
from billing.api.app import create_app
from billing.domain.money import minor_unit
from billing.services.billing_run import run_billing
from billing.services.catalog import load_accounts, load_plans
from billing.services.invoices import DEFAULT_ISSUER, invoice_pdf, invoice_view, list_invoices
from billing.services.keys import create_key
from billing.services.statements import statement, statement_csv
from streamtoll.cli import build_parser
from streamtoll.serving import running

from .seed import DEC1, GB, w

pytestmark = pytest.mark.integration

PLAIN = re.compile(r"^-?\d+(\.\d+)?$")

PLANS = """
plans:
  - code: tokyo
    name: Tokyo
    currency: JPY
    base_fee: "1500"
    prices:
      - {meter: produce_bytes, unit: GB, model: per_unit, unit_price: "2.5"}
  - code: kuwait
    name: Kuwait
    currency: KWD
    base_fee: "12.5"
    prices:
      - {meter: consume_bytes, unit: GB, model: per_unit, unit_price: "0.0125"}
"""
ACCOUNTS = """
accounts:
  - code: tokyo
    name: Tokyo KK
    email: ap@tokyo.example
    currency: JPY
    tax_rate: "0.10"
    subscription: {plan: tokyo, starts_on: 2026-01-01}
    clients: [{principal: "User:tokyo-*"}]
  - code: kuwait
    name: Kuwait WLL
    email: ap@kuwait.example
    currency: KWD
    tax_rate: "0"
    subscription: {plan: kuwait, starts_on: 2026-01-01}
    clients: [{principal: "User:kuwait-*"}]
"""


@pytest.fixture
def priced(engine: sa.Engine, tmp_path: Path) -> sa.Engine:
    """The samples plus a JPY and a KWD account with usage in November 2026.

    tokyo: base 1500 + 3 GB × 2.5 = 7.5 → 8; subtotal 1508, tax 10 % = 150.8 → 151, total 1659.
    kuwait: base 12.500 + 10 GB × 0.0125 = 0.125; subtotal 12.625, tax 0.000, total 12.625.
    """
    (tmp_path / "plans.yaml").write_text(PLANS)
    (tmp_path / "accounts.yaml").write_text(ACCOUNTS)
    load_plans(engine, tmp_path / "plans.yaml")
    load_accounts(engine, tmp_path / "accounts.yaml")
    upsert_windows(
        engine,
        [
            w(7, 3, "proxy", "User:tokyo-app", "produce", "events", b=3 * GB),
            w(8, 4, "proxy", "User:kuwait-app", "consume", "events", b=10 * GB),
        ],
    )
    return engine


def exactly_minor(currency: str) -> re.Pattern[str]:
    places = minor_unit(currency)
    return re.compile(r"^-?\d+" + (rf"\.\d{{{places}}}" if places else "") + "$")


def assert_plain_invoice(doc: dict[str, Any]) -> None:
    """Every number of an invoice view: rounded amounts with exactly the minor digits, unrounded
    ones and unit prices plain with at least them, quantities plain."""
    currency = doc["currency"]
    exact, places = exactly_minor(currency), minor_unit(currency)

    def at_least_minor(text: str) -> bool:
        return bool(PLAIN.match(text)) and len(text.partition(".")[2]) >= places

    for key in ("subtotal", "tax", "total"):
        assert exact.match(doc[key]), (key, doc[key])
    for line in doc["lines"]:
        assert exact.match(line["amount"]), line
        assert at_least_minor(line["amount_unrounded"]), line
        assert line["quantity"] is None or PLAIN.match(line["quantity"]), line
        for part in line["breakdown"]:
            assert PLAIN.match(part["quantity"]), part
            assert all(at_least_minor(part[k]) for k in ("unit_price", "flat_fee", "amount")), part


def test_api_shows_amounts_with_the_currency_minor_digits(priced: sa.Engine) -> None:
    finance = {"Authorization": f"Bearer {create_key(priced, 'finance', None)}"}
    with running(create_app(priced, auth_limit=1000)) as base:
        run = httpx.post(base + "/v1/billing/runs", params={"period": "2026-11"}, headers=finance, timeout=60)
        assert run.status_code == 200, run.text
        drafts = {r["account"]: r for r in run.json()}
        assert {a: (r["subtotal"], r["tax"], r["total"]) for a, r in drafts.items()} == {
            "acme": ("168.00", "31.92", "199.92"),
            "globex": ("2200.00", "0.00", "2200.00"),
            "initech": ("98.07", "8.09", "106.16"),
            "tokyo": ("1508", "151", "1659"),
            "kuwait": ("12.625", "0.000", "12.625"),
        }
        draft = httpx.get(f"{base}/v1/invoices/{drafts['kuwait']['ref']}", headers=finance, timeout=30)
        assert_plain_invoice(draft.json())

        done = httpx.post(f"{base}/v1/invoices/{drafts['tokyo']['ref']}/finalize", headers=finance, timeout=60)
        assert done.status_code == 200 and done.json()["total"] == "1659", done.text
        run_billing(priced, "2026-11", finalize_drafts=True, clock=lambda: DEC1, render=False)

        listed = httpx.get(base + "/v1/invoices", headers=finance, timeout=30).json()
        assert {r["account"]: (r["subtotal"], r["tax"], r["total"]) for r in listed} == {
            a: (r["subtotal"], r["tax"], r["total"]) for a, r in drafts.items()
        }
        views = {}
        for row in listed:
            r = httpx.get(f"{base}/v1/invoices/{row['number']}", headers=finance, timeout=30)
            assert r.status_code == 200 and "E+" not in r.text and "E-" not in r.text, r.text
            views[row["account"]] = r.json()
            assert_plain_invoice(views[row["account"]])

    globex = views["globex"]  # showed "2.2E+3", "0", "1.75E+3" before
    assert (globex["subtotal"], globex["tax"], globex["total"], globex["tax_rate"]) == (
        "2200.00",
        "0.00",
        "2200.00",
        "0",
    )
    assert [ln["amount"] for ln in globex["lines"]] == ["1750.00", "410.00", "20.00", "20.00"]
    assert globex["lines"][1]["breakdown"][0] == {
        "tier": 1,
        "quantity": "12",
        "unit_price": "30.00",
        "flat_fee": "50.00",
        "amount": "410.00",
    }
    acme = views["acme"]
    assert [(ln["quantity"], ln["amount"]) for ln in acme["lines"][:3]] == [
        (None, "49.00"),
        ("1250", "84.50"),  # was "1.25E+3" and "84.5"
        ("2000", "30.00"),
    ]
    initech = views["initech"]  # unrounded amounts keep their digits
    assert initech["lines"][1]["amount_unrounded"] == "4.938268" and initech["lines"][1]["amount"] == "4.94"
    assert initech["lines"][0]["breakdown"][0]["unit_price"] == "0.10"
    tokyo = views["tokyo"]
    assert [(ln["amount_unrounded"], ln["amount"]) for ln in tokyo["lines"]] == [("1500", "1500"), ("7.5", "8")]
    assert (tokyo["tax_rate"], tokyo["tax"], tokyo["total"]) == ("0.1", "151", "1659")
    kuwait = views["kuwait"]
    assert [ln["amount"] for ln in kuwait["lines"]] == ["12.500", "0.125"]
    assert kuwait["lines"][1]["breakdown"][0]["unit_price"] == "0.0125"
    assert (kuwait["tax"], kuwait["total"]) == ("0.000", "12.625")


def _old_snapshot(conn: sa.Connection, invoice_id: int, number: str) -> dict[str, Any]:
    """The snapshot exactly as finalize froze it before amounts were formatted."""
    inv = conn.execute(sa.text("SELECT * FROM invoices WHERE id = :i"), {"i": invoice_id}).one()
    acct = conn.execute(sa.text("SELECT * FROM accounts WHERE code = :c"), {"c": inv.account_code}).one()
    lines = conn.execute(
        sa.text("SELECT * FROM invoice_lines WHERE invoice_id = :i ORDER BY position"), {"i": invoice_id}
    ).all()

    def old(value: Decimal) -> str:
        return str(value.normalize())

    return {
        "number": number,
        "account": {"code": acct.code, "name": acct.name, "email": acct.email, "address": acct.address},
        "period": {"start": inv.period_start.isoformat(), "end": inv.period_end.isoformat()},
        "kind": inv.kind,
        "currency": inv.currency,
        "plan": {"code": inv.plan_code, "version": inv.plan_version},
        "lines": [
            {
                "position": r.position,
                "kind": r.kind,
                "description": r.description,
                "meter": r.meter,
                "source": r.source,
                "topics": r.topics,
                "quantity": None if r.quantity is None else old(r.quantity),
                "unit": r.unit,
                "model": r.model,
                "amount_unrounded": old(r.amount_unrounded),
                "amount": old(r.amount),
                "breakdown": r.breakdown,
                "usage_ref": r.usage_ref,
            }
            for r in lines
        ],
        "subtotal": old(inv.subtotal),
        "tax_rate": old(inv.tax_rate),
        "tax": old(inv.tax),
        "total": old(inv.total),
        "issued_on": "2026-12-01",
        "due_on": "2026-12-31",
        "payment_terms_days": 30,
        "issuer": DEFAULT_ISSUER,
    }


def test_a_snapshot_frozen_the_old_way_is_shown_plain_and_stays_as_stored(priced: sa.Engine) -> None:
    drafts = {r.account: r for r in run_billing(priced, "2026-11")}
    numbers = {"globex": "INV-2026-000901", "tokyo": "INV-2026-000902"}
    stored = {}
    with priced.begin() as conn:
        for account, number in numbers.items():
            invoice_id = drafts[account].invoice_id
            assert invoice_id is not None
            snapshot = _old_snapshot(conn, invoice_id, number)
            # the finalize transition is the one update the database allows to write a snapshot
            conn.execute(
                sa.text(
                    "UPDATE invoices SET status = 'finalized', number = :n, snapshot = CAST(:s AS jsonb), "
                    "issued_on = '2026-12-01', due_on = '2026-12-31', finalized_at = :at WHERE id = :i"
                ),
                {"n": number, "s": json.dumps(snapshot), "at": DEC1, "i": invoice_id},
            )
            stored[account] = snapshot
    assert stored["globex"]["total"] == "2.2E+3" and stored["globex"]["tax"] == "0"  # as the old code wrote
    assert stored["tokyo"]["lines"][0]["amount"] == "1.5E+3"

    globex = invoice_view(priced, numbers["globex"])
    assert (globex["subtotal"], globex["tax"], globex["total"]) == ("2200.00", "0.00", "2200.00")
    assert [ln["amount"] for ln in globex["lines"]] == ["1750.00", "410.00", "20.00", "20.00"]
    assert_plain_invoice(globex)
    tokyo = invoice_view(priced, numbers["tokyo"])
    assert [(ln["amount_unrounded"], ln["amount"]) for ln in tokyo["lines"]] == [("1500", "1500"), ("7.5", "8")]
    assert (tokyo["tax"], tokyo["total"]) == ("151", "1659")
    assert_plain_invoice(tokyo)
    finance = {"Authorization": f"Bearer {create_key(priced, 'finance', None)}"}
    with running(create_app(priced, auth_limit=1000)) as base:
        api = httpx.get(f"{base}/v1/invoices/{numbers['globex']}", headers=finance, timeout=30).json()
    assert api == globex
    listed = {r["account"]: r["total"] for r in list_invoices(priced)}
    assert (listed["globex"], listed["tokyo"]) == ("2200.00", "1659")

    # its document is rendered from the old snapshot, with the same digits
    assert invoice_pdf(priced, numbers["globex"]).startswith(b"%PDF")
    with priced.connect() as conn:
        rows = {
            r.number: r
            for r in conn.execute(
                sa.text("SELECT number, snapshot, html FROM invoices WHERE number = ANY(:n)"),
                {"n": list(numbers.values())},
            )
        }
    html = rows[numbers["globex"]].html
    assert "EUR 2,200.00" in html and "1,750.00" in html and "E+" not in html
    # and the stored snapshots are exactly what was frozen
    for account, number in numbers.items():
        assert rows[number].snapshot == stored[account]


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    args = build_parser().parse_args(argv)
    assert args.func(args) == 0
    return capsys.readouterr().out


def test_cli_bill_prints_plain_minor_digit_amounts(
    priced: sa.Engine, migrated: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STREAMTOLL_DATABASE_URL", migrated)
    table = _cli(["bill", "--period", "2026-11"], capsys).splitlines()
    assert table[0].lower().split() == ["account", "status", "number", "currency", "subtotal", "tax", "total"]
    rows = {cells[0]: cells[-4:] for cells in (line.split() for line in table[1:])}
    assert rows == {
        "acme": ["EUR", "168.00", "31.92", "199.92"],
        "globex": ["EUR", "2200.00", "0.00", "2200.00"],
        "initech": ["USD", "98.07", "8.09", "106.16"],
        "kuwait": ["KWD", "12.625", "0.000", "12.625"],
        "tokyo": ["JPY", "1508", "151", "1659"],
    }

    report = json.loads(_cli(["bill", "--period", "2026-11", "--json"], capsys))
    assert {r["account"]: (r["subtotal"], r["tax"], r["total"]) for r in report} == {
        a: tuple(cells[1:]) for a, cells in rows.items()
    }
    tokyo = next(r for r in report if r["account"] == "tokyo")
    out = _cli(["invoices", "finalize", f"draft-{tokyo['invoice_id']}"], capsys)
    assert out.strip().endswith("for tokyo: JPY 1659"), out
    # a finalized invoice read back (numeric(20, 6): 1659.000000) is still 1659
    again = json.loads(_cli(["bill", "--period", "2026-11", "--json"], capsys))
    assert next(r for r in again if r["account"] == "tokyo")["total"] == "1659"
    assert next(r for r in again if r["account"] == "tokyo")["status"] == "skipped-finalized"


def test_statement_json_and_csv_show_plain_minor_digit_amounts(priced: sa.Engine) -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    for account, want in {
        "acme": ("168.00", "31.92", "199.92", ["49.00", "84.50", "30.00", "4.50", "0.00", "0.00"]),
        "globex": ("2200.00", "0.00", "2200.00", ["1750.00", "410.00", "20.00", "20.00"]),
        "tokyo": ("1508", "151", "1659", ["1500", "8"]),
        "kuwait": ("12.625", "0.000", "12.625", ["12.500", "0.125"]),
    }.items():
        doc = json.loads(json.dumps(statement(priced, account, "2026-11", now=now)))  # as the API serves it
        rated = doc["rated_so_far"]
        assert (rated["subtotal"], rated["tax"], rated["total"], [ln["amount"] for ln in rated["lines"]]) == want

        rows = list(csv.DictReader(io.StringIO(statement_csv(doc))))
        money = [r for r in rows if r["section"] == "rated_so_far"]
        assert [r["amount"] for r in money] == [*want[3], *want[:3]]
        assert [r["description"] for r in money][-3:] == ["subtotal", "tax", "total"]
        assert {r["currency"] for r in money} == {doc["currency"]}
        usage = [r for r in rows if r["section"] != "rated_so_far"]
        assert usage and all(r[q].isdigit() for r in usage for q in ("bytes", "records", "requests"))
    assert "1250000000000" in statement_csv(statement(priced, "acme", "2026-11", now=now))  # not 1.25e+12
