"""Statements: a partner's view of its usage in a period (not a tax document).

Totals per source and meter, a daily series, breakdowns by topic, client id, principal and
direction, the amount rated so far (what the invoice would say now), and — where two sources
saw the same traffic — the difference between them, so finance can spot a proxy or exporter
gap. As JSON (a dict), CSV (the daily series, breakdowns and rated amount, via pandas) or PDF.
Amounts are plain text with the currency's minor digits (``"168.00"``, JPY ``"1500"``),
written by ``billing.domain.money.format_money``; quantities are integers.

``throttles_and_blocks``: every throttle or block a gateway applied to the account that overlaps
the period (:mod:`billing.services.episodes`; in the CSV as section ``throttles_and_blocks``, on
the PDF as "Throttles and blocks", which says so when there were none). An episode stored by the
sink moves the month's usage mark (migration 0013), so a stored statement is refreshed with it as
with new usage (served as stored for at most ``max_staleness`` meanwhile); one showing an episode
still open is refreshed after ``max_staleness`` even if nothing moved (its gateway may have died:
the episode then counts as ended at its last report).

The API serves statements from a read model (``StatementStore``): each computed statement is
stored with the period's usage mark and the catalog mark read *before* computing it (migration
0008 keeps the marks: every committed usage or catalog change moves them). A stored statement
whose marks are still the current ones is exact and is served as stored. One whose usage moved
since is served for at most ``max_staleness`` seconds after it was computed (default 60; its
``as_of`` says when) while one refresh per statement runs in the background — the sink changes
the open month every few seconds, and recomputing on each request would put a second of work
behind every page view. A catalog change (prices, client rules) or a stale statement older than
that is recomputed before answering; concurrent requests for the same statement wait for one
computation. A statement's PDF (about half a second of WeasyPrint) is rendered once per stored
statement, kept next to it and cleared when it is replaced (migration 0010); concurrent requests
for it wait for one rendering. ``statement()`` computes afresh (the CLI and the demo use it).

Where it lives: the stored statements and marks are the statement repository's
(:mod:`billing.adapters.repositories.statements`); usage comes typed from the usage repository and
is rated by :func:`billing.services.billing_run.preview`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, time
from typing import Any

import orjson
import pandas as pd
from sqlalchemy import Engine

from billing.adapters.spreadsheet import frame_csv
from billing.adapters.uow import units_of_work
from billing.domain.money import format_money
from billing.domain.sources import DEFAULT_SOURCES, format_sources
from billing.domain.usage import UsageRow
from billing.services.billing_run import parse_period, preview
from billing.services.episodes import episodes_between
from billing.services.ports import StatementMarks
from billing.services.usage import account_groups

__all__ = ["StatementStore", "statement", "statement_csv"]

log = logging.getLogger("streamtoll.statements")

QUANTITIES = ("bytes", "records", "requests", "denied_requests")

# what a stored statement's shape is; a stored one of another version is recomputed
DOC_VERSION = 4  # 3: amounts written by format_money; 4: throttles_and_blocks


def statement(
    engine: Engine,
    account: str,
    period: str,
    now: datetime | None = None,
    source_order: Mapping[str, tuple[str, ...]] | None = None,
) -> dict[str, Any]:
    """The statement as of ``now`` (default: the current time): the usage stored so far in the
    period — whole UTC days, so the current day's hours up to now — rated as the catalog is."""
    start_day, end_day = parse_period(period)
    start = datetime.combine(start_day, time(), UTC)
    end = datetime.combine(end_day, time(), UTC)
    as_of = now or datetime.now(UTC)

    # one query gives every breakdown and the daily rows per topic that rating needs
    groups = account_groups(engine, account, start_day, end_day) if as_of > start else {}
    by_source = groups.get("totals", [])
    gaps = []
    for direction in ("produce", "consume"):
        seen = {r["source"]: r for r in by_source if r["direction"] == direction}
        if "proxy" in seen and "broker_metrics" in seen:
            p, b = seen["proxy"], seen["broker_metrics"]
            gaps.append(
                {
                    "direction": direction,
                    "proxy_bytes": p["bytes"],
                    "broker_metrics_bytes": b["bytes"],
                    "difference_bytes": p["bytes"] - b["bytes"],
                    "proxy_records": p["records"],
                    "broker_metrics_records": b["records"],
                }
            )
    rows = [UsageRow.from_dict({**r, "account": account}) for r in groups.get("rating", [])]
    rated = preview(engine, account, period, rows, source_order)
    return {
        "account": account,
        "period": period,
        "from": start.isoformat().replace("+00:00", "Z"),
        "to": min(end, as_of).isoformat().replace("+00:00", "Z"),
        "as_of": as_of.isoformat().replace("+00:00", "Z"),
        "currency": rated.currency,
        "plan": rated.plan,
        "totals": by_source,
        "daily": groups.get("daily", []),
        "by_topic": groups.get("by_topic", []),
        "by_client_id": groups.get("by_client_id", []),
        "by_principal": groups.get("by_principal", []),
        "source_differences": gaps,
        "throttles_and_blocks": episodes_between(engine, account, start, min(end, as_of), as_of)
        if as_of > start
        else [],
        "rated_so_far": {
            "lines": rated.lines,
            "subtotal": format_money(rated.subtotal, rated.currency),
            "tax": format_money(rated.tax, rated.currency),
            "total": format_money(rated.total, rated.currency),
        },
    }


