from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from metering.decoders import confluent_audit
from metering.decoders.common import Invalid
from metering.domain.events import UsageEvent

from .helpers import limits


def sample_docs(samples: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (samples / "confluent-audit.jsonl").read_text().splitlines()]


def dec(doc: dict[str, Any]) -> UsageEvent | str:
    return confluent_audit.decode(json.dumps(doc).encode(), limits())


def test_samples(samples: Path) -> None:
    produce, denied = (dec(d) for d in sample_docs(samples))
    assert isinstance(produce, UsageEvent) and isinstance(denied, UsageEvent)
    assert (produce.principal, produce.client_id, produce.topic, produce.direction) == (
        "User:acme-orders",
        "orders-svc-7",
        "orders",
        "produce",
    )
    assert (produce.requests, produce.denied_requests, produce.bytes, produce.records) == (1, 0, 0, 0)
    assert (denied.principal, denied.topic, denied.direction) == ("User:globex-analytics", "payroll", "consume")
    assert (denied.requests, denied.denied_requests) == (0, 1)  # denied: counted apart, never billed


def test_drift(samples: Path) -> None:
    doc = sample_docs(samples)[0]
    drifted = copy.deepcopy(doc)
    drifted["specversion"] = "0.3"
    drifted["data"]["methodName"] = "KAFKA.PRODUCE"
    drifted["data"]["request"] = {"clientId": "orders-svc-7"}
    a, b = dec(doc), dec(drifted)
    assert isinstance(a, UsageEvent) and isinstance(b, UsageEvent)
    assert a._replace(event_key=b"") == b._replace(event_key=b"") or a == b


def test_topic_from_crn_when_resource_is_not_a_topic(samples: Path) -> None:
    doc = sample_docs(samples)[0]
    doc["data"]["authorizationInfo"]["resourceType"] = "Cluster"
    doc["data"]["authorizationInfo"]["resourceName"] = "crn:///kafka=abc/topic=payments"
    ev = dec(doc)
    assert isinstance(ev, UsageEvent) and ev.topic == "payments"


@pytest.mark.parametrize("method", ["kafka.FetchFollower", "kafka.Metadata", "kafka.CreateTopics"])
def test_ignored_methods(samples: Path, method: str) -> None:
    doc = sample_docs(samples)[0]
    doc["data"]["methodName"] = method
    assert dec(doc) == method


def test_fetch_is_consume(samples: Path) -> None:
    doc = sample_docs(samples)[0]
    doc["data"]["methodName"] = "kafka.Fetch"
    ev = dec(doc)
    assert isinstance(ev, UsageEvent) and ev.direction == "consume"


def test_other_event_types_ignored(samples: Path) -> None:
    doc = sample_docs(samples)[0]
    doc["type"] = "io.confluent.kafka.server/authentication"
    assert dec(doc) == "io.confluent.kafka.server/authentication"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["data"]["authorizationInfo"].pop("granted"),
        lambda d: d["data"].__setitem__("authorizationInfo", "yes"),
        lambda d: d["data"].pop("methodName"),
        lambda d: d.pop("id"),
        lambda d: d.__setitem__("time", "yesterday"),
        lambda d: d["data"]["authorizationInfo"].update(resourceType="Group", resourceName="g1"),
    ],
)
def test_malformed(samples: Path, mutate: Any) -> None:
    doc = sample_docs(samples)[0]
    doc["data"].pop("resourceName", None)
    mutate(doc)
    with pytest.raises(Invalid) as exc:
        dec(doc)
    assert exc.value.rejection.reason == "schema"


def test_missing_principal_is_unknown(samples: Path) -> None:
    doc = sample_docs(samples)[0]
    del doc["data"]["authenticationInfo"]
    ev = dec(doc)
    assert isinstance(ev, UsageEvent) and ev.principal == "unknown"
