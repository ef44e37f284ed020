"""The gateways' throttles and blocks as the sink keeps them (``enforcement_episodes``): the
:class:`~billing.services.ports.EpisodeReads` port."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, func, or_, select

from billing.adapters.models import EnforcementEpisodeRow
from metering.entitlements import Episode

__all__ = ["EpisodeRepository"]


class EpisodeRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def overlapping(self, account: str, start: datetime, end: datetime) -> list[Episode]:
        t = EnforcementEpisodeRow
        query = (
            select(*t.__table__.columns)
            .where(
                t.account_code == account,
                t.started_at < end,
                or_(func.coalesce(t.ended_at, t.updated_at) >= start, t.ended_at.is_(None)),
            )
            .order_by(t.started_at, t.id)
        )
        return [
            Episode(
                id=r.id,
                gateway=r.gateway,
                account=r.account_code,
                kind=r.kind,
                direction=r.direction,
                cause=r.cause,
                reason=r.reason,
                started=r.started_at,
                updated=r.updated_at,
                ended=r.ended_at,
                held_seconds=r.held_seconds,
                requests=r.requests,
                limit=r.limit_per_second,
                meter=r.meter,
            )
            for r in self._conn.execute(query).all()
        ]
