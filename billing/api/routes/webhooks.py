"""Webhook endpoints and their deliveries (``billing.services.webhooks``), a finance key: list,
add (the secret shown once), remove; the deliveries, their attempts, replay."""

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response

from billing.api import models
from billing.api.deps import AppServices, Idempotency, finance
from billing.api.params import REPLAYED, Account, json_response, keyed, ok, reads
from billing.api.problems import ProblemError, error_responses
from billing.domain.accounts import CODE_PATTERN
from billing.domain.webhooks import EVENT_TYPES
from billing.errors import WebhookError, WebhookNotFound
from billing.services import webhooks as hooks
from billing.services.keys import Caller

__all__ = ["router"]

_TYPE = "|".join(t.replace(".", r"\.") for t in EVENT_TYPES)
EndpointId = Annotated[str, Path(pattern=r"^whe_[0-9a-f]{1,64}$", description="the endpoint's id (whe_…)")]
DeliveryId = Annotated[int, Path(ge=1, le=2**63 - 1, description="the delivery's id")]
_POSTED = error_responses(*keyed, "not-found", "idempotency-key-in-use", "idempotency-key-reused")

router = APIRouter()


@router.get(
    "/v1/webhooks",
    responses={200: ok(list[models.WebhookEndpoint], "the endpoints, oldest first (never a secret)"), **reads},
)
def webhook_endpoints(
    c: Annotated[Caller, Depends(finance)], s: AppServices, account: Account = None, include_removed: bool = False
) -> Any:
    return [_endpoint(e) for e in hooks.list_endpoints(s.engine, account, include_removed)]


def _endpoint(e: Any) -> dict[str, Any]:
    doc = hooks.endpoint_doc(e)
    return {**doc, "events": list(e.event_types)}


def _without_secret(body: bytes) -> bytes:
    return orjson.dumps({**orjson.loads(body), "secret": None})


@router.post(
    "/v1/webhooks",
    responses={200: ok(models.AddedWebhookEndpoint, "the endpoint and its secret", headers=REPLAYED), **_POSTED},
)
def add_webhook_endpoint(
    c: Annotated[Caller, Depends(finance)],
    idem: Idempotency,
    s: AppServices,
    account: Annotated[str, Query(pattern=CODE_PATTERN, description="the account whose events it takes")],
    url: Annotated[str, Query(min_length=1, max_length=2000, description="the http(s) URL events are POSTed to")],
    events: Annotated[
        str | None,
        Query(pattern=rf"^({_TYPE})(,({_TYPE}))*$", description="comma list of event types (default: every type)"),
    ] = None,
) -> Response:
    def work() -> Response:
        try:
            added = hooks.add_endpoint(s.engine, account, url, events.split(",") if events else None)
        except WebhookNotFound:
            raise ProblemError("not-found", "no such account") from None
        except WebhookError as exc:
            raise ProblemError(
                "invalid-request", str(exc), errors=[{"name": "url", "in": "query", "reason": str(exc)}]
            ) from None
        return json_response({**_endpoint(added.endpoint), "secret": added.secret})

    return idem.run(c, work, kept_as=_without_secret)


@router.post(
    "/v1/webhooks/{endpoint_id}/remove",
    responses={
        200: ok(models.RemovedWebhookEndpoint, "removed; its queued deliveries cancelled", headers=REPLAYED),
        **_POSTED,
    },
)
def remove_webhook_endpoint(
    endpoint_id: EndpointId,
    c: Annotated[Caller, Depends(finance)],
    idem: Idempotency,
    s: AppServices,
) -> Response:
    def work() -> Response:
        found = [e for e in hooks.list_endpoints(s.engine) if e.id == endpoint_id]
        try:
            if not found:
                raise WebhookNotFound(endpoint_id)
            hooks.remove_endpoint(s.engine, found[0].account, endpoint_id)
        except WebhookNotFound:
            raise ProblemError("not-found", "no such active endpoint") from None
        return json_response({"id": endpoint_id, "removed": True})

    return idem.run(c, work)


@router.get(
    "/v1/webhooks/deliveries",
    responses={200: ok(list[models.WebhookDelivery], "the deliveries, newest first"), **reads},
)
def webhook_deliveries(
    c: Annotated[Caller, Depends(finance)],
    s: AppServices,
    account: Account = None,
    status: Annotated[
        str | None,
        Query(pattern="^(pending|sending|delivered|failed|cancelled)$", description="only deliveries in this status"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="at most this many")] = 100,
) -> Any:
    return [hooks.delivery_doc(d) for d in hooks.list_deliveries(s.engine, account, status, limit)]


@router.get(
    "/v1/webhooks/deliveries/{delivery_id}/attempts",
    responses={200: ok(list[models.WebhookAttempt], "the delivery's log: one row per attempt, oldest first"), **reads},
)
def webhook_attempts(c: Annotated[Caller, Depends(finance)], s: AppServices, delivery_id: DeliveryId) -> Any:
    return [hooks.attempt_doc(a) for a in hooks.attempts_of(s.engine, delivery_id)]


@router.post(
    "/v1/webhooks/deliveries/{delivery_id}/replay",
    responses={200: ok(models.ReplayedDelivery, "queued again (same event id and body)", headers=REPLAYED), **_POSTED},
)
def replay_webhook_delivery(
    delivery_id: DeliveryId,
    c: Annotated[Caller, Depends(finance)],
    idem: Idempotency,
    s: AppServices,
) -> Response:
    def work() -> Response:
        try:
            hooks.replay(s.engine, delivery_id)
        except WebhookNotFound:
            raise ProblemError("not-found", "no such delivery to an active endpoint") from None
        return json_response({"id": delivery_id, "queued": True})

    return idem.run(c, work)
