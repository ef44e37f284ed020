"""The normalized usage event every decoder produces, and its dedup key (``docs/formats.md``)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import NamedTuple

import orjson

__all__ = [
    "AUDIT_LOG",
    "BROKER_METRICS",
    "CONSUME",
    "PRODUCE",
    "PROXY",
    "Rejection",
    "UsageEvent",
    "event_key",
]

PROXY = "proxy"
BROKER_METRICS = "broker_metrics"
AUDIT_LOG = "audit_log"
PRODUCE = "produce"
CONSUME = "consume"

FLAG_COUNTER_RESET = "counter_reset"


def event_key(*parts: object) -> bytes:
    """Dedup identity: 16 bytes of BLAKE2b over a JSON array of the parts.

    A JSON array keeps parts apart unambiguously (``["a-b", "c"]`` ≠ ``["a", "b-c"]``);
    128 bits make a collision within any horizon negligible.
    """
    return hashlib.blake2b(orjson.dumps(parts), digest_size=16).digest()


class UsageEvent(NamedTuple):
    """One metered fact: who moved how much, when, on which topic, in which direction."""

    event_key: bytes
    source_kind: str
    occurred_at_ms: int
    principal: str
    client_id: str
    virtual_cluster: str
    topic: str
    direction: str
    bytes: int
    records: int
    requests: int
    denied_requests: int
    flags: tuple[str, ...] = ()

    @property
    def occurred_at(self) -> datetime:
        return datetime.fromtimestamp(self.occurred_at_ms / 1000, tz=UTC)


class Rejection(NamedTuple):
    """Why a record (or one data point of it) cannot be metered: a DLQ reason code and a sentence."""

    reason: str
    detail: str
