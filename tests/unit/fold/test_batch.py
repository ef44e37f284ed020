"""The batch scan (``metering.fold.batch``, what ``ShardState.fold`` runs for proxy audit and
audit log shards) against the per-record reference (``ShardState.scan``): fuzzed batches — valid
events in both content modes, retries within and across batches, hostile values and headers,
tombstones, unreadable headers, event times a millisecond either side of the lateness and future
limits of a stream time that moves with the Kafka timestamps — folded by two fresh shards, one
each way, must give the same windows, minutes (same keys in the same order), DLQ records (same
record, reason and sentence, in order), counts and changelog, batch after batch.

``make test`` runs 300 examples per input kind (STREAMTOLL_FUZZ_EXAMPLES × 2); ``-m soak`` runs
thousands.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from unittest import mock

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metering.decoders import confluent_audit, proxy
from metering.decoders.common import Limits
from metering.fold import batch
from metering.fold.shard import BatchResult, InRecord, Record, ShardState
from tests.unit.decoders.helpers import TS0, binary
from tests.unit.fold.test_fuzz import (
    EXAMPLES,
    HOSTILE,
    JSON_ANY,
    ODD_TEXT,
    audit_doc,
    binary_hostile,
    cfg,
    fuzz,
    mutated,
    proxy_doc,
    wrong_typed,
)

Headers = list[tuple[str, bytes | None]]
LATENESS_MS = 3_600_000  # an hour: the boundaries are easy to reach
FUTURE_MS = 300_000
T_MS = TS0 - 1_800_000  # the event time most generated events carry (half an hour before TS0)
MAX_BYTES = 10**9

# Kafka timestamps that put T_MS exactly on, or a millisecond either side of, the lateness and
# the future limit, and a few ordinary ones; the shard's stream time is their running maximum
TIMESTAMPS = st.one_of(
    st.sampled_from([T_MS + LATENESS_MS + d for d in (-1, 0, 1)] + [T_MS - FUTURE_MS + d for d in (-1, 0, 1)]),
    st.integers(T_MS - FUTURE_MS - 5, T_MS + LATENESS_MS + 5),
    st.just(TS0),
)


def rfc3339(ms: int, shape: int = 0) -> str:
    dt = datetime.fromtimestamp(ms / 1000, UTC)
    if shape == 0:  # the gateway's shape (the fast path's)
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    if shape == 1:
        return dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    if shape == 2:
        return dt.isoformat()  # +00:00, microseconds
    if shape == 3:
        return dt.strftime("%Y-%m-%d %H:%M:%S.") + f"{ms % 1000:03d}Z"  # a space: still ISO to Python
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}".replace("1", "\u0661") + "Z"  # Arabic-Indic 1


EVENT_TIMES = st.one_of(
    st.just(T_MS + 5_000),  # a busy minute: events add up there
    st.sampled_from(
        [T_MS + d for d in (-1, 0, 1)]
        + [T_MS - LATENESS_MS + d for d in (-1, 0, 1)]
        + [T_MS + LATENESS_MS + FUTURE_MS + d for d in (-1, 0, 1)]
    ),
    st.integers(T_MS - 2 * LATENESS_MS, T_MS + 2 * LATENESS_MS),
)
TIME_SHAPES = st.sampled_from([0, 0, 0, 0, 0, 1, 2, 3, 4])
IDS = st.sampled_from([f"id-{i}" for i in range(12)])  # a small pool: retries within and across batches
NAMES = st.one_of(st.sampled_from(["User:a", "User:b", "", "x" * 250]), ODD_TEXT)
COUNTS = st.one_of(
    st.integers(0, 1000), st.sampled_from([2**31, 2**31 + 1, MAX_BYTES, MAX_BYTES + 1, 2**63, 2**64, -1, 10**30])
)


@st.composite
def proxy_event(draw: st.DrawFn) -> dict[str, Any]:
    """A proxy audit event as the gateway writes it, then none, one or two changes among those
    each path must read alike: drifts the decoder accepts, edge values, faults."""
    data: dict[str, Any] = {
        "client_id": draw(st.sampled_from(["c1", "c2"])),
        "topic": draw(st.sampled_from(["orders", "payments"])),
        "records": draw(st.integers(0, 1000)),
        "bytes": draw(st.integers(0, 10**6)),
    }
    for name, value in (
        ("client_ip", "10.0.0.1"),
        ("virtual_cluster", "prod"),
        ("partition", 3),
        ("api_version", 9),
        ("acks", 0),
        ("acknowledged", False),
    ):
        if draw(st.booleans()):
            data[name] = value
    doc: dict[str, Any] = {
        "specversion": "1.0",
        "id": draw(IDS),
        "source": draw(st.sampled_from(["//gw-1", "//gw-2"])),
        "type": draw(st.sampled_from(["io.streamtoll.kafka.produce", "io.streamtoll.kafka.fetch"])),
        "time": rfc3339(draw(EVENT_TIMES)),
        "subject": draw(st.sampled_from(["User:a", "User:b"])),
        "data": data,
    }
    if draw(st.booleans()):
        doc["datacontenttype"] = "application/json"
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 1, 2]))):
        change = draw(st.integers(0, 13))
        if change == 0:
            data["outcome"] = draw(st.sampled_from(["denied", "allowed", None, "maybe"]))
            if draw(st.booleans()):
                data["denied_requests"] = draw(st.sampled_from([1, 4, -1]))
        elif change == 1:
            data[draw(st.sampled_from(["records", "bytes"]))] = draw(COUNTS)
        elif change == 2:
            doc["subject"] = draw(NAMES)
        elif change == 3:
            data["topic"] = draw(NAMES)
        elif change == 4:
            data[draw(st.sampled_from(["client_id", "virtual_cluster"]))] = draw(st.one_of(NAMES, st.none()))
        elif change == 5:
            data["partition"] = draw(st.sampled_from([3.0, -1, 2**63, 2**64, "3", None]))
        elif change == 6:
            doc["time"] = rfc3339(draw(EVENT_TIMES), draw(st.integers(1, 4)))
        elif change == 7:
            doc["specversion"] = draw(st.sampled_from(["0.3", "1.0 ", None]))
        elif change == 8:
            doc["type"] = draw(st.sampled_from(["io.other.type", None, 7]))
        elif change == 9:
            where = data if draw(st.booleans()) else doc
            del where[draw(st.sampled_from(sorted(where)))]
        elif change == 10:
            where = data if draw(st.booleans()) else doc
            where[draw(st.sampled_from(["extra", "region", "error_code"]))] = draw(JSON_ANY)
        elif change == 11:
            name, value = draw(st.sampled_from([("client_ip", 5), ("api_version", 2**70), ("acknowledged", 0)]))
            data[name] = value
        elif change == 12:
            doc[draw(st.sampled_from(["id", "source"]))] = draw(
                st.sampled_from(['q"uote', "back\\slash", "i" * 200, "é", "\u2028"])
            )
        else:
            doc["datacontenttype"] = draw(st.sampled_from([None, 5, "text/plain"]))
    return doc


@st.composite
def audit_event(draw: st.DrawFn) -> dict[str, Any]:
    """A Confluent audit log event (authorization of a produce or a fetch), then none, one or two
    changes: other methods and types, the drifts the decoder tolerates, values it must refuse."""
    doc = audit_doc(0, draw(st.booleans()))
    doc["id"] = draw(IDS)
    doc["time"] = rfc3339(draw(EVENT_TIMES), draw(st.sampled_from([0, 0, 0, 1, 2])))
    data = doc["data"]
    data["methodName"] = draw(st.sampled_from(["kafka.Produce", "kafka.FetchConsumer", "kafka.Fetch"]))
    authz = data["authorizationInfo"]
    authz["resourceName"] = draw(st.sampled_from(["orders", "payments"]))
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 1, 2]))):
        change = draw(st.integers(0, 10))
        if change == 0:
            data["methodName"] = draw(st.sampled_from(["kafka.Metadata", "KAFKA.PRODUCE", "kafka.FetchFollower", 5]))
        elif change == 1:
            doc["type"] = draw(st.sampled_from(["io.confluent.kafka.server/authentication", 5, None]))
        elif change == 2:
            doc["specversion"] = draw(st.sampled_from(["0.3", "2.0", None]))
        elif change == 3:
            data["authenticationInfo"] = draw(
                st.one_of(
                    st.builds(lambda p: {"principal": p}, st.one_of(NAMES, st.none())), st.sampled_from([None, 3])
                )
            )
        elif change == 4:
            authz["resourceType"] = "Cluster"
            authz["resourceName"] = draw(
                st.sampled_from(["crn://confluent.cloud/kafka=lkc-1/topic=orders", "crn://x/kafka=lkc-1", "lkc-1"])
            )
        elif change == 5:
            authz["resourceName"] = draw(NAMES)
        elif change == 6:
            authz["granted"] = draw(st.sampled_from([1, "true", None]))
        elif change == 7:
            data["request"] = draw(
                st.sampled_from(
                    [{"clientId": "c2"}, {"client_id": None, "clientId": "x"}, {}, None, 3, {"client_id": 4}]
                )
            )
        elif change == 8:
            where = data if draw(st.booleans()) else doc
            del where[draw(st.sampled_from(sorted(where)))]
        elif change == 9:
            doc[draw(st.sampled_from(["id", "source"]))] = draw(st.one_of(NAMES, st.just(5)))
        else:
            doc["time"] = draw(st.sampled_from(["yesterday", "2026-11-10T11:30:00", 5, "2026-11-10T11:30:00+25:00"]))
    return doc


class UnreadableHeaders(Record):
    """A record whose ``headers()`` raises, as confluent-kafka does for a header name that is not
    UTF-8 (it must be called once at most: a second call crashes the interpreter)."""

    calls = 0

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        self.calls += 1
        assert self.calls == 1, "headers() called twice"
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    def key(self) -> bytes | None:
        return None


Item = tuple[str, bytes | None, Headers | None]


@st.composite
def item(draw: st.DrawFn, kind: str) -> Item:
    """One record's value and headers (and whether its headers are unreadable)."""
    doc = draw(proxy_event() if kind == "proxy" else audit_event())
    raw = json.dumps(doc, ensure_ascii=draw(st.booleans())).encode()
    base = proxy_doc(1, 100, 2) if kind == "proxy" else audit_doc(1)
    choice = draw(st.integers(0, 11))
    if choice <= 4:
        return ("ok", raw, None)
    if choice == 5:
        return ("ok", raw, [("traceparent", b"00-1"), ("content-type", b"application/json")])  # not binary mode
    if choice == 6:
        value, headers = binary(doc)
        return ("ok", value, headers)
    if choice == 7:
        return ("ok", None, None)  # tombstone
    if choice == 8:
        return ("unreadable", raw, None)
    if choice == 9:
        value2, headers2 = draw(binary_hostile(base))
        return ("ok", value2, headers2)
    if choice == 10:
        return ("ok", draw(st.one_of(mutated(raw), wrong_typed(doc) if "data" in doc else HOSTILE)), None)
    return ("ok", draw(HOSTILE), None)


