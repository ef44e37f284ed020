from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from metering.decoders import proxy
from metering.decoders.common import Invalid
from metering.domain.events import UsageEvent

from .helpers import limits


def good(**over: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "specversion": "1.0",
        "id": "e-1",
        "source": "//proxy/gw-eu-1",
        "type": "io.streamtoll.kafka.produce",
        "time": "2026-11-03T10:15:00.250Z",
        "subject": "User:acme-orders",
        "data": {"client_id": "orders-svc-7", "topic": "orders", "records": 120, "bytes": 48213},
    }
    doc.update(over)
    return doc


def dec(doc: object) -> UsageEvent | str:
    return proxy.decode(json.dumps(doc).encode(), limits())


def reason(raw: bytes) -> str:
    with pytest.raises(Invalid) as exc:
        proxy.decode(raw, limits())
    return exc.value.rejection.reason


def test_samples_decode_to_exact_events(samples: Path) -> None:
    lines = (samples / "proxy-audit.jsonl").read_bytes().splitlines()
    events = [proxy.decode(line, limits()) for line in lines]
    assert all(isinstance(e, UsageEvent) for e in events)
    first, second, dup, third = events
    assert isinstance(first, UsageEvent) and isinstance(third, UsageEvent) and isinstance(second, UsageEvent)
    assert (first.principal, first.client_id, first.virtual_cluster, first.topic, first.direction) == (
        "User:acme-orders",
        "orders-svc-7",
        "prod",
        "orders",
        "produce",
    )
    assert (first.bytes, first.records, first.requests) == (48213, 120, 1)
    assert first.occurred_at.isoformat() == "2026-11-03T10:15:00.250000+00:00"
    assert second.direction == "consume"
    assert dup == second  # a retried record has the same dedup key
    # integers as JSON strings, an offset other than Z, and an empty client id
    assert (third.bytes, third.records, third.client_id) == (1048576, 2000, "")
    assert third.occurred_at.isoformat() == "2026-11-03T09:15:01.003000+00:00"


def test_bad_samples_each_get_a_reason(samples: Path) -> None:
    lines = (samples / "proxy-audit-bad.jsonl").read_bytes().splitlines()
    got = [reason(line) for line in lines if line.strip()]
    assert got == ["negative", "schema", "schema", "not_json", "not_json", "schema", "schema"]


def test_dedup_key_is_source_and_id_unambiguously() -> None:
    a, b = dec(good(id="a-b", source="c")), dec(good(id="a", source="b-c"))
    assert isinstance(a, UsageEvent) and isinstance(b, UsageEvent)
    assert a.event_key != b.event_key
    c = dec(good(data={"topic": "other", "records": 1, "bytes": 1}))
    assert isinstance(c, UsageEvent) and c.event_key == dec(good()).event_key  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"\xff\xfe{}", "not_utf8"),
        (b'{"specversion":"1.0"', "not_json"),
        (b"[" * 5000 + b"]" * 5000, "not_json"),
        (b"", "not_json"),
        (b"null", "schema"),
        (b'{"specversion":"1.0","id":"x","source":"s","time":"2026-11-03T10:15:00Z"}', "schema"),
    ],
)
def test_hostile_bytes_get_reasons(raw: bytes, expected: str) -> None:
    assert reason(raw) == expected


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"time": "2026-11-03T10:15:00"}, "schema"),  # no offset
        ({"time": 1762164900}, "schema"),
        ({"time": "2026-11-10T12:10:00Z"}, "future"),
        ({"time": "2026-09-01T00:00:00Z"}, "too_old"),
        ({"id": None}, "schema"),
        ({"id": 5}, "schema"),
        ({"source": ""}, "schema"),
        ({"specversion": "0.3"}, "schema"),
        ({"data": "x"}, "schema"),
        ({"data": {"topic": "t", "records": 1.5, "bytes": 1}}, "schema"),
        ({"data": {"topic": "t", "records": True, "bytes": 1}}, "schema"),
        ({"data": {"topic": "t", "records": "-3", "bytes": 1}}, "negative"),
        ({"data": {"topic": "t", "records": "++3", "bytes": 1}}, "schema"),
        ({"data": {"topic": "t", "records": "3+", "bytes": 1}}, "schema"),
        ({"data": {"topic": "t", "records": 1, "bytes": 2**40}}, "too_large"),
        ({"data": {"topic": "t", "records": 1, "bytes": "9" * 400}}, "too_large"),
        ({"data": {"topic": "t" * 1_000_000, "records": 1, "bytes": 1}}, "schema"),
        ({"data": {"topic": ["t"], "records": 1, "bytes": 1}}, "schema"),
        ({"data": {"topic": "t", "records": 1, "bytes": 1, "partition": "3"}}, "schema"),
        ({"data": {"topic": "t", "records": 1, "bytes": 1, "partition": 3.5}}, "schema"),
        ({"data": {"topic": "t", "records": 1, "bytes": 1, "partition": True}}, "schema"),
    ],
)
def test_malformed_fields(change: dict[str, object], expected: str) -> None:
    assert reason(json.dumps(good(**change)).encode()) == expected


