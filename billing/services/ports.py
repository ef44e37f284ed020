"""The ports billing's services work through: repositories and the unit of work, as Protocols.

The SQL implementations are in :mod:`billing.adapters.repositories` (each a class built from one
SQLAlchemy ``Connection``) and :class:`billing.adapters.uow.UnitOfWork` (one connection, one
transaction); the unit tests use in-memory fakes (``tests/unit/billing/fakes.py``). Records that
cross a port are typed: :class:`~billing.domain.usage.UsageRow`, the catalog's
:class:`~billing.domain.invoicing.AccountTerms` and :class:`~billing.domain.invoicing.Subscription`,
and the invoice records below. Dicts cross only as JSON documents (usage reports, statements,
invoice snapshots).

Two kinds of port live here: the repositories of the run, usage, invoices and statements
(with :class:`UnitOfWork`), and below them the edge services' (keys, credentials, idempotency,
the email outbox, episodes, loading and listing the catalog) with the typed records they
exchange. A repository never commits: the transaction is its caller's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, Protocol

from billing.domain.accounts import Attributor
from billing.domain.credit_notes import OpenCredit
from billing.domain.grants import Grant, RecordedBurn
from billing.domain.invoicing import AccountTerms, PricedLine, Subscription
from billing.domain.plans import PlanVersion
from billing.domain.progressive import ThresholdInvoiced
from billing.domain.usage import UsageRow
from billing.domain.webhooks import WebhookEvent
from metering.entitlements import Episode

__all__ = [
    "AccountPlanDoc",
    "AccountState",
    "AccountSummary",
    "AlertThreshold",
    "AmendmentAmount",
    "AmendmentRecord",
    "AmendmentRepository",
    "ApiKeyRecord",
    "ApiKeys",
    "CatalogReads",
    "CatalogRepository",
    "CatalogWrites",
    "ClientRuleState",
    "CredentialRecord",
    "Credentials",
    "CreditNoteRecord",
    "CreditNoteRepository",
    "DraftValues",
    "EpisodeReads",
    "FinalizedPeriod",
    "GrantRecord",
    "GrantRepository",
    "IdempotencyKeys",
    "IdempotencyRecord",
    "InvoiceRecord",
    "InvoiceRepository",
    "Outbox",
    "OutboxItem",
    "PlanHead",
    "PlanSummary",
    "ProductRepository",
    "ProductSubscription",
    "ProductVersionRecord",
    "StatementMarks",
    "StatementRepository",
    "StoredKey",
    "UnitOfWork",
    "UnitsOfWork",
    "UsageRepository",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookDeliveryView",
    "WebhookEndpoint",
    "WebhookEvents",
    "Webhooks",
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

    def insert_draft(self, account: str, start: date, end: date, values: DraftValues, kind: str = "standard") -> int:
        """A draft of ``kind`` (``standard``; ``threshold``: finalized in the same transaction)."""
        ...

    def update_draft(self, invoice_id: int, values: DraftValues) -> None: ...

    def replace_lines(self, invoice_id: int, lines: Sequence[PricedLine], start: date, end: date) -> int:
        """Replace the invoice's lines by ``lines`` (positions in order); returns how many."""
        ...

    def finalized_periods(self, account: str, before: date) -> list[FinalizedPeriod]:
        """The account's finalized standard invoices of periods before ``before``, oldest first."""
        ...

    def threshold_invoices(self, account: str, period_start: date) -> list[ThresholdInvoiced]:
        """The account's finalized (not void) threshold invoices of the period, in the order issued."""
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


@dataclass(frozen=True)
class CreditNoteRecord:
    """A credit note as stored (``snapshot``: its frozen document; ``lines``: position → net amount
    of the chosen lines, empty for an amount or a full credit)."""

    id: int
    number: str
    invoice_id: int
    invoice_number: str
    account_code: str
    currency: str
    tax_rate: Decimal
    net: Decimal
    tax: Decimal
    total: Decimal
    reason: str
    reason_text: str | None
    settlement: str
    lines: dict[str, str]
    snapshot: dict[str, Any]
    issued_on: date
    html: str | None = None
    pdf: bytes | None = None


