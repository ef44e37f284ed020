"""``docs/formats.md``, the JSON Schemas in ``docs/schemas/`` and the code, kept together.

* Every schema is a valid draft 2020-12 schema; every JSON example in the document is marked with
  the schema it must satisfy, satisfies it, and (inputs) is read by the decoders as the document
  says; the output examples are exactly what the worker publishes for the input example.
* Input side: the samples, the demo traffic generator's records, hand-made bad records and
  systematic mutations of valid records get the same verdict from the schema and the decoder:
  what the decoder reads the schema accepts (for the documented tolerances), what the decoder
  rejects as ``schema`` the schema rejects too.
* Output side: records built by the worker's own publishing code satisfy the output schemas, and
  each schema declares exactly the fields ``metering/contracts.py`` declares.
"""

from __future__ import annotations

import ast
import base64
import copy
import json
import re
from collections.abc import Iterator
from dataclasses import fields
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import confluent_kafka as ck
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from metering import contracts
from metering.contracts import DLQ_REASONS, SOURCES, DlqRecord, DlqSource, DlqTruncation, UsageMinute, UsageWindow
from metering.decoders import confluent_audit, otlp, proxy
from metering.decoders.common import Invalid, Limits
from metering.domain.events import Rejection, UsageEvent
from metering.engine import loop
from metering.settings import MeteringSettings
from streamtoll.dev.traffic import Traffic
from tests.unit.decoders.helpers import NOW, binary, limits

ROOT = Path(__file__).parents[2]
DOC = ROOT / "docs" / "formats.md"
SCHEMAS = ROOT / "docs" / "schemas"
SAMPLES = ROOT / "streamtoll" / "samples"
INPUTS = ("proxy-audit", "confluent-audit-log", "broker-metrics-otlp")
OUTPUTS = ("usage-window", "usage-minute", "dlq-record")
CONTROLS = ("entitlement", "enforcement-decision", "enforcement-episode")  # control topics gateways follow or write
SAMPLE_METRICS_NOW = datetime(2025, 11, 3, 12, 0, tzinfo=UTC)  # the sample metrics file is from 2025-11-03


