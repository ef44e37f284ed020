"""``docs/billing.md`` and the billing code, kept together.

* Every YAML block of the document is a marked example (``<!-- example: accounts|plans|products [FILE] -->``)
  and loads with the parsers ``streamtoll accounts load`` / ``plans load`` / ``products load`` use, without a problem;
  a block marked with a sample file is that file, verbatim.
* Every price model, unit, meter, source and quantity the code accepts is named in the document,
  and every field the catalog parsers accept has a row in a field table: a new model or field
  fails here until it is documented. Every ``STREAMTOLL_BILLING_SOURCES`` example parses.
* The worked examples are rated here with the billing domain (attribution by the document's
  accounts, one source per quantity in the default order, the subscription's days, rating): every
  line, breakdown figure and total the document writes is what the code computes. End to end, on
  PostgreSQL, ``tests/integration/test_billing.py::test_worked_invoices_for_the_samples`` bills the
  same usage.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, fields
from datetime import date
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from billing.domain import plans as plans_module
from billing.domain.accounts import UNASSIGNED, Account, Attributor, ClientRule, Subscription, parse_accounts
from billing.domain.money import format_money, format_quantity
from billing.domain.plans import MODELS, PlanVersion, parse_plan
from billing.domain.products import Product, parse_products
from billing.domain.rating import Rated, rate_period
from billing.domain.sources import DEFAULT_SOURCES, QUANTITIES, SOURCES, format_sources, parse_sources
from billing.domain.units import BYTE_UNITS, COUNT_UNITS, METERS, unit_size

ROOT = Path(__file__).parents[3]
DOC = ROOT / "docs" / "billing.md"

EXAMPLE = re.compile(r"<!-- example: (?P<kind>\S+)(?: (?P<file>\S+))? -->\n```yaml\n(?P<body>.*?\n)```", re.S)
TABLE = re.compile(r"<!-- worked-example: (?P<name>[^>]*?) -->\n(?P<rows>(?:\|.*\|\n)+)")

# what parse_accounts reads from an account entry (it keeps no list of them)
ACCOUNT_FIELDS = ("code", "name", "email", "currency", "tax_rate", "address", "clients", "subscription", "access")


@cache
def text() -> str:
    return DOC.read_text(encoding="utf-8")


def examples() -> list[tuple[str, str | None, str]]:
    return [(m["kind"], m["file"], m["body"]) for m in EXAMPLE.finditer(text())]


def load_plans(doc: Any, source: str) -> list[PlanVersion]:
    """What ``billing.services.catalog.load_plans`` checks before it writes anything."""
    assert isinstance(doc, dict) and isinstance(doc.get("plans"), list), f"{source}: needs a 'plans' list"
    parsed = [parse_plan(entry, f"{source}: plans[{i}]") for i, entry in enumerate(doc["plans"])]
    codes = [p.code for p in parsed]
    assert len(codes) == len(set(codes)), f"{source}: a plan code appears twice: {codes}"
    return parsed


def _schema_file(name: str) -> str:
    """A product example's schema file: a valid schema of the kind its name says."""
    return '{"type": "record", "name": "R", "fields": []}' if name.endswith(".avsc") else '{"type": "object"}'


def load(kind: str, body: str) -> list[Account] | list[PlanVersion] | list[Product]:
    doc = yaml.safe_load(body)
    if kind == "accounts":
        return parse_accounts(doc, "docs/billing.md")
    if kind == "products":
        return parse_products(doc, "docs/billing.md", _schema_file)
    assert kind == "plans", f"unknown example kind {kind!r}: mark a block 'accounts', 'plans' or 'products'"
    return load_plans(doc, "docs/billing.md")


# --- the YAML examples ------------------------------------------------------------------------


def test_every_yaml_block_is_a_marked_example() -> None:
    assert text().count("```yaml") == len(examples())
    kinds = [kind for kind, _, _ in examples()]
    assert kinds.count("accounts") >= 2 and kinds.count("plans") >= 2


@pytest.mark.parametrize(
    ("kind", "file", "body"), examples(), ids=[f"{i}-{k}" for i, (k, _, _) in enumerate(examples())]
)
def test_example_loads_with_the_real_parser(kind: str, file: str | None, body: str) -> None:
    assert load(kind, body)  # raises AccountError / PlanError listing every problem


