"""The live board: minute partials folded once, sources never added, database and topic never
overlapping, rates over the last complete minute."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from billing.domain.accounts import Attributor, ClientRule
from billing.domain.sources import parse_sources
from billing.services.live import LiveBoard, _Base

NOW = datetime(2026, 11, 27, 10, 30, 20, tzinfo=UTC).timestamp()
MINUTE0 = int(NOW - NOW % 60)  # 10:30:00
LAST = MINUTE0 - 60  # 10:29, the last complete minute


def _attributor() -> Attributor:
    return Attributor([("acme", ClientRule("User:acme-*", None, None, None, None))])


def minute(
    at: int,
    b: int,
    r: int,
    shard: str = "p/0",
    offset: int = 1,
    principal: str = "User:acme-1",
    source: str = "proxy",
    direction: str = "produce",
    topic: str = "orders",
) -> dict[str, Any]:
    return {
        "minute_start": "",
        "minute_epoch_s": at,
        "source": source,
        "principal": principal,
        "client_id": "app",
        "virtual_cluster": "",
        "topic": topic,
        "direction": direction,
        "bytes": b,
        "records": r,
        "requests": 1,
        "denied_requests": 0,
        "shard": shard,
        "offset": offset,
    }


def test_replayed_partials_count_once_and_rates_use_the_last_complete_minute() -> None:
    board = LiveBoard(_attributor())
    assert board.add_minute(minute(LAST, 6000, 120, offset=5))
    assert not board.add_minute(minute(LAST, 6000, 120, offset=5))  # the same batch again
    assert board.add_minute(minute(LAST, 600, 60, shard="p/1", offset=5))  # another shard's batch
    board.add_minute(minute(MINUTE0, 999_999, 9, offset=6))  # the current, incomplete minute
    acme = board.view(NOW)["accounts"][0]
    assert acme["account"] == "acme"
    assert acme["rate"]["produce"] == {"bytes_per_s": 6600 / 60, "messages_per_s": 180 / 60}
    assert acme["hour_to_date"]["produce"] == {"bytes": 6600 + 999_999, "records": 189}
    assert acme["sparkline_bytes_per_minute"][-1] == 6600 and len(acme["sparkline_bytes_per_minute"]) == 60
    assert acme["top_topics"] == [{"topic": "orders", "bytes": 6600 + 999_999}]


def test_sources_are_never_added_and_unmatched_traffic_is_unassigned() -> None:
    board = LiveBoard(_attributor())
    board.add_minute(minute(LAST, 1000, 10, source="proxy"))
    board.add_minute(minute(LAST, 900, 9, source="broker_metrics"))  # the same traffic, seen twice
    board.add_minute(minute(LAST, 50, 5, principal="User:stranger"))
    view = board.view(NOW)
    (acme,) = view["accounts"]
    assert acme["hour_to_date"]["produce"]["bytes"] == 1000
    assert acme["clients"][0]["source"] == "proxy"
    assert view["unassigned"]["hour_to_date"]["produce"]["bytes"] == 50
    # … but where both saw it, the gap is shown (spec: statements and /v1/live show differences)
    assert acme["source_differences"] == [
        {
            "direction": "produce",
            "period": "day_to_date",
            "proxy_bytes": 1000,
            "broker_metrics_bytes": 900,
            "difference_bytes": 100,
        }
    ]
    assert view["unassigned"]["source_differences"] == []


def test_sources_follow_the_billing_order() -> None:
    """BILLING_SOURCES: with the broker metrics first for bytes, the live rows show what the
    invoice will bill (the metrics), still never both added."""
    board = LiveBoard(_attributor(), source_order=parse_sources("bytes=broker_metrics,proxy"))
    board.add_minute(minute(LAST, 1000, 10, source="proxy"))
    board.add_minute(minute(LAST, 900, 9, source="broker_metrics"))
    (acme,) = board.view(NOW)["accounts"]
    assert acme["hour_to_date"]["produce"]["bytes"] == 900
    assert acme["clients"][0]["source"] == "broker_metrics"
    assert acme["sparkline_bytes_per_minute"][-1] == 900


def test_database_hours_and_topic_minutes_never_overlap() -> None:
    board = LiveBoard(_attributor())
    hour0 = NOW - NOW % 3600  # 10:00
    base = _Base(
        base_until=hour0,
        rows=[
            {
                "account": "acme",
                "principal": "User:acme-1",
                "client_id": "app",
                "source": "proxy",
                "direction": "produce",
                "day": "2026-11-27",
                "bytes": 10_000,
                "records": 100,
                "requests": 0,
                "denied_requests": 0,
            },
            {
                "account": "acme",
                "principal": "User:acme-1",
                "client_id": "app",
                "source": "proxy",
                "direction": "produce",
                "day": "2026-11-02",
                "bytes": 7,
                "records": 1,
                "requests": 0,
                "denied_requests": 0,
            },
        ],
        rated={"acme": {"currency": "EUR", "subtotal": "1.00", "total": "1.19"}},
        refreshed_at=NOW,
    )
    board.set_base(base, _attributor())
    board.add_minute(minute(int(hour0) - 120, 555, 5))  # 09:58: already in the database's hours
    board.add_minute(minute(LAST, 40, 4))
    acme = board.view(NOW)["accounts"][0]
    assert acme["day_to_date"]["produce"] == {"bytes": 10_040, "records": 104}
    assert acme["month_to_date"]["produce"] == {"bytes": 10_047, "records": 105}
    assert acme["hour_to_date"]["produce"] == {"bytes": 40, "records": 4}
    assert acme["rated_so_far"]["total"] == "1.19"
    assert base.rows[0]["day"] == date(2026, 11, 27).isoformat()


def test_dlq_counts_each_record_once_and_by_period() -> None:
    board = LiveBoard()
    board.add_dlq(0, 10, "schema", NOW - 30)
    board.add_dlq(0, 10, "schema", NOW - 30)  # read again after a feed restart
    board.add_dlq(0, 11, "not_json", NOW - 2 * 3600)
    board.add_dlq(1, 3, "schema", NOW - 5)
    view = board.view(NOW)
    assert view["dlq"] == {"last_hour": {"schema": 2}, "today": {"not_json": 1, "schema": 2}}
    assert any("DLQ" in w for w in view["warnings"])


def test_lag_warning_names_the_partition_behind() -> None:
    board = LiveBoard()
    board.set_lag(
        [
            {
                "topic": "proxy-audit",
                "partition": 2,
                "committed": 5,
                "end": 900,
                "records_behind": 895,
                "seconds_behind": 312.0,
            },
            {
                "topic": "proxy-audit",
                "partition": 3,
                "committed": 9,
                "end": 9,
                "records_behind": 0,
                "seconds_behind": 0.0,
            },
        ],
        NOW,
    )
    assert board.view(NOW)["warnings"] == ["metering is 312 s behind on proxy-audit/2"]
