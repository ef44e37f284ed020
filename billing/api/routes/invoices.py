"""Invoices: list, read, their PDFs; billing runs, finalize and void (a finance key)."""

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response

from billing.api import models
from billing.api.deps import AppServices, Idempotency, Services, biller, caller, reader, scope
from billing.api.pagination import bad_cursor, decode_cursor, encode_cursor, next_link
from billing.api.params import (
    LINK,
    PDF,
    REPLAYED,
    Account,
    Period,
    json_response,
    keyed,
    limited_reads,
    ok,
    reads,
)
from billing.api.problems import ProblemError, error_responses
from billing.domain.money import format_money
from billing.errors import InvoiceError, InvoiceNotFound, RunError
from billing.services.billing_run import PERIOD_PATTERN, parse_period, run_billing
from billing.services.invoices import finalize, invoice_pdf, invoice_view, list_invoices, list_position, void
from billing.services.keys import Caller

__all__ = ["router"]

INVOICES_LIMIT, INVOICES_MAX_LIMIT = 100, 1000
_NOT_FOUND = "no such invoice"

Ref = Annotated[str, Path(description="the invoice's number, or draft-<id> (which keeps naming it once finalized)")]

router = APIRouter()


@router.get(
    "/v1/invoices",
    responses={
        200: ok(list[models.InvoiceSummary], "invoices by period, account and id", headers=LINK),
        **reads,
    },
)
def invoices(
    request: Request,
    c: Annotated[Caller, Depends(caller)],
    s: AppServices,
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
    rows = list_invoices(s.engine, start, scope(c, account), drafts=c.role == "finance", after=after, limit=limit + 1)
    headers = {}
    if len(rows) > limit:
        rows = rows[:limit]
        position = list_position(rows[-1])
        cursor = encode_cursor("invoices", [position[0].isoformat(), position[1], position[2]])
        headers["Link"] = next_link(request, cursor)
    return JSONResponse(rows, headers=headers)


def _visible(s: Services, c: Caller, ref: str) -> dict[str, Any]:
    try:
        doc = invoice_view(s.engine, ref)
    except InvoiceError:
        raise ProblemError("not-found", _NOT_FOUND) from None
    if not c.sees(doc["account"]["code"]) or (c.role == "partner" and doc["status"] == "draft"):
        raise ProblemError("not-found", _NOT_FOUND)  # the same answer as for an invoice that does not exist
    return doc


@router.get("/v1/invoices/{ref}", responses={200: ok(models.Invoice, "the invoice"), **reads})
def invoice(ref: Ref, c: Annotated[Caller, Depends(caller)], s: AppServices) -> Any:
    return _visible(s, c, ref)


@router.get(
    "/v1/invoices/{ref}/pdf",
    response_class=Response,
    responses={200: {"description": "the invoice's PDF (stored at finalize)", "content": PDF}, **limited_reads},
)
def invoice_document(ref: Ref, c: Annotated[Caller, Depends(reader)], s: AppServices) -> Response:
    doc = _visible(s, c, ref)
    try:
        pdf = invoice_pdf(s.engine, ref)
    except InvoiceError:
        raise ProblemError("not-found", f"invoice {ref} has no document: it is a draft") from None
    return Response(
        pdf,
        media_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="{doc["number"]}.pdf"'},
    )


@router.post(
    "/v1/billing/runs",
    responses={
        200: ok(list[models.BillingRunResult], "each account's invoice", headers=REPLAYED),
        **error_responses(*keyed, "idempotency-key-in-use", "idempotency-key-reused", "too-many-requests"),
    },
)
def billing_run(
    c: Annotated[Caller, Depends(biller)],
    idem: Idempotency,
    s: AppServices,
    period: Period,
    finalize_drafts: bool = Query(False, alias="finalize"),
) -> Response:
    def work() -> Response:
        try:
            results = run_billing(
                s.engine,
                period,
                finalize_drafts,
                s.settings.invoice_number_prefix,
                s.settings.issuer,
                source_order=s.settings.source_order,
            )
        except RunError as exc:
            raise ProblemError(
                "invalid-request", str(exc), errors=[{"name": "period", "in": "query", "reason": str(exc)}]
            ) from None
        s.metrics.billing_runs[str(finalize_drafts).lower()] += 1
        if s.live is not None:
            s.live.refresh_database()
        return json_response([r.as_dict() for r in results])

    return idem.run(c, work)


_CHANGES = error_responses(
    *keyed,
    "not-found",
    "invoice-state-conflict",
    "idempotency-key-in-use",
    "idempotency-key-reused",
    "too-many-requests",
)


@router.post(
    "/v1/invoices/{ref}/finalize",
    responses={200: ok(models.Finalized, "the invoice, numbered and frozen", headers=REPLAYED), **_CHANGES},
)
def finalize_invoice(
    ref: Ref,
    c: Annotated[Caller, Depends(biller)],
    idem: Idempotency,
    s: AppServices,
) -> Response:
    def work() -> Response:
        try:
            done = finalize(s.engine, ref, s.settings.invoice_number_prefix, issuer=s.settings.issuer)
        except InvoiceNotFound:
            raise ProblemError("not-found", _NOT_FOUND) from None
        except InvoiceError as exc:
            raise ProblemError("invoice-state-conflict", str(exc)) from None
        return json_response(
            {
                "id": done.id,
                "ref": done.ref,
                "number": done.number,
                "account": done.account_code,
                "total": format_money(done.total, done.currency),
            }
        )

    return idem.run(c, work)


@router.post(
    "/v1/invoices/{ref}/void",
    responses={200: ok(models.Voided, "the invoice, void", headers=REPLAYED), **_CHANGES},
)
def void_invoice(
    ref: Ref,
    reason: str,
    c: Annotated[Caller, Depends(biller)],
    idem: Idempotency,
    s: AppServices,
) -> Response:
    def work() -> Response:
        if not reason.strip():
            raise ProblemError(
                "invalid-request",
                "give a reason to void an invoice",
                errors=[{"name": "reason", "in": "query", "reason": "empty"}],
            )
        try:
            number = void(s.engine, ref, reason)
        except InvoiceNotFound:
            raise ProblemError("not-found", _NOT_FOUND) from None
        except InvoiceError as exc:
            raise ProblemError("invoice-state-conflict", str(exc)) from None
        return json_response({"ref": number, "number": number, "status": "void"})

    return idem.run(c, work)
