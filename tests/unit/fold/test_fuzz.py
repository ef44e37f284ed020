"""Hostile input, property-based: the worker's decode-and-fold step (``ShardState.fold``, what the
engine runs on every batch) over random bytes, mutated valid records, huge numbers, deep nesting,
odd unicode and wrong types, for all three input kinds; for the CloudEvents inputs also in binary
content mode with hostile headers (not UTF-8, repeated, null, missing, junk names).

Properties: it never raises; every record has exactly one outcome (counted, duplicate, ignored,
tombstone, or rejected with a reason code of ``docs/formats.md`` (``DLQ_REASONS``) and a *specific*
sentence — never the catch-all "undecodable record", which would mean a decoder bug); valid
records, in either mode, around certainly invalid ones are counted exactly (a retry in the other
mode once), compared with totals computed here from the generator.

``make test`` runs a couple of hundred examples per property; ``-m soak`` runs thousands.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metering.contracts import DLQ_REASONS
from metering.fold.shard import Record, ShardConfig, ShardState
from streamtoll.dev.traffic import otlp_export, otlp_point
from tests.unit.decoders.helpers import NOW, TS0, binary, limits

REASONS = set(DLQ_REASONS)
Headers = list[tuple[str, bytes | None]]
EXAMPLES = int(os.environ.get("STREAMTOLL_FUZZ_EXAMPLES", "150"))
T = "2026-11-10T11:30:00Z"
NOW_S = NOW.timestamp()

fuzz = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def cfg(kind: str) -> ShardConfig:
    return ShardConfig(kind, 3_600_000, 100_000, 35 * 86_400_000, None, 10e9)


def proxy_doc(i: int, nbytes: int, nrec: int, direction: str = "produce") -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"valid-{i}",
        "source": "//fuzz",
        "type": f"io.streamtoll.kafka.{'produce' if direction == 'produce' else 'fetch'}",
        "time": T,
        "subject": "User:fuzz",
        "data": {"client_id": "c", "topic": "orders", "records": nrec, "bytes": nbytes},
    }


def audit_doc(i: int, granted: bool = True) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"audit-{i}",
        "source": "crn:///kafka=x",
        "type": "io.confluent.kafka.server/authorization",
        "time": T,
        "data": {
            "methodName": "kafka.Produce",
            "authenticationInfo": {"principal": "User:fuzz"},
            "authorizationInfo": {"granted": granted, "resourceType": "Topic", "resourceName": "orders"},
            "request": {"client_id": "c"},
        },
    }


# --- hostile values --------------------------------------------------------------------------

ODD_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", categories=("Cc", "Cf", "Co", "Zs", "Mn", "So", "Lo")), max_size=40
)
JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    ODD_TEXT,
)
JSON_ANY = st.recursive(
    JSON_LEAF,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20,
)


@st.composite
def wrong_typed(draw: st.DrawFn, base: dict[str, Any]) -> bytes:
    """A valid document with one field (top level or in data) replaced by a hostile value."""
    doc = json.loads(json.dumps(base))
    where = doc["data"] if draw(st.booleans()) and isinstance(doc.get("data"), dict) else doc
    field = draw(st.sampled_from(sorted(where)))
    where[field] = draw(JSON_ANY)
    return json.dumps(doc).encode()


@st.composite
def mutated(draw: st.DrawFn, raw: bytes) -> bytes:
    """Bytes of a valid record, flipped, cut, or with junk inserted."""
    b = bytearray(raw)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("flip", "cut", "insert")))
        pos = draw(st.integers(0, max(0, len(b) - 1)))
        if op == "flip" and b:
            b[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del b[pos:]
        else:
            b[pos:pos] = draw(st.binary(min_size=1, max_size=8))
    return bytes(b)


def special_values() -> st.SearchStrategy[bytes]:
    return st.sampled_from(
        [
            b"",
            b"\xef\xbb\xbf{}",  # BOM
            b"NaN",
            b'{"data": ' * 5000 + b"1" + b"}" * 5000,  # deep nesting
            b"[" * 100_000,
            json.dumps({**proxy_doc(0, 1, 1), "data": {"topic": "t", "records": 1, "bytes": 10**400}}).encode(),
            json.dumps({**proxy_doc(0, 1, 1), "data": {"topic": "t", "records": 1, "bytes": 1e308}}).encode(),
            json.dumps({**proxy_doc(0, 1, 1), "data": {"topic": "t", "records": -1, "bytes": 5}}).encode(),
            json.dumps({**proxy_doc(0, 1, 1), "subject": "\ud800"}).encode(),
            json.dumps({**proxy_doc(0, 1, 1), "data": {"topic": "x" * 100_000, "records": 1, "bytes": 1}}).encode(),
            b'{"specversion":"1.0","id":"x","time":"2026-11-10T11:30:00Z","data":{"bytes":Infinity}}',
            json.dumps(otlp_like_garbage()).encode(),
        ]
    )


def otlp_like_garbage() -> dict[str, Any]:
    return {"resourceMetrics": [{"resource": {"attributes": 5}, "scopeMetrics": [{"metrics": [{"sum": []}]}]}]}


HOSTILE = st.one_of(st.binary(max_size=300), special_values(), JSON_ANY.map(lambda v: json.dumps(v).encode()))


CE_NAMES = ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_subject", "content-type"]
HEADER_VALUE = st.one_of(
    st.none(),
    st.binary(max_size=40),  # mostly not UTF-8
    ODD_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"1.0", b"0.3", b"", b"io.streamtoll.kafka.produce", T.encode(), b"x" * 300, b"\xef\xbb\xbf1.0"]),
)
HEADER_NAME = st.one_of(st.sampled_from(CE_NAMES), st.text(max_size=12))


@st.composite
def binary_hostile(draw: st.DrawFn, base: dict[str, Any]) -> tuple[bytes | None, Headers]:
    """A valid event in binary mode, then its headers dropped, repeated, nulled, replaced by junk
    bytes or joined by junk headers, and its value (the data) sometimes hostile too."""
    value, headers = binary(base)
    hs: Headers = list(headers)
    for _ in range(draw(st.integers(1, 5))):
        op = draw(st.sampled_from(("drop", "repeat", "null", "junk", "add")))
        i = draw(st.integers(0, max(0, len(hs) - 1)))
        if op == "drop" and hs:
            del hs[i]
        elif op == "repeat" and hs:
            hs.insert(draw(st.integers(0, len(hs))), hs[i])
        elif op == "null" and hs:
            hs[i] = (hs[i][0], None)
        elif op == "junk" and hs:
            hs[i] = (hs[i][0], draw(HEADER_VALUE))
        else:
            hs.insert(draw(st.integers(0, len(hs))), (draw(HEADER_NAME), draw(HEADER_VALUE)))
    if draw(st.booleans()):
        hs.append(("ce_specversion", draw(HEADER_VALUE)))  # binary mode, whatever else is there
    choice = draw(st.integers(0, 3))
    if choice == 1:
        value = draw(HOSTILE)
    elif choice == 2:
        value = draw(mutated(value))
    elif choice == 3:
        value = json.dumps(draw(JSON_ANY)).encode()
    return value, hs


Item = bytes | None | tuple[bytes | None, Headers]


def fold(kind: str, values: list[Item]) -> tuple[ShardState, Any]:
    state = ShardState(f"{kind}/0", cfg(kind))
    records = [Record(i, TS0 + i, *v) if isinstance(v, tuple) else Record(i, TS0 + i, v) for i, v in enumerate(values)]
    return state, state.fold(records, limits())


def check_outcomes(out: Any, n_records: int, per_record: bool = True) -> None:
    for _rec, rejection in out.rejected:
        assert rejection.reason in REASONS, rejection
        assert rejection.detail and not rejection.detail.startswith("undecodable record"), rejection.detail
    if per_record:
        outcomes = out.counted + out.duplicates + out.ignored + out.tombstones + len(out.rejected)
        assert outcomes == n_records


# --- properties ------------------------------------------------------------------------------


@fuzz
@given(st.data())
@pytest.mark.parametrize("kind", ["proxy", "audit_log"])
def test_any_bytes_get_exactly_one_outcome_and_a_specific_reason(kind: str, data: st.DataObject) -> None:
    base = proxy_doc(1, 100, 2) if kind == "proxy" else audit_doc(1)
    raw = json.dumps(base).encode()
    values = data.draw(
        st.lists(st.one_of(HOSTILE, mutated(raw), wrong_typed(base), st.none()), min_size=1, max_size=12)
    )
    _, out = fold(kind, values)
    check_outcomes(out, len(values))


@fuzz
@given(st.data())
@pytest.mark.parametrize("kind", ["proxy", "audit_log"])
def test_binary_mode_with_hostile_headers_gets_one_outcome_and_a_specific_reason(
    kind: str, data: st.DataObject
) -> None:
    base = proxy_doc(1, 100, 2) if kind == "proxy" else audit_doc(1)
    values: list[Item] = data.draw(
        st.lists(st.one_of(binary_hostile(base), HOSTILE, st.just(binary(base))), min_size=1, max_size=12)
    )
    _, out = fold(kind, values)
    check_outcomes(out, len(values))


@fuzz
@given(st.data())
def test_otlp_any_bytes_never_raise_and_reasons_are_specific(data: st.DataObject) -> None:
    good = otlp_export(
        "1",
        [
            (
                "kafka.client.produce.bytes",
                [otlp_point({"principal": "User:f", "topic": "t"}, NOW_S - 120, NOW_S - 60, 5)],
            )
        ],
    )
    doc = json.loads(good)
    values = data.draw(
        st.lists(
            st.one_of(
                HOSTILE,
                mutated(good),
                JSON_ANY.map(
                    lambda v: json.dumps(
                        {"resourceMetrics": [{"resource": doc["resourceMetrics"][0]["resource"], "scopeMetrics": v}]}
                    ).encode()
                ),
            ),
            min_size=1,
            max_size=8,
        )
    )
    _, out = fold("broker_metrics", values)
    check_outcomes(out, len(values), per_record=False)


CERTAINLY_INVALID = st.one_of(
    st.binary(max_size=200).map(lambda b: b"\x00" + b),  # not JSON at all
    st.sampled_from(
        [
            b"[" * 50_000,
            b'{"data": ' * 3000 + b"1" + b"}" * 3000,
            json.dumps({**proxy_doc(-1, 1, 1), "data": {"topic": "t", "records": 1, "bytes": 10**400}}).encode(),
            json.dumps({**proxy_doc(-1, 1, 1), "data": {"topic": "t", "records": -3, "bytes": 5}}).encode(),
            json.dumps({**proxy_doc(-1, 1, 1), "data": {"topic": "t", "records": [1], "bytes": 5}}).encode(),
            json.dumps({**proxy_doc(-1, 1, 1), "time": "yesterday"}).encode(),
            json.dumps({**proxy_doc(-1, 1, 1), "data": {"topic": "\u0000bad", "records": 1, "bytes": 5}}).encode(),
        ]
    ),
)


@fuzz
@given(
    st.lists(
        st.tuples(st.integers(0, 2**31), st.integers(0, 10**6), st.sampled_from(("produce", "consume"))),
        min_size=1,
        max_size=30,
    ),
    st.lists(CERTAINLY_INVALID, max_size=10),
    st.randoms(use_true_random=False),
)
def test_valid_records_around_hostile_ones_are_counted_exactly(
    valid: list[tuple[int, int, str]], hostile: list[bytes], rnd: Any
) -> None:
    # every other valid event in binary mode; its retry in the other mode (or the same)
    docs = [proxy_doc(i, b, r, d) for i, (b, r, d) in enumerate(valid)]
    values: list[Item] = [binary(doc) if i % 2 else json.dumps(doc).encode() for i, doc in enumerate(docs)]
    retries: list[Item] = [
        (json.dumps(docs[i]).encode() if i % 2 else binary(docs[i])) if i % 9 else values[i]
        for i in range(0, len(docs), 3)
    ]
    hostile_binary: list[Item] = [(h, binary(proxy_doc(-2, 1, 1))[1]) for h in hostile[::2]]
    stream = values + retries + list(hostile) + hostile_binary
    rnd.shuffle(stream)
    state, out = fold("proxy", stream)
    want: dict[str, list[int]] = {}
    for b, r, d in valid:
        w = want.setdefault(d, [0, 0, 0, 0])
        w[0] += b
        w[1] += r
        w[2] += 1
    got = {k[0][5]: list(v) for k, v in state.hours.items()}
    assert got == want
    assert out.counted == len(valid) and out.duplicates == len(retries)
    assert len(out.rejected) == len(hostile) + len(hostile_binary)
    check_outcomes(out, len(stream))


@pytest.mark.soak
def test_long_fuzz_run() -> None:
    """The properties above with thousands of examples each (``pytest -m soak``)."""
    import subprocess
    import sys

    examples = os.environ.get("STREAMTOLL_SOAK_EXAMPLES", "5000")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "not soak", __file__, "-p", "no:cacheprovider"],
        env={**os.environ, "STREAMTOLL_FUZZ_EXAMPLES": examples},
        timeout=6 * 3600,
    )
    assert done.returncode == 0