def records(items: list[tuple[Item, int]], start: int) -> list[InRecord]:
    out: list[InRecord] = []
    for i, ((how, value, headers), ts) in enumerate(items):
        cls = UnreadableHeaders if how == "unreadable" else Record
        out.append(cls(start + i, ts, value, headers))
    return out


@contextmanager
def per_record_scan() -> Iterator[None]:
    """``ShardState.fold`` with the reference scan in place of the batch scan."""
    with mock.patch.object(batch, "scan", lambda state, recs, limits, out: state.scan(recs, limits, out)):
        yield


def outcome(state: ShardState, out: BatchResult) -> dict[str, Any]:
    return {
        "rejected": [(type(r).__name__, r.offset(), rej.reason, rej.detail) for r, rej in out.rejected],
        "minutes": list(out.minutes.items()),  # in insertion order
        "hours": list(out.hours.items()),
        "changelog": out.changelog,
        "counts": (out.next_offset, out.counted, out.duplicates, out.tombstones, out.ignored),
        "state": (list(state.hours.items()), list(state.dedup._keys.items()), state.stream_ms, state.next_offset),
    }


def both_ways(kind: str, batches: list[list[tuple[Item, int]]], max_bytes: int = MAX_BYTES) -> None:
    fast, reference = ShardState(f"{kind}/0", cfg(kind)), ShardState(f"{kind}/0", cfg(kind))
    fast.config.max_lateness_ms = reference.config.max_lateness_ms = LATENESS_MS
    limits = Limits(0, LATENESS_MS, FUTURE_MS, max_bytes)  # its clock is not read
    offset = 0
    for n, items in enumerate(batches):
        got = fast.fold(records(items, offset), limits)
        with per_record_scan():
            want = reference.fold(records(items, offset), limits)
        assert outcome(fast, got) == outcome(reference, want), f"batch {n}"
        offset += len(items)


