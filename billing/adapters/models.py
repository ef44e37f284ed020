"""SQLAlchemy 2.0 typed models. The schema itself is made only by Alembic migrations
(``migrations/versions``); these classes describe it for queries and must match them
(a test compares the two)."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ARRAY,
    CHAR,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    LargeBinary,
    Numeric,
    SmallInteger,
    String,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AccountRow",
    "AlertCrossingRow",
    "AlertThresholdRow",
    "ApiKeyRow",
    "Base",
    "ClientRuleRow",
    "CreditNoteNumberRow",
    "CreditNoteRow",
    "EnforcementEpisodeRow",
    "EpisodeEventRow",
    "IdempotencyKeyRow",
    "InvoiceDeliveryRow",
    "InvoiceLineRow",
    "InvoiceNumberRow",
    "InvoiceRow",
    "PlanRow",
    "PlanVersionRow",
    "SubscriptionRow",
    "UsageDailyRow",
    "UsageShardRow",
    "WebhookAttemptRow",
    "WebhookDeliveryRow",
    "WebhookEndpointRow",
    "WebhookEventRow",
]


class Base(DeclarativeBase):
    pass


class UsageShardRow(Base):
    """One hourly usage window as one metering shard (input partition) counted it.

    Totals are full totals with a ``version`` that only grows per row key; the sink replaces a
    row only with a newer version. The hourly usage of a window key is the sum over its shards
    (view ``usage_hourly``). Sources stay apart: billing picks one source per meter.
    """

    __tablename__ = "usage_shard_rows"

    source: Mapped[str] = mapped_column(String(32), primary_key=True)
    principal: Mapped[str] = mapped_column(Text, primary_key=True)
    client_id: Mapped[str] = mapped_column(Text, primary_key=True)
    virtual_cluster: Mapped[str] = mapped_column(Text, primary_key=True)
    topic: Mapped[str] = mapped_column(Text, primary_key=True)
    direction: Mapped[str] = mapped_column(String(8), primary_key=True)
    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    shard: Mapped[str] = mapped_column(Text, primary_key=True)
    bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    records: Mapped[int] = mapped_column(BigInteger, nullable=False)
    requests: Mapped[int] = mapped_column(BigInteger, nullable=False)
    denied_requests: Mapped[int] = mapped_column(BigInteger, nullable=False)
    version: Mapped[int] = mapped_column(BigInteger, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class UsageDailyRow(Base):
    """A window key's usage for one UTC day, all shards added: kept exact by a trigger on
    ``usage_shard_rows`` (migration 0007); never written by the application."""

    __tablename__ = "usage_daily"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    source: Mapped[str] = mapped_column(String(32), primary_key=True)
    principal: Mapped[str] = mapped_column(Text, primary_key=True)
    client_id: Mapped[str] = mapped_column(Text, primary_key=True)
    virtual_cluster: Mapped[str] = mapped_column(Text, primary_key=True)
    topic: Mapped[str] = mapped_column(Text, primary_key=True)
    direction: Mapped[str] = mapped_column(String(8), primary_key=True)
    bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    records: Mapped[int] = mapped_column(BigInteger, nullable=False)
    requests: Mapped[int] = mapped_column(BigInteger, nullable=False)
    denied_requests: Mapped[int] = mapped_column(BigInteger, nullable=False)


class AccountRow(Base):
    __tablename__ = "accounts"

    code: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    email: Mapped[str] = mapped_column(Text, nullable=False)
    currency: Mapped[str] = mapped_column(CHAR(3), nullable=False)
    tax_rate: Mapped[Decimal] = mapped_column(Numeric(9, 6), nullable=False)
    address: Mapped[list[str]] = mapped_column(JSONB, nullable=False)
    access: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True))  # grants added to its plan's
    position: Mapped[int] = mapped_column(Integer, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class ClientRuleRow(Base):
    __tablename__ = "client_rules"

    account_code: Mapped[str] = mapped_column(Text, ForeignKey("accounts.code", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    principal: Mapped[str | None] = mapped_column(Text)
    client_id: Mapped[str | None] = mapped_column(Text)
    virtual_cluster: Mapped[str | None] = mapped_column(Text)
    valid_from: Mapped[date | None] = mapped_column(Date)
    valid_until: Mapped[date | None] = mapped_column(Date)


class PlanRow(Base):
    __tablename__ = "plans"

    code: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str] = mapped_column(Text, nullable=False)


class PlanVersionRow(Base):
    """Immutable once written (a trigger refuses UPDATE and DELETE)."""

    __tablename__ = "plan_versions"

    plan_code: Mapped[str] = mapped_column(Text, ForeignKey("plans.code"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    currency: Mapped[str] = mapped_column(CHAR(3), nullable=False)
    document: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    digest: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class SubscriptionRow(Base):
    __tablename__ = "subscriptions"
    __table_args__ = (
        ForeignKeyConstraint(["plan_code", "plan_version"], ["plan_versions.plan_code", "plan_versions.version"]),
    )

    account_code: Mapped[str] = mapped_column(Text, ForeignKey("accounts.code", ondelete="CASCADE"), primary_key=True)
    starts_on: Mapped[date] = mapped_column(Date, primary_key=True)
    ends_on: Mapped[date | None] = mapped_column(Date)
    plan_code: Mapped[str] = mapped_column(Text, nullable=False)
    plan_version: Mapped[int] = mapped_column(Integer, nullable=False)


class InvoiceRow(Base):
    """An invoice; once finalized the database refuses changes except finalized → void."""

    __tablename__ = "invoices"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    account_code: Mapped[str] = mapped_column(Text, ForeignKey("accounts.code"), nullable=False)
    period_start: Mapped[date] = mapped_column(Date, nullable=False)
    period_end: Mapped[date] = mapped_column(Date, nullable=False)
    kind: Mapped[str] = mapped_column(Text, nullable=False, server_default="standard")
    status: Mapped[str] = mapped_column(Text, nullable=False, server_default="draft")
    number: Mapped[str | None] = mapped_column(Text, unique=True)
    currency: Mapped[str] = mapped_column(CHAR(3), nullable=False)
    tax_rate: Mapped[Decimal] = mapped_column(Numeric(9, 6), nullable=False)
    subtotal: Mapped[Decimal] = mapped_column(Numeric(20, 6), nullable=False)
    tax: Mapped[Decimal] = mapped_column(Numeric(20, 6), nullable=False)
    total: Mapped[Decimal] = mapped_column(Numeric(20, 6), nullable=False)
    plan_code: Mapped[str | None] = mapped_column(Text)
    plan_version: Mapped[int | None] = mapped_column(Integer)
    snapshot: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    html: Mapped[str | None] = mapped_column(Text)
    pdf: Mapped[bytes | None] = mapped_column(LargeBinary)
    issued_on: Mapped[date | None] = mapped_column(Date)
    due_on: Mapped[date | None] = mapped_column(Date)
    corrects_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("invoices.id"))
    void_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    finalized_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    voided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class InvoiceLineRow(Base):
    """One line; ``usage_ref`` names the usage it priced (period, meter, source, topics)."""

    __tablename__ = "invoice_lines"

    invoice_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("invoices.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(Text, nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False)
    meter: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str | None] = mapped_column(Text)
    topics: Mapped[list[str]] = mapped_column(JSONB, nullable=False, server_default="[]")
    quantity: Mapped[Decimal | None] = mapped_column(Numeric(30, 9))
    unit: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(Text)
    amount_unrounded: Mapped[Decimal] = mapped_column(Numeric(30, 12), nullable=False)
    amount: Mapped[Decimal] = mapped_column(Numeric(20, 6), nullable=False)
    breakdown: Mapped[list[Any]] = mapped_column(JSONB, nullable=False, server_default="[]")
    usage_ref: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default="{}")


class InvoiceNumberRow(Base):
    """The last number allocated per prefix and year (allocation locks the row: no gaps, no duplicates)."""

    __tablename__ = "invoice_numbers"

    prefix: Mapped[str] = mapped_column(Text, primary_key=True)
    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    last: Mapped[int] = mapped_column(Integer, nullable=False)


class CreditNoteRow(Base):
    """A credit note against a finalized invoice; never changed once issued (a trigger refuses it)."""

    __tablename__ = "credit_notes"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    number: Mapped[str] = mapped_column(Text, unique=True, nullable=False)
    invoice_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("invoices.id"), nullable=False)
    account_code: Mapped[str] = mapped_column(Text, ForeignKey("accounts.code"), nullable=False)
    currency: Mapped[str] = mapped_column(CHAR(3), nullable=False)
    tax_rate: Mapped[Decimal] = mapped_column(Numeric(9, 6), nullable=False)
    net: Mapped[Decimal] = mapped_column(Numeric(20, 6), nullable=False)
    tax: Mapped[Decimal] = mapped_column(Numeric(20, 6), nullable=False)
    total: Mapped[Decimal] = mapped_column(Numeric(20, 6), nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    reason_text: Mapped[str | None] = mapped_column(Text)
    settlement: Mapped[str] = mapped_column(Text, nullable=False)
    lines: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default="{}")
    snapshot: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    html: Mapped[str | None] = mapped_column(Text)
    pdf: Mapped[bytes | None] = mapped_column(LargeBinary)
    issued_on: Mapped[date] = mapped_column(Date, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class GrantRow(Base):
    """A grant of money or of a meter's units to an account; never changed but for its void."""

    __tablename__ = "grants"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    account_code: Mapped[str] = mapped_column(Text, ForeignKey("accounts.code"), nullable=False)
    name: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    amount: Mapped[Decimal] = mapped_column(Numeric(20, 6), nullable=False)
    currency: Mapped[str | None] = mapped_column(CHAR(3))
    meter: Mapped[str | None] = mapped_column(Text)
    unit: Mapped[str | None] = mapped_column(Text)
    priority: Mapped[int] = mapped_column(Integer, nullable=False, server_default="10")
    effective_on: Mapped[date] = mapped_column(Date, nullable=False)
    expires_on: Mapped[date | None] = mapped_column(Date)
    recurrence: Mapped[str | None] = mapped_column(Text)
    rollover_limit: Mapped[Decimal | None] = mapped_column(Numeric(20, 6))
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    created_by: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    voided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    voided_by: Mapped[str | None] = mapped_column(Text)
    void_reason: Mapped[str | None] = mapped_column(Text)


