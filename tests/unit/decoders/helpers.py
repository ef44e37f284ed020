from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from metering.decoders.common import Limits

NOW = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
# Kafka timestamps of test records: relative to NOW (a shard judges event times by them)
TS0 = int(NOW.timestamp() * 1000)


def limits(now: datetime = NOW, lateness_days: int = 35, future_s: int = 300, max_bytes: int = 2**31) -> Limits:
    return Limits(int(now.timestamp() * 1000), lateness_days * 86_400_000, future_s * 1000, max_bytes)


def binary(doc: dict[str, Any]) -> tuple[bytes, list[tuple[str, bytes | None]]]:
    """A structured CloudEvent as the same event in binary content mode (Kafka protocol binding):
    every attribute in a ``ce_<name>`` header, ``datacontenttype`` as ``content-type``, the
    value is ``data`` alone (empty when there is none)."""
    headers: list[tuple[str, bytes | None]] = []
    for name, v in doc.items():
        if name == "data":
            continue
        header = "content-type" if name == "datacontenttype" else f"ce_{name}"
        headers.append((header, None if v is None else (v if isinstance(v, str) else json.dumps(v)).encode()))
    value = json.dumps(doc["data"]).encode() if "data" in doc else b""
    return value, headers
