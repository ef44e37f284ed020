"""The demo's gateway leg: real clients through ``streamtoll gateway``, metered, stored, billed.

``streamtoll gateway`` runs as a child process in front of the demo's broker. A few
confluent-kafka producers and consumers (:data:`CLIENTS`, client ids that the sample client
rules give to ``acme`` and ``initech``, and one that no rule matches) produce and read topics
of their own through it, now. What they sent is known without the gateway: records from the
producers' delivery reports and the consumers' messages, record-batch bytes read straight from
the broker (each topic has one producer and one reader, who reads it once). The gateway's audit
events then go through the demo's worker and sink like every other record; :func:`compare`
checks, per account and direction, that the metered usage windows, the stored usage, the
account's statement and the draft invoice of the current month (the period the clients ran in)
hold exactly what the clients sent.
"""

from __future__ import annotations

import shutil
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from datetime import time as dtime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Engine as Database
from sqlalchemy import text

from billing.domain.units import unit_size
from billing.services.billing_run import parse_period, run_billing
from billing.services.statements import statement
from billing.services.usage import usage_report
from metering.settings import MeteringSettings
from streamtoll.dev.gateway_clients import (
    ClientReport,
    broker_batches,
    consume_through,
    create_topics,
    gateway_env,
    produce_through,
    read_ends,
    run_parallel,
    wait_listening,
)
from streamtoll.dev.up import Child

__all__ = ["CLIENTS", "VIRTUAL_CLUSTER", "DemoClient", "GatewayLeg", "compare", "gateway_windows", "run_clients"]

VIRTUAL_CLUSTER = "demo-gateway"  # the gateway's events carry it: the leg's windows are told apart by it


@dataclass(frozen=True)
class DemoClient:
    client_id: str
    account: str  # whom the sample client rules should bill (the check, not the attribution)
    topic: str
    direction: str
    messages: int = 0
    value_bytes: int = 0
    config: tuple[tuple[str, Any], ...] = ()


CLIENTS: tuple[DemoClient, ...] = (
    DemoClient(
        "acme-checkout",
        "acme",
        "gw.orders",
        "produce",
        3000,
        400,
        (("enable.idempotence", True), ("compression.type", "lz4")),
    ),
    DemoClient("acme-fulfilment", "acme", "gw.orders", "consume"),
    DemoClient("initech-sensor-hub", "initech", "gw.telemetry", "produce", 5000, 120, (("acks", 1),)),
    DemoClient("initech-dashboard", "initech", "gw.telemetry", "consume"),
    DemoClient("hooli-loadtest", "unassigned", "gw.scratch", "produce", 800, 900, (("compression.type", "zstd"),)),
)
TOPICS = {"gw.orders": 3, "gw.telemetry": 2, "gw.scratch": 1}
Key = tuple[str, str]  # (account, direction)


@dataclass
class GatewayLeg:
    period: str  # the month the clients ran in
    reports: list[ClientReport] = field(default_factory=list)
    sent: dict[tuple[str, str, str], list[int]] = field(default_factory=dict)  # client, topic, dir → bytes, records
    audit_ends: dict[tuple[str, int], int] = field(default_factory=dict)
    wall_s: float = 0.0


def run_clients(settings: MeteringSettings, env: Mapping[str, str], log_path: Path) -> GatewayLeg:
    """Start the gateway, run the clients through it, stop it (it drains and flushes its audit
    events); what the clients sent, and where the audit topic ends afterwards."""
    assert settings.kafka_bootstrap
    started = time.monotonic()
    broker = settings.kafka_bootstrap
    config = settings.kafka_config()
    create_topics(broker, config, TOPICS)
    # a journal of the demo's own, emptied first: what an earlier, interrupted demo left there
    # belongs to that run's broker, and replayed here it would be counted as this run's traffic
    journal = log_path.parent / "gateway-journal"
    shutil.rmtree(journal, ignore_errors=True)
    child_env, bootstrap = gateway_env(env, broker, VIRTUAL_CLUSTER, journal)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    gateway = Child("gateway", ["gateway"], child_env, log_path)
    leg = GatewayLeg(datetime.now(UTC).strftime("%Y-%m"))
    gateway.start()
    try:
        if not wait_listening(bootstrap, gateway.alive):
            raise RuntimeError(f"the gateway did not come up; see {log_path}")
        producers = [c for c in CLIENTS if c.direction == "produce"]
        leg.reports = run_parallel(
            [
                lambda c=c, i=i: produce_through(
                    bootstrap, c.client_id, c.topic, c.messages, c.value_bytes, dict(c.config), seed=i
                )
                for i, c in enumerate(producers)
            ]
        )
        produced = {r.topic: r.records for r in leg.reports}
        readers = [c for c in CLIENTS if c.direction == "consume"]
        leg.reports += run_parallel(
            [
                lambda c=c: consume_through(bootstrap, c.client_id, c.topic, TOPICS[c.topic], produced[c.topic])
                for c in readers
            ]
        )
    finally:
        gateway.stop()
    if gateway.proc is not None and gateway.proc.returncode != 0:
        raise RuntimeError(f"the gateway exited with code {gateway.proc.returncode}; see {log_path}")
    failed = [r for r in leg.reports if r.errors]
    if failed:
        raise RuntimeError(f"gateway clients saw errors: {failed}; see {log_path}")
    stored = {t: broker_batches(broker, t, n) for t, n in TOPICS.items()}
    for r in leg.reports:
        # the producer's batches are what the broker holds; the reader read each of them once
        leg.sent[(r.client_id, r.topic, r.direction)] = [stored[r.topic][1], r.records]
    leg.audit_ends = read_ends(broker, config, settings.topic_proxy_audit)
    leg.wall_s = time.monotonic() - started
    return leg