class CreditNoteRepository(Protocol):
    def lock_open_credits(self, account: str) -> None:
        """Hold the account's open credits until the transaction ends: billing runs of two
        periods of one account apply them one after the other, never the same credit twice."""
        ...

    def allocate_number(self, year: int) -> int:
        """The next number of the year's sequence, counted in this transaction (no gaps)."""
        ...

    def credited(self, invoice_id: int) -> tuple[Decimal, Decimal]:
        """(total, tax) of the credit notes issued against the invoice so far."""
        ...

    def insert(self, record: CreditNoteRecord) -> int:
        """Store a new credit note (its ``id`` is ignored); returns its id."""
        ...

    def find(self, number: str) -> CreditNoteRecord:
        """The credit note ``number`` names; :class:`~billing.errors.CreditNoteNotFound` when none."""
        ...

    def listing(self, account: str | None, invoice_id: int | None) -> list[CreditNoteRecord]:
        """Credit notes in issue order (without their documents), filtered."""
        ...

    def open_credits(self, account: str, before: date, invoice_id: int | None) -> list[OpenCredit]:
        """The account's credit notes settled as credit, against invoices of periods before
        ``before``, with the net not yet applied on any invoice that is not void (other than
        ``invoice_id``, the one being billed), oldest first; those fully applied are left out."""


@dataclass(frozen=True)
class GrantRecord:
    """A grant as stored: the grant (``grant.voided`` when voided) and its audit trail."""

    grant: Grant
    reason: str
    created_by: str
    created_at: datetime
    voided_at: datetime | None = None
    voided_by: str | None = None
    void_reason: str | None = None


class GrantRepository(Protocol):
    def lock_account(self, account: str) -> None:
        """Hold the account's grants until the transaction ends: billing runs of two periods of
        one account burn them one after the other, never the same units twice."""
        ...

    def insert(self, grant: Grant, reason: str, created_by: str, created_at: datetime) -> int:
        """Store a new grant (its ``id`` is ignored); returns its id."""
        ...

    def find(self, grant_id: int) -> GrantRecord:
        """The grant; :class:`~billing.errors.GrantNotFound` when none."""
        ...

    def void(self, grant_id: int, voided_by: str, reason: str, at: datetime) -> None:
        """Mark the grant voided (it must not be already)."""
        ...

    def listing(self, account: str | None) -> list[GrantRecord]:
        """Grants in the order they were added, filtered by account."""
        ...

    def burns(self, account: str) -> list[RecordedBurn]:
        """What each invoice of the account that is not void burned of its grants (its lines of
        kind ``grant``), in invoice order."""
        ...


@dataclass(frozen=True)
class AmendmentAmount:
    """What an amendment moved in one account's period: its rated amount before tax, and its
    usage per source and direction (``[{"source", "direction", "before": {bytes…}, "after": {…}}]``)."""

    account: str
    period: str
    currency: str
    amount_before: Decimal
    amount_after: Decimal
    usage: list[dict[str, Any]]


@dataclass(frozen=True)
class AmendmentRecord:
    """An amendment as stored (``id`` 0 until stored; ``rows``: how many usage differences)."""

    id: int
    kind: str  # import | remeter
    range_from: datetime
    range_to: datetime
    reason: str
    actor: str
    created_at: datetime
    amounts: list[AmendmentAmount]
    rows: int = 0


class AmendmentRepository(Protocol):
    def lock(self) -> None:
        """Hold every amendment until the transaction ends: two imports compute their
        differences one after the other, never from the same usage."""
        ...

    def insert(self, record: AmendmentRecord, rows: Sequence[UsageRow]) -> int:
        """Store the amendment, its amounts and its usage rows (differences per key and hour; a
        row's ``account`` is not stored); returns its id (``record.id`` is ignored)."""
        ...

    def find(self, amendment_id: int) -> AmendmentRecord:
        """The amendment; :class:`~billing.errors.AmendmentNotFound` when there is none."""
        ...

    def listing(self) -> list[AmendmentRecord]:
        """Every amendment, oldest first, with its amounts."""
        ...


class WebhookEvents(Protocol):
    def emit(self, event: WebhookEvent) -> int:
        """Store the event and queue one delivery of it per active endpoint of its account that
        takes its type (due at once); how many were queued."""
        ...


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

    @property
    def credit_notes(self) -> CreditNoteRepository: ...

    @property
    def grants(self) -> GrantRepository: ...

    @property
    def webhooks(self) -> WebhookEvents: ...

    @property
    def amendments(self) -> AmendmentRepository: ...

    def __enter__(self) -> UnitOfWork: ...

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None: ...


UnitsOfWork = Callable[[], UnitOfWork]
"""Makes a new unit of work (``lambda: UnitOfWork(engine)``, or a fake's)."""


# --- the edge services' ports ---


# --- API keys ---


@dataclass(frozen=True)
class ApiKeyRecord:
    key_id: str
    secret_sha256: str
    role: str
    account: str | None
    created_at: datetime
    revoked_at: datetime | None


