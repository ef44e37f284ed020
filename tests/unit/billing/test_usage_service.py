"""Usage reads as use cases over an in-memory usage repository (tests/unit/billing/fakes.py)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from billing.services.usage import read_usage, usage_report, usage_rows
from tests.unit.billing.fakes import GB, FakeUnitOfWork, row

NOV, DEC = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture
def uows() -> FakeUnitOfWork:
    uows = FakeUnitOfWork()
    uows.usage.stored += [
        row("acme", "proxy", date(2026, 11, 3), bytes_=4 * GB, records=10),
        row("acme", "proxy", date(2026, 11, 4), bytes_=1 * GB, records=5),
        row("acme", "broker_metrics", date(2026, 11, 4), bytes_=6 * GB),
        row("beta", "proxy", date(2026, 11, 4), bytes_=GB),
        row("acme", "proxy", date(2026, 12, 1), bytes_=GB),  # after the interval
    ]
    return uows


def test_rows_are_typed_and_their_json_spells_days_and_hours(uows: FakeUnitOfWork) -> None:
    typed = read_usage(uows, NOV, DEC, account="acme")
    assert [(r.source, r.day, r.bytes) for r in typed] == [
        ("proxy", date(2026, 11, 3), 4 * GB),
        ("proxy", date(2026, 11, 4), GB),
        ("broker_metrics", date(2026, 11, 4), 6 * GB),
    ]
    first = usage_rows(uows, NOV, DEC, account="acme")[0]
    assert (first["day"], first["hour"], first["bytes"]) == ("2026-11-03", "2026-11-03T00:00:00Z", 4 * GB)


def test_the_report_never_adds_sources_together(uows: FakeUnitOfWork) -> None:
    report = usage_report(uows, NOV, DEC)
    assert [(r["source"], r["account"], r["direction"], r["bytes"], r["records"]) for r in report] == [
        ("broker_metrics", "acme", "produce", 6 * GB, 0),
        ("proxy", "acme", "produce", 5 * GB, 15),
        ("proxy", "beta", "produce", GB, 0),
    ]
    with pytest.raises(ValueError, match="cannot group by"):
        usage_report(uows, NOV, DEC, group_by=("colour",))
    with pytest.raises(ValueError, match="after its start"):
        usage_report(uows, DEC, NOV)
