"""Amendments (usage corrections with an audit trail) for finance: who, when, why, the range and
the amounts moved per account and period. Read-only: corrections are imported with
``streamtoll usage import``."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path

from billing.api import models
from billing.api.deps import AppServices, finance
from billing.api.params import ok, reads
from billing.api.problems import ProblemError
from billing.errors import AmendmentNotFound
from billing.services.amendments import amendment_doc, amendment_view, list_amendments
from billing.services.keys import Caller

__all__ = ["router"]

AmendmentId = Annotated[int, Path(ge=1, le=2**62, description="the amendment's id")]

router = APIRouter()


@router.get("/v1/amendments", responses={200: ok(list[models.Amendment], "every amendment, oldest first"), **reads})
def amendments(c: Annotated[Caller, Depends(finance)], s: AppServices) -> Any:
    return [amendment_doc(a) for a in list_amendments(s.engine)]


@router.get("/v1/amendments/{amendment_id}", responses={200: ok(models.Amendment, "the amendment"), **reads})
def amendment(amendment_id: AmendmentId, c: Annotated[Caller, Depends(finance)], s: AppServices) -> Any:
    try:
        return amendment_view(s.engine, amendment_id)
    except AmendmentNotFound:
        raise ProblemError("not-found", "no such amendment") from None
