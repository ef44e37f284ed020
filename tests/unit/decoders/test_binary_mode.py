"""CloudEvents binary content mode (Kafka protocol binding) for the proxy audit and the Confluent
audit log: attributes in ``ce_*`` headers, the record value is ``data`` alone.

The same event in either mode gives the same usage event (dedup key included) or the same
rejection reason, so a retry in the other mode counts once.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from metering.decoders import confluent_audit, proxy
from metering.decoders.common import Headers, Invalid, Limits
from metering.domain.events import UsageEvent
from metering.fold.shard import Record, ShardConfig, ShardState
from streamtoll.dev.traffic import Traffic

from .helpers import NOW, TS0, binary, limits

Decoders = tuple[Callable[[bytes, Limits], UsageEvent | str], Callable[[bytes, Headers, Limits], UsageEvent | str]]
DECODERS: dict[str, Decoders] = {
    "proxy": (proxy.decode, proxy.decode_binary),
    "audit_log": (confluent_audit.decode, confluent_audit.decode_binary),
}


def proxy_doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "specversion": "1.0",
        "id": "e-1",
        "source": "//proxy/gw-eu-1",
        "type": "io.streamtoll.kafka.produce",
        "time": "2026-11-03T10:15:00.250Z",
        "subject": "User:acme-orders",
        "datacontenttype": "application/json",
        "data": {
            "client_id": "orders-svc-7",
            "virtual_cluster": "prod",
            "topic": "orders",
            "records": 120,
            "bytes": 48213,
        },
    }
    doc.update(over)
    return doc


def audit_doc(samples: Path, **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((samples / "confluent-audit.jsonl").read_text().splitlines()[0])
    doc.update(over)
    return doc


def outcome(fn: Callable[..., UsageEvent | str], *args: Any) -> UsageEvent | str | tuple[str, str]:
    """The event, the ignored type, or ("rejected", reason)."""
    try:
        return fn(*args)
    except Invalid as exc:
        return ("rejected", exc.rejection.reason)


def both(kind: str, doc: dict[str, Any]) -> tuple[object, object]:
    structured, binary_ = DECODERS[kind]
    value, headers = binary(doc)
    return outcome(structured, json.dumps(doc).encode(), limits()), outcome(binary_, value, headers, limits())


def reason_binary(kind: str, value: bytes, headers: list[tuple[str, bytes | None]]) -> str:
    with pytest.raises(Invalid) as exc:
        DECODERS[kind][1](value, headers, limits())
    return exc.value.rejection.reason


# --- the same event in both modes ------------------------------------------------------------


def generated_docs() -> list[tuple[str, dict[str, Any]]]:
    """Every JSON-object record of the demo traffic generator (valid, ignored, bad, late)."""
    tr = Traffic.make(NOW.timestamp(), ("p", "m", "a"), n_proxy=600)
    out: list[tuple[str, dict[str, Any]]] = []
    for topic, _key, value in tr.records:
        if topic == "m" or value is None:
            continue
        try:
            doc = json.loads(value)
        except (ValueError, RecursionError):
            continue
        if isinstance(doc, dict):
            out.append(("proxy" if topic == "p" else "audit_log", doc))
    return out


def test_generated_and_sample_events_are_the_same_in_both_modes(samples: Path) -> None:
    docs = generated_docs()
    docs += [("proxy", json.loads(line)) for line in (samples / "proxy-audit.jsonl").read_text().splitlines()]
    docs += [("audit_log", json.loads(line)) for line in (samples / "confluent-audit.jsonl").read_text().splitlines()]
    kinds: set[str] = set()
    for kind, doc in docs:
        got_structured, got_binary = both(kind, doc)
        assert got_binary == got_structured, doc
        kinds.add(type(got_structured).__name__)
    assert kinds == {"UsageEvent", "str", "tuple"}  # counted, ignored and rejected records all compared


def test_dedup_key_is_the_same_in_both_modes() -> None:
    structured, binary_ = both("proxy", proxy_doc())
    assert isinstance(structured, UsageEvent) and isinstance(binary_, UsageEvent)
    assert structured.event_key == binary_.event_key and structured == binary_


# --- attributes: missing, ill-typed, hostile -------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"id": None}, "schema"),
        ({"id": ""}, "schema"),
        ({"id": "x" * 256}, "schema"),
        ({"id": "e\x01"}, "schema"),
        ({"source": None}, "schema"),
        ({"type": None}, "schema"),
        ({"time": None}, "schema"),
        ({"time": "yesterday"}, "schema"),
        ({"time": "2026-11-03T10:15:00"}, "schema"),  # no offset
        ({"time": "2026-11-10T12:10:00Z"}, "future"),
        ({"time": "2026-09-01T00:00:00Z"}, "too_old"),
        ({"specversion": None}, "schema"),  # the header is there (binary mode), its value is null
        ({"specversion": "0.3"}, "schema"),
        ({"specversion": "2.0"}, "schema"),
        ({"subject": "User:\x00"}, "schema"),
        ({"data": {"topic": "orders", "records": 1, "bytes": -1}}, "negative"),
        ({"data": {"topic": "orders", "records": 1}}, "schema"),
        ({"data": {"topic": "orders", "records": 1, "bytes": 2**40}}, "too_large"),
        ({"data": [1, 2]}, "schema"),
        ({"data": "just a string"}, "schema"),
    ],
)
def test_proxy_attribute_errors_give_the_structured_reason(change: dict[str, Any], expected: str) -> None:
    doc = proxy_doc(**change)
    structured, binary_ = both("proxy", doc)
    assert binary_ == structured == ("rejected", expected)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"id": None}, "schema"),
        ({"source": None}, "schema"),
        ({"time": "yesterday"}, "schema"),
        ({"type": None}, "schema"),
        ({"specversion": "2.0"}, "schema"),
    ],
)
def test_audit_attribute_errors_give_the_structured_reason(
    samples: Path, change: dict[str, Any], expected: str
) -> None:
    structured, binary_ = both("audit_log", audit_doc(samples, **change))
    assert binary_ == structured == ("rejected", expected)


def test_audit_drift_is_tolerated_in_binary_mode(samples: Path) -> None:
    doc = audit_doc(samples, specversion="0.3")
    doc["data"]["methodName"] = "KAFKA.PRODUCE"
    doc["data"]["request"] = {"clientId": "orders-svc-7"}
    structured, binary_ = both("audit_log", doc)
    assert isinstance(binary_, UsageEvent) and binary_ == structured
    assert (binary_.principal, binary_.client_id, binary_.requests) == ("User:acme-orders", "orders-svc-7", 1)


@pytest.mark.parametrize("kind", ["proxy", "audit_log"])
@pytest.mark.parametrize("attr", ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time"])
def test_a_required_header_missing_is_a_schema_error(samples: Path, kind: str, attr: str) -> None:
    value, headers = binary(proxy_doc() if kind == "proxy" else audit_doc(samples))
    headers = [h for h in headers if h[0] != attr]
    if attr == "ce_specversion":  # without it the record is structured mode: its value is no event
        with pytest.raises(Invalid) as exc:
            DECODERS[kind][0](value, limits())
        assert exc.value.rejection.reason == "schema"
    else:
        assert reason_binary(kind, value, headers) == "schema"


@pytest.mark.parametrize("kind", ["proxy", "audit_log"])
@pytest.mark.parametrize("attr", ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time"])
def test_a_header_that_is_not_utf8_is_not_utf8(samples: Path, kind: str, attr: str) -> None:
    value, headers = binary(proxy_doc() if kind == "proxy" else audit_doc(samples))
    headers = [(n, b"\xff\xfe" + (v or b"") if n == attr else v) for n, v in headers]
    assert reason_binary(kind, value, headers) == "not_utf8"


@pytest.mark.parametrize("kind", ["proxy", "audit_log"])
@pytest.mark.parametrize("attr", ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time"])
def test_a_header_read_twice_is_a_schema_error(samples: Path, kind: str, attr: str) -> None:
    value, headers = binary(proxy_doc() if kind == "proxy" else audit_doc(samples))
    again = next(h for h in headers if h[0] == attr)
    assert reason_binary(kind, value, [*headers, again]) == "schema"
    assert reason_binary(kind, value, [(attr, None), *headers]) == "schema"  # even when one is null


def test_unread_headers_may_repeat_be_null_or_any_bytes() -> None:
    value, headers = binary(proxy_doc())
    noise: list[tuple[str, bytes | None]] = [("traceparent", b"\xff"), ("traceparent", None), ("ce_traceid", b"1")]
    got = proxy.decode_binary(value, [*noise, *headers, ("ce_traceid", b"\xfe")], limits())
    assert got == proxy.decode(json.dumps(proxy_doc()).encode(), limits())


def test_null_subject_header_is_an_unknown_principal() -> None:
    value, headers = binary(proxy_doc(subject=None))
    ev = proxy.decode_binary(value, headers, limits())
    assert isinstance(ev, UsageEvent) and ev.principal == "unknown"
    value, headers = binary(proxy_doc())
    ev2 = proxy.decode_binary(value, [h for h in headers if h[0] != "ce_subject"], limits())
    assert isinstance(ev2, UsageEvent) and ev2.principal == "unknown"


def test_content_type_is_informational() -> None:
    value, headers = binary(proxy_doc())
    for ct in (b"text/plain", b"\xff", None):
        hs = [("content-type", ct) if n == "content-type" else (n, v) for n, v in headers]
        assert proxy.decode_binary(value, hs, limits()) == proxy.decode(json.dumps(proxy_doc()).encode(), limits())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b'{"topic": "orders"', "not_json"),
        (b"\xff\xfe{}", "not_utf8"),
        (b"NaN", "not_json"),
        (b"", "schema"),  # no data: a produce event needs it
        (b"null", "schema"),
    ],
)
def test_bad_values(value: bytes, expected: str) -> None:
    _, headers = binary(proxy_doc())
    assert reason_binary("proxy", value, headers) == expected


def test_value_errors_come_before_header_errors() -> None:
    _, headers = binary(proxy_doc(id=None))
    assert reason_binary("proxy", b"{bad", headers) == "not_json"  # as its structured twin


def test_bom_value_and_ignored_types_without_data() -> None:
    value, headers = binary(proxy_doc())
    assert isinstance(proxy.decode_binary(b"\xef\xbb\xbf" + value, headers, limits()), UsageEvent)
    _, headers = binary(proxy_doc(type="io.streamtoll.kafka.metadata"))
    assert proxy.decode_binary(b"", headers, limits()) == "io.streamtoll.kafka.metadata"


# --- mixed with structured records in one batch ----------------------------------------------


def cfg(kind: str) -> ShardConfig:
    return ShardConfig(kind, 3_600_000, 100_000, 35 * 86_400_000, None, 10e9)


def test_fold_mixes_modes_and_counts_an_event_sent_in_both_once() -> None:
    docs = [proxy_doc(id=f"e{i}", data={"topic": "orders", "records": 1, "bytes": 10 + i}) for i in range(6)]
    records: list[Record] = []
    for i, doc in enumerate(docs):
        if i % 2:
            value, headers = binary(doc)
            records.append(Record(len(records), TS0, value, headers))
        else:  # structured, some with the headers a structured-mode producer may send
            hs = [("content-type", b"application/cloudevents+json"), ("ce_id", b"ignored")] if i == 2 else None
            records.append(Record(len(records), TS0, json.dumps(doc).encode(), hs))
    # retries in the other mode: the same events, counted once
    records.append(Record(len(records), TS0, *binary(docs[0])))
    records.append(Record(len(records), TS0, json.dumps(docs[1]).encode()))
    # bad binary records are rejected with their reasons, like structured ones
    value, headers = binary(proxy_doc(id="bad"))
    records.append(Record(len(records), TS0, value, [h for h in headers if h[0] != "ce_id"]))
    records.append(Record(len(records), TS0, b"{", headers))
    records.append(Record(len(records), TS0, None, headers))  # a tombstone, whatever its headers
    state = ShardState("proxy-audit/0", cfg("proxy"))
    out = state.fold(records, limits())
    assert (out.counted, out.duplicates, out.tombstones) == (6, 2, 1)
    assert [r.reason for _, r in out.rejected] == ["schema", "not_json"]
    assert [v for v in state.hours.values()] == [[sum(10 + i for i in range(6)), 6, 6, 0]]


def test_fold_reads_binary_audit_records(samples: Path) -> None:
    doc = audit_doc(samples)
    denied = copy.deepcopy(doc)
    denied["id"] = "other"
    denied["data"]["authorizationInfo"]["granted"] = False
    records = [
        Record(0, TS0, *binary(doc)),
        Record(1, TS0, json.dumps(doc).encode()),  # the same event, structured: a duplicate
        Record(2, TS0, *binary(denied)),
    ]
    state = ShardState("audit/0", cfg("audit_log"))
    out = state.fold(records, limits())
    assert (out.counted, out.duplicates, len(out.rejected)) == (2, 1, 0)
    assert [v for v in state.hours.values()] == [[0, 0, 1, 1]]  # one request allowed, one denied


class BadHeaderName(Record):
    """Like confluent-kafka's Message with a header name that is not UTF-8: the first
    ``headers()`` raises, later ones return a list that must never be touched."""

    calls = 0

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        self.calls += 1
        if self.calls == 1:
            raise SystemError("<method 'headers'> returned a result with an exception set")
        raise AssertionError("headers() called again: the list it returns would crash the worker")

    def key(self) -> bytes | None:
        return b"k"


@pytest.mark.parametrize("kind", ["proxy", "audit_log"])
def test_a_header_name_that_is_not_utf8_is_not_utf8_and_headers_are_never_read_again(samples: Path, kind: str) -> None:
    doc = proxy_doc() if kind == "proxy" else audit_doc(samples)
    bad = BadHeaderName(0, TS0, json.dumps(doc).encode())
    state = ShardState(f"{kind}/0", cfg(kind))
    out = state.fold([bad, Record(1, TS0, json.dumps({**doc, "id": "other"}).encode())], limits())
    assert out.counted == 1 and [r.reason for _, r in out.rejected] == ["not_utf8"]
    rec = out.rejected[0][0]
    assert rec.headers() is None and rec.offset() == 0 and rec.value() == bad.value() and bad.calls == 1
    assert rec.key() == b"k"  # type: ignore[attr-defined]
