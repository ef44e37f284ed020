"""Reading a file of usage rows, as ``streamtoll usage -o csv`` / ``-o json`` writes them.

Three shapes, told apart by the first character that is not a space: ``[`` a JSON array (``-o
json``), ``{`` JSON Lines (one object per line), anything else CSV with a header row (``-o
csv``). A CSV cell that streamtoll made inert for spreadsheets (``'`` before a leading ``=``,
``+``, ``-``, ``@`` …: :mod:`billing.adapters.spreadsheet`) is read back without the ``'``, so a
file exported and imported gives back the same identities. Every line that cannot be read is
reported at once (:class:`~billing.errors.AmendmentError`); checking the rows themselves is
:func:`billing.domain.amendments.parse_corrections`'.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from billing.adapters.spreadsheet import TRIGGERS
from billing.errors import AmendmentError

__all__ = ["read_usage_file"]


def _plain(cell: str) -> str:
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(TRIGGERS) else cell


def read_usage_file(path: Path) -> list[dict[str, Any]]:
    """The rows of ``path`` as dicts (CSV cells as text, JSON values as they are)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AmendmentError([f"{path} cannot be read ({getattr(exc, 'strerror', None) or exc})"]) from None
    first = text.lstrip()[:1]
    if first == "[":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AmendmentError([f"{path} is not JSON (line {exc.lineno}: {exc.msg})"]) from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise AmendmentError([f"{path}: a JSON file must be a list of objects, one per usage row"])
        return rows
    if first == "{":
        out, problems = [], []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{path} line {n} is not JSON ({exc.msg})")
                continue
            if not isinstance(value, dict):
                problems.append(f"{path} line {n} is not an object")
            else:
                out.append(value)
        if problems:
            raise AmendmentError(problems)
        return out
    reader = csv.DictReader(io.StringIO(text))
    rows = []
    for r in reader:
        if None in r:
            raise AmendmentError([f"{path} line {reader.line_num} has more cells than the header"])
        rows.append({k: _plain(v) if isinstance(v, str) else v for k, v in r.items()})
    return rows