class CreditNoteNumberRow(Base):
    """The last credit note number allocated per year (allocation locks the row: no gaps)."""

    __tablename__ = "credit_note_numbers"

    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    last: Mapped[int] = mapped_column(Integer, nullable=False)


class ApiKeyRow(Base):
    """An API key: ``stk_<key_id>_<secret>``; only the secret's SHA-256 is stored."""

    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(Text, primary_key=True)
    secret_sha256: Mapped[str] = mapped_column(Text, nullable=False)
    role: Mapped[str] = mapped_column(Text, nullable=False)
    account_code: Mapped[str | None] = mapped_column(Text, ForeignKey("accounts.code"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class CredentialRow(Base):
    """A Kafka credential streamtoll issued (billing.services.credentials); no password is stored."""

    __tablename__ = "credentials"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    account_code: Mapped[str] = mapped_column(Text, ForeignKey("accounts.code"), nullable=False)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    username: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class CredentialKeyRow(Base):
    """One password generation's SCRAM salted keys for one mechanism (RFC 5802/7677)."""

    __tablename__ = "credential_keys"

    credential_id: Mapped[str] = mapped_column(Text, ForeignKey("credentials.id", ondelete="CASCADE"), primary_key=True)
    mechanism: Mapped[str] = mapped_column(Text, primary_key=True)
    generation: Mapped[int] = mapped_column(Integer, primary_key=True)
    salt: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    iterations: Mapped[int] = mapped_column(Integer, nullable=False)
    stored_key: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    server_key: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    valid_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class IdempotencyKeyRow(Base):
    """The first answer to a POST with an ``Idempotency-Key``, per API key (billing.services.idempotency)."""

    __tablename__ = "idempotency_keys"

    key_id: Mapped[str] = mapped_column(Text, ForeignKey("api_keys.key_id", ondelete="CASCADE"), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(Text, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[int | None] = mapped_column(SmallInteger)  # NULL while the first request runs
    headers: Mapped[list[list[str]] | None] = mapped_column(JSONB)
    body: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)


class InvoiceDeliveryRow(Base):
    """The outbox: a finalized invoice to email, with a stable Message-ID."""

    __tablename__ = "invoice_deliveries"

    invoice_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("invoices.id"), primary_key=True)
    to_address: Mapped[str] = mapped_column(Text, nullable=False)
    message_id: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    status: Mapped[str] = mapped_column(Text, nullable=False, server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class EnforcementEpisodeRow(Base):
    """A throttle or block a gateway applied (``metering.entitlements.Episode``), newest record kept."""

    __tablename__ = "enforcement_episodes"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    gateway: Mapped[str] = mapped_column(Text, nullable=False)
    account_code: Mapped[str] = mapped_column(Text, nullable=False)
    kind: Mapped[str] = mapped_column(Text, nullable=False)
    direction: Mapped[str] = mapped_column(Text, nullable=False)
    cause: Mapped[str] = mapped_column(Text, nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    held_seconds: Mapped[float] = mapped_column(Double, nullable=False, server_default="0")
    requests: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    limit_per_second: Mapped[int | None] = mapped_column(BigInteger)
    meter: Mapped[str | None] = mapped_column(Text)


class EpisodeEventRow(Base):
    """A quota event an enforcement episode emitted (once per episode and type)."""

    __tablename__ = "episode_events"

    episode_id: Mapped[str] = mapped_column(Text, primary_key=True)
    type: Mapped[str] = mapped_column(Text, primary_key=True)
    event_id: Mapped[str | None] = mapped_column(
        Text, ForeignKey("webhook_events.id", deferrable=True, initially="DEFERRED")
    )


class WebhookEndpointRow(Base):
    """An account's webhook endpoint: its URL, signing secret and the event types it takes."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    account_code: Mapped[str] = mapped_column(Text, ForeignKey("accounts.code"), nullable=False)
    url: Mapped[str] = mapped_column(Text, nullable=False)
    secret: Mapped[str] = mapped_column(Text, nullable=False)
    event_types: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="true")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    removed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookEventRow(Base):
    """An event, written with the change that caused it; ``body``: the JSON every attempt sends."""

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    account_code: Mapped[str] = mapped_column(Text, nullable=False)
    type: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    body: Mapped[str] = mapped_column(Text, nullable=False)


class WebhookDeliveryRow(Base):
    """One event to one endpoint, and where its delivery stands."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    event_id: Mapped[str] = mapped_column(Text, ForeignKey("webhook_events.id"), nullable=False)
    endpoint_id: Mapped[str] = mapped_column(Text, ForeignKey("webhook_endpoints.id"), nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False, server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookAttemptRow(Base):
    """One attempt of a delivery: the status code or the error, and how long it took."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("webhook_deliveries.id"), nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    attempted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float] = mapped_column(Double, nullable=False)


class AlertThresholdRow(Base):
    """An amount (kind ``amount``) or a meter's quantity (kind ``usage``) that, once an account's
    period reaches it, is an alert."""

    __tablename__ = "alert_thresholds"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    account_code: Mapped[str] = mapped_column(Text, ForeignKey("accounts.code"), nullable=False)
    kind: Mapped[str] = mapped_column(Text, nullable=False, server_default="amount")
    amount: Mapped[Decimal | None] = mapped_column(Numeric(20, 6))  # kind "amount"
    meter: Mapped[str | None] = mapped_column(Text)  # kind "usage": quantity of unit of meter
    quantity: Mapped[Decimal | None] = mapped_column(Numeric)
    unit: Mapped[str | None] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="true")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class AlertCrossingRow(Base):
    """A period in which a threshold was reached (once: its event was emitted then)."""

    __tablename__ = "alert_crossings"

    threshold_id: Mapped[str] = mapped_column(Text, ForeignKey("alert_thresholds.id"), primary_key=True)
    period: Mapped[str] = mapped_column(Text, primary_key=True)
    amount: Mapped[Decimal | None] = mapped_column(Numeric(20, 6))  # an amount threshold's
    quantity: Mapped[Decimal | None] = mapped_column(Numeric(38, 0))  # a usage threshold's, in base units
    crossed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    event_id: Mapped[str] = mapped_column(Text, ForeignKey("webhook_events.id"), nullable=False)


class ProductRow(Base):
    """A streaming API product's code (its versions hold the contract)."""

    __tablename__ = "products"

    code: Mapped[str] = mapped_column(Text, primary_key=True)
    position: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class ProductVersionRow(Base):
    """A published product version: its contract, its schemas' text and its deprecation date."""

    __tablename__ = "product_versions"

    product_code: Mapped[str] = mapped_column(Text, ForeignKey("products.code"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    document: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    schemas: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default="{}")
    digest: Mapped[str] = mapped_column(Text, nullable=False)
    deprecated_until: Mapped[date | None] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class ProductSubscriptionRow(Base):
    """An account's subscription to a product version, from request to cancellation."""

    __tablename__ = "product_subscriptions"
    __table_args__ = (
        ForeignKeyConstraint(
            ["product_code", "product_version"], ["product_versions.product_code", "product_versions.version"]
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    account_code: Mapped[str] = mapped_column(Text, ForeignKey("accounts.code"), nullable=False)
    product_code: Mapped[str] = mapped_column(Text, nullable=False)
    product_version: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False)
    requested_by: Mapped[str] = mapped_column(Text, nullable=False)
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    decided_by: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reason: Mapped[str | None] = mapped_column(Text)
    cancelled_by: Mapped[str | None] = mapped_column(Text)
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AmendmentRow(Base):
    """A correction of metered usage (billing.services.amendments): never changed nor deleted."""

    __tablename__ = "amendments"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(Text, nullable=False)
    range_from: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    range_to: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    actor: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class UsageAmendmentRow(Base):
    """What an amendment changes in one usage key's hour: the difference (may be negative).
    Usage = the shard rows + these rows, per key and hour."""

    __tablename__ = "usage_amendment_rows"

    source: Mapped[str] = mapped_column(String(32), primary_key=True)
    principal: Mapped[str] = mapped_column(Text, primary_key=True)
    client_id: Mapped[str] = mapped_column(Text, primary_key=True)
    virtual_cluster: Mapped[str] = mapped_column(Text, primary_key=True)
    topic: Mapped[str] = mapped_column(Text, primary_key=True)
    direction: Mapped[str] = mapped_column(String(8), primary_key=True)
    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    amendment_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("amendments.id"), primary_key=True)
    bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    records: Mapped[int] = mapped_column(BigInteger, nullable=False)
    requests: Mapped[int] = mapped_column(BigInteger, nullable=False)
    denied_requests: Mapped[int] = mapped_column(BigInteger, nullable=False)


class AmendmentAmountRow(Base):
    """An amendment's effect on one account's period: rated amount and usage before → after."""

    __tablename__ = "amendment_amounts"

    amendment_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("amendments.id"), primary_key=True)
    account_code: Mapped[str] = mapped_column(Text, ForeignKey("accounts.code"), primary_key=True)
    period: Mapped[str] = mapped_column(String(7), primary_key=True)
    currency: Mapped[str] = mapped_column(CHAR(3), nullable=False)
    amount_before: Mapped[Decimal] = mapped_column(Numeric(20, 6), nullable=False)
    amount_after: Mapped[Decimal] = mapped_column(Numeric(20, 6), nullable=False)
    usage: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, nullable=False)
