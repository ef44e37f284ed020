"""Streaming API products (``billing.services.products``): the catalog (a partner: the products
of its plan), one product with its schemas, subscribing (a partner: self-service → active, else
a request; idempotent), and the request queue finance and ops approve or reject. Every change is
published to the gateways (the account's entitlement)."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response

from billing.api import models
from billing.api.deps import AppServices, Idempotency, Services, any_caller, scope, staff
from billing.api.params import REPLAYED, Account, json_response, keyed, ok, reads
from billing.api.problems import ProblemError, error_responses
from billing.errors import ProductError, ProductNotFound, ProductNotOffered
from billing.services import products
from billing.services.keys import Caller

__all__ = ["router"]

Code = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$", description="the product's code")]
RequestId = Annotated[int, Path(ge=1, le=2**62, description="the request's id")]
_POSTED = error_responses(*keyed, "not-found", "product-conflict", "idempotency-key-in-use", "idempotency-key-reused")

router = APIRouter()


def _who(c: Caller) -> str:
    return f"{c.role}:{c.key_id}"


def _partner(c: Caller) -> str | None:
    return c.account if c.role == "partner" else None


def _changed(s: Services, doc: dict[str, Any]) -> Response:
    s.published_entitlements()
    return json_response(doc)


def _problem(exc: ProductError) -> ProblemError:
    if isinstance(exc, ProductNotFound):
        return ProblemError("not-found", str(exc))
    return ProblemError("product-conflict", str(exc))


@router.get(
    "/v1/products",
    responses={200: ok(list[models.Product], "each product's newest version (a partner: its plan's)"), **reads},
)
def product_list(c: Annotated[Caller, Depends(any_caller)], s: AppServices, account: Account = None) -> Any:
    try:
        return products.list_products(s.engine, scope(c, account))
    except ProductNotFound:
        raise ProblemError("not-found", "no such account") from None


@router.get(
    "/v1/products/{code}",
    responses={200: ok(models.Product, "the product with its schemas (the API contract) and versions"), **reads},
)
def product(
    code: Code,
    c: Annotated[Caller, Depends(any_caller)],
    s: AppServices,
    version: Annotated[int | None, Query(ge=1, le=2**31 - 1, description="a version (default: newest)")] = None,
) -> Any:
    try:
        return products.product_view(s.engine, code, _partner(c), version)
    except ProductNotFound:
        raise ProblemError("not-found", "no such product") from None


@router.post(
    "/v1/products/{code}/subscriptions",
    responses={200: ok(models.ProductSubscription, "active (self-service) or requested", headers=REPLAYED), **_POSTED},
)
def subscribe(
    code: Code,
    c: Annotated[Caller, Depends(any_caller)],
    idem: Idempotency,
    s: AppServices,
    account: Account = None,
) -> Response:
    def work() -> Response:
        who = scope(c, account)
        if who is None:
            raise ProblemError(
                "invalid-request",
                "name the account to subscribe",
                errors=[{"name": "account", "in": "query", "reason": "required with a finance or ops key"}],
            )
        try:
            return _changed(s, products.subscribe(s.engine, who, code, _who(c)))
        except ProductNotFound:
            raise ProblemError("not-found", "no such product") from None
        except ProductError as exc:
            if c.role == "partner" and isinstance(exc, ProductNotOffered):
                raise ProblemError("not-found", "no such product") from None  # not offered to it: as absent
            raise _problem(exc) from None

    return idem.run(c, work)


@router.get(
    "/v1/product-requests",
    responses={200: ok(list[models.ProductSubscription], "subscriptions and requests, oldest first"), **reads},
)
def product_requests(
    c: Annotated[Caller, Depends(staff)],
    s: AppServices,
    status: Annotated[str | None, Query(pattern="^(requested|active|rejected|cancelled)$")] = None,
    account: Account = None,
) -> Any:
    return products.requests(s.engine, status, account)


@router.post(
    "/v1/product-requests/{request_id}/approve",
    responses={200: ok(models.ProductSubscription, "approved: active", headers=REPLAYED), **_POSTED},
)
def approve(
    request_id: RequestId,
    c: Annotated[Caller, Depends(staff)],
    idem: Idempotency,
    s: AppServices,
) -> Response:
    def work() -> Response:
        try:
            return _changed(s, products.approve(s.engine, request_id, _who(c)))
        except ProductError as exc:
            raise _problem(exc) from None

    return idem.run(c, work)


@router.post(
    "/v1/product-requests/{request_id}/reject",
    responses={200: ok(models.ProductSubscription, "rejected, with the reason", headers=REPLAYED), **_POSTED},
)
def reject(
    request_id: RequestId,
    reason: Annotated[str, Query(min_length=1, max_length=500, pattern=r"^[^\x00-\x1f\x7f]*\S[^\x00-\x1f\x7f]*$")],
    c: Annotated[Caller, Depends(staff)],
    idem: Idempotency,
    s: AppServices,
) -> Response:
    def work() -> Response:
        try:
            return _changed(s, products.reject(s.engine, request_id, _who(c), reason))
        except ProductError as exc:
            raise _problem(exc) from None

    return idem.run(c, work)
