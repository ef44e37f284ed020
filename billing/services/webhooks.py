"""Signed webhooks: an account's endpoints, and delivering the events the changes wrote.

1. **Emit**: a change that has an event (an invoice finalized or voided, a credential revoked)
   writes it, in its own transaction, to ``webhook_events`` with one ``webhook_deliveries`` row
   per active endpoint of the account that takes its type: no event without its change, no
   change without its event.
2. **Send** (:func:`deliver`, ``streamtoll webhooks send``): each due delivery is claimed
   (``FOR UPDATE SKIP LOCKED``), leased and committed as ``sending``, then POSTed with its
   signature; a 2xx marks it ``delivered``; anything else (another status, a timeout, a refused
   connection) logs the attempt and puts it back, due after :func:`~billing.domain.webhooks.backoff`
   — ``failed`` after ``max_attempts``. Every attempt is a row of ``webhook_attempts``.
3. **Replay** (:func:`replay`): a delivery queued again by id (attempts from zero, its log kept).

A sender killed after the receiver answered but before ``delivered`` is committed sends the
delivery again once its lease ends: receivers deduplicate on ``Streamtoll-Event-Id``. A
delivered event is never sent again unless replayed.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as day_time
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Engine

from billing.adapters.uow import UnitOfWork
from billing.domain.alerts import (
    EVENT_OF_KIND,
    UsageLimit,
    metered,
    plain,
    reached,
    usage_event_data,
    usage_limit,
)
from billing.domain.money import format_money
from billing.domain.sources import DEFAULT_SOURCES
from billing.domain.usage import metered_by_source
from billing.domain.webhooks import (
    EVENT_ID_HEADER,
    EVENT_TYPES,
    MAX_ATTEMPTS,
    SIGNATURE_HEADER,
    backoff,
    new_event,
    signature_header,
)
from billing.errors import WebhookError, WebhookNotFound
from billing.services.billing_run import parse_period, preview_accounts, projected_money
from billing.services.ports import (
    AlertThreshold,
    WebhookAttempt,
    WebhookDelivery,
    WebhookDeliveryView,
    WebhookEndpoint,
    Webhooks,
)
from billing.services.usage import read_usage

__all__ = [
    "AddedEndpoint",
    "Post",
    "SendReport",
    "add_balance_threshold",
    "add_endpoint",
    "add_threshold",
    "add_usage_threshold",
    "attempt_doc",
    "attempts_of",
    "check_thresholds",
    "cross_thresholds",
    "deliver",
    "delivery_doc",
    "endpoint_doc",
    "http_post",
    "list_deliveries",
    "list_endpoints",
    "list_thresholds",
    "new_threshold",
    "new_usage_threshold",
    "remove_endpoint",
    "remove_threshold",
    "replay",
    "send_pending",
    "threshold_doc",
]

DEFAULT_TIMEOUT = 10.0

Post = Callable[[str, bytes, dict[str, str], float], int]
"""POST ``body`` with ``headers`` to a URL within a timeout (seconds); the status code, or
:class:`OSError` when there is no answer."""


@dataclass(frozen=True)
class AddedEndpoint:
    endpoint: WebhookEndpoint
    secret: str  # shown once


@dataclass
class SendReport:
    delivered: int = 0
    retrying: int = 0
    failed: int = 0


def _instant(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def endpoint_doc(e: WebhookEndpoint) -> dict[str, Any]:
    return {
        "id": e.id,
        "account": e.account,
        "url": e.url,
        "events": ",".join(e.event_types),
        "active": e.active,
        "created_at": _instant(e.created_at),
    }


def delivery_doc(d: WebhookDeliveryView) -> dict[str, Any]:
    return {
        "id": d.id,
        "event_id": d.event_id,
        "type": d.event_type,
        "account": d.account,
        "endpoint": d.endpoint_id,
        "url": d.url,
        "status": d.status,
        "attempts": d.attempts,
        "next_attempt_at": _instant(d.next_attempt_at) if d.status in ("pending", "sending") else None,
        "last_status": d.last_status,
        "last_error": d.last_error,
        "delivered_at": _instant(d.delivered_at),
    }


def threshold_doc(t: AlertThreshold) -> dict[str, Any]:
    """A threshold as the command line shows it (``amount`` for the amount kind; ``meter``,
    ``quantity`` and ``unit`` for the usage kind)."""
    return {
        "id": t.id,
        "account": t.account,
        "kind": t.kind,
        "amount": None if t.amount is None else plain(t.amount),
        "meter": t.meter,
        "quantity": None if t.quantity is None else plain(t.quantity),
        "unit": t.unit,
        "active": t.active,
    }


def attempt_doc(a: WebhookAttempt) -> dict[str, Any]:
    return {
        "attempt": a.attempt,
        "attempted_at": _instant(a.attempted_at),
        "status_code": a.status_code,
        "error": a.error,
        "duration_ms": a.duration_ms,
    }


def check_endpoint(url: str, events: list[str] | None) -> tuple[str, ...]:
    """The event types an endpoint takes (all when ``events`` is None); :class:`WebhookError`
    naming every problem when the URL or a type is wrong."""
    problems = []
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append(f"{url!r} is not an http(s) URL")
    types = tuple(EVENT_TYPES) if not events else tuple(dict.fromkeys(events))
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown:
        problems.append(f"unknown event type(s) {', '.join(unknown)} (known: {', '.join(EVENT_TYPES)})")
    if problems:
        raise WebhookError("; ".join(problems))
    return types


def new_endpoint(store: Webhooks, account: str, url: str, events: list[str] | None = None) -> AddedEndpoint:
    types = check_endpoint(url, events)
    if not store.account_exists(account):
        raise WebhookNotFound(f"there is no account {account!r}")
    endpoint = WebhookEndpoint(f"whe_{secrets.token_hex(8)}", account, url, types, True)
    secret = f"whsec_{secrets.token_urlsafe(32)}"
    store.add_endpoint(endpoint, secret)
    return AddedEndpoint(endpoint, secret)


def _post_once(post: Post, item: WebhookDelivery, now: datetime, timeout: float) -> tuple[int | None, str | None]:
    body = item.body.encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "streamtoll-webhooks/1",
        SIGNATURE_HEADER: signature_header(item.secret, int(now.timestamp()), body),
        EVENT_ID_HEADER: item.event_id,
    }
    try:
        return post(item.url, body, headers, timeout), None
    except OSError as exc:
        return None, (str(exc) or type(exc).__name__)[:500]


def deliver(
    transaction: Callable[[], AbstractContextManager[Webhooks]],
    post: Post,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    max_attempts: int = MAX_ATTEMPTS,
    timeout: float = DEFAULT_TIMEOUT,
    monotonic: Callable[[], float] = time.monotonic,
) -> SendReport:
    """Send every due delivery once (see the module docstring) and return what became of them.
    ``transaction()`` opens a transaction (committed when its block ends normally)."""
    report = SendReport()
    lease = timedelta(seconds=max(60.0, 3 * timeout))
    while True:
        now = clock()
        with transaction() as store:
            item = store.claim_next(now, now + lease)
        if item is None:
            return report
        started = monotonic()
        status, error = _post_once(post, item, now, timeout)
        took = round((monotonic() - started) * 1000, 3)
        ok = status is not None and 200 <= status < 300
        with transaction() as store:
            store.record_attempt(WebhookAttempt(item.id, item.attempts, now, status, error, took))
            if ok:
                assert status is not None
                store.mark_delivered(item.id, status, clock())
                report.delivered += 1
                continue
            again = now + backoff(item.attempts) if item.attempts < max_attempts else None
            store.mark_failed_attempt(item.id, status, error or f"HTTP {status}", again)
        if again is None:
            report.failed += 1
        else:
            report.retrying += 1


def http_post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    """:data:`Post` over HTTP (no redirects followed: a 3xx is a failed attempt)."""
    try:
        return httpx.post(url, content=body, headers=headers, timeout=timeout, follow_redirects=False).status_code
    except httpx.HTTPError as exc:
        raise OSError(f"{type(exc).__name__}: {exc}") from None


# --- over an engine ---


@contextmanager
def _transaction(engine: Engine) -> Iterator[Webhooks]:
    with UnitOfWork(engine) as uow:
        yield uow.webhooks


def send_pending(
    engine: Engine,
    max_attempts: int = MAX_ATTEMPTS,
    timeout: float = DEFAULT_TIMEOUT,
    post: Post = http_post,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> SendReport:
    return deliver(lambda: _transaction(engine), post, clock, max_attempts, timeout)


def add_endpoint(engine: Engine, account: str, url: str, events: list[str] | None = None) -> AddedEndpoint:
    with UnitOfWork(engine) as uow:
        return new_endpoint(uow.webhooks, account, url, events)


def list_endpoints(engine: Engine, account: str | None = None, include_removed: bool = False) -> list[WebhookEndpoint]:
    with UnitOfWork(engine) as uow:
        return uow.webhooks.endpoints(account, include_removed)


def remove_endpoint(engine: Engine, account: str, endpoint_id: str) -> None:
    with UnitOfWork(engine) as uow:
        if not uow.webhooks.remove_endpoint(account, endpoint_id, datetime.now(UTC)):
            raise WebhookNotFound(f"account {account!r} has no active webhook endpoint {endpoint_id!r}")


def replay(engine: Engine, delivery_id: int) -> None:
    with UnitOfWork(engine) as uow:
        if not uow.webhooks.replay(delivery_id, datetime.now(UTC)):
            raise WebhookNotFound(f"there is no delivery {delivery_id} to an active endpoint")


def list_deliveries(
    engine: Engine, account: str | None = None, status: str | None = None, limit: int = 100
) -> list[WebhookDeliveryView]:
    with UnitOfWork(engine) as uow:
        return uow.webhooks.deliveries(account, status, limit)


def attempts_of(engine: Engine, delivery_id: int) -> list[WebhookAttempt]:
    with UnitOfWork(engine) as uow:
        return uow.webhooks.attempts(delivery_id)


# --- alerts: an amount or a meter's usage reached in a period (billing.domain.alerts) ---

AccountUsage = tuple[dict[str, int], dict[str, str]]
"""An account's period so far per usage thresholds: meter → base quantity, quantity → source
(:func:`billing.domain.alerts.metered`)."""


def new_threshold(store: Webhooks, account: str, amount: str, kind: str = "amount") -> AlertThreshold:
    """An ``amount`` threshold (the rated amount of a period reaching ``amount``) or, with
    ``kind="balance"``, a balance threshold (the money of prepaid grants left falling to ``amount``)."""
    try:
        value = Decimal(amount)
    except InvalidOperation:
        value = Decimal(0)
    if not value.is_finite() or value <= 0:
        raise WebhookError(f"{amount!r} is not an amount above zero")
    if not store.account_exists(account):
        raise WebhookNotFound(f"there is no account {account!r}")
    threshold = AlertThreshold(f"thr_{secrets.token_hex(8)}", account, value, True, kind)
    store.add_threshold(threshold)
    return threshold


def new_usage_threshold(store: Webhooks, account: str, meter: str, quantity: str, unit: str) -> AlertThreshold:
    """A usage threshold: ``quantity`` of ``unit`` of ``meter`` in a period (``consume_bytes``,
    ``500``, ``GB``)."""
    limit = usage_limit(meter, quantity, unit)
    if not store.account_exists(account):
        raise WebhookNotFound(f"there is no account {account!r}")
    threshold = AlertThreshold(
        f"thr_{secrets.token_hex(8)}", account, None, True, "usage", limit.meter, limit.quantity, limit.unit
    )
    store.add_threshold(threshold)
    return threshold


Measured = tuple[Decimal, Decimal, dict[str, Any]]  # (measure, limit, the event's data)


@dataclass(frozen=True)
class _SoFar:
    """A period so far, per account, as the thresholds measure it: the rated amount (subtotal
    before tax), the meters' quantities, the money prepaid grants would have left."""

    rated: Mapping[str, tuple[Decimal, str]]
    usage: Mapping[str, AccountUsage]
    money: Mapping[str, tuple[Decimal, str]]


