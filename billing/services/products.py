"""Streaming API products: loading the product catalog, reading it (as finance and as a partner
sees it), and an account's subscriptions to products, from request to cancellation.

The public functions take an engine and open one :class:`~billing.adapters.uow.UnitOfWork`; the
rules they apply are the functions over the ports below them (``publish_products``,
``catalog_products``, ``subscribe_account``, ``decide``, ``cancel``, ``subscribed_access``),
which the unit tests call with fakes. The portal calls the public ones.

Decisions made here (the rules themselves are in :mod:`billing.domain.products`):

* **Subscribing** (``subscribe``) asks for the product's newest version. The account's plan in
  force today must include it; a self-service plan makes the subscription ``active`` at once
  (``decided_by`` ``self-service``), any other makes it ``requested`` for finance or ops to
  approve or reject (with a reason). Subscribing again while a subscription is live changes
  nothing when it is on the newest version, else moves it there (an active one stays active:
  approval was given for the product, a new version of its contract does not ask again).
* **Who and when**: every change records who (``partner:<key id>``, ``finance:<key id>``,
  ``cli:<user>``) and when (UTC). Approving an approved request, rejecting a rejected one with
  the same reason, cancelling a cancelled subscription: the same answer, nothing written.
* **Entitlements**: an account's active subscriptions add their grants to its explicit extras
  (``accounts.yaml``'s ``access``), which add to the plan's grants where the plan restricts
  access (:func:`billing.domain.access.entitlement_for`); a plan without ``access`` leaves the
  account unrestricted, products or not. After every change the callers publish entitlements.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from billing.adapters.uow import UnitOfWork
from billing.domain.access import Access
from billing.domain.products import (
    Product,
    check_plans,
    parse_products,
    product_access,
    product_digest,
    product_document,
    product_from_document,
    product_schemas,
    subscription_route,
    works_on,
)
from billing.errors import CatalogError, ProductError, ProductNotFound, ProductNotOffered
from billing.services.catalog import LoadReport, read_yaml
from billing.services.ports import CatalogReads, ProductRepository, ProductSubscription, ProductVersionRecord

__all__ = [
    "STATUSES",
    "account_subscriptions",
    "approve",
    "cancel",
    "catalog_products",
    "decide",
    "list_products",
    "load_products",
    "product_detail",
    "product_view",
    "publish_products",
    "read_products",
    "reject",
    "requests",
    "subscribe",
    "subscribe_account",
    "subscribed_access",
    "subscription_doc",
    "unsubscribe",
]

STATUSES = ("requested", "active", "rejected", "cancelled")
_LIVE = ("requested", "active")
SELF_SERVICE = "self-service"


def _now(now: datetime | None) -> datetime:
    return (now or datetime.now(UTC)).astimezone(UTC)


# --- the catalog ------------------------------------------------------------------------------


def read_products(path: Path) -> list[Product]:
    """The products of ``path`` with their schema files (relative to it), validated: every
    mistake at once (:class:`CatalogError`)."""
    base = path.parent

    def read(file: str) -> str:
        return (base / file).read_text(encoding="utf-8")

    return parse_products(read_yaml(path), str(path), read)


def publish_products(
    products: ProductRepository, catalog: CatalogReads, items: list[Product], source: str, now: datetime
) -> LoadReport:
    """Publish each product: version 1 when new, a new version when its contract changed; set
    the deprecation dates the file gives. Everything is checked before anything is written."""
    plans = {p.code for p in catalog.plan_summaries()}
    problems = check_plans(items, plans, source)
    products.lock()
    heads = {p.code: products.head(p.code) for p in items}
    planned: list[tuple[Product, dict[str, Any], dict[str, str], str, int, bool]] = []
    for p in items:
        document, schemas = product_document(p), product_schemas(p)
        digest = product_digest(document, schemas)
        head = heads[p.code]
        new = head is None or head.digest != digest
        version = 1 if head is None else head.version + (1 if new else 0)
        for v in sorted(p.deprecated_versions):
            if v >= version:
                problems.append(
                    f"{source}: product {p.code!r}: deprecated_versions names version {v}, but the version "
                    f"this file describes is {version}; use deprecated_until for it"
                )
        planned.append((p, document, schemas, digest, version, new))
    if problems:
        raise CatalogError(problems)
    report = LoadReport()
    for position, (p, document, schemas, digest, version, new) in enumerate(planned):
        changed = False
        if new:
            record = ProductVersionRecord(p.code, version, p.name, document, schemas, digest, p.deprecated_until, now)
            products.publish(record, position)
        else:
            products.move(p.code, position)
            changed = products.set_deprecation(p.code, version, p.deprecated_until)
        for v, until in sorted(p.deprecated_versions.items()):
            changed = products.set_deprecation(p.code, v, until) or changed
        if new:
            (report.created if version == 1 else report.updated).append(f"{p.code} v{version}")
        elif changed:
            report.updated.append(f"{p.code} v{version} (deprecation dates)")
        else:
            report.unchanged.append(p.code)
    return report


def load_products(engine: Engine, path: Path, now: datetime | None = None) -> LoadReport:
    """Load ``products.yaml`` (``path``) in one transaction: nothing changes when it has a mistake."""
    items = read_products(path)
    with UnitOfWork(engine) as uow:
        return publish_products(uow.products, uow.catalog, items, str(path), _now(now))


def _version_doc(r: ProductVersionRecord, on: date, with_schemas: bool) -> dict[str, Any]:
    d = r.document
    topics = []
    for t in d["topics"]:
        schema = None if t.get("schema") is None else dict(t["schema"])
        if schema is not None and with_schemas:
            schema["text"] = r.schemas.get(t["pattern"])
        topics.append({"pattern": t["pattern"], "match": t["match"], "schema": schema})
    return {
        "code": r.code,
        "version": r.version,
        "name": r.name,
        "description": d.get("description", ""),
        "direction": d["direction"],
        "topics": topics,
        "plans": [dict(pp) for pp in d["plans"]],
        "deprecated_until": _day(r.deprecated_until),
        "works": works_on(r.deprecated_until, on),
        "published_at": _instant(r.published_at),
    }


def _plan_of(catalog: CatalogReads, account: str, on: date) -> str | None:
    rows = catalog.accounts_with_plans(on, account)
    if not rows:
        raise ProductNotFound(f"there is no account {account!r}")
    return rows[0].plan


def _instant(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _day(d: date | None) -> str | None:
    return None if d is None else d.isoformat()


def subscription_doc(s: ProductSubscription) -> dict[str, Any]:
    """A subscription as the API, the command line and the portal give it (JSON-ready)."""
    doc = dataclasses.asdict(s)
    for key in ("requested_at", "decided_at", "cancelled_at"):
        doc[key] = _instant(doc[key])
    return doc


def _live(products: ProductRepository, account: str, code: str) -> ProductSubscription | None:
    found = [s for s in products.subscriptions(account, code) if s.status in _LIVE]
    return found[-1] if found else None


def catalog_products(
    products: ProductRepository, catalog: CatalogReads, on: date, account: str | None = None
) -> list[dict[str, Any]]:
    """Every product's newest version in catalog order; for ``account`` (a partner's view), the
    products its plan in force includes, each with how it subscribes (``self_service`` or
    ``approval``) and its live subscription, if any."""
    heads = products.heads()
    if account is None:
        return [_version_doc(h, on, with_schemas=False) for h in heads]
    plan = _plan_of(catalog, account, on)
    out = []
    for h in heads:
        route = subscription_route(product_from_document(h.document, h.schemas).plans, plan)
        if route is None:
            continue
        live = _live(products, account, h.code)
        doc = _version_doc(h, on, with_schemas=False)
        doc["access"] = route
        doc["subscription"] = None if live is None else subscription_doc(live)
        out.append(doc)
    return out


def product_detail(
    products: ProductRepository,
    catalog: CatalogReads,
    code: str,
    on: date,
    account: str | None = None,
    version: int | None = None,
) -> dict[str, Any]:
    """One product version (the newest unless ``version``) with its schemas' text and every
    version's date; for ``account``, only a product its plan includes or it subscribes to."""
    head = products.head(code)
    record = head if version is None else products.version(code, version)
    if head is None or record is None:
        raise ProductNotFound(f"there is no product {code!r}" + ("" if version is None else f" v{version}"))
    doc = _version_doc(record, on, with_schemas=True)
    doc["versions"] = [
        {"version": v.version, "deprecated_until": _day(v.deprecated_until), "works": works_on(v.deprecated_until, on)}
        for v in products.versions(code)
    ]
    if account is not None:
        plan = _plan_of(catalog, account, on)
        route = subscription_route(product_from_document(head.document, head.schemas).plans, plan)
        live = _live(products, account, code)
        if route is None and live is None:
            raise ProductNotFound(f"there is no product {code!r}")  # as for one that does not exist
        doc["access"] = route
        doc["subscription"] = None if live is None else subscription_doc(live)
    return doc