class ApiKeys(Protocol):
    def account_exists(self, code: str) -> bool: ...
    def add(self, key_id: str, secret_sha256: str, role: str, account: str | None) -> None: ...
    def get(self, key_id: str) -> ApiKeyRecord | None: ...
    def revoke(self, key_id: str, at: datetime) -> bool:
        """Revoke an active key; False when there is no active key ``key_id``."""
        ...

    def listed(self, account: str | None, include_revoked: bool) -> list[ApiKeyRecord]:
        """Oldest first (created_at, key_id)."""
        ...


# --- Kafka credentials ---


@dataclass(frozen=True)
class CredentialRecord:
    id: str
    account: str
    name: str
    username: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class StoredKey:
    """One SCRAM key of a credential's password (one per mechanism and generation)."""

    credential_id: str
    mechanism: str
    generation: int
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes
    created_at: datetime | None = None  # None until written (the database sets it)
    valid_until: datetime | None = None


class Credentials(Protocol):
    def account_exists(self, code: str) -> bool: ...
    def username_taken(self, username: str) -> bool: ...
    def add(self, credential_id: str, account: str, name: str, username: str) -> None: ...
    def add_keys(self, keys: list[StoredKey]) -> None: ...
    def get_active(self, credential_id: str) -> CredentialRecord | None: ...
    def keys_of(self, credential_id: str) -> list[StoredKey]: ...
    def expire_keys(self, credential_id: str, until: datetime) -> None:
        """Give every key of the credential without an end the end ``until``."""
        ...

    def revoke(self, credential_id: str, at: datetime) -> bool:
        """Revoke an active credential; False when there is no active credential ``credential_id``."""
        ...

    def listed(self, account: str | None, include_revoked: bool) -> list[CredentialRecord]:
        """Oldest first (created_at, id)."""
        ...

    def all_keys(self, account: str | None = None) -> list[StoredKey]:
        """Every key (of ``account``'s credentials), by credential id, generation, mechanism."""
        ...

    def all_by_id(self) -> list[CredentialRecord]:
        """Every credential ever issued, revoked too, by id."""
        ...


# --- idempotency keys ---


@dataclass(frozen=True)
class IdempotencyRecord:
    fingerprint: str
    status: int | None  # None: never answered
    headers: list[tuple[str, str]] | None
    body: bytes | None
    expires_at: datetime


class IdempotencyKeys(Protocol):
    def delete_expired(self, now: datetime, limit: int) -> None:
        """Delete up to ``limit`` expired keys nobody holds."""
        ...

    def create(self, caller: str, key: str, fingerprint: str, now: datetime, expires: datetime) -> None:
        """Create the key unless it exists."""
        ...

    def lock(self, caller: str, key: str) -> IdempotencyRecord | None:
        """Hold the key until the transaction ends (None: there is none). Raises
        :class:`~billing.errors.KeyInUse` at once if another transaction holds it."""
        ...

    def restart(self, caller: str, key: str, fingerprint: str, now: datetime, expires: datetime) -> None:
        """Make the key a new one: this fingerprint, no answer."""
        ...

    def complete(self, caller: str, key: str, status: int, headers: list[tuple[str, str]], body: bytes) -> None: ...


# --- the email outbox ---


@dataclass(frozen=True)
class OutboxItem:
    """A finalized invoice to email, with what its message needs."""

    invoice_id: int
    to_address: str
    message_id: str
    number: str
    account: str
    total: str  # the invoice's total as PostgreSQL writes it
    currency: str
    due_on: str  # ISO date
    pdf: bytes | None  # None: not rendered yet


class Outbox(Protocol):
    def enqueue_finalized(self, period_start: date) -> int:
        """One row per finalized invoice of the period without one; how many were added."""
        ...

    def claim_next(self) -> OutboxItem | None:
        """The next pending (or left sending) row no other sender holds, locked, marked
        ``sending`` with one more attempt; None when there is none."""
        ...

    def record_failure(self, invoice_id: int, error: str, max_attempts: int) -> int:
        """Back to ``pending`` (``failed`` once it had ``max_attempts``); the attempts so far."""
        ...

    def mark_sent(self, invoice_id: int, at: datetime) -> None: ...


# --- webhooks ---


@dataclass(frozen=True)
class WebhookEndpoint:
    id: str
    account: str
    url: str
    event_types: tuple[str, ...]
    active: bool
    created_at: datetime | None = None  # None until written