def _amount_measure(t: AlertThreshold, period: str, so_far: _SoFar) -> Measured | None:
    if t.account not in so_far.rated or t.amount is None:
        return None
    subtotal, currency = so_far.rated[t.account]
    data = {
        "threshold": {"id": t.id, "amount": format_money(t.amount, currency)},
        "period": period,
        "currency": currency,
        "amount": format_money(subtotal, currency),
    }
    return subtotal, t.amount, data


def _usage_measure(t: AlertThreshold, period: str, so_far: _SoFar) -> Measured | None:
    if t.account not in so_far.usage or t.meter is None or t.quantity is None or t.unit is None:
        return None
    totals, sources = so_far.usage[t.account]
    quantity = totals.get(t.meter, 0)
    limit = UsageLimit(t.meter, t.quantity, t.unit)
    source = sources.get(t.meter.rsplit("_", 1)[1])
    return Decimal(quantity), limit.base, usage_event_data(t.id, limit, period, quantity, source)


def _balance_measure(t: AlertThreshold, period: str, so_far: _SoFar) -> Measured | None:
    if t.account not in so_far.money or t.amount is None:
        return None
    left, currency = so_far.money[t.account]
    data = {
        "threshold": {"id": t.id, "amount": format_money(t.amount, currency)},
        "period": period,
        "currency": currency,
        "money_left": format_money(left, currency),
    }
    return left, t.amount, data


