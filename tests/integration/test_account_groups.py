"""Statements group one account's usage in PostgreSQL (``account_groups``); the reference is the
row-by-row path every report uses (``usage_rows`` attributes each daily row, ``group`` adds up).
They must agree exactly, for hostile rules and identities too."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa

from billing.adapters.sink import upsert_windows
from billing.domain.accounts import Attributor, ClientRule
from billing.services.usage import ACCOUNT_GROUPINGS, GROUPS, account_groups, account_report, group, usage_rows
from metering.contracts import UsageWindow

pytestmark = pytest.mark.integration

# names with LIKE's own wildcards and escape character, and a character class
PRINCIPALS = ["User:acme-a", "User:acme-b", "User:ac_me", "User:ac%me", "User:acXme", "User:a\\b", "User:g1", "User:g2"]
# the principals of credentials streamtoll issued: their account's before any rule, matched by
# none (User:acme/…) or by another account's rule (User:g1/…)
CREDENTIALS = ["User:acme/orders-svc", "User:g1/x", "User:acme-a"]
PRINCIPALS += CREDENTIALS[:2]
CLIENTS = ["app-1", "app_2", "app%3", "batch", "[x]", "x"]
GLOBS = ["User:acme-*", "User:ac_me", "User:ac%me", "User:ac?me", "User:a\\b", "User:g[12]", "User:*", "*-1", "app_*"]


def _rules(rnd: random.Random) -> list[tuple[str, ClientRule]]:
    out = []
    for _ in range(rnd.randint(1, 8)):
        principal = rnd.choice([None, *GLOBS])
        client = rnd.choice([None, None, "app-*", "app_2", "app%3", "[[]x]", "?atch", "*"])
        if principal is None and client is None:
            principal = "User:*"
        since = rnd.choice([None, date(2026, 3, rnd.randint(1, 28))])
        until = rnd.choice([None, date(2026, 3, rnd.randint(2, 31))])
        out.append((rnd.choice(["acme", "globex", "initech"]), ClientRule(principal, client, None, since, until)))
    return out


def _usage(rnd: random.Random) -> list[UsageWindow]:
    windows = []
    for _ in range(400):
        day, hour = rnd.randint(1, 31), rnd.randint(0, 23)
        windows.append(
            UsageWindow(
                window_start=f"2026-03-{day:02d}T{hour:02d}:00:00Z",
                window_end="",
                source=rnd.choice(["proxy", "broker_metrics", "audit_log"]),
                account=None,
                principal=rnd.choice(PRINCIPALS),
                client_id=rnd.choice(CLIENTS),
                virtual_cluster=rnd.choice(["", "vc1"]),
                topic=rnd.choice(["orders", "quotes"]),
                direction=rnd.choice(["produce", "consume"]),
                bytes=rnd.choice([0, rnd.randint(1, 10**9)]),
                records=rnd.choice([0, rnd.randint(1, 10**4)]),
                requests=rnd.randint(0, 5),
                denied_requests=rnd.randint(0, 1),
                version=1,
                shard=f"s/{rnd.randint(0, 2)}",
            )
        )
    return windows


def test_account_groups_equal_row_by_row_attribution(migrated: str) -> None:
    engine = sa.create_engine(migrated)
    try:
        rnd = random.Random(7)
        upsert_windows(engine, _usage(rnd))
        start, end = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)
        compared = 0
        for _ in range(25):
            issued = {p: rnd.choice(["acme", "globex", "initech"]) for p in rnd.sample(CREDENTIALS, rnd.randint(0, 3))}
            attributor = Attributor(_rules(rnd), issued)
            rows = usage_rows(engine, start, end, attributor=attributor)
            for account in ("acme", "globex", "initech"):
                mine = [r for r in rows if r["account"] == account]
                got = account_groups(engine, account, start.date(), end.date(), attributor)
                for name, (fields, _) in ACCOUNT_GROUPINGS.items():
                    assert got[name] == group(mine, fields), (account, name)
                # a partner's /v1/usage: any grouping (the hour aside)
                fields = rnd.sample([g for g in GROUPS if g != "hour"], rnd.randint(1, 4))
                report = account_report(engine, account, start.date(), end.date(), fields, attributor)
                assert report == group(mine, fields), (account, fields)
                compared += bool(mine)
            # by hour (the hourly shard rows), for whole days and between times that are not midnight
            since = start + timedelta(days=rnd.randint(0, 10), hours=rnd.randint(0, 23))
            until = end - timedelta(days=rnd.randint(0, 10), hours=rnd.randint(1, 23))
            for a, b in ((start, end), (since, until)):
                hourly = usage_rows(engine, a, b, hourly=True, attributor=attributor)
                for account in ("acme", "globex", "initech"):
                    mine = [r for r in hourly if r["account"] == account]
                    fields = rnd.sample([g for g in GROUPS if g != "hour"], rnd.randint(0, 3))
                    for f in (["hour", *fields], fields or ["day"]):
                        assert account_report(engine, account, a, b, f, attributor) == group(mine, f), (account, f)
        assert compared > 20  # most draws give an account some traffic
    finally:
        engine.dispose()