def gateway_windows(windows: Mapping[tuple[str, ...], list[int]]) -> dict[tuple[str, str, str], list[int]]:
    """The leg's metered usage windows (its virtual cluster), as (client, topic, direction) →
    [bytes, records], hours added up."""
    out: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for (source, _principal, client, vc, topic, direction, _hour), v in windows.items():
        if source == "proxy" and vc == VIRTUAL_CLUSTER:
            out[(client, topic, direction)][0] += v[0]
            out[(client, topic, direction)][1] += v[1]
    return dict(out)


def _by_account(values: Mapping[tuple[str, str, str], list[int]]) -> dict[Key, list[int]]:
    account = {c.client_id: c.account for c in CLIENTS}
    out: dict[Key, list[int]] = defaultdict(lambda: [0, 0])
    for (client, _topic, direction), (b, r) in values.items():
        row = out[(account.get(client, f"? {client}"), direction)]
        row[0] += b
        row[1] += r
    return dict(out)


def _invoice_quantities(db: Database, account: str, start: date) -> dict[Key, dict[str, Any]]:
    """The draft invoice's proxy usage lines of bytes and records, in raw bytes and records."""
    with db.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT l.meter, l.quantity, l.unit FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id "
                "WHERE i.account_code = :a AND i.period_start = :s AND i.kind = 'standard' AND l.kind = 'usage' "
                "AND l.source = 'proxy' AND (l.meter LIKE '%_bytes' OR l.meter LIKE '%_records')"
            ),
            {"a": account, "s": start},
        ).all()
    out: dict[Key, dict[str, Any]] = defaultdict(dict)
    for meter, quantity, unit in rows:
        direction, measure = meter.split("_")
        out[(account, direction)][measure] = (Decimal(quantity), unit)
    return dict(out)


def _same(raw: int, quantity: Decimal, unit: str | None) -> bool:
    """A line's quantity (stored to 9 decimals in its unit) is ``raw`` bytes or records."""
    size = unit_size(unit) if unit else 1  # a line without a unit holds the raw quantity
    return abs(quantity - Decimal(raw) / size) <= Decimal("0.0000000005")


def compare(db: Database, leg: GatewayLeg, metered: Mapping[tuple[str, str, str], list[int]]) -> dict[str, Any]:
    """Bill the leg's month (drafts) and compare each stage with what the clients sent, per
    account and direction. ``matches`` is False when any stage differs."""
    start, end = parse_period(leg.period)
    t0, t1 = datetime.combine(start, dtime(), UTC), datetime.combine(end, dtime(), UTC)
    bills = {b.account: b for b in run_billing(db, leg.period)}
    clients = {c.client_id for c in CLIENTS}
    sent = _by_account(leg.sent)
    got_metered = _by_account(metered)
    stored: dict[Key, list[int]] = defaultdict(lambda: [0, 0])
    for r in usage_report(db, t0, t1, ("account", "virtual_cluster", "client_id", "direction")):
        if r["virtual_cluster"] == VIRTUAL_CLUSTER and r["client_id"] in clients:
            stored[(r["account"], r["direction"])][0] += r["bytes"]
            stored[(r["account"], r["direction"])][1] += r["records"]
    rows: list[dict[str, Any]] = []
    for account in sorted({a for a, _ in sent}):
        doc = statement(db, account, leg.period) if account in bills else None
        on_statement: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for r in (doc or {}).get("by_client_id", []):
            if r["source"] == "proxy" and r["client_id"] in clients:
                on_statement[r["direction"]][0] += r["bytes"]
                on_statement[r["direction"]][1] += r["records"]
        lines = _invoice_quantities(db, account, start) if account in bills else {}
        for direction in ("produce", "consume"):
            key = (account, direction)
            if key not in sent:
                continue
            want = sent[key]
            row: dict[str, Any] = {
                "account": account,
                "direction": direction,
                "sent_bytes": want[0],
                "sent_records": want[1],
                "metered": got_metered.get(key, [0, 0]),
                "stored": stored.get(key, [0, 0]),
                "statement": on_statement.get(direction, [0, 0]) if doc else None,
                "invoice": bills[account].as_dict()["ref"] if account in bills else None,
                # the invoice's lines of this direction: quantity in the line's unit (none: raw)
                "invoice_lines": {m: {"quantity": str(q), "unit": u} for m, (q, u) in lines.get(key, {}).items()},
            }
            ok = row["metered"] == want and row["stored"] == want and (doc is None or row["statement"] == want)
            for measure, (quantity, unit) in lines.get(key, {}).items():
                ok = ok and _same(want[0] if measure == "bytes" else want[1], quantity, unit)
            # every billed account has its invoice (and an unassigned client none)
            ok = ok and ((account in bills) == (account != "unassigned"))
            row["matches"] = ok
            rows.append(row)
    return {
        "period": leg.period,
        "virtual_cluster": VIRTUAL_CLUSTER,
        "clients": [vars(r) for r in leg.reports],
        "rows": rows,
        "invoices": {a: b.as_dict() for a, b in bills.items() if a in {r["account"] for r in rows}},
        "wall_time_s": round(leg.wall_s, 1),
        "matches": bool(rows) and all(r["matches"] for r in rows),
    }
