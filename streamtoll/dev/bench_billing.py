"""``streamtoll bench billing``: time a billing run over many accounts with a month of hourly usage.

Seeds a fresh database with ``accounts`` accounts (one client rule and a Growth subscription
each) and, per account, ``clients`` clients × every hour of the month of produce and consume
usage from the proxy (``accounts × clients × 720 × 2`` rows, loaded with COPY), then times
``run_billing`` for the drafts and again with finalize. Prints rows, seconds and accounts/s.
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from billing.adapters.db import make_engine, upgrade
from billing.services.billing_run import run_billing
from billing.services.catalog import load_accounts, load_plans
from billing.services.invoices import render_pending

__all__ = ["BillingBench", "bench_billing"]

SAMPLES = Path(__file__).parents[1] / "samples"  # streamtoll/samples


@dataclass
class BillingBench:
    accounts: int
    rows: int
    seed_s: float
    draft_s: float
    finalize_s: float
    render_s: float
    cores: int

    def table(self) -> str:
        return "\n".join(
            [
                f"accounts                 {self.accounts:>12,}",
                f"hourly usage rows        {self.rows:>12,}",
                f"seed (COPY) s            {self.seed_s:>12.1f}",
                f"billing run (drafts) s   {self.draft_s:>12.1f}   ({self.accounts / self.draft_s:,.0f} accounts/s)",
                f"finalize all s           {self.finalize_s:>12.1f}   (re-run, then number and freeze each invoice)",
                f"render all PDFs s        {self.render_s:>12.1f}   "
                f"({self.accounts / self.render_s:,.1f} PDFs/s on {self.cores} cores)",
            ]
        )


def seed(url: str, accounts: int, clients: int, period: str = "2026-10") -> int:
    """A migrated database with ``accounts`` Growth accounts (rule ``User:aNNNNN-*``) and, per
    account, ``clients`` clients × every hour of ``period`` × both directions of proxy usage.
    Returns the number of usage rows."""
    upgrade(url)
    engine = make_engine(url)
    load_plans(engine, SAMPLES / "plans.yaml")
    doc = "accounts:\n" + "".join(
        f"  - {{code: a{i:05d}, name: Account {i}, email: billing{i}@example.com, currency: EUR, tax_rate: '0.19',"
        f" subscription: {{plan: growth, starts_on: 2026-01-01}}, clients: [{{principal: 'User:a{i:05d}-*'}}]}}\n"
        for i in range(accounts)
    )
    path = Path(url.rsplit("/", 1)[-1].split("?")[0] + "-accounts.yaml")
    path.write_text(doc)
    try:
        load_accounts(engine, path)
    finally:
        path.unlink()
    start = datetime.strptime(period, "%Y-%m").replace(tzinfo=UTC)
    hours = [
        start + timedelta(hours=h) for h in range(int((start.replace(month=start.month % 12 + 1) - start).days * 24))
    ]
    rows = 0
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        for i in range(accounts):
            buf = io.StringIO()
            for c in range(clients):
                for h in hours:
                    for direction in ("produce", "consume"):
                        buf.write(
                            f"proxy\tUser:a{i:05d}-c{c}\tapp-{c}\t\torders\t{direction}\t{h.isoformat()}\tp/0\t"
                            f"{1_000_000 + c}\t{1000 + c}\t{10}\t0\t1\n"
                        )
                        rows += 1
            with cur.copy(
                "COPY usage_shard_rows (source, principal, client_id, virtual_cluster, topic, direction, hour, "
                "shard, bytes, records, requests, denied_requests, version) FROM STDIN"
            ) as copy:
                copy.write(buf.getvalue())
        raw.commit()
    finally:
        raw.close()
    # what autovacuum does after a load like this (the daily trigger leaves a version per hour)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE usage_shard_rows"))
        conn.execute(sa.text("VACUUM ANALYZE usage_daily"))
    engine.dispose()
    return rows


def bench_billing(url: str, accounts: int, clients: int, period: str = "2026-10") -> BillingBench:
    t0 = time.perf_counter()
    rows = seed(url, accounts, clients, period)
    engine = make_engine(url)
    seed_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    run_billing(engine, period)
    draft_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    run_billing(engine, period, finalize_drafts=True, render=False)
    finalize_s = time.perf_counter() - t2
    t3 = time.perf_counter()
    rendered = render_pending(engine)
    render_s = time.perf_counter() - t3
    assert rendered == accounts
    engine.dispose()
    return BillingBench(accounts, rows, seed_s, draft_s, finalize_s, render_s, os.cpu_count() or 1)


@dataclass
class ApiBench:
    rows: int
    results: dict[str, tuple[float, float, int]]  # scenario → (p50 ms, p99 ms, requests)
    notes: dict[str, str]

    def table(self) -> str:
        lines = [f"usage rows (1 account, its clients, a month of hours) {self.rows:>12,}"]
        for name, (p50, p99, n) in self.results.items():
            note = f"  {self.notes[name]}" if name in self.notes else ""
            lines.append(f"{name:<58} p50 {p50:>8.1f} ms  p99 {p99:>8.1f} ms  ({n} requests){note}")
        return "\n".join(lines)


def _percentiles(times: list[float]) -> tuple[float, float, int]:
    times = sorted(times)
    return times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.99))], len(times)


def bench_api(url: str, clients: int, requests: int = 200, period: str = "2026-10") -> ApiBench:
    """p50/p99 of the statement and usage endpoints for one account-month, 4 concurrent callers.

    Statement scenarios: the first request (computes and stores the statement), stored ones,
    stored ones while a sink-like writer changes the month's usage twice a second (served as
    stored for up to STATEMENT_MAX_STALENESS while refreshed in the background), and the same
    with STATEMENT_MAX_STALENESS=0 (every change recomputed before answering)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from billing.adapters.sink import upsert_windows
    from billing.api.app import create_app
    from billing.services.keys import create_key
    from billing.settings import BillingSettings
    from metering.contracts import UsageWindow
    from streamtoll.serving import running

    rows = seed(url, 1, clients, period)
    engine = make_engine(url)
    key = create_key(engine, "partner", "a00000")
    first = datetime.strptime(period, "%Y-%m")
    end = first.replace(month=first.month % 12 + 1, year=first.year + (first.month == 12))
    statement_path = f"/v1/statements/{period}"
    usage = ("/v1/usage", {"from": first.date().isoformat(), "to": end.date().isoformat(), "granularity": "day"})
    results: dict[str, tuple[float, float, int]] = {}
    notes: dict[str, str] = {}
    stop = threading.Event()
    versions = iter(range(2, 10**9))

    def writer() -> None:
        """What the sink does to an open month: newer versions of the account's windows."""
        while not stop.wait(0.5):
            v = next(versions)
            window = UsageWindow(
                f"{period}-01T00:00:00Z", "", "proxy", None, "User:a00000-c0", "app-0", "", "orders", "produce",
                1_000_000 + v, 1000, 10, 0, v, "p/0",
            )  # fmt: skip
            upsert_windows(engine, [window])

    def load(
        client: httpx.Client, base: str, path: str, params: dict[str, str], n: int = 0, seconds: float = 0
    ) -> tuple[float, float, int]:
        """``n`` requests, or as many as 4 callers make in ``seconds``."""
        deadline = time.monotonic() + seconds

        def one(_: int) -> list[float]:
            times = []
            while True:
                t = time.perf_counter()
                client.get(base + path, params=params).raise_for_status()
                times.append((time.perf_counter() - t) * 1000)
                if not seconds or time.monotonic() > deadline:
                    return times

        with ThreadPoolExecutor(4) as pool:
            return _percentiles([t for ts in pool.map(one, range(n or 4)) for t in ts])

    try:
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=600) as client:
            # the per-key limits off: this measures how fast the API answers, not its limits
            app = create_app(engine, BillingSettings(api_limits={}))
            with running(app) as base:
                t = time.perf_counter()
                client.get(base + statement_path).raise_for_status()
                cold = (time.perf_counter() - t) * 1000
                results["statement: first request (computes, stores)"] = (cold, cold, 1)
                results["statement: stored, 4 concurrent"] = load(client, base, statement_path, {}, requests)
                writing = threading.Thread(target=writer)
                writing.start()
                try:
                    before = dict(app.state.statements.served)
                    name = "statement: month changing 2×/s, 4 concurrent"
                    results[name] = load(client, base, statement_path, {}, seconds=20)
                    served = {k: v - before[k] for k, v in app.state.statements.served.items()}
                    notes[name] = f"served {served['stale']} stale (≤ 60 s), {served['stored']} current"
                finally:
                    stop.set()
                    writing.join()
                results["usage (day): 4 concurrent"] = load(client, base, *usage, max(8, requests // 10))
            stop.clear()
            app = create_app(engine, BillingSettings(statement_max_staleness=0, api_limits={}))
            with running(app) as base:
                writing = threading.Thread(target=writer)
                writing.start()
                try:
                    name = "statement: changing 2×/s, MAX_STALENESS=0"
                    results[name] = load(client, base, statement_path, {}, seconds=20)
                    notes[name] = f"computed {app.state.statements.served['computed']} times"
                finally:
                    stop.set()
                    writing.join()
    finally:
        engine.dispose()
    return ApiBench(rows, results, notes)