def test_tolerated_drift() -> None:
    bom = b"\xef\xbb\xbf" + json.dumps(good()).encode()
    assert isinstance(proxy.decode(bom, limits()), UsageEvent)
    ev = dec(good(subject=None, extra_field={"deep": [1, 2]}, data={"topic": "t", "records": 2.0, "bytes": "7"}))
    assert isinstance(ev, UsageEvent)
    assert (ev.principal, ev.records, ev.bytes) == ("unknown", 2, 7)


def test_counts_as_strings_may_have_whitespace_and_a_plus() -> None:
    for text in (" +7 ", "\x1c7", "7\x1f", "\t7\n", "+7"):
        ev = dec(good(data={"topic": "t", "records": text, "bytes": 1}))
        assert isinstance(ev, UsageEvent) and ev.records == 7, text


def test_other_types_are_ignored_not_rejected() -> None:
    assert dec(good(type="io.streamtoll.kafka.metadata")) == "io.streamtoll.kafka.metadata"


def test_fetch_is_consume() -> None:
    ev = dec(good(type="io.streamtoll.kafka.fetch"))
    assert isinstance(ev, UsageEvent) and ev.direction == "consume"


def test_orjson_roundtrip_of_sample_is_stable(samples: Path) -> None:
    line = (samples / "proxy-audit.jsonl").read_bytes().splitlines()[0]
    assert proxy.decode(orjson.dumps(orjson.loads(line)), limits()) == proxy.decode(line, limits())


@pytest.mark.parametrize(
    "doc",
    [
        good(),
        good(time="2026-11-03T10:15:00.999999+05:30"),
        good(time="2026-11-03T10:15:00.001Z"),
        good(subject=""),
        good(data={"topic": "t", "records": 0, "bytes": 0, "client_id": None, "virtual_cluster": "vc"}),
        good(data={"topic": "t", "records": "5", "bytes": 1.0}),
        good(data={"topic": "t", "records": 5, "bytes": 1, "partition": 3.0}),
    ],
)
def test_fast_path_and_checked_path_agree(doc: dict[str, object]) -> None:
    raw = json.dumps(doc).encode()
    assert proxy.decode(raw, limits()) == proxy._decode_checked(orjson.loads(raw), limits())


def test_unhashable_type_field_is_a_schema_error() -> None:
    assert reason(json.dumps(good(type=["io.streamtoll.kafka.produce"])).encode()) == "schema"


def test_a_denied_event_counts_denied_requests_only_never_bytes_records_or_requests() -> None:
    doc = good(data={"topic": "secret", "records": 0, "bytes": 0, "outcome": "denied", "denied_requests": 3})
    ev = dec(doc)
    assert isinstance(ev, UsageEvent)
    assert (ev.topic, ev.bytes, ev.records, ev.requests, ev.denied_requests) == ("secret", 0, 0, 0, 3)
    # whatever a denied event's records and bytes say, they are not metered
    ev = dec(good(data={"topic": "s", "records": 9, "bytes": 900, "outcome": "denied", "denied_requests": 1}))
    assert isinstance(ev, UsageEvent) and (ev.bytes, ev.records, ev.requests, ev.denied_requests) == (0, 0, 0, 1)
    allowed = dec(good(data={"topic": "s", "records": 2, "bytes": 20, "outcome": "allowed"}))
    assert isinstance(allowed, UsageEvent) and (allowed.bytes, allowed.requests, allowed.denied_requests) == (20, 1, 0)
    missing = good(data={"topic": "s", "records": 0, "bytes": 0, "outcome": "denied"})
    assert reason(json.dumps(missing).encode()) == "schema"
    odd = good(data={"topic": "s", "records": 0, "bytes": 0, "outcome": "maybe", "denied_requests": 1})
    assert reason(json.dumps(odd).encode()) == "schema"
