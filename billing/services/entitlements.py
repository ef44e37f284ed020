"""Each account's entitlement — topic and group grants, rate limits, monthly caps — built from the
plan version it is subscribed to today and its own grants, published to the gateways, and shown
to partners and finance.

* :func:`entitlements` — every account's :class:`~metering.entitlements.Entitlement`, in catalog
  order: the subscription in force on the UTC day asked (today by default) names the plan
  version; its ``access``/``limits``/``caps`` (billing.domain.access) and the account's own
  ``access`` make the record, plus what its active product subscriptions grant
  (:mod:`billing.services.products`; added where the plan restricts). No subscription in force:
  nothing restricted.
* :func:`publish_entitlements` — every account's record to ``TOPIC_ENTITLEMENTS`` (compacted,
  key = account code, value = :func:`~metering.entitlements.encode_entitlement`; the full record
  each time). It runs after ``streamtoll plans load`` / ``accounts load``, at ``streamtoll api``
  start (when there are accounts) and just after every UTC midnight while the API runs (a
  subscription starts and ends on a day), and by ``streamtoll entitlements publish``; publishing
  the same state again changes nothing for a reader.
* :func:`entitlement_view` — what ``GET /v1/entitlements`` and ``streamtoll entitlements show``
  answer: the plan, grants, limits, caps with their month-to-date usage (from the billing
  database's usage tables, the source billing would pick per quantity — so it lags the gateway by
  the sink's delay, and the caps fold's decision is what the gateway enforces), and the account's
  credentials (never a secret), and this month's throttles and blocks the gateways applied
  (``episodes``, :mod:`billing.services.episodes`: when, how long, why, open or ended).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Engine

from billing.adapters.control import publish_records
from billing.adapters.uow import UnitOfWork
from billing.domain.access import (
    Access,
    CapSpec,
    access_from_doc,
    caps_from_doc,
    entitlement_for,
    limits_from_doc,
    prepaid_caps,
    prepaid_from_doc,
)
from billing.domain.products import with_products
from billing.domain.sources import DEFAULT_SOURCES
from billing.domain.units import to_unit
from billing.errors import EntitlementError, EntitlementNotFound, PublishError
from billing.services.credentials import credential_doc, credential_views
from billing.services.episodes import episode_docs
from billing.services.grants import prepaid_units
from billing.services.ports import AccountPlanDoc, CatalogReads, Credentials, EpisodeReads, ProductRepository
from billing.services.products import subscribed_access
from metering.entitlements import Entitlement, encode_entitlement

__all__ = [
    "AccountEntitlement",
    "UsageRows",
    "account_entitlements",
    "entitlement_view",
    "entitlements",
    "publish_entitlements",
    "view_entitlement",
]

UsageRows = Callable[[datetime, datetime, str], list[dict[str, Any]]]
"""``(start, end, account) →`` the account's usage rows by source and direction (``usage_report``)."""

Balances = Callable[[str], Mapping[str, int]]
"""``account →`` meter → base units its unit grants had left at the month's start
(``services.grants.prepaid_units``): what a plan's ``prepaid`` policy caps."""


@dataclass(frozen=True)
class AccountEntitlement:
    entitlement: Entitlement
    caps: tuple[CapSpec, ...]  # with the units the plan writes them in


def _utc_today() -> date:
    return datetime.now(UTC).date()


def _entitlement(
    r: AccountPlanDoc, balances: Balances | None = None, products: Access | None = None
) -> AccountEntitlement:
    extra: Access | None = None if r.access is None else access_from_doc(r.access)
    if products is not None:
        extra = with_products(extra, products)
    if r.plan is None or r.document is None:
        return AccountEntitlement(entitlement_for(r.account, account_access=extra), ())
    doc: Mapping[str, Any] = r.document
    caps = caps_from_doc(doc["caps"]) if "caps" in doc else ()
    if "prepaid" in doc and balances is not None:
        caps = prepaid_caps(prepaid_from_doc(doc["prepaid"]), balances(r.account), caps)
    e = entitlement_for(
        r.account,
        r.plan,
        r.plan_version,
        access_from_doc(doc["access"]) if "access" in doc else None,
        limits_from_doc(doc["limits"]) if "limits" in doc else None,
        caps,
        extra,
    )
    return AccountEntitlement(e, caps)


def account_entitlements(
    catalog: CatalogReads,
    on: date,
    account: str | None = None,
    *,
    balances: Balances | None = None,
    products: ProductRepository | None = None,
) -> list[AccountEntitlement]:
    """Every account's entitlement on the UTC day ``on``, in catalog order (or ``account``'s only);
    with ``balances``, a plan's ``prepaid`` policy caps the meters of the account's unit grants;
    with ``products``, what its subscribed products grant (:func:`billing.services.products.subscribed_access`)."""
    rows: list[AccountPlanDoc] = []
    seen: set[str] = set()
    for r in catalog.accounts_with_plans(on, account):
        if r.account in seen:  # two subscriptions in force (should not be): the later start wins
            continue
        seen.add(r.account)
        rows.append(r)
    granted = {} if products is None else subscribed_access(products, {r.account: r.plan for r in rows}, on)
    return [_entitlement(r, balances, granted.get(r.account)) for r in rows]


