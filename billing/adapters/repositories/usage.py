"""The usage repository: usage rows read from PostgreSQL and attributed to accounts.

Usage is what the sink wrote (``usage_shard_rows``) plus the corrections finance made
(``usage_amendment_rows``: differences, see :mod:`billing.domain.amendments`), added up per key
and hour — here, the one place usage is read: ``usage_daily`` includes the amendment rows (the
same trigger keeps it exact for both tables), and every hourly read goes through
:func:`_hourly_rows`, the two tables as one.

Every query here is performance- and tenancy-critical (tests/integration/test_partner_usage.py):
whole UTC days come from ``usage_daily`` (kept exact by a trigger); other bounds and hours from
``usage_shard_rows``, shards and hours added up in one pass; one account's reports read only its
own identities (``_account_spans``), and its hourly rows by primary key in a LATERAL subquery per key.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from operator import itemgetter
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Date,
    DateTime,
    Text,
    and_,
    cast,
    func,
    or_,
    select,
    text,
    true,
    tuple_,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY

from billing.adapters.models import UsageAmendmentRow, UsageDailyRow, UsageShardRow
from billing.domain.accounts import Attributor, ClientRule
from billing.domain.usage import UsageRow

__all__ = ["UsageRepository"]


_HOURLY_COLUMNS = (
    "source",
    "principal",
    "client_id",
    "virtual_cluster",
    "topic",
    "direction",
    "hour",
    "bytes",
    "records",
    "requests",
    "denied_requests",
)


def _hourly_rows(name: str) -> Any:
    """The hourly usage rows as one relation named ``name``: the sink's shard rows and the
    amendments' rows (differences), to be added up per key and hour. PostgreSQL pushes the
    readers' conditions into both tables (an append of two index scans)."""
    return union_all(
        select(*(UsageShardRow.__table__.c[c] for c in _HOURLY_COLUMNS)),
        select(*(UsageAmendmentRow.__table__.c[c] for c in _HOURLY_COLUMNS)),
    ).subquery(name)


def _midnight(t: datetime) -> bool:
    u = t.astimezone(UTC)
    return (u.hour, u.minute, u.second, u.microsecond) == (0, 0, 0, 0)