@settings(fuzz, max_examples=2 * EXAMPLES)
@given(st.data())
@pytest.mark.parametrize("kind", ["proxy", "audit_log"])
def test_batch_scan_folds_exactly_as_the_per_record_scan(kind: str, data: st.DataObject) -> None:
    batches = data.draw(
        st.lists(st.lists(st.tuples(item(kind), TIMESTAMPS), max_size=25), min_size=1, max_size=3), label="batches"
    )
    max_bytes = data.draw(st.sampled_from([MAX_BYTES, 2**31, 2**63]), label="max_bytes")
    both_ways(kind, batches, max_bytes)


# Values where msgspec and orjson could read the same bytes differently, or where a check of the
# fast path is narrower than the decoder's: each must fold exactly as the reference folds it.
GOOD = json.dumps(proxy_doc(1, 100, 2)).encode()[:-2]  # without the closing braces of data and the event
EDGES = [
    GOOD + b'}, "extra": "\xff"}',  # an unknown field with bytes that are not UTF-8 (msgspec skips it unread)
    GOOD + b'}, "extra": 1e999}',  # an unknown field orjson reads as infinity (refused)
    GOOD + b'}, "extra": 1}',  # a harmless unknown field
    GOOD + b', "partition": 99999999999999999999}}',  # orjson: a float
    GOOD + b', "partition": ' + b"9" * 400 + b"}}",  # orjson: infinity
    GOOD + b', "client_ip": "\\ud800"}}',  # a lone surrogate
    GOOD + b', "client_id": "a", "client_id": "b"}}',  # a repeated key: the last counts
    GOOD + b'}, "data": {"topic": "t", "records": 1, "bytes": 1}}',  # a repeated object
    GOOD + b'}, "data": 5}',
    b"\xef\xbb\xbf" + GOOD + b"}}",  # a byte order mark
    GOOD + b"}} ",
    GOOD + b"}}x",
    GOOD.replace(b'"records": 2', b'"records": 2.0') + b"}}",
    GOOD.replace(b'"records": 2', b'"records": true') + b"}}",
    GOOD.replace(b'"records": 2', b'"records": "2"') + b"}}",
    GOOD.replace(b'"specversion"', b'"\\u0073pecversion"') + b"}}",  # an escaped key
    GOOD.replace(b"11:30:00Z", b"11:30:00.\xd9\xa1\xd9\xa1\xd9\xa1Z") + b"}}",  # Arabic-Indic digits (ms)
    GOOD.replace(b"11:30:00Z", b"11:30:00.\xc2\xb2\xc2\xb2\xc2\xb2Z") + b"}}",  # superscript two (isdigit, not int)
    GOOD.replace(b"11:30:00Z", b"11:30:00.000Z") + b"}}",
    GOOD.replace(b"2026-11-10T11:30:00Z", b"2026-11-10 11:30:00.000Z") + b"}}",
    GOOD.replace(b"2026-11-10T11:30:00Z", b"0000-11-10T11:30:00.000Z") + b"}}",
    GOOD.replace(b'"User:fuzz"', b'"User:\\u0000"') + b"}}",
    GOOD.replace(b'"User:fuzz"', b'"User:\\u2028"') + b"}}",
    GOOD.replace(b'"User:fuzz"', b'"User:\\"q\\\\"') + b"}}",  # quote and backslash: escaped in the key's JSON
    GOOD.replace(b'"valid-1"', b'"' + b"i" * 250 + b'"') + b"}}",  # every identity fine, together too long
]


