# No `from __future__ import annotations` here: FastAPI reads the dependencies in the annotations,
# and the role checks that ``limited`` wraps must be resolvable when each slot is defined.
"""The API's one dependency module: the app's collaborators and who is asking.

:class:`Services` holds what the endpoints work with (the database engine, the settings, the
statement store, the live feed, the credential publisher, the metrics, the limits), built once
per app by :func:`build_services` — with the command line (``streamtoll.cli``), the only place
that wires parts together — and kept on ``app.state.services``; an endpoint reaches it through
:func:`get_services`.

Who is asking: :func:`any_caller` (a valid key, failed attempts limited per client address),
narrowed by role — :func:`caller` (no ops key), :func:`live_reader` (ops or finance),
:func:`staff` (finance or ops), :func:`finance`. The expensive endpoints take their caller
through a slot of its key's limits (:func:`limited`: :data:`reader`, :data:`live_viewer`,
:data:`biller`, :data:`anyone`), taken in the event loop before any worker thread is.
:func:`scope` is the account a request may read; an idempotent POST takes one parameter,
:data:`Idempotency` (the request, its print and its ``Idempotency-Key``), whose
:meth:`Idempotent.run` answers a retried POST with its first answer.
"""

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, ProcessCollector
from sqlalchemy import Engine

from billing.adapters.live_feed import LiveFeed
from billing.adapters.metrics import ApiCollector
from billing.api.limiter import AuthLimiter, client_address
from billing.api.params import IdempotencyKey
from billing.api.portal_session import Sessions
from billing.api.problems import ProblemError, problem_response
from billing.api.quota import KeyQuota, Slot, TooMany, admit, key_digest
from billing.errors import KeyInUse, KeyReused
from billing.services.idempotency import claim, fingerprint
from billing.services.keys import Caller, authenticate
from billing.services.statements import StatementStore
from billing.settings import BillingSettings

__all__ = [
    "Idempotency",
    "Idempotent",
    "Services",
    "any_caller",
    "anyone",
    "biller",
    "build_services",
    "caller",
    "finance",
    "get_services",
    "idempotent",
    "limited",
    "live_reader",
    "live_viewer",
    "reader",
    "scope",
    "services_of",
    "staff",
]

# the headers of an answer an Idempotency-Key replay gives back with its body
_REPLAYED_HEADERS = {"content-type", "content-disposition", "location", "link"}

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    bearerFormat="stk_<key id>_<secret>",
    description="An API key (`streamtoll keys create`): partner, finance or ops.",
)


@dataclass
class Services:
    """What one API app works with (``app.state.services``)."""

    engine: Engine
    settings: BillingSettings
    limiter: AuthLimiter  # failed authentications per client address
    quota: KeyQuota  # each key's limits on the expensive endpoints
    statements: StatementStore
    metrics: ApiCollector
    registry: CollectorRegistry  # what /metrics shows: the metrics and the process's
    portal: Sessions  # the partner portal's session cookies and CSRF tokens
    live: LiveFeed | None = None  # the running live feed (None: /v1/live answers 503)
    # publishes every credential's state to the gateways, True when the cluster took it
    publish_credentials: Callable[[], bool] | None = field(default=None)
    # publishes every account's entitlement to the gateways (after a product subscription changes)
    publish_entitlements: Callable[[], bool] | None = field(default=None)

    def published(self) -> bool:
        """Publish the credentials after a change (False: nothing is published)."""
        return self.publish_credentials() if self.publish_credentials is not None else False

    def published_entitlements(self) -> bool:
        """Publish the entitlements after a change (False: nothing is published)."""
        return self.publish_entitlements() if self.publish_entitlements is not None else False


