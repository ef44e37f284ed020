"""The monthly caps fold: idempotent month-to-date per account and the decisions it publishes
(plain functions, and the fold agent through Faust's test context; no broker needed)."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import faust
import pytest

from metering.contracts import UsageMinute
from metering.entitlements import Cap, Decision, Entitlement, encode_entitlement
from metering.settings import MeteringSettings
from metering.streams.caps import (
    CapsApp,
    EntitlementsFollower,
    Minute,
    account_of,
    decide,
    faust_credentials,
    fold_items,
    route_items,
)
from tests.tls import make_ca

NOV = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
BASE = int(NOV.timestamp())


def minute(
    shard: str = "proxy-audit/0",
    offset: int = 10,
    b: int = 100,
    *,
    minute: int = 0,
    principal: str = "User:acme/orders-svc",
    client: str = "c1",
    direction: str = "produce",
    source: str = "proxy",
    at: int = BASE,
) -> dict[str, Any]:
    return {
        "minute_start": "",
        "minute_epoch_s": at + 60 * minute,
        "source": source,
        "principal": principal,
        "client_id": client,
        "virtual_cluster": "",
        "topic": "orders",
        "direction": direction,
        "bytes": b,
        "records": 2,
        "requests": 1,
        "denied_requests": 0,
        "shard": shard,
        "offset": offset,
    }


def items(*ms: dict[str, Any]) -> list[list[Any]]:
    routed = route_items(ms)
    return routed.get("acme", [])


def used(state: dict[str, Any] | None, meter: str = "produce_bytes", month: str = "2026-11") -> int:
    assert state is not None
    return int(state["used"].get(month, {}).get(meter, 0))


def test_the_faust_record_reads_exactly_the_published_contract() -> None:
    assert [f.name for f in fields(UsageMinute)] == list(Minute._options.fields)


def test_only_issued_credentials_through_a_proxy_are_capped() -> None:
    assert account_of("User:acme/orders-svc") == "acme"
    assert account_of("User:acme") is None  # not a credential streamtoll issued
    assert account_of("User:/x") is None and account_of("User:acme/") is None
    assert account_of("acme/orders") is None
    routed = route_items(
        [
            minute(),
            minute(principal="User:legacy"),
            minute(source="broker_metrics"),
            minute(principal="User:beta/x", direction="consume"),
            {**minute(), "bytes": 0, "records": 0, "requests": 0, "denied_requests": 3},  # denied only
        ]
    )
    assert sorted(routed) == ["acme", "beta"]
    assert len(routed["acme"]) == 1 and routed["beta"][0][4] == "consume"


def test_a_partial_applied_twice_counts_once() -> None:
    one = fold_items(None, 0, items(minute(b=100)))
    assert used(one) == 100 and used(one, "produce_records") == 2 and used(one, "produce_requests") == 1
    assert fold_items(one, 0, items(minute(b=100))) is None  # the same partial again
    # another key of the same batch (same shard and offset): a different partial, applied
    two = fold_items(one, 0, items(minute(b=5, client="c2")))
    assert used(two) == 105
    assert fold_items(two, 0, items(minute(b=5, client="c2"), minute(b=100))) is None
    # an older batch of the same shard: applied before, skipped
    assert fold_items(two, 0, items(minute(offset=9, b=7, client="c3"))) is None
    # the same shard's partials read from another minutes partition have their own watermark
    three = fold_items(two, 1, items(minute(offset=9, b=7, client="c3")))
    assert used(three) == 112


def test_partials_redelivered_after_a_rebalance_are_skipped() -> None:
    """The route of a minutes partition forwarded batch 10 (keys c1, c2) and the first key of
    batch 11, then lost the partition; its successor starts again from batch 10."""
    first = [minute(offset=10, b=1, client="c1"), minute(offset=10, b=2, client="c2"), minute(offset=11, b=4)]
    again = [*first, minute(offset=11, b=8, client="c2"), minute(offset=12, b=16)]
    state = fold_items(None, 2, items(*first))
    state = fold_items(state, 2, items(*again))
    assert used(state) == 1 + 2 + 4 + 8 + 16
    # and once more, in bundles cut differently
    for cut in (1, 2, 3):
        assert fold_items(state, 2, items(*again[:cut])) is None
        assert fold_items(state, 2, items(*again[cut:])) is None


def test_a_new_month_starts_from_zero_and_two_months_are_kept() -> None:
    state = fold_items(None, 0, items(minute(b=100)))
    dec = fold_items(state, 0, items(minute(offset=11, b=3, at=int(datetime(2026, 12, 1, tzinfo=UTC).timestamp()))))
    assert used(dec, month="2026-11") == 100 and used(dec, month="2026-12") == 3
    jan = fold_items(dec, 0, items(minute(offset=12, b=1, at=int(datetime(2027, 1, 1, tzinfo=UTC).timestamp()))))
    assert jan is not None and sorted(jan["used"]) == ["2026-12", "2027-01"]


def states(decisions: list[Decision]) -> dict[str, str]:
    return {d.meter: d.state for d in decisions}


def test_each_policy_decides_at_the_cap_and_only_on_a_change() -> None:
    caps = (
        Cap("produce_bytes", 150, "block", block_fetch=True),
        Cap("produce_records", 3, "throttle", floor_bytes_per_second=1000),
        Cap("produce_requests", 2, "soft"),
        Cap("consume_bytes", 10, "block"),
    )
    state = fold_items(None, 0, items(minute(b=100)))
    assert state is not None
    out, state = decide("acme", state, caps, "2026-11", NOV)
    assert states(out) == dict.fromkeys(("consume_bytes", "produce_bytes", "produce_records", "produce_requests"), "ok")
    again, state = decide("acme", state, caps, "2026-11", NOV + timedelta(seconds=1))
    assert again == []  # nothing changed
    state2 = fold_items(state, 0, items(minute(offset=11, b=50)))  # 150 bytes, 4 records, 2 requests
    assert state2 is not None
    out, state = decide("acme", state2, caps, "2026-11", NOV + timedelta(seconds=2))
    by = {d.meter: d for d in out}
    assert states(out) == {"produce_bytes": "block", "produce_records": "throttle", "produce_requests": "soft"}
    assert by["produce_bytes"].used == 150 and by["produce_bytes"].included == 150
    assert by["produce_bytes"].block_fetch is True and by["produce_bytes"].since == NOV + timedelta(seconds=2)
    assert by["produce_records"].floor_bytes_per_second == 1000
    reason = by["produce_bytes"].reason
    assert reason == "monthly cap reached: produce_bytes 150 of 150 included in 2026-11 (policy block)"
    # more usage past the cap: no new decision until the refresh interval, which keeps `since`
    state3 = fold_items(state, 0, items(minute(offset=12, b=1)))
    assert state3 is not None
    assert decide("acme", state3, caps, "2026-11", NOV + timedelta(seconds=3))[0] == []
    later, _ = decide("acme", state3, caps, "2026-11", NOV + timedelta(seconds=63))
    assert {d.meter: (d.used, d.since) for d in later}["produce_bytes"] == (151, NOV + timedelta(seconds=2))


def test_a_new_month_lifts_the_cap_and_caps_changes_are_decided() -> None:
    caps = (Cap("produce_bytes", 100, "block"),)
    state = fold_items(None, 0, items(minute(b=100)))
    assert state is not None
    out, state = decide("acme", state, caps, "2026-11", NOV)
    assert states(out) == {"produce_bytes": "block"}
    dec1 = datetime(2026, 12, 1, 0, 0, 5, tzinfo=UTC)
    out, _ = decide("acme", state, caps, "2026-12", dec1)
    assert [(d.state, d.month, d.used, d.since) for d in out] == [("ok", "2026-12", 0, dec1)]
    # a raised cap reopens November
    out, state = decide("acme", state, (Cap("produce_bytes", 1000, "block"),), "2026-11", NOV)
    assert [(d.state, d.included) for d in out] == [("ok", 1000)]
    # a lowered one with another policy closes it again
    out, state = decide("acme", state, (Cap("produce_bytes", 50, "throttle", 10),), "2026-11", NOV)
    assert [(d.state, d.included, d.floor_bytes_per_second) for d in out] == [("throttle", 50, 10)]
    # a removed cap: ok, nothing included; then nothing more
    out, state = decide("acme", state, (), "2026-11", NOV)
    assert [(d.state, d.included) for d in out] == [("ok", 0)]
    assert decide("acme", state, (), "2026-11", NOV)[0] == []


def test_the_fold_agent_decides_once_per_change_through_redeliveries() -> None:
    follower = EntitlementsFollower({}, "entitlements")
    follower.ready.set()  # as after reading the topic to its end
    caps = CapsApp(
        MeteringSettings.from_env({"STREAMTOLL_KAFKA_BOOTSTRAP": "127.0.0.1:1", "STREAMTOLL_TOPIC_PARTITIONS": "2"}),
        clock=lambda: NOV,
        follower=follower,
    )
    follower.apply(
        b"acme", encode_entitlement(Entitlement("acme", caps=(Cap("produce_bytes", 250, "block", block_fetch=False),)))
    )
    published: list[Decision] = []

    async def publish(d: Decision) -> None:
        published.append(d)

    caps.publish = publish
    caps.app.finalize()
    caps.app.conf.store = "memory://"
    caps.app.flow_control.resume()

    async def run() -> None:
        async with caps.fold.test_context() as agent:
            batch = items(minute(offset=10, b=100), minute(offset=10, b=100, client="c2"))
            await agent.put({"p": 0, "items": batch}, key="acme")
            await agent.put({"p": 0, "items": batch}, key="acme")  # redelivered
            await agent.put({"p": 0, "items": items(minute(offset=11, b=49))}, key="acme")
            await agent.put({"p": 1, "items": items(minute(offset=3, b=1))}, key="acme")  # crosses
            await agent.put({"p": 1, "items": items(minute(offset=3, b=1))}, key="acme")
            await agent.put({"tick": 1}, key="acme")  # nothing changed
            # an account with no entitlements record: folded, never decided
            await agent.put({"p": 0, "items": items(minute(offset=12, b=10**9))}, key="zeta")
            assert caps.table["zeta"]["used"]["2026-11"]["produce_bytes"] == 10**9
            assert caps.table["acme"]["used"]["2026-11"]["produce_bytes"] == 250

    asyncio.run(run())
    assert [(d.state, d.used) for d in published] == [("ok", 200), ("block", 250)]
    assert published[-1].reason == "monthly cap reached: produce_bytes 250 of 250 included in 2026-11 (policy block)"


def test_the_follower_reports_accounts_whose_caps_changed() -> None:
    follower = EntitlementsFollower({}, "entitlements")
    changed: list[str] = []
    follower.on_change = changed.append
    capped = Entitlement("acme", caps=(Cap("produce_bytes", 250, "block"),))
    follower.apply(b"acme", encode_entitlement(capped))
    follower.apply(b"acme", encode_entitlement(capped))  # republished: no change
    follower.apply(b"acme", encode_entitlement(Entitlement("acme", plan="gold", caps=capped.caps)))  # not a cap
    follower.apply(b"acme", encode_entitlement(Entitlement("acme")))  # caps removed
    follower.apply(b"beta", b"not json")  # skipped
    follower.apply(b"acme", None)  # the account's record deleted
    assert changed == ["acme", "acme", "acme"]
    assert follower.entitlement("acme") is None


def test_the_kafka_security_settings_reach_faust(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    tls = faust_credentials({"security.protocol": "SSL", "ssl.ca.location": str(ca.ca)})
    assert isinstance(tls, faust.SSLCredentials) and tls.context.verify_mode == ssl.CERT_REQUIRED
    scram = faust_credentials(
        {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-256", "ssl.ca.location": str(ca.ca)}
    )
    assert scram.protocol.value == "SASL_SSL" and scram.ssl_context is not None

    assert faust_credentials({}) is None
    sasl = faust_credentials(
        {
            "security.protocol": "sasl_plaintext",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "u",
            "sasl.password": "p",
        }
    )
    assert isinstance(sasl, faust.SASLCredentials)
    assert (sasl.protocol.value, sasl.mechanism.value, sasl.username, sasl.password) == (
        "SASL_PLAINTEXT",
        "SCRAM-SHA-512",
        "u",
        "p",
    )
    with pytest.raises(ValueError, match="GSSAPI"):
        faust_credentials({"security.protocol": "SASL_SSL", "sasl.mechanism": "GSSAPI"})
    with pytest.raises(ValueError, match=r"ssl\.endpoint\.identification\.algorithm"):
        faust_credentials({"security.protocol": "SSL", "ssl.endpoint.identification.algorithm": "none"})