def entitlements(engine: Engine, on: date | None = None, account: str | None = None) -> list[AccountEntitlement]:
    """Every account's entitlement on the UTC day ``on`` (today), in catalog order (or ``account``'s only)."""
    day = on or _utc_today()
    with UnitOfWork(engine) as uow:
        return account_entitlements(
            uow.catalog, day, account, balances=lambda code: prepaid_units(uow.grants, code, day), products=uow.products
        )


def publish_entitlements(
    engine: Engine, kafka_config: dict[str, Any], topic: str, replication: int = -1, skip_empty: bool = False
) -> int:
    """Every account's entitlement (as of today, UTC) to ``topic``; how many (with ``skip_empty``,
    nothing at all — not even the topic — while the catalog has no account). Raises
    :class:`EntitlementError` if the cluster does not take them."""
    records = [(a.entitlement.account.encode(), encode_entitlement(a.entitlement)) for a in entitlements(engine)]
    if skip_empty and not records:
        return 0
    try:
        return publish_records(kafka_config, topic, records, replication)
    except PublishError as exc:
        raise EntitlementError(f"{exc}; run streamtoll entitlements publish when the cluster answers") from None


def _month_to_date(
    usage: UsageRows, account: str, now: datetime, order: Mapping[str, tuple[str, ...]]
) -> tuple[dict[str, int], dict[str, str]]:
    """``meter → used`` this UTC month so far as the billing database holds it, each quantity from
    the first source in ``order`` the account has usage in (as billing picks), and the sources."""
    start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)
    rows = usage(start, end, account)
    used: dict[str, int] = {}
    chosen: dict[str, str] = {}
    for quantity, preference in order.items():
        for source in preference:
            mine = [r for r in rows if r["source"] == source and r[quantity]]
            if mine:
                chosen[quantity] = source
                for r in mine:
                    meter = f"{r['direction']}_{quantity}"
                    used[meter] = used.get(meter, 0) + int(r[quantity])
                break
    return used, chosen


def view_entitlement(
    catalog: CatalogReads,
    credentials: Credentials,
    episodes: EpisodeReads,
    usage: UsageRows,
    account: str,
    now: datetime,
    source_order: Mapping[str, tuple[str, ...]] | None = None,
    *,
    balances: Balances | None = None,
    products: ProductRepository | None = None,
) -> dict[str, Any]:
    """``account``'s entitlement as partners and finance read it (JSON-ready)."""
    found = account_entitlements(catalog, now.astimezone(UTC).date(), account, balances=balances, products=products)
    if not found:
        raise EntitlementNotFound(f"there is no account {account!r}")
    e, specs = found[0].entitlement, found[0].caps
    month_start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    used, sources = _month_to_date(usage, account, now, source_order or DEFAULT_SOURCES) if specs else ({}, {})
    caps = []
    for spec in specs:
        c = spec.cap
        quantity = c.meter.rsplit("_", 1)[1]
        mtd = used.get(c.meter, 0)
        caps.append(
            {
                **c.doc(),
                "unit": spec.unit,
                "included_in_unit": None if spec.unit is None else str(to_unit(c.included, c.meter, spec.unit)),
                "month": now.astimezone(UTC).strftime("%Y-%m"),
                "used": mtd,
                "used_source": sources.get(quantity),
                "remaining": max(c.included - mtd, 0),
                "reached": mtd >= c.included,
            }
        )
    return {
        "account": e.account,
        "plan": e.plan,
        "plan_version": e.plan_version,
        "topics": None if e.topics is None else [g.doc() for g in e.topics],
        "groups": None if e.groups is None else [{"pattern": g.pattern, "match": g.match} for g in e.groups],
        "limits": e.limits.doc(),
        "caps": caps,
        "credentials": [credential_doc(v) for v in credential_views(credentials, now, account, include_revoked=True)],
        "episodes": episode_docs(episodes, account, month_start, now, now),
    }


def entitlement_view(
    engine: Engine,
    account: str,
    now: datetime | None = None,
    source_order: Mapping[str, tuple[str, ...]] | None = None,
) -> dict[str, Any]:
    """``account``'s entitlement as partners and finance read it (JSON-ready)."""
    from billing.services.usage import usage_report

    def usage(start: datetime, end: datetime, code: str) -> list[dict[str, Any]]:
        return usage_report(engine, start, end, ("source", "direction"), code)

    now = now or datetime.now(UTC)
    with UnitOfWork(engine) as uow:
        return view_entitlement(
            uow.catalog,
            uow.credentials,
            uow.episodes,
            usage,
            account,
            now,
            source_order,
            balances=lambda code: prepaid_units(uow.grants, code, now.astimezone(UTC).date()),
            products=uow.products,
        )