def list_products(engine: Engine, account: str | None = None, on: date | None = None) -> list[dict[str, Any]]:
    """Every product (finance) or the products of ``account``'s plan (a partner), newest versions."""
    with UnitOfWork(engine) as uow:
        return catalog_products(uow.products, uow.catalog, on or _now(None).date(), account)


def product_view(
    engine: Engine, code: str, account: str | None = None, version: int | None = None, on: date | None = None
) -> dict[str, Any]:
    """One product with its schemas (the API contract); :class:`ProductNotFound` otherwise."""
    with UnitOfWork(engine) as uow:
        return product_detail(uow.products, uow.catalog, code, on or _now(None).date(), account, version)


# --- subscriptions ----------------------------------------------------------------------------


def subscribe_account(
    products: ProductRepository, catalog: CatalogReads, account: str, code: str, by: str, now: datetime
) -> ProductSubscription:
    """``account``'s subscription to ``code``'s newest version: active at once on a self-service
    plan, else requested; the live one when there is one (moved to the newest version)."""
    plan = _plan_of(catalog, account, now.date())
    products.lock_account(account)
    head = products.head(code)
    if head is None:
        raise ProductNotFound(f"there is no product {code!r}")
    route = subscription_route(product_from_document(head.document, head.schemas).plans, plan)
    if route is None:
        raise ProductNotOffered(
            f"{account}'s plan ({plan or 'none in force'}) does not include product {code}; "
            "a plan that includes it is needed first"
        )
    live = _live(products, account, code)
    if live is not None:
        if live.version != head.version:
            live = dataclasses.replace(live, version=head.version)
            products.save_subscription(live)
        return live
    if head.deprecated_until is not None:
        raise ProductError(
            f"product {code} v{head.version} is deprecated (it works until {head.deprecated_until}); "
            "it takes no new subscriptions"
        )
    active = route == "self_service"
    sub = ProductSubscription(
        id=0,
        account=account,
        product=code,
        version=head.version,
        status="active" if active else "requested",
        requested_by=by,
        requested_at=now,
        decided_by=SELF_SERVICE if active else None,
        decided_at=now if active else None,
    )
    return dataclasses.replace(sub, id=products.add_subscription(sub))