# kind → what the period measures against the threshold
_MEASURES: Mapping[str, Callable[[AlertThreshold, str, _SoFar], Measured | None]] = {
    "amount": _amount_measure,
    "usage": _usage_measure,
    "balance": _balance_measure,
}


def cross_thresholds(
    store: Webhooks,
    period: str,
    rated: Mapping[str, tuple[Decimal, str]],
    at: datetime,
    usage: Mapping[str, AccountUsage] | None = None,
    money: Mapping[str, tuple[Decimal, str]] | None = None,
) -> list[AlertThreshold]:
    """Every active threshold that the account's period so far reached and that was not reached
    in it before: each emits one event of its kind (``alert.amount_reached``: the rated amount,
    subtotal before tax, ``rated``; ``alert.usage_reached``: a meter's quantity, ``usage``;
    ``alert.balance_low``: the money its prepaid grants would have left, ``money``)."""
    crossed = []
    so_far = _SoFar(rated, usage or {}, money or {})
    for t in store.thresholds(None, False):
        measured = _MEASURES[t.kind](t, period, so_far)
        if measured is None:
            continue
        measure, limit, data = measured
        if not reached(t.kind, limit, measure):
            continue
        event = new_event(EVENT_OF_KIND[t.kind], t.account, data, at)
        if store.record_crossing(t.id, period, measure, at, event):
            crossed.append(t)
    return crossed