@dataclass(frozen=True)
class WebhookDelivery:
    """A claimed delivery: what one attempt needs (``attempts``: this one included)."""

    id: int
    event_id: str
    event_type: str
    account: str
    endpoint_id: str
    url: str
    secret: str
    body: str
    attempts: int


@dataclass(frozen=True)
class WebhookDeliveryView:
    id: int
    event_id: str
    event_type: str
    account: str
    endpoint_id: str
    url: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    delivered_at: datetime | None


@dataclass(frozen=True)
class WebhookAttempt:
    delivery_id: int
    attempt: int
    attempted_at: datetime
    status_code: int | None  # None: no answer (``error`` says why)
    error: str | None
    duration_ms: float


@dataclass(frozen=True)
class AlertThreshold:
    """A threshold of one kind (``billing.domain.alerts.THRESHOLD_KINDS``): ``amount`` for the
    kind ``amount``; ``meter``, ``quantity`` and ``unit`` for the kind ``usage``."""

    id: str
    account: str
    amount: Decimal | None
    active: bool
    kind: str = "amount"
    meter: str | None = None
    quantity: Decimal | None = None
    unit: str | None = None


class Webhooks(WebhookEvents, Protocol):
    def account_exists(self, code: str) -> bool: ...
    def add_endpoint(self, endpoint: WebhookEndpoint, secret: str) -> None: ...
    def endpoints(self, account: str | None, include_removed: bool) -> list[WebhookEndpoint]:
        """Oldest first (created_at, id)."""
        ...

    def remove_endpoint(self, account: str, endpoint_id: str, at: datetime) -> bool:
        """Deactivate an active endpoint of ``account`` and cancel its queued deliveries; False
        when there is none."""
        ...

    def claim_next(self, now: datetime, lease_until: datetime) -> WebhookDelivery | None:
        """The next due delivery (pending, or sending whose lease ended) of an active endpoint
        that no other sender holds: marked ``sending`` with one more attempt, not due again
        before ``lease_until``; None when there is none."""
        ...

    def record_attempt(self, attempt: WebhookAttempt) -> None: ...
    def mark_delivered(self, delivery_id: int, status_code: int, at: datetime) -> None: ...
    def mark_failed_attempt(
        self, delivery_id: int, status_code: int | None, error: str, next_attempt_at: datetime | None
    ) -> None:
        """Back to ``pending`` due at ``next_attempt_at``, or ``failed`` when None."""
        ...

    def replay(self, delivery_id: int, now: datetime) -> bool:
        """Queue the delivery again (due ``now``, attempts from zero; its log kept); False when
        there is no such delivery to an active endpoint."""
        ...

    def deliveries(self, account: str | None, status: str | None, limit: int) -> list[WebhookDeliveryView]:
        """Newest first."""
        ...

    def attempts(self, delivery_id: int) -> list[WebhookAttempt]:
        """The delivery's attempts, oldest first."""
        ...

    def add_threshold(self, threshold: AlertThreshold) -> None: ...
    def thresholds(self, account: str | None, include_removed: bool) -> list[AlertThreshold]:
        """By account, then kind, then amount (usage: meter, then quantity), then id."""
        ...

    def remove_threshold(self, threshold_id: str) -> bool: ...
    def record_crossing(
        self, threshold_id: str, period: str, measure: Decimal, at: datetime, event: WebhookEvent
    ) -> bool:
        """Emit ``event`` and record the crossing (``measure``: the amount reached, or for a usage
        threshold the quantity in base units) unless the threshold was already reached in the
        period (then nothing is written); whether it was new."""
        ...


# --- enforcement episodes ---


class EpisodeReads(Protocol):
    def overlapping(self, account: str, start: datetime, end: datetime) -> list[Episode]:
        """``account``'s episodes started before ``end`` and ended (or last heard of) at or after
        ``start``, or still open; oldest first."""
        ...


# --- the catalog ---


@dataclass(frozen=True)
class ClientRuleState:
    principal: str | None
    client_id: str | None
    virtual_cluster: str | None
    valid_from: date | None
    valid_until: date | None


@dataclass(frozen=True)
class AccountState:
    """An account as stored (to compare with a file's before writing)."""

    name: str
    email: str
    currency: str
    tax_rate: Decimal
    address: tuple[str, ...]
    access: dict[str, Any] | None


@dataclass(frozen=True)
class PlanHead:
    version: int
    digest: str


@dataclass(frozen=True)
class AccountSummary:
    code: str
    name: str
    email: str
    currency: str
    tax_rate: Decimal
    client_rules: int
    plan: str | None  # "code v2" of the subscription in force on the day asked, else None


