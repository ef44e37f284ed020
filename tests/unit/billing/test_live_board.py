"""The live board: minute partials folded once, sources never added, database and topic never
overlapping, rates over the last complete minute."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from billing.domain.accounts import Attributor, ClientRule
from billing.domain.sources import parse_sources
from billing.domain.usage import UsageRow
from billing.services.live_view import LiveBase, LiveBoard

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
    base = LiveBase(
        base_until=hour0,
        rows=[
            UsageRow.from_dict(
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
                    "topic": "orders",
                }
            ),
            UsageRow.from_dict(
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
                    "topic": "orders",
                }
            ),
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
    assert base.rows[0].day == date(2026, 11, 27)


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


def _decision(account: str, state: str, month: str = "2026-11", at_min: int = 10, **kw: Any) -> bytes:
    from metering.entitlements import Decision, encode_decision

    at = datetime(2026, 11, 27, 10, at_min, tzinfo=UTC)
    since = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    return encode_decision(Decision(account, "produce_bytes", month, state, 120, 100, since, at, **kw))  # type: ignore[arg-type]


def _episode(gw: str, account: str, started_min: int, updated_min: int, ended_min: int | None = None, **kw: Any) -> Any:
    from metering.entitlements import Episode

    def t(m: int) -> datetime:
        return datetime(2026, 11, 27, 10, 0, tzinfo=UTC) + timedelta(minutes=m)

    return Episode(
        f"{gw}/{account}/{started_min}",
        gw,
        account,
        kw.pop("kind", "throttle"),
        kw.pop("direction", "produce"),
        kw.pop("cause", "quota"),
        "produce_bytes_per_second 1000 exceeded",
        t(started_min),
        t(updated_min),
        None if ended_min is None else t(ended_min),
        **kw,
    )


def test_enforcement_in_force_merges_a_caps_decision_with_its_episodes_and_a_quotas_over_gateways() -> None:
    from metering.entitlements import decision_key, encode_episode

    board = LiveBoard(_attributor())
    board.add_decision(decision_key("acme", "produce_bytes"), _decision("acme", "block"))
    board.add_decision(decision_key("acme", "produce_bytes"), _decision("acme", "ok", at_min=5))  # older: ignored
    board.add_decision(decision_key("beta", "produce_bytes"), _decision("beta", "block", month="2026-10"))
    board.add_decision(decision_key("gamma", "produce_bytes"), _decision("gamma", "soft"))  # an alert only
    cap = _episode("gw-1", "acme", 11, 29, kind="block", cause="cap", meter="produce_bytes", requests=5)
    quota = [
        _episode("gw-1", "initech", 20, 29, held_seconds=1.25, requests=2, limit=1000),
        _episode("gw-2", "initech", 25, 30, held_seconds=0.5, requests=1, limit=1000),
    ]
    stale = _episode("gw-3", "delta", 1, 3)  # its gateway died: not refreshed for over two minutes
    done = _episode("gw-1", "omega", 5, 9, ended_min=9)
    for e in (cap, *quota, stale, done):
        board.add_episode(e.id.encode(), encode_episode(e))
    view = board.view(NOW)["enforcement"]  # NOW: 10:30:20
    assert [(r["account"], r["kind"], r["cause"]) for r in view["in_force"]] == [
        ("acme", "block", "cap"),
        ("initech", "throttle", "quota"),
    ]
    acme, initech = view["in_force"]
    assert (acme["since"], acme["seconds"], acme["gateways"], acme["requests"], acme["used"]) == (
        "2026-11-27T10:00:00.000Z",
        1820.0,
        ["gw-1"],
        5,
        120,
    )
    assert (initech["since"], initech["seconds"], initech["gateways"]) == (
        "2026-11-27T10:20:00.000Z",
        620.0,
        ["gw-1", "gw-2"],
    )
    assert (initech["held_seconds"], initech["requests"], initech["limit"]) == (1.75, 3, 1000)
    # ended ones, newest first; the stale one ended when it was last heard of
    assert [(e["account"], e["ended"], e["seconds"]) for e in view["ended_last_hour"]] == [
        ("omega", "2026-11-27T10:09:00.000Z", 240.0),
        ("delta", "2026-11-27T10:03:00.000Z", 120.0),
    ]
    # a tombstone deletes; an episode's end replaces its open record; an hour later it is pruned
    board.add_decision(decision_key("acme", "produce_bytes"), None)
    board.add_episode(cap.id.encode(), encode_episode(replace(cap, ended=cap.updated)))
    view = board.view(NOW)["enforcement"]
    assert [r["account"] for r in view["in_force"]] == ["initech"]
    assert "acme" in [e["account"] for e in view["ended_last_hour"]]
    board.prune(NOW + 3000)  # 11:20:20: what ended before 10:20:20 goes
    assert {e.account for e in board.episodes.values()} == {"acme", "initech"}


def test_a_cap_episode_without_its_meter_joins_the_accounts_cap_row_of_that_direction() -> None:
    from metering.entitlements import decision_key, encode_episode

    board = LiveBoard(_attributor())
    board.add_decision(decision_key("acme", "produce_bytes"), _decision("acme", "block"))
    e = _episode("gw-1", "acme", 11, 29, kind="block", cause="cap", requests=3)  # meter not named
    board.add_episode(e.id.encode(), encode_episode(e))
    rows = board.view(NOW)["enforcement"]["in_force"]
    assert [(r["account"], r["meter"], r["gateways"], r["requests"]) for r in rows] == [
        ("acme", "produce_bytes", ["gw-1"], 3)
    ]