def decide(
    products: ProductRepository, request_id: int, approve: bool, by: str, now: datetime, reason: str | None = None
) -> ProductSubscription:
    """Approve (→ active) or reject (→ rejected, with ``reason``) a requested subscription."""
    if not approve and not (reason or "").strip():
        raise ProductError("a rejection needs a reason (--reason)")
    sub = products.subscription(request_id, for_update=True)
    if sub is None:
        raise ProductNotFound(f"there is no product request {request_id}")
    if approve and sub.status == "active" and sub.decided_by not in (None, SELF_SERVICE):
        return sub  # approved already: the same answer
    if not approve and sub.status == "rejected" and sub.reason == reason:
        return sub
    if sub.status != "requested":
        verb = "approved" if approve else "rejected"
        raise ProductError(f"product request {request_id} is {sub.status}; only a requested one can be {verb}")
    decided = dataclasses.replace(
        sub,
        status="active" if approve else "rejected",
        decided_by=by,
        decided_at=now,
        reason=None if approve else (reason or "").strip(),
    )
    products.save_subscription(decided)
    return decided


def cancel(products: ProductRepository, account: str, code: str, by: str, now: datetime) -> ProductSubscription:
    """Cancel ``account``'s live subscription (or request) to ``code``; its last cancelled one
    when there is none live (cancelling twice: the same answer)."""
    products.lock_account(account)
    live = _live(products, account, code)
    if live is None:
        past = products.subscriptions(account, code)
        if past and past[-1].status == "cancelled":
            return past[-1]
        raise ProductNotFound(f"{account} has no subscription to product {code}")
    cancelled = dataclasses.replace(live, status="cancelled", cancelled_by=by, cancelled_at=now)
    products.save_subscription(cancelled)
    return cancelled


