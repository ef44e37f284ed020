"""The live view ops watch: who produces and consumes how much right now (``/v1/live``, ``/live``,
``streamtoll top``, part of ``/metrics``).

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
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from confluent_kafka import OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition
from sqlalchemy import Engine

from billing.adapters.follow import CompactedFollower
from billing.domain.accounts import UNASSIGNED, Attributor
from billing.domain.money import format_money
from billing.domain.sources import DEFAULT_SOURCES
from billing.services.billing_run import preview_accounts
from billing.services.usage import load_attributor, usage_rows
from metering.contracts import LiveTotal, apply_minute, iso_ms
from metering.entitlements import Decision, Episode, decode_decision, decode_episode, month_of

__all__ = ["LiveBoard", "LiveFeed", "LiveSources"]

log = logging.getLogger("streamtoll.live")

MINUTE = 60
HOUR = 3600
DIRECTIONS = ("produce", "consume")
# quantity kind → sources in order of preference (as in billing: never two added together)

# (source, principal, client_id, virtual_cluster, topic, direction)
WindowKey = tuple[str, str, str, str, str, str]


@dataclass(frozen=True)
class LiveSources:
    """Where the feed reads (handed over by the composition root; billing reads no metering
    settings)."""

    kafka_config: Mapping[str, Any]
    topic_minutes: str
    topic_dlq: str
    input_topics: tuple[str, ...]
    metering_group: str
    topic_enforcement: str = ""  # the caps fold's decisions ("": not followed)
    topic_enforcement_events: str = ""  # the gateways' throttle and block episodes ("": not followed)


@dataclass
class _Base:
    """Usage from the database: attributed daily rows for ``[month start, base_until)``."""

    base_until: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)
    rated: dict[str, dict[str, str]] = field(default_factory=dict)
    refreshed_at: float = 0.0


def _q() -> dict[str, int]:
    return {"bytes": 0, "records": 0, "requests": 0, "denied_requests": 0}


def _hour_start(t: float) -> float:
    return t - t % HOUR


def _day_start(t: float) -> float:
    return t - t % 86400


def _month_start(t: float) -> float:
    d = datetime.fromtimestamp(t, UTC)
    return datetime(d.year, d.month, 1, tzinfo=UTC).timestamp()


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
        self.minutes: dict[tuple[WindowKey, int], LiveTotal] = {}
        self.dlq: dict[tuple[str, int], int] = defaultdict(int)  # (reason, minute epoch s) → count
        self.dlq_today: Counter[str] = Counter()
        self.dlq_day = 0.0
        self.dlq_next: dict[int, int] = {}  # DLQ partition → next offset to count (re-reads count once)
        self.lag: list[dict[str, Any]] = []
        self.lag_at = 0.0
        self.base = _Base()
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
        key: WindowKey = (
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
        day = _day_start(at_s)
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
            return dict(self.dlq_today) if self.dlq_day == _day_start(now) else {}

    def set_lag(self, rows: list[dict[str, Any]], at: float) -> None:
        with self._lock:
            self.lag, self.lag_at = rows, at

    def set_base(self, base: _Base, attributor: Attributor) -> None:
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

    def view(self, now: float) -> dict[str, Any]:
        """The ``/v1/live`` document at ``now`` (epoch seconds)."""
        with self._lock:
            minutes = list(self.minutes.items())
            base, attributor = self.base, self.attributor
            lag, lag_at = list(self.lag), self.lag_at
            dlq_hour: Counter[str] = Counter()
            for (reason, at), n in self.dlq.items():
                if at >= now - HOUR:
                    dlq_hour[reason] += n
            dlq_today = Counter(self.dlq_today) if self.dlq_day == _day_start(now) else Counter()
            decisions, episodes = list(self.decisions.values()), list(self.episodes.values())
        last_minute = int(now - now % MINUTE) - MINUTE  # the last complete minute
        hour0, day0, month0 = _hour_start(now), _day_start(now), _month_start(now)
        live_from = base.base_until or 0.0
        today, month_first = datetime.fromtimestamp(day0, UTC).date(), datetime.fromtimestamp(month0, UTC).date()

        # (account, principal, client id) → source → direction → period → quantities
        clients: dict[tuple[str, str, str], Any] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(_q)))
        )
        sparks: dict[str, list[int]] = defaultdict(lambda: [0] * 60)
        topics: dict[str, Counter[str]] = defaultdict(Counter)

        def add(to: dict[str, int], q: Mapping[str, int]) -> None:
            for name in ("bytes", "records", "requests", "denied_requests"):
                to[name] += int(q[name])

        for r in base.rows:
            day = date.fromisoformat(r["day"])
            if day < month_first:
                continue
            per = clients[(r["account"], r["principal"], r["client_id"])][r["source"]][r["direction"]]
            add(per["month"], r)
            if day == today:
                add(per["day"], r)
        first_spark = last_minute - 59 * MINUTE
        days: dict[int, date] = {}
        for (key, minute), total in minutes:
            source, principal, client_id, vcluster, topic, direction = key
            on = days.get(minute // 86400)
            if on is None:
                on = days[minute // 86400] = datetime.fromtimestamp(minute, UTC).date()
            account = attributor.account_for(principal, client_id, vcluster, on)
            per = clients[(account, principal, client_id)][source][direction]
            if minute == last_minute:
                add(per["minute"], total)
            if minute >= first_spark and minute <= last_minute and source in ("proxy", "broker_metrics"):
                sparks[f"{account}\0{source}"][(minute - first_spark) // MINUTE] += total["bytes"]
            if minute >= hour0:
                add(per["hour"], total)
                topics[f"{account}\0{source}"][topic] += total["bytes"]
            if minute >= live_from:
                if minute >= day0:
                    add(per["day"], total)
                if minute >= month0:
                    add(per["month"], total)

        accounts: dict[str, dict[str, Any]] = {}
        # today's bytes per account, source and direction, whatever source each client row shows
        seen: dict[str, dict[tuple[str, str], int]] = defaultdict(lambda: defaultdict(int))
        for (account, principal, client_id), by_source in sorted(clients.items()):
            for source, dirs in by_source.items():
                for direction, periods in dirs.items():
                    if "day" in periods:
                        seen[account][(source, direction)] += periods["day"]["bytes"]
            row = _client_row(principal, client_id, by_source, self.source_order)
            acct = accounts.setdefault(account, _empty_account(account, base.rated.get(account)))
            acct["clients"].append(row)
            _add_row(acct, row)
            src = row["source"]
            if src is not None:
                acct["sources"].add(src)
        for acct in accounts.values():
            bytes_order = self.source_order["bytes"]
            srcs = sorted(
                acct.pop("sources"), key=lambda x: bytes_order.index(x) if x in bytes_order else len(bytes_order)
            )
            spark = [0] * 60
            top: Counter[str] = Counter()
            for src in srcs[:1]:  # the account's main source, as for its rows
                spark = sparks.get(f"{acct['account']}\0{src}", spark)
                top = topics.get(f"{acct['account']}\0{src}", top)
            acct["sparkline_bytes_per_minute"] = spark
            acct["top_topics"] = [{"topic": t, "bytes": b} for t, b in top.most_common(5)]
            acct["clients"].sort(
                key=lambda c: -(c["hour_to_date"]["produce"]["bytes"] + c["hour_to_date"]["consume"]["bytes"])
            )
            acct["source_differences"] = _differences(seen[acct["account"]])

        warnings: list[str] = []
        behind = [p for p in lag if p["records_behind"] > 0 and (p["seconds_behind"] or 0) >= 60]
        if behind:
            worst = max(behind, key=lambda p: p["seconds_behind"] or 0)
            warnings.append(
                f"metering is {worst['seconds_behind']:.0f} s behind on {worst['topic']}/{worst['partition']}"
            )
        if dlq_hour:
            warnings.append(f"{sum(dlq_hour.values())} records went to the DLQ in the last hour")
        if base.refreshed_at and now - base.refreshed_at > 300:
            warnings.append(
                f"totals before this hour are from a database read {(now - base.refreshed_at) / 60:.0f} min ago"
            )
        if lag_at and now - lag_at > 60:
            warnings.append("metering lag is stale: the broker has not answered for a minute")
        ordered = sorted(accounts.values(), key=lambda a: (a["account"] == UNASSIGNED, a["account"]))
        return {
            "generated_at": iso_ms(int(now * 1000)),
            "minute": {"start": iso_ms(last_minute * 1000), "end": iso_ms((last_minute + MINUTE) * 1000)},
            "database_until": iso_ms(int(live_from * 1000)) if live_from else None,
            "accounts": [a for a in ordered if a["account"] != UNASSIGNED],
            "unassigned": next((a for a in ordered if a["account"] == UNASSIGNED), None),
            "lag": lag,
            "lag_measured_at": iso_ms(int(lag_at * 1000)) if lag_at else None,
            "dlq": {"last_hour": dict(sorted(dlq_hour.items())), "today": dict(sorted(dlq_today.items()))},
            "enforcement": enforcement_view(decisions, episodes, now),
            "warnings": warnings,
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
    for source in order:
        if any(per[quantity] for d in by_source.get(source, {}).values() for per in d.values()):
            return source
    return None


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


def read_base(
    engine: Engine,
    now: float,
    rated: dict[str, dict[str, str]] | None = None,
    source_order: Mapping[str, tuple[str, ...]] | None = None,
) -> tuple[_Base, Attributor]:
    """This month's attributed usage up to the current hour, and each account's rated amount
    (rated now unless ``rated`` is given: rating every account is the expensive part)."""
    until = _hour_start(now)
    start = min(_month_start(now), _day_start(until))
    attributor = load_attributor(engine)
    rows = usage_rows(
        engine, datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(until, UTC), attributor=attributor
    )
    if rated is not None:
        return _Base(base_until=until, rows=rows, rated=rated, refreshed_at=now), attributor
    period = datetime.fromtimestamp(now, UTC).strftime("%Y-%m")
    month_rows = usage_rows(
        engine,
        datetime.fromtimestamp(_month_start(now), UTC),
        datetime.fromtimestamp(now, UTC) + timedelta(hours=1),
        attributor=attributor,
    )
    # the catalog is read once for all accounts (UNASSIGNED is not one)
    rated = {
        account: {
            "currency": p.currency,
            "subtotal": format_money(p.subtotal, p.currency),
            "total": format_money(p.total, p.currency),
        }
        for account, p in preview_accounts(engine, period, month_rows, source_order).items()
    }
    return _Base(base_until=until, rows=rows, rated=rated, refreshed_at=now), attributor


class LiveFeed:
    """Keeps a :class:`LiveBoard` current from Kafka and the database, in a background thread."""

    def __init__(
        self,
        sources: LiveSources,
        engine: Engine | None,
        board: LiveBoard | None = None,
        clock: Callable[[], float] = time.time,
        lag_every_s: float = 5.0,
        db_refresh_s: float = 30.0,
        rate_every_s: float = 300.0,
        source_order: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.sources = sources
        self.source_order = source_order
        self.engine = engine
        self.board = board or LiveBoard(source_order=source_order)
        self.clock = clock
        self.lag_every_s = lag_every_s
        self.db_refresh_s = db_refresh_s
        self.rate_every_s = rate_every_s
        self._rated_at = 0.0
        self.kafka_ok_at = 0.0
        self.kafka_error: str | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._refresh_now = threading.Event()
        self.control = CompactedFollower(
            sources.kafka_config,
            [sources.topic_enforcement, sources.topic_enforcement_events],
            self._control_record,
            name="live-enforcement",
        )

    def _control_record(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        if topic == self.sources.topic_enforcement:
            self.board.add_decision(key, value)
        else:
            self.board.add_episode(key, value)

    def start(self) -> LiveFeed:
        # Kafka and the database each get a thread: a slow database read (many accounts to rate)
        # must not hold up the minutes, and a broker outage must not stop the database refresh.
        self._threads = [
            threading.Thread(target=self._run, name="live-feed", daemon=True),
            threading.Thread(target=self._refresh_loop, name="live-db", daemon=True),
        ]
        for t in self._threads:
            t.start()
        self.control.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._refresh_now.set()
        self.control.stop()
        for t in self._threads:
            t.join(10)

    def kafka_ok(self, within_s: float = 30.0) -> bool:
        """Has the feed heard from the broker lately?"""
        return self.clock() - self.kafka_ok_at <= within_s

    def refresh_database(self) -> None:
        """Ask for a database refresh at the next turn (e.g. after a catalog change)."""
        self._refresh_now.set()

    def _config(self, group: str) -> dict[str, Any]:
        return {
            **self.sources.kafka_config,
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": False,
        }

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except Exception as exc:  # the feed must outlive a broker outage; the view says it is stale
                self.kafka_error = str(exc)
                log.warning("live feed interrupted; retrying", extra={"error": str(exc)})
                self._stop.wait(3.0)

    def _assign(self, consumer: Consumer, topic: str, since_s: float) -> list[TopicPartition]:
        meta = consumer.list_topics(topic, timeout=10)
        t = meta.topics.get(topic)
        if t is None or t.error is not None or not t.partitions:
            raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, f"topic {topic} does not exist yet"))
        wanted = [TopicPartition(topic, p, int(since_s * 1000)) for p in sorted(t.partitions)]
        found = consumer.offsets_for_times(wanted, timeout=10)
        return [TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_END) for tp in found]

    def _follow(self) -> None:
        board, src = self.board, self.sources
        consumer = Consumer(self._config(f"streamtoll-live-{uuid.uuid4().hex[:12]}"))
        lag_reader = Consumer(self._config(src.metering_group))
        peek = Consumer(self._config(f"streamtoll-live-peek-{uuid.uuid4().hex[:12]}"))
        try:
            now = self.clock()
            since = min(now - board.keep_s, _hour_start(now))
            consumer.assign(
                self._assign(consumer, src.topic_minutes, since)
                + self._assign(consumer, src.topic_dlq, _day_start(now))
            )
            self.kafka_ok_at, self.kafka_error = self.clock(), None
            lag_at = 0.0
            while not self._stop.is_set():
                for m in consumer.consume(5000, 0.5):
                    if m.error() is not None:
                        raise KafkaException(m.error())
                    if m.topic() == src.topic_minutes:
                        try:
                            board.add_minute(orjson.loads(m.value() or b""))
                        except (ValueError, KeyError, TypeError) as exc:
                            log.error(
                                "unreadable usage minute skipped", extra={"offset": m.offset(), "error": str(exc)}
                            )
                    else:
                        try:
                            reason = str(orjson.loads(m.value() or b"")["reason"])
                        except (ValueError, KeyError, TypeError):
                            reason = "unreadable"
                        board.add_dlq(m.partition() or 0, m.offset() or 0, reason, m.timestamp()[1] / 1000)
                now = self.clock()
                if now - lag_at >= self.lag_every_s:
                    board.set_lag(self._lag(lag_reader, peek, now), now)
                    self.kafka_ok_at, self.kafka_error = now, None
                    lag_at = now
                    board.prune(now)
        finally:
            for c in (consumer, lag_reader, peek):
                c.close()

    def _refresh_loop(self) -> None:
        while not self._stop.is_set():
            self._refresh_base(self.clock())
            self._refresh_now.clear()
            self._refresh_now.wait(self.db_refresh_s)

    def _refresh_base(self, now: float) -> None:
        if self.engine is None:
            return
        rate = self._refresh_now.is_set() or now - self._rated_at >= self.rate_every_s
        try:
            base, attributor = read_base(self.engine, now, None if rate else self.board.base.rated, self.source_order)
            if rate:
                self._rated_at = now
        except Exception as exc:  # a database outage leaves the last base in place; the view says how old
            log.warning("live view could not read the database", extra={"error": str(exc).splitlines()[0]})
            return
        self.board.set_base(base, attributor)

    def _lag(self, lag_reader: Consumer, peek: Consumer, now: float) -> list[dict[str, Any]]:
        """Records behind and age of the oldest unmetered record, per input partition."""
        parts: list[TopicPartition] = []
        for topic in self.sources.input_topics:
            t = lag_reader.list_topics(topic, timeout=5).topics.get(topic)
            if t is not None and t.error is None:
                parts += [TopicPartition(topic, p) for p in sorted(t.partitions)]
        if not parts:
            return []
        committed = lag_reader.committed(parts, timeout=5)
        rows = []
        for tp in committed:
            low, high = lag_reader.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=5)
            position = tp.offset if tp.offset >= 0 else low
            behind = max(0, high - position)
            seconds: float | None = 0.0
            if behind:
                seconds = None
                peek.assign([TopicPartition(tp.topic, tp.partition, position)])
                msg = peek.poll(2.0)
                if msg is not None and msg.error() is None:
                    seconds = max(0.0, now - msg.timestamp()[1] / 1000)
            rows.append(
                {
                    "topic": tp.topic,
                    "partition": tp.partition,
                    "committed": position,
                    "end": high,
                    "records_behind": behind,
                    "seconds_behind": seconds,
                }
            )
        return rows
