"""The success bodies of the HTTP API, as pydantic models: they describe the answers in the
OpenAPI document (``/openapi.json``). The endpoints serialize what the services return, as they
did before these models; a test validates real answers against these models (``extra`` fields
are refused), so the document cannot drift from what is served.

Money is a decimal string (``"199.92"``), never a number; dates are ISO 8601 (``2026-11-01``),
instants UTC with ``Z``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AddedWebhookEndpoint",
    "Amendment",
    "AmendmentAmount",
    "BillingRunResult",
    "Credential",
    "Entitlements",
    "Episode",
    "Finalized",
    "Health",
    "Invoice",
    "InvoiceLine",
    "InvoiceSummary",
    "IssuedCredential",
    "LiveView",
    "Liveness",
    "Product",
    "ProductSubscription",
    "RemovedWebhookEndpoint",
    "ReplayedDelivery",
    "Revoked",
    "Statement",
    "UsageRow",
    "Voided",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class UsageRow(_Model):
    """One group of usage: the grouping fields asked for (``group_by``, and ``hour`` or ``day``
    by ``granularity``) and the four quantities summed over it."""

    hour: str | None = Field(None, description="UTC hour start (granularity=hour)")
    day: str | None = Field(None, description="UTC day (granularity=day)")
    source: str | None = None
    account: str | None = None
    principal: str | None = None
    client_id: str | None = None
    virtual_cluster: str | None = None
    topic: str | None = None
    direction: str | None = Field(None, description="produce or consume")
    bytes: int
    records: int
    requests: int
    denied_requests: int


class Period(_Model):
    start: str
    end: str


class InvoiceAccount(_Model):
    code: str
    name: str | None = None
    email: str | None = None
    address: list[str] | None = None


class InvoicePlan(_Model):
    code: str | None
    version: int | None


class InvoiceLine(_Model):
    position: int
    kind: str
    description: str
    meter: str | None
    source: str | None
    topics: list[str]
    quantity: str | None
    unit: str | None
    model: str | None
    amount_unrounded: str
    amount: str
    breakdown: list[Any]
    usage_ref: dict[str, Any]


class InvoiceSummary(_Model):
    """One invoice in a listing."""

    id: int
    ref: str = Field(description="how to name it in paths: its number, or draft-<id> before it has one")
    number: str | None
    account: str
    period_start: str
    period_end: str
    kind: str
    status: str = Field(description="draft, finalized or void")
    currency: str
    subtotal: str
    tax: str
    total: str


class Invoice(_Model):
    """One invoice: the frozen snapshot once finalized (with the issuer, dates and terms); a
    draft's current lines and totals before."""

    id: int
    ref: str
    status: str
    void_reason: str | None
    number: str | None
    account: InvoiceAccount
    period: Period
    kind: str | None = None
    currency: str
    plan: InvoicePlan | None = None
    lines: list[InvoiceLine]
    subtotal: str
    tax_rate: str | None = None
    tax: str
    total: str
    issued_on: str | None = None
    due_on: str | None = None
    payment_terms_days: int | None = None
    credited: str | None = Field(None, description="the credit notes issued against it (once finalized)")
    balance_due: str | None = Field(None, description="its total minus the credit notes (once finalized)")
    issuer: dict[str, Any] | None = None


class BillingRunResult(_Model):
    """One account's invoice after a billing run."""

    account: str
    invoice_id: int | None
    ref: str | None
    number: str | None
    status: str = Field(description="draft, finalized (by this run) or skipped-finalized")
    currency: str
    subtotal: str
    tax: str
    total: str


class Finalized(_Model):
    id: int
    ref: str = Field(description="the invoice's number (draft-<id> keeps naming it too)")
    number: str
    account: str
    total: str


class CreditNote(_Model):
    """A credit note against a finalized invoice (amounts as text in the invoice's currency)."""

    number: str = Field(description="CN-YEAR-NNNN, without gaps in its own sequence")
    invoice: str = Field(description="the number of the invoice it credits")
    account: str
    currency: str
    net: str
    tax: str
    total: str = Field(description="net + tax: what is credited")
    reason: str = Field(description="duplicate, error, goodwill, order_change or other")
    reason_text: str | None
    settlement: str = Field(description="credit (carried to the next invoices) or refunded")
    lines: dict[str, str] = Field(description="the chosen lines (position → net amount), empty otherwise")
    issued_on: str


