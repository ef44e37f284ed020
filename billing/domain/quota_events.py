"""Quota events: the webhook events a gateway's throttle or block of an account emits (pure).

An enforcement episode (:class:`metering.entitlements.Episode`, stored by the usage sink) emits

* ``quota.throttled`` (a throttle) or ``quota.blocked`` (a block) once, in the transaction that
  first stores any record of it;
* ``quota.released`` once, in the transaction that first stores a record of it with its end.

An episode first seen already ended (short, or its open record lost) emits both, its start's
first. A record delivered again, late or out of order emits nothing more. An episode that never
gets an end (its gateway died without draining; partners see it ended at its last update) emits
no ``quota.released``. Episodes stored before migration 0019 emit nothing.

The ``data`` is the episode as partners see it in ``GET /v1/entitlements``: who applied it
(``gateway``), what (``kind``, ``direction``, ``cause``: ``quota`` for a plan's rate limit,
``cap`` for a monthly cap, then ``meter`` names it), the limit held to (``limit_per_second``,
bytes or requests a second, for a throttle), why (``reason``: a cap's carries its usage and
what is included), since when (``started_at``) and, once released, until when (``ended_at``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = ["QUOTA_EVENT_OF_KIND", "RELEASED", "quota_event_data", "quota_event_types"]

QUOTA_EVENT_OF_KIND: Mapping[str, str] = {"throttle": "quota.throttled", "block": "quota.blocked"}
RELEASED = "quota.released"


def quota_event_types(kind: str, ended: bool) -> tuple[str, ...]:
    """The events a record of an episode of ``kind`` may emit (each at most once an episode)."""
    if kind not in QUOTA_EVENT_OF_KIND:
        raise ValueError(f"unknown enforcement episode kind {kind!r}")
    return (QUOTA_EVENT_OF_KIND[kind], RELEASED) if ended else (QUOTA_EVENT_OF_KIND[kind],)


def _instant(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def quota_event_data(
    *,
    episode_id: str,
    gateway: str,
    kind: str,
    direction: str,
    cause: str,
    reason: str,
    limit: int | None,
    meter: str | None,
    started: datetime,
    ended: datetime | None,
) -> dict[str, Any]:
    """The ``data`` of a quota event: ``{"episode": {…}}`` (``ended_at`` null until released)."""
    return {
        "episode": {
            "id": episode_id,
            "gateway": gateway,
            "kind": kind,
            "direction": direction,
            "cause": cause,
            "meter": meter,
            "limit_per_second": limit,
            "reason": reason,
            "started_at": _instant(started),
            "ended_at": _instant(ended),
        }
    }