def statement_csv(doc: dict[str, Any]) -> str:
    """One CSV: every breakdown row with a ``section`` column naming where it comes from, then the
    amount rated so far (section ``rated_so_far``: one row per line, then ``subtotal``, ``tax``
    and ``total``) in the last columns ``description``, ``currency`` and ``amount``. No cell is a
    formula (``billing.adapters.spreadsheet``)."""
    frames = []
    for section in ("totals", "daily", "by_topic", "by_client_id", "by_principal", "throttles_and_blocks"):
        rows = doc.get(section) or []
        if rows:
            # object, not int64: rows of other sections leave these cells empty, and pandas would
            # turn an int64 column with empty cells into floats ("1.25e+12")
            frame = pd.DataFrame(rows).astype({q: object for q in QUANTITIES if q in rows[0]})
            frame.insert(0, "section", section)
            frames.append(frame)
    rated = doc.get("rated_so_far")
    if rated:
        currency = doc["currency"]
        amounts = [
            {"source": line.get("source"), "description": line["description"], "amount": line["amount"]}
            for line in rated["lines"]
        ] + [{"description": key, "amount": rated[key]} for key in ("subtotal", "tax", "total")]
        # formatted again as read: a statement stored by an earlier version may hold other text
        frame = pd.DataFrame(
            [{**r, "currency": currency, "amount": format_money(r["amount"], currency)} for r in amounts], dtype=object
        )
        frame.insert(0, "section", "rated_so_far")
        frames.append(frame)
    if frames:
        merged = pd.concat(frames, ignore_index=True)
        money = [c for c in ("description", "currency", "amount") if c in merged.columns]
        keys = [c for c in merged.columns if c not in QUANTITIES and c not in money]
        merged = merged[keys + [q for q in QUANTITIES if q in merged.columns] + money]
        merged.insert(0, "account", doc["account"])
        merged.insert(1, "period", doc["period"])
        return frame_csv(merged)  # client ids, topics, principals: never a formula
    return ""


_OPEN = '"open":true'  # an episode still in force, in a stored statement's body (orjson: no spaces)


@dataclass(frozen=True)
class _Doc:
    body: bytes
    revision: int | None  # of the stored row; None: computed but not stored (a newer one was)
    pdf: bytes | None  # the stored PDF of this revision, when asked for and there is one


