"""The live view ops watch, as a model: who produces and consumes how much right now
(``/v1/live``, ``/live``, ``streamtoll top``, part of ``/metrics``). No Kafka and no database
here: :class:`billing.adapters.live_feed.LiveFeed` keeps a :class:`LiveBoard` current from the
topics, and :func:`billing.services.live.read_base` reads its base from the database.

Where the numbers come from, and why:

* **Last hour, per minute** — the usage minutes topic (``metering.contracts.UsageMinute``). Every
  metering worker publishes, in the same transaction as its billing windows, one partial sum per
  (window key, minute) per batch; the feed reads *all* partitions (``read_committed``) and folds
  them with :func:`metering.contracts.apply_minute`, so the view is the sum over every worker
  however partitions are spread, and a partial read twice counts once. Each API process keeps
  its own copy (the topic is small: one record per key and batch), so replicas need no routing.
* **Earlier today and this month** — PostgreSQL (what the sink wrote), refreshed every
  ``db_refresh_s``, up to the hour the refresh started (``base_until``); minutes at or after
  ``base_until`` come from the topic. The two never overlap, and an hour rolling over between
  refreshes is still counted once.
* **Rated so far** — the billing preview of the month for each account, from the database.
* **Metering lag** — per input partition: the metering group's committed offset against the
  partition's end (records behind), and the age of the oldest record not yet metered (seconds).
* **DLQ** — rejected records by reason, from the DLQ topic, for the last hour and today (UTC).
* **Throttled and blocked now** — the accounts a monthly cap or a rate limit holds back: the caps
  fold's decisions in force this month (``TOPIC_ENFORCEMENT``: state ``throttle`` or ``block``)
  merged with the episodes the gateways publish (``TOPIC_ENFORCEMENT_EVENTS``: open ones, an
  open one not refreshed for two minutes taken as ended), both compacted topics read from the
  beginning (:class:`billing.adapters.follow.CompactedFollower`). One row per account and cap
  meter (a cap's decision and every gateway's episode of it), or per account, kind and
  direction (a rate limit's episodes over all gateways): since when, for how long so far, why,
  the rate held to, the gateways, the requests throttled or refused. Episodes that ended in the
  last hour are listed apart, newest first (at most 50).

Attribution uses the same client rules as billing (:class:`billing.domain.accounts.Attributor`);
traffic no rule matches is shown under ``unassigned``. Bytes and records of a client come from
one source, requests from one, in the order billing uses (``BILLING_SOURCES``; by default proxy,
then broker metrics; audit log, then proxy), never two added together — like a bill.

Rates are over the last *complete* minute (bytes/s = that minute's bytes ÷ 60).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, NamedTuple

from billing.domain.accounts import UNASSIGNED, Attributor
from billing.domain.sources import DEFAULT_SOURCES, pick_source
from billing.domain.usage import UsageRow
from metering.contracts import LiveTotal, apply_minute, iso_ms
from metering.entitlements import Decision, Episode, decode_decision, decode_episode, month_of

__all__ = [
    "HOUR",
    "MINUTE",
    "AccountSource",
    "ClientKey",
    "LiveBase",
    "LiveBoard",
    "WindowKey",
    "day_start",
    "enforcement_view",
    "hour_start",
    "month_start",
]

log = logging.getLogger("streamtoll.live")

MINUTE = 60
HOUR = 3600
DIRECTIONS = ("produce", "consume")
_PERIODS = ("minute", "hour", "day", "month")
_QUANTITIES = ("bytes", "records", "requests", "denied_requests")


class WindowKey(NamedTuple):
    """What a usage minute is counted by (its minute apart)."""

    source: str
    principal: str
    client_id: str
    virtual_cluster: str
    topic: str
    direction: str


class ClientKey(NamedTuple):
    """One row of the view: a client of an account."""

    account: str
    principal: str
    client_id: str


class AccountSource(NamedTuple):
    """An account's traffic as one source saw it (its sparkline and top topics)."""

    account: str
    source: str


@dataclass
class LiveBase:
    """Usage from the database: attributed daily rows for ``[month start, base_until)``."""

    base_until: float = 0.0
    rows: list[UsageRow] = field(default_factory=list)
    rated: dict[str, dict[str, str]] = field(default_factory=dict)
    refreshed_at: float = 0.0


def _q() -> dict[str, int]:
    return dict.fromkeys(_QUANTITIES, 0)


