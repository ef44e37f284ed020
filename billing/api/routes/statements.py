"""``/v1/statements/{period}``: a month's statement, JSON, CSV or PDF (from the statement store)."""

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Header, Path
from fastapi.responses import Response

from billing.adapters.render import render_statement_pdf
from billing.api import models
from billing.api.deps import AppServices, reader, scope
from billing.api.params import CSV, MEDIA, PDF, STATEMENT_PATTERN, Account, acceptable, limited_negotiated, ok
from billing.api.problems import ProblemError
from billing.errors import RunError
from billing.services.billing_run import parse_period
from billing.services.keys import Caller
from billing.services.statements import statement_csv

__all__ = ["router"]

_STATEMENT_MEDIA = ("application/json", "text/csv", "application/pdf")

router = APIRouter()


@router.get(
    "/v1/statements/{period}",
    responses={
        200: ok(models.Statement, "the statement (`.pdf` or format=pdf: PDF)", {**CSV, **PDF}),
        **limited_negotiated,
    },
)
def statements(
    period: Annotated[
        str, Path(pattern=STATEMENT_PATTERN, description="a billing period, `YYYY-MM` (`YYYY-MM.pdf`: the PDF)")
    ],
    c: Annotated[Caller, Depends(reader)],
    s: AppServices,
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
    media = MEDIA[format] if format else acceptable(accept, _STATEMENT_MEDIA)
    target = scope(c, account)
    if target is None:
        raise ProblemError(
            "invalid-request",
            "a finance key must name the account (?account=CODE)",
            errors=[{"name": "account", "in": "query", "reason": "required with a finance key"}],
        )
    try:
        if media == "application/pdf":  # rendered once per stored statement, then served as stored
            document = s.statements.pdf(target, period, render_statement_pdf)
            return Response(document, media_type="application/pdf")
        body = s.statements.get(target, period)
    except RunError:
        raise ProblemError("not-found", "no such account") from None
    if media == "text/csv":
        return Response(statement_csv(orjson.loads(body)), media_type="text/csv")
    return Response(body, media_type="application/json")