@pytest.mark.parametrize("value", EDGES, ids=range(len(EDGES)))
def test_values_the_two_json_readers_could_disagree_on_fold_alike(value: bytes) -> None:
    ts = int(datetime(2026, 11, 10, 11, 40, tzinfo=UTC).timestamp() * 1000)
    items = [(("ok", value, None), ts), (("ok", value, None), ts)]  # the second is a duplicate if counted
    both_ways("proxy", [items])


def _gateway_event(i: int, time_ms: int) -> bytes:
    doc = {
        "specversion": "1.0",
        "id": f"ev-{i}",
        "source": "//proxy/gw-1",
        "type": "io.streamtoll.kafka.produce" if i % 3 else "io.streamtoll.kafka.fetch",
        "time": rfc3339(time_ms),
        "subject": f"User:{i % 4}",
        "datacontenttype": "application/json",
        "data": {
            "client_id": "app",
            "client_ip": "10.1.2.3",
            "virtual_cluster": "prod",
            "topic": f"t{i % 5}",
            "partition": i % 3,
            "records": i,
            "bytes": 100 * i,
            "api_version": 9,
        },
    }
    return json.dumps(doc).encode()


def test_well_formed_records_never_reach_the_per_record_decoders() -> None:
    """The property above compares something: what the gateway writes (and well-formed audit log
    records) is metered by the fast path, the decoders are called for nothing."""
    proxy_values = [_gateway_event(i, T_MS + i) for i in range(200)]
    audit_values = [json.dumps({**audit_doc(i), "time": rfc3339(T_MS + i)}).encode() for i in range(200)]
    limits = Limits(0, LATENESS_MS, FUTURE_MS, MAX_BYTES)
    with (
        mock.patch.object(proxy, "decode", side_effect=AssertionError("proxy.decode")),
        mock.patch.object(confluent_audit, "decode", side_effect=AssertionError("confluent_audit.decode")),
    ):
        for kind, values in (("proxy", proxy_values), ("audit_log", audit_values)):
            state = ShardState(f"{kind}/0", cfg(kind))
            out = state.fold([Record(i, TS0, v) for i, v in enumerate(values + values[:10])], limits)
            assert (out.counted, out.duplicates, out.rejected) == (200, 10, [])
    p = ShardState("proxy/0", cfg("proxy"))
    totals = p.fold([Record(i, TS0, v) for i, v in enumerate(proxy_values)], limits).minutes
    assert [sum(m[i] for m in totals.values()) for i in range(4)] == [100 * sum(range(200)), sum(range(200)), 200, 0]