class UsageRepository:
    """Usage in PostgreSQL, read on one connection."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def rows(
        self, start: datetime, end: datetime, attributor: Attributor, account: str | None = None, hourly: bool = False
    ) -> list[UsageRow]:
        """Attributed usage rows in ``[start, end)``: one per identity, topic, direction, source and
        day (or hour), with its account; only ``account``'s when given."""
        # Attribution needs only the day, so unless hours are asked for the database adds the hours
        # of a day up first (24 times fewer rows here); the hour bounds still apply before that.
        # Shards, amendments and hours are summed in one pass over the hourly rows (usage_hourly
        # sums shards alone; going through it would aggregate twice).
        # Whole UTC days come from usage_daily (kept exact by a trigger, 24 × fewer rows and no
        # aggregation at read time); other bounds from the hourly rows.
        whole_days = not hourly and _midnight(start) and _midnight(end)
        if whole_days:
            result = self.conn.execute(
                text(
                    "SELECT source, principal, client_id, virtual_cluster, topic, direction, "
                    "day::timestamp AT TIME ZONE 'UTC' AS hour, bytes, records, requests, denied_requests "
                    "FROM usage_daily WHERE day >= :start AND day < :end "
                    "AND (bytes, records, requests, denied_requests) <> (0, 0, 0, 0)"
                ),
                {"start": start.astimezone(UTC).date(), "end": end.astimezone(UTC).date()},
            )
        else:
            u = _hourly_rows("u")
            keys = [u.c[c] for c in _HOURLY_COLUMNS[:6]]
            # the hour, or the start of its UTC day
            bucket = (
                u.c.hour if hourly else func.timezone("UTC", func.date_trunc("day", func.timezone("UTC", u.c.hour)))
            )
            result = self.conn.execute(
                select(
                    *keys,
                    bucket.label("hour"),
                    func.sum(u.c.bytes).label("bytes"),
                    func.sum(u.c.records).label("records"),
                    func.sum(u.c.requests).label("requests"),
                    func.sum(u.c.denied_requests).label("denied_requests"),
                )
                .where(u.c.hour >= start, u.c.hour < end)
                .group_by(*keys, text("7"))
                .having(
                    or_(
                        func.sum(u.c.bytes) != 0,
                        func.sum(u.c.records) != 0,
                        func.sum(u.c.requests) != 0,
                        func.sum(u.c.denied_requests) != 0,
                    )
                )
            )
        out: list[UsageRow] = []
        for row in result:
            hour = row.hour.astimezone(UTC)
            day = hour.date()
            acct = attributor.account_for(row.principal, row.client_id, row.virtual_cluster, day)
            if account is not None and acct != account:
                continue
            out.append(
                UsageRow(
                    source=row.source,
                    account=acct,
                    principal=row.principal,
                    client_id=row.client_id,
                    virtual_cluster=row.virtual_cluster,
                    topic=row.topic,
                    direction=row.direction,
                    hour=hour,
                    day=day,
                    bytes=int(row.bytes),
                    records=int(row.records),
                    requests=int(row.requests),
                    denied_requests=int(row.denied_requests),
                )
            )
        return out

    def account_groups(
        self,
        attributor: Attributor,
        account: str,
        start: date,
        end: date,
        groupings: dict[str, tuple[tuple[str, ...], int]],
    ) -> dict[str, list[dict[str, Any]]]:
        """One account's usage in the whole UTC days ``[start, end)`` in each of ``groupings``
        (name → fields, mask of GROUPING(day, topic, client_id, principal)), rows sorted by their
        fields. Attribution is exact (``_account_spans``); PostgreSQL then adds up only those
        identities' daily rows, in every grouping at once."""
        out: dict[str, list[dict[str, Any]]] = {name: [] for name in groupings}
        spans = _account_spans(self.conn, attributor, account, start, end)
        if not spans["since"]:
            return out
        u = UsageDailyRow.__table__.alias("u")
        sets = [tuple_(*(u.c[f] for f in fields)) for fields, _ in groupings.values()]
        result = self.conn.execute(
            _sums_over(
                spans,
                start,
                end,
                u,
                [
                    func.grouping(u.c.day, u.c.topic, u.c.client_id, u.c.principal).label("sets"),
                    u.c.source,
                    u.c.direction,
                    u.c.day,
                    u.c.topic,
                    u.c.client_id,
                    u.c.principal,
                ],
            ).group_by(func.grouping_sets(*sets))
        ).all()
        by_mask = {mask: (name, fields) for name, (fields, mask) in groupings.items()}
        for row in result:
            name, fields = by_mask[row.sets]
            values = {f: (row.day.isoformat() if f == "day" else getattr(row, f)) for f in fields}
            out[name].append({**values, **_quantities(row)})
        for name, (fields, _) in groupings.items():
            out[name].sort(key=itemgetter(*fields))
        return out

    def account_report(
        self, attributor: Attributor, account: str, start: datetime, end: datetime, group_by: Sequence[str]
    ) -> list[dict[str, Any]]:
        """One account's usage in ``[start, end)`` (UTC, ``end > start``) grouped by ``group_by``.
        Whole days without ``hour`` come from ``usage_daily``; hours and other bounds from the
        hourly shard rows, looked up by each of the account's usage keys (found in
        ``usage_daily``), so that no hourly row of another account is read."""
        whole_days = "hour" not in group_by and _midnight(start) and _midnight(end)
        first = start.date()
        last = end.date() if _midnight(end) else end.date() + timedelta(days=1)
        spans = _account_spans(self.conn, attributor, account, first, last, keys=not whole_days)
        if not spans["since"]:
            return []
        if whole_days:
            u = UsageDailyRow.__table__.alias("u")
            columns = [u.c[g].label(g) for g in _columns(group_by)]
            query = _sums_over(spans, first, last, u, columns).group_by(*columns)
        else:
            query = _hourly_sums(spans, start, end, group_by)
        out = []
        for row in self.conn.execute(query).all():
            values: dict[str, Any] = {g: account if g == "account" else getattr(row, g) for g in group_by}
            if "day" in values:
                values["day"] = values["day"].isoformat()
            if "hour" in values:
                values["hour"] = values["hour"].astimezone(UTC).isoformat().replace("+00:00", "Z")
            out.append({**values, **_quantities(row)})
        return sorted(out, key=lambda r: tuple(r[g] for g in group_by))


