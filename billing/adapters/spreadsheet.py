"""CSV that a spreadsheet opens as data: no cell runs as a formula (OWASP "CSV injection").

Client ids, topics and principals are written by whoever produces Kafka traffic, and a
spreadsheet runs a cell that begins with ``=``, ``+``, ``-`` or ``@`` as a formula (some also
after a leading tab or carriage return): ``=HYPERLINK("http://…"&A1)`` sends data away on a
click, ``+cmd|' /C calc'!A0`` starts a program. Every CSV streamtoll writes — the API's usage and
statements, the command line's ``-o csv``, the demo's files — passes each cell through
:func:`inert`, which prefixes such text with ``'`` (OWASP's advice; the cell then shows as text,
the quote visible). The fullwidth ``＝ ＋ － ＠`` count too: some spreadsheets take them as the
ASCII ones.

Numbers are not text and are never changed: an integer quantity of ``-5`` stays ``-5``, and so
does text that is a plain decimal number (``-12.50``, an amount as ``format_money`` writes it) —
a spreadsheet reads it as that number, and a number cannot be a formula.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["TRIGGERS", "csv_text", "frame_csv", "inert"]

TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "＝", "＋", "－", "＠")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def inert(value: Any) -> Any:
    """``value``, or — text a spreadsheet would run as a formula — ``'`` followed by it."""
    if isinstance(value, str) and value.startswith(TRIGGERS) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def _field(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):  # NaN: pandas' empty cell
        return ""
    text = str(inert(value))
    if any(ch in text for ch in ',"\r\n'):
        # quoted for a carriage return too: Python's csv module (lineterminator "\n") leaves a
        # bare "\r" unquoted, and spreadsheets break the row there — the rest of the cell would
        # begin a new row, and could be a formula there
        return '"' + text.replace('"', '""') + '"'
    return text


def csv_text(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A CSV document (RFC 4180 quoting, ``\n`` line ends): the header row (even with no rows),
    then each row's cells made inert (``None`` and NaN are empty cells)."""
    lines = [",".join(_field(c) for c in columns)]
    lines.extend(",".join(_field(cell) for cell in row) for row in rows)
    return "\n".join(lines) + "\n"


def frame_csv(frame: Any) -> str:
    """:func:`csv_text` of a pandas DataFrame (its columns, no index)."""
    return csv_text([str(c) for c in frame.columns], frame.itertuples(index=False, name=None))