def check_thresholds(
    engine: Engine,
    period: str,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    source_order: Mapping[str, tuple[str, ...]] | None = None,
) -> list[AlertThreshold]:
    """Read every account's usage of ``period`` so far (once), rate it if an amount threshold
    asks, total its meters if a usage threshold asks (the sources chosen as billing chooses
    them), and emit the thresholds it reached. Nothing is read when no threshold is active."""
    with UnitOfWork(engine) as uow:
        kinds = {t.kind for t in uow.webhooks.thresholds(None, False)}
    if not kinds:
        return []
    order = source_order or DEFAULT_SOURCES
    start, end = parse_period(period)
    rows = read_usage(engine, datetime.combine(start, day_time(), UTC), datetime.combine(end, day_time(), UTC))
    rated: dict[str, tuple[Decimal, str]] = {}
    if "amount" in kinds:
        rated = {a: (p.subtotal, p.currency) for a, p in preview_accounts(engine, period, rows, order).items()}
    usage: dict[str, AccountUsage] = {}
    if "usage" in kinds:
        usage = {a: metered(by_source, order) for a, by_source in metered_by_source(rows).items()}
    money: dict[str, tuple[Decimal, str]] = {}
    if "balance" in kinds:
        with UnitOfWork(engine) as uow:
            held = {t.account for t in uow.webhooks.thresholds(None, False) if t.kind == "balance"}
        money = projected_money(engine, period, sorted(held), order, clock)
    with UnitOfWork(engine) as uow:
        return cross_thresholds(uow.webhooks, period, rated, clock(), usage, money)


def add_threshold(engine: Engine, account: str, amount: str) -> AlertThreshold:
    with UnitOfWork(engine) as uow:
        return new_threshold(uow.webhooks, account, amount)


def add_balance_threshold(engine: Engine, account: str, amount: str) -> AlertThreshold:
    with UnitOfWork(engine) as uow:
        return new_threshold(uow.webhooks, account, amount, "balance")


def add_usage_threshold(engine: Engine, account: str, meter: str, quantity: str, unit: str) -> AlertThreshold:
    with UnitOfWork(engine) as uow:
        return new_usage_threshold(uow.webhooks, account, meter, quantity, unit)


def list_thresholds(engine: Engine, account: str | None = None, include_removed: bool = False) -> list[AlertThreshold]:
    with UnitOfWork(engine) as uow:
        return uow.webhooks.thresholds(account, include_removed)


def remove_threshold(engine: Engine, threshold_id: str) -> None:
    with UnitOfWork(engine) as uow:
        if not uow.webhooks.remove_threshold(threshold_id):
            raise WebhookNotFound(f"there is no active threshold {threshold_id!r}")
