"""The product repository: streaming API products, their versions and the accounts'
subscriptions to them, in PostgreSQL (migration 0020).

Loads of the product catalog queue on a transaction-scoped advisory lock (two loads of a changed
product never publish the same version twice); a decision on a subscription reads it ``FOR
UPDATE`` (two approvers of one request: the second sees it decided). The unique index on live
subscriptions (requested or active) per account and product refuses a second one.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import Connection, func, insert, select, text, update

from billing.adapters.models import ProductRow, ProductSubscriptionRow, ProductVersionRow
from billing.services.ports import ProductSubscription, ProductVersionRecord

__all__ = ["ProductRepository"]

_V = ProductVersionRow
_S = ProductSubscriptionRow
_VC = tuple(_V.__table__.c)
_SC = tuple(_S.__table__.c)


def _version(r: Any) -> ProductVersionRecord:
    return ProductVersionRecord(
        code=r.product_code,
        version=r.version,
        name=r.name,
        document=dict(r.document),
        schemas=dict(r.schemas),
        digest=r.digest,
        deprecated_until=r.deprecated_until,
        published_at=r.created_at,
    )


def _subscription(r: Any) -> ProductSubscription:
    return ProductSubscription(
        id=r.id,
        account=r.account_code,
        product=r.product_code,
        version=r.product_version,
        status=r.status,
        requested_by=r.requested_by,
        requested_at=r.requested_at,
        decided_by=r.decided_by,
        decided_at=r.decided_at,
        reason=r.reason,
        cancelled_by=r.cancelled_by,
        cancelled_at=r.cancelled_at,
    )


class ProductRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def lock(self) -> None:
        self.conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('streamtoll:products'))"))

    def head(self, code: str) -> ProductVersionRecord | None:
        row = self.conn.execute(
            select(*_VC).where(_V.product_code == code).order_by(_V.version.desc()).limit(1)
        ).first()
        return None if row is None else _version(row)

    def publish(self, record: ProductVersionRecord, position: int) -> None:
        if record.version == 1:
            self.conn.execute(insert(ProductRow).values(code=record.code, position=position))
        self.conn.execute(
            insert(_V).values(
                product_code=record.code,
                version=record.version,
                name=record.name,
                document=record.document,
                schemas=record.schemas,
                digest=record.digest,
                deprecated_until=record.deprecated_until,
            )
        )

    def lock_account(self, account: str) -> None:
        self.conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"product-subscriptions:{account}"})

    def move(self, code: str, position: int) -> None:
        self.conn.execute(
            update(ProductRow).where(ProductRow.code == code, ProductRow.position != position).values(position=position)
        )

    def set_deprecation(self, code: str, version: int, until: date | None) -> bool:
        done = self.conn.execute(
            update(_V)
            .where(_V.product_code == code, _V.version == version, _V.deprecated_until.is_distinct_from(until))
            .values(deprecated_until=until)
        )
        return bool(done.rowcount)

    def version(self, code: str, version: int) -> ProductVersionRecord | None:
        row = self.conn.execute(select(*_VC).where(_V.product_code == code, _V.version == version)).first()
        return None if row is None else _version(row)

    def versions(self, code: str) -> list[ProductVersionRecord]:
        rows = self.conn.execute(select(*_VC).where(_V.product_code == code).order_by(_V.version)).all()
        return [_version(r) for r in rows]

    def heads(self) -> list[ProductVersionRecord]:
        newest = select(_V.product_code, func.max(_V.version).label("version")).group_by(_V.product_code).subquery()
        rows = self.conn.execute(
            select(*_VC)
            .join(newest, (newest.c.product_code == _V.product_code) & (newest.c.version == _V.version))
            .join(ProductRow, ProductRow.code == _V.product_code)
            .order_by(ProductRow.position, ProductRow.code)
        ).all()
        return [_version(r) for r in rows]

    def add_subscription(self, sub: ProductSubscription) -> int:
        values = {
            "account_code": sub.account,
            "product_code": sub.product,
            "product_version": sub.version,
            "status": sub.status,
            "requested_by": sub.requested_by,
            "requested_at": sub.requested_at,
            "decided_by": sub.decided_by,
            "decided_at": sub.decided_at,
            "reason": sub.reason,
            "cancelled_by": sub.cancelled_by,
            "cancelled_at": sub.cancelled_at,
        }
        return int(self.conn.execute(insert(_S).values(**values).returning(_S.id)).scalar_one())

    def save_subscription(self, sub: ProductSubscription) -> None:
        self.conn.execute(
            update(_S)
            .where(_S.id == sub.id)
            .values(
                product_version=sub.version,
                status=sub.status,
                decided_by=sub.decided_by,
                decided_at=sub.decided_at,
                reason=sub.reason,
                cancelled_by=sub.cancelled_by,
                cancelled_at=sub.cancelled_at,
            )
        )

    def subscription(self, sub_id: int, for_update: bool = False) -> ProductSubscription | None:
        stmt = select(*_SC).where(_S.id == sub_id)
        if for_update:
            stmt = stmt.with_for_update()
        row = self.conn.execute(stmt).first()
        return None if row is None else _subscription(row)

    def subscriptions(
        self, account: str | None = None, product: str | None = None, status: str | None = None
    ) -> list[ProductSubscription]:
        stmt = select(*_SC).order_by(_S.id)
        if account is not None:
            stmt = stmt.where(_S.account_code == account)
        if product is not None:
            stmt = stmt.where(_S.product_code == product)
        if status is not None:
            stmt = stmt.where(_S.status == status)
        return [_subscription(r) for r in self.conn.execute(stmt).all()]