@dataclass(frozen=True)
class PlanSummary:
    code: str
    name: str
    latest_version: int
    currency: str
    versions: int


@dataclass(frozen=True)
class AccountPlanDoc:
    """An account and the plan version its subscription in force names (None: no subscription)."""

    account: str
    access: dict[str, Any] | None  # the account's own grants
    plan: str | None
    plan_version: int | None
    document: dict[str, Any] | None


class CatalogReads(Protocol):
    def accounts_with_plans(self, on: date, account: str | None = None) -> list[AccountPlanDoc]:
        """Every account (or ``account``) in catalog order, once per subscription in force ``on``
        (the later start first), or once with no plan."""
        ...

    def account_summaries(self, on: date) -> list[AccountSummary]: ...
    def plan_summaries(self) -> list[PlanSummary]: ...


class CatalogWrites(Protocol):
    def latest_versions(self) -> dict[str, int]: ...
    def account_state(self, code: str) -> tuple[AccountState | None, list[ClientRuleState]]: ...
    def move_account(self, code: str, position: int) -> None:
        """Set the account's position when it differs."""
        ...

    def put_account(self, code: str, state: AccountState, position: int, rules: list[ClientRuleState]) -> None:
        """Create or replace the account and all its rules."""
        ...

    def subscription(self, account: str, starts_on: date) -> tuple[str, date | None] | None:
        """(plan, ends_on) of the account's subscription starting that day."""
        ...

    def end_subscription(self, account: str, starts_on: date, ends_on: date | None) -> None: ...
    def start_subscription(
        self, account: str, starts_on: date, ends_on: date | None, plan: str, plan_version: int
    ) -> None:
        """Write the subscription (replacing one of the same day) and end the account's open
        earlier one on ``starts_on``."""
        ...

    def lock_plans(self) -> None:
        """Until the transaction ends, no other plan load runs."""
        ...

    def plan_head(self, code: str) -> PlanHead | None: ...
    def publish_plan(
        self, code: str, name: str, version: int, currency: str, document: dict[str, Any], digest: str
    ) -> None: ...


# --- streaming API products ---


@dataclass(frozen=True)
class ProductVersionRecord:
    """A published product version (``document``: :func:`billing.domain.products.product_document`)."""

    code: str
    version: int
    name: str
    document: dict[str, Any]
    schemas: dict[str, str]  # topic pattern → schema text
    digest: str
    deprecated_until: date | None
    published_at: datetime


@dataclass(frozen=True)
class ProductSubscription:
    """An account's subscription to a product version, from request to cancellation."""

    id: int
    account: str
    product: str
    version: int
    status: str  # requested | active | rejected | cancelled
    requested_by: str
    requested_at: datetime
    decided_by: str | None = None  # who approved or rejected
    decided_at: datetime | None = None
    reason: str | None = None  # why it was rejected
    cancelled_by: str | None = None
    cancelled_at: datetime | None = None


class ProductRepository(Protocol):
    def lock(self) -> None:
        """Serialize catalog loads of products (a transaction-scoped lock)."""
        ...

    def head(self, code: str) -> ProductVersionRecord | None:
        """The product's newest version (None: no such product)."""
        ...

    def publish(self, record: ProductVersionRecord, position: int) -> None:
        """Store a new version (and the product, at ``position`` in catalog order, when new)."""
        ...

    def move(self, code: str, position: int) -> None: ...
    def lock_account(self, account: str) -> None:
        """Serialize changes to ``account``'s subscriptions (a transaction-scoped lock): two
        first subscriptions at once make one, not a refused second."""
        ...

    def set_deprecation(self, code: str, version: int, until: date | None) -> bool:
        """Set a version's ``deprecated_until``; whether it changed (False too when there is no
        such version)."""
        ...

    def version(self, code: str, version: int) -> ProductVersionRecord | None: ...
    def versions(self, code: str) -> list[ProductVersionRecord]:
        """Oldest first."""
        ...

    def heads(self) -> list[ProductVersionRecord]:
        """Each product's newest version, in catalog order."""
        ...

    def add_subscription(self, sub: ProductSubscription) -> int:
        """Store a new subscription (its ``id`` is ignored); its id."""
        ...

    def save_subscription(self, sub: ProductSubscription) -> None:
        """Store the subscription's status, version, decision and cancellation."""
        ...

    def subscription(self, sub_id: int, for_update: bool = False) -> ProductSubscription | None: ...
    def subscriptions(
        self, account: str | None = None, product: str | None = None, status: str | None = None
    ) -> list[ProductSubscription]:
        """Oldest first (by id)."""
        ...