@pytest.mark.parametrize("file", sorted({f for _, f, _ in examples() if f}))
def test_sample_blocks_are_the_sample_files(file: str) -> None:
    blocks = [body for _, f, body in examples() if f == file]
    assert blocks == [(ROOT / file).read_text(encoding="utf-8")]


def test_the_plan_examples_use_every_price_model() -> None:
    used = {
        p.model for kind, _, body in examples() if kind == "plans" for plan in load(kind, body) for p in plan.prices
    }
    assert used == set(MODELS)


# --- names and fields -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [*MODELS, *BYTE_UNITS, *COUNT_UNITS, *METERS, *SOURCES, *QUANTITIES, UNASSIGNED],
)
def test_every_accepted_name_is_in_the_document(name: str) -> None:
    assert f"`{name}`" in text(), f"docs/billing.md does not name `{name}`"


def field_rows() -> set[str]:
    """The first cell of every table row that is one code span: ``| `up_to` | …``."""
    return set(re.findall(r"^\| `([a-z_]+)` \|", text(), re.M))


@pytest.mark.parametrize(
    "field",
    sorted(
        {
            *plans_module._PLAN_KEYS,
            *plans_module._PRICE_KEYS,
            *plans_module._TIER_KEYS,
            *ACCOUNT_FIELDS,
            *(f.name for f in fields(ClientRule)),
            *(f.name for f in fields(Subscription)),
        }
    ),
)
def test_every_catalog_field_has_a_row_in_a_field_table(field: str) -> None:
    assert field in field_rows(), f"docs/billing.md has no field table row for `{field}`"


def test_the_account_fields_listed_here_are_the_ones_parse_accounts_reads() -> None:
    # an entry with every field parses; one with a field more still does (unknown account fields
    # are ignored, as the document says), but the parsed account must not change
    entry = {
        "code": "a",
        "name": "A",
        "email": "a@x.io",
        "currency": "EUR",
        "tax_rate": "0.1",
        "address": ["x"],
        "clients": [{"principal": "User:a"}],
        "subscription": {"plan": "p", "starts_on": "2026-01-01"},
        "access": {"topics": [{"prefix": "a."}]},
    }
    assert tuple(entry) == ACCOUNT_FIELDS
    full = parse_accounts({"accounts": [entry]})[0]
    for field in ACCOUNT_FIELDS[4:]:
        less = parse_accounts({"accounts": [{k: v for k, v in entry.items() if k != field}]})[0]
        assert less != full, f"parse_accounts no longer reads {field!r}"


def test_billing_sources_examples_parse_and_the_default_is_written_out() -> None:
    spans = re.findall(r"`((?:bytes|records|requests)=[^`]*)`", text())
    assert len(spans) >= 3
    for span in spans:
        parse_sources(span)
    assert f"`{format_sources(DEFAULT_SOURCES)}`" in text()


# --- the worked examples ----------------------------------------------------------------------


@dataclass(frozen=True)
class UsageRow:
    day: date
    source: str
    principal: str
    meter: str
    topic: str
    quantity: int


def rows_of(name: str) -> list[list[str]]:
    found = [m["rows"] for m in TABLE.finditer(text()) if m["name"] == name]
    assert len(found) == 1, f"one table marked worked-example: {name}, found {len(found)}"
    lines = found[0].splitlines()[2:]  # header and separator
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]


def raw_quantity(cell: str) -> int:
    """``1,250 GB`` → 1250 × 10^9; ``25 million`` → 25 × 10^6; ``10`` → 10."""
    number, _, unit = cell.replace(",", "").partition(" ")
    raw = Decimal(number) * unit_size(unit or "1")
    assert raw == raw.to_integral_value(), cell
    return int(raw)


def usage() -> list[UsageRow]:
    return [
        UsageRow(date.fromisoformat(day), source, principal, meter, topic, raw_quantity(quantity))
        for day, source, principal, meter, topic, quantity in rows_of("usage")
    ]