def test_a_batch_that_gives_up_on_the_fast_path_folds_alike() -> None:
    """A proxy of another make (a field of its own in every event): after 64 records the batch
    stops trying the fast path; the rest, well-formed or not, still fold as the reference."""
    odd = [json.dumps({**json.loads(_gateway_event(i, T_MS)), "region": "eu"}).encode() for i in range(80)]
    good = [_gateway_event(i, T_MS + 5) for i in range(70, 120)]
    items: list[tuple[Item, int]] = [(("ok", v, None), TS0) for v in [*odd, *good, b"{", None]]
    both_ways("proxy", [items, items[60:]])


@pytest.mark.soak
def test_long_batch_fuzz_run() -> None:
    """The property above with thousands of examples per input kind (``pytest -m soak``)."""
    import subprocess
    import sys

    examples = os.environ.get("STREAMTOLL_SOAK_EXAMPLES", "5000")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "not soak", __file__, "-p", "no:cacheprovider"],
        env={**os.environ, "STREAMTOLL_FUZZ_EXAMPLES": examples},
        timeout=6 * 3600,
    )
    assert done.returncode == 0


def test_printable_text_is_written_by_orjson_as_it_is() -> None:
    """The fast path builds a dedup key's JSON with an f-string where the id and source hold no
    quote or backslash: every other printable character must be one orjson writes unescaped
    (the key is stored in the changelog; it must stay byte-identical)."""
    escaped = [
        hex(i)
        for i in range(0x110000)
        if (c := chr(i)).isprintable() and c not in '"\\' and orjson.dumps(c) != f'"{c}"'.encode()
    ]
    assert escaped == []
    assert orjson.dumps(("proxy", 'a"b', "c\\d")) != b'["proxy","a"b","c\\d"]'