def _like(glob: str) -> str | None:
    """A LIKE pattern matching at least what the shell-style glob matches (None: a character
    class, which LIKE cannot say; the caller then does not filter on that field)."""
    if "[" in glob:
        return None
    escaped = glob.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _could_be(rules: Sequence[ClientRule]) -> ColumnElement[bool]:
    """A filter on usage_daily that keeps every identity one of ``rules`` matches (and maybe
    others: the exact attribution decides)."""
    t = UsageDailyRow.__table__.c
    alternatives = []
    for rule in rules:
        conditions = []
        for column, glob in ((t.principal, rule.principal), (t.client_id, rule.client_id),
                             (t.virtual_cluster, rule.virtual_cluster)):  # fmt: skip
            pattern = None if glob is None else _like(glob)
            if pattern is not None:
                conditions.append(column.like(pattern, escape="\\"))
        alternatives.append(and_(true(), *conditions))
    return or_(*alternatives)


def _account_spans(
    conn: Connection, attributor: Attributor, account: str, start: date, end: date, keys: bool = False
) -> dict[str, list[Any]]:
    """The identities (and their spans of days) whose usage in ``[start, end)`` is ``account``'s,
    as parallel arrays for the queries below: the identities the account's rules could match are
    read first and attributed in Python, per span of days in which their account does not change.
    With ``keys``, one entry per whole usage key (source, identity, topic, direction) and span,
    so that the hourly rows can be looked up by their primary key."""
    t = UsageDailyRow.__table__.c
    fields = ["principals", "client_ids", "clusters", "since", "until"]
    if keys:
        fields += ["sources", "topics", "directions"]
    spans: dict[str, list[Any]] = {k: [] for k in fields}
    rules = attributor.rules_of(account)
    # its credentials' principals are its own whatever the rules say (User:acme/orders-svc is
    # matched by no rule "User:acme-*"): read them too, or a partner's statement would miss them
    owned = attributor.credential_principals_of(account)
    if (not rules and not owned) or end <= start:
        return spans
    found = ([_could_be(rules)] if rules else []) + ([t.principal.in_(owned)] if owned else [])
    columns = [t.principal, t.client_id, t.virtual_cluster] + ([t.source, t.topic, t.direction] if keys else [])
    identities = conn.execute(select(*columns).where(t.day >= start, t.day < end, or_(*found)).distinct()).all()
    for principal, client_id, cluster, *key in identities:
        for since, until, code in attributor.spans(principal, client_id, cluster, start, end):
            if code == account:
                for k, v in zip(spans, (principal, client_id, cluster, since, until, *key), strict=True):
                    spans[k].append(v)
    return spans


def _quantities(row: Any) -> dict[str, int]:
    return {
        "bytes": int(row.bytes),
        "records": int(row.records),
        "requests": int(row.requests),
        "denied_requests": int(row.denied_requests),
    }


