"""The catalog repository: accounts, plan versions, subscriptions and attribution rules, as
billing runs, previews and reports read them (loading the catalog is :mod:`billing.services.catalog`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from billing.adapters.models import AccountRow, ClientRuleRow, CredentialRow, PlanVersionRow, SubscriptionRow
from billing.domain.accounts import Attributor, ClientRule
from billing.domain.invoicing import AccountTerms, Subscription
from billing.domain.plan_documents import plan_from_document
from billing.domain.plans import PlanVersion

__all__ = ["CatalogRepository"]


def _terms(r: Any) -> AccountTerms:
    return AccountTerms(r.code, r.currency, r.tax_rate, r.name, r.email, tuple(r.address))


class CatalogRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def accounts(self) -> dict[str, AccountTerms]:
        return {r.code: _terms(r) for r in self.conn.execute(select(AccountRow)).all()}

    def account(self, code: str) -> AccountTerms:
        return _terms(self.conn.execute(select(AccountRow).where(AccountRow.code == code)).one())

    def plan_versions(self) -> dict[tuple[str, int], PlanVersion]:
        return {
            (r.plan_code, r.version): plan_from_document(r.version, r.document)
            for r in self.conn.execute(select(PlanVersionRow)).all()
        }

    def subscriptions(self) -> list[Subscription]:
        return [
            Subscription(s.account_code, s.starts_on, s.ends_on, s.plan_code, s.plan_version)
            for s in self.conn.execute(select(SubscriptionRow).order_by(SubscriptionRow.starts_on)).all()
        ]

    def credential_principals(self) -> dict[str, str]:
        """principal → account of every credential ever issued (revoked ones too: their past
        traffic stays theirs)."""
        return {
            "User:" + r.username: r.account_code
            for r in self.conn.execute(select(CredentialRow.username, CredentialRow.account_code))
        }

    def attributor(self) -> Attributor:
        """The attribution rules as stored, in their stated order (accounts by position), and the
        principals of the credentials streamtoll issued (each its account's, before any rule)."""
        credentials = self.credential_principals()
        rows = self.conn.execute(
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