class PrepaidGrant(_Model):
    """A grant of money or of a meter's units, with its balance on a day (amounts and units as
    text: money in the currency's minor digits, units in the grant's unit)."""

    id: int
    account: str
    name: str
    kind: str = Field(description="money or units")
    currency: str | None = Field(description="a money grant's currency")
    meter: str | None = Field(description="a unit grant's meter")
    unit: str | None = Field(description="a unit grant's unit (GB …)")
    amount: str = Field(description="per period when recurring")
    priority: int = Field(description="lower burns first")
    effective_on: str
    expires_on: str | None = Field(description="the first day no longer in force")
    recurrence: str | None
    rollover_limit: str | None
    reason: str
    created_by: str
    created_at: str
    voided_at: str | None
    voided_by: str | None
    void_reason: str | None
    status: str = Field(description="active, scheduled, expired or voided")
    granted: str = Field(description="this period's for a recurring grant (carry included)")
    burned: str = Field(description="by finalized invoices")
    pending: str = Field(description="on draft invoices")
    left: str = Field(description="granted − burned")
    available: str = Field(description="left − pending; 0 unless active")


class Balance(_Model):
    """An account's prepaid balance on a day."""

    account: str
    on: str
    currency: str
    money_available: str = Field(description="the money grants' available, added up")
    grants: list[PrepaidGrant]


class AmendmentAmount(_Model):
    """What an amendment moved in one account's period (amounts before tax, as text)."""

    account: str
    period: str = Field(description="the billing period, 2026-11")
    currency: str
    amount_before: str = Field(description="the period rated before the amendment")
    amount_after: str = Field(description="the period rated after it")
    difference: str = Field(description="after − before")
    usage: list[dict[str, Any]] = Field(
        description="per source and direction, the period's quantities before → after (those that moved)"
    )


class Amendment(_Model):
    """A correction of usage (stored beside the metered rows, never over them)."""

    id: int
    kind: str = Field(description="import (corrected rows) or remeter (the input topics folded again)")
    from_: str = Field(alias="from", description="start of the range (inclusive), UTC")
    to: str = Field(description="end of the range (exclusive), UTC")
    reason: str
    actor: str = Field(description="who made it")
    created_at: str
    rows: int = Field(description="usage differences stored (per key and hour)")
    amounts: list[AmendmentAmount]


class Voided(_Model):
    ref: str
    number: str
    status: str = Field(description="void")


class RatedSoFar(_Model):
    lines: list[dict[str, Any]]
    subtotal: str
    tax: str
    total: str


class Episode(_Model):
    """A throttle or block a gateway applied to the account: when, how long, why."""

    id: str = Field(description="unique per gateway and episode")
    kind: str = Field(description="throttle (held to a rate) or block (produce, or fetch, refused)")
    direction: str = Field(description="produce, consume or requests")
    cause: str = Field(description="quota (the plan's rate) or cap (a monthly cap's decision)")
    meter: str | None = Field(description="cause cap: the capped meter")
    reason: str
    limit_per_second: int | None = Field(description="a throttle: the rate held to (bytes or requests per second)")
    started_at: str
    ended_at: str | None = Field(description="null while it lasts")
    open: bool
    duration_seconds: float = Field(description="from start to end (an open one: to now)")
    held_seconds: float = Field(description="a throttle: time its connections were held, summed over them")
    requests: int = Field(description="responses throttled, or requests refused by a block")
    gateway: str = Field(description="the gateway instance that applied it")
    updated_at: str = Field(description="when the gateway last reported it")


class Statement(_Model):
    """An account's usage in a month so far, in every breakdown, and the amount rated so far."""

    account: str
    period: str
    from_: str = Field(alias="from")
    to: str
    as_of: str
    currency: str
    plan: str | None
    totals: list[dict[str, Any]] = Field(description="per source and direction")
    daily: list[dict[str, Any]]
    by_topic: list[dict[str, Any]]
    by_client_id: list[dict[str, Any]]
    by_principal: list[dict[str, Any]]
    source_differences: list[dict[str, Any]] = Field(
        description="where the proxy and the broker metrics both saw the traffic: both counts and the gap"
    )
    throttles_and_blocks: list[Episode] = Field(
        description="every throttle or block a gateway applied to the account that overlaps the period"
    )
    rated_so_far: RatedSoFar