def build_services(
    engine: Engine,
    settings: BillingSettings | None = None,
    auth_limit: int = 20,
    live: LiveFeed | None = None,
    publish_credentials: Callable[[], bool] | None = None,
    publish_entitlements: Callable[[], bool] | None = None,
) -> Services:
    """The app's collaborators, built here and nowhere else."""
    settings = settings or BillingSettings()
    statements = StatementStore(engine, settings.statement_max_staleness, settings.source_order)
    metrics = ApiCollector(engine, live, statements)
    registry = CollectorRegistry()
    registry.register(metrics)
    ProcessCollector(registry=registry)
    return Services(
        engine=engine,
        settings=settings,
        limiter=AuthLimiter(limit=auth_limit),
        quota=KeyQuota(settings.api_limits),
        statements=statements,
        metrics=metrics,
        registry=registry,
        portal=Sessions(settings.portal_secret, settings.portal_session_hours, settings.portal_https),
        live=live,
        publish_credentials=publish_credentials,
        publish_entitlements=publish_entitlements,
    )


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_services(request: Request) -> Services:
    """The app's :class:`Services` (async: no worker thread to hand over a reference)."""
    return services_of(request)


AppServices = Annotated[Services, Depends(get_services)]

# --- who is asking ---


def any_caller(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
) -> Caller:
    s = services_of(request)
    who = client_address(
        request.client.host if request.client else None,
        request.headers.getlist("x-forwarded-for"),
        s.settings.api_trusted_proxies,
    )
    wait = s.limiter.retry_after(who)
    if wait:
        raise ProblemError(
            "too-many-failed-authentications",
            f"too many failed authentications from this address; retry in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    found = authenticate(s.engine, credentials.credentials) if credentials else None
    if found is None:
        s.limiter.failed(who)
        raise ProblemError("unauthorized", "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"})
    return found


def caller(c: Annotated[Caller, Depends(any_caller)]) -> Caller:
    if c.role == "ops":
        raise ProblemError("forbidden", "an ops key reads only /v1/live, entitlements and credentials")
    return c


def live_reader(c: Annotated[Caller, Depends(any_caller)]) -> Caller:
    if c.role not in ("ops", "finance"):
        raise ProblemError("forbidden", "the live view needs an ops or finance key")
    return c


def staff(c: Annotated[Caller, Depends(any_caller)]) -> Caller:
    if c.role not in ("finance", "ops"):
        raise ProblemError("forbidden", "this needs a finance or ops key")
    return c


def finance(c: Annotated[Caller, Depends(caller)]) -> Caller:
    if c.role != "finance":
        raise ProblemError("forbidden", "this needs a finance key")
    return c


def scope(c: Caller, account: str | None) -> str | None:
    """The account a request may read: a partner's own, whatever it asks."""
    if c.role in ("finance", "ops"):
        return account
    if account is not None and account != c.account:
        raise ProblemError("not-found", "no such account")
    return c.account


# --- per-key limits on the expensive endpoints (billing.api.quota) ---


def _key_id(presented: str) -> str:
    """The key id part of ``stk_<key id>_<secret>`` ("" when malformed)."""
    parts = presented.split("_", 2)
    return parts[1] if len(parts) == 3 else ""


def _too_many(s: Services, exc: TooMany) -> ProblemError:
    s.metrics.limited[(exc.role, exc.reason)] += 1
    return ProblemError("too-many-requests", exc.detail, headers={"Retry-After": str(exc.retry_after)})


