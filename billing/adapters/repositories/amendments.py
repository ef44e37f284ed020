"""The amendment repository: corrections of usage, their rows and amounts, in PostgreSQL.

Every table here is append-only (a trigger refuses updates and deletes: migration 0018). The
usage rows an amendment stores are differences; they reach every usage read through the usage
repository (``usage_daily`` by trigger, the hourly reads by ``_hourly_rows``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, func, insert, select, text

from billing.adapters.models import AmendmentAmountRow, AmendmentRow, UsageAmendmentRow
from billing.domain.usage import UsageRow
from billing.errors import AmendmentNotFound
from billing.services.ports import AmendmentAmount, AmendmentRecord

__all__ = ["AmendmentRepository"]


def _order(r: UsageRow) -> tuple[Any, ...]:
    return (r.day, r.source, r.principal, r.client_id, r.virtual_cluster, r.topic, r.direction, r.hour)


class AmendmentRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def lock(self) -> None:
        self.conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('amendments'))"))

    def insert(self, record: AmendmentRecord, rows: Sequence[UsageRow]) -> int:
        amendment_id = int(
            self.conn.execute(
                insert(AmendmentRow)
                .values(
                    kind=record.kind,
                    range_from=record.range_from,
                    range_to=record.range_to,
                    reason=record.reason,
                    actor=record.actor,
                    created_at=record.created_at,
                )
                .returning(AmendmentRow.id)
            ).scalar_one()
        )
        if record.amounts:
            self.conn.execute(
                insert(AmendmentAmountRow),
                [
                    {
                        "amendment_id": amendment_id,
                        "account_code": a.account,
                        "period": a.period,
                        "currency": a.currency,
                        "amount_before": a.amount_before,
                        "amount_after": a.amount_after,
                        "usage": a.usage,
                    }
                    for a in record.amounts
                ],
            )
        if rows:
            self.conn.execute(
                insert(UsageAmendmentRow),
                [
                    {
                        "amendment_id": amendment_id,
                        "source": r.source,
                        "principal": r.principal,
                        "client_id": r.client_id,
                        "virtual_cluster": r.virtual_cluster,
                        "topic": r.topic,
                        "direction": r.direction,
                        "hour": r.hour,
                        "bytes": r.bytes,
                        "records": r.records,
                        "requests": r.requests,
                        "denied_requests": r.denied_requests,
                    }
                    # in key order: concurrent writers of usage_daily take its row locks in one order
                    for r in sorted(rows, key=_order)
                ],
            )
        return amendment_id

    def find(self, amendment_id: int) -> AmendmentRecord:
        found = self._records(AmendmentRow.id == amendment_id)
        if not found:
            raise AmendmentNotFound(f"there is no amendment {amendment_id}")
        return found[0]

    def listing(self) -> list[AmendmentRecord]:
        return self._records(None)

    def _records(self, where: Any) -> list[AmendmentRecord]:
        a = AmendmentRow.__table__.c
        counted = (
            select(func.count())
            .select_from(UsageAmendmentRow)
            .where(UsageAmendmentRow.amendment_id == a.id)
            .scalar_subquery()
        )
        query = select(AmendmentRow.__table__, counted.label("rows")).order_by(a.id)
        if where is not None:
            query = query.where(where)
        heads = self.conn.execute(query).all()
        if not heads:
            return []
        m = AmendmentAmountRow.__table__.c
        amounts: dict[int, list[AmendmentAmount]] = {}
        for r in self.conn.execute(
            select(AmendmentAmountRow.__table__)
            .where(m.amendment_id.in_([h.id for h in heads]))
            .order_by(m.amendment_id, m.account_code, m.period)
        ):
            amounts.setdefault(r.amendment_id, []).append(
                AmendmentAmount(r.account_code, r.period, r.currency, r.amount_before, r.amount_after, list(r.usage))
            )
        return [
            AmendmentRecord(
                h.id, h.kind, h.range_from, h.range_to, h.reason, h.actor, h.created_at, amounts.get(h.id, []), h.rows
            )
            for h in heads
        ]
