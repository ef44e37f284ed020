"""What commands print: one way for every command that prints data.

``-o table`` (the default, for people: aligned columns), ``-o json`` (for programs: the data as
JSON, amounts and quantities as strings, times as ISO 8601) or ``-o csv`` (a header row, always,
even with no rows; text a spreadsheet would run as a formula gets a ``'`` in front:
``billing.adapters.spreadsheet``). ``--json`` and ``--csv`` are short for ``-o json`` / ``-o csv``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TextIO

from billing.adapters.spreadsheet import csv_text

__all__ = ["FORMATS", "plain", "print_document", "print_rows"]

FORMATS = ("table", "json", "csv")


def plain(value: Any) -> Any:
    """``value`` with dataclasses as dicts, Decimals as plain strings and times as ISO 8601."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _cell(value: Any) -> str:
    value = plain(value)
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def print_rows(rows: Sequence[Any], fmt: str, columns: Sequence[str] | None = None, out: TextIO | None = None) -> None:
    """A list of records (dicts or dataclasses) in ``fmt``; ``columns`` picks and orders the
    table's and CSV's columns (default: the first row's fields; JSON always has every field). An
    empty table or CSV prints its header all the same."""
    out = out or sys.stdout
    records = [plain(r) for r in rows]
    cols = list(columns) if columns is not None else list(records[0]) if records else []
    if fmt == "json":
        print(json.dumps(records, indent=1), file=out)
        return
    if fmt == "csv":
        out.write(csv_text(cols, ([_cell(r.get(c)) for c in cols] for r in records)))
        return
    cells = [[_cell(r.get(c)) for c in cols] for r in records]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(cols)]
    numeric = [all(_numeric(row[i]) for row in cells) and bool(cells) for i in range(len(cols))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    print(line([c.upper() for c in cols]), file=out)
    for row in cells:
        print(line(row), file=out)


def _numeric(text: str) -> bool:
    return text == "" or text.lstrip("-").replace(".", "", 1).isdigit()


def print_document(doc: Any, fmt: str, out: TextIO | None = None) -> None:
    """One record: JSON as it is, a table as ``field  value`` lines (nested values as JSON)."""
    out = out or sys.stdout
    value = plain(doc)
    if fmt == "json":
        print(json.dumps(value, indent=1), file=out)
        return
    print_rows([{"field": k, "value": v} for k, v in value.items()], fmt, ["field", "value"], out)