def catalog() -> tuple[list[Account], dict[str, PlanVersion]]:
    files = {f: body for _, f, body in examples() if f}
    accounts = parse_accounts(yaml.safe_load(files["streamtoll/samples/accounts.yaml"]))
    plans = load_plans(yaml.safe_load(files["streamtoll/samples/plans.yaml"]), "docs/billing.md")
    return accounts, {p.code: p for p in plans}


def rate(account: Account, plans: dict[str, PlanVersion], rows: list[UsageRow]) -> Rated:
    """A billing run for one account, in domain terms: the account's rows, one source per quantity
    (the first in the default order in which the account has any), the subscription's days."""
    start = min(r.day for r in rows).replace(day=1)
    end = date(start.year + start.month // 12, start.month % 12 + 1, 1)
    assert all(start <= r.day < end for r in rows), "the worked examples are one billing period"
    sub = account.subscription
    assert sub is not None
    chosen: dict[str, str] = {}
    for quantity, order in DEFAULT_SOURCES.items():
        seen = {r.source for r in rows if r.meter.endswith("_" + quantity)}
        chosen[quantity] = next((s for s in order if s in seen), "")
    totals: dict[tuple[str, str], int] = defaultdict(int)
    for r in rows:
        in_subscription = sub.starts_on <= r.day and (sub.ends_on is None or r.day < sub.ends_on)
        if chosen[r.meter.rsplit("_", 1)[1]] == r.source and in_subscription:
            totals[(r.meter, r.topic)] += r.quantity
    return rate_period(plans[sub.plan], totals, start, end, sub.starts_on, sub.ends_on, account.tax_rate)


def test_the_worked_examples_are_every_invoice_of_the_period() -> None:
    accounts, _ = catalog()
    attributor = Attributor.for_accounts(accounts)
    billed = {attributor.account_for(r.principal, "", "", r.day) for r in usage()} - {UNASSIGNED}
    billed |= {a.code for a in accounts if a.subscription is not None}
    marked = {m["name"].removeprefix("invoice ") for m in TABLE.finditer(text()) if m["name"] != "usage"}
    assert marked == billed == {"acme", "globex", "initech"}


@pytest.mark.parametrize("code", ["acme", "globex", "initech"])
def test_worked_invoice_is_what_the_billing_code_computes(code: str) -> None:
    accounts, plans = catalog()
    attributor = Attributor.for_accounts(accounts)
    account = next(a for a in accounts if a.code == code)
    mine = [r for r in usage() if attributor.account_for(r.principal, "", "", r.day) == code]
    rated = rate(account, plans, mine)
    currency = account.currency

    def money(amount: Decimal) -> str:
        return format_money(amount, currency, thousands=True)

    rows = rows_of(f"invoice {code}")
    *line_rows, (subtotal, _, subtotal_amount), (tax, _, tax_amount), (total, _, total_amount) = rows
    assert [(r[0], r[2]) for r in line_rows] == [(ln.description, money(ln.rounded_amount)) for ln in rated.lines]
    assert (subtotal, tax, total) == ("subtotal", "tax", "total")
    assert (subtotal_amount, tax_amount, total_amount) == (money(rated.subtotal), money(rated.tax), money(rated.total))

    # the "how" column shows the arithmetic the invoice's breakdown holds
    for (_, how, _), line in zip(line_rows, rated.lines, strict=True):
        for part in line.breakdown:
            step = f"{format_quantity(part.quantity, thousands=True)} × {money(part.unit_price)}"
            assert step in how, (line.description, step, how)
            if part.flat_fee:
                assert f"+ {money(part.flat_fee)}" in how, (line.description, part.flat_fee, how)
        if line.included:
            assert f"− {format_quantity(line.included, thousands=True)} included" in how, (line.description, how)


def test_the_acme_example_is_the_readme_figures() -> None:
    accounts, plans = catalog()
    acme = next(a for a in accounts if a.code == "acme")
    attributor = Attributor.for_accounts(accounts)
    rated = rate(acme, plans, [r for r in usage() if attributor.account_for(r.principal, "", "", r.day) == "acme"])
    assert (rated.subtotal, rated.tax, rated.total) == (Decimal("168.00"), Decimal("31.92"), Decimal("199.92"))