class LiveMinute(_Model):
    start: str
    end: str


class DlqCounts(_Model):
    last_hour: dict[str, int]
    today: dict[str, int]


class Enforced(_Model):
    """An account throttled or blocked now: a monthly cap's decision (and the gateways applying
    it), or a rate limit's throttle at one or more gateways."""

    account: str
    kind: str = Field(description="throttle or block")
    cause: str = Field(description="cap (a monthly cap's decision) or quota (a rate limit per second)")
    direction: str = Field(description="produce, consume or requests")
    meter: str | None = Field(description="the capped meter (cause cap)")
    since: str = Field(description="when it started (a cap: when the caps fold decided it)")
    seconds: float = Field(description="how long it has lasted so far")
    reason: str
    limit: int | None = Field(description="the rate held to, bytes or requests per second (a throttle)")
    block_fetch: bool = Field(description="a produce cap's block also refuses fetch")
    used: int | None = Field(description="month to date when the cap was decided, base units (cause cap)")
    included: int | None = Field(description="the cap's included volume, base units (cause cap)")
    gateways: list[str] = Field(description="the gateways that have applied it to traffic")
    requests: int = Field(description="responses throttled or requests refused so far")
    held_seconds: float = Field(description="how long the account's connections were held (a throttle)")


class EndedEpisode(_Model):
    """A throttle or block one gateway applied that ended in the last hour."""

    account: str
    kind: str
    cause: str
    direction: str
    meter: str | None
    since: str
    ended: str
    seconds: float = Field(description="how long it lasted")
    reason: str
    limit: int | None
    gateway: str
    requests: int
    held_seconds: float


class LiveEnforcement(_Model):
    in_force: list[Enforced]
    ended_last_hour: list[EndedEpisode] = Field(description="newest first, at most 50")


class LiveView(_Model):
    """The live view: per account and client, last-minute rates, hour-, day- and month-to-date
    totals and the amount rated so far; metering lag per input partition; the DLQ by reason; the
    accounts throttled or blocked now."""

    generated_at: str
    minute: LiveMinute
    database_until: str | None
    accounts: list[dict[str, Any]]
    unassigned: dict[str, Any] | None
    lag: list[dict[str, Any]]
    lag_measured_at: str | None
    dlq: DlqCounts
    enforcement: LiveEnforcement
    warnings: list[str]


class Health(_Model):
    status: str = Field(description="ok or unavailable")
    live: bool
    ready: bool
    database: str = Field(description="reachable or unreachable")
    kafka: str = Field(description="reachable, unreachable or not used by this process")


class Liveness(_Model):
    live: bool


class Grant(_Model):
    pattern: str
    match: str = Field(description="literal, prefix or glob")
    operations: list[str] | None = Field(None, description="read and/or write (topic grants)")


class Limits(_Model):
    produce_bytes_per_second: int | None = Field(description="null: no limit")
    consume_bytes_per_second: int | None
    requests_per_second: int | None


class CapUsage(_Model):
    """A monthly cap and where the account stands this month, as the billing database holds it."""

    meter: str
    included: int = Field(description="base units: bytes, records or requests")
    unit: str | None = Field(description="the unit the plan writes it in (GB, million …)")
    included_in_unit: str | None = Field(description="included in that unit, a decimal string")
    policy: str = Field(description="soft, throttle or block")
    floor_bytes_per_second: int | None = Field(description="the rate a throttle holds the account to")
    block_fetch: bool
    month: str = Field(description="YYYY-MM, UTC")
    used: int = Field(description="month to date, base units, from the billing database's usage")
    used_source: str | None = Field(description="the usage source billing would bill it from")
    remaining: int
    reached: bool


class Credential(_Model):
    """A Kafka credential of an account: never its password or keys."""

    id: str
    account: str
    name: str
    username: str = Field(description="what a client logs in with: <account>/<name>")
    principal: str
    mechanisms: list[str] = Field(description="SCRAM-SHA-512, SCRAM-SHA-256 (PLAIN over TLS only)")
    state: str = Field(description="active or revoked")
    created_at: str
    rotated_at: str | None = Field(description="when its newest password was issued, if not the first")
    revoked_at: str | None
    old_password_valid_until: str | None = Field(description="the end of a rotation's overlap")


