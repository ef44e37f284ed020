from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from metering.decoders import otlp
from metering.decoders.common import Invalid
from metering.domain.events import Rejection

from .helpers import NOW, limits

T = int(NOW.timestamp()) - 3600

SAMPLE_NOW = datetime(2025, 11, 3, 12, 0, tzinfo=UTC)  # the sample file's points are from 2025-11-03


def request(
    points: list[dict[str, Any]],
    name: str = "kafka.client.produce.bytes",
    temporality: int = 2,
    resource: dict[str, str] | None = None,
) -> bytes:
    res = resource if resource is not None else {"kafka.broker.id": "1"}
    return json.dumps(
        {
            "resourceMetrics": [
                {
                    "resource": {"attributes": [{"key": k, "value": {"stringValue": v}} for k, v in res.items()]},
                    "scopeMetrics": [
                        {
                            "metrics": [
                                {
                                    "name": name,
                                    "sum": {
                                        "aggregationTemporality": temporality,
                                        "isMonotonic": True,
                                        "dataPoints": points,
                                    },
                                }
                            ]
                        }
                    ],
                }
            ]
        }
    ).encode()


def point(value: object = "100", t: int = T, start: int = T - 10_000, **attrs: str) -> dict[str, Any]:
    a = {"principal": "User:a", "client_id": "c1", "topic": "orders", **attrs}
    p: dict[str, Any] = {
        "attributes": [{"key": k, "value": {"stringValue": v}} for k, v in a.items()],
        "startTimeUnixNano": str(start * 10**9),
        "timeUnixNano": str(t * 10**9),
    }
    if isinstance(value, float):
        p["asDouble"] = value
    else:
        p["asInt"] = value
    return p


def test_sample_file(samples: Path) -> None:
    now = SAMPLE_NOW
    got = otlp.decode((samples / "broker-metrics.json").read_bytes(), limits(now=now))
    assert [type(x) for x in got] == [otlp.Sample, otlp.Sample]
    b, r = got
    assert isinstance(b, otlp.Sample) and isinstance(r, otlp.Sample)
    assert (b.value, b.quantity, b.direction, b.temporality) == (98231554021, "bytes", "produce", 2)
    assert (r.value, r.quantity) == (31250002, "records")
    assert b.series[0] == "2" and b.series[1] == "kafka.client.produce.bytes"
    assert (b.principal, b.client_id, b.topic) == ("User:acme-orders", "orders-svc-7", "orders")


def test_series_is_emitter_metric_and_sorted_attributes() -> None:
    one = otlp.decode(request([point(principal="User:a", topic="t")]), limits())[0]
    two = otlp.decode(request([point(topic="t", principal="User:a")], resource={"service.instance.id": "1"}), limits())[
        0
    ]
    other = otlp.decode(request([point(principal="User:a", topic="t")], resource={"kafka.broker.id": "9"}), limits())[0]
    assert isinstance(one, otlp.Sample) and isinstance(two, otlp.Sample) and isinstance(other, otlp.Sample)
    assert one.series == two.series  # attribute order and the fallback emitter attribute
    assert one.series != other.series  # never mix emitters


@pytest.mark.parametrize(
    ("pt", "reason"),
    [
        (point(value="NaN"), "schema"),
        ({**{k: v for k, v in point().items() if k != "asInt"}, "asDouble": "Infinity"}, "counter_implausible"),
        (point(value=1e30), "counter_implausible"),
        (point(value=str(2**64)), "counter_implausible"),
        (point(value="-5"), "negative"),
        (point(value="--5"), "schema"),
        (point(value="5-"), "schema"),
        (point(t=10**12), "schema"),
    ],
)
def test_bad_points_are_rejected_alone(pt: dict[str, Any], reason: str) -> None:
    got = otlp.decode(request([point(), pt, point(client_id="c2")]), limits())
    assert isinstance(got[0], otlp.Sample) and isinstance(got[2], otlp.Sample)
    assert isinstance(got[1], Rejection) and got[1].reason == reason
    assert "dataPoints[1]" in got[1].detail


def test_nan_literal_as_double_in_json() -> None:
    raw = request([point()]).replace(b'"asInt": "100"', b'"asDouble": "NaN"')
    got = otlp.decode(raw, limits())
    assert isinstance(got[0], Rejection) and got[0].reason == "counter_implausible"


def test_unknown_and_gauge_metrics_are_skipped() -> None:
    assert otlp.decode(request([point()], name="kafka.other"), limits()) == []
    raw = json.dumps(
        {
            "resourceMetrics": [
                {
                    "resource": {},
                    "scopeMetrics": [
                        {"metrics": [{"name": "kafka.client.fetch.bytes", "gauge": {"dataPoints": [point()]}}]}
                    ],
                }
            ]
        }
    ).encode()
    assert otlp.decode(raw, limits()) == []


def test_missing_emitter_and_topic() -> None:
    got = otlp.decode(request([point()], resource={}), limits())
    assert isinstance(got[0], Rejection) and "kafka.broker.id" in got[0].detail
    p = point()
    p["attributes"] = [a for a in p["attributes"] if a["key"] != "topic"]
    got = otlp.decode(request([p]), limits())
    assert isinstance(got[0], Rejection) and got[0].reason == "schema"


@pytest.mark.parametrize(
    "raw",
    [
        b"{}",
        b"[]",
        b'{"resourceMetrics": 5}',
        b'{"resourceMetrics": [5]}',
        b'{"resourceMetrics": [{"scopeMetrics": [{"metrics": 3}]}]}',
    ],
)
def test_not_otlp_is_rejected_whole(raw: bytes) -> None:
    with pytest.raises(Invalid) as exc:
        otlp.decode(raw, limits())
    assert exc.value.rejection.reason == "schema"


def test_delta_temporality_and_time_limits() -> None:
    got = otlp.decode(request([point(t=int(datetime(2026, 9, 1, tzinfo=UTC).timestamp()))], temporality=1), limits())
    assert isinstance(got[0], Rejection) and got[0].reason == "too_old"
    got = otlp.decode(request([point()], temporality=1), limits())
    assert isinstance(got[0], otlp.Sample) and got[0].temporality == otlp.DELTA
    got = otlp.decode(request([point()], temporality=0), limits())
    assert isinstance(got[0], Rejection)


def test_boolean_temporality_is_a_schema_error() -> None:
    got = otlp.decode(request([point()], temporality=True), limits())
    assert isinstance(got[0], Rejection) and got[0].reason == "schema"  # not DELTA because true == 1


def test_integers_written_as_floats_are_integers() -> None:
    p = point()
    p["asInt"], p["timeUnixNano"], p["startTimeUnixNano"] = 100.0, float(T * 10**9), float((T - 10_000) * 10**9)
    got = otlp.decode(request([p]), limits())
    want = otlp.decode(request([point()]), limits())
    assert got == want and isinstance(got[0], otlp.Sample)
    p["asInt"] = 100.5
    got = otlp.decode(request([p]), limits())
    assert isinstance(got[0], Rejection) and got[0].reason == "schema"