def _by_source() -> defaultdict[str, Any]:
    """source → direction → period → quantities, each level made on first use."""
    return defaultdict(lambda: defaultdict(lambda: defaultdict(_q)))


def _add(to: dict[str, int], q: Mapping[str, int]) -> None:
    for name in _QUANTITIES:
        to[name] += int(q[name])


def _add_usage(to: dict[str, int], r: UsageRow) -> None:
    to["bytes"] += r.bytes
    to["records"] += r.records
    to["requests"] += r.requests
    to["denied_requests"] += r.denied_requests


def hour_start(t: float) -> float:
    return t - t % HOUR


def day_start(t: float) -> float:
    return t - t % 86400


def month_start(t: float) -> float:
    d = datetime.fromtimestamp(t, UTC)
    return datetime(d.year, d.month, 1, tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class _Snapshot:
    """What the board held at one instant, copied under its lock."""

    minutes: list[tuple[tuple[WindowKey, int], LiveTotal]]
    base: LiveBase
    attributor: Attributor
    lag: list[dict[str, Any]]
    lag_at: float
    dlq_hour: Counter[str]
    dlq_today: Counter[str]
    decisions: list[Decision]
    episodes: list[Episode]


@dataclass(frozen=True)
class _Periods:
    """The instants a view at ``now`` counts from (epoch seconds, UTC)."""

    now: float
    last_minute: int  # the last complete minute
    hour0: float
    day0: float
    month0: float
    live_from: float  # minutes before this are in the database base
    today: date
    month_first: date

    @classmethod
    def at(cls, now: float, base_until: float) -> _Periods:
        day0, month0 = day_start(now), month_start(now)
        return cls(
            now=now,
            last_minute=int(now - now % MINUTE) - MINUTE,
            hour0=hour_start(now),
            day0=day0,
            month0=month0,
            live_from=base_until or 0.0,
            today=datetime.fromtimestamp(day0, UTC).date(),
            month_first=datetime.fromtimestamp(month0, UTC).date(),
        )

    @property
    def first_spark(self) -> int:
        return self.last_minute - 59 * MINUTE


class _Tally:
    """The view's sums: per client, source, direction and period; the sparklines and topics per
    account and source."""

    def __init__(self, periods: _Periods) -> None:
        self.periods = periods
        self.clients: defaultdict[ClientKey, Any] = defaultdict(_by_source)
        self.sparks: defaultdict[AccountSource, list[int]] = defaultdict(lambda: [0] * 60)
        self.topics: defaultdict[AccountSource, Counter[str]] = defaultdict(Counter)

    def add_base(self, rows: Iterable[UsageRow]) -> None:
        """The database's daily rows: this month, and today."""
        p = self.periods
        for r in rows:
            if r.day < p.month_first:
                continue
            per = self.clients[ClientKey(r.account, r.principal, r.client_id)][r.source][r.direction]
            _add_usage(per["month"], r)
            if r.day == p.today:
                _add_usage(per["day"], r)

    def add_minutes(self, minutes: Iterable[tuple[tuple[WindowKey, int], LiveTotal]], attributor: Attributor) -> None:
        """The topic's minutes: the last complete one, the sparkline, this hour, and what the
        database base does not hold yet of today and this month."""
        p = self.periods
        days: dict[int, date] = {}
        for (key, minute), total in minutes:
            on = days.get(minute // 86400)
            if on is None:
                on = days[minute // 86400] = datetime.fromtimestamp(minute, UTC).date()
            account = attributor.account_for(key.principal, key.client_id, key.virtual_cluster, on)
            per = self.clients[ClientKey(account, key.principal, key.client_id)][key.source][key.direction]
            if minute == p.last_minute:
                _add(per["minute"], total)
            if p.first_spark <= minute <= p.last_minute and key.source in ("proxy", "broker_metrics"):
                self.sparks[AccountSource(account, key.source)][(minute - p.first_spark) // MINUTE] += total["bytes"]
            if minute >= p.hour0:
                _add(per["hour"], total)
                self.topics[AccountSource(account, key.source)][key.topic] += total["bytes"]
            if minute >= p.live_from:
                if minute >= p.day0:
                    _add(per["day"], total)
                if minute >= p.month0:
                    _add(per["month"], total)

    def accounts(
        self, rated: Mapping[str, dict[str, str]], source_order: Mapping[str, tuple[str, ...]]
    ) -> list[dict[str, Any]]:
        """One document per account: its clients' rows and their sums, its main source's
        sparkline and top topics, where two sources disagree; the unassigned one last."""
        accounts: dict[str, dict[str, Any]] = {}
        for client, by_source in sorted(self.clients.items()):
            row = _client_row(client.principal, client.client_id, by_source, source_order)
            acct = accounts.setdefault(client.account, _empty_account(client.account, rated.get(client.account)))
            acct["clients"].append(row)
            _add_row(acct, row)
            if row["source"] is not None:
                acct["sources"].add(row["source"])
        seen = self._seen_today()
        for acct in accounts.values():
            self._finish(acct, source_order["bytes"], seen[acct["account"]])
        return sorted(accounts.values(), key=lambda a: (a["account"] == UNASSIGNED, a["account"]))

    def _seen_today(self) -> defaultdict[str, defaultdict[tuple[str, str], int]]:
        """Today's bytes per account, source and direction, whatever source each client row shows."""
        seen: defaultdict[str, defaultdict[tuple[str, str], int]] = defaultdict(lambda: defaultdict(int))
        for client, by_source in self.clients.items():
            for source, dirs in by_source.items():
                for direction, periods in dirs.items():
                    if "day" in periods:
                        seen[client.account][(source, direction)] += periods["day"]["bytes"]
        return seen

    def _finish(self, acct: dict[str, Any], bytes_order: tuple[str, ...], seen: Mapping[tuple[str, str], int]) -> None:
        srcs = sorted(acct.pop("sources"), key=lambda x: bytes_order.index(x) if x in bytes_order else len(bytes_order))
        spark = [0] * 60
        top: Counter[str] = Counter()
        for src in srcs[:1]:  # the account's main source, as for its rows
            spark = self.sparks.get(AccountSource(acct["account"], src), spark)
            top = self.topics.get(AccountSource(acct["account"], src), top)
        acct["sparkline_bytes_per_minute"] = spark
        acct["top_topics"] = [{"topic": t, "bytes": b} for t, b in top.most_common(5)]
        acct["clients"].sort(
            key=lambda c: -(c["hour_to_date"]["produce"]["bytes"] + c["hour_to_date"]["consume"]["bytes"])
        )
        acct["source_differences"] = _differences(seen)


def _warnings(snap: _Snapshot, now: float) -> list[str]:
    warnings: list[str] = []
    behind = [p for p in snap.lag if p["records_behind"] > 0 and (p["seconds_behind"] or 0) >= 60]
    if behind:
        worst = max(behind, key=lambda p: p["seconds_behind"] or 0)
        warnings.append(f"metering is {worst['seconds_behind']:.0f} s behind on {worst['topic']}/{worst['partition']}")
    if snap.dlq_hour:
        warnings.append(f"{sum(snap.dlq_hour.values())} records went to the DLQ in the last hour")
    refreshed_at = snap.base.refreshed_at
    if refreshed_at and now - refreshed_at > 300:
        warnings.append(f"totals before this hour are from a database read {(now - refreshed_at) / 60:.0f} min ago")
    if snap.lag_at and now - snap.lag_at > 60:
        warnings.append("metering lag is stale: the broker has not answered for a minute")
    return warnings


class LiveBoard:
    """The live state and the view built from it. Thread-safe: the feed writes, requests read."""

    def __init__(
        self,
        attributor: Attributor | None = None,
        keep_s: int = 62 * MINUTE,
        source_order: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.keep_s = keep_s
        self.source_order = dict(source_order or DEFAULT_SOURCES)
        self._lock = threading.Lock()
        self.minutes: dict[tuple[WindowKey, int], LiveTotal] = {}  # (key, minute epoch s) → total
        self.dlq: dict[tuple[str, int], int] = defaultdict(int)  # (reason, minute epoch s) → count
        self.dlq_today: Counter[str] = Counter()
        self.dlq_day = 0.0
        self.dlq_next: dict[int, int] = {}  # DLQ partition → next offset to count (re-reads count once)
        self.lag: list[dict[str, Any]] = []
        self.lag_at = 0.0
        self.base = LiveBase()
        self.attributor = attributor or Attributor([])
        self.minutes_applied = 0
        self.minutes_replayed = 0
        self.decisions: dict[bytes, Decision] = {}  # newest per (account, meter) key
        self.episodes: dict[str, Episode] = {}  # newest per episode id

    def add_decision(self, key: bytes | None, value: bytes | None) -> None:
        """One record of the enforcement topic (a null value deletes its key)."""
        if key is None:
            return
        with self._lock:
            if value is None:
                self.decisions.pop(key, None)
                return
        try:
            d = decode_decision(value)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("unreadable enforcement decision skipped", extra={"error": repr(exc)})
            return
        with self._lock:
            old = self.decisions.get(key)
            if old is None or old.month != d.month or old.at <= d.at:  # an older one arriving late: kept out
                self.decisions[key] = d

    def add_episode(self, key: bytes | None, value: bytes | None) -> None:
        """One record of the enforcement events topic (a null value deletes its key)."""
        if value is None:
            if key is not None:
                with self._lock:
                    self.episodes.pop(key.decode(errors="replace"), None)
            return
        try:
            e = decode_episode(value)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("unreadable enforcement episode skipped", extra={"error": repr(exc)})
            return
        with self._lock:
            old = self.episodes.get(e.id)
            if old is None or old.updated <= e.updated:
                self.episodes[e.id] = e

    # --- writes (the feed) ---

    def add_minute(self, doc: Mapping[str, Any]) -> bool:
        """Fold one usage minutes record; False when it was applied before (a replay)."""
        key = WindowKey(
            doc["source"],
            doc["principal"],
            doc["client_id"],
            doc["virtual_cluster"],
            doc["topic"],
            doc["direction"],
        )
        slot = (key, int(doc["minute_epoch_s"]))
        with self._lock:
            updated = apply_minute(self.minutes.get(slot), dict(doc))
            if updated is None:
                self.minutes_replayed += 1
                return False
            self.minutes[slot] = updated
            self.minutes_applied += 1
            return True

    def add_dlq(self, partition: int, offset: int, reason: str, at_s: float) -> None:
        day = day_start(at_s)
        with self._lock:
            if offset < self.dlq_next.get(partition, -1):
                return
            self.dlq_next[partition] = offset + 1
            if day > self.dlq_day:
                self.dlq_day, self.dlq_today = day, Counter()
            if day == self.dlq_day:
                self.dlq_today[reason] += 1
            self.dlq[(reason, int(at_s - at_s % MINUTE))] += 1

    def view_enforcement(self, now: float) -> dict[str, Any]:
        """The ``enforcement`` part of the view alone (for ``/metrics``)."""
        with self._lock:
            decisions, episodes = list(self.decisions.values()), list(self.episodes.values())
        return enforcement_view(decisions, episodes, now)

    def view_dlq_today(self, now: float) -> dict[str, int]:
        with self._lock:
            return dict(self.dlq_today) if self.dlq_day == day_start(now) else {}

    def set_lag(self, rows: list[dict[str, Any]], at: float) -> None:
        with self._lock:
            self.lag, self.lag_at = rows, at

    def set_base(self, base: LiveBase, attributor: Attributor) -> None:
        with self._lock:
            self.base, self.attributor = base, attributor

    def prune(self, now: float) -> None:
        """Forget minutes no view needs any more (older than an hour and already in the base)."""
        cut = min(now - self.keep_s, self.base.base_until or now)
        with self._lock:
            for slot in [s for s in self.minutes if s[1] < cut]:
                del self.minutes[slot]
            for k in [k for k in self.dlq if k[1] < now - self.keep_s]:
                del self.dlq[k]
            at = datetime.fromtimestamp(now, UTC)
            for eid in [i for i, e in self.episodes.items() if _ended_before(e, at, now - HOUR)]:
                del self.episodes[eid]

    # --- the view ---

    def _snapshot(self, now: float) -> _Snapshot:
        with self._lock:
            dlq_hour: Counter[str] = Counter()
            for (reason, at), n in self.dlq.items():
                if at >= now - HOUR:
                    dlq_hour[reason] += n
            return _Snapshot(
                minutes=list(self.minutes.items()),
                base=self.base,
                attributor=self.attributor,
                lag=list(self.lag),
                lag_at=self.lag_at,
                dlq_hour=dlq_hour,
                dlq_today=Counter(self.dlq_today) if self.dlq_day == day_start(now) else Counter(),
                decisions=list(self.decisions.values()),
                episodes=list(self.episodes.values()),
            )

    def view(self, now: float) -> dict[str, Any]:
        """The ``/v1/live`` document at ``now`` (epoch seconds)."""
        snap = self._snapshot(now)
        periods = _Periods.at(now, snap.base.base_until)
        tally = _Tally(periods)
        tally.add_base(snap.base.rows)
        tally.add_minutes(snap.minutes, snap.attributor)
        ordered = tally.accounts(snap.base.rated, self.source_order)
        last_minute, live_from = periods.last_minute, periods.live_from
        return {
            "generated_at": iso_ms(int(now * 1000)),
            "minute": {"start": iso_ms(last_minute * 1000), "end": iso_ms((last_minute + MINUTE) * 1000)},
            "database_until": iso_ms(int(live_from * 1000)) if live_from else None,
            "accounts": [a for a in ordered if a["account"] != UNASSIGNED],
            "unassigned": next((a for a in ordered if a["account"] == UNASSIGNED), None),
            "lag": snap.lag,
            "lag_measured_at": iso_ms(int(snap.lag_at * 1000)) if snap.lag_at else None,
            "dlq": {"last_hour": dict(sorted(snap.dlq_hour.items())), "today": dict(sorted(snap.dlq_today.items()))},
            "enforcement": enforcement_view(snap.decisions, snap.episodes, now),
            "warnings": _warnings(snap, now),
        }


def _ended_before(e: Episode, at: datetime, cut_s: float) -> bool:
    ended = e.ended_by(at)
    return ended is not None and ended.timestamp() < cut_s


def _iso(t: datetime) -> str:
    return iso_ms(int(t.timestamp() * 1000))


def enforcement_view(decisions: Iterable[Decision], episodes: Iterable[Episode], now: float) -> dict[str, Any]:
    """Who is throttled or blocked at ``now`` and the episodes that ended in the last hour (the
    ``enforcement`` part of ``/v1/live``; the module docstring says how rows are merged)."""
    at = datetime.fromtimestamp(now, UTC)
    month = month_of(at)
    rows: dict[tuple[str, ...], dict[str, Any]] = {}
    for d in decisions:
        if d.month != month or d.state not in ("throttle", "block"):
            continue
        rows[("cap", d.account, d.meter)] = {
            "account": d.account,
            "kind": d.state,
            "cause": "cap",
            "direction": d.direction,
            "meter": d.meter,
            "since": d.since,
            "reason": d.reason,
            "limit": d.floor_bytes_per_second,
            "block_fetch": d.block_fetch,
            "used": d.used,
            "included": d.included,
            "gateways": set(),
            "requests": 0,
            "held_seconds": 0.0,
        }
    ended = []
    for e in episodes:
        end = e.ended_by(at)
        if end is not None:
            if (at - end).total_seconds() <= HOUR:
                ended.append(e)
            continue
        if e.cause == "cap":
            key: tuple[str, ...] = ("cap", e.account, e.meter or e.direction)
            if e.meter is None:  # no meter named: the account's cap row of that direction and kind, if one
                key = next(
                    (
                        k
                        for k, r in rows.items()
                        if k[:2] == key[:2] and (r["direction"], r["kind"]) == (e.direction, e.kind)
                    ),
                    key,
                )
        else:
            key = ("quota", e.account, e.kind, e.direction)
        row = rows.get(key)
        if row is None:
            row = rows[key] = {
                "account": e.account,
                "kind": e.kind,
                "cause": e.cause,
                "direction": e.direction,
                "meter": e.meter,
                "since": e.started,
                "reason": e.reason,
                "limit": e.limit,
                "block_fetch": False,
                "used": None,
                "included": None,
                "gateways": set(),
                "requests": 0,
                "held_seconds": 0.0,
            }
        elif e.cause == "quota":
            row["since"] = min(row["since"], e.started)
        row["gateways"].add(e.gateway)
        row["requests"] += e.requests
        row["held_seconds"] += e.held_seconds
    in_force = []
    for row in sorted(rows.values(), key=lambda r: (r["since"], r["account"], r["direction"])):
        since = row["since"]
        in_force.append(
            {
                **row,
                "since": _iso(since),
                "seconds": round(max(0.0, (at - since).total_seconds()), 3),
                "gateways": sorted(row["gateways"]),
                "held_seconds": round(row["held_seconds"], 3),
            }
        )
    ended.sort(key=lambda e: (e.ended_by(at) or at, e.id), reverse=True)
    return {
        "in_force": in_force,
        "ended_last_hour": [
            {
                "account": e.account,
                "kind": e.kind,
                "cause": e.cause,
                "direction": e.direction,
                "meter": e.meter,
                "since": _iso(e.started),
                "ended": _iso(end),
                "seconds": round(max(0.0, (end - e.started).total_seconds()), 3),
                "reason": e.reason,
                "limit": e.limit,
                "gateway": e.gateway,
                "requests": e.requests,
                "held_seconds": round(e.held_seconds, 3),
            }
            for e in ended[:50]
            if (end := e.ended_by(at)) is not None
        ],
    }


def _pick(by_source: Mapping[str, Any], order: Iterable[str], quantity: str) -> str | None:
    """Billing's source choice (:func:`billing.domain.sources.pick_source`) over a client's numbers."""

    def has_usage(source: str) -> bool:
        return any(per[quantity] for d in by_source.get(source, {}).values() for per in d.values())

    return pick_source(order, has_usage)


def _differences(seen: Mapping[tuple[str, str], int]) -> list[dict[str, Any]]:
    """Where the proxy and the broker metrics both saw an account's traffic today: both byte
    counts and the gap (a proxy or exporter losing data shows here first)."""
    out = []
    for direction in DIRECTIONS:
        proxy, metrics = seen.get(("proxy", direction), 0), seen.get(("broker_metrics", direction), 0)
        if proxy and metrics:
            out.append(
                {
                    "direction": direction,
                    "period": "day_to_date",
                    "proxy_bytes": proxy,
                    "broker_metrics_bytes": metrics,
                    "difference_bytes": proxy - metrics,
                }
            )
    return out


def _client_row(
    principal: str, client_id: str, by_source: Mapping[str, Any], order: Mapping[str, tuple[str, ...]]
) -> dict[str, Any]:
    """One client's numbers: bytes/records from one source, requests from one (never added)."""
    source = _pick(by_source, order["bytes"], "bytes") or _pick(by_source, order["records"], "records")
    req_source = _pick(by_source, order["requests"], "requests")

    def period(name: str) -> dict[str, dict[str, int]]:
        out = {}
        for d in DIRECTIONS:
            q = by_source.get(source, {}).get(d, {}).get(name) if source else None
            out[d] = {"bytes": q["bytes"] if q else 0, "records": q["records"] if q else 0}
        return out

    def requests(name: str) -> tuple[int, int]:
        if not req_source:
            return 0, 0
        qs = [by_source[req_source][d][name] for d in by_source[req_source] if name in by_source[req_source][d]]
        return sum(q["requests"] for q in qs), sum(q["denied_requests"] for q in qs)

    last = period("minute")
    hour_req, hour_denied = requests("hour")
    return {
        "principal": principal,
        "client_id": client_id,
        "source": source,
        "rate": {
            d: {"bytes_per_s": last[d]["bytes"] / MINUTE, "messages_per_s": last[d]["records"] / MINUTE}
            for d in DIRECTIONS
        },
        "hour_to_date": period("hour"),
        "day_to_date": period("day"),
        "month_to_date": period("month"),
        "requests_source": req_source,
        "requests_hour_to_date": hour_req,
        "denied_requests_hour_to_date": hour_denied,
    }


def _empty_account(account: str, rated: dict[str, str] | None) -> dict[str, Any]:
    zero = {d: {"bytes": 0, "records": 0} for d in DIRECTIONS}
    return {
        "account": account,
        "rate": {d: {"bytes_per_s": 0.0, "messages_per_s": 0.0} for d in DIRECTIONS},
        "hour_to_date": {d: dict(v) for d, v in zero.items()},
        "day_to_date": {d: dict(v) for d, v in zero.items()},
        "month_to_date": {d: dict(v) for d, v in zero.items()},
        "denied_requests_hour_to_date": 0,
        "rated_so_far": rated,
        "clients": [],
        "sources": set(),
    }


def _add_row(acct: dict[str, Any], row: dict[str, Any]) -> None:
    for d in DIRECTIONS:
        for k in ("bytes_per_s", "messages_per_s"):
            acct["rate"][d][k] += row["rate"][d][k]
        for p in ("hour_to_date", "day_to_date", "month_to_date"):
            for k in ("bytes", "records"):
                acct[p][d][k] += row[p][d][k]
    acct["denied_requests_hour_to_date"] += row["denied_requests_hour_to_date"]
