"""In-memory fakes of the edge services' ports (:mod:`billing.services.ports`), behaving as
the PostgreSQL repositories do where the services rely on it: a transaction's writes are seen by
others only once it commits (and dropped when its block raises), a held idempotency key refuses a
second holder at once, an outbox row claimed by one sender is skipped by another."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from email.message import EmailMessage
from typing import Any

from billing.domain.alerts import UsageLimit
from billing.domain.webhooks import WebhookEvent
from billing.errors import KeyInUse
from billing.services.ports import (
    AccountPlanDoc,
    AccountState,
    AccountSummary,
    AlertThreshold,
    ApiKeyRecord,
    ClientRuleState,
    CredentialRecord,
    IdempotencyRecord,
    OutboxItem,
    PlanHead,
    PlanSummary,
    StoredKey,
    WebhookAttempt,
    WebhookDelivery,
    WebhookDeliveryView,
    WebhookEndpoint,
)
from metering.entitlements import Episode

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class Ticks:
    """A clock for rows the database would stamp: one second later each time."""

    def __init__(self, start: datetime = T0) -> None:
        self._n = itertools.count()
        self._start = start

    def __call__(self) -> datetime:
        return self._start + timedelta(seconds=next(self._n))


# --- API keys ---


class FakeApiKeys:
    def __init__(self, accounts: set[str] | None = None) -> None:
        self.accounts = set(accounts or ())
        self.rows: dict[str, ApiKeyRecord] = {}
        self._tick = Ticks()

    def account_exists(self, code: str) -> bool:
        return code in self.accounts

    def add(self, key_id: str, secret_sha256: str, role: str, account: str | None) -> None:
        assert key_id not in self.rows
        self.rows[key_id] = ApiKeyRecord(key_id, secret_sha256, role, account, self._tick(), None)

    def get(self, key_id: str) -> ApiKeyRecord | None:
        return self.rows.get(key_id)

    def revoke(self, key_id: str, at: datetime) -> bool:
        row = self.rows.get(key_id)
        if row is None or row.revoked_at is not None:
            return False
        self.rows[key_id] = replace(row, revoked_at=at)
        return True

    def listed(self, account: str | None, include_revoked: bool) -> list[ApiKeyRecord]:
        return sorted(
            (
                r
                for r in self.rows.values()
                if (account is None or r.account == account) and (include_revoked or r.revoked_at is None)
            ),
            key=lambda r: (r.created_at, r.key_id),
        )


# --- Kafka credentials ---


class FakeCredentials:
    def __init__(self, accounts: set[str] | None = None, clock: Ticks | None = None) -> None:
        self.accounts = set(accounts or ())
        self.rows: dict[str, CredentialRecord] = {}
        self.key_rows: list[StoredKey] = []
        self._tick = clock or Ticks()

    def account_exists(self, code: str) -> bool:
        return code in self.accounts

    def username_taken(self, username: str) -> bool:
        return any(r.username == username for r in self.rows.values())

    def add(self, credential_id: str, account: str, name: str, username: str) -> None:
        assert credential_id not in self.rows and not self.username_taken(username)  # the unique constraints
        self.rows[credential_id] = CredentialRecord(credential_id, account, name, username, self._tick(), None)

    def add_keys(self, keys: list[StoredKey]) -> None:
        at = self._tick()
        self.key_rows.extend(replace(k, created_at=at) for k in keys)

    def get_active(self, credential_id: str) -> CredentialRecord | None:
        row = self.rows.get(credential_id)
        return row if row is not None and row.revoked_at is None else None

    def keys_of(self, credential_id: str) -> list[StoredKey]:
        return [k for k in self.key_rows if k.credential_id == credential_id]

    def expire_keys(self, credential_id: str, until: datetime) -> None:
        self.key_rows = [
            replace(k, valid_until=until) if k.credential_id == credential_id and k.valid_until is None else k
            for k in self.key_rows
        ]

    def revoke(self, credential_id: str, at: datetime) -> bool:
        if self.get_active(credential_id) is None:
            return False
        self.rows[credential_id] = replace(self.rows[credential_id], revoked_at=at)
        return True

    def listed(self, account: str | None, include_revoked: bool) -> list[CredentialRecord]:
        return sorted(
            (
                r
                for r in self.rows.values()
                if (account is None or r.account == account) and (include_revoked or r.revoked_at is None)
            ),
            key=lambda r: (r.created_at, r.id),
        )

    def all_keys(self, account: str | None = None) -> list[StoredKey]:
        mine = [k for k in self.key_rows if account is None or self.rows[k.credential_id].account == account]
        return sorted(mine, key=lambda k: (k.credential_id, k.generation, k.mechanism))

    def all_by_id(self) -> list[CredentialRecord]:
        return sorted(self.rows.values(), key=lambda r: r.id)


# --- idempotency keys ---

Pk = tuple[str, str]


class FakeIdempotencyStore:
    """The ``idempotency_keys`` table and its row locks."""

    def __init__(self) -> None:
        self.rows: dict[Pk, IdempotencyRecord] = {}
        self.locks: dict[Pk, int] = {}  # key → the transaction holding it
        self._txn = itertools.count(1)

    @contextmanager
    def transaction(self) -> Iterator[FakeIdempotencyKeys]:
        keys = FakeIdempotencyKeys(self, next(self._txn))
        try:
            yield keys
        except BaseException:
            keys.release()
            raise
        keys.commit()


class FakeIdempotencyKeys:
    def __init__(self, store: FakeIdempotencyStore, txn: int) -> None:
        self._store, self._txn = store, txn
        self._pending: dict[Pk, IdempotencyRecord | None] = {}  # None: deleted

    def _get(self, pk: Pk) -> IdempotencyRecord | None:
        return self._pending[pk] if pk in self._pending else self._store.rows.get(pk)

    def commit(self) -> None:
        for pk, record in self._pending.items():
            if record is None:
                self._store.rows.pop(pk, None)
            else:
                self._store.rows[pk] = record
        self.release()

    def release(self) -> None:
        for pk in [pk for pk, txn in self._store.locks.items() if txn == self._txn]:
            del self._store.locks[pk]

    def delete_expired(self, now: datetime, limit: int) -> None:
        expired = [pk for pk, r in self._store.rows.items() if r.expires_at <= now and pk not in self._store.locks]
        for pk in expired[:limit]:
            self._pending[pk] = None

    def create(self, caller: str, key: str, fingerprint: str, now: datetime, expires: datetime) -> None:
        if self._get((caller, key)) is None:
            self._pending[(caller, key)] = IdempotencyRecord(fingerprint, None, None, None, expires)

    def lock(self, caller: str, key: str) -> IdempotencyRecord | None:
        pk = (caller, key)
        if self._store.locks.get(pk, self._txn) != self._txn:
            raise KeyInUse(key)
        record = self._get(pk)
        if record is not None:
            self._store.locks[pk] = self._txn
        return record

    def restart(self, caller: str, key: str, fingerprint: str, now: datetime, expires: datetime) -> None:
        if self._get((caller, key)) is not None:
            self._pending[(caller, key)] = IdempotencyRecord(fingerprint, None, None, None, expires)

    def complete(self, caller: str, key: str, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        record = self._get((caller, key))
        if record is not None:
            self._pending[(caller, key)] = replace(record, status=status, headers=list(headers), body=body)


# --- the email outbox ---


@dataclass
class Delivery:
    invoice_id: int
    to_address: str
    message_id: str
    status: str = "pending"
    attempts: int = 0
    last_error: str | None = None
    sent_at: datetime | None = None


@dataclass
class Invoice:
    id: int
    number: str
    account: str
    email: str
    period_start: date
    status: str = "finalized"
    total: str = "119.00"
    currency: str = "EUR"
    due_on: str = "2026-12-31"
    pdf: bytes | None = b"%PDF-fake"


@dataclass
class FakeOutboxStore:
    """``invoices`` (what the outbox reads of them) and ``invoice_deliveries``."""

    invoices: dict[int, Invoice] = field(default_factory=dict)
    deliveries: dict[int, Delivery] = field(default_factory=dict)
    held: set[int] = field(default_factory=set)  # rows another sender has locked

    @contextmanager
    def transaction(self) -> Iterator[FakeOutbox]:
        yield FakeOutbox(self)  # each step writes one row: nothing to roll back


class FakeOutbox:
    def __init__(self, store: FakeOutboxStore) -> None:
        self._s = store

    def enqueue_finalized(self, period_start: date) -> int:
        added = 0
        for i in self._s.invoices.values():
            if i.status == "finalized" and i.period_start == period_start and i.id not in self._s.deliveries:
                self._s.deliveries[i.id] = Delivery(i.id, i.email, f"<{i.number}@streamtoll.invoice>")
                added += 1
        return added

    def claim_next(self) -> OutboxItem | None:
        for d in sorted(self._s.deliveries.values(), key=lambda d: d.invoice_id):
            i = self._s.invoices[d.invoice_id]
            if d.status in ("pending", "sending") and i.status == "finalized" and d.invoice_id not in self._s.held:
                d.status, d.attempts = "sending", d.attempts + 1
                return OutboxItem(
                    i.id, d.to_address, d.message_id, i.number, i.account, i.total, i.currency, i.due_on, i.pdf
                )
        return None

    def record_failure(self, invoice_id: int, error: str, max_attempts: int) -> int:
        d = self._s.deliveries[invoice_id]
        d.status = "failed" if d.attempts >= max_attempts else "pending"
        d.last_error = error
        return d.attempts

    def mark_sent(self, invoice_id: int, at: datetime) -> None:
        d = self._s.deliveries[invoice_id]
        d.status, d.sent_at, d.last_error = "sent", at, None


class FakeMailer:
    """An SMTP connection; ``fail`` holds the errors its next sends raise, in turn."""

    def __init__(self, outbox: list[EmailMessage], fail: list[Exception]) -> None:
        self.outbox, self.fail, self.quit_called = outbox, fail, False

    def send_message(self, msg: EmailMessage) -> object:
        if self.fail:
            raise self.fail.pop(0)
        self.outbox.append(msg)
        return {}

    def quit(self) -> object:
        self.quit_called = True
        return None


# --- webhooks ---


@dataclass
class HookDelivery:
    id: int
    event: WebhookEvent
    endpoint_id: str
    next_attempt_at: datetime
    status: str = "pending"
    attempts: int = 0
    last_status: int | None = None
    last_error: str | None = None
    delivered_at: datetime | None = None


class FakeWebhooks:
    """Endpoints (with their secrets), events, deliveries and attempts; ``transaction()`` yields
    the fake itself (each step writes through, as the sender's short transactions do)."""

    def __init__(self, accounts: set[str] | None = None) -> None:
        self.accounts = accounts if accounts is not None else {"acme"}
        self.endpoints_: dict[str, tuple[WebhookEndpoint, str]] = {}
        self.events: list[WebhookEvent] = []
        self.deliveries_: dict[int, HookDelivery] = {}
        self.attempts_: list[WebhookAttempt] = []
        self.held: set[int] = set()  # deliveries another sender has locked
        self.thresholds_: dict[str, AlertThreshold] = {}
        self.crossings: set[tuple[str, str]] = set()  # (threshold id, period)
        self.measures: dict[tuple[str, str], Decimal] = {}  # what each crossing recorded

    @contextmanager
    def transaction(self) -> Iterator[FakeWebhooks]:
        yield self

    def emit(self, event: WebhookEvent) -> int:
        self.events.append(event)
        queued = 0
        for endpoint, _ in sorted(self.endpoints_.values(), key=lambda e: e[0].id):
            if endpoint.account == event.account and endpoint.active and event.type in endpoint.event_types:
                n = len(self.deliveries_) + 1
                self.deliveries_[n] = HookDelivery(n, event, endpoint.id, event.created_at)
                queued += 1
        return queued

    def account_exists(self, code: str) -> bool:
        return code in self.accounts

    def add_endpoint(self, endpoint: WebhookEndpoint, secret: str) -> None:
        self.endpoints_[endpoint.id] = (replace(endpoint, created_at=T0), secret)

    def endpoints(self, account: str | None, include_removed: bool) -> list[WebhookEndpoint]:
        return [
            e
            for e, _ in self.endpoints_.values()
            if (account is None or e.account == account) and (include_removed or e.active)
        ]

    def remove_endpoint(self, account: str, endpoint_id: str, at: datetime) -> bool:
        found = self.endpoints_.get(endpoint_id)
        if found is None or found[0].account != account or not found[0].active:
            return False
        self.endpoints_[endpoint_id] = (replace(found[0], active=False), found[1])
        for d in self.deliveries_.values():
            if d.endpoint_id == endpoint_id and d.status in ("pending", "sending"):
                d.status = "cancelled"
        return True

    def claim_next(self, now: datetime, lease_until: datetime) -> WebhookDelivery | None:
        due = [
            d
            for d in self.deliveries_.values()
            if d.status in ("pending", "sending")
            and d.next_attempt_at <= now
            and d.id not in self.held
            and self.endpoints_[d.endpoint_id][0].active
        ]
        if not due:
            return None
        d = min(due, key=lambda d: (d.next_attempt_at, d.id))
        d.status, d.attempts, d.next_attempt_at = "sending", d.attempts + 1, lease_until
        endpoint, secret = self.endpoints_[d.endpoint_id]
        return WebhookDelivery(
            d.id, d.event.id, d.event.type, d.event.account, endpoint.id, endpoint.url, secret, d.event.body, d.attempts
        )

    def record_attempt(self, attempt: WebhookAttempt) -> None:
        self.attempts_.append(attempt)

    def mark_delivered(self, delivery_id: int, status_code: int, at: datetime) -> None:
        d = self.deliveries_[delivery_id]
        d.status, d.delivered_at, d.last_status, d.last_error = "delivered", at, status_code, None

    def mark_failed_attempt(
        self, delivery_id: int, status_code: int | None, error: str, next_attempt_at: datetime | None
    ) -> None:
        d = self.deliveries_[delivery_id]
        d.status = "failed" if next_attempt_at is None else "pending"
        d.next_attempt_at = next_attempt_at or d.next_attempt_at
        d.last_status, d.last_error = status_code, error

    def replay(self, delivery_id: int, now: datetime) -> bool:
        d = self.deliveries_.get(delivery_id)
        if d is None or not self.endpoints_[d.endpoint_id][0].active:
            return False
        d.status, d.attempts, d.next_attempt_at, d.delivered_at = "pending", 0, now, None
        return True

    def deliveries(self, account: str | None, status: str | None, limit: int) -> list[WebhookDeliveryView]:
        out = []
        for d in sorted(self.deliveries_.values(), key=lambda d: -d.id):
            if (account is None or d.event.account == account) and (status is None or d.status == status):
                url = self.endpoints_[d.endpoint_id][0].url
                out.append(
                    WebhookDeliveryView(
                        d.id,
                        d.event.id,
                        d.event.type,
                        d.event.account,
                        d.endpoint_id,
                        url,
                        d.status,
                        d.attempts,
                        d.next_attempt_at,
                        d.last_status,
                        d.last_error,
                        d.delivered_at,
                    )
                )
        return out[:limit]

    def attempts(self, delivery_id: int) -> list[WebhookAttempt]:
        return [a for a in self.attempts_ if a.delivery_id == delivery_id]

    def add_threshold(self, threshold: AlertThreshold) -> None:
        self.thresholds_[threshold.id] = threshold

    def thresholds(self, account: str | None, include_removed: bool) -> list[AlertThreshold]:
        return sorted(
            (
                t
                for t in self.thresholds_.values()
                if (account is None or t.account == account) and (include_removed or t.active)
            ),
            key=lambda t: (
                t.account,
                t.kind,
                t.amount or 0,
                t.meter or "",
                UsageLimit(t.meter, t.quantity, t.unit).base if t.meter and t.quantity and t.unit else 0,
                t.id,
            ),
        )

    def remove_threshold(self, threshold_id: str) -> bool:
        t = self.thresholds_.get(threshold_id)
        if t is None or not t.active:
            return False
        self.thresholds_[threshold_id] = replace(t, active=False)
        return True

    def record_crossing(
        self, threshold_id: str, period: str, measure: Decimal, at: datetime, event: WebhookEvent
    ) -> bool:
        if (threshold_id, period) in self.crossings:
            return False
        self.crossings.add((threshold_id, period))
        self.measures[(threshold_id, period)] = measure
        self.emit(event)
        return True


# --- catalog reads and episodes ---


@dataclass
class FakeCatalogReads:
    rows: list[AccountPlanDoc] = field(default_factory=list)  # in catalog order, subscriptions in force
    summaries: list[AccountSummary] = field(default_factory=list)
    plans: list[PlanSummary] = field(default_factory=list)

    def accounts_with_plans(self, on: date, account: str | None = None) -> list[AccountPlanDoc]:
        return [r for r in self.rows if account is None or r.account == account]

    def account_summaries(self, on: date) -> list[AccountSummary]:
        return list(self.summaries)

    def plan_summaries(self) -> list[PlanSummary]:
        return list(self.plans)


@dataclass
class FakeEpisodes:
    episodes: list[Episode] = field(default_factory=list)

    def overlapping(self, account: str, start: datetime, end: datetime) -> list[Episode]:
        return sorted(
            (
                e
                for e in self.episodes
                if e.account == account and e.started < end and (e.ended is None or e.ended >= start)
            ),
            key=lambda e: (e.started, e.id),
        )


def usage_rows(rows: list[dict[str, Any]]) -> Any:
    """A ``usage_report`` stand-in answering ``rows`` whatever it is asked."""

    def usage(start: datetime, end: datetime, account: str) -> list[dict[str, Any]]:
        return [r for r in rows if r.get("account", account) == account]

    return usage


# --- catalog writes ---


@dataclass
class FakeCatalogWrites:
    """Accounts (with their rules and position), subscriptions and plan versions."""

    accounts: dict[str, tuple[AccountState, int, list[ClientRuleState]]] = field(default_factory=dict)
    subscriptions: dict[tuple[str, date], tuple[str, int, date | None]] = field(default_factory=dict)
    plans: dict[str, str] = field(default_factory=dict)  # code → name
    versions: dict[tuple[str, int], tuple[str, dict[str, Any], str]] = field(default_factory=dict)
    locked: bool = False
    writes: int = 0  # rows written (an unchanged load writes none)

    def latest_versions(self) -> dict[str, int]:
        latest: dict[str, int] = {}
        for code, version in self.versions:
            latest[code] = max(version, latest.get(code, 0))
        return latest

    def account_state(self, code: str) -> tuple[AccountState | None, list[ClientRuleState]]:
        found = self.accounts.get(code)
        return (None, []) if found is None else (found[0], list(found[2]))

    def move_account(self, code: str, position: int) -> None:
        state, before, rules = self.accounts[code]
        if before != position:
            self.accounts[code] = (state, position, rules)
            self.writes += 1

    def put_account(self, code: str, state: AccountState, position: int, rules: list[ClientRuleState]) -> None:
        self.accounts[code] = (state, position, list(rules))
        self.writes += 1

    def subscription(self, account: str, starts_on: date) -> tuple[str, date | None] | None:
        found = self.subscriptions.get((account, starts_on))
        return None if found is None else (found[0], found[2])

    def end_subscription(self, account: str, starts_on: date, ends_on: date | None) -> None:
        plan, version, _ = self.subscriptions[(account, starts_on)]
        self.subscriptions[(account, starts_on)] = (plan, version, ends_on)
        self.writes += 1

    def start_subscription(
        self, account: str, starts_on: date, ends_on: date | None, plan: str, plan_version: int
    ) -> None:
        self.subscriptions[(account, starts_on)] = (plan, plan_version, ends_on)
        for (code, start), (p, v, end) in list(self.subscriptions.items()):
            if code == account and start < starts_on and end is None:
                self.subscriptions[(code, start)] = (p, v, starts_on)
        self.writes += 1

    def lock_plans(self) -> None:
        self.locked = True

    def plan_head(self, code: str) -> PlanHead | None:
        mine = [(v, digest) for (c, v), (_, _, digest) in self.versions.items() if c == code]
        return None if not mine else PlanHead(*max(mine))

    def publish_plan(
        self, code: str, name: str, version: int, currency: str, document: dict[str, Any], digest: str
    ) -> None:
        assert self.locked, "a version number is picked under the plans lock"
        assert (code, version) not in self.versions
        self.plans[code] = name
        self.versions[(code, version)] = (currency, document, digest)
        self.writes += 1
