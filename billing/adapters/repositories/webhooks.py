"""Webhook endpoints, events, deliveries and attempts in PostgreSQL: the
:class:`~billing.services.ports.Webhooks` port.

An event and its deliveries are written in the caller's transaction (the one that finalizes,
voids or revokes). Deliveries are claimed ``FOR UPDATE OF d SKIP LOCKED`` and leased (not due
again before the lease ends), so two senders never take the same one."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, text

from billing.adapters.repositories.catalog import account_exists
from billing.domain.units import BYTE_UNITS, COUNT_UNITS
from billing.domain.webhooks import WebhookEvent
from billing.services.ports import (
    AlertThreshold,
    WebhookAttempt,
    WebhookDelivery,
    WebhookDeliveryView,
    WebhookEndpoint,
)

__all__ = ["WebhookRepository"]

_EVENT = text(
    "INSERT INTO webhook_events (id, account_code, type, created_at, body) VALUES (:id, :account, :type, :at, :body)"
)
_FAN_OUT = text(
    "INSERT INTO webhook_deliveries (event_id, endpoint_id, next_attempt_at) "
    "SELECT :id, e.id, :at FROM webhook_endpoints e "
    "WHERE e.account_code = :account AND e.active AND :type = ANY (e.event_types) "
    "ORDER BY e.id ON CONFLICT (event_id, endpoint_id) DO NOTHING"
)
_ADD = text(
    "INSERT INTO webhook_endpoints (id, account_code, url, secret, event_types) "
    "VALUES (:id, :account, :url, :secret, :types)"
)
_ENDPOINTS = text(
    "SELECT id, account_code, url, event_types, active, created_at FROM webhook_endpoints "
    "WHERE (CAST(:account AS text) IS NULL OR account_code = :account) AND (:removed OR active) "
    "ORDER BY created_at, id"
)
_REMOVE = text(
    "UPDATE webhook_endpoints SET active = false, removed_at = :at "
    "WHERE id = :id AND account_code = :account AND active RETURNING id"
)
_CANCEL = text(
    "UPDATE webhook_deliveries SET status = 'cancelled' WHERE endpoint_id = :id AND status IN ('pending', 'sending')"
)
_NEXT = text(
    "SELECT d.id, d.event_id, v.type, v.account_code, d.endpoint_id, e.url, e.secret, v.body, d.attempts "
    "FROM webhook_deliveries d JOIN webhook_events v ON v.id = d.event_id "
    "JOIN webhook_endpoints e ON e.id = d.endpoint_id "
    "WHERE d.status IN ('pending', 'sending') AND d.next_attempt_at <= :now AND e.active "
    "ORDER BY d.next_attempt_at, d.id LIMIT 1 FOR UPDATE OF d SKIP LOCKED"
)
_SENDING = text(
    "UPDATE webhook_deliveries SET status = 'sending', attempts = attempts + 1, next_attempt_at = :lease "
    "WHERE id = :id RETURNING attempts"
)
_ATTEMPT = text(
    "INSERT INTO webhook_attempts (delivery_id, attempt, attempted_at, status_code, error, duration_ms) "
    "VALUES (:d, :n, :at, :code, :err, :ms)"
)
_DELIVERED = text(
    "UPDATE webhook_deliveries SET status = 'delivered', delivered_at = :at, last_status = :code, "
    "last_error = NULL WHERE id = :id"
)
_FAILED = text(
    "UPDATE webhook_deliveries SET status = CASE WHEN CAST(:next AS timestamptz) IS NULL THEN 'failed' "
    "ELSE 'pending' END, next_attempt_at = coalesce(:next, next_attempt_at), last_status = :code, "
    "last_error = :err WHERE id = :id"
)
_REPLAY = text(
    "UPDATE webhook_deliveries d SET status = 'pending', attempts = 0, next_attempt_at = :now, delivered_at = NULL "
    "FROM webhook_endpoints e WHERE d.id = :id AND e.id = d.endpoint_id AND e.active RETURNING d.id"
)
_DELIVERIES = text(
    "SELECT d.id, d.event_id, v.type, v.account_code, d.endpoint_id, e.url, d.status, d.attempts, "
    "d.next_attempt_at, d.last_status, d.last_error, d.delivered_at "
    "FROM webhook_deliveries d JOIN webhook_events v ON v.id = d.event_id "
    "JOIN webhook_endpoints e ON e.id = d.endpoint_id "
    "WHERE (CAST(:account AS text) IS NULL OR v.account_code = :account) "
    "AND (CAST(:status AS text) IS NULL OR d.status = :status) ORDER BY d.id DESC LIMIT :limit"
)
_ATTEMPTS = text(
    "SELECT delivery_id, attempt, attempted_at, status_code, error, duration_ms FROM webhook_attempts "
    "WHERE delivery_id = :d ORDER BY id"
)


_ADD_THRESHOLD = text(
    "INSERT INTO alert_thresholds (id, account_code, kind, amount, meter, quantity, unit) "
    "VALUES (:id, :account, :kind, :amount, :meter, :quantity, :unit)"
)
_THRESHOLDS = text(
    "SELECT id, account_code, kind, amount, meter, quantity, unit, active FROM alert_thresholds "
    "WHERE (CAST(:account AS text) IS NULL OR account_code = :account) AND (:removed OR active) "
    "ORDER BY account_code, kind, amount, meter, quantity * CASE unit "
    + " ".join(f"WHEN '{u}' THEN {n}" for u, n in {**BYTE_UNITS, **COUNT_UNITS}.items())
    + " END, id"
)
_REMOVE_THRESHOLD = text("UPDATE alert_thresholds SET active = false WHERE id = :id AND active RETURNING id")
_LOCK_THRESHOLD = text("SELECT kind FROM alert_thresholds WHERE id = :id FOR UPDATE")
_CROSSED = text("SELECT 1 FROM alert_crossings WHERE threshold_id = :id AND period = :period")
_CROSSING = text(
    "INSERT INTO alert_crossings (threshold_id, period, amount, quantity, crossed_at, event_id) "
    "VALUES (:id, :period, :amount, :quantity, :at, :event)"
)
_EPISODE_EVENTS = text(
    "INSERT INTO episode_events (episode_id, type, event_id) "
    "SELECT * FROM unnest(CAST(:episodes AS text[]), CAST(:types AS text[]), CAST(:events AS text[])) "
    "ON CONFLICT (episode_id, type) DO NOTHING RETURNING event_id"
)


class WebhookRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def emit(self, event: WebhookEvent) -> int:
        params = {"id": event.id, "account": event.account, "type": event.type, "at": event.created_at}
        self._conn.execute(_EVENT, {**params, "body": event.body})
        return int(self._conn.execute(_FAN_OUT, params).rowcount or 0)

    def emit_for_episodes(self, events: Sequence[tuple[str, WebhookEvent]]) -> list[WebhookEvent]:
        """Emit each (episode id, event) unless the enforcement episode already emitted one of
        its type (one statement claims them all; a concurrent writer of the same episode waits on
        the key, then finds it); the events emitted, in the order given."""
        if not events:
            return []
        params = {
            "episodes": [episode for episode, _ in events],
            "types": [e.type for _, e in events],
            "events": [e.id for _, e in events],
        }
        claimed = set(self._conn.execute(_EPISODE_EVENTS, params).scalars())
        emitted = [e for _, e in events if e.id in claimed]
        for event in emitted:
            self.emit(event)
        return emitted

    def account_exists(self, code: str) -> bool:
        return account_exists(self._conn, code)

    def add_endpoint(self, endpoint: WebhookEndpoint, secret: str) -> None:
        self._conn.execute(
            _ADD,
            {
                "id": endpoint.id,
                "account": endpoint.account,
                "url": endpoint.url,
                "secret": secret,
                "types": list(endpoint.event_types),
            },
        )

    def endpoints(self, account: str | None, include_removed: bool) -> list[WebhookEndpoint]:
        rows = self._conn.execute(_ENDPOINTS, {"account": account, "removed": include_removed})
        return [
            WebhookEndpoint(r.id, r.account_code, r.url, tuple(r.event_types), r.active, r.created_at) for r in rows
        ]

    def remove_endpoint(self, account: str, endpoint_id: str, at: datetime) -> bool:
        if self._conn.execute(_REMOVE, {"id": endpoint_id, "account": account, "at": at}).first() is None:
            return False
        self._conn.execute(_CANCEL, {"id": endpoint_id})
        return True

    def claim_next(self, now: datetime, lease_until: datetime) -> WebhookDelivery | None:
        row = self._conn.execute(_NEXT, {"now": now}).first()
        if row is None:
            return None
        attempts = int(self._conn.execute(_SENDING, {"id": row.id, "lease": lease_until}).scalar_one())
        return WebhookDelivery(
            row.id, row.event_id, row.type, row.account_code, row.endpoint_id, row.url, row.secret, row.body, attempts
        )

    def record_attempt(self, attempt: WebhookAttempt) -> None:
        self._conn.execute(
            _ATTEMPT,
            {
                "d": attempt.delivery_id,
                "n": attempt.attempt,
                "at": attempt.attempted_at,
                "code": attempt.status_code,
                "err": attempt.error,
                "ms": attempt.duration_ms,
            },
        )

    def mark_delivered(self, delivery_id: int, status_code: int, at: datetime) -> None:
        self._conn.execute(_DELIVERED, {"id": delivery_id, "code": status_code, "at": at})

    def mark_failed_attempt(
        self, delivery_id: int, status_code: int | None, error: str, next_attempt_at: datetime | None
    ) -> None:
        self._conn.execute(_FAILED, {"id": delivery_id, "code": status_code, "err": error, "next": next_attempt_at})

    def replay(self, delivery_id: int, now: datetime) -> bool:
        return self._conn.execute(_REPLAY, {"id": delivery_id, "now": now}).first() is not None

    def deliveries(self, account: str | None, status: str | None, limit: int) -> list[WebhookDeliveryView]:
        rows = self._conn.execute(_DELIVERIES, {"account": account, "status": status, "limit": limit})
        return [
            WebhookDeliveryView(
                r.id,
                r.event_id,
                r.type,
                r.account_code,
                r.endpoint_id,
                r.url,
                r.status,
                r.attempts,
                r.next_attempt_at,
                r.last_status,
                r.last_error,
                r.delivered_at,
            )
            for r in rows
        ]

    def attempts(self, delivery_id: int) -> list[WebhookAttempt]:
        rows = self._conn.execute(_ATTEMPTS, {"d": delivery_id})
        return [
            WebhookAttempt(r.delivery_id, r.attempt, r.attempted_at, r.status_code, r.error, r.duration_ms)
            for r in rows
        ]

    def add_threshold(self, threshold: AlertThreshold) -> None:
        t = threshold
        self._conn.execute(
            _ADD_THRESHOLD,
            {
                "id": t.id,
                "account": t.account,
                "kind": t.kind,
                "amount": t.amount,
                "meter": t.meter,
                "quantity": t.quantity,
                "unit": t.unit,
            },
        )

    def thresholds(self, account: str | None, include_removed: bool) -> list[AlertThreshold]:
        rows = self._conn.execute(_THRESHOLDS, {"account": account, "removed": include_removed})
        return [
            AlertThreshold(
                r.id,
                r.account_code,
                r.amount,
                r.active,
                r.kind,
                r.meter,
                None if r.quantity is None else r.quantity.normalize(),
                r.unit,
            )
            for r in rows
        ]

    def remove_threshold(self, threshold_id: str) -> bool:
        return self._conn.execute(_REMOVE_THRESHOLD, {"id": threshold_id}).first() is not None

    def record_crossing(
        self, threshold_id: str, period: str, measure: Decimal, at: datetime, event: WebhookEvent
    ) -> bool:
        # one checker at a time per threshold
        kind = self._conn.execute(_LOCK_THRESHOLD, {"id": threshold_id}).scalar_one()
        if self._conn.execute(_CROSSED, {"id": threshold_id, "period": period}).first() is not None:
            return False
        self.emit(event)
        usage = kind == "usage"
        params = {
            "id": threshold_id,
            "period": period,
            "amount": None if usage else measure,
            "quantity": measure if usage else None,
            "at": at,
            "event": event.id,
        }
        self._conn.execute(_CROSSING, params)
        return True
