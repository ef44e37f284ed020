"""Usage as billing reads it: one typed row per identity, topic, direction, source and day (or hour).

Owns :class:`UsageRow` (what the usage repository produces, attributed to an account) and
:func:`metered_by_source`, which turns rows into the meters rating reads:
account → source → (meter, topic, UTC day) → quantity. Dicts of rows exist only at the edges
(JSON for the API and the CLI: :meth:`UsageRow.as_dict`, :meth:`UsageRow.from_dict`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

__all__ = ["MeterUsage", "UsageRow", "metered_by_source"]

MeterUsage = dict[tuple[str, str, date], int]
"""Quantity per (meter, topic, UTC day), e.g. ``("produce_bytes", "orders", 2026-11-03)``."""


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Attributed usage of one identity, topic, direction and source in one UTC day or hour
    (``hour`` is the bucket's start, ``day`` its UTC date)."""

    source: str
    account: str
    principal: str
    client_id: str
    virtual_cluster: str
    topic: str
    direction: str
    hour: datetime
    day: date
    bytes: int
    records: int
    requests: int
    denied_requests: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ``hour`` as ``2026-11-03T10:00:00Z``, ``day`` as ``2026-11-03``."""
        return {
            "source": self.source,
            "account": self.account,
            "principal": self.principal,
            "client_id": self.client_id,
            "virtual_cluster": self.virtual_cluster,
            "topic": self.topic,
            "direction": self.direction,
            "hour": self.hour.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "day": self.day.isoformat(),
            "bytes": self.bytes,
            "records": self.records,
            "requests": self.requests,
            "denied_requests": self.denied_requests,
        }

    @classmethod
    def from_dict(cls, r: Mapping[str, Any]) -> UsageRow:
        """A row as :meth:`as_dict` wrote it (fields it lacks are empty: a rating row has no identity)."""
        day = r["day"] if isinstance(r["day"], date) else date.fromisoformat(r["day"])
        hour = r.get("hour")
        if hour is None:
            hour = datetime(day.year, day.month, day.day, tzinfo=UTC)
        elif isinstance(hour, str):
            hour = datetime.fromisoformat(hour.replace("Z", "+00:00"))
        return cls(
            source=r["source"],
            account=r["account"],
            principal=r.get("principal", ""),
            client_id=r.get("client_id", ""),
            virtual_cluster=r.get("virtual_cluster", ""),
            topic=r["topic"],
            direction=r["direction"],
            hour=hour,
            day=day,
            bytes=int(r.get("bytes", 0)),
            records=int(r.get("records", 0)),
            requests=int(r.get("requests", 0)),
            denied_requests=int(r.get("denied_requests", 0)),
        )


def metered_by_source(rows: Iterable[UsageRow]) -> dict[str, dict[str, MeterUsage]]:
    """Attributed rows → account → source → (meter, topic, day) → quantity; meters are
    ``{direction}_{bytes,records,requests}`` and zero quantities are left out (denied requests
    are never billed)."""
    out: dict[str, dict[str, MeterUsage]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    for r in rows:
        per = out[r.account][r.source]
        for quantity, value in (("bytes", r.bytes), ("records", r.records), ("requests", r.requests)):
            if value:
                per[(f"{r.direction}_{quantity}", r.topic, r.day)] += value
    return out
