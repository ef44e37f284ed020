"""The problem types are documented, and cursors are opaque but checked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from billing.api.pagination import decode_cursor, encode_cursor
from billing.api.problems import PROBLEMS, TYPE_BASE, ProblemError

DOC = Path(__file__).parents[3] / "docs" / "api.md"


def test_every_problem_type_is_listed_with_its_status_and_title() -> None:
    rows = {}
    for line in DOC.read_text().splitlines():
        if m := re.match(r"\| `(" + re.escape(TYPE_BASE) + r"[a-z-]+)` \| (\d+) \| ([^|]+) \|", line):
            rows[m[1]] = (int(m[2]), m[3].strip())
    assert rows == {p.uri: (p.status, p.title) for p in PROBLEMS.values()}


def test_cursors_round_trip_and_refuse_what_is_not_theirs() -> None:
    c = encode_cursor("invoices", ["2026-11-01", "acme", 7])
    assert re.fullmatch(r"[A-Za-z0-9_-]+", c)
    assert decode_cursor("invoices", c, (str, str, int)) == ["2026-11-01", "acme", 7]
    for bad in (c[:-2], "", "!!!", encode_cursor("usage", ["2026-11-01", "acme", 7]), c + "x"):
        with pytest.raises(ProblemError) as exc:
            decode_cursor("invoices", bad, (str, str, int))
        assert exc.value.kind.slug == "invalid-request"
    with pytest.raises(ProblemError):
        decode_cursor("invoices", c, (str, str, str))
    with pytest.raises(ProblemError):
        decode_cursor("invoices", c, (str, str))
