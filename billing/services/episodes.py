"""The throttles and blocks the gateways applied to an account, as partners read them in
``GET /v1/entitlements`` (this month's) and in the statement (the period's).

The usage sink keeps each episode's newest record in ``enforcement_episodes``
(:func:`billing.adapters.sink.upsert_episodes`); this reads them back. An episode belongs to a
period when it overlaps it: started before the period's end and ended (or was last heard of) at or
after its start. An open episode whose gateway has not refreshed it for two minutes (the gateway
died without draining) is shown as ended at its last update (``ended_by``
:meth:`metering.entitlements.Episode.ended_by`). ``duration_seconds`` is from its start to its end
(an open one's: to now).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from billing.adapters.uow import UnitOfWork
from billing.services.ports import EpisodeReads
from metering.entitlements import Episode

__all__ = ["STALE_AFTER_S", "episode_doc", "episode_docs", "episodes_between"]

STALE_AFTER_S = 120.0  # an open episode not refreshed for this long ended at its last update


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def episode_doc(e: Episode, now: datetime) -> dict[str, Any]:
    """One episode as partners read it (JSON-ready)."""
    ended = e.ended_by(now, STALE_AFTER_S)
    return {
        "id": e.id,
        "kind": e.kind,
        "direction": e.direction,
        "cause": e.cause,
        "meter": e.meter,
        "reason": e.reason,
        "limit_per_second": e.limit,
        "started_at": _iso(e.started),
        "ended_at": None if ended is None else _iso(ended),
        "open": ended is None,
        "duration_seconds": round(max(0.0, ((ended or now) - e.started).total_seconds()), 3),
        "held_seconds": round(e.held_seconds, 3),
        "requests": e.requests,
        "gateway": e.gateway,
        "updated_at": _iso(e.updated),
    }


def episode_docs(
    episodes: EpisodeReads, account: str, start: datetime, end: datetime, now: datetime
) -> list[dict[str, Any]]:
    """``account``'s episodes overlapping ``[start, end)``, oldest first (as of ``now``)."""
    docs = []
    for e in episodes.overlapping(account, start, end):
        ended = e.ended_by(now, STALE_AFTER_S)
        if ended is not None and ended < start:  # ended by staleness before the period
            continue
        docs.append(episode_doc(e, now))
    return docs


def episodes_between(
    engine: Engine, account: str, start: datetime, end: datetime, now: datetime | None = None
) -> list[dict[str, Any]]:
    """``account``'s episodes overlapping ``[start, end)``, oldest first."""
    now = now or datetime.now(UTC)
    with UnitOfWork(engine) as uow:
        return episode_docs(uow.episodes, account, start, end, now)