@cache
def schema(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    return doc


@cache
def registry() -> Registry[Any]:
    return Registry().with_resources(
        (schema(n)["$id"], Resource.from_contents(schema(n))) for n in INPUTS + OUTPUTS + CONTROLS
    )


@cache
def validator(ref: str) -> Draft202012Validator:
    """``ref``: ``proxy-audit`` or ``proxy-audit.schema.json``, optionally ``#/$defs/…``."""
    name, _, pointer = ref.partition("#")
    name = name.removesuffix(".schema.json")
    return Draft202012Validator({"$ref": f"{schema(name)['$id']}#{pointer}"}, registry=registry())


def valid(ref: str, instance: object) -> bool:
    return validator(ref).is_valid(instance)


Outcome = str | tuple[str, str]  # "counted" | "ignored" | ("rejected", reason)


def decode(kind: str, raw: bytes, lim: Limits | None = None) -> Outcome:
    lim = lim or limits()
    try:
        if kind == "broker-metrics-otlp":
            got = otlp.decode(raw, lim)
            reasons = [g.reason for g in got if isinstance(g, Rejection)]
            return (
                ("rejected", "schema") if "schema" in reasons else (("rejected", reasons[0]) if reasons else "counted")
            )
        fn = proxy.decode if kind == "proxy-audit" else confluent_audit.decode
        return "counted" if isinstance(fn(raw, lim), UsageEvent) else "ignored"
    except Invalid as exc:
        return ("rejected", exc.rejection.reason)


def same_verdict(kind: str, doc: object, lim: Limits | None = None) -> None:
    """Read → the schema accepts; rejected as ``schema`` → the schema rejects."""
    got = decode(kind, json.dumps(doc).encode(), lim)
    ok = valid(kind, doc)
    if got in ("counted", "ignored"):
        assert ok, (got, doc, [e.message for e in validator(kind).iter_errors(doc)][:3])
    elif got == ("rejected", "schema"):
        assert not ok, (got, doc)


# --- the schemas ---------------------------------------------------------------------------


def test_one_schema_per_record_format() -> None:
    assert sorted(p.name for p in SCHEMAS.iterdir()) == sorted(f"{n}.schema.json" for n in INPUTS + OUTPUTS + CONTROLS)


CONDITIONAL = {"if", "then", "else", "allOf", "anyOf", "oneOf", "not", "contains"}


def undescribed(node: Any, where: str = "") -> Iterator[str]:
    """Declared fields without a description (conditional branches only restate constraints)."""
    if isinstance(node, dict):
        for name, sub in (node.get("properties") or {}).items():
            if not (isinstance(sub, dict) and sub.get("description")):
                yield f"{where}.{name}"
        for key, sub in node.items():
            if key not in CONDITIONAL:
                yield from undescribed(sub, f"{where}/{key}")
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            yield from undescribed(sub, f"{where}[{i}]")


@pytest.mark.parametrize("name", INPUTS + OUTPUTS + CONTROLS)
def test_schema_is_valid_2020_12_with_id_title_and_descriptions(name: str) -> None:
    s = schema(name)
    Draft202012Validator.check_schema(s)
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert s["$id"].startswith("urn:streamtoll:schema:") and s["title"] and s["description"]
    assert all(d.get("description") for d in s.get("$defs", {}).values())
    assert not list(undescribed(s))


def test_schema_ids_are_unique() -> None:
    ids = [schema(n)["$id"] for n in INPUTS + OUTPUTS + CONTROLS]
    assert len(set(ids)) == len(ids)


# --- the document ----------------------------------------------------------------------------

MARKED = re.compile(r"<!-- example: (?P<ref>[^ ]+) -->\n```json\n(?P<body>.*?)\n```", re.S)


def doc_examples() -> list[tuple[str, Any]]:
    return [(m["ref"], json.loads(m["body"])) for m in MARKED.finditer(DOC.read_text())]


def test_every_json_block_of_the_document_is_a_marked_example() -> None:
    text = DOC.read_text()
    assert text.count("```json") == len(doc_examples()) >= 9


@pytest.mark.parametrize(("ref", "example"), doc_examples(), ids=[r for r, _ in doc_examples()])
def test_document_example_satisfies_its_schema(ref: str, example: Any) -> None:
    errors = [e.message for e in validator(ref).iter_errors(example)]
    assert not errors, errors


def test_document_input_examples_are_read_as_documented() -> None:
    examples = doc_examples()
    structured = [(r.split(".")[0], e) for r, e in examples if r.split(".")[0] in INPUTS and "#" not in r]
    assert {k for k, _ in structured} == set(INPUTS)
    for kind, example in structured:
        assert decode(kind, json.dumps(example).encode()) == "counted", example
    # binary mode: the data examples with the attributes of their structured twins
    proxy_first = next(e for r, e in examples if r == "proxy-audit.schema.json")
    proxy_data = next(e for r, e in examples if r == "proxy-audit.schema.json#/$defs/data")
    assert proxy_data == proxy_first["data"]
    value, headers = binary(proxy_first)
    assert proxy.decode_binary(value, headers, limits()) == proxy.decode(json.dumps(proxy_first).encode(), limits())
    audit = next(e for r, e in examples if r == "confluent-audit-log.schema.json")
    audit_data = next(e for r, e in examples if r == "confluent-audit-log.schema.json#/$defs/data")
    event = confluent_audit.decode_binary(json.dumps(audit_data).encode(), binary(audit)[1], limits())
    assert isinstance(event, UsageEvent)
    assert (event.principal, event.client_id, event.topic, event.direction, event.requests) == (
        "User:acme-orders",
        "orders-svc-7",
        "orders",
        "produce",
        1,
    )


class FakeProducer:
    """What the engine's publishing code needs of a confluent-kafka Producer; keeps what it got."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []

    def produce(
        self, topic: str, value: bytes, key: bytes | None = None, partition: int = -1, on_delivery: Any = None
    ) -> None:
        self.sent.append((topic, value, key))

    def poll(self, timeout: float) -> int:
        return 0


def message(
    topic: str,
    partition: int,
    offset: int,
    value: bytes | None,
    key: bytes | None = None,
    headers: Any = None,
    timestamp_ms: int = int(NOW.timestamp() * 1000),
) -> ck.Message:
    return ck.Message(
        topic=topic,
        partition=partition,
        offset=offset,
        key=key,
        value=value,
        headers=headers,
        timestamp=(1, timestamp_ms),
    )


def publish(
    topic: str, partition: int, messages: list[ck.Message], lim: Limits, received_at: str = "2026-11-03T10:15:01.118Z"
) -> dict[str, list[tuple[dict[str, Any], bytes | None]]]:
    """One batch through the worker's fold and publish steps; what it sent, by output topic."""
    settings = MeteringSettings()
    engine = loop.Engine(settings, clock=lambda: NOW.timestamp())
    shard = engine._new_shard(topic, partition)
    producer = FakeProducer()
    result = shard.fold(messages, lim)
    engine._publish(producer, topic, partition, shard, result, received_at)  # type: ignore[arg-type]
    out: dict[str, list[tuple[dict[str, Any], bytes | None]]] = {}
    names = {
        settings.topic_usage_windows: "usage-window",
        settings.topic_usage_minutes: "usage-minute",
        settings.topic_dlq: "dlq-record",
        settings.topic_state: "state",
    }
    for t, value, key in producer.sent:
        out.setdefault(names[t], []).append((json.loads(value), key))
    return out


def test_document_output_examples_are_what_the_worker_publishes() -> None:
    examples = dict((r.removesuffix(".schema.json"), e) for r, e in doc_examples() if "#" not in r)
    first = next(e for r, e in doc_examples() if r == "proxy-audit.schema.json")
    window, minute = examples["usage-window"], examples["usage-minute"]
    offset = window["version"] - 1
    out = publish("proxy-audit", 3, [message("proxy-audit", 3, offset, json.dumps(first).encode())], limits())
    assert [doc for doc, _ in out["usage-window"]] == [window]
    assert [doc for doc, _ in out["usage-minute"]] == [minute]
    # the dead-letter example: exactly what that rejected record becomes
    dlq = examples["dlq-record"]
    headers = [(n, None if v is None else base64.b64decode(v)) for n, v in dlq["headers"]]
    rec = message(
        dlq["source"]["topic"],
        dlq["source"]["partition"],
        dlq["source"]["offset"],
        base64.b64decode(dlq["value_b64"]),
        base64.b64decode(dlq["key_b64"]),
        headers,
        dlq["source"]["timestamp"],
    )
    out = publish("proxy-audit", dlq["source"]["partition"], [rec], limits(), dlq["received_at"])
    assert [doc for doc, _ in out["dlq-record"]] == [dlq]


def test_document_names_every_reason_and_every_output_field() -> None:
    text = DOC.read_text()
    for reason in DLQ_REASONS:
        assert f"| `{reason}` |" in text, reason
    for name in (
        [f.name for f in fields(UsageWindow)] + [f.name for f in fields(UsageMinute)] + list(DlqRecord.__annotations__)
    ):
        assert f"`{name}`" in text, name


# --- input side --------------------------------------------------------------------------------


def test_samples_satisfy_the_input_schemas_and_are_read() -> None:
    for line in (SAMPLES / "proxy-audit.jsonl").read_text().splitlines():
        assert valid("proxy-audit", json.loads(line)) and decode("proxy-audit", line.encode()) == "counted"
    for line in (SAMPLES / "confluent-audit.jsonl").read_text().splitlines():
        assert valid("confluent-audit-log", json.loads(line))
        assert decode("confluent-audit-log", line.encode()) == "counted"
    raw = (SAMPLES / "broker-metrics.json").read_bytes()
    lim = limits(now=SAMPLE_METRICS_NOW)
    assert valid("broker-metrics-otlp", json.loads(raw)) and decode("broker-metrics-otlp", raw, lim) == "counted"


def test_bad_samples_rejected_as_schema_are_rejected_by_the_schema() -> None:
    seen = set()
    for line in (SAMPLES / "proxy-audit-bad.jsonl").read_bytes().splitlines():
        got = decode("proxy-audit", line)
        seen.add(got)
        try:
            doc = json.loads(line)
        except ValueError:
            assert got in (("rejected", "not_json"), ("rejected", "not_utf8"))
            continue
        same_verdict("proxy-audit", doc)
    assert ("rejected", "schema") in seen


def test_generated_traffic_satisfies_the_input_schemas() -> None:
    tr = Traffic.make(NOW.timestamp(), ("proxy-audit", "broker-metrics", "audit"), n_proxy=1500)
    kinds = {"proxy-audit": "proxy-audit", "broker-metrics": "broker-metrics-otlp", "audit": "confluent-audit-log"}
    verdicts: dict[str, set[Outcome]] = {k: set() for k in kinds.values()}
    for topic, _key, value in tr.records:
        if value is None:
            continue
        kind = kinds[topic]
        got = decode(kind, value)
        verdicts[kind].add(got)
        try:
            doc = json.loads(value)
        except (ValueError, RecursionError):
            assert got in (("rejected", "not_json"), ("rejected", "not_utf8"))
            continue
        same_verdict(kind, doc)
        if got in ("counted", "ignored"):
            assert valid(kind, doc)
        if kind != "broker-metrics-otlp" and isinstance(doc, dict) and isinstance(doc.get("data"), dict):
            # binary mode: the value is data, which satisfies the data definition when read
            value_b, headers = binary(doc)
            fn = proxy.decode_binary if kind == "proxy-audit" else confluent_audit.decode_binary
            try:
                fn(value_b, headers, limits())
            except Invalid:
                continue
            assert valid(f"{kind}#/$defs/data", doc["data"]) or doc["type"] not in (
                "io.streamtoll.kafka.produce",
                "io.streamtoll.kafka.fetch",
                "io.confluent.kafka.server/authorization",
            )
    assert {"counted", "ignored", ("rejected", "schema")} <= verdicts["proxy-audit"]
    assert "counted" in verdicts["broker-metrics-otlp"] and "counted" in verdicts["confluent-audit-log"]


def proxy_good(**over: Any) -> dict[str, Any]:
    doc = json.loads((SAMPLES / "proxy-audit.jsonl").read_text().splitlines()[0])
    doc.update(over)
    return doc


def proxy_data(**over: Any) -> dict[str, Any]:
    return {**proxy_good()["data"], **over}


def audit_good(**data_over: Any) -> dict[str, Any]:
    doc = json.loads((SAMPLES / "confluent-audit.jsonl").read_text().splitlines()[0])
    doc["data"].update(data_over)
    return doc


def audit_authz(**over: Any) -> dict[str, Any]:
    return audit_good(authorizationInfo={**audit_good()["data"]["authorizationInfo"], **over})


def otlp_good(point: dict[str, Any] | None = None, drop: tuple[str, ...] = (), **metric_over: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "attributes": [
            {"key": "principal", "value": {"stringValue": "User:a"}},
            {"key": "topic", "value": {"stringValue": "orders"}},
        ],
        "startTimeUnixNano": str(int(NOW.timestamp() - 7200) * 10**9),
        "timeUnixNano": str(int(NOW.timestamp() - 3600) * 10**9),
        "asInt": "100",
        **(point or {}),
    }
    for k in drop:
        del p[k]
    metric = {
        "name": "kafka.client.fetch.bytes",
        "sum": {"aggregationTemporality": 2, "isMonotonic": True, "dataPoints": [p]},
        **metric_over,
    }
    resource = {"attributes": [{"key": "kafka.broker.id", "value": {"stringValue": "1"}}]}
    return {"resourceMetrics": [{"resource": resource, "scopeMetrics": [{"metrics": [metric]}]}]}


def without(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in keys}


# The tolerances the document promises: the decoder reads these, and the schema accepts them.
TOLERATED: list[tuple[str, Any]] = [
    ("proxy-audit", proxy_good(data=proxy_data(records="120", bytes=" +48213 "))),
    ("proxy-audit", proxy_good(data=proxy_data(records=120.0, bytes=1e3, partition=3.0))),
    ("proxy-audit", proxy_good(data=proxy_data(partition=None, client_id=None, virtual_cluster=""))),
    ("proxy-audit", proxy_good(data=without(proxy_data(), "client_id", "virtual_cluster", "partition"))),
    ("proxy-audit", without(proxy_good(), "subject", "datacontenttype")),
    ("proxy-audit", proxy_good(subject=None)),
    ("proxy-audit", proxy_good(subject="")),
    ("proxy-audit", proxy_good(time="2026-11-03T11:15:00.123456789+01:00")),
    ("proxy-audit", proxy_good(time="2026-11-03T10:15:00-00:00")),
    ("proxy-audit", proxy_good(extension={"any": [1, "thing"]}, data=proxy_data(future_field=True))),
    ("proxy-audit", proxy_good(type="io.streamtoll.kafka.metadata", data="anything", subject=5)),
    ("proxy-audit", without(proxy_good(type="io.streamtoll.kafka.metadata"), "data")),
    ("proxy-audit", proxy_good(datacontenttype="text/plain")),
    ("confluent-audit-log", {**audit_good(), "specversion": "0.3"}),
    ("confluent-audit-log", audit_good(methodName="KAFKA.PRODUCE", request={"clientId": "c"})),
    ("confluent-audit-log", audit_good(methodName="kafka.Fetch", request=None, authenticationInfo=None)),
    ("confluent-audit-log", without(audit_good(), "data") | {"data": without(audit_good()["data"], "request")}),
    ("confluent-audit-log", audit_authz(resourceType="Cluster", resourceName="crn:///kafka=x/topic=orders")),
    ("confluent-audit-log", audit_authz(resourceType="Cluster", resourceName="")),  # data.resourceName's topic
    ("confluent-audit-log", audit_good(methodName="kafka.FetchFollower", authorizationInfo="not read")),
    ("confluent-audit-log", {**audit_good(), "type": "io.confluent.kafka.server/authentication", "data": 1}),
    ("broker-metrics-otlp", otlp_good({"asInt": 100})),
    ("broker-metrics-otlp", otlp_good({"asInt": 100.0, "timeUnixNano": NOW.timestamp() * 1e9 - 3.6e12})),
    ("broker-metrics-otlp", otlp_good({"asInt": None, "asDouble": 12.5}, drop=("asInt",))),
    ("broker-metrics-otlp", otlp_good({"startTimeUnixNano": None})),
    ("broker-metrics-otlp", otlp_good({"startTimeUnixNano": "0"})),
    ("broker-metrics-otlp", otlp_good(sum={"aggregationTemporality": 1, "dataPoints": []})),
    ("broker-metrics-otlp", otlp_good(name="jvm.memory.used", sum="not read")),
    ("broker-metrics-otlp", otlp_good(sum={"aggregationTemporality": 9, "isMonotonic": False})),  # skipped
    ("broker-metrics-otlp", otlp_good(name="kafka.client.fetch.bytes", gauge={}, sum=None)),
    ("broker-metrics-otlp", {"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"name": "other", "sum": {}}]}]}]}),
    ("broker-metrics-otlp", {"resourceMetrics": []}),
]


@pytest.mark.parametrize(("kind", "doc"), TOLERATED)
def test_documented_tolerances_are_read_and_accepted_by_the_schema(kind: str, doc: Any) -> None:
    assert decode(kind, json.dumps(doc).encode()) in ("counted", "ignored")
    assert valid(kind, doc), [e.message for e in validator(kind).iter_errors(doc)][:3]


# Records the decoders reject as `schema`: the schema rejects them too.
BAD: list[tuple[str, Any]] = [
    ("proxy-audit", [1, 2, 3]),
    ("proxy-audit", "just a string"),
    ("proxy-audit", {**proxy_good(), "specversion": "0.3"}),
    ("proxy-audit", without(proxy_good(), "specversion")),
    ("proxy-audit", without(proxy_good(), "id")),
    ("proxy-audit", proxy_good(id="")),
    ("proxy-audit", proxy_good(id=17)),
    ("proxy-audit", proxy_good(source="s" * 256)),
    ("proxy-audit", proxy_good(source="//proxy/\u0007")),
    ("proxy-audit", without(proxy_good(), "type")),
    ("proxy-audit", proxy_good(type=["io.streamtoll.kafka.produce"])),
    ("proxy-audit", without(proxy_good(), "time")),
    ("proxy-audit", proxy_good(time="not-a-time")),
    ("proxy-audit", proxy_good(time="2026-11-03T10:15:00")),
    ("proxy-audit", proxy_good(time="2026-11-03T25:15:00Z")),
    ("proxy-audit", proxy_good(time="2026-11-03T10:15:00z")),
    ("proxy-audit", proxy_good(time=1793700900)),
    ("proxy-audit", proxy_good(subject=["User:a"])),
    ("proxy-audit", proxy_good(subject="User:\u200b")),
    ("proxy-audit", without(proxy_good(), "data")),
    ("proxy-audit", proxy_good(data="x")),
    ("proxy-audit", proxy_good(data=without(proxy_data(), "topic"))),
    ("proxy-audit", proxy_good(data=proxy_data(topic=""))),
    ("proxy-audit", proxy_good(data=proxy_data(topic="x" * 300))),
    ("proxy-audit", proxy_good(data=proxy_data(client_id=5))),
    ("proxy-audit", proxy_good(data=proxy_data(virtual_cluster="\u0000"))),
    ("proxy-audit", proxy_good(data=proxy_data(partition="3"))),
    ("proxy-audit", proxy_good(data=proxy_data(partition=3.5))),
    ("proxy-audit", proxy_good(data=without(proxy_data(), "records"))),
    ("proxy-audit", proxy_good(data=proxy_data(bytes=None))),
    ("proxy-audit", proxy_good(data=proxy_data(records=1.5))),
    ("proxy-audit", proxy_good(data=proxy_data(records=True))),
    ("proxy-audit", proxy_good(data=proxy_data(records="12x"))),
    ("proxy-audit", proxy_good(data=proxy_data(records="++12"))),
    ("proxy-audit", proxy_good(data=proxy_data(bytes=[1]))),
    ("confluent-audit-log", {**audit_good(), "specversion": "2.0"}),
    ("confluent-audit-log", without(audit_good(), "id")),
    ("confluent-audit-log", {**audit_good(), "time": "yesterday"}),
    ("confluent-audit-log", {**audit_good(), "type": 5}),
    ("confluent-audit-log", without(audit_good(), "data")),
    ("confluent-audit-log", {**audit_good(), "data": [1]}),
    ("confluent-audit-log", audit_good(methodName=None)),
    ("confluent-audit-log", audit_good(methodName=7)),
    ("confluent-audit-log", audit_good(authorizationInfo="yes")),
    ("confluent-audit-log", {**audit_good(), "data": without(audit_good()["data"], "authorizationInfo")}),
    ("confluent-audit-log", audit_authz(granted="true")),
    ("confluent-audit-log", audit_authz(granted=None)),
    ("confluent-audit-log", audit_authz(resourceName="")),
    ("confluent-audit-log", audit_authz(resourceName="o" * 256)),
    ("confluent-audit-log", audit_authz(resourceType="Group", resourceName="g1")),
    ("confluent-audit-log", audit_authz(resourceType="Cluster", resourceName="crn:///kafka=x/topic=")),
    ("confluent-audit-log", audit_good(authenticationInfo="User:a")),
    ("confluent-audit-log", audit_good(authenticationInfo={"principal": 5})),
    ("confluent-audit-log", audit_good(request="r")),
    ("confluent-audit-log", audit_good(request={"client_id": ["c"]})),
    ("confluent-audit-log", audit_good(request={"clientId": "c\n"})),
    ("broker-metrics-otlp", {}),
    ("broker-metrics-otlp", []),
    ("broker-metrics-otlp", {"resourceMetrics": 5}),
    ("broker-metrics-otlp", {"resourceMetrics": [5]}),
    ("broker-metrics-otlp", {"resourceMetrics": [{"resource": [1], "scopeMetrics": []}]}),
    ("broker-metrics-otlp", {"resourceMetrics": [{"scopeMetrics": [{"metrics": 3}]}]}),
    ("broker-metrics-otlp", {"resourceMetrics": [{"scopeMetrics": [{"scope": {}}]}]}),
    ("broker-metrics-otlp", {"resourceMetrics": [{"scopeMetrics": [{"metrics": [5]}]}]}),
    ("broker-metrics-otlp", otlp_good() | {"resourceMetrics": [otlp_good()["resourceMetrics"][0] | {"resource": {}}]}),
    ("broker-metrics-otlp", otlp_good(sum={"aggregationTemporality": 0, "dataPoints": []})),
    ("broker-metrics-otlp", otlp_good(sum={"aggregationTemporality": True, "dataPoints": []})),
    ("broker-metrics-otlp", otlp_good(sum={"aggregationTemporality": 2, "dataPoints": {}})),
    ("broker-metrics-otlp", otlp_good({"asInt": "NaN"})),
    ("broker-metrics-otlp", otlp_good({"asInt": "--5"})),
    ("broker-metrics-otlp", otlp_good({"asInt": 1.5})),
    ("broker-metrics-otlp", otlp_good({"asInt": True})),
    ("broker-metrics-otlp", otlp_good({"asInt": None})),
    ("broker-metrics-otlp", otlp_good({"timeUnixNano": None})),
    ("broker-metrics-otlp", otlp_good({"timeUnixNano": "-1"})),
    ("broker-metrics-otlp", otlp_good({"startTimeUnixNano": "soon"})),
    ("broker-metrics-otlp", otlp_good({"attributes": [{"key": "principal", "value": {"stringValue": "User:a"}}]})),
    ("broker-metrics-otlp", otlp_good({"attributes": {"topic": "orders"}})),
    ("broker-metrics-otlp", otlp_good({"attributes": [{"key": "topic", "value": {"stringValue": "o" * 256}}]})),
    ("broker-metrics-otlp", otlp_good({"attributes": [{"key": "topic"}]})),
]


@pytest.mark.parametrize(("kind", "doc"), BAD, ids=[f"{k}-{i}" for i, (k, _) in enumerate(BAD)])
def test_records_the_decoder_rejects_as_schema_are_rejected_by_the_schema(kind: str, doc: Any) -> None:
    assert decode(kind, json.dumps(doc).encode()) == ("rejected", "schema")
    assert not valid(kind, doc)


def test_binary_mode_values_rejected_as_schema_fail_the_data_definition() -> None:
    for kind, fn, base in (
        ("proxy-audit", proxy.decode_binary, proxy_good()),
        ("confluent-audit-log", confluent_audit.decode_binary, audit_good()),
    ):
        _, headers = binary(base)
        for data in ([1], "x", {}, {**base["data"], "topic": 5}, {**base["data"], "authorizationInfo": 1}):
            try:
                fn(json.dumps(data).encode(), headers, limits())
            except Invalid as exc:
                assert exc.rejection.reason == "schema"
                assert not valid(f"{kind}#/$defs/data", data), data
            else:
                assert valid(f"{kind}#/$defs/data", data), data


# Mutations of valid records: every field deleted, nulled or replaced by a value of another type.
# Where the decoder rejects as `schema`, the schema must too; where the decoder still reads the
# record, the schema must accept it except for these fields, where the schema is deliberately
# stricter than the decoder (it describes what to send, not every oddity the decoder survives).
STRICTER = {
    ("broker-metrics-otlp", "scopeMetrics"),  # "" or {} are read as no scopes
    ("broker-metrics-otlp", "stringValue"),  # a number is read as its text; null/[]/{} as absent
    ("confluent-audit-log", "resourceName"),  # [] or {} are read as absent
}
DELETE, NEWLINE = object(), object()  # NEWLINE: the string with "\n" appended
REPLACEMENTS: list[Any] = [DELETE, NEWLINE, None, 5, -1, 1.5, 3.0, "x", "", True, [], {}, "x" * 300, "a\x01b", "7"]


def paths(node: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield (*at, k)
        yield from paths(v, (*at, k))


def mutated(doc: Any, path: tuple[Any, ...], replacement: Any) -> Any:
    out = copy.deepcopy(doc)
    parent = out
    for k in path[:-1]:
        parent = parent[k]
    if replacement is DELETE:
        del parent[path[-1]]
    elif replacement is NEWLINE:
        if not isinstance(parent[path[-1]], str):
            return None
        parent[path[-1]] += "\n"
    else:
        parent[path[-1]] = replacement
    return out


def mutation_bases() -> list[tuple[str, Any, Limits]]:
    lim = limits()
    return [
        ("proxy-audit", proxy_good(), lim),
        ("proxy-audit", proxy_good(type="io.streamtoll.kafka.metadata"), lim),
        *(("confluent-audit-log", json.loads(line), lim) for line in (SAMPLES / "confluent-audit.jsonl").open()),
        ("confluent-audit-log", audit_authz(resourceType="Cluster", resourceName="crn:///kafka=x/topic=o"), lim),
        ("broker-metrics-otlp", json.loads((SAMPLES / "broker-metrics.json").read_text()), limits(SAMPLE_METRICS_NOW)),
        ("broker-metrics-otlp", otlp_good(), lim),
    ]


@pytest.mark.parametrize(("kind", "base", "lim"), mutation_bases(), ids=lambda v: v if isinstance(v, str) else "")
def test_mutations_get_the_same_verdict_from_schema_and_decoder(kind: str, base: Any, lim: Limits) -> None:
    assert decode(kind, json.dumps(base).encode(), lim) in ("counted", "ignored") and valid(kind, base)
    disagree = []
    checked = 0
    for path in paths(base):
        field = next((k for k in reversed(path) if isinstance(k, str)), "")
        for replacement in REPLACEMENTS:
            doc = mutated(base, path, replacement)
            if doc is None:
                continue
            got, ok = decode(kind, json.dumps(doc).encode(), lim), valid(kind, doc)
            checked += 1
            if got == ("rejected", "schema") and ok:
                disagree.append(("decoder rejects as schema, schema accepts", path, replacement))
            elif got in ("counted", "ignored") and not ok and (kind, field) not in STRICTER:
                disagree.append(("decoder reads, schema rejects", path, replacement))
    assert checked > 100
    assert not disagree, disagree[:10]


# --- output side -------------------------------------------------------------------------------


def props(name: str, *at: str) -> set[str]:
    node = schema(name)
    for k in at:
        node = node["properties"][k]
    return set(node["properties"])


def test_output_schemas_declare_exactly_the_contract_fields() -> None:
    for name, cls in (("usage-window", UsageWindow), ("usage-minute", UsageMinute)):
        declared = {f.name for f in fields(cls)}
        assert props(name) == declared == set(schema(name)["required"]), name
    assert props("dlq-record") == set(DlqRecord.__annotations__)
    assert set(schema("dlq-record")["required"]) == DlqRecord.__required_keys__
    assert props("dlq-record", "source") == set(DlqSource.__annotations__)
    assert props("dlq-record", "value_truncated") == set(DlqTruncation.__annotations__)
    assert schema("dlq-record")["properties"]["reason"]["enum"] == list(DLQ_REASONS)
    for name in ("usage-window", "usage-minute"):
        assert schema(name)["properties"]["source"]["enum"] == list(SOURCES)


def test_decoders_use_only_the_contract_reasons() -> None:
    used: set[str] = set()
    for path in (ROOT / "metering").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("Invalid", "Rejection")
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                used.add(node.args[0].value)
    assert used == set(DLQ_REASONS)


def worker_batches(tmp_limit: int) -> Iterator[tuple[str, list[ck.Message], Limits]]:
    """Batches of every kind as the engine gets them: good, retried, bad, binary, tombstones."""
    tr = Traffic.make(NOW.timestamp(), ("proxy-audit", "broker-metrics", "confluent-audit-log-events"), n_proxy=800)
    by_topic: dict[str, list[ck.Message]] = {}
    for topic, key, value in tr.records:
        batch = by_topic.setdefault(topic, [])
        headers = None
        if topic != "broker-metrics" and value and len(batch) % 3 == 1:
            try:
                doc = json.loads(value)
            except (ValueError, RecursionError):
                doc = None
            if isinstance(doc, dict) and "data" in doc:
                value, headers = binary(doc)
                if len(batch) % 7 == 1:
                    headers = [h for h in headers if h[0] != "ce_id"]  # a bad binary record
        batch.append(message(topic, 0, len(batch), value, key, headers))
    big = b'{"specversion":"1.0","pad":"' + b"x" * (tmp_limit * 2) + b'"}'
    by_topic["proxy-audit"].append(message("proxy-audit", 0, len(by_topic["proxy-audit"]), big, b"k"))
    for topic, batch in by_topic.items():
        yield topic, batch, limits()


def test_records_built_by_the_worker_satisfy_the_output_schemas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(contracts, "DLQ_VALUE_LIMIT", 64)  # so a small record shows the truncation fields
    counts: dict[str, int] = {}
    truncated = with_headers = 0
    for topic, batch, lim in worker_batches(64):
        out = publish(topic, 0, batch, lim)
        for name in OUTPUTS:
            for doc, key in out.get(name, []):
                counts[name] = counts.get(name, 0) + 1
                errors = [e.message for e in validator(name).iter_errors(doc)]
                assert not errors, (name, errors[:3], doc)
                assert set(schema(name)["required"]) <= set(doc) <= props(name), doc
                if name == "usage-window":
                    assert UsageWindow.from_json(json.dumps(doc)) == UsageWindow(**doc)
                    assert json.loads(key or b"") == [
                        *(doc[k] for k in ("source", "principal", "client_id", "virtual_cluster", "topic")),
                        doc["direction"],
                        int(datetime.fromisoformat(doc["window_start"]).timestamp() * 1000),
                        doc["shard"],
                    ]
                elif name == "usage-minute":
                    assert UsageMinute.from_json(json.dumps(doc)) == UsageMinute(**doc)
                    assert contracts.apply_minute(None, doc) is not None
                else:
                    truncated += "value_truncated" in doc
                    with_headers += bool(doc["headers"])
    assert counts["usage-window"] > 50 and counts["usage-minute"] > 50 and counts["dlq-record"] > 10
    assert truncated >= 1 and with_headers >= 1


def test_the_episode_example_is_what_a_gateway_publishes() -> None:
    from metering.entitlements import decode_episode, encode_episode

    example = next(e for r, e in doc_examples() if r == "enforcement-episode.schema.json")
    episode = decode_episode(json.dumps(example).encode())
    assert json.loads(encode_episode(episode)) == example
    assert episode.id.endswith(f"/{int(episode.started.timestamp() * 1000)}")
    assert episode.ended is not None and episode.started <= episode.ended <= episode.updated


def test_episodes_the_gateway_builds_satisfy_their_schema() -> None:
    from gateway.episodes import Episodes
    from metering.entitlements import Decision, encode_episode

    sent: list[bytes] = []
    episodes = Episodes("gw-1:19092", lambda e: sent.append(encode_episode(e)))
    at = datetime(2026, 12, 7, 12, tzinfo=UTC)
    block = Decision("acme", "consume_records", "2026-12", "block", 11, 10, at, at)
    episodes.throttled("acme", "requests", 20.0, None)
    episodes.held("acme", "requests", 0.25, 0.0)
    episodes.blocked("acme", block)
    episodes.refused("acme", block)
    episodes.close_all()
    assert len(sent) == 4
    for raw in sent:
        assert valid("enforcement-episode", json.loads(raw)), raw
