"""The partner and finance HTTP API (FastAPI; OpenAPI at ``/openapi.json``; ``docs/api.md``).

Auth: ``Authorization: Bearer stk_…`` (the ``bearer`` security scheme). A partner key sees only
its own account; another account's invoice is a 404, exactly like one that does not exist. A
finance key sees every account and may run billing, finalize and void. Missing, malformed, wrong
or revoked keys are 401, and failed attempts are limited per client address (``limiter``; behind
trusted proxies, the address they forward). Input is validated by type and pattern (bad dates,
a period not spelled ``YYYY-MM``, an unknown or repeated group, a range over the limit → 422
naming the parameters; the patterns are in OpenAPI), so only one spelling of a value reaches the
statement store and the database; queries are parameterized. ``Accept`` is read with its
q-values (``negotiation``; nothing acceptable → 406). While the database is unreachable, requests
answer 503; a statement it refuses is a 500. No ``/docs`` (Swagger UI would come from a CDN) and
no slash redirects (they are built from the forgeable ``Host`` header). The expensive endpoints (statements, usage,
invoice PDFs, the live view, entitlements, billing runs, finalize, void) are limited per key — a rate, a burst
and a number running at once, per role (``quota``; 429 ``too-many-requests`` with
``Retry-After``), the slot taken in the event loop before any worker thread is.

Every error is an RFC 9457 problem (``problems``), including an unexpected exception (500,
logged, and counted like every answer). Invoices are named in paths by their ``ref`` (number, or
``draft-<id>``). ``GET /v1/invoices`` and ``GET /v1/usage`` are paginated by cursor (``Link:
rel="next"``). Every POST takes an ``Idempotency-Key``: a retry gets the first answer.

Ops: ``/live`` is a self-contained page (no data in it, so no key to load it; it asks for an ops
or finance key and calls ``/v1/live``). ``/v1/live`` needs an ops or finance key: it names every
account. An ops key reads nothing else but entitlements and credentials (it may issue, rotate and
revoke credentials, as finance may; a partner key lists and rotates its own account's).
``/portal`` is the partner portal (server-rendered pages; a session cookie from signing in with
a partner key, never a bearer header; ``routes.portal``; not in ``/openapi.json``).
``/metrics`` (Prometheus) and ``/healthz`` need no key and show no account: counts, latency,
lag, the process's memory and CPU, and reachability only.
``/healthz`` answers 200 when the database and the broker are reachable and 503 (with which one
is not) otherwise — the readiness probe; ``/healthz/live`` answers 200 while the process serves —
the liveness probe, answered in the event loop so that busy worker threads never delay it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from sqlalchemy import Engine

from billing.adapters.live_feed import LiveFeed
from billing.api import errors
from billing.api.deps import build_services
from billing.api.problems import Problem
from billing.api.routes import (
    amendments,
    credentials,
    credit_notes,
    entitlements,
    grants,
    invoices,
    live,
    ops,
    portal,
    products,
    statements,
    usage,
    webhooks,
)
from billing.settings import BillingSettings

__all__ = ["create_app"]

# in this order in /openapi.json
_ROUTERS = (
    ops,
    live,
    usage,
    statements,
    invoices,
    credit_notes,
    grants,
    amendments,
    entitlements,
    credentials,
    webhooks,
    products,
    portal,
)


def create_app(
    engine: Engine,
    settings: BillingSettings | None = None,
    auth_limit: int = 20,
    live: LiveFeed | None = None,
    publish_credentials: Callable[[], bool] | None = None,
    publish_entitlements: Callable[[], bool] | None = None,
) -> FastAPI:
    """The HTTP app; ``live`` is the running live feed (None: ``/v1/live`` answers 503);
    ``publish_credentials()`` publishes every credential's state to the gateways after a change
    made through the API, True when the cluster took it (None: nothing is published);
    ``publish_entitlements()`` likewise every account's entitlement (after a product subscription changes)."""
    app = FastAPI(
        title="streamtoll",
        version="0.1.0",
        description="Usage statements and invoices for Kafka traffic.",
        # no /docs or /redoc: FastAPI's pages load Swagger UI and ReDoc from a public CDN
        docs_url=None,
        redoc_url=None,
        # no redirect from /path/ to /path: Starlette builds its absolute URL from the Host header
        redirect_slashes=False,
    )
    services = build_services(engine, settings, auth_limit, live, publish_credentials, publish_entitlements)
    app.state.services = services
    app.state.statements = services.statements  # for the billing bench
    errors.install(app)
    for area in _ROUTERS:
        app.include_router(area.router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            problem_schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
            nested = problem_schema.pop("$defs", {})
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update({"Problem": problem_schema, **nested})  # nested: InvalidParam
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
