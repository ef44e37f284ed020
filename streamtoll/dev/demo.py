"""``streamtoll demo``: the main job end to end on embedded defaults.

Start the embedded broker and PostgreSQL (the command line does that), migrate, load the sample
plans and accounts, generate a month of realistic audit traffic for the sample accounts'
principals and some unassigned ones (proxy audit with retries, late, bad and ignored records and
tombstones; broker metrics with a counter reset and retried exports; audit log with denied
requests), meter it with the real worker loop, check the published usage windows against the
generator's own ground truth, sink them into PostgreSQL with the real sink (checked again), bill
the month, finalize. A gateway leg (``streamtoll.dev.demo_gateway``) runs ``streamtoll gateway`` in
front of the broker with a few real confluent-kafka producers and consumers going through it
now; their usage goes through the same worker and sink, is billed on the current month's draft
invoices and is checked against what the clients sent. Everything is written to ``out/``:

* ``invoices/<number>.pdf`` — the stored PDF of every finalized invoice
* ``statements/<account>-<period>.csv`` — each billed account's usage statement
* ``summary.json`` — period, records, usage per account, source and direction, invoices, DLQ
  counts, whether everything matched the ground truth, wall time
* ``usage-windows.csv``, ``dlq.csv``, ``invoices.json``
* ``gateway.json`` — the gateway leg: each client's report, and per account and direction what
  the clients sent against the metered windows, stored usage, statement and invoice lines;
  ``gateway.log`` — the gateway's log

The billed month is the last complete calendar month (``--period`` to choose). Its traffic is
up to two months old when produced, so the demo's worker accepts events that late
(``MAX_LATENESS`` 70 days unless set). Traffic is generated from ``--seed``: the same seed and
period give the same records, which is how the test checks the totals independently.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import Engine as Database
from sqlalchemy import text

from billing.adapters.db import make_engine, upgrade
from billing.adapters.sink import UsageSink
from billing.adapters.spreadsheet import csv_text
from billing.services.billing_run import parse_period, run_billing
from billing.services.catalog import load_accounts, load_plans
from billing.services.invoices import invoice_pdf
from billing.services.statements import statement, statement_csv
from billing.services.usage import usage_report
from metering.engine import Engine
from metering.engine.topics import ensure_topics
from metering.settings import MeteringSettings
from streamtoll.dev import demo_gateway
from streamtoll.dev.traffic import HOUR, Traffic, committed, produce, read_all, window_totals

__all__ = ["PRINCIPALS", "default_period", "demo_traffic", "run_demo"]

log = logging.getLogger("streamtoll.demo")


SAMPLES = Path(__file__).parents[1] / "samples"  # streamtoll/samples
PRINCIPALS = [
    "User:acme-orders",
    "User:acme-billing",
    "User:globex-analytics",
    "User:initech-iot",
    "User:initech-edge",
    "User:hooli-test",  # matches no account: unassigned
]


def default_period(now: datetime) -> str:
    """The last complete calendar month."""
    year, month = (now.year, now.month - 1) if now.month > 1 else (now.year - 1, 12)
    return f"{year:04d}-{month:02d}"


def demo_traffic(settings: MeteringSettings, period: str, proxy_events: int, seed: int) -> Traffic:
    """The month's traffic: event times spread over the whole period (late ones included)."""
    start, end = parse_period(period)
    t_start = datetime(start.year, start.month, start.day, tzinfo=UTC).timestamp()
    t_end = datetime(end.year, end.month, end.day, tzinfo=UTC).timestamp()
    return Traffic.make(
        t_end - 60,
        (settings.topic_proxy_audit, settings.topic_broker_metrics, settings.topic_broker_audit),
        n_proxy=proxy_events,
        seed=seed,
        principals=PRINCIPALS,
        span_s=t_end - t_start - HOUR,
    )


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def run_demo(
    settings: MeteringSettings,
    database_url: str,
    out_dir: Path,
    proxy_events: int,
    period: str | None = None,
    seed: int = 7,
    issuer: dict[str, Any] | None = None,
) -> bool:
    """Run the demo; True when the metered and sunk totals equal the generator's ground truth."""
    assert settings.kafka_bootstrap
    bootstrap = settings.kafka_bootstrap
    console = Console()
    if not console.is_terminal:  # a log or a pipe: wide enough for the summary table
        console = Console(width=140)
    started = time.monotonic()
    period = period or default_period(datetime.now(UTC))
    start, end = parse_period(period)
    ensure_topics(settings)
    traffic = demo_traffic(settings, period, proxy_events, seed)
    console.print(f"[bold]streamtoll demo[/]: a month of audit traffic for {period}, metered, billed, finalized")
    engine = Engine(settings)
    thread = threading.Thread(target=engine.run, name="metering", daemon=True)
    thread.start()
    out_dir.mkdir(parents=True, exist_ok=True)
    with console.status("gateway: real clients produce and consume through streamtoll gateway"):
        leg = demo_gateway.run_clients(settings, os.environ, out_dir / "gateway.log")
    with _progress(console) as progress:
        task = progress.add_task("producing audit records", total=len(traffic.records))
        ends = produce(bootstrap, _counting(traffic.records, progress, task))
        for k, v in leg.audit_ends.items():  # the gateway's audit events are the worker's input too
            ends[k] = max(ends.get(k, 0), v)
        total = sum(ends.values())
        meter = progress.add_task("metering", total=total)
        deadline = time.monotonic() + 900
        while True:
            got = committed(bootstrap, settings.group_id, ends)
            done = sum(min(max(got.get(k, 0), 0), v) for k, v in ends.items())
            progress.update(meter, completed=done)
            if done >= total:
                break
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the metering worker stopped before it caught up; see the log above")
            time.sleep(0.3)
    engine.stop()
    thread.join(60)

    rows = read_all(bootstrap, settings.topic_usage_windows, 4)
    got_windows = window_totals(rows)
    want = {k: v for k, v in traffic.truth.items() if any(v)}
    synthetic = {k: v for k, v in got_windows.items() if any(v) and k[3] != demo_gateway.VIRTUAL_CLUSTER}
    metered_exactly = synthetic == want
    # the gateway leg's windows are checked against its clients (below); the sink must store them too
    want_stored = {**want, **{k: v for k, v in got_windows.items() if k[3] == demo_gateway.VIRTUAL_CLUSTER}}
    dlq = read_all(bootstrap, settings.topic_dlq, 4)

    cols = ["source", "principal", "client_id", "virtual_cluster", "topic", "direction", "window_start"]
    columns = [*cols, "bytes", "records", "requests", "denied_requests"]
    windows = [(*k, *v) for k, v in sorted(got_windows.items())]
    (out_dir / "usage-windows.csv").write_text(csv_text(columns, windows))
    dlq_rows = [(d["reason"], *(d["source"][f] for f in ("topic", "partition", "offset")), d["detail"]) for d in dlq]
    (out_dir / "dlq.csv").write_text(csv_text(["reason", "topic", "partition", "offset", "detail"], dlq_rows))

    db = _prepare_database(database_url)
    sunk_exactly = _sink(settings, db, want_stored, console)
    bills = _bill(db, period, out_dir, console, issuer)
    gateway = demo_gateway.compare(db, leg, demo_gateway.gateway_windows(got_windows))
    if gateway["period"] != period:
        for account in gateway["invoices"]:
            doc = statement(db, account, gateway["period"])
            (out_dir / "statements" / f"{account}-{gateway['period']}.csv").write_text(statement_csv(doc))
    (out_dir / "gateway.json").write_text(json.dumps(gateway, indent=1, default=str))
    usage = usage_report(
        db,
        datetime(start.year, start.month, start.day, tzinfo=UTC),
        datetime(end.year, end.month, end.day, tzinfo=UTC),
        ("account", "source", "direction"),
    )
    dlq_counts = dict(sorted(Counter(d["reason"] for d in dlq).items()))
    exact = metered_exactly and sunk_exactly and dlq_counts == dict(sorted(traffic.dlq.items())) and gateway["matches"]
    wall = time.monotonic() - started
    summary: dict[str, Any] = {
        "period": period,
        "audit_records_produced": len(traffic.records),
        "usage_window_snapshots": len(rows),
        "usage": usage,
        "invoices": [b.as_dict() for b in bills],
        "dlq": dlq_counts,
        "metered_exactly": metered_exactly,
        "sunk_exactly": sunk_exactly,
        "gateway": gateway,
        "matches_ground_truth": exact,
        "wall_time_s": round(wall, 1),
        "seed": seed,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (out_dir / "invoices.json").write_text(json.dumps(summary["invoices"], indent=1))
    _print_summary(console, summary, usage, out_dir)
    _print_gateway(console, gateway)
    db.dispose()
    return exact


def _counting(records: list[Any], progress: Progress, task: Any) -> Any:
    for i, r in enumerate(records, 1):
        yield r
        if i % 2000 == 0 or i == len(records):
            progress.update(task, completed=i)


def _prepare_database(url: str) -> Database:
    upgrade(url)
    db = make_engine(url)
    load_plans(db, SAMPLES / "plans.yaml")
    load_accounts(db, SAMPLES / "accounts.yaml")
    return db


def _hourly(engine: Database) -> dict[tuple[str, ...], list[int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT source, principal, client_id, virtual_cluster, topic, direction, hour, "
                "bytes, records, requests, denied_requests FROM usage_hourly"
            )
        ).all()
    return {
        (*r[:6], r.hour.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")): [
            int(r.bytes),
            int(r.records),
            int(r.requests),
            int(r.denied_requests),
        ]
        for r in rows
    }


def _sink(settings: MeteringSettings, db: Database, want: dict[tuple[str, ...], list[int]], console: Console) -> bool:
    """The real sink into PostgreSQL until the database holds the truth (or five minutes pass)."""
    sink = UsageSink(db, settings.kafka_config(), settings.topic_usage_windows, f"{settings.group_id}-demo-sink")
    thread = threading.Thread(target=sink.run, name="sink", daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    with _progress(console) as progress:
        task = progress.add_task("sinking usage into PostgreSQL", total=len(want))
        while True:
            held = _hourly(db)
            progress.update(task, completed=sum(1 for k, v in want.items() if held.get(k) == v))
            if held == want or time.monotonic() > deadline or not thread.is_alive():
                break
            time.sleep(0.5)
    sink.stop()
    thread.join(30)
    return held == want


def _bill(db: Database, period: str, out_dir: Path, console: Console, issuer: dict[str, Any] | None) -> list[Any]:
    (out_dir / "invoices").mkdir(parents=True, exist_ok=True)
    (out_dir / "statements").mkdir(parents=True, exist_ok=True)
    with _progress(console) as progress:
        task = progress.add_task(f"billing {period}", total=None)

        def tick(accounts: Any) -> Any:
            accounts = list(accounts)
            progress.update(task, total=len(accounts))
            for a in accounts:
                yield a
                progress.advance(task)

        bills = run_billing(db, period, finalize_drafts=True, issuer=issuer, progress=tick)
        docs = progress.add_task("invoice PDFs and statements", total=len(bills))
        for b in bills:
            if b.number:
                (out_dir / "invoices" / f"{b.number}.pdf").write_bytes(invoice_pdf(db, b.number))
            doc = statement(db, b.account, period)
            (out_dir / "statements" / f"{b.account}-{period}.csv").write_text(statement_csv(doc))
            progress.advance(docs)
    return bills


def _gb(n: int) -> str:
    return f"{n / 1e9:,.1f}"


def _print_summary(console: Console, summary: dict[str, Any], usage: list[dict[str, Any]], out_dir: Path) -> None:
    per: dict[str, dict[str, int]] = {}
    for r in usage:
        acc = per.setdefault(r["account"], Counter())
        acc[f"{r['source']}.{r['direction']}"] += r["bytes"]
        acc["records"] += r["records"] if r["source"] == "proxy" else 0
        acc["requests"] += r["requests"] if r["source"] == "audit_log" else 0
        acc["denied"] += r["denied_requests"] if r["source"] == "audit_log" else 0
    invoices = {i["account"]: i for i in summary["invoices"]}
    t = Table(title=f"streamtoll demo · {summary['period']}")
    for col in ("account", "produce GB", "consume GB", "records", "requests (denied)", "invoice", "total"):
        t.add_column(col, justify="left" if col in ("account", "invoice") else "right")
    for account in sorted(per, key=lambda a: (a == "unassigned", a)):
        u, inv = per[account], invoices.get(account)
        t.add_row(
            account,
            _gb(u["proxy.produce"]),
            _gb(u["proxy.consume"]),
            f"{u['records']:,}",
            f"{u['requests']:,} ({u['denied']:,})",
            inv["number"] if inv else ("— (no plan in the period)" if account != "unassigned" else "— (no account)"),
            f"{inv['currency']} {inv['total']}" if inv else "—",
        )
    console.print()
    console.print(t)
    console.print(f"audit records produced   {summary['audit_records_produced']:,}")
    console.print(f"usage window snapshots   {summary['usage_window_snapshots']:,}")
    console.print(f"DLQ by reason            {summary['dlq']}")
    console.print(f"matches ground truth     {'yes' if summary['matches_ground_truth'] else 'NO'}")
    console.print(f"wall time                {summary['wall_time_s']:.1f} s")
    console.print(
        f"written to {out_dir}/: invoices/*.pdf, statements/*.csv, summary.json, gateway.json, "
        "usage-windows.csv, dlq.csv, gateway.log"
    )


def _print_gateway(console: Console, gateway: dict[str, Any]) -> None:
    """The gateway leg: what the clients sent, then each stage — "same" or what it held instead."""
    t = Table(title=f"gateway leg · {gateway['period']} · real clients through streamtoll gateway")
    for col in (
        "account",
        "direction",
        "records sent",
        "bytes sent",
        "metered",
        "stored",
        "statement",
        "invoice",
        "ok",
    ):
        t.add_column(col, justify="left" if col in ("account", "direction") else "right")

    def stage(want: list[int], got: list[int] | None) -> str:
        if got is None:
            return "—"
        return "same" if got == want else f"[red]{got[1]:,} rec, {got[0]:,} B[/]"

    for r in gateway["rows"]:
        want = [r["sent_bytes"], r["sent_records"]]
        priced = ", ".join(
            f"{m} {Decimal(v['quantity']).normalize():f} {v['unit'] or ''}".rstrip()
            for m, v in r["invoice_lines"].items()
        )
        t.add_row(
            r["account"],
            r["direction"],
            f"{r['sent_records']:,}",
            f"{r['sent_bytes']:,}",
            stage(want, r["metered"]),
            stage(want, r["stored"]),
            stage(want, r["statement"]),
            f"{r['invoice']}: {priced}" if r["invoice"] else "— (no account)",
            "yes" if r["matches"] else "[red]NO[/]",
        )
    console.print()
    console.print(t)
    console.print(
        f"gateway leg matches      {'yes' if gateway['matches'] else 'NO'} "
        f"(clients' delivery reports and reads vs metered, stored, statement, invoice lines; "
        f"{gateway['wall_time_s']:.1f} s)"
    )
