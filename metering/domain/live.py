"""Folding per-minute partial sums into live one-minute totals, idempotently.

A partial (``metering.contracts.UsageMinute``) says: input partition ``shard`` added these sums to
this (window key, minute) in the batch that ended at input ``offset``. A live total remembers,
per shard, the highest offset it has applied, so a partial delivered twice (at-least-once
consumption, a rebalance, a restart) is applied once. Value and watermark are one value, so they
travel in one changelog record of whatever table holds them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LiveTotal", "apply_partial", "empty"]

LiveTotal = dict[str, Any]  # {"bytes", "records", "requests", "denied_requests", "applied": {shard: offset}}


def empty() -> LiveTotal:
    return {"bytes": 0, "records": 0, "requests": 0, "denied_requests": 0, "applied": {}}


def apply_partial(current: LiveTotal | None, partial: dict[str, Any]) -> LiveTotal | None:
    """The total with ``partial`` applied, or None when it was applied before (a replay)."""
    base = current if current is not None else empty()
    shard, offset = partial["shard"], int(partial["offset"])
    if offset <= base["applied"].get(shard, -1):
        return None
    return {
        "bytes": base["bytes"] + int(partial["bytes"]),
        "records": base["records"] + int(partial["records"]),
        "requests": base["requests"] + int(partial["requests"]),
        "denied_requests": base["denied_requests"] + int(partial["denied_requests"]),
        "applied": {**base["applied"], shard: offset},
    }
