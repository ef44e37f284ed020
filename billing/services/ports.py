"""The ports billing's services work through: repositories and the unit of work, as Protocols.

The SQL implementations are in :mod:`billing.adapters.repositories` (each a class built from one
SQLAlchemy ``Connection``) and :class:`billing.adapters.uow.UnitOfWork` (one connection, one
transaction); the unit tests use in-memory fakes (``tests/unit/billing/fakes.py``). Records that
cross a port are typed: :class:`~billing.domain.usage.UsageRow`, the catalog's
:class:`~billing.domain.invoicing.AccountTerms` and :class:`~billing.domain.invoicing.Subscription`,
and the invoice records below. Dicts cross only as JSON documents (usage reports, statements,
invoice snapshots).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, Protocol

from billing.domain.accounts import Attributor
from billing.domain.invoicing import AccountTerms, PricedLine, Subscription
from billing.domain.plans import PlanVersion
from billing.domain.usage import UsageRow

__all__ = [
    "CatalogRepository",
    "DraftValues",
    "FinalizedPeriod",
    "InvoiceRecord",
    "InvoiceRepository",
    "StatementMarks",
    "StatementRepository",
    "UnitOfWork",
    "UnitsOfWork",
    "UsageRepository",
]


class UsageRepository(Protocol):
    def rows(
        self, start: datetime, end: datetime, attributor: Attributor, account: str | None = None, hourly: bool = False
    ) -> list[UsageRow]:
        """Attributed rows in ``[start, end)``, one per identity, topic, direction, source and day
        (or hour); only ``account``'s when given."""
        ...

    def account_groups(
        self,
        attributor: Attributor,
        account: str,
        start: date,
        end: date,
        groupings: dict[str, tuple[tuple[str, ...], int]],
    ) -> dict[str, list[dict[str, Any]]]:
        """One account's usage in the whole UTC days ``[start, end)`` in each grouping (name →
        fields, GROUPING mask), summed over that account's identities only."""
        ...

    def account_report(
        self, attributor: Attributor, account: str, start: datetime, end: datetime, group_by: Sequence[str]
    ) -> list[dict[str, Any]]:
        """One account's usage in ``[start, end)`` grouped by ``group_by``, reading only its own rows."""
        ...


class CatalogRepository(Protocol):
    def accounts(self) -> dict[str, AccountTerms]: ...

    def account(self, code: str) -> AccountTerms:
        """One account (it exists: an invoice names it)."""
        ...

    def plan_versions(self) -> dict[tuple[str, int], PlanVersion]: ...

    def subscriptions(self) -> list[Subscription]:
        """Every subscription, in start order."""
        ...

    def attributor(self) -> Attributor:
        """The client rules in their stated order and the principals of issued credentials."""
        ...


@dataclass(frozen=True)
class InvoiceRecord:
    """An invoice as stored (``snapshot``: the frozen document once finalized)."""

    id: int
    account_code: str
    period_start: date
    period_end: date
    kind: str
    status: str
    number: str | None
    currency: str
    tax_rate: Decimal
    subtotal: Decimal
    tax: Decimal
    total: Decimal
    plan_code: str | None = None
    plan_version: int | None = None
    snapshot: dict[str, Any] | None = None
    pdf: bytes | None = None
    void_reason: str | None = None


@dataclass(frozen=True)
class DraftValues:
    """What a billing run writes on a draft invoice (its lines apart)."""

    currency: str
    tax_rate: Decimal
    subtotal: Decimal
    tax: Decimal
    total: Decimal
    plan_code: str | None
    plan_version: int | None
    updated_at: datetime


@dataclass(frozen=True)
class FinalizedPeriod:
    """A finalized standard invoice of a past period and the sum of its own lines (not the
    adjustments it carried for earlier periods)."""

    period_start: date
    period_end: date
    number: str
    own: Decimal