class _Locks:
    """A lock per key, kept only while a thread holds or waits for it (statements that were
    asked for once do not each keep a lock for the life of the process)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held: dict[tuple[str, ...], tuple[threading.Lock, list[int]]] = {}

    def __len__(self) -> int:
        return len(self._held)

    @contextlib.contextmanager
    def hold(self, *key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._held.setdefault(key, (threading.Lock(), [0]))
            users[0] += 1
        try:
            with lock:
                yield
        finally:
            with self._guard:
                users[0] -= 1
                if users[0] == 0:
                    del self._held[key]


class StatementStore:
    """Statements served as stored, recomputed when their usage or the catalog changed (module
    docstring). ``get`` returns the statement as JSON bytes, ``pdf`` its PDF: rendered once per
    stored statement and kept with it (migration 0010). ``served`` counts how statements were
    answered, ``pdfs`` how their PDFs were (``stored`` or ``rendered``)."""

    def __init__(
        self, engine: Engine, max_staleness: float = 60.0, source_order: Mapping[str, tuple[str, ...]] | None = None
    ) -> None:
        self.engine = engine
        self._uows = units_of_work(engine)
        self.max_staleness = max_staleness
        self.source_order = dict(source_order or DEFAULT_SOURCES)
        # a statement stored under another source order (another API configuration) is not ours
        self.sources = format_sources(self.source_order)
        self._locks = _Locks()
        self._guard = threading.Lock()
        self._refreshing: set[tuple[str, str]] = set()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="statement-refresh")
        self.served = {"stored": 0, "stale": 0, "computed": 0}
        self.pdfs = {"stored": 0, "rendered": 0}

    def get(self, account: str, period: str) -> bytes:
        return self._document(account, period, with_pdf=False).body

    def pdf(self, account: str, period: str, render: Callable[[dict[str, Any]], bytes]) -> bytes:
        """The PDF of the statement ``get`` would answer: the one stored with it, or ``render``
        of it — once: concurrent requests for the same statement wait for that rendering — then
        stored with the version it was rendered from."""
        doc = self._document(account, period, with_pdf=True)
        if doc.pdf is not None:
            self._count(self.pdfs, "stored")
            return doc.pdf
        with self._locks.hold("pdf", account, period):
            if doc.revision is not None:  # another request may have rendered it while this one waited
                with self._uows() as uow:
                    stored = uow.statements.stored_pdf(account, period, doc.revision)
                if stored is not None:
                    self._count(self.pdfs, "stored")
                    return stored
            pdf = render(orjson.loads(doc.body))
            self._count(self.pdfs, "rendered")
            if doc.revision is not None:
                with self._uows() as uow:
                    uow.statements.keep_pdf(account, period, doc.revision, pdf)
            return pdf

    def _document(self, account: str, period: str, with_pdf: bool) -> _Doc:
        marks = self._read(account, period, with_pdf)
        state = self._state(marks)
        if state == "current":
            self._count(self.served, "stored")
            return self._stored(marks)
        if state == "stale":
            self._count(self.served, "stale")
            self._refresh_later(account, period)
            return self._stored(marks)
        with self._locks.hold("compute", account, period):
            # another request may have computed it while this one waited
            marks = self._read(account, period, with_pdf)
            if self._state(marks) == "current":
                self._count(self.served, "stored")
                return self._stored(marks)
            self._count(self.served, "computed")
            return self._compute(account, period, marks)

    @staticmethod
    def _stored(marks: StatementMarks) -> _Doc:
        assert marks.body is not None  # only a stored statement is served as stored
        return _Doc(bytes(marks.body, "utf-8"), marks.revision, marks.pdf)

    def _count(self, counts: dict[str, int], how: str) -> None:
        with self._guard:  # requests run in a thread pool
            counts[how] += 1

    def _read(self, account: str, period: str, with_pdf: bool = False) -> StatementMarks:
        month = parse_period(period)[0]
        with self._uows() as uow:
            return uow.statements.marks(account, period, month, with_pdf)

    def _state(self, m: StatementMarks) -> str:
        if m.body is None or m.computed_at is None or m.doc_version != DOC_VERSION or m.sources != self.sources:
            return "missing"
        age = (datetime.now(UTC) - m.computed_at).total_seconds()
        if (m.stored_usage, m.stored_catalog) == (m.usage_mark, m.catalog_mark):
            # an open throttle or block is reported again each minute while it lasts (moving the
            # mark); one whose gateway died stops moving it and must still be shown as ended
            return "stale" if _OPEN in m.body and age >= self.max_staleness else "current"
        if m.stored_catalog == m.catalog_mark and age < self.max_staleness:
            return "stale"
        return "missing"

    def _compute(self, account: str, period: str, marks: StatementMarks) -> _Doc:
        """Compute with the marks read before (any change after them moves them: the stored
        statement is then out of date at once, never wrongly current) and store it."""
        now = datetime.now(UTC)
        body = orjson.dumps(statement(self.engine, account, period, now=now, source_order=self.source_order))
        with self._uows() as uow:
            revision = uow.statements.store(
                account, period, marks.usage_mark, marks.catalog_mark, DOC_VERSION, self.sources, now, body.decode()
            )
        return _Doc(body, revision, None)

    def _refresh_later(self, account: str, period: str) -> None:
        with self._guard:
            if (account, period) in self._refreshing:
                return
            self._refreshing.add((account, period))

        def refresh() -> None:
            try:
                with self._locks.hold("compute", account, period):
                    marks = self._read(account, period)
                    if self._state(marks) != "current":
                        self._compute(account, period, marks)
            except Exception:
                log.exception("statement refresh failed", extra={"account": account, "period": period})
            finally:
                with self._guard:
                    self._refreshing.discard((account, period))

        self._pool.submit(refresh)
