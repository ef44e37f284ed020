"""A partner's usage report (``usage_report`` with its account, as ``GET /v1/usage`` asks it) is
exactly the attribution of the seeded rows, by hour and by day, and PostgreSQL reads no hourly
row of another tenant to make it: its cost follows the partner's own usage, not the database's.

The expected answers are computed here from the seeded windows with the rules of the accounts
file (first match in file order, shell-style globs, validity dates), independently of
``billing.domain.accounts`` and ``billing.services.usage``."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

import pytest
import sqlalchemy as sa

from billing.adapters.sink import upsert_windows
from billing.services.catalog import load_accounts
from billing.services.usage import account_report, usage_report
from metering.contracts import UsageWindow

pytestmark = pytest.mark.integration

# (account, principal glob, client_id glob, valid_from, valid_until), tried in this order
RULES: list[tuple[str, str | None, str | None, str | None, str | None]] = [
    ("acme", "User:acme-*", None, None, None),
    ("acme", None, "acme_*", None, None),  # '_' is literal for a glob, a wildcard for LIKE
    ("acme", "User:shared-batch", None, "2026-11-15", None),  # initech's until the 15th, then acme's
    ("globex", "User:globex-analytics", None, "2026-11-10", None),  # unassigned before the 10th
    ("initech", "User:shared-batch", None, None, "2026-11-15"),
    ("initech", "User:init[e]ch-*", None, None, None),  # a character class: LIKE cannot say it
    *((f"bulk{k}", f"User:bulk{k}-*", None, None, None) for k in range(6)),
]
# (principal, client_id, virtual cluster) that produce traffic now and then
SPARSE = [
    ("User:acme-orders", "cli", ""),
    ("User:acme-etl", "etl", "vc1"),
    ("User:other", "acme_x", ""),
    ("User:other", "acmeYx", ""),  # matches no rule ('_' is not a wildcard): unassigned
    ("User:globex-analytics", "ga", ""),
    ("User:shared-batch", "batch", "vc1"),
    ("User:initech-iot", "iot", ""),
    ("User:nobody", "x", ""),
]
# the other tenants' steady traffic: every hour, most of the database
BULK = [(f"User:bulk{k}-app", "app", "") for k in range(6)]
FIRST, LAST = datetime(2026, 10, 30, tzinfo=UTC), datetime(2026, 12, 3, tzinfo=UTC)
QUANTITIES = ("bytes", "records", "requests", "denied_requests")


def _owner(principal: str, client_id: str, on: date) -> str:
    for code, p, c, since, until in RULES:
        if since is not None and on < date.fromisoformat(since):
            continue
        if until is not None and on >= date.fromisoformat(until):
            continue
        if (p is None or fnmatchcase(principal, p)) and (c is None or fnmatchcase(client_id, c)):
            return code
    return "unassigned"


def _windows() -> list[UsageWindow]:
    rnd = random.Random(14)
    seen: dict[tuple[Any, ...], UsageWindow] = {}

    def add(t: datetime, ident: tuple[str, str, str], source: str, topic: str, direction: str, shard: str) -> None:
        zero = rnd.random() < 0.1  # rows of zeros exist (a window that saw nothing billable)
        w = UsageWindow(
            t.isoformat().replace("+00:00", "Z"), "", source, None, *ident, topic, direction,
            0 if zero else rnd.randint(1, 10**9), 0 if zero else rnd.randint(0, 10**4),
            0 if zero else rnd.randint(0, 9), rnd.choice([0, 0, 1]) if not zero else 0, 1, shard,
        )  # fmt: skip
        seen[(t, *ident, source, topic, direction, shard)] = w

    hours = int((LAST - FIRST) / timedelta(hours=1))
    for _ in range(3000):
        t = FIRST + timedelta(hours=rnd.randrange(hours))
        add(
            t,
            rnd.choice(SPARSE),
            rnd.choice(["proxy", "broker_metrics", "audit_log"]),
            rnd.choice(["orders", "quotes"]),
            rnd.choice(["produce", "consume"]),
            rnd.choice(["s/0", "s/1"]),
        )
    for h in range(hours):
        for ident in BULK:
            add(FIRST + timedelta(hours=h), ident, "proxy", rnd.choice(["a", "b"]), "produce", "s/0")
    return list(seen.values())


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory, pg_server: str) -> Iterator[tuple[sa.Engine, list[UsageWindow]]]:
    """One database for the module: the accounts of RULES, and their usage (read only)."""
    from billing.adapters.db import upgrade

    name = f"t_{random.SystemRandom().getrandbits(48):012x}"
    admin = sa.create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(pg_server).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        engine = sa.create_engine(url)
        accounts: dict[str, list[dict[str, str]]] = {}
        for code, p, c, since, until in RULES:
            rule = {"principal": p, "client_id": c, "valid_from": since, "valid_until": until}
            accounts.setdefault(code, []).append({k: v for k, v in rule.items() if v is not None})
        doc = {
            "accounts": [
                {"code": code, "name": code.title(), "email": f"{code}@example.com", "currency": "EUR", "clients": r}
                for code, r in accounts.items()
            ]
        }
        path = tmp_path_factory.mktemp("accounts") / "accounts.yaml"
        path.write_text(json.dumps(doc))  # JSON is YAML
        load_accounts(engine, path)
        windows = _windows()
        upsert_windows(engine, windows)
        with engine.begin() as conn:
            conn.execute(sa.text("ANALYZE"))
        yield engine, windows
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def _expected(
    windows: list[UsageWindow], account: str, start: datetime, end: datetime, group_by: tuple[str, ...]
) -> list[dict[str, Any]]:
    sums: dict[tuple[str, ...], list[int]] = {}
    for w in windows:
        t = datetime.fromisoformat(w.window_start)
        if not start <= t < end or _owner(w.principal, w.client_id, t.date()) != account:
            continue
        row = {
            "source": w.source,
            "account": account,
            "principal": w.principal,
            "client_id": w.client_id,
            "virtual_cluster": w.virtual_cluster,
            "topic": w.topic,
            "direction": w.direction,
            "hour": w.window_start,
            "day": t.date().isoformat(),
        }
        acc = sums.setdefault(tuple(row[g] for g in group_by), [0, 0, 0, 0])
        for i, q in enumerate(QUANTITIES):
            acc[i] += getattr(w, q)
    return [
        {**dict(zip(group_by, key, strict=True)), **dict(zip(QUANTITIES, values, strict=True))}
        for key, values in sorted(sums.items())
        if any(values)  # a group of zeros only is no usage
    ]


GROUPINGS = [
    ("hour", "principal"),
    ("hour",),
    ("hour", "source", "client_id", "virtual_cluster", "topic", "direction"),
    ("day", "account", "principal"),
    ("source", "account", "direction"),
    ("principal", "client_id", "hour"),
]
BOUNDS = [
    (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)),
    (datetime(2026, 11, 3, 5, tzinfo=UTC), datetime(2026, 11, 20, 17, tzinfo=UTC)),  # not midnight
    (datetime(2026, 10, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),  # beyond the data
]


def test_a_partners_report_is_the_attribution_of_its_rows(tenants: tuple[sa.Engine, list[UsageWindow]]) -> None:
    engine, windows = tenants
    for account in ("acme", "globex", "initech"):
        for start, end in BOUNDS:
            for group_by in GROUPINGS:
                expected = _expected(windows, account, start, end, group_by)
                assert expected, (account, start, group_by)  # the seed gives every case some usage
                got = usage_report(engine, start, end, group_by, account)
                assert got == expected, (account, start, end, group_by)
    # a field named twice groups as once (SQL would find the twice-selected column ambiguous)
    for group_by in (("source", "source", "hour"), ("day", "source", "day")):
        got = account_report(engine, "acme", *BOUNDS[1], group_by)
        assert got == _expected(windows, "acme", *BOUNDS[1], group_by), group_by


def _rows_read(engine: sa.Engine) -> int:
    """The rows of ``usage_shard_rows`` read so far, by scans and through indexes (the statistics
    of ``engine``'s one connection, flushed first)."""
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_stat_force_next_flush()"))
    # the flush happened when that transaction ended; a new one reads fresh statistics
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) "
                    "FROM pg_stat_user_tables WHERE relname = 'usage_shard_rows'"
                )
            ).scalar_one()
        )


def test_a_partners_hourly_report_reads_only_its_own_rows(tenants: tuple[sa.Engine, list[UsageWindow]]) -> None:
    """``group_by=principal&granularity=hour``: the hourly rows PostgreSQL reads are the partner's
    own — not the whole database's, which the other tenants fill every hour."""
    seeded, windows = tenants
    start, end = BOUNDS[0]
    in_range = [w for w in windows if start <= datetime.fromisoformat(w.window_start) < end]
    own = [w for w in in_range if _owner(w.principal, w.client_id, date.fromisoformat(w.window_start[:10])) == "acme"]
    assert len(in_range) > 5 * len(own)  # most of the month's rows are other tenants'
    engine = sa.create_engine(seeded.url, poolclass=sa.StaticPool)  # one backend: its statistics are exact
    try:
        before = _rows_read(engine)
        got = usage_report(engine, start, end, ("hour", "principal"), "acme")
        read = _rows_read(engine) - before
    finally:
        engine.dispose()
    assert got == _expected(windows, "acme", start, end, ("hour", "principal"))
    assert read == len(own)
