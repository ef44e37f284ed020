"""Signed webhooks against a real HTTP receiver (http.server in a thread) that verifies every
signature with this test's own HMAC code: an invoice finalized for real arrives once, after a
retried first attempt, however often ``streamtoll webhooks send`` runs; the log has one row per
attempt; a replay sends the same event again."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from billing.api.app import create_app
from billing.services.billing_run import run_billing
from billing.services.credentials import create_credential, revoke_credential
from billing.services.invoices import void
from billing.services.keys import create_key
from billing.services.webhooks import send_pending
from streamtoll.embedded import free_port
from streamtoll.serving import running

from .seed import DEC1

pytestmark = pytest.mark.integration


@dataclass
class Received:
    event_id: str
    body: bytes
    verified: bool
    status: int


@dataclass
class Receiver:
    url: str
    secret: str = ""
    answers: list[int] = field(default_factory=list)  # status codes to answer in turn, then 200
    got: list[Received] = field(default_factory=list)

    def verify(self, header: str, body: bytes) -> bool:
        """How a receiver checks ``Streamtoll-Signature`` (written here, not imported)."""
        parts = dict(p.split("=", 1) for p in header.split(","))
        t = int(parts["t"])
        if abs(time.time() - t) > 300:
            return False
        mac = hmac.new(self.secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(mac, parts["v1"])

    def accepted(self) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.got if r.verified and r.status == 200]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    port = free_port()
    rec = Receiver(f"http://127.0.0.1:{port}/hooks")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            verified = self.headers["Content-Type"] == "application/json" and rec.verify(
                self.headers["Streamtoll-Signature"], body
            )
            status = (rec.answers.pop(0) if rec.answers else 200) if verified else 400
            rec.got.append(Received(self.headers["Streamtoll-Event-Id"], body, verified, status))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()


def cli(migrated: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STREAMTOLL_")},
        "STREAMTOLL_DATABASE_URL": migrated,
    }
    return subprocess.run(
        [sys.executable, "-m", "streamtoll.cli", "webhooks", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _deliveries(engine: sa.Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT * FROM webhook_deliveries ORDER BY id")))


def test_a_finalized_invoice_arrives_once_signed_after_a_retry(
    engine: sa.Engine, migrated: str, receiver: Receiver
) -> None:
    added = cli(migrated, "add", "acme", receiver.url, "--events", "invoice.finalized,invoice.voided", "--json")
    assert added.returncode == 0, added.stderr
    endpoint = json.loads(added.stdout)
    receiver.secret = endpoint["secret"]
    assert endpoint["account"] == "acme" and receiver.secret.startswith("whsec_")
    listed = cli(migrated, "list", "acme", "--json")
    assert [e["id"] for e in json.loads(listed.stdout)] == [endpoint["id"]]
    assert "secret" not in listed.stdout and receiver.secret not in listed.stdout  # shown once

    # three invoices finalized for real; only acme's has an endpoint
    run_billing(engine, "2026-11", finalize_drafts=True, clock=lambda: DEC1)
    [queued] = _deliveries(engine)
    assert (queued.status, queued.attempts) == ("pending", 0)

    receiver.answers = [500]
    first = cli(migrated, "send")
    assert first.returncode == 0 and "delivered 0, retrying 1, failed 0" in first.stdout, first.stdout + first.stderr
    [after] = _deliveries(engine)
    assert (after.status, after.attempts, after.last_status) == ("pending", 1, 500)
    with engine.connect() as conn:
        attempted = conn.execute(sa.text("SELECT attempted_at FROM webhook_attempts")).scalar_one()
    assert after.next_attempt_at - attempted == timedelta(seconds=30)  # the first backoff
    assert "delivered 0, retrying 0" in cli(migrated, "send").stdout  # not due yet: nothing sent
    assert len(receiver.got) == 1

    with engine.begin() as conn:  # 30 seconds pass
        conn.execute(sa.text("UPDATE webhook_deliveries SET next_attempt_at = next_attempt_at - interval '30 s'"))
    second = cli(migrated, "send")
    assert "delivered 1, retrying 0, failed 0" in second.stdout, second.stdout + second.stderr
    third = cli(migrated, "send")
    assert "delivered 0, retrying 0, failed 0" in third.stdout  # nothing twice

    assert [(r.verified, r.status) for r in receiver.got] == [(True, 500), (True, 200)]
    assert receiver.got[0].body == receiver.got[1].body  # the retry sends the same bytes
    [event] = receiver.accepted()
    assert receiver.got[1].event_id == event["id"] and event["id"].startswith("evt_")
    assert (event["type"], event["account"], event["created_at"]) == (
        "invoice.finalized",
        "acme",
        "2026-12-01T09:00:00Z",
    )
    # acme: 168.00 + 19 % tax 31.92 = 199.92 (tests/integration/test_billing.py works it out)
    assert event["data"]["invoice"] == {
        "number": "INV-2026-000001",
        "account": "acme",
        "period": {"start": "2026-11-01", "end": "2026-12-01"},
        "kind": "standard",
        "currency": "EUR",
        "subtotal": "168.00",
        "tax": "31.92",
        "total": "199.92",
        "issued_on": "2026-12-01",
        "due_on": "2026-12-31",
    }

    # the delivery log: one row per attempt
    log = cli(migrated, "attempts", str(queued.id), "--json")
    rows = json.loads(log.stdout)
    assert [(r["attempt"], r["status_code"], r["error"]) for r in rows] == [(1, 500, None), (2, 200, None)]
    assert all(r["duration_ms"] >= 0 for r in rows)
    [shown] = json.loads(cli(migrated, "deliveries", "--account", "acme", "--json").stdout)
    assert (shown["status"], shown["attempts"], shown["last_status"]) == ("delivered", 2, 200)

    # a replay sends the same event again (same id and body), logged as new attempts
    assert cli(migrated, "replay", str(queued.id)).returncode == 0
    assert "delivered 1" in cli(migrated, "send").stdout
    assert receiver.got[2].event_id == event["id"] and receiver.got[2].body == receiver.got[1].body
    assert len(json.loads(cli(migrated, "attempts", str(queued.id), "--json").stdout)) == 3
    missing = cli(migrated, "replay", "999")
    assert missing.returncode == 3, missing.stderr  # not found

    # voiding the invoice is an event too
    void(engine, "INV-2026-000001", "wrong plan")
    assert send_pending(engine).delivered == 1
    voided = receiver.accepted()[-1]
    assert voided["type"] == "invoice.voided" and voided["data"]["invoice"]["void_reason"] == "wrong plan"


def test_a_revoked_credential_is_an_event_and_a_removed_endpoint_gets_nothing(
    engine: sa.Engine, migrated: str, receiver: Receiver
) -> None:
    endpoint = json.loads(cli(migrated, "add", "acme", receiver.url, "--json").stdout)
    receiver.secret = endpoint["secret"]
    issued = create_credential(engine, "acme", "orders")
    revoke_credential(engine, issued.id)
    assert send_pending(engine).delivered == 1
    [event] = receiver.accepted()
    assert event["type"] == "credential.revoked" and event["account"] == "acme"
    assert event["data"]["credential"]["id"] == issued.id
    assert event["data"]["credential"]["username"] == issued.username

    removed = cli(migrated, "remove", "acme", endpoint["id"])
    assert removed.returncode == 0, removed.stderr
    run_billing(engine, "2026-11", finalize_drafts=True, clock=lambda: DEC1)
    assert send_pending(engine).delivered == 0
    assert len(receiver.got) == 1
    assert cli(migrated, "remove", "acme", endpoint["id"]).returncode == 3


def test_finance_manages_endpoints_and_replays_over_http(engine: sa.Engine, receiver: Receiver) -> None:
    finance, partner = create_key(engine, "finance", None), create_key(engine, "partner", "acme")
    with running(create_app(engine, auth_limit=1000)) as base:
        auth = {"Authorization": f"Bearer {finance}"}
        params = {"account": "acme", "url": receiver.url, "events": "invoice.finalized"}
        added = httpx.post(base + "/v1/webhooks", params=params, headers={**auth, "Idempotency-Key": "hook-1"})
        assert added.status_code == 200, added.text
        doc = added.json()
        receiver.secret = doc["secret"]
        assert (doc["account"], doc["events"], doc["active"]) == ("acme", ["invoice.finalized"], True)
        again = httpx.post(base + "/v1/webhooks", params=params, headers={**auth, "Idempotency-Key": "hook-1"})
        assert again.json() == {**doc, "secret": None}  # the secret is shown once, even to a retry
        listed = httpx.get(base + "/v1/webhooks", headers=auth).json()
        assert [e["id"] for e in listed] == [doc["id"]] and "secret" not in listed[0]
        bad = httpx.post(base + "/v1/webhooks", params={**params, "url": "ftp://x"}, headers=auth)
        assert bad.status_code == 422, bad.text
        partner_auth = {"Authorization": f"Bearer {partner}"}
        assert httpx.get(base + "/v1/webhooks", headers=partner_auth).status_code == 403

        run_billing(engine, "2026-11", finalize_drafts=True, clock=lambda: DEC1)
        assert send_pending(engine).delivered == 1
        [delivery] = httpx.get(base + "/v1/webhooks/deliveries", params={"account": "acme"}, headers=auth).json()
        assert (delivery["type"], delivery["status"], delivery["attempts"]) == ("invoice.finalized", "delivered", 1)
        replayed = httpx.post(base + f"/v1/webhooks/deliveries/{delivery['id']}/replay", headers=auth)
        assert replayed.json() == {"id": delivery["id"], "queued": True}
        assert send_pending(engine).delivered == 1
        attempts = httpx.get(base + f"/v1/webhooks/deliveries/{delivery['id']}/attempts", headers=auth).json()
        assert [(a["attempt"], a["status_code"]) for a in attempts] == [(1, 200), (1, 200)]
        assert [r.event_id for r in receiver.got] == [delivery["event_id"]] * 2

        removed = httpx.post(base + f"/v1/webhooks/{doc['id']}/remove", headers=auth)
        assert removed.json() == {"id": doc["id"], "removed": True}
        assert httpx.post(base + f"/v1/webhooks/{doc['id']}/remove", headers=auth).status_code == 404
        assert httpx.post(base + "/v1/webhooks/deliveries/999/replay", headers=auth).status_code == 404


def alerts(migrated: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STREAMTOLL_")},
        "STREAMTOLL_DATABASE_URL": migrated,
    }
    return subprocess.run(
        [sys.executable, "-m", "streamtoll.cli", "alerts", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_an_amount_threshold_reached_arrives_once(engine: sa.Engine, migrated: str, receiver: Receiver) -> None:
    receiver.secret = json.loads(cli(migrated, "add", "acme", receiver.url, "--json").stdout)["secret"]
    low = json.loads(alerts(migrated, "add", "acme", "150.00", "--json").stdout)
    high = alerts(migrated, "add", "acme", "200", "--json")
    assert high.returncode == 0, high.stderr
    assert alerts(migrated, "add", "nobody", "1").returncode == 3
    assert alerts(migrated, "add", "acme", "0").returncode == 2
    # November so far for acme: 168.00 before tax (tests/integration/test_billing.py works it out):
    # 150.00 is reached, 200.00 is not
    first = alerts(migrated, "check", "--period", "2026-11", "--json")
    assert [t["id"] for t in json.loads(first.stdout)] == [low["id"]], first.stderr
    again = alerts(migrated, "check", "--period", "2026-11", "--json")
    assert json.loads(again.stdout) == []  # once per period
    assert send_pending(engine).delivered == 1
    assert send_pending(engine).delivered == 0
    [event] = receiver.accepted()
    assert (event["type"], event["account"]) == ("alert.amount_reached", "acme")
    assert event["data"] == {
        "threshold": {"id": low["id"], "amount": "150.00"},
        "period": "2026-11",
        "currency": "EUR",
        "amount": "168.00",
    }


def test_a_usage_threshold_reached_arrives_once_with_billing_sources(
    engine: sa.Engine, migrated: str, receiver: Receiver
) -> None:
    added = cli(migrated, "add", "acme", receiver.url, "--events", "alert.usage_reached", "--json")
    receiver.secret = json.loads(added.stdout)["secret"]

    def usage(account: str, quantity: str, unit: str) -> str:
        out = alerts(migrated, "add", account, "--meter", "produce_bytes", "--quantity", quantity, "--unit", unit)
        assert out.returncode == 0, out.stderr
        return re.search(r"threshold (thr_\w+)", out.stdout).group(1)  # type: ignore[union-attr]

    # November, produce bytes (tests/integration/seed.py): acme 1000 GB + 250 GB = 1 250 000 000 000
    # from proxy (its 999 GB of broker metrics are never added: bytes come from one source);
    # initech 1 TB from broker metrics only (it has no proxy usage)
    exact = usage("acme", "1250", "GB")  # 1 250 000 000 000: reached exactly
    gib_over = usage("acme", "1165", "GiB")  # 1165 × 2^30 = 1 250 909 224 960 > 1.25 × 10^12
    gib_under = usage("acme", "1164", "GiB")  # 1 250 909 224 960 − 1 073 741 824 = 1 249 835 483 136
    added_up = usage("acme", "2249", "GB")  # reached only if proxy and broker metrics were added
    initech = usage("initech", "1", "TB")  # 10^12 from broker metrics: reached
    assert alerts(migrated, "add", "acme", "--meter", "produce_bytes", "--quantity", "5").returncode == 2
    wrong_unit = alerts(migrated, "add", "acme", "--meter", "produce_records", "--quantity", "5", "--unit", "GB")
    assert wrong_unit.returncode == 2 and "does not fit" in wrong_unit.stderr
    listed = json.loads(alerts(migrated, "list", "acme", "--json").stdout)
    assert [(t["kind"], t["quantity"], t["unit"]) for t in listed] == [
        ("usage", "1164", "GiB"),
        ("usage", "1250", "GB"),
        ("usage", "1165", "GiB"),
        ("usage", "2249", "GB"),
    ]

    first = alerts(migrated, "check", "--period", "2026-11", "--json")
    assert first.returncode == 0, first.stderr
    assert {t["id"] for t in json.loads(first.stdout)} == {exact, gib_under, initech}
    assert gib_over not in first.stdout and added_up not in first.stdout
    assert json.loads(alerts(migrated, "check", "--period", "2026-11", "--json").stdout) == []  # once a period
    with engine.connect() as conn:
        stored = dict(conn.execute(sa.text("SELECT threshold_id, quantity FROM alert_crossings")).all())
    assert stored == {exact: 1_250_000_000_000, gib_under: 1_250_000_000_000, initech: 1_000_000_000_000}

    assert send_pending(engine).delivered == 2  # acme's two; initech has no endpoint
    events = {e["data"]["threshold"]["id"]: e for e in receiver.accepted()}
    assert set(events) == {exact, gib_under}
    assert events[exact]["type"] == "alert.usage_reached" and events[exact]["account"] == "acme"
    assert events[exact]["data"] == {
        "threshold": {"id": exact, "meter": "produce_bytes", "quantity": "1250", "unit": "GB"},
        "period": "2026-11",
        "meter": "produce_bytes",
        "quantity": 1_250_000_000_000,
        "unit": "GB",
        "quantity_in_unit": "1250",
        "source": "proxy",
    }
    in_gib = events[gib_under]["data"]
    # 1 250 000 000 000 − 1 249 835 483 136 = 164 516 864 bytes over 1164 GiB: 1164.153… GiB
    assert in_gib["quantity_in_unit"].startswith("1164.153")
    assert Decimal(in_gib["quantity_in_unit"]) * 2**30 == 1_250_000_000_000


def test_streamtoll_jobs_sends_each_round_and_stops_on_sigterm(
    engine: sa.Engine, migrated: str, receiver: Receiver
) -> None:
    receiver.secret = json.loads(cli(migrated, "add", "acme", receiver.url, "--json").stdout)["secret"]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STREAMTOLL_")},
        "STREAMTOLL_DATABASE_URL": migrated,
    }
    revoke_credential(engine, create_credential(engine, "acme", "orders").id)
    once = subprocess.run(
        [sys.executable, "-m", "streamtoll.cli", "jobs", "--once"], env=env, capture_output=True, text=True, timeout=120
    )
    assert once.returncode == 0, once.stderr
    assert "webhooks send: delivered 1, retrying 0, failed 0" in once.stdout, once.stdout
    assert "alerts check" not in once.stdout  # no threshold: nothing read, nothing said
    assert [e["type"] for e in receiver.accepted()] == ["credential.revoked"]

    jobs = subprocess.Popen(
        [sys.executable, "-m", "streamtoll.cli", "jobs", "--every", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        revoke_credential(engine, create_credential(engine, "acme", "payments").id)  # sent by a later round
        deadline = time.monotonic() + 30
        while len(receiver.accepted()) < 2:
            assert jobs.poll() is None and time.monotonic() < deadline, "streamtoll jobs sent nothing in 30 s"
            time.sleep(0.2)
        jobs.send_signal(signal.SIGTERM)
        out, err = jobs.communicate(timeout=30)
    finally:
        if jobs.poll() is None:
            jobs.kill()
            jobs.wait()
    assert jobs.returncode == 0, err
    lines = out.splitlines()
    assert lines[0] == "running thresholds check, alerts check, webhooks send every 1 s" and lines[-1] == "stopped", out
    assert "webhooks send: delivered 1" in out
    assert [e["type"] for e in receiver.accepted()] == ["credential.revoked"] * 2
