"""The entitlement and decision records every gateway follows: grants match as documented, and a
record read back is the record written."""

from datetime import UTC, datetime

from metering.entitlements import (
    Cap,
    Decision,
    Entitlement,
    Grant,
    Limits,
    decode_decision,
    decode_entitlement,
    encode_decision,
    encode_entitlement,
    month_of,
)


def test_grants_match_by_literal_prefix_and_glob() -> None:
    e = Entitlement(
        "acme",
        topics=(
            Grant("orders", "literal", frozenset({"write"})),
            Grant("acme.", "prefix", frozenset({"read", "write"})),
            Grant("shared-*-v[12]", "glob", frozenset({"read"})),
        ),
        groups=(Grant("acme-", "prefix"),),
    )
    assert e.may_topic("orders", "write") and not e.may_topic("orders", "read") and e.may_see("orders")
    assert not e.may_topic("orders2", "write") and not e.may_see("orders2")
    assert e.may_topic("acme.x", "read") and e.may_topic("acme.x", "write")
    assert e.may_topic("shared-eu-v2", "read") and not e.may_topic("shared-eu-v3", "read")
    assert not e.may_topic("Shared-eu-v2", "read")  # case-sensitive, like Kafka names
    assert e.may_group("acme-billing") and not e.may_group("globex")


def test_no_access_section_allows_everything_and_an_empty_one_nothing() -> None:
    assert Entitlement("a").may_topic("any", "write") and Entitlement("a").may_group("g")
    closed = Entitlement("a", topics=(), groups=())
    assert not closed.may_see("any") and not closed.may_group("g")


def test_records_round_trip() -> None:
    e = Entitlement(
        "acme",
        "growth",
        3,
        (Grant("acme.", "prefix", frozenset({"read"})),),
        None,
        Limits(1_000_000, None, 50),
        (Cap("produce_bytes", 10**11, "block", block_fetch=True), Cap("consume_bytes", 5 * 10**11, "throttle", 65536)),
    )
    assert decode_entitlement(encode_entitlement(e)) == e
    at = datetime(2026, 12, 7, 10, 0, 1, 250000, tzinfo=UTC)
    d = Decision("acme", "produce_bytes", month_of(at), "block", 10**11 + 5, 10**11, at, at, None, True)
    assert decode_decision(encode_decision(d)) == d
    assert "monthly cap reached" in d.reason and d.direction == "produce"
    assert month_of(datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == "2026-12"


def test_an_episode_round_trips_and_an_open_one_a_dead_gateway_left_ends_at_its_last_update() -> None:
    from datetime import UTC, datetime, timedelta

    from metering.entitlements import Episode, decode_episode, encode_episode

    t0 = datetime(2026, 12, 7, 13, 0, tzinfo=UTC)
    e = Episode(
        "gw1/acme/throttle/produce/1796648400000",
        "gw1",
        "acme",
        "throttle",
        "produce",
        "quota",
        "produce 3.0 MB/s over the plan's 1.0 MB/s",
        t0,
        t0 + timedelta(seconds=60),
        None,
        41.25,
        87,
        1_000_000,
    )
    assert decode_episode(encode_episode(e)) == e
    assert e.ended_by(t0 + timedelta(seconds=90)) is None  # refreshed a minute ago: still on
    assert e.ended_by(t0 + timedelta(minutes=10)) == t0 + timedelta(seconds=60)  # its gateway went away
    closed = decode_episode(encode_episode(Episode(**{**e.__dict__, "ended": t0 + timedelta(seconds=70)})))
    assert closed.ended_by(t0 + timedelta(minutes=10)) == t0 + timedelta(seconds=70)
