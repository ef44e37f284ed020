"""Usage as the database holds it, attributed to accounts and grouped (the finance view).

Rows come from ``usage_shard_rows`` (shards added up) in the half-open interval ``[start, end)``.
Each row is attributed with the accounts' client rules as they are now, on the row's date
(attribution happens at read time, so a corrected rule applies to history not yet invoiced).
Sources are never added together unless the caller groups them away on purpose: ``source`` is in
the default grouping.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select, text

from billing.adapters.models import AccountRow, ClientRuleRow
from billing.domain.accounts import Attributor, ClientRule

__all__ = ["GROUPS", "group", "load_attributor", "usage_report", "usage_rows"]

GROUPS = ("source", "account", "principal", "client_id", "virtual_cluster", "topic", "direction", "hour", "day")
QUANTITIES = ("bytes", "records", "requests", "denied_requests")


def load_attributor(engine: Engine) -> Attributor:
    """The attribution rules as stored, in their stated order (accounts by position)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(ClientRuleRow)
            .join(AccountRow, AccountRow.code == ClientRuleRow.account_code)
            .order_by(AccountRow.position, AccountRow.code, ClientRuleRow.position)
        )
        return Attributor(
            (r.account_code, ClientRule(r.principal, r.client_id, r.virtual_cluster, r.valid_from, r.valid_until))
            for r in rows
        )


def _midnight(t: datetime) -> bool:
    u = t.astimezone(UTC)
    return (u.hour, u.minute, u.second, u.microsecond) == (0, 0, 0, 0)


def usage_rows(
    engine: Engine,
    start: datetime,
    end: datetime,
    account: str | None = None,
    hourly: bool = False,
    attributor: Attributor | None = None,
) -> list[dict[str, Any]]:
    """Attributed usage rows in ``[start, end)``: one per identity, topic, direction, source and
    day (or hour), with its account; only ``account``'s when given. The one place usage is read
    and attributed: reports, statements and billing runs all come through here."""
    attributor = attributor or load_attributor(engine)
    # Attribution needs only the day, so unless hours are asked for the database adds the hours
    # of a day up first (24 times fewer rows here); the hour bounds still apply before that.
    # Shards and hours are summed in one pass over usage_shard_rows (usage_hourly sums shards
    # alone; going through it would aggregate twice).
    # Whole UTC days come from usage_daily (kept exact by a trigger, 24 × fewer rows and no
    # aggregation at read time); other bounds from the hourly shard rows.
    whole_days = not hourly and _midnight(start) and _midnight(end)
    bucket = "hour" if hourly else "date_trunc('day', hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    out: list[dict[str, Any]] = []
    with engine.connect() as conn:
        if whole_days:
            result = conn.execute(
                text(
                    "SELECT source, principal, client_id, virtual_cluster, topic, direction, "
                    "day::timestamp AT TIME ZONE 'UTC' AS hour, bytes, records, requests, denied_requests "
                    "FROM usage_daily WHERE day >= :start AND day < :end "
                    "AND (bytes, records, requests, denied_requests) <> (0, 0, 0, 0)"
                ),
                {"start": start.astimezone(UTC).date(), "end": end.astimezone(UTC).date()},
            )
        else:
            result = conn.execute(
                text(
                    f"SELECT source, principal, client_id, virtual_cluster, topic, direction, {bucket} AS hour, "
                    "sum(bytes) AS bytes, sum(records) AS records, sum(requests) AS requests, "
                    "sum(denied_requests) AS denied_requests FROM usage_shard_rows "
                    "WHERE hour >= :start AND hour < :end "
                    "GROUP BY source, principal, client_id, virtual_cluster, topic, direction, 7 "
                    "HAVING (sum(bytes), sum(records), sum(requests), sum(denied_requests)) <> (0, 0, 0, 0)"
                ),
                {"start": start, "end": end},
            )
        for row in result:
            hour = row.hour.astimezone(UTC)
            acct = attributor.account_for(row.principal, row.client_id, row.virtual_cluster, hour.date())
            if account is not None and acct != account:
                continue
            out.append(
                {
                    "source": row.source,
                    "account": acct,
                    "principal": row.principal,
                    "client_id": row.client_id,
                    "virtual_cluster": row.virtual_cluster,
                    "topic": row.topic,
                    "direction": row.direction,
                    "hour": hour.isoformat().replace("+00:00", "Z"),
                    "day": hour.date().isoformat(),
                    "bytes": int(row.bytes),
                    "records": int(row.records),
                    "requests": int(row.requests),
                    "denied_requests": int(row.denied_requests),
                }
            )
    return out


def group(rows: Sequence[dict[str, Any]], group_by: Sequence[str]) -> list[dict[str, Any]]:
    """Sums of the quantities per distinct value of ``group_by``, sorted."""
    sums: dict[tuple[Any, ...], list[int]] = {}
    for r in rows:
        acc = sums.setdefault(tuple(r[g] for g in group_by), [0, 0, 0, 0])
        acc[0] += r["bytes"]
        acc[1] += r["records"]
        acc[2] += r["requests"]
        acc[3] += r["denied_requests"]
    return [
        {**dict(zip(group_by, key, strict=True)), **dict(zip(QUANTITIES, values, strict=True))}
        for key, values in sorted(sums.items())
    ]


def usage_report(
    engine: Engine,
    start: datetime,
    end: datetime,
    group_by: Sequence[str] = ("source", "account", "direction"),
    account: str | None = None,
) -> list[dict[str, Any]]:
    unknown = [g for g in group_by if g not in GROUPS]
    if unknown:
        raise ValueError(f"cannot group by {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    if end <= start:
        raise ValueError("the end of the interval must be after its start")
    return group(usage_rows(engine, start, end, account, hourly="hour" in group_by), group_by)
