"""Credit notes: issue one against a finalized invoice (a finance key, idempotent), list, read,
their PDFs (a partner: its own account's)."""

from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response

from billing.api import models
from billing.api.deps import AppServices, Idempotency, Services, biller, caller, reader, scope
from billing.api.params import PDF, REPLAYED, Account, json_response, keyed, limited_reads, ok, reads
from billing.api.problems import ProblemError, error_responses
from billing.errors import CreditNoteError, InvoiceError, InvoiceNotFound
from billing.services.credit_notes import create_credit_note, credit_note_pdf, credit_note_view, list_credit_notes
from billing.services.keys import Caller

__all__ = ["router"]

_NOT_FOUND = "no such credit note"
Number = Annotated[str, Path(pattern=r"^CN-[0-9]{4}-[0-9]{4,9}$", description="the credit note's number")]
InvoiceRef = Annotated[str, Path(description="the finalized invoice's number")]
AMOUNT_PATTERN = r"^[0-9]{1,15}(\.[0-9]{1,4})?$"

router = APIRouter()


@router.post(
    "/v1/invoices/{ref}/credit-notes",
    responses={
        200: ok(models.CreditNote, "the credit note, issued", headers=REPLAYED),
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
def issue_credit_note(
    ref: InvoiceRef,
    reason: Annotated[Literal["duplicate", "error", "goodwill", "order_change", "other"], Query()],
    c: Annotated[Caller, Depends(biller)],
    idem: Idempotency,
    s: AppServices,
    amount: Annotated[str | None, Query(pattern=AMOUNT_PATTERN, description="tax included; or full=true")] = None,
    full: Annotated[bool, Query(description="credit everything not yet credited")] = False,
    text: Annotated[
        str | None,
        Query(max_length=500, pattern=r"^[^\x00-\x1f\x7f]*$", description="why, in words (required for other)"),
    ] = None,
    settle: Annotated[Literal["credit", "refunded"], Query(description="credit: to the next invoices")] = "credit",
) -> Response:
    def work() -> Response:
        if (amount is None) == (not full):
            raise ProblemError(
                "invalid-request",
                "give either amount or full=true",
                errors=[{"name": "amount", "in": "query", "reason": "give amount or full=true, not both"}],
            )
        try:
            note = create_credit_note(
                s.engine,
                ref,
                amount=None if amount is None else Decimal(amount),
                full=full,
                reason=reason,
                reason_text=text,
                settlement=settle,
            )
        except InvoiceNotFound:
            raise ProblemError("not-found", "no such invoice") from None
        except (CreditNoteError, InvoiceError) as exc:
            raise ProblemError("invoice-state-conflict", str(exc)) from None
        return json_response(note)

    return idem.run(c, work)


@router.get("/v1/credit-notes", responses={200: ok(list[models.CreditNote], "credit notes in issue order"), **reads})
def credit_notes(c: Annotated[Caller, Depends(caller)], s: AppServices, account: Account = None) -> Any:
    return list_credit_notes(s.engine, scope(c, account))


def _visible(s: Services, c: Caller, number: str) -> dict[str, Any]:
    try:
        doc = credit_note_view(s.engine, number)
    except CreditNoteError:
        raise ProblemError("not-found", _NOT_FOUND) from None
    if not c.sees(doc["account"]):
        raise ProblemError("not-found", _NOT_FOUND)  # the same answer as for one that does not exist
    return doc


@router.get("/v1/credit-notes/{number}", responses={200: ok(models.CreditNote, "the credit note"), **reads})
def credit_note(number: Number, c: Annotated[Caller, Depends(caller)], s: AppServices) -> Any:
    return _visible(s, c, number)


@router.get(
    "/v1/credit-notes/{number}/pdf",
    response_class=Response,
    responses={200: {"description": "the credit note's PDF (stored when issued)", "content": PDF}, **limited_reads},
)
def credit_note_document(number: Number, c: Annotated[Caller, Depends(reader)], s: AppServices) -> Response:
    _visible(s, c, number)
    return Response(
        credit_note_pdf(s.engine, number),
        media_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="{number}.pdf"'},
    )
