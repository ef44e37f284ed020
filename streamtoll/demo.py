"""``streamtoll demo``: the main job end to end on embedded defaults.

Start the embedded broker and PostgreSQL, migrate, load the sample plans and accounts, generate
realistic audit traffic for the sample accounts' principals and some unassigned ones (proxy
audit with retries, late, bad and ignored records and tombstones; broker metrics with counter
resets and retried exports; audit log with denied requests), meter it with the real worker
loop, check the published usage windows against the generator's own ground truth, sink them
into PostgreSQL with the real sink, bill the current month, finalize, and write
``out/usage-windows.csv``, ``out/dlq.csv`` and ``out/invoices.json``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from sqlalchemy import Engine as Database
from sqlalchemy import text

from billing.adapters.db import make_engine, upgrade
from billing.services.billing_run import run_billing
from billing.services.catalog import load_accounts, load_plans
from billing.services.sink import UsageSink
from billing.services.usage import usage_report
from metering.engine import Engine
from metering.engine.loop import ensure_topics
from metering.settings import MeteringSettings
from streamtoll.traffic import Traffic, produce, read_all, wait_caught_up, window_totals

__all__ = ["run_demo"]

log = logging.getLogger("streamtoll.demo")


SAMPLES = Path(__file__).parent / "samples"
PRINCIPALS = [
    "User:acme-orders",
    "User:acme-billing",
    "User:globex-analytics",
    "User:initech-iot",
    "User:initech-edge",
    "User:hooli-test",  # matches no account: unassigned
]


def run_demo(settings: MeteringSettings, database_url: str, out_dir: Path, proxy_events: int) -> bool:
    """Run the demo; True when the metered and sunk totals equal the generator's ground truth."""
    assert settings.kafka_bootstrap
    bootstrap = settings.kafka_bootstrap
    started = time.monotonic()
    ensure_topics(settings)
    traffic = Traffic.make(
        time.time(),
        (settings.topic_proxy_audit, settings.topic_broker_metrics, settings.topic_broker_audit),
        n_proxy=proxy_events,
        principals=PRINCIPALS,
    )
    engine = Engine(settings)
    thread = threading.Thread(target=engine.run, name="metering", daemon=True)
    thread.start()
    print(f"producing {len(traffic.records):,} audit records …", flush=True)
    ends = produce(bootstrap, traffic.records)
    print("metering …", flush=True)
    wait_caught_up(bootstrap, settings.group_id, ends, timeout=600, alive=thread.is_alive)
    engine.stop()
    thread.join(60)

    rows = read_all(bootstrap, settings.topic_usage_windows, 4)
    got = window_totals(rows)
    want = {k: v for k, v in traffic.truth.items() if any(v)}
    exact = {k: v for k, v in got.items() if any(v)} == want
    dlq = read_all(bootstrap, settings.topic_dlq, 4)

    out_dir.mkdir(parents=True, exist_ok=True)
    cols = ["source", "principal", "client_id", "virtual_cluster", "topic", "direction", "window_start"]
    frame = pd.DataFrame(
        [(*k, *v) for k, v in sorted(got.items())], columns=[*cols, "bytes", "records", "requests", "denied_requests"]
    )
    frame.to_csv(out_dir / "usage-windows.csv", index=False)
    pd.DataFrame(
        [(d["reason"], *(d["source"][f] for f in ("topic", "partition", "offset")), d["detail"]) for d in dlq],
        columns=["reason", "topic", "partition", "offset", "detail"],
    ).to_csv(out_dir / "dlq.csv", index=False)

    summary = frame.groupby(["source", "principal"])[["bytes", "records", "requests", "denied_requests"]].sum()
    print()
    print(summary.to_string())
    print()
    print(f"input records          {len(traffic.records):>12,}")
    print(f"usage window snapshots {len(rows):>12,}")
    print(f"DLQ by reason          {dict(sorted(Counter(d['reason'] for d in dlq).items()))}")
    sunk = _sink_and_bill(settings, database_url, want, out_dir)
    exact = exact and sunk
    print(f"matches ground truth   {'yes' if exact else 'NO'}")
    print(f"wall time              {time.monotonic() - started:>11.1f} s")
    print(f"written                {out_dir / 'usage-windows.csv'}, {out_dir / 'dlq.csv'}, {out_dir / 'invoices.json'}")
    return exact


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


def _sink_and_bill(settings: MeteringSettings, url: str, want: dict[tuple[str, ...], list[int]], out_dir: Path) -> bool:
    """Real sink into PostgreSQL until it holds the truth, then bill and finalize this month."""
    upgrade(url)
    engine = make_engine(url)
    load_plans(engine, SAMPLES / "plans.yaml")
    load_accounts(engine, SAMPLES / "accounts.yaml")
    sink = UsageSink(engine, settings.kafka_config(), settings.topic_usage_windows, f"{settings.group_id}-demo-sink")
    thread = threading.Thread(target=sink.run, name="sink", daemon=True)
    thread.start()
    print("sinking usage into PostgreSQL …", flush=True)
    deadline = time.monotonic() + 300
    held = _hourly(engine)
    while held != want and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.5)
        held = _hourly(engine)
    sink.stop()
    thread.join(30)
    period = datetime.now(UTC).strftime("%Y-%m")
    print(f"billing {period} …", flush=True)
    bills = run_billing(engine, period, finalize_drafts=True)
    (out_dir / "invoices.json").write_text(json.dumps([b.as_dict() for b in bills], indent=1))
    print()
    print(f"{'account':<10} {'invoice':<18} {'currency':<8} {'subtotal':>12} {'tax':>10} {'total':>12}")
    for b in bills:
        print(f"{b.account:<10} {b.number or '':<18} {b.currency:<8} {b.subtotal:>12} {b.tax:>10} {b.total:>12}")
    unassigned = usage_report(
        engine, datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC), ("account",), "unassigned"
    )
    if unassigned:
        u = unassigned[0]
        print(f"unassigned traffic     {u['bytes']:,} bytes, {u['requests']:,} requests (shown to ops, never dropped)")
    engine.dispose()
    return held == want
