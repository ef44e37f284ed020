"""The catalog repository: accounts, client rules, subscriptions, plans and their versions in
PostgreSQL — as billing runs, previews and reports read them (typed: ``AccountTerms``,
``Subscription``, ``PlanVersion``, the ``Attributor``), and as loading and listing the catalog
(:mod:`billing.services.catalog`) and the entitlements read and write them."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import Connection, and_, delete, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert

from billing.adapters.models import AccountRow, ClientRuleRow, CredentialRow, PlanRow, PlanVersionRow, SubscriptionRow
from billing.domain.accounts import Attributor, ClientRule
from billing.domain.invoicing import AccountTerms, Subscription
from billing.domain.plan_documents import plan_from_document
from billing.domain.plans import PlanVersion
from billing.services.ports import (
    AccountPlanDoc,
    AccountState,
    AccountSummary,
    ClientRuleState,
    PlanHead,
    PlanSummary,
)

__all__ = ["CatalogRepository", "account_exists"]


def account_exists(conn: Connection, code: str) -> bool:
    return conn.execute(select(AccountRow.code).where(AccountRow.code == code)).first() is not None


def _in_force(on: date) -> Any:
    """The subscription of the joined account in force on the UTC day ``on``."""
    sub = SubscriptionRow
    return and_(sub.account_code == AccountRow.code, sub.starts_on <= on, or_(sub.ends_on.is_(None), sub.ends_on > on))


def _terms(r: Any) -> AccountTerms:
    return AccountTerms(r.code, r.currency, r.tax_rate, r.name, r.email, tuple(r.address))


class CatalogRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def accounts(self) -> dict[str, AccountTerms]:
        return {r.code: _terms(r) for r in self._conn.execute(select(AccountRow)).all()}

    def account(self, code: str) -> AccountTerms:
        return _terms(self._conn.execute(select(AccountRow).where(AccountRow.code == code)).one())

    def plan_versions(self) -> dict[tuple[str, int], PlanVersion]:
        return {
            (r.plan_code, r.version): plan_from_document(r.version, r.document)
            for r in self._conn.execute(select(PlanVersionRow)).all()
        }

    def subscriptions(self) -> list[Subscription]:
        return [
            Subscription(s.account_code, s.starts_on, s.ends_on, s.plan_code, s.plan_version)
            for s in self._conn.execute(select(SubscriptionRow).order_by(SubscriptionRow.starts_on)).all()
        ]

    def credential_principals(self) -> dict[str, str]:
        """principal → account of every credential ever issued (revoked ones too: their past
        traffic stays theirs)."""
        return {
            "User:" + r.username: r.account_code
            for r in self._conn.execute(select(CredentialRow.username, CredentialRow.account_code))
        }

    def attributor(self) -> Attributor:
        """The attribution rules as stored, in their stated order (accounts by position), and the
        principals of the credentials streamtoll issued (each its account's, before any rule)."""
        credentials = self.credential_principals()
        rows = self._conn.execute(
            select(ClientRuleRow)
            .join(AccountRow, AccountRow.code == ClientRuleRow.account_code)
            .order_by(AccountRow.position, AccountRow.code, ClientRuleRow.position)
        )
        return Attributor(
            [
                (r.account_code, ClientRule(r.principal, r.client_id, r.virtual_cluster, r.valid_from, r.valid_until))
                for r in rows
            ],
            credentials,
        )

    # --- loading and listing (billing.services.catalog) ---

    def accounts_with_plans(self, on: date, account: str | None = None) -> list[AccountPlanDoc]:
        sub = SubscriptionRow
        query = (
            select(AccountRow.code, AccountRow.access, sub.plan_code, sub.plan_version, PlanVersionRow.document)
            .outerjoin(sub, _in_force(on))
            .outerjoin(
                PlanVersionRow,
                and_(PlanVersionRow.plan_code == sub.plan_code, PlanVersionRow.version == sub.plan_version),
            )
            .order_by(AccountRow.position, AccountRow.code, sub.starts_on.desc())
        )
        if account is not None:
            query = query.where(AccountRow.code == account)
        return [
            AccountPlanDoc(r.code, r.access, r.plan_code, r.plan_version, r.document)
            for r in self._conn.execute(query).all()
        ]

    def account_summaries(self, on: date) -> list[AccountSummary]:
        rules = (
            select(ClientRuleRow.account_code, func.count().label("n")).group_by(ClientRuleRow.account_code).subquery()
        )
        sub = SubscriptionRow
        a = AccountRow
        query = (
            select(a.code, a.name, a.email, a.currency, a.tax_rate, rules.c.n, sub.plan_code, sub.plan_version)
            .outerjoin(rules, rules.c.account_code == AccountRow.code)
            .outerjoin(sub, _in_force(on))
            .order_by(AccountRow.position, AccountRow.code)
        )
        return [
            AccountSummary(
                r.code,
                r.name,
                r.email,
                r.currency,
                r.tax_rate,
                r.n or 0,
                None if r.plan_code is None else f"{r.plan_code} v{r.plan_version}",
            )
            for r in self._conn.execute(query).all()
        ]

    def plan_summaries(self) -> list[PlanSummary]:
        v = PlanVersionRow
        latest = (
            select(v.plan_code, func.max(v.version).label("latest"), func.count().label("n"))
            .group_by(v.plan_code)
            .subquery()
        )
        query = (
            select(PlanRow.code, PlanRow.name, latest.c.latest, latest.c.n, v.currency)
            .join(latest, latest.c.plan_code == PlanRow.code)
            .join(v, and_(v.plan_code == PlanRow.code, v.version == latest.c.latest))
            .order_by(PlanRow.code)
        )
        return [PlanSummary(r.code, r.name, r.latest, r.currency, r.n) for r in self._conn.execute(query).all()]

    # --- accounts and subscriptions ---

    def latest_versions(self) -> dict[str, int]:
        latest: dict[str, int] = {}
        for code, version in self._conn.execute(select(PlanVersionRow.plan_code, PlanVersionRow.version)).all():
            latest[code] = max(version, latest.get(code, 0))
        return latest

    def account_state(self, code: str) -> tuple[AccountState | None, list[ClientRuleState]]:
        a = AccountRow
        row = self._conn.execute(
            select(a.name, a.email, a.currency, a.tax_rate, a.address, a.access).where(a.code == code)
        ).first()
        c = ClientRuleRow
        rules = self._conn.execute(
            select(c.principal, c.client_id, c.virtual_cluster, c.valid_from, c.valid_until)
            .where(c.account_code == code)
            .order_by(c.position)
        ).all()
        state = (
            None
            if row is None
            else AccountState(row.name, row.email, row.currency, row.tax_rate, tuple(row.address), row.access)
        )
        return state, [
            ClientRuleState(r.principal, r.client_id, r.virtual_cluster, r.valid_from, r.valid_until) for r in rules
        ]

    def move_account(self, code: str, position: int) -> None:
        self._conn.execute(
            update(AccountRow).where(AccountRow.code == code, AccountRow.position != position).values(position=position)
        )

    def put_account(self, code: str, state: AccountState, position: int, rules: list[ClientRuleState]) -> None:
        values: dict[str, Any] = {
            "name": state.name,
            "email": state.email,
            "currency": state.currency,
            "tax_rate": state.tax_rate,
            "address": list(state.address),
            "access": state.access,
            "position": position,
        }
        stmt = insert(AccountRow).values(code=code, **values)
        self._conn.execute(
            stmt.on_conflict_do_update(index_elements=["code"], set_={**values, "updated_at": stmt.excluded.updated_at})
        )
        self._conn.execute(delete(ClientRuleRow).where(ClientRuleRow.account_code == code))
        if rules:
            self._conn.execute(
                insert(ClientRuleRow),
                [
                    {
                        "principal": r.principal,
                        "client_id": r.client_id,
                        "virtual_cluster": r.virtual_cluster,
                        "valid_from": r.valid_from,
                        "valid_until": r.valid_until,
                        "account_code": code,
                        "position": i,
                    }
                    for i, r in enumerate(rules)
                ],
            )

    def subscription(self, account: str, starts_on: date) -> tuple[str, date | None] | None:
        row = self._conn.execute(
            select(SubscriptionRow.plan_code, SubscriptionRow.ends_on).where(
                SubscriptionRow.account_code == account, SubscriptionRow.starts_on == starts_on
            )
        ).first()
        return None if row is None else (row.plan_code, row.ends_on)

    def end_subscription(self, account: str, starts_on: date, ends_on: date | None) -> None:
        self._conn.execute(
            update(SubscriptionRow)
            .where(SubscriptionRow.account_code == account, SubscriptionRow.starts_on == starts_on)
            .values(ends_on=ends_on)
        )

    def start_subscription(
        self, account: str, starts_on: date, ends_on: date | None, plan: str, plan_version: int
    ) -> None:
        stmt = insert(SubscriptionRow).values(
            account_code=account, starts_on=starts_on, ends_on=ends_on, plan_code=plan, plan_version=plan_version
        )
        self._conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["account_code", "starts_on"],
                set_={"plan_code": plan, "plan_version": plan_version, "ends_on": ends_on},
            )
        )
        self._conn.execute(
            update(SubscriptionRow)
            .where(
                SubscriptionRow.account_code == account,
                SubscriptionRow.starts_on < starts_on,
                SubscriptionRow.ends_on.is_(None),
            )
            .values(ends_on=starts_on)
        )

    # --- plans ---

    def lock_plans(self) -> None:
        # two loads at once would both pick the same next version number: one waits here
        self._conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('streamtoll.plans'))"))

    def plan_head(self, code: str) -> PlanHead | None:
        row = self._conn.execute(
            select(PlanVersionRow.version, PlanVersionRow.digest)
            .where(PlanVersionRow.plan_code == code)
            .order_by(PlanVersionRow.version.desc())
            .limit(1)
        ).first()
        return None if row is None else PlanHead(row.version, row.digest)

    def publish_plan(
        self, code: str, name: str, version: int, currency: str, document: dict[str, Any], digest: str
    ) -> None:
        stmt = insert(PlanRow).values(code=code, name=name)
        self._conn.execute(stmt.on_conflict_do_update(index_elements=["code"], set_={"name": name}))
        self._conn.execute(
            insert(PlanVersionRow).values(
                plan_code=code, version=version, currency=currency, document=document, digest=digest
            )
        )
