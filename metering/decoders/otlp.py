"""Broker metrics: an OTLP JSON ``ExportMetricsServiceRequest`` → counter samples.

Format: ``docs/formats.md`` (broker metrics). This module only reads samples; turning cumulative samples into deltas
needs per-series state and lives in :mod:`metering.domain.counters`.

One record carries many data points. A record that is not an OTLP request at all is rejected
whole; a single bad data point becomes its own rejection (its index in the detail) while the
other points of the record still count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from metering.decoders.common import MAX_ID_LEN, Invalid, Limits, load_json
from metering.domain.counters import CUMULATIVE, DELTA, Sample
from metering.domain.events import CONSUME, PRODUCE, Rejection

__all__ = ["CUMULATIVE", "DEFAULT_METRICS", "DELTA", "Sample", "decode"]

MAX_VALUE = 2**63
DEFAULT_METRICS: Mapping[str, tuple[str, str]] = {
    "kafka.client.produce.bytes": (PRODUCE, "bytes"),
    "kafka.client.produce.records": (PRODUCE, "records"),
    "kafka.client.fetch.bytes": (CONSUME, "bytes"),
    "kafka.client.fetch.records": (CONSUME, "records"),
}


def _attrs(raw: Any, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if type(raw) is not list:
        raise Invalid("schema", f"{where} must be a list")
    out: dict[str, str] = {}
    for kv in raw:
        if type(kv) is not dict or type(kv.get("key")) is not str or type(kv.get("value")) is not dict:
            raise Invalid("schema", f"{where} has an entry that is not {{key, value}}")
        val = kv["value"]
        for vk in ("stringValue", "intValue", "boolValue"):
            if vk in val and type(val[vk]) in (str, int, bool):
                text = str(val[vk])
                if len(text) > MAX_ID_LEN or not text.isprintable():
                    raise Invalid("schema", f"{where} {kv['key'][:40]!r} is too long or not printable")
                out[kv["key"][:MAX_ID_LEN]] = text
                break
    return out


def _nanos(v: Any, where: str, required: bool) -> int:
    if v is None and not required:
        return 0
    if type(v) is int and v >= 0:
        return v
    if type(v) is str and v.isascii() and v.isdigit() and len(v) <= 20:
        return int(v)
    if type(v) is float and v.is_integer() and v >= 0:  # a JSON integer written as 1.7e18 or 5.0
        return int(v)
    raise Invalid("schema", f"{where} must be unsigned nanoseconds")


def _value(point: dict[str, Any], where: str) -> int:
    if "asInt" in point:
        v = point["asInt"]
        if type(v) is str and v.isascii() and v.removeprefix("-").isdigit() and len(v) <= 40:
            n = int(v)
        elif type(v) is int:
            n = v
        elif type(v) is float and v.is_integer():
            n = int(v)
        else:
            raise Invalid("schema", f"{where}.asInt must be an integer (as a JSON string)")
    elif "asDouble" in point:
        v = point["asDouble"]
        if type(v) is str and v in ("NaN", "Infinity", "-Infinity"):
            raise Invalid("counter_implausible", f"{where}.asDouble is {v}")
        if type(v) not in (int, float):
            raise Invalid("schema", f"{where}.asDouble must be a number")
        if not math.isfinite(v):
            raise Invalid("counter_implausible", f"{where}.asDouble is not finite")
        if v >= MAX_VALUE:
            raise Invalid("counter_implausible", f"{where}.asDouble is {v:.3g}, over 2^63")
        n = int(v)
    else:
        raise Invalid("schema", f"{where} has neither asInt nor asDouble")
    if n < 0:
        raise Invalid("negative", f"{where} value is negative ({n})")
    if n >= MAX_VALUE:
        raise Invalid("counter_implausible", f"{where} value {n} is over 2^63")
    return n


def decode(
    value: bytes, limits: Limits, metrics: Mapping[str, tuple[str, str]] = DEFAULT_METRICS
) -> list[Sample | Rejection]:
    """One OTLP JSON record → its samples and the rejections of single bad points, in order.

    Raises :class:`Invalid` when the record as a whole is not an OTLP metrics request.
    Metrics not in ``metrics`` and non-monotonic or non-sum metrics are skipped.
    """
    doc = load_json(value)
    if type(doc) is not dict or type(doc.get("resourceMetrics")) is not list:
        raise Invalid("schema", "the record is not an OTLP ExportMetricsServiceRequest (no resourceMetrics list)")
    out: list[Sample | Rejection] = []
    for ri, rm in enumerate(doc["resourceMetrics"]):
        rwhere = f"resourceMetrics[{ri}]"
        if type(rm) is not dict:
            raise Invalid("schema", f"{rwhere} is not an object")
        resource = rm.get("resource") or {}
        if type(resource) is not dict:
            raise Invalid("schema", f"{rwhere}.resource is not an object")
        rattrs = _attrs(resource.get("attributes"), f"{rwhere}.resource.attributes")
        emitter = rattrs.get("kafka.broker.id") or rattrs.get("service.instance.id") or ""
        scopes = rm.get("scopeMetrics") or []
        if type(scopes) is not list:
            raise Invalid("schema", f"{rwhere}.scopeMetrics is not a list")
        for si, sm in enumerate(scopes):
            metrics_list = sm.get("metrics") if type(sm) is dict else None
            if type(metrics_list) is not list:
                raise Invalid("schema", f"{rwhere}.scopeMetrics[{si}].metrics is not a list")
            for mi, metric in enumerate(metrics_list):
                mwhere = f"{rwhere}.scopeMetrics[{si}].metrics[{mi}]"
                if type(metric) is not dict:
                    raise Invalid("schema", f"{mwhere} is not an object")
                name = metric.get("name")
                if type(name) is not str:
                    continue
                meaning = metrics.get(name)
                total = metric.get("sum")
                if meaning is None or type(total) is not dict or total.get("isMonotonic") is False:
                    continue
                temporality = total.get("aggregationTemporality")
                if type(temporality) is not int or temporality not in (DELTA, CUMULATIVE):  # (true == 1)
                    out.append(Rejection("schema", f"{mwhere}.sum.aggregationTemporality must be 1 or 2"))
                    continue
                points = total.get("dataPoints")
                if type(points) is not list:
                    out.append(Rejection("schema", f"{mwhere}.sum.dataPoints is not a list"))
                    continue
                for pi, point in enumerate(points):
                    try:
                        out.append(
                            _sample(point, f"{mwhere}.dataPoints[{pi}]", emitter, name, temporality, meaning, limits)
                        )
                    except Invalid as exc:
                        out.append(exc.rejection)
    return out


def _sample(
    point: Any, where: str, emitter: str, name: str, temporality: int, meaning: tuple[str, str], limits: Limits
) -> Sample:
    if type(point) is not dict:
        raise Invalid("schema", f"{where} is not an object")
    attrs = _attrs(point.get("attributes"), f"{where}.attributes")
    time_ns = _nanos(point.get("timeUnixNano"), f"{where}.timeUnixNano", required=True)
    start_ns = _nanos(point.get("startTimeUnixNano"), f"{where}.startTimeUnixNano", required=False)
    value = _value(point, where)
    if not emitter:
        raise Invalid("schema", f"{where}: the resource names no kafka.broker.id or service.instance.id")
    topic = attrs.get("topic", "")
    if not topic:
        raise Invalid("schema", f"{where}.attributes has no topic")
    limits.check_time(time_ns // 1_000_000)
    series = (emitter, name, *(x for kv in sorted(attrs.items()) for x in kv))
    return Sample(
        series,
        temporality,
        start_ns,
        time_ns,
        value,
        meaning[0],
        meaning[1],
        attrs.get("principal") or "unknown",
        attrs.get("client_id", ""),
        attrs.get("virtual_cluster", ""),
        topic,
    )
