"""Amendments over the fakes: an import that changes a draft and adds an adjustment to a
finalized period, one that lowers a finalized period, idempotency, and every problem of a file
at once. Every amount is worked out by hand in the test."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from billing.domain.accounts import ClientRule
from billing.domain.amendments import Correction, amendment_deltas, parse_corrections
from billing.domain.plans import PlanVersion, Price
from billing.errors import AmendmentError, AmendmentNotFound
from billing.services.amendments import amendment_view, import_usage, list_amendments
from billing.services.billing_run import run_billing
from tests.unit.billing.fakes import GB, FakeUnitOfWork, row

D = Decimal
# 10.00 a month + 0.50 per GB produced
METERED = PlanVersion(
    code="metered",
    name="Metered",
    version=1,
    currency="EUR",
    base_fee=D("10.00"),
    prices=(Price("produce_bytes", "per_unit", "GB", unit_price=D("0.50")),),
)
FROM, TO = datetime(2026, 11, 30, tzinfo=UTC), datetime(2026, 12, 3, tzinfo=UTC)


def clock() -> datetime:
    return datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


def at(day: date, hour: int, gb: int, topic: str = "orders") -> Any:
    r = row("acme", "proxy", day, bytes_=gb * GB, topic=topic)
    return dataclasses.replace(r, hour=r.hour.replace(hour=hour))


def corrected(hour: str, gb: int, topic: str = "orders") -> dict[str, Any]:
    """A row as ``streamtoll usage -o csv`` writes it, grouped by every key and the hour
    (``--group-by source,principal,client_id,virtual_cluster,topic,direction,hour``)."""
    return {
        "source": "proxy",
        "principal": "User:acme",
        "client_id": "app",
        "virtual_cluster": "",
        "topic": topic,
        "direction": "produce",
        "hour": hour,
        "bytes": str(gb * GB),
        "records": "0",
        "requests": "0",
        "denied_requests": "0",
    }


def bill(uows: FakeUnitOfWork, period: str, finalize: bool = False) -> tuple[Decimal, list[tuple[str, Decimal]]]:
    (result,) = run_billing(uows, period, finalize_drafts=finalize, clock=clock, render=False)
    lines = uows.invoices.stored[int(result.invoice_id)].lines  # type: ignore[arg-type]
    return result.total, [(p.line.description, p.line.rounded_amount) for p in lines]


@pytest.fixture
def uows() -> FakeUnitOfWork:
    """acme (no tax): November finalized at 60.00, December a draft at 45.00."""
    uows = FakeUnitOfWork()
    uows.catalog.add_account("acme")
    uows.catalog.subscribe("acme", METERED, date(2026, 1, 1))
    uows.catalog.rules = [("acme", ClientRule(principal="User:acme"))]
    uows.usage.stored += [
        at(date(2026, 11, 30), 10, 100),  # November: 10.00 + 100 × 0.50 = 60.00
        at(date(2026, 12, 1), 5, 20),  # December: 20 + 40 + 10 = 70 GB: 10.00 + 35.00 = 45.00
        at(date(2026, 12, 2), 0, 40),
        at(date(2026, 12, 2), 0, 10, topic="clicks"),
    ]
    assert bill(uows, "2026-11", finalize=True)[0] == D("60.00")
    assert bill(uows, "2026-12")[0] == D("45.00")
    return uows


FILE = [corrected("2026-11-30T10:00:00Z", 120), corrected("2026-12-02T00:00:00Z", 30)]


def test_an_import_changes_the_draft_and_adds_an_adjustment_for_the_finalized_period(uows: FakeUnitOfWork) -> None:
    november_before = list(uows.invoices.stored[1].lines)
    result = import_usage(uows, FILE, FROM, TO, "proxy undercounted", "finance@example.com", clock=clock)
    # the file replaces orders in the range: Nov 30 10h 100 → 120 GB (+20), Dec 1 05h 20 → 0
    # (not in the file), Dec 2 00h 40 → 30 (−10); clicks is not named and stays
    assert sorted((r.hour.isoformat(), r.bytes // GB) for r in uows.usage.stored[4:]) == [
        ("2026-11-30T10:00:00+00:00", 20),
        ("2026-12-01T05:00:00+00:00", -20),
        ("2026-12-02T00:00:00+00:00", -10),
    ]
    doc = result.as_dict()
    assert (doc["id"], doc["changed"], doc["rows"], doc["rerun"]) == (1, True, 3, ["2026-12"])
    moved = [(m["period"], m["amount_before"], m["amount_after"], m["difference"], m["status"]) for m in doc["amounts"]]
    # November: 10.00 + 120 × 0.50 = 70.00; December: 30 + 10 = 40 GB → 10.00 + 20.00 = 30.00
    assert moved == [
        ("2026-11", "60.00", "70.00", "10.00", "finalized"),
        ("2026-12", "45.00", "30.00", "-15.00", "draft"),
    ]
    assert doc["amounts"][0]["usage"] == [
        {
            "source": "proxy",
            "direction": "produce",
            "before": {"bytes": 100 * GB, "records": 0, "requests": 0, "denied_requests": 0},
            "after": {"bytes": 120 * GB, "records": 0, "requests": 0, "denied_requests": 0},
        }
    ]
    # the finalized invoice is untouched; the draft was billed again: 30.00 + the adjustment 10.00
    assert uows.invoices.stored[1].lines == november_before
    december = uows.invoices.stored[2]
    assert december.record.total == D("40.00")
    assert [(p.line.description, p.line.rounded_amount) for p in december.lines][-1] == (
        "Adjustment for 2026-11 (usage after invoice INV-2026-000001)",
        D("10.00"),
    )
    # the audit trail: who, when, why, the range
    (listed,) = list_amendments(uows)
    assert (listed.actor, listed.reason, listed.created_at, listed.range_from, listed.range_to) == (
        "finance@example.com",
        "proxy undercounted",
        clock(),
        FROM,
        TO,
    )
    assert amendment_view(uows, 1)["amounts"][1]["difference"] == "-15.00"


def test_the_same_import_twice_changes_nothing(uows: FakeUnitOfWork) -> None:
    import_usage(uows, FILE, FROM, TO, "proxy undercounted", "finance", clock=clock)
    stored = len(uows.usage.stored)
    again = import_usage(uows, FILE, FROM, TO, "proxy undercounted", "finance", clock=clock)
    assert (again.amendment, again.changed, again.rerun, again.record.amounts) == (None, False, [], [])
    assert len(uows.usage.stored) == stored and len(list_amendments(uows)) == 1


def test_a_dry_run_reports_and_writes_nothing(uows: FakeUnitOfWork) -> None:
    result = import_usage(uows, FILE, FROM, TO, "check", "finance", dry_run=True, clock=clock)
    assert (result.amendment, result.changed, result.rerun) == (None, True, [])
    assert [m.amount_after for m in result.record.amounts] == [D("70.00"), D("30.00")]
    assert len(uows.usage.stored) == 4 and list_amendments(uows) == []
    assert bill(uows, "2026-12")[0] == D("45.00")


def test_a_lower_finalized_period_is_a_negative_adjustment_on_the_next_invoice(uows: FakeUnitOfWork) -> None:
    # November 100 → 80 GB: 10.00 + 40.00 = 50.00, 10.00 less than finalized; December keeps 45.00
    low = [corrected("2026-11-30T10:00:00Z", 80)]
    result = import_usage(uows, low, FROM, datetime(2026, 12, 1, tzinfo=UTC), "double counted", "finance", clock=clock)
    assert [(m.period, m.amount_before, m.amount_after) for m in result.record.amounts] == [
        ("2026-11", D("60.00"), D("50.00"))
    ]
    assert result.rerun == []  # no draft of November to bill again: the next run takes it
    total, lines = bill(uows, "2026-12")
    assert lines[-1] == ("Adjustment for 2026-11 (usage after invoice INV-2026-000001)", D("-10.00"))
    assert total == D("35.00")  # 45.00 − 10.00


def test_a_daily_row_replaces_the_days_hours() -> None:
    key = ("proxy", "User:acme", "app", "", "orders", "produce")
    day = datetime(2026, 12, 1, tzinfo=UTC)
    current = {(key, day.replace(hour=3)): (5, 1, 0, 0), (key, day.replace(hour=9)): (7, 1, 0, 0)}
    # the day becomes 20 bytes, 3 records, in its first hour; hours 3 and 9 become 0
    assert amendment_deltas([Correction(key, day, (20, 3, 0, 0))], current) == {
        (key, day): (20, 3, 0, 0),
        (key, day.replace(hour=3)): (-5, -1, 0, 0),
        (key, day.replace(hour=9)): (-7, -1, 0, 0),
    }


def test_every_problem_of_a_file_is_reported_at_once_and_nothing_is_written(uows: FakeUnitOfWork) -> None:
    bad = [
        {**corrected("2026-12-02T00:30:00Z", 1), "source": "kafka"},
        {**corrected("2026-12-09T00:00:00Z", 1), "bytes": "-3", "colour": "red"},
        corrected("2026-12-02T01:00:00Z", 1),
        corrected("2026-12-02T01:00:00Z", 2),
    ]
    with pytest.raises(AmendmentError) as caught:
        import_usage(uows, bad, FROM, TO, " ", "finance", clock=clock)
    assert caught.value.problems == [
        "a reason is required: say why the usage is corrected",
        "row 1: source 'kafka' is not one of proxy, broker_metrics, audit_log",
        "row 1: hour '2026-12-02T00:30:00Z' is not the start of an hour",
        "row 2: unknown column(s) colour",
        "row 2: bytes '-3' is not a whole number of 0 or more",
        "row 2: hour 2026-12-09T00:00:00Z is outside the range",
        "row 4: the same usage key and hour as row 3",
    ]
    assert len(uows.usage.stored) == 4 and list_amendments(uows) == []


def test_daily_rows_need_whole_days_and_one_granularity() -> None:
    day = {**corrected("", 1), "day": "2026-12-01"}
    with pytest.raises(AmendmentError) as caught:
        parse_corrections([day, corrected("2026-12-01T05:00:00Z", 1)], FROM, TO.replace(hour=6))
    assert caught.value.problems == [
        "the file mixes hourly rows (with an hour) and daily rows (a day only): use one or the other"
    ]
    with pytest.raises(AmendmentError, match="whole days"):
        parse_corrections([day], FROM, TO.replace(hour=6))
    (only,) = parse_corrections([day], FROM, TO)
    assert only.hour == datetime(2026, 12, 1, tzinfo=UTC)


def test_an_unknown_amendment_is_not_found(uows: FakeUnitOfWork) -> None:
    with pytest.raises(AmendmentNotFound, match="there is no amendment 9"):
        amendment_view(uows, 9)


def test_a_remeter_replaces_every_key_of_the_range(uows: FakeUnitOfWork) -> None:
    from billing.services.amendments import remeter_usage

    # the replay metered only orders on Dec 2 00h, 30 GB: every other key and hour of the range
    # becomes 0 — clicks too (an import would have left it, the file not naming it)
    replayed = [at(date(2026, 12, 2), 0, 30)]
    result = remeter_usage(uows, replayed, datetime(2026, 12, 1, tzinfo=UTC), TO, "replay", "ops", clock=clock)
    assert result.record.kind == "remeter" and result.rerun == ["2026-12"]
    # December: 30 GB → 10.00 + 15.00 = 25.00 (was 45.00)
    assert [(m.period, m.amount_before, m.amount_after) for m in result.record.amounts] == [
        ("2026-12", D("45.00"), D("25.00"))
    ]
    assert bill(uows, "2026-12")[0] == D("25.00")
    again = remeter_usage(uows, replayed, datetime(2026, 12, 1, tzinfo=UTC), TO, "replay", "ops", clock=clock)
    assert again.amendment is None and not again.changed


def test_a_usage_file_reads_as_streamtoll_usage_writes_it(tmp_path: Any) -> None:
    import json

    from billing.adapters.spreadsheet import csv_text
    from billing.adapters.usage_files import read_usage_file

    rows = [{**corrected("2026-12-02T00:00:00Z", 1), "principal": "=HYPERLINK(1)"}]
    columns = list(rows[0])
    # CSV as -o csv writes it (a cell that would be a formula gets a ' in front), JSON, JSON Lines
    (tmp_path / "u.csv").write_text(csv_text(columns, [[r[c] for c in columns] for r in rows]))
    (tmp_path / "u.json").write_text(json.dumps(rows, indent=1))
    (tmp_path / "u.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    for name in ("u.csv", "u.json", "u.jsonl"):
        assert read_usage_file(tmp_path / name) == rows, name
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{oops\n[1]\n')
    with pytest.raises(AmendmentError) as caught:
        read_usage_file(tmp_path / "bad.jsonl")
    assert [p.split(" is ")[0].rsplit(" ", 2)[-2:] for p in caught.value.problems] == [["line", "2"], ["line", "3"]]
