"""Webhook events, their signature and the retry schedule (pure: stdlib only).

* An event is ``{"id", "type", "created_at", "account", "data"}`` as JSON, written once (the
  body is stored as text when the event is emitted, so every attempt and every replay sends the
  same bytes).
* The signature header is ``Streamtoll-Signature: t=<unix seconds>,v1=<hex>``, where ``<hex>``
  is ``HMAC-SHA256(secret, f"{t}." + body)`` — the key is the endpoint's secret as UTF-8, the
  message the decimal timestamp, a dot and the body's exact bytes. A receiver recomputes it,
  compares in constant time and refuses a timestamp more than ``TOLERANCE_SECONDS`` away from
  its clock (a replayed old request carries an old ``t``; changing ``t`` breaks the signature).
* A failed attempt is retried after ``backoff(attempts)``: 30 s, 1 min, 2 min, 4 min … doubling,
  at most 6 h; after ``MAX_ATTEMPTS`` attempts the delivery is ``failed``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "EVENT_ID_HEADER",
    "EVENT_TYPES",
    "MAX_ATTEMPTS",
    "SIGNATURE_HEADER",
    "TOLERANCE_SECONDS",
    "WebhookEvent",
    "backoff",
    "new_event",
    "parse_signature",
    "sign",
    "signature_header",
    "verify",
]

EVENT_TYPES = (
    "invoice.finalized",
    "invoice.voided",
    "credit_note.issued",
    "credential.revoked",
    "alert.amount_reached",
    "alert.usage_reached",
    "alert.balance_low",
    "quota.throttled",
    "quota.blocked",
    "quota.released",
)
SIGNATURE_HEADER = "Streamtoll-Signature"
EVENT_ID_HEADER = "Streamtoll-Event-Id"
TOLERANCE_SECONDS = 300
MAX_ATTEMPTS = 8
BACKOFF_BASE = timedelta(seconds=30)
BACKOFF_CAP = timedelta(hours=6)


@dataclass(frozen=True)
class WebhookEvent:
    """One event as emitted: ``body`` is the exact JSON every delivery of it sends."""

    id: str
    type: str
    account: str
    created_at: datetime
    body: str


def _instant(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def new_event(kind: str, account: str, data: dict[str, Any], at: datetime) -> WebhookEvent:
    """A new event (a fresh ``evt_`` id) of a known type; ``data`` must be JSON already (strings
    for amounts and instants)."""
    if kind not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {kind!r}")
    event_id = f"evt_{uuid.uuid4().hex}"
    doc = {"id": event_id, "type": kind, "created_at": _instant(at), "account": account, "data": data}
    return WebhookEvent(event_id, kind, account, at, json.dumps(doc, separators=(",", ":"), sort_keys=False))


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``f"{timestamp}." + body`` under ``secret``."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},v1={sign(secret, timestamp, body)}"


def parse_signature(header: str) -> tuple[int, list[str]]:
    """(t, the v1 signatures) of a ``Streamtoll-Signature`` value; ValueError when malformed."""
    t: int | None = None
    v1: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            t = int(value)
        elif key == "v1":
            v1.append(value)
    if t is None or not v1:
        raise ValueError("a Streamtoll-Signature has t=… and v1=…")
    return t, v1


def verify(secret: str, header: str, body: bytes, now: int, tolerance: int = TOLERANCE_SECONDS) -> bool:
    """What a receiver does: the signature matches and its timestamp is within ``tolerance`` s of ``now``."""
    try:
        t, signatures = parse_signature(header)
    except ValueError:
        return False
    if abs(now - t) > tolerance:
        return False
    expected = sign(secret, t, body)
    return any(hmac.compare_digest(expected, s) for s in signatures)


def backoff(attempts: int) -> timedelta:
    """How long to wait after the ``attempts``-th failed attempt (1: 30 s, 2: 1 min, … at most 6 h)."""
    if attempts < 1:
        return timedelta(0)
    delay: timedelta = BACKOFF_BASE * 2 ** min(attempts - 1, 20)
    return min(delay, BACKOFF_CAP)
