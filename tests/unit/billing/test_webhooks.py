"""Signed webhooks over fakes: the signature (checked with this test's own HMAC code), the
backoff schedule, and the sender: retried with backoff, failed after its attempts, logged per
attempt, never sent twice once delivered, replayed by id."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing.domain.webhooks import backoff, new_event, parse_signature, sign, signature_header, verify
from billing.errors import WebhookError, WebhookNotFound
from billing.services.webhooks import cross_thresholds, deliver, new_endpoint, new_threshold
from tests.unit.billing.fakes_edge import FakeWebhooks

T = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
SECRET = "whsec_test"


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    body = b'{"id":"evt_1","type":"invoice.finalized"}'
    expected = hmac.new(b"whsec_test", b"1796202000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1796202000, body) == expected
    assert signature_header(SECRET, 1796202000, body) == f"t=1796202000,v1={expected}"
    assert parse_signature(f"t=1796202000, v1={expected}") == (1796202000, [expected])


def test_verification_refuses_another_body_secret_or_an_old_timestamp() -> None:
    body = b'{"id":"evt_1"}'
    header = signature_header(SECRET, 1000, body)
    assert verify(SECRET, header, body, now=1000)
    assert verify(SECRET, header, body, now=1300)  # 5 min of clock skew or delay
    assert not verify(SECRET, header, body, now=1301)  # a replay of an old request
    assert not verify(SECRET, header, b'{"id":"evt_2"}', now=1000)
    assert not verify("whsec_other", header, body, now=1000)
    assert not verify(SECRET, header.replace("t=1000", "t=1200"), body, now=1200)  # t is signed
    assert not verify(SECRET, "v1=abc", body, now=1000)


def test_backoff_doubles_from_30_seconds_up_to_6_hours() -> None:
    assert [backoff(n).total_seconds() for n in range(1, 12)] == [
        30,
        60,
        120,
        240,
        480,
        960,
        1920,
        3840,
        7680,
        15360,
        21600,  # 30 × 2^10 = 30720 s is more than 6 h
    ]
    assert backoff(100) == timedelta(hours=6)


def test_an_event_body_is_json_with_id_type_time_account_and_data() -> None:
    event = new_event("credential.revoked", "acme", {"credential": {"id": "cred_1"}}, T)
    assert json.loads(event.body) == {
        "id": event.id,
        "type": "credential.revoked",
        "created_at": "2026-12-02T09:00:00Z",
        "account": "acme",
        "data": {"credential": {"id": "cred_1"}},
    }
    with pytest.raises(ValueError, match="unknown"):
        new_event("invoice.paid", "acme", {}, T)


def test_an_endpoint_needs_an_http_url_known_types_and_an_account() -> None:
    hooks = FakeWebhooks()
    added = new_endpoint(hooks, "acme", "https://hooks.example/in", ["invoice.voided", "invoice.voided"])
    assert added.secret.startswith("whsec_") and len(added.secret) > 40
    assert added.endpoint.event_types == ("invoice.voided",)
    every = new_endpoint(hooks, "acme", "http://127.0.0.1:9/x")
    assert every.endpoint.event_types == (
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
    with pytest.raises(WebhookError, match=r"not an http\(s\) URL.*unknown event type\(s\) invoice.paid"):
        new_endpoint(hooks, "acme", "ftp://x", ["invoice.paid"])
    with pytest.raises(WebhookNotFound):
        new_endpoint(hooks, "nobody", "https://hooks.example/in")


class Receiver:
    """A fake :data:`~billing.services.webhooks.Post`: answers ``statuses`` in turn (an
    exception is raised), then 200; keeps what it got."""

    def __init__(self, *statuses: int | Exception) -> None:
        self.statuses = list(statuses)
        self.got: list[tuple[str, bytes, dict[str, str]]] = []

    def __call__(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
        self.got.append((url, body, headers))
        answer = self.statuses.pop(0) if self.statuses else 200
        if isinstance(answer, Exception):
            raise answer
        return answer


class Clock:
    def __init__(self) -> None:
        self.now = T

    def __call__(self) -> datetime:
        return self.now


def _setup(events: list[str] | None = None) -> tuple[FakeWebhooks, str]:
    hooks = FakeWebhooks()
    secret = new_endpoint(hooks, "acme", "https://hooks.example/in", events).secret
    return hooks, secret


def test_a_delivery_is_signed_retried_with_backoff_and_logged_per_attempt() -> None:
    hooks, secret = _setup()
    clock = Clock()
    event = new_event("invoice.finalized", "acme", {"invoice": {"number": "INV-2026-000001"}}, T)
    assert hooks.emit(event) == 1
    receiver = Receiver(500, ConnectionRefusedError("refused"))
    first = deliver(hooks.transaction, receiver, clock, monotonic=iter([0.0, 0.25]).__next__)
    assert (first.delivered, first.retrying, first.failed) == (0, 1, 0)
    [d] = hooks.deliveries("acme", None, 10)
    assert (d.status, d.attempts, d.next_attempt_at, d.last_status) == ("pending", 1, T + timedelta(seconds=30), 500)
    # not due yet: nothing is sent
    clock.now = T + timedelta(seconds=29)
    assert deliver(hooks.transaction, receiver, clock).retrying == 0 and len(receiver.got) == 1
    clock.now = T + timedelta(seconds=30)
    assert deliver(hooks.transaction, receiver, clock).retrying == 1  # refused: next in 1 min
    clock.now = T + timedelta(seconds=90)
    third = deliver(hooks.transaction, receiver, clock)
    assert (third.delivered, third.retrying) == (1, 0)
    assert [(a.attempt, a.status_code, a.error) for a in hooks.attempts(d.id)] == [
        (1, 500, None),
        (2, None, "refused"),
        (3, 200, None),
    ]
    assert hooks.attempts(d.id)[0].duration_ms == 250.0
    # every attempt sends the same body, signed at its own time with the endpoint's secret
    assert {body for _, body, _ in receiver.got} == {event.body.encode()}
    for (_, body, headers), at in zip(receiver.got, (T, T + timedelta(seconds=30), clock.now), strict=True):
        t, [v1] = parse_signature(headers["Streamtoll-Signature"])
        assert t == int(at.timestamp())
        assert v1 == hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
        assert headers["Streamtoll-Event-Id"] == event.id
    # delivered: a later run sends nothing
    clock.now += timedelta(days=1)
    assert deliver(hooks.transaction, receiver, clock).delivered == 0 and len(receiver.got) == 3


def test_a_delivery_fails_after_its_attempts_and_a_replay_queues_it_again() -> None:
    hooks, _ = _setup()
    clock = Clock()
    hooks.emit(new_event("invoice.voided", "acme", {}, T))
    receiver = Receiver(*([503] * 3))
    report = deliver(hooks.transaction, receiver, clock, max_attempts=3)
    for _ in range(2):
        clock.now += timedelta(hours=1)
        report = deliver(hooks.transaction, receiver, clock, max_attempts=3)
    assert (report.failed, report.retrying) == (1, 0)
    [d] = hooks.deliveries(None, "failed", 10)
    clock.now += timedelta(days=1)
    assert deliver(hooks.transaction, receiver, clock, max_attempts=3).failed == 0  # failed stays failed
    assert hooks.replay(d.id, clock.now)
    assert deliver(hooks.transaction, receiver, clock, max_attempts=3).delivered == 1
    assert [(a.attempt, a.status_code) for a in hooks.attempts(d.id)] == [(1, 503), (2, 503), (3, 503), (1, 200)]
    assert not hooks.replay(999, clock.now)


def test_events_go_only_to_active_endpoints_of_the_account_that_take_their_type() -> None:
    hooks, _ = _setup(["invoice.voided"])
    other = new_endpoint(hooks, "acme", "https://b.example/in").endpoint
    hooks.accounts.add("globex")
    new_endpoint(hooks, "globex", "https://c.example/in")
    assert hooks.emit(new_event("invoice.finalized", "acme", {}, T)) == 1  # only `other` takes it
    assert hooks.emit(new_event("invoice.voided", "acme", {}, T)) == 2
    assert hooks.remove_endpoint("acme", other.id, T)
    assert not hooks.remove_endpoint("acme", other.id, T)
    assert {d.status for d in hooks.deliveries(None, None, 10) if d.endpoint_id == other.id} == {"cancelled"}
    receiver = Receiver()
    assert deliver(hooks.transaction, receiver, Clock()).delivered == 1
    assert [url for url, _, _ in receiver.got] == ["https://hooks.example/in"]


def test_a_delivery_another_sender_holds_is_skipped() -> None:
    hooks, _ = _setup()
    hooks.emit(new_event("invoice.finalized", "acme", {}, T))
    hooks.held.add(1)
    assert deliver(hooks.transaction, Receiver(), Clock()).delivered == 0


def test_a_threshold_reached_emits_one_event_per_period() -> None:
    hooks, _ = _setup(["alert.amount_reached"])
    hooks.accounts.add("globex")
    low = new_threshold(hooks, "acme", "150.00")
    high = new_threshold(hooks, "acme", "200")
    new_threshold(hooks, "globex", "1")
    with pytest.raises(WebhookError, match="above zero"):
        new_threshold(hooks, "acme", "-5")
    with pytest.raises(WebhookError, match="above zero"):
        new_threshold(hooks, "acme", "lots")
    with pytest.raises(WebhookNotFound):
        new_threshold(hooks, "nobody", "10")
    # acme has rated 168.00 of November so far: 150.00 is reached, 200.00 not; globex has no usage
    rated = {"acme": (Decimal("168.00"), "EUR")}
    assert cross_thresholds(hooks, "2026-11", rated, T) == [low]
    assert cross_thresholds(hooks, "2026-11", rated, T) == []  # once per period
    [event] = hooks.events
    assert json.loads(event.body)["data"] == {
        "threshold": {"id": low.id, "amount": "150.00"},
        "period": "2026-11",
        "currency": "EUR",
        "amount": "168.00",
    }
    assert len(hooks.deliveries("acme", "pending", 10)) == 1  # to the endpoint that takes alerts
    more = {"acme": (Decimal("200.00"), "EUR")}
    assert cross_thresholds(hooks, "2026-11", more, T) == [high]  # reached exactly
    assert cross_thresholds(hooks, "2026-12", rated, T) == [low]  # a new period
    assert hooks.remove_threshold(low.id) and not hooks.remove_threshold(low.id)
    assert cross_thresholds(hooks, "2027-01", rated, T) == []