class IssuedCredential(_Model):
    """A credential just issued or rotated: the password is in this answer and nowhere else."""

    id: str
    account: str
    username: str
    principal: str
    password: str | None = Field(
        description="shown once; null in a replay of the same Idempotency-Key (rotate again if it was lost)"
    )
    mechanisms: list[str]
    published: bool = Field(description="whether the gateways' credentials topic took the change")


class Revoked(_Model):
    id: str
    revoked: bool
    published: bool = Field(description="whether the gateways' credentials topic took the change")


class Entitlements(_Model):
    """What an account may do at the gateway and where it stands against its monthly caps."""

    account: str
    plan: str | None = Field(description="the plan in force today (null: none, nothing restricted)")
    plan_version: int | None
    topics: list[Grant] | None = Field(description="null: every topic")
    groups: list[Grant] | None = Field(description="null: every consumer group")
    limits: Limits
    caps: list[CapUsage]
    credentials: list[Credential]
    episodes: list[Episode] = Field(description="this month's throttles and blocks, oldest first")


class WebhookEndpoint(_Model):
    """An account's webhook endpoint: never its secret."""

    id: str
    account: str
    url: str
    events: list[str] = Field(description="the event types it takes")
    active: bool
    created_at: str | None


class AddedWebhookEndpoint(WebhookEndpoint):
    """An endpoint just added: its signing secret is in this answer and nowhere else."""

    secret: str | None = Field(description="shown once; null in a replay of the same Idempotency-Key")


class RemovedWebhookEndpoint(_Model):
    id: str
    removed: bool


class WebhookDelivery(_Model):
    """One event to one endpoint and where its delivery stands."""

    id: int
    event_id: str
    type: str
    account: str
    endpoint: str
    url: str
    status: str = Field(description="pending, sending, delivered, failed or cancelled")
    attempts: int
    next_attempt_at: str | None = Field(description="when it is due (pending or sending only)")
    last_status: int | None = Field(description="the last answer's HTTP status code")
    last_error: str | None
    delivered_at: str | None


class WebhookAttempt(_Model):
    attempt: int
    attempted_at: str
    status_code: int | None = Field(description="null: no answer (error says why)")
    error: str | None
    duration_ms: float


class ReplayedDelivery(_Model):
    id: int
    queued: bool


class ProductSchema(_Model):
    type: str = Field(description="json (JSON Schema), avro or protobuf")
    file: str = Field(description="the schema's file, as the catalog names it")
    text: str | None = Field(default=None, description="the schema itself (one product's answer only)")


class ProductTopic(_Model):
    pattern: str = Field(description="a topic's name, or the start of the topics' names")
    match: str = Field(description="literal or prefix")
    schema_: ProductSchema | None = Field(alias="schema", description="its contract, when the product gives one")


class ProductPlan(_Model):
    plan: str
    self_service: bool = Field(description="true: a subscription is active at once; false: it is a request to approve")


class ProductVersionInfo(_Model):
    version: int
    deprecated_until: str | None = Field(description="the last UTC day the version works")
    works: bool = Field(description="false once past deprecated_until: it grants nothing")


class ProductSubscription(_Model):
    """An account's subscription to a product version, from request to cancellation."""

    id: int
    account: str
    product: str
    version: int
    status: str = Field(description="requested, active, rejected or cancelled")
    requested_by: str = Field(description="who asked: partner:<key id>, finance:<key id>, cli:<user>")
    requested_at: str
    decided_by: str | None = Field(description="who approved or rejected (self-service: at once)")
    decided_at: str | None
    reason: str | None = Field(description="why it was rejected")
    cancelled_by: str | None
    cancelled_at: str | None


class Product(_Model):
    """A streaming API product's version: its topics, their schemas, the plans that include it."""

    code: str
    version: int
    name: str
    description: str
    direction: str = Field(description="produce (write), consume (read and the account's groups) or both")
    topics: list[ProductTopic]
    plans: list[ProductPlan]
    deprecated_until: str | None = Field(description="the last UTC day this version works")
    works: bool
    published_at: str
    access: str | None = Field(default=None, description="a partner's: self_service or approval")
    subscription: ProductSubscription | None = Field(default=None, description="a partner's live subscription")
    versions: list[ProductVersionInfo] | None = Field(default=None, description="every version (one product's answer)")