async def early_slot(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> AsyncIterator[tuple[bytes, Slot | None]]:
    """Before authentication, in the event loop: the slot of a key seen before (a request
    over its limit costs no worker thread and no database query); None for another key."""
    s = services_of(request)
    digest = key_digest(credentials.credentials) if credentials else b""
    held = None
    if credentials is not None:
        try:
            held = await admit(lambda: s.quota.acquire_known(_key_id(credentials.credentials), digest))
        except TooMany as exc:
            raise _too_many(s, exc) from None
    try:
        yield digest, held
    finally:  # whatever happened next: authentication failed, the endpoint answered or raised
        if held is not None:
            held.release()


def limited(role_check: Callable[..., Caller]) -> Callable[..., AsyncIterator[Caller]]:
    """``role_check``'s caller, holding a slot of its key's limits while the endpoint runs
    (async: taking and releasing the slot need no worker thread)."""

    async def slot(
        request: Request,
        early: Annotated[tuple[bytes, Slot | None], Depends(early_slot)],
        c: Annotated[Caller, Depends(role_check)],
    ) -> AsyncIterator[Caller]:
        digest, held = early
        if held is not None:  # taken before authentication; early_slot releases it
            yield c
            return
        s = services_of(request)
        try:
            held = await admit(lambda: s.quota.acquire(c.key_id, c.role, digest))
        except TooMany as exc:
            raise _too_many(s, exc) from None
        try:
            yield c
        finally:
            held.release()

    return slot


# the expensive endpoints (docs/api.md "Limits per key"): statements in every format, usage,
# invoice PDFs, the live view, billing runs, finalize and void
reader = limited(caller)
live_viewer = limited(live_reader)
biller = limited(finance)
anyone = limited(any_caller)

# --- Idempotency-Key ---


def _idempotency_key(raw: str) -> str:
    """The key as sent: a plain string or a structured-field string (``"…"``, RFC 8941)."""
    key = raw.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not 1 <= len(key) <= 255 or not all(" " <= ch <= "~" for ch in key):
        raise ProblemError(
            "invalid-request",
            "an Idempotency-Key is 1 to 255 printable ASCII characters (e.g. a UUID)",
            errors=[{"name": "idempotency-key", "in": "header", "reason": "1-255 printable ASCII characters"}],
        )
    return key


@dataclass(frozen=True)
class Idempotent:
    """A POST answered once per ``Idempotency-Key``: the request, what makes a retry of it the
    same request (its print) and the key as sent (None: no key, every request does the work)."""

    request: Request
    print_: str
    key: str | None

    def run(self, c: Caller, work: Callable[[], Response], kept_as: Callable[[bytes], bytes] | None = None) -> Response:
        """``work()``'s answer — or, for a retried key of this caller, the first answer
        (``kept_as``: what of its body is kept for a retry, e.g. without a password)."""
        if self.key is None:
            return work()
        key = _idempotency_key(self.key)
        try:
            with claim(services_of(self.request).engine, c.key_id, key, self.print_) as held:
                if held.answer is not None:
                    return Response(
                        held.answer.body,
                        status_code=held.answer.status,
                        headers={**dict(held.answer.headers), "Idempotent-Replayed": "true"},
                    )
                try:
                    response = work()
                except ProblemError as exc:
                    response = problem_response(
                        self.request, exc.kind.slug, exc.detail, headers=exc.headers, errors=exc.errors
                    )
                if response.status_code < 500:  # a failure the caller should retry is not the answer
                    kept = [(k, v) for k, v in response.headers.items() if k in _REPLAYED_HEADERS]
                    body = bytes(response.body)
                    held.complete(
                        response.status_code, kept, kept_as(body) if kept_as and response.status_code == 200 else body
                    )
                return response
        except KeyInUse:
            raise ProblemError(
                "idempotency-key-in-use", "a request with this Idempotency-Key is still running; retry later"
            ) from None
        except KeyReused:
            raise ProblemError(
                "idempotency-key-reused",
                "this Idempotency-Key was used for another request; use a new key for a new request",
                errors=[{"name": "idempotency-key", "in": "header", "reason": "used for another request"}],
            ) from None


async def idempotent(request: Request, idempotency_key: IdempotencyKey = None) -> Idempotent:
    """The request, its print (method, path, query and body) and its Idempotency-Key (async: the
    body is read in the event loop)."""
    body = await request.body()
    return Idempotent(
        request,
        fingerprint(request.method, request.scope["path"], request.query_params.multi_items(), body),
        idempotency_key,
    )


# an idempotent POST's one parameter: ``idem: Idempotency`` … ``return idem.run(c, work)``
Idempotency = Annotated[Idempotent, Depends(idempotent)]
