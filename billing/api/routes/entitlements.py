"""``/v1/entitlements``: an account's access, limits, caps and credentials
(``billing.services.entitlements``)."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from billing.api import models
from billing.api.deps import AppServices, anyone, scope
from billing.api.params import Account, limited_reads, ok
from billing.api.problems import ProblemError
from billing.errors import EntitlementNotFound
from billing.services.entitlements import entitlement_view
from billing.services.keys import Caller

__all__ = ["router"]

router = APIRouter()


@router.get(
    "/v1/entitlements",
    responses={
        200: ok(models.Entitlements, "the account's access, limits, caps and credentials"),
        **limited_reads,
    },
)
def entitlements(c: Annotated[Caller, Depends(anyone)], s: AppServices, account: Account = None) -> Any:
    target = scope(c, account)
    if target is None:
        raise ProblemError(
            "invalid-request",
            "a finance or ops key must name the account (?account=CODE)",
            errors=[{"name": "account", "in": "query", "reason": "required with a finance or ops key"}],
        )
    try:
        return entitlement_view(s.engine, target, source_order=s.settings.source_order)
    except EntitlementNotFound:
        raise ProblemError("not-found", "no such account") from None
