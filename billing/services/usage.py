"""Usage as the database holds it, attributed to accounts and grouped (the finance view).

Rows come from ``usage_shard_rows`` (shards added up) in the half-open interval ``[start, end)``.
Each row is attributed with the accounts' client rules as they are now, on the row's date
(attribution happens at read time, so a corrected rule applies to history not yet invoiced).
Sources are never added together unless the caller groups them away on purpose: ``source`` is in
the default grouping.

The queries are the usage repository's (:mod:`billing.adapters.repositories.usage`), the rows
typed (:class:`billing.domain.usage.UsageRow`); here are the use cases over them, and the JSON
(dicts) that reports and the live view answer with. Each function takes an engine (or, in tests,
a factory of units of work: :mod:`billing.services.ports`).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from datetime import UTC, date, datetime, time
from typing import Any

from billing.adapters.uow import Database, units_of_work
from billing.domain.accounts import UNASSIGNED, Attributor
from billing.domain.usage import UsageRow

__all__ = [
    "ACCOUNT_GROUPINGS",
    "GROUPS",
    "QUANTITIES",
    "account_groups",
    "account_report",
    "group",
    "load_attributor",
    "read_usage",
    "usage_page",
    "usage_report",
    "usage_rows",
]

GROUPS = ("source", "account", "principal", "client_id", "virtual_cluster", "topic", "direction", "hour", "day")
QUANTITIES = ("bytes", "records", "requests", "denied_requests")


def load_attributor(engine: Database) -> Attributor:
    """The attribution rules as stored, in their stated order (accounts by position), and the
    principals of the credentials streamtoll issued (each its account's, before any rule)."""
    with units_of_work(engine)() as uow:
        return uow.catalog.attributor()


def read_usage(
    engine: Database,
    start: datetime,
    end: datetime,
    account: str | None = None,
    hourly: bool = False,
    attributor: Attributor | None = None,
) -> list[UsageRow]:
    """Attributed usage rows in ``[start, end)``: one per identity, topic, direction, source and
    day (or hour), with its account; only ``account``'s when given. The one place usage is read
    and attributed: reports, statements and billing runs all come through here."""
    with units_of_work(engine)() as uow:
        return uow.usage.rows(start, end, attributor or uow.catalog.attributor(), account, hourly)


def usage_rows(
    engine: Database,
    start: datetime,
    end: datetime,
    account: str | None = None,
    hourly: bool = False,
    attributor: Attributor | None = None,
) -> list[dict[str, Any]]:
    """:func:`read_usage` as JSON-ready dicts (``hour`` and ``day`` as ISO text)."""
    return [r.as_dict() for r in read_usage(engine, start, end, account, hourly, attributor)]


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
    engine: Database,
    start: datetime,
    end: datetime,
    group_by: Sequence[str] = ("source", "account", "direction"),
    account: str | None = None,
) -> list[dict[str, Any]]:
    unknown = [g for g in group_by if g not in GROUPS]
    if unknown:
        raise ValueError(f"cannot group by {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    if len(set(group_by)) != len(group_by):
        raise ValueError("group by each field at most once")
    if end <= start:
        raise ValueError("the end of the interval must be after its start")
    if account not in (None, UNASSIGNED):
        # one account (a partner's view), by hour or longer: PostgreSQL reads and adds up only the
        # rows of that account's identities, never another tenant's
        return account_report(engine, account, start, end, group_by)
    return group(usage_rows(engine, start, end, account, hourly="hour" in group_by), group_by)


def usage_page(
    rows: Sequence[dict[str, Any]], group_by: Sequence[str], after: Sequence[str] | None, limit: int
) -> tuple[list[dict[str, Any]], tuple[str, ...] | None]:
    """One page of ``usage_report``'s rows (sorted by their ``group_by`` values): at most ``limit``
    rows whose key comes after ``after``, and the key to ask the next page after (None: this
    was the last). Keys, not offsets: a group that appears between two pages never makes the
    next page repeat or skip one."""
    keys = [tuple(r[g] for g in group_by) for r in rows]
    first = 0 if after is None else bisect_right(keys, tuple(after))
    page = list(rows[first : first + limit])
    more = first + limit < len(rows)
    return page, (keys[first + limit - 1] if more and page else None)


# The groupings a statement shows (and rates from), each with source and direction; the bit mask
# is GROUPING(day, topic, client_id, principal) in account_groups' query: 1 = that field summed away.
ACCOUNT_GROUPINGS: dict[str, tuple[tuple[str, ...], int]] = {
    "totals": (("source", "direction"), 0b1111),
    "daily": (("day", "source", "direction"), 0b0111),
    "by_topic": (("topic", "source", "direction"), 0b1011),
    "by_client_id": (("client_id", "source", "direction"), 0b1101),
    "by_principal": (("principal", "source", "direction"), 0b1110),
    "rating": (("source", "direction", "topic", "day"), 0b0011),
}


def account_groups(
    engine: Database, account: str, start: date, end: date, attributor: Attributor | None = None
) -> dict[str, list[dict[str, Any]]]:
    """One account's usage in the whole UTC days ``[start, end)`` in each of ``ACCOUNT_GROUPINGS``
    (rows shaped and sorted as ``group`` makes them from ``usage_rows``, with which it agrees).

    Attribution is exact and the same as ``usage_rows``'; PostgreSQL then adds up only those
    identities' daily rows, in every grouping at once — a statement no longer moves every row of
    the month through Python."""
    with units_of_work(engine)() as uow:
        return uow.usage.account_groups(attributor or uow.catalog.attributor(), account, start, end, ACCOUNT_GROUPINGS)


def _utc(t: date) -> datetime:
    """A date as its UTC midnight; a time as UTC."""
    return t.astimezone(UTC) if isinstance(t, datetime) else datetime.combine(t, time(), UTC)


def account_report(
    engine: Database,
    account: str,
    start: date | datetime,
    end: date | datetime,
    group_by: Sequence[str],
    attributor: Attributor | None = None,
) -> list[dict[str, Any]]:
    """``group(usage_rows(…, account, hourly="hour" in group_by), group_by)`` in ``[start, end)``
    (dates: whole UTC days), added up by PostgreSQL over the account's identities only (as
    ``account_groups``): a partner's hourly report costs what its own usage costs, not what the
    whole database holds."""
    start, end = _utc(start), _utc(end)
    if end <= start:
        return []
    with units_of_work(engine)() as uow:
        return uow.usage.account_report(attributor or uow.catalog.attributor(), account, start, end, group_by)