def subscribed_access(products: ProductRepository, plans: Mapping[str, str | None], on: date) -> dict[str, Access]:
    """``account → what its active subscriptions grant`` on the UTC day ``on``, for the accounts
    of ``plans`` (``account → plan in force``): a version past its ``deprecated_until``, or no
    longer included in the account's plan, grants nothing."""
    versions: dict[tuple[str, int], ProductVersionRecord | None] = {}
    by_account: dict[str, list[Product]] = {}
    for s in products.subscriptions(status="active"):
        if s.account not in plans:
            continue
        key = (s.product, s.version)
        if key not in versions:
            versions[key] = products.version(*key)
        record = versions[key]
        if record is None or not works_on(record.deprecated_until, on):
            continue
        product = product_from_document(record.document, record.schemas, record.deprecated_until)
        if subscription_route(product.plans, plans[s.account]) is None:
            continue
        by_account.setdefault(s.account, []).append(product)
    return {account: product_access(account, items) for account, items in by_account.items()}


def _docs(subs: Iterable[ProductSubscription]) -> list[dict[str, Any]]:
    return [subscription_doc(s) for s in subs]


def subscribe(engine: Engine, account: str, code: str, by: str, now: datetime | None = None) -> dict[str, Any]:
    """Subscribe ``account`` to ``code`` (see :func:`subscribe_account`); the subscription."""
    with UnitOfWork(engine) as uow:
        return subscription_doc(subscribe_account(uow.products, uow.catalog, account, code, by, _now(now)))


def approve(engine: Engine, request_id: int, by: str, now: datetime | None = None) -> dict[str, Any]:
    with UnitOfWork(engine) as uow:
        return subscription_doc(decide(uow.products, request_id, True, by, _now(now)))


def reject(engine: Engine, request_id: int, by: str, reason: str, now: datetime | None = None) -> dict[str, Any]:
    with UnitOfWork(engine) as uow:
        return subscription_doc(decide(uow.products, request_id, False, by, _now(now), reason))


def unsubscribe(engine: Engine, account: str, code: str, by: str, now: datetime | None = None) -> dict[str, Any]:
    with UnitOfWork(engine) as uow:
        return subscription_doc(cancel(uow.products, account, code, by, _now(now)))


def requests(engine: Engine, status: str | None = None, account: str | None = None) -> list[dict[str, Any]]:
    """Product subscriptions and requests, oldest first (``status``: only those)."""
    if status is not None and status not in STATUSES:
        raise ProductError(f"{status!r} is not a status; expected one of {', '.join(STATUSES)}")
    with UnitOfWork(engine) as uow:
        return _docs(uow.products.subscriptions(account, status=status))


def account_subscriptions(engine: Engine, account: str) -> list[dict[str, Any]]:
    """``account``'s subscriptions and requests, every status, oldest first."""
    return requests(engine, account=account)
