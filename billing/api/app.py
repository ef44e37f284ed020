# No `from __future__ import annotations` here: FastAPI reads the dependencies in the annotations,
# and the closures of create_app must be resolvable when each endpoint is defined.
"""The partner and finance HTTP API (FastAPI; OpenAPI at ``/openapi.json``).

Auth: ``Authorization: Bearer stk_…``. A partner key sees only its own account; another
account's invoice is a 404, exactly like one that does not exist. A finance key sees every
account and may run billing, finalize and void. Missing, malformed, wrong or revoked keys are
401 with no detail, and failed attempts are limited per client address. Input is validated by
type (bad dates, an unknown group, a range over the limit → 422 with a message); queries are
parameterized. While the database is unreachable, requests answer 503 with a clear body.
"""

import time
from collections import defaultdict, deque
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from billing.adapters.render import render_statement_pdf
from billing.services.billing_run import BillingError, parse_period, run_billing
from billing.services.invoices import InvoiceError, finalize, invoice_pdf, invoice_view, list_invoices, void
from billing.services.keys import Caller, authenticate
from billing.services.statements import statement, statement_csv
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


def create_app(engine: Engine, settings: BillingSettings | None = None, auth_limit: int = 20) -> FastAPI:
    settings = settings or BillingSettings()
    app = FastAPI(title="streamtoll", version="0.1.0", description="Usage statements and invoices for Kafka traffic.")
    limiter = _AuthLimiter(limit=auth_limit)

    @app.exception_handler(OperationalError)
    async def database_down(request: Request, exc: OperationalError) -> JSONResponse:
        return JSONResponse({"detail": "the database is unavailable; try again shortly"}, status_code=503)

    def caller(request: Request, authorization: Annotated[str | None, Header()] = None) -> Caller:
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
    def healthz() -> dict[str, str]:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"status": "ok", "database": "reachable"}

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
            doc = statement(engine, target, period, now=datetime.now(UTC))
        except BillingError:
            raise HTTPException(404, "no such account") from None
        if format == "csv" or (format is None and accept and "text/csv" in accept):
            return Response(statement_csv(doc), media_type="text/csv")
        if format == "pdf" or (format is None and accept and "application/pdf" in accept):
            return Response(render_statement_pdf(doc), media_type="application/pdf")
        return doc

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
            results = run_billing(engine, period, finalize_drafts, settings.invoice_number_prefix, settings.issuer)
        except BillingError as exc:
            raise HTTPException(422, str(exc)) from None
        return [r.as_dict() for r in results]

    @app.post("/v1/invoices/{invoice_id}/finalize")
    def finalize_invoice(invoice_id: int, c: Annotated[Caller, Depends(finance)]) -> Any:
        try:
            done = finalize(engine, invoice_id, settings.invoice_number_prefix, issuer=settings.issuer)
        except InvoiceError as exc:
            raise HTTPException(409, str(exc)) from None
        return {"id": done.id, "number": done.number, "account": done.account_code, "total": str(done.total)}

    @app.post("/v1/invoices/{number}/void")
    def void_invoice(number: str, reason: str, c: Annotated[Caller, Depends(finance)]) -> Any:
        try:
            void(engine, number, reason)
        except InvoiceError as exc:
            raise HTTPException(409, str(exc)) from None
        return {"number": number, "status": "void"}

    return app
