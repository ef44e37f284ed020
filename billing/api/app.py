# No `from __future__ import annotations` here: FastAPI reads the dependencies in the annotations,
# and the closures of create_app must be resolvable when each endpoint is defined.
"""The partner and finance HTTP API (FastAPI; OpenAPI at ``/openapi.json``).

Auth: ``Authorization: Bearer stk_…``. A partner key sees only its own account; another
account's invoice is a 404, exactly like one that does not exist. A finance key sees every
account and may run billing, finalize and void. Missing, malformed, wrong or revoked keys are
401 with no detail, and failed attempts are limited per client address. Input is validated by
type (bad dates, an unknown group, a range over the limit → 422 with a message); queries are
parameterized. While the database is unreachable, requests answer 503 with a clear body.

Ops: ``/live`` is a self-contained page (no data in it, so no key to load it; it asks for an ops
or finance key and calls ``/v1/live``). ``/v1/live`` needs an ops or finance key: it names every
account. An ops key reads nothing else. ``/metrics`` (Prometheus) and ``/healthz`` need no key
and show no account: counts, lag and reachability only. ``/healthz`` answers 200 when the
database and the broker are reachable and 503 (with which one is not) otherwise — the readiness
probe; ``/healthz/live`` answers 200 while the process serves — the liveness probe.
"""

import time
from collections import defaultdict, deque
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from importlib.resources import files
from typing import Annotated, Any, Literal

import orjson
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DataError, OperationalError, SQLAlchemyError

from billing.adapters.metrics import ApiCollector
from billing.adapters.render import render_statement_pdf
from billing.domain.money import format_money
from billing.services.billing_run import BillingError, parse_period, run_billing
from billing.services.invoices import InvoiceError, finalize, invoice_pdf, invoice_view, list_invoices, void
from billing.services.keys import Caller, authenticate
from billing.services.live import LiveFeed
from billing.services.statements import StatementStore, statement_csv
from billing.services.usage import GROUPS, usage_report
from billing.settings import BillingSettings

__all__ = ["create_app"]

MAX_RANGE = timedelta(days=400)
_NOT_FOUND = "no such invoice"


class _AuthLimiter:
    """At most ``limit`` failed authentications per client address per ``window`` seconds."""

    def __init__(self, limit: int = 20, window: float = 60.0) -> None:
        self.limit, self.window = limit, window
        self.failures: dict[str, deque[float]] = defaultdict(deque)

    def blocked(self, who: str) -> bool:
        q = self.failures[who]
        now = time.monotonic()
        while q and now - q[0] > self.window:
            q.popleft()
        return len(q) >= self.limit

    def failed(self, who: str) -> None:
        self.failures[who].append(time.monotonic())


_LIVE_PAGE = files("billing") / "templates" / "live" / "index.html"