class InvoiceRepository(Protocol):
    def lock_run(self, account: str, period_start: date) -> None:
        """Wait for and hold (until the transaction ends) the lock of one billing run per account and period."""
        ...

    def current(self, account: str, period_start: date) -> InvoiceRecord | None:
        """The account's live (not void) standard invoice of the period, locked for update."""
        ...

    def insert_draft(self, account: str, start: date, end: date, values: DraftValues) -> int: ...

    def update_draft(self, invoice_id: int, values: DraftValues) -> None: ...

    def replace_lines(self, invoice_id: int, lines: Sequence[PricedLine], start: date, end: date) -> int:
        """Replace the invoice's lines by ``lines`` (positions in order); returns how many."""
        ...

    def finalized_periods(self, account: str, before: date) -> list[FinalizedPeriod]:
        """The account's finalized standard invoices of periods before ``before``, oldest first."""
        ...

    def finalized_adjustments(self, account: str, period: str) -> Decimal:
        """The sum of the finalized adjustment lines naming ``period`` (``2026-11``)."""
        ...

    def find(self, ref: str | int, for_update: bool = False) -> InvoiceRecord:
        """The invoice ``ref`` names (``draft-<id>``, a number; an int is an id);
        :class:`~billing.errors.InvoiceNotFound` when none."""
        ...

    def lines(self, invoice_id: int) -> list[dict[str, Any]]:
        """The lines as stored, in order, numbers still ``Decimal``."""
        ...

    def allocate_number(self, prefix: str, year: int) -> str: ...

    def mark_finalized(
        self,
        invoice_id: int,
        number: str,
        snapshot: dict[str, Any],
        html: str | None,
        pdf: bytes | None,
        issued: date,
        due: date,
        now: datetime,
    ) -> None: ...

    def mark_void(self, invoice_id: int, reason: str, now: datetime) -> None: ...

    def listing(
        self,
        period_start: date | None,
        account: str | None,
        status: str | None,
        drafts: bool,
        after: tuple[date, str, int] | None,
        limit: int | None,
    ) -> list[InvoiceRecord]:
        """Invoices ordered by (period start, account, id), filtered, the first ``limit`` after ``after``."""
        ...

    def ids_not_draft(self, period_start: date) -> list[int]: ...

    def without_documents(self, invoice_ids: list[int] | None) -> list[tuple[int, dict[str, Any]]]:
        """(id, snapshot) of the finalized invoices (of ``invoice_ids``, or all) with no stored PDF."""
        ...

    def store_documents(self, invoice_id: int, html: str, pdf: bytes) -> int:
        """Store the documents unless some are stored already; returns 1 if stored, else 0."""
        ...


@dataclass(frozen=True)
class StatementMarks:
    """The period's current usage and catalog marks, and the stored statement (if any) with the
    marks it was computed from."""

    usage_mark: int
    catalog_mark: int | None
    stored_usage: int | None
    stored_catalog: int | None
    doc_version: int | None
    sources: str | None
    computed_at: datetime | None
    body: str | None
    revision: int | None
    pdf: bytes | None


class StatementRepository(Protocol):
    def marks(self, account: str, period: str, month: date, with_pdf: bool) -> StatementMarks: ...

    def store(
        self,
        account: str,
        period: str,
        usage_mark: int,
        catalog_mark: int | None,
        doc_version: int,
        sources: str,
        computed_at: datetime,
        body: str,
    ) -> int | None:
        """Store a computed statement unless a newer one is stored; its revision (None: not stored)."""
        ...

    def stored_pdf(self, account: str, period: str, revision: int) -> bytes | None: ...

    def keep_pdf(self, account: str, period: str, revision: int, pdf: bytes) -> None: ...


class UnitOfWork(Protocol):
    """One transaction over the repositories: committed when the ``with`` block ends normally."""

    @property
    def usage(self) -> UsageRepository: ...

    @property
    def catalog(self) -> CatalogRepository: ...

    @property
    def invoices(self) -> InvoiceRepository: ...

    @property
    def statements(self) -> StatementRepository: ...

    def __enter__(self) -> UnitOfWork: ...

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None: ...


UnitsOfWork = Callable[[], UnitOfWork]
"""Makes a new unit of work (``lambda: UnitOfWork(engine)``, or a fake's)."""
