"""``streamtoll bench billing``: time a billing run over many accounts with a month of hourly usage.

Seeds a fresh database with ``accounts`` accounts (one client rule and a Growth subscription
each) and, per account, ``clients`` clients × every hour of the month of produce and consume
usage from the proxy (``accounts × clients × 720 × 2`` rows, loaded with COPY), then times
``run_billing`` for the drafts and again with finalize. Prints rows, seconds and accounts/s.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from billing.adapters.db import make_engine, upgrade
from billing.services.billing_run import run_billing
from billing.services.catalog import load_accounts, load_plans

__all__ = ["BillingBench", "bench_billing"]

SAMPLES = Path(__file__).parent / "samples"


@dataclass
class BillingBench:
    accounts: int
    rows: int
    seed_s: float
    draft_s: float
    finalize_s: float

    def table(self) -> str:
        return "\n".join(
            [
                f"accounts                 {self.accounts:>12,}",
                f"hourly usage rows        {self.rows:>12,}",
                f"seed (COPY) s            {self.seed_s:>12.1f}",
                f"billing run (drafts) s   {self.draft_s:>12.1f}   ({self.accounts / self.draft_s:,.0f} accounts/s)",
                f"finalize all s           {self.finalize_s:>12.1f}",
            ]
        )


def bench_billing(url: str, accounts: int, clients: int, period: str = "2026-10") -> BillingBench:
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
    t0 = time.perf_counter()
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
    with engine.begin() as conn:
        conn.execute(sa.text("ANALYZE usage_shard_rows"))
    seed_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    run_billing(engine, period)
    draft_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    run_billing(engine, period, finalize_drafts=True)
    finalize_s = time.perf_counter() - t2
    engine.dispose()
    return BillingBench(accounts, rows, seed_s, draft_s, finalize_s)
