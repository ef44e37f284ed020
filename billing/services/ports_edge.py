"""The ports of billing's edge services (keys, credentials, idempotency, the email outbox,
episodes, catalog loading and listing): what each service needs from storage, as Protocols,
and the typed records they exchange.

The PostgreSQL repositories in ``billing/adapters/*_repo.py`` implement them (each built from
one SQLAlchemy ``Connection``); the unit tests use in-memory fakes. A repository never commits:
the transaction is its caller's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Protocol

from metering.entitlements import Episode

__all__ = [
    "AccountPlanDoc",
    "AccountState",
    "AccountSummary",
    "ApiKeyRecord",
    "ApiKeys",
    "CatalogReads",
    "CatalogWrites",
    "ClientRuleState",
    "CredentialRecord",
    "Credentials",
    "EpisodeReads",
    "IdempotencyKeys",
    "IdempotencyRecord",
    "Outbox",
    "OutboxItem",
    "PlanHead",
    "PlanSummary",
    "StoredKey",
]


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
