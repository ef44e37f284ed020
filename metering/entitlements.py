"""What an account may do through the gateway, and the enforcement decisions of its monthly caps:
the records billing publishes, the caps fold publishes, and gateways follow.

Standard library only, and neutral like :mod:`metering.credentials`: billing (which knows plans
and accounts), the caps fold (:mod:`metering.streams.caps`) and the gateway all import it, and
none imports another.

**Entitlements** — ``TOPIC_ENTITLEMENTS`` (default ``streamtoll.entitlements``, compacted), keyed
by account code, the full record each time (:func:`encode_entitlement`). Built from the account's
current plan version and the account's own grants:

* ``topics`` / ``groups``: grants by ``literal`` name, ``prefix`` or ``glob``
  (:func:`fnmatch.fnmatchcase`, case-sensitive like Kafka names). Topic grants carry
  ``read`` and/or ``write``; a group grant lets a consumer join, commit and fetch offsets in
  it. ``None`` (the plan and account say nothing about access) allows everything, so plans
  written before access existed keep working; an empty tuple allows nothing.
* ``limits``: per-second rates (:class:`Limits`), ``None`` = unlimited.
* ``caps``: monthly included volumes with a policy (:class:`Cap`), in base units (bytes,
  records, requests).

**Decisions** — ``TOPIC_ENFORCEMENT`` (default ``streamtoll.enforcement``, compacted), keyed by
``[account, meter]``: where an account's month-to-date usage of a capped meter stands
(:class:`Decision`); the gateways apply the newest decision per key whose ``month`` is the
current one (a new month lifts every cap without anyone publishing).

**Episodes** — ``TOPIC_ENFORCEMENT_EVENTS`` (default ``streamtoll.enforcement-events``, compacted),
keyed by the episode's ``id``: each throttle or block a gateway applied to an account
(:class:`Episode`), published when it starts (``ended`` null) and again, under the same key,
when it ends (and at most once a minute while it lasts, with the figures so far), so the newest
record per key is the episode as known. A gateway killed mid-episode leaves it open: readers
take an open episode whose ``updated`` is older than two minutes as ended at ``updated``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any, Final, Literal

__all__ = [
    "CAP_METERS",
    "MATCHES",
    "POLICIES",
    "STATES",
    "Cap",
    "Decision",
    "Entitlement",
    "Episode",
    "Grant",
    "Limits",
    "decision_key",
    "decode_decision",
    "decode_entitlement",
    "decode_episode",
    "encode_decision",
    "encode_entitlement",
    "encode_episode",
    "month_of",
]

MATCHES: Final = ("literal", "prefix", "glob")
POLICIES: Final = ("soft", "throttle", "block")
STATES: Final = ("ok", "soft", "throttle", "block")  # "ok": under the cap (or a new month)
CAP_METERS: Final = (
    "produce_bytes",
    "produce_records",
    "produce_requests",
    "consume_bytes",
    "consume_records",
    "consume_requests",
)
READ, WRITE = "read", "write"


@dataclass(frozen=True)
class Grant:
    """Access to topics or consumer groups whose name matches ``pattern`` (as ``match`` says)."""

    pattern: str
    match: Literal["literal", "prefix", "glob"] = "literal"
    operations: frozenset[str] = frozenset({READ, WRITE})

    def matches(self, name: str) -> bool:
        if self.match == "literal":
            return name == self.pattern
        if self.match == "prefix":
            return name.startswith(self.pattern)
        return fnmatchcase(name, self.pattern)

    def doc(self) -> dict[str, Any]:
        return {"pattern": self.pattern, "match": self.match, "operations": sorted(self.operations)}

    @classmethod
    def from_doc(cls, d: dict[str, Any]) -> Grant:
        return cls(str(d["pattern"]), d.get("match", "literal"), frozenset(d.get("operations", (READ, WRITE))))


@dataclass(frozen=True)
class Limits:
    """Rates an account may use per gateway; ``None`` = no limit."""

    produce_bytes_per_second: int | None = None
    consume_bytes_per_second: int | None = None
    requests_per_second: int | None = None

    def doc(self) -> dict[str, int | None]:
        return {
            "produce_bytes_per_second": self.produce_bytes_per_second,
            "consume_bytes_per_second": self.consume_bytes_per_second,
            "requests_per_second": self.requests_per_second,
        }


@dataclass(frozen=True)
class Cap:
    """A monthly included volume of one meter (base units) and what happens beyond it:
    ``soft`` — an alert only; ``throttle`` — the meter's direction is held to
    ``floor_bytes_per_second``; ``block`` — produce is refused (a consume meter's block refuses
    fetch); ``block_fetch`` also refuses fetch when a produce meter blocks."""

    meter: str
    included: int
    policy: Literal["soft", "throttle", "block"]
    floor_bytes_per_second: int | None = None
    block_fetch: bool = False

    @property
    def direction(self) -> str:
        return "produce" if self.meter.startswith("produce_") else "consume"

    def doc(self) -> dict[str, Any]:
        return {
            "meter": self.meter,
            "included": self.included,
            "policy": self.policy,
            "floor_bytes_per_second": self.floor_bytes_per_second,
            "block_fetch": self.block_fetch,
        }


@dataclass(frozen=True)
class Entitlement:
    account: str
    plan: str | None = None
    plan_version: int | None = None
    topics: tuple[Grant, ...] | None = None
    groups: tuple[Grant, ...] | None = None
    limits: Limits = field(default_factory=Limits)
    caps: tuple[Cap, ...] = ()

    def may_topic(self, topic: str, operation: str) -> bool:
        """``operation``: ``read`` (fetch, list offsets) or ``write`` (produce)."""
        if self.topics is None:
            return True
        return any(operation in g.operations and g.matches(topic) for g in self.topics)

    def may_see(self, topic: str) -> bool:
        """Listed in Metadata: any grant on the topic (a write-only producer needs its partitions)."""
        if self.topics is None:
            return True
        return any(g.matches(topic) for g in self.topics)

    def may_group(self, group: str) -> bool:
        if self.groups is None:
            return True
        return any(g.matches(group) for g in self.groups)


def encode_entitlement(e: Entitlement) -> bytes:
    doc = {
        "account": e.account,
        "plan": e.plan,
        "plan_version": e.plan_version,
        "topics": None if e.topics is None else [g.doc() for g in e.topics],
        "groups": None if e.groups is None else [g.doc() for g in e.groups],
        "limits": e.limits.doc(),
        "caps": [c.doc() for c in e.caps],
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def decode_entitlement(value: bytes) -> Entitlement:
    d = json.loads(value)
    lim = d.get("limits") or {}
    return Entitlement(
        account=str(d["account"]),
        plan=d.get("plan"),
        plan_version=d.get("plan_version"),
        topics=None if d.get("topics") is None else tuple(Grant.from_doc(g) for g in d["topics"]),
        groups=None if d.get("groups") is None else tuple(Grant.from_doc(g) for g in d["groups"]),
        limits=Limits(
            lim.get("produce_bytes_per_second"), lim.get("consume_bytes_per_second"), lim.get("requests_per_second")
        ),
        caps=tuple(
            Cap(
                str(c["meter"]),
                int(c["included"]),
                c["policy"],
                c.get("floor_bytes_per_second"),
                bool(c.get("block_fetch", False)),
            )
            for c in d.get("caps") or ()
        ),
    )


def month_of(at: datetime) -> str:
    """The billing month (UTC calendar month) of an instant: ``"2026-12"``."""
    return at.astimezone(UTC).strftime("%Y-%m")


@dataclass(frozen=True)
class Decision:
    """Where one account's month-to-date usage of one capped meter stands.

    ``state`` is ``ok`` below the cap and the cap's policy at or above it; ``since`` is when the
    state was first decided this month; ``used`` and ``included`` are base units as of ``at``."""

    account: str
    meter: str
    month: str
    state: Literal["ok", "soft", "throttle", "block"]
    used: int
    included: int
    since: datetime
    at: datetime
    floor_bytes_per_second: int | None = None
    block_fetch: bool = False

    @property
    def direction(self) -> str:
        return "produce" if self.meter.startswith("produce_") else "consume"

    @property
    def reason(self) -> str:
        if self.state == "ok":
            return f"{self.meter} {self.used} of {self.included} included this month"
        return (
            f"monthly cap reached: {self.meter} {self.used} of {self.included} included in {self.month} "
            f"(policy {self.state})"
        )


def decision_key(account: str, meter: str) -> bytes:
    return json.dumps([account, meter], separators=(",", ":")).encode()


def encode_decision(d: Decision) -> bytes:
    doc = {
        "account": d.account,
        "meter": d.meter,
        "month": d.month,
        "state": d.state,
        "used": d.used,
        "included": d.included,
        "since": d.since.astimezone(UTC).isoformat(timespec="milliseconds"),
        "at": d.at.astimezone(UTC).isoformat(timespec="milliseconds"),
        "floor_bytes_per_second": d.floor_bytes_per_second,
        "block_fetch": d.block_fetch,
        "reason": d.reason,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def decode_decision(value: bytes) -> Decision:
    d = json.loads(value)
    return Decision(
        account=str(d["account"]),
        meter=str(d["meter"]),
        month=str(d["month"]),
        state=d["state"],
        used=int(d["used"]),
        included=int(d["included"]),
        since=datetime.fromisoformat(d["since"]),
        at=datetime.fromisoformat(d["at"]),
        floor_bytes_per_second=d.get("floor_bytes_per_second"),
        block_fetch=bool(d.get("block_fetch", False)),
    )


EPISODE_KINDS: Final = ("throttle", "block")
EPISODE_CAUSES: Final = ("quota", "cap")  # a plan's rate limit, or a monthly cap's decision


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Episode:
    """One throttle or block a gateway applied to one account, for partners and ops to see.

    ``id`` is unique per gateway and episode (``<gateway>/<account>/<kind>/<direction>/<started
    epoch ms>``). ``direction``: ``produce``, ``consume`` or ``requests``. ``cause``: ``quota``
    (the plan's rate ``limit`` per second was exceeded) or ``cap`` (a monthly cap's decision;
    ``meter`` names it). ``held_seconds``: how long the account's connections were held (a
    throttle, summed over its connections); ``requests``: responses throttled, or requests
    refused by a block. ``ended`` is None while it lasts; ``updated`` is when this record was
    written."""

    id: str
    gateway: str
    account: str
    kind: Literal["throttle", "block"]
    direction: Literal["produce", "consume", "requests"]
    cause: Literal["quota", "cap"]
    reason: str
    started: datetime
    updated: datetime
    ended: datetime | None = None
    held_seconds: float = 0.0
    requests: int = 0
    limit: int | None = None  # the rate held to (bytes or requests per second), when one applies
    meter: str | None = None  # cause "cap": the capped meter

    def ended_by(self, now: datetime, stale_after_s: float = 120.0) -> datetime | None:
        """When it ended as far as anyone can know: ``ended``, or ``updated`` for an open episode
        not refreshed for ``stale_after_s`` (its gateway died)."""
        if self.ended is not None:
            return self.ended
        return self.updated if (now - self.updated).total_seconds() > stale_after_s else None


def encode_episode(e: Episode) -> bytes:
    doc = {
        "id": e.id,
        "gateway": e.gateway,
        "account": e.account,
        "kind": e.kind,
        "direction": e.direction,
        "cause": e.cause,
        "reason": e.reason,
        "started": _iso(e.started),
        "updated": _iso(e.updated),
        "ended": None if e.ended is None else _iso(e.ended),
        "held_seconds": round(e.held_seconds, 3),
        "requests": e.requests,
        "limit": e.limit,
        "meter": e.meter,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def decode_episode(value: bytes) -> Episode:
    d = json.loads(value)
    if d.get("kind") not in EPISODE_KINDS or d.get("cause") not in EPISODE_CAUSES:
        raise ValueError(f"not an enforcement episode: kind {d.get('kind')!r}, cause {d.get('cause')!r}")
    return Episode(
        id=str(d["id"]),
        gateway=str(d["gateway"]),
        account=str(d["account"]),
        kind=d["kind"],
        direction=d["direction"],
        cause=d["cause"],
        reason=str(d["reason"]),
        started=datetime.fromisoformat(d["started"]),
        updated=datetime.fromisoformat(d["updated"]),
        ended=None if d.get("ended") is None else datetime.fromisoformat(d["ended"]),
        held_seconds=float(d.get("held_seconds", 0.0)),
        requests=int(d.get("requests", 0)),
        limit=d.get("limit"),
        meter=d.get("meter"),
    )