def _sums_over(spans: dict[str, list[Any]], start: date, end: date, u: Any, columns: list[Any]) -> Any:
    """SELECT ``columns`` and the summed quantities of ``usage_daily`` (aliased ``u``) rows in
    ``[start, end)`` of the identities and day spans in ``spans`` (``_account_spans``), to be
    grouped by the caller."""
    m = (
        func.unnest(
            cast(spans["principals"], ARRAY(Text)),
            cast(spans["client_ids"], ARRAY(Text)),
            cast(spans["clusters"], ARRAY(Text)),
            cast(spans["since"], ARRAY(Date)),
            cast(spans["until"], ARRAY(Date)),
        )
        .table_valued("principal", "client_id", "virtual_cluster", "since", "until")
        .render_derived(name="m")
    )
    return (
        select(
            *columns,
            func.sum(u.c.bytes).label("bytes"),
            func.sum(u.c.records).label("records"),
            func.sum(u.c.requests).label("requests"),
            func.sum(u.c.denied_requests).label("denied_requests"),
        )
        .select_from(
            m.join(
                u,
                and_(
                    u.c.principal == m.c.principal,
                    u.c.client_id == m.c.client_id,
                    u.c.virtual_cluster == m.c.virtual_cluster,
                    u.c.day >= m.c.since,
                    u.c.day < m.c.until,
                ),
            )
        )
        .where(
            u.c.day >= start,
            u.c.day < end,
            or_(u.c.bytes != 0, u.c.records != 0, u.c.requests != 0, u.c.denied_requests != 0),
        )
    )


def _hourly_sums(spans: dict[str, list[Any]], start: datetime, end: datetime, group_by: Sequence[str]) -> Any:
    """The summed quantities of the ``usage_shard_rows`` rows in ``[start, end)`` of the usage keys
    and day spans in ``spans`` (``_account_spans(keys=True)``), grouped by ``group_by`` (but
    ``account``), one column each.

    Each key's rows are looked up by the primary key and its hour range, in a LATERAL subquery
    per key: its aggregate keeps PostgreSQL from turning the join into a scan of the whole table
    (which reads every tenant's rows), whatever the table's size and statistics."""

    def at(d: date) -> datetime:
        return datetime.combine(d, time(), UTC)

    keys = ("source", "principal", "client_id", "virtual_cluster", "topic", "direction")
    arrays = ("sources", "principals", "client_ids", "clusters", "topics", "directions")
    m = (
        func.unnest(
            *(cast(spans[a], ARRAY(Text)) for a in arrays),
            cast([max(start, at(d)) for d in spans["since"]], ARRAY(DateTime(timezone=True))),
            cast([min(end, at(d)) for d in spans["until"]], ARRAY(DateTime(timezone=True))),
        )
        .table_valued(*keys, "since", "until")
        .render_derived(name="m")
    )
    s = _hourly_rows("s")
    sums = [func.sum(s.c[q]) for q in ("bytes", "records", "requests", "denied_requests")]
    hourly = (
        select(
            s.c.hour,
            sums[0].label("bytes"),
            sums[1].label("records"),
            sums[2].label("requests"),
            sums[3].label("denied_requests"),
        )
        .where(*(s.c[k] == m.c[k] for k in keys), s.c.hour >= m.c.since, s.c.hour < m.c.until)
        .group_by(s.c.hour)
        # the same groups as usage_rows' HAVING (an amendment's negative row can cancel a shard's)
        .having(or_(*(q != 0 for q in sums)))
        .lateral("h")
    )
    by = {"hour": hourly.c.hour, "day": cast(func.timezone("UTC", hourly.c.hour), Date), **{k: m.c[k] for k in keys}}
    columns = [by[g].label(g) for g in _columns(group_by)]
    return (
        select(
            *columns,
            func.sum(hourly.c.bytes).label("bytes"),
            func.sum(hourly.c.records).label("records"),
            func.sum(hourly.c.requests).label("requests"),
            func.sum(hourly.c.denied_requests).label("denied_requests"),
        )
        .select_from(m.join(hourly, true()))
        .group_by(*columns)
    )


def _columns(group_by: Sequence[str]) -> list[str]:
    """The columns ``group_by`` groups by, each once (a field named twice groups as once; SQL
    would find the twice-selected column ambiguous), ``account`` aside (it is the one asked)."""
    return [g for g in dict.fromkeys(group_by) if g != "account"]