def create_app(
    engine: Engine, settings: BillingSettings | None = None, auth_limit: int = 20, live: LiveFeed | None = None
) -> FastAPI:
    """The HTTP app; ``live`` is the running live feed (None: ``/v1/live`` answers 503)."""
    settings = settings or BillingSettings()
    app = FastAPI(title="streamtoll", version="0.1.0", description="Usage statements and invoices for Kafka traffic.")
    limiter = _AuthLimiter(limit=auth_limit)
    statements_store = StatementStore(engine, settings.statement_max_staleness, settings.source_order)
    app.state.statements = statements_store
    metrics = ApiCollector(engine, live)
    registry = CollectorRegistry()
    registry.register(metrics)

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Any) -> Any:
        if "\x00" in request.url.path or any("\x00" in v for v in request.query_params.values()):
            response: Any = JSONResponse({"detail": "parameters may not contain NUL characters"}, status_code=422)
        else:
            response = await call_next(request)
        route = request.scope.get("route")
        metrics.requests[(getattr(route, "path", "unmatched"), str(response.status_code))] += 1
        return response

    @app.exception_handler(DataError)
    async def bad_value(request: Request, exc: DataError) -> JSONResponse:
        # a value no column can hold (e.g. a NUL character): the caller's mistake, not a 500
        return JSONResponse({"detail": "a parameter holds a value that is not allowed"}, status_code=422)

    @app.exception_handler(OperationalError)
    async def database_down(request: Request, exc: OperationalError) -> JSONResponse:
        return JSONResponse({"detail": "the database is unavailable; try again shortly"}, status_code=503)

    def any_caller(request: Request, authorization: Annotated[str | None, Header()] = None) -> Caller:
        who = request.client.host if request.client else "?"
        if limiter.blocked(who):
            raise HTTPException(429, "too many failed authentications; wait a minute")
        found = None
        if authorization and authorization.startswith("Bearer "):
            found = authenticate(engine, authorization[7:].strip())
        if found is None:
            limiter.failed(who)
            raise HTTPException(401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"})
        return found

    def caller(c: Annotated[Caller, Depends(any_caller)]) -> Caller:
        if c.role == "ops":
            raise HTTPException(403, "an ops key reads only /v1/live")
        return c

    def live_reader(c: Annotated[Caller, Depends(any_caller)]) -> Caller:
        if c.role not in ("ops", "finance"):
            raise HTTPException(403, "the live view needs an ops or finance key")
        return c

    def finance(c: Annotated[Caller, Depends(caller)]) -> Caller:
        if c.role != "finance":
            raise HTTPException(403, "this needs a finance key")
        return c

    def scope(c: Caller, account: str | None) -> str | None:
        """The account a request may read: a partner's own, whatever it asks."""
        if c.role == "finance":
            return account
        if account is not None and account != c.account:
            raise HTTPException(404, "no such account")
        return c.account

    @app.get("/healthz")
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

    @app.get("/healthz/live")
    def liveness() -> dict[str, bool]:
        return {"live": True}

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/live", include_in_schema=False)
    def live_page() -> HTMLResponse:
        return HTMLResponse(_LIVE_PAGE.read_text(encoding="utf-8"))

    @app.get("/v1/live")
    def live_view(c: Annotated[Caller, Depends(live_reader)]) -> Any:
        if live is None:
            raise HTTPException(503, "the live view is not running in this API process")
        return live.board.view(time.time())

    @app.get("/v1/usage")
    def usage(
        c: Annotated[Caller, Depends(caller)],
        from_: Annotated[date, Query(alias="from")],
        to: Annotated[date, Query()],
        granularity: Annotated[Literal["hour", "day", "month"], Query()] = "day",
        group_by: Annotated[str, Query(description=f"comma list of {', '.join(GROUPS)}")] = "source,direction",
        account: str | None = None,
        format: Literal["json", "csv"] | None = None,
        accept: Annotated[str | None, Header()] = None,
    ) -> Any:
        if to <= from_:
            raise HTTPException(422, "`to` must be after `from`")
        if to - from_ > MAX_RANGE:
            raise HTTPException(422, f"the range may span at most {MAX_RANGE.days} days")
        groups = [g.strip() for g in group_by.split(",") if g.strip()]
        unknown = [g for g in groups if g not in GROUPS or g in ("hour", "day")]
        if unknown:
            raise HTTPException(422, f"cannot group by {', '.join(unknown)}; use granularity for time")
        time_key = {"hour": "hour", "day": "day", "month": None}[granularity]
        rows = usage_report(
            engine,
            datetime.combine(from_, dtime(), UTC),
            datetime.combine(to, dtime(), UTC),
            ([time_key] if time_key else []) + groups,
            scope(c, account),
        )
        if format == "csv" or (format is None and accept and "text/csv" in accept):
            import pandas as pd

            return Response(pd.DataFrame(rows).to_csv(index=False), media_type="text/csv")
        return rows

    @app.get("/v1/statements/{period}")
    def statements(
        period: str,
        c: Annotated[Caller, Depends(caller)],
        account: str | None = None,
        format: Literal["json", "csv", "pdf"] | None = None,
        accept: Annotated[str | None, Header()] = None,
    ) -> Any:
        if period.endswith(".pdf"):
            period, format = period[:-4], "pdf"
        try:
            parse_period(period)
        except BillingError as exc:
            raise HTTPException(422, str(exc)) from None
        target = scope(c, account)
        if target is None:
            raise HTTPException(422, "a finance key must name the account (?account=CODE)")
        try:
            body = statements_store.get(target, period)
        except BillingError:
            raise HTTPException(404, "no such account") from None
        if format == "csv" or (format is None and accept and "text/csv" in accept):
            return Response(statement_csv(orjson.loads(body)), media_type="text/csv")
        if format == "pdf" or (format is None and accept and "application/pdf" in accept):
            return Response(render_statement_pdf(orjson.loads(body)), media_type="application/pdf")
        return Response(body, media_type="application/json")

    @app.get("/v1/invoices")
    def invoices(c: Annotated[Caller, Depends(caller)], period: str | None = None, account: str | None = None) -> Any:
        start = None
        if period is not None:
            try:
                start = parse_period(period)[0]
            except BillingError as exc:
                raise HTTPException(422, str(exc)) from None
        rows = list_invoices(engine, start, scope(c, account))
        return rows if c.role == "finance" else [r for r in rows if r["status"] != "draft"]

    def _visible(c: Caller, number: str) -> dict[str, Any]:
        try:
            doc = invoice_view(engine, number)
        except InvoiceError:
            raise HTTPException(404, _NOT_FOUND) from None
        if not c.sees(doc["account"]["code"]) or (c.role == "partner" and doc["status"] == "draft"):
            raise HTTPException(404, _NOT_FOUND)  # the same answer as for an invoice that does not exist
        return doc

    @app.get("/v1/invoices/{number}")
    def invoice(number: str, c: Annotated[Caller, Depends(caller)]) -> Any:
        return _visible(c, number)

    @app.get("/v1/invoices/{number}/pdf")
    def invoice_document(number: str, c: Annotated[Caller, Depends(caller)]) -> Response:
        _visible(c, number)
        try:
            pdf = invoice_pdf(engine, number)
        except InvoiceError:
            raise HTTPException(404, _NOT_FOUND) from None
        return Response(
            pdf, media_type="application/pdf", headers={"Content-Disposition": f'inline; filename="{number}.pdf"'}
        )

    @app.post("/v1/billing/runs")
    def billing_run(
        c: Annotated[Caller, Depends(finance)], period: str, finalize_drafts: bool = Query(False, alias="finalize")
    ) -> Any:
        try:
            results = run_billing(
                engine,
                period,
                finalize_drafts,
                settings.invoice_number_prefix,
                settings.issuer,
                source_order=settings.source_order,
            )
        except BillingError as exc:
            raise HTTPException(422, str(exc)) from None
        metrics.billing_runs[str(finalize_drafts).lower()] += 1
        if live is not None:
            live.refresh_database()
        return [r.as_dict() for r in results]

    @app.post("/v1/invoices/{invoice_id}/finalize")
    def finalize_invoice(invoice_id: int, c: Annotated[Caller, Depends(finance)]) -> Any:
        try:
            done = finalize(engine, invoice_id, settings.invoice_number_prefix, issuer=settings.issuer)
        except InvoiceError as exc:
            raise HTTPException(409, str(exc)) from None
        total = format_money(done.total, done.currency)
        return {"id": done.id, "number": done.number, "account": done.account_code, "total": total}

    @app.post("/v1/invoices/{number}/void")
    def void_invoice(number: str, reason: str, c: Annotated[Caller, Depends(finance)]) -> Any:
        try:
            void(engine, number, reason)
        except InvoiceError as exc:
            raise HTTPException(409, str(exc)) from None
        return {"number": number, "status": "void"}

    return app
