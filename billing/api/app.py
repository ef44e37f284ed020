# No `from __future__ import annotations` here: FastAPI reads the dependencies in the annotations,
# and the closures of create_app must be resolvable when each endpoint is defined.
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
``/metrics`` (Prometheus) and ``/healthz`` need no key and show no account: counts, latency,
lag, the process's memory and CPU, and reachability only.
``/healthz`` answers 200 when the database and the broker are reachable and 503 (with which one
is not) otherwise — the readiness probe; ``/healthz/live`` answers 200 while the process serves —
the liveness probe, answered in the event loop so that busy worker threads never delay it.
"""

import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from importlib.resources import files
from typing import Annotated, Any, Literal

import orjson
from fastapi import Depends, FastAPI, Header, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DataError, OperationalError, SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from billing.adapters.db import unreachable
from billing.adapters.metrics import ApiCollector
from billing.adapters.render import render_statement_pdf
from billing.adapters.spreadsheet import csv_text
from billing.api import models
from billing.api.limiter import AuthLimiter, client_address
from billing.api.negotiation import negotiate
from billing.api.pagination import bad_cursor, decode_cursor, encode_cursor, next_link
from billing.api.problems import Problem, ProblemError, error_responses, problem_response
from billing.api.quota import KeyQuota, Slot, TooMany, admit, key_digest
from billing.domain.accounts import CODE_PATTERN
from billing.domain.money import format_money
from billing.errors import (
    CredentialError,
    CredentialNotFound,
    EntitlementNotFound,
    InvoiceError,
    InvoiceNotFound,
    KeyInUse,
    KeyReused,
    RunError,
)
from billing.services.billing_run import PERIOD_PATTERN, parse_period, run_billing
from billing.services.credentials import (
    NAME,
    IssuedCredential,
    create_credential,
    credential_doc,
    list_credentials,
    revoke_credential,
    rotate_credential,
)
from billing.services.entitlements import entitlement_view
from billing.services.idempotency import claim, fingerprint
from billing.services.invoices import finalize, invoice_pdf, invoice_view, list_invoices, list_position, void
from billing.services.keys import Caller, authenticate
from billing.services.live import LiveFeed
from billing.services.statements import StatementStore, statement_csv
from billing.services.usage import GROUPS, QUANTITIES, usage_page, usage_report
from billing.settings import BillingSettings
from metering.credentials import MECHANISMS

__all__ = ["create_app"]

log = logging.getLogger("streamtoll.api")

MAX_RANGE = timedelta(days=400)
INVOICES_LIMIT, INVOICES_MAX_LIMIT = 100, 1000
USAGE_LIMIT, USAGE_MAX_LIMIT = 10_000, 100_000
_NOT_FOUND = "no such invoice"
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
# the headers of an answer an Idempotency-Key replay gives back with its body
_REPLAYED_HEADERS = {"content-type", "content-disposition", "location", "link"}

_LIVE_PAGE = files("billing") / "templates" / "live" / "index.html"

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    bearerFormat="stk_<key id>_<secret>",
    description="An API key (`streamtoll keys create`): partner, finance or ops.",
)

_LINK = {
    "Link": {"description": 'the next page: `<…>; rel="next"` (absent on the last page)', "schema": {"type": "string"}}
}
_REPLAYED = {
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored answer to an earlier request with the same Idempotency-Key",
        "schema": {"type": "string"},
    }
}
_CSV = {"text/csv": {"schema": {"type": "string"}}}
_PDF = {"application/pdf": {"schema": {"type": "string", "format": "binary"}}}

# Inputs are checked against these patterns (declared in OpenAPI) before anything else reads them:
# one spelling per value, so only the normal form reaches the caches and the database.
_STATEMENT_PATTERN = PERIOD_PATTERN.removesuffix("$") + r"(\.pdf)?$"
_GROUPINGS = GROUPS[:-2]  # hour and day come from granularity
_GROUP = "(" + "|".join(_GROUPINGS) + ")"
_GROUP_BY_PATTERN = rf"^({_GROUP}(,{_GROUP})*)?$"
CREDENTIAL_NAME_PATTERN = NAME.pattern
CREDENTIAL_ID_PATTERN = r"^cred_[0-9a-f]{1,64}$"
_PATTERN_REASONS = {
    PERIOD_PATTERN: "not a billing period YYYY-MM (ASCII digits, 1970-01 to 9998-12)",
    _STATEMENT_PATTERN: "not a billing period YYYY-MM (ASCII digits, 1970-01 to 9998-12), or one with .pdf",
    CODE_PATTERN: "not an account code (lowercase letters, digits, - and _)",
    CREDENTIAL_NAME_PATTERN: "not a credential name (1–63 lowercase letters, digits, '.', '_' or '-')",
    CREDENTIAL_ID_PATTERN: "not a credential id (cred_ and hex digits)",
    _GROUP_BY_PATTERN: f"not a comma list (no spaces) of {', '.join(_GROUPINGS)}",
}
Period = Annotated[str, Query(pattern=PERIOD_PATTERN, description="a billing period, `YYYY-MM`")]
Account = Annotated[str | None, Query(pattern=CODE_PATTERN, description="an account's code")]
_MEDIA = {"json": "application/json", "csv": "text/csv", "pdf": "application/pdf"}  # format=…
_USAGE_MEDIA = ("application/json", "text/csv")
_STATEMENT_MEDIA = ("application/json", "text/csv", "application/pdf")


def _ok(model: type[Any], description: str, extra: dict[str, Any] | None = None, **more: Any) -> dict[str, Any]:
    """The OpenAPI entry of a 200 answer with ``model`` as its JSON body (and other media types)."""
    return {"model": model, "description": description, **({"content": extra} if extra else {}), **more}


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _nul_params(request: Request) -> list[dict[str, str]]:
    bad = []
    if "\x00" in request.scope["path"]:
        bad.append({"name": "path", "in": "path", "reason": "contains a NUL character"})
    for k, v in request.query_params.multi_items():
        if "\x00" in k or "\x00" in v:
            bad.append({"name": k.replace("\x00", "\\0"), "in": "query", "reason": "contains a NUL character"})
    return bad


def _key_id(presented: str) -> str:
    """The key id part of ``stk_<key id>_<secret>`` ("" when malformed)."""
    parts = presented.split("_", 2)
    return parts[1] if len(parts) == 3 else ""


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


def create_app(
    engine: Engine,
    settings: BillingSettings | None = None,
    auth_limit: int = 20,
    live: LiveFeed | None = None,
    publish_credentials: Callable[[], bool] | None = None,
) -> FastAPI:
    """The HTTP app; ``live`` is the running live feed (None: ``/v1/live`` answers 503);
    ``publish_credentials()`` publishes every credential's state to the gateways after a change
    made through the API, True when the cluster took it (None: nothing is published)."""
    settings = settings or BillingSettings()
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
    limiter = AuthLimiter(limit=auth_limit)
    quota = KeyQuota(settings.api_limits)
    app.state.quota = quota
    statements_store = StatementStore(engine, settings.statement_max_staleness, settings.source_order)
    app.state.statements = statements_store
    metrics = ApiCollector(engine, live, statements_store)
    registry = CollectorRegistry()
    registry.register(metrics)
    ProcessCollector(registry=registry)

    # --- errors: every one a problem, every answer counted and timed ---

    @app.middleware("http")
    async def observe(request: Request, call_next: Any) -> Any:
        started = time.perf_counter()
        bad = _nul_params(request)
        if bad:
            response: Any = problem_response(
                request, "invalid-request", "parameters may not contain NUL characters", errors=bad
            )
        elif b"%2f" in request.scope.get("raw_path", b"").lower():
            # a '/' in a path parameter (no ref or period has one): routed as a separator once
            # decoded, it would reach another operation (GET /v1/invoices/x%2Ffinalize: a 405)
            response = problem_response(request, "not-found", "there is nothing at this path")
        else:
            try:
                response = await call_next(request)
            except Exception:
                route = getattr(request.scope.get("route"), "path", "unmatched")
                log.exception("request failed", extra={"route": route, "method": request.method})
                response = problem_response(request, "internal-error", "the request failed unexpectedly; it is logged")
        route = getattr(request.scope.get("route"), "path", "unmatched")
        method = request.method if request.method in _METHODS else "other"
        metrics.observe(route, method, response.status_code, time.perf_counter() - started)
        return response

    @app.exception_handler(ProblemError)
    async def problem(request: Request, exc: ProblemError) -> Response:
        return problem_response(request, exc.kind.slug, exc.detail, headers=exc.headers, errors=exc.errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = "there is nothing at this path"
        return problem_response(request, None, detail, status=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = []
        for e in exc.errors():
            loc = [str(part) for part in e.get("loc", ())]
            reason = e["msg"]
            if e.get("type") == "string_pattern_mismatch":
                reason = _PATTERN_REASONS.get(e.get("ctx", {}).get("pattern"), reason)
            errors.append({"name": ".".join(loc[1:]) or loc[0], "in": loc[0] if loc else "query", "reason": reason})
        names = ", ".join(dict.fromkeys(e["name"] for e in errors))
        return problem_response(request, "invalid-request", f"invalid parameters: {names}", errors=errors)

    @app.exception_handler(DataError)
    async def bad_value(request: Request, exc: DataError) -> Response:
        # a value no column can hold (e.g. a NUL character): the caller's mistake, not a 500
        return problem_response(request, "invalid-request", "a parameter holds a value that is not allowed")

    @app.exception_handler(OperationalError)
    async def database_down(request: Request, exc: OperationalError) -> Response:
        if unreachable(exc):
            return problem_response(request, "database-unavailable", "the database is unavailable; try again shortly")
        # the database refused the statement (too many columns, a cancelled query …): a bug
        route = getattr(request.scope.get("route"), "path", "unmatched")
        log.exception("request failed", extra={"route": route, "method": request.method}, exc_info=exc)
        return problem_response(request, "internal-error", "the request failed unexpectedly; it is logged")

    def acceptable(accept: str | None, offers: tuple[str, ...]) -> str:
        media = negotiate(accept, offers)
        if media is None:
            raise ProblemError("not-acceptable", f"this endpoint answers with {', '.join(offers)} only")
        return media

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

    # --- who is asking ---

    def any_caller(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
    ) -> Caller:
        who = client_address(
            request.client.host if request.client else None,
            request.headers.getlist("x-forwarded-for"),
            settings.api_trusted_proxies,
        )
        wait = limiter.retry_after(who)
        if wait:
            raise ProblemError(
                "too-many-failed-authentications",
                f"too many failed authentications from this address; retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        found = authenticate(engine, credentials.credentials) if credentials else None
        if found is None:
            limiter.failed(who)
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

    # --- per-key limits on the expensive endpoints (billing.api.quota) ---

    def too_many(exc: TooMany) -> ProblemError:
        metrics.limited[(exc.role, exc.reason)] += 1
        return ProblemError("too-many-requests", exc.detail, headers={"Retry-After": str(exc.retry_after)})

    async def early_slot(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    ) -> AsyncIterator[tuple[bytes, Slot | None]]:
        """Before authentication, in the event loop: the slot of a key seen before (a request
        over its limit costs no worker thread and no database query); None for another key."""
        digest = key_digest(credentials.credentials) if credentials else b""
        held = None
        if credentials is not None:
            try:
                held = await admit(lambda: quota.acquire_known(_key_id(credentials.credentials), digest))
            except TooMany as exc:
                raise too_many(exc) from None
        try:
            yield digest, held
        finally:  # whatever happened next: authentication failed, the endpoint answered or raised
            if held is not None:
                held.release()

    def limited(role_check: Callable[..., Caller]) -> Callable[..., AsyncIterator[Caller]]:
        """``role_check``'s caller, holding a slot of its key's limits while the endpoint runs
        (async: taking and releasing the slot need no worker thread)."""

        async def slot(
            early: Annotated[tuple[bytes, Slot | None], Depends(early_slot)],
            c: Annotated[Caller, Depends(role_check)],
        ) -> AsyncIterator[Caller]:
            digest, held = early
            if held is not None:  # taken before authentication; early_slot releases it
                yield c
                return
            try:
                held = await admit(lambda: quota.acquire(c.key_id, c.role, digest))
            except TooMany as exc:
                raise too_many(exc) from None
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

    def scope(c: Caller, account: str | None) -> str | None:
        """The account a request may read: a partner's own, whatever it asks."""
        if c.role in ("finance", "ops"):
            return account
        if account is not None and account != c.account:
            raise ProblemError("not-found", "no such account")
        return c.account

    async def request_print(request: Request) -> str:
        """What makes a retried POST the same request (for its Idempotency-Key)."""
        return fingerprint(
            request.method, request.scope["path"], request.query_params.multi_items(), await request.body()
        )

    IdempotencyKey = Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="a unique string per request (e.g. a UUID): a retry with the same key gets the first "
            "answer instead of doing the work again; kept 24 h",
        ),
    ]

    def once(
        request: Request,
        c: Caller,
        key: str | None,
        print_: str,
        work: Callable[[], Response],
        kept_as: Callable[[bytes], bytes] | None = None,
    ) -> Response:
        """``work()``'s answer — or, for a retried ``key`` of this caller, the first answer
        (``kept_as``: what of its body is kept for a retry, e.g. without a password)."""
        if key is None:
            return work()
        key = _idempotency_key(key)
        try:
            with claim(engine, c.key_id, key, print_) as held:
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
                        request, exc.kind.slug, exc.detail, headers=exc.headers, errors=exc.errors
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

    # the problems every operation with a key can answer
    keyed = ("unauthorized", "forbidden", "invalid-request", "too-many-failed-authentications", "database-unavailable")
    reads = error_responses(*keyed, "not-found")
    limited_reads = error_responses(*keyed, "not-found", "too-many-requests")
    # Accept picks the media type
    limited_negotiated = error_responses(*keyed, "not-found", "not-acceptable", "too-many-requests")

    # --- health and ops ---

    @app.get(
        "/healthz",
        responses={
            200: _ok(models.Health, "the database (and the broker, with a live view) are reachable"),
            503: {"model": models.Health, "description": "something is unreachable: the body says what"},
        },
    )
    def healthz() -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "reachable"
        except SQLAlchemyError:
            checks["database"] = "unreachable"
        if live is None:
            checks["kafka"] = "not used by this process"
        else:
            checks["kafka"] = "reachable" if live.kafka_ok() else "unreachable"
        ready = "unreachable" not in checks.values()
        body = {"status": "ok" if ready else "unavailable", "live": True, "ready": ready, **checks}
        return JSONResponse(body, status_code=200 if ready else 503)

    # async: answered in the event loop, never queued behind requests waiting for a worker thread
    @app.get("/healthz/live", responses={200: _ok(models.Liveness, "the process serves")})
    async def liveness() -> dict[str, bool]:
        return {"live": True}

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/live", include_in_schema=False)
    def live_page() -> HTMLResponse:
        return HTMLResponse(_LIVE_PAGE.read_text(encoding="utf-8"))

    @app.get(
        "/v1/live",
        responses={
            200: _ok(models.LiveView, "the live view"),
            **error_responses(*keyed, "live-view-unavailable", "too-many-requests"),
        },
    )
    def live_view(c: Annotated[Caller, Depends(live_viewer)]) -> Any:
        if live is None:
            raise ProblemError("live-view-unavailable", "the live view is not running in this API process")
        return live.board.view(time.time())

    # --- usage and statements ---

    @app.get(
        "/v1/usage",
        responses={
            200: _ok(list[models.UsageRow], "usage rows, sorted by their grouping", _CSV, headers=_LINK),
            **limited_negotiated,
        },
    )
    def usage(
        request: Request,
        c: Annotated[Caller, Depends(reader)],
        from_: Annotated[date, Query(alias="from")],
        to: Annotated[date, Query()],
        granularity: Annotated[Literal["hour", "day", "month"], Query()] = "day",
        group_by: Annotated[
            str,
            Query(pattern=_GROUP_BY_PATTERN, description=f"comma list of {', '.join(_GROUPINGS)}, each at most once"),
        ] = "source,direction",
        account: Account = None,
        format: Literal["json", "csv"] | None = None,
        limit: Annotated[int, Query(ge=1, le=USAGE_MAX_LIMIT, description="rows per page")] = USAGE_LIMIT,
        cursor: Annotated[str | None, Query(description='from the `Link: rel="next"` of the page before')] = None,
        accept: Annotated[str | None, Header()] = None,
    ) -> Any:
        if to <= from_:
            raise ProblemError(
                "invalid-request",
                "`to` must be after `from`",
                errors=[{"name": "to", "in": "query", "reason": "not after from"}],
            )
        if to - from_ > MAX_RANGE:
            raise ProblemError(
                "invalid-request",
                f"the range may span at most {MAX_RANGE.days} days",
                errors=[{"name": "to", "in": "query", "reason": f"more than {MAX_RANGE.days} days after from"}],
            )
        groups = group_by.split(",") if group_by else []
        repeated = sorted({g for g in groups if groups.count(g) > 1})
        if repeated:
            raise ProblemError(
                "invalid-request",
                f"group by each field at most once ({', '.join(repeated)} repeated)",
                errors=[{"name": "group_by", "in": "query", "reason": f"repeated: {', '.join(repeated)}"}],
            )
        time_key = {"hour": "hour", "day": "day", "month": None}[granularity]
        keys = ([time_key] if time_key else []) + groups
        after = None if cursor is None else decode_cursor("usage", cursor, (str,) * len(keys))
        rows = usage_report(
            engine, datetime.combine(from_, dtime(), UTC), datetime.combine(to, dtime(), UTC), keys, scope(c, account)
        )
        page, last = usage_page(rows, keys, after, limit)
        headers = {"Link": next_link(request, encode_cursor("usage", list(last)))} if last is not None else {}
        if (_MEDIA[format] if format else acceptable(accept, _USAGE_MEDIA)) == "text/csv":
            columns = [*keys, *QUANTITIES]
            csv = csv_text(columns, ([row.get(c) for c in columns] for row in page))
            return Response(csv, media_type="text/csv", headers=headers)
        return JSONResponse(page, headers=headers)

    @app.get(
        "/v1/statements/{period}",
        responses={
            200: _ok(models.Statement, "the statement (`.pdf` or format=pdf: PDF)", {**_CSV, **_PDF}),
            **limited_negotiated,
        },
    )
    def statements(
        period: Annotated[
            str, Path(pattern=_STATEMENT_PATTERN, description="a billing period, `YYYY-MM` (`YYYY-MM.pdf`: the PDF)")
        ],
        c: Annotated[Caller, Depends(reader)],
        account: Account = None,
        format: Literal["json", "csv", "pdf"] | None = None,
        accept: Annotated[str | None, Header()] = None,
    ) -> Any:
        if period.endswith(".pdf"):
            period, format = period[:-4], "pdf"
        try:
            start = parse_period(period)[0]
        except RunError as exc:
            raise ProblemError(
                "invalid-request", str(exc), errors=[{"name": "period", "in": "path", "reason": "not YYYY-MM"}]
            ) from None
        if start > datetime.now(UTC).date():
            # its statement would run from the period's start to now, before it
            raise ProblemError(
                "invalid-request",
                f"the period {period} has not begun",
                errors=[{"name": "period", "in": "path", "reason": "after the current month"}],
            )
        media = _MEDIA[format] if format else acceptable(accept, _STATEMENT_MEDIA)
        target = scope(c, account)
        if target is None:
            raise ProblemError(
                "invalid-request",
                "a finance key must name the account (?account=CODE)",
                errors=[{"name": "account", "in": "query", "reason": "required with a finance key"}],
            )
        try:
            if media == "application/pdf":  # rendered once per stored statement, then served as stored
                document = statements_store.pdf(target, period, render_statement_pdf)
                return Response(document, media_type="application/pdf")
            body = statements_store.get(target, period)
        except RunError:
            raise ProblemError("not-found", "no such account") from None
        if media == "text/csv":
            return Response(statement_csv(orjson.loads(body)), media_type="text/csv")
        return Response(body, media_type="application/json")

    # --- invoices ---

    @app.get(
        "/v1/invoices",
        responses={
            200: _ok(list[models.InvoiceSummary], "invoices by period, account and id", headers=_LINK),
            **reads,
        },
    )
    def invoices(
        request: Request,
        c: Annotated[Caller, Depends(caller)],
        period: Annotated[str | None, Query(pattern=PERIOD_PATTERN, description="a billing period, `YYYY-MM`")] = None,
        account: Account = None,
        limit: Annotated[int, Query(ge=1, le=INVOICES_MAX_LIMIT, description="invoices per page")] = INVOICES_LIMIT,
        cursor: Annotated[str | None, Query(description='from the `Link: rel="next"` of the page before')] = None,
    ) -> Any:
        start = None
        if period is not None:
            try:
                start = parse_period(period)[0]
            except RunError as exc:
                raise ProblemError(
                    "invalid-request", str(exc), errors=[{"name": "period", "in": "query", "reason": "not YYYY-MM"}]
                ) from None
        after = None
        if cursor is not None:
            key = decode_cursor("invoices", cursor, (str, str, int))
            try:
                after = (date.fromisoformat(key[0]), key[1], key[2])
            except ValueError:
                raise bad_cursor() from None
        rows = list_invoices(engine, start, scope(c, account), drafts=c.role == "finance", after=after, limit=limit + 1)
        headers = {}
        if len(rows) > limit:
            rows = rows[:limit]
            position = list_position(rows[-1])
            cursor = encode_cursor("invoices", [position[0].isoformat(), position[1], position[2]])
            headers["Link"] = next_link(request, cursor)
        return JSONResponse(rows, headers=headers)

    def _visible(c: Caller, ref: str) -> dict[str, Any]:
        try:
            doc = invoice_view(engine, ref)
        except InvoiceError:
            raise ProblemError("not-found", _NOT_FOUND) from None
        if not c.sees(doc["account"]["code"]) or (c.role == "partner" and doc["status"] == "draft"):
            raise ProblemError("not-found", _NOT_FOUND)  # the same answer as for an invoice that does not exist
        return doc

    Ref = Annotated[str, Path(description="the invoice's number, or draft-<id> (which keeps naming it once finalized)")]

    @app.get("/v1/invoices/{ref}", responses={200: _ok(models.Invoice, "the invoice"), **reads})
    def invoice(ref: Ref, c: Annotated[Caller, Depends(caller)]) -> Any:
        return _visible(c, ref)

    @app.get(
        "/v1/invoices/{ref}/pdf",
        response_class=Response,
        responses={200: {"description": "the invoice's PDF (stored at finalize)", "content": _PDF}, **limited_reads},
    )
    def invoice_document(ref: Ref, c: Annotated[Caller, Depends(reader)]) -> Response:
        doc = _visible(c, ref)
        try:
            pdf = invoice_pdf(engine, ref)
        except InvoiceError:
            raise ProblemError("not-found", f"invoice {ref} has no document: it is a draft") from None
        return Response(
            pdf,
            media_type="application/pdf",
            headers={"Content-Disposition": f'inline; filename="{doc["number"]}.pdf"'},
        )

    @app.post(
        "/v1/billing/runs",
        responses={
            200: _ok(list[models.BillingRunResult], "each account's invoice", headers=_REPLAYED),
            **error_responses(*keyed, "idempotency-key-in-use", "idempotency-key-reused", "too-many-requests"),
        },
    )
    def billing_run(
        request: Request,
        c: Annotated[Caller, Depends(biller)],
        print_: Annotated[str, Depends(request_print)],
        period: Period,
        finalize_drafts: bool = Query(False, alias="finalize"),
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        def work() -> Response:
            try:
                results = run_billing(
                    engine,
                    period,
                    finalize_drafts,
                    settings.invoice_number_prefix,
                    settings.issuer,
                    source_order=settings.source_order,
                )
            except RunError as exc:
                raise ProblemError(
                    "invalid-request", str(exc), errors=[{"name": "period", "in": "query", "reason": str(exc)}]
                ) from None
            metrics.billing_runs[str(finalize_drafts).lower()] += 1
            if live is not None:
                live.refresh_database()
            return _json([r.as_dict() for r in results])

        return once(request, c, idempotency_key, print_, work)

    @app.post(
        "/v1/invoices/{ref}/finalize",
        responses={
            200: _ok(models.Finalized, "the invoice, numbered and frozen", headers=_REPLAYED),
            **error_responses(
                *keyed,
                "not-found",
                "invoice-state-conflict",
                "idempotency-key-in-use",
                "idempotency-key-reused",
                "too-many-requests",
            ),
        },
    )
    def finalize_invoice(
        request: Request,
        ref: Ref,
        c: Annotated[Caller, Depends(biller)],
        print_: Annotated[str, Depends(request_print)],
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        def work() -> Response:
            try:
                done = finalize(engine, ref, settings.invoice_number_prefix, issuer=settings.issuer)
            except InvoiceNotFound:
                raise ProblemError("not-found", _NOT_FOUND) from None
            except InvoiceError as exc:
                raise ProblemError("invoice-state-conflict", str(exc)) from None
            return _json(
                {
                    "id": done.id,
                    "ref": done.ref,
                    "number": done.number,
                    "account": done.account_code,
                    "total": format_money(done.total, done.currency),
                }
            )

        return once(request, c, idempotency_key, print_, work)

    @app.post(
        "/v1/invoices/{ref}/void",
        responses={
            200: _ok(models.Voided, "the invoice, void", headers=_REPLAYED),
            **error_responses(
                *keyed,
                "not-found",
                "invoice-state-conflict",
                "idempotency-key-in-use",
                "idempotency-key-reused",
                "too-many-requests",
            ),
        },
    )
    def void_invoice(
        request: Request,
        ref: Ref,
        reason: str,
        c: Annotated[Caller, Depends(biller)],
        print_: Annotated[str, Depends(request_print)],
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        def work() -> Response:
            if not reason.strip():
                raise ProblemError(
                    "invalid-request",
                    "give a reason to void an invoice",
                    errors=[{"name": "reason", "in": "query", "reason": "empty"}],
                )
            try:
                number = void(engine, ref, reason)
            except InvoiceNotFound:
                raise ProblemError("not-found", _NOT_FOUND) from None
            except InvoiceError as exc:
                raise ProblemError("invoice-state-conflict", str(exc)) from None
            return _json({"ref": number, "number": number, "status": "void"})

        return once(request, c, idempotency_key, print_, work)

    # --- entitlements and Kafka credentials (billing.services.entitlements, .credentials) ---

    @app.get(
        "/v1/entitlements",
        responses={
            200: _ok(models.Entitlements, "the account's access, limits, caps and credentials"),
            **limited_reads,
        },
    )
    def entitlements(c: Annotated[Caller, Depends(anyone)], account: Account = None) -> Any:
        target = scope(c, account)
        if target is None:
            raise ProblemError(
                "invalid-request",
                "a finance or ops key must name the account (?account=CODE)",
                errors=[{"name": "account", "in": "query", "reason": "required with a finance or ops key"}],
            )
        try:
            return entitlement_view(engine, target, source_order=settings.source_order)
        except EntitlementNotFound:
            raise ProblemError("not-found", "no such account") from None

    def published() -> bool:
        return publish_credentials() if publish_credentials is not None else False

    def issued_doc(issued: IssuedCredential) -> dict[str, Any]:
        return {
            "id": issued.id,
            "account": issued.account,
            "username": issued.username,
            "principal": issued.principal,
            "password": issued.password,
            "mechanisms": [*MECHANISMS, "PLAIN"],
            "published": published(),
        }

    def without_password(body: bytes) -> bytes:
        doc = orjson.loads(body)
        return orjson.dumps({**doc, "password": None})

    def own_credential(c: Caller, credential_id: str) -> None:
        """404 unless the caller may act on the credential (a partner: its account's, active)."""
        views = list_credentials(engine, None if c.role != "partner" else c.account)
        if not any(v.id == credential_id for v in views):
            raise ProblemError("not-found", "no such active credential")

    CredentialId = Annotated[str, Path(pattern=CREDENTIAL_ID_PATTERN, description="the credential's id (cred_…)")]
    Name = Annotated[
        str | None,
        Query(
            pattern=CREDENTIAL_NAME_PATTERN, description="the name after <account>/ in the user name (default: random)"
        ),
    ]
    posted = error_responses(*keyed, "not-found", "idempotency-key-in-use", "idempotency-key-reused")

    @app.get(
        "/v1/credentials",
        responses={200: _ok(list[models.Credential], "the credentials, oldest first (never a secret)"), **reads},
    )
    def credentials(
        c: Annotated[Caller, Depends(any_caller)], account: Account = None, include_revoked: bool = False
    ) -> Any:
        views = list_credentials(engine, scope(c, account), include_revoked=include_revoked)
        return [credential_doc(v) for v in views]

    @app.post(
        "/v1/credentials",
        responses={200: _ok(models.IssuedCredential, "the credential and its password", headers=_REPLAYED), **posted},
    )
    def create_credential_(
        request: Request,
        c: Annotated[Caller, Depends(staff)],
        print_: Annotated[str, Depends(request_print)],
        account: Annotated[str, Query(pattern=CODE_PATTERN, description="the account its traffic is billed to")],
        name: Name = None,
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        def work() -> Response:
            try:
                issued = create_credential(engine, account, name)
            except CredentialNotFound:
                raise ProblemError("not-found", "no such account") from None
            except CredentialError as exc:
                raise ProblemError(
                    "invalid-request", str(exc), errors=[{"name": "name", "in": "query", "reason": str(exc)}]
                ) from None
            return _json(issued_doc(issued))

        return once(request, c, idempotency_key, print_, work, kept_as=without_password)

    @app.post(
        "/v1/credentials/{credential_id}/rotate",
        responses={200: _ok(models.IssuedCredential, "the new password", headers=_REPLAYED), **posted},
    )
    def rotate_credential_(
        request: Request,
        credential_id: CredentialId,
        c: Annotated[Caller, Depends(any_caller)],
        print_: Annotated[str, Depends(request_print)],
        overlap: Annotated[
            int, Query(ge=0, le=90 * 86400, description="seconds the old password stays valid (default 24 h)")
        ] = 86400,
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        def work() -> Response:
            own_credential(c, credential_id)
            try:
                issued = rotate_credential(engine, credential_id, timedelta(seconds=overlap))
            except CredentialError:
                raise ProblemError("not-found", "no such active credential") from None
            return _json(issued_doc(issued))

        return once(request, c, idempotency_key, print_, work, kept_as=without_password)

    @app.post(
        "/v1/credentials/{credential_id}/revoke",
        responses={200: _ok(models.Revoked, "revoked; gateways close its connections", headers=_REPLAYED), **posted},
    )
    def revoke_credential_(
        request: Request,
        credential_id: CredentialId,
        c: Annotated[Caller, Depends(staff)],
        print_: Annotated[str, Depends(request_print)],
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        def work() -> Response:
            try:
                revoke_credential(engine, credential_id)
            except CredentialError:
                raise ProblemError("not-found", "no such active credential") from None
            return _json({"id": credential_id, "revoked": True, "published": published()})

        return once(request, c, idempotency_key, print_, work)

    return app
