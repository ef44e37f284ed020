"""Prepaid credits and grants (``billing.services.grants``): a finance key adds a grant to an
account (idempotent with ``Idempotency-Key``) and lists grants; a partner reads its own grants
and its balance, finance any account's."""

from datetime import date
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response

from billing.api import models
from billing.api.deps import AppServices, Idempotency, caller, finance, scope
from billing.api.params import REPLAYED, Account, json_response, keyed, ok, reads
from billing.api.problems import ProblemError, error_responses
from billing.domain.accounts import CODE_PATTERN
from billing.domain.units import METERS
from billing.errors import AccountNotFound, GrantError
from billing.services.grants import account_balance, add_grant, list_grants
from billing.services.keys import Caller

__all__ = ["router"]

AMOUNT_PATTERN = r"^[0-9]{1,15}(\.[0-9]{1,6})?$"
_METER = "|".join(METERS)
_UNIT = r"GB|GiB|TB|TiB|1|thousand|million"

router = APIRouter()


@router.post(
    "/v1/accounts/{account}/grants",
    responses={
        200: ok(models.PrepaidGrant, "the grant, added", headers=REPLAYED),
        **error_responses(*keyed, "not-found", "idempotency-key-in-use", "idempotency-key-reused"),
    },
)
def add_account_grant(
    account: Annotated[str, Path(pattern=CODE_PATTERN, description="the account's code")],
    reason: Annotated[str, Query(min_length=1, max_length=500, pattern=r"^[^\x00-\x1f\x7f]*$", description="why")],
    c: Annotated[Caller, Depends(finance)],
    idem: Idempotency,
    s: AppServices,
    amount: Annotated[
        str | None, Query(pattern=AMOUNT_PATTERN, description="money in the account's currency; or units")
    ] = None,
    units: Annotated[str | None, Query(pattern=AMOUNT_PATTERN, description="units of meter in unit")] = None,
    meter: Annotated[str | None, Query(pattern=rf"^({_METER})$", description="with units: the meter")] = None,
    unit: Annotated[str | None, Query(pattern=rf"^({_UNIT})$", description="with units: the unit (GB …)")] = None,
    priority: Annotated[int, Query(ge=0, le=1000, description="lower burns first")] = 10,
    effective: Annotated[date | None, Query(description="first day in force (default today)")] = None,
    expires: Annotated[date | None, Query(description="first day no longer in force")] = None,
    recurring: Annotated[Literal["monthly"] | None, Query(description="the amount anew each period")] = None,
    rollover_limit: Annotated[str | None, Query(pattern=AMOUNT_PATTERN, description="carried at most")] = None,
    name: Annotated[str, Query(max_length=100, pattern=r"^[^\x00-\x1f\x7f]*$", description="shown on invoices")] = "",
) -> Response:
    def work() -> Response:
        try:
            added = add_grant(
                s.engine,
                account,
                amount=None if amount is None else Decimal(amount),
                units=None if units is None else Decimal(units),
                meter=meter,
                unit=unit,
                priority=priority,
                effective_on=effective,
                expires_on=expires,
                recurrence=recurring,
                rollover_limit=None if rollover_limit is None else Decimal(rollover_limit),
                name=name,
                reason=reason,
                created_by=f"key:{c.key_id}",
            )
        except AccountNotFound:
            raise ProblemError("not-found", "no such account") from None
        except GrantError as exc:
            raise ProblemError("invalid-request", str(exc), errors=[_named(str(exc), amount is None)]) from None
        return json_response(added)

    return idem.run(c, work)


_NAMES = (
    ("rollover", "rollover_limit"),
    ("expire", "expires"),
    ("priority", "priority"),
    ("recurrence", "recurring"),
    ("reason", "reason"),
    ("meter", "meter"),
    ("unit", "unit"),
)


def _named(reason: str, units: bool) -> dict[str, str]:
    """The parameter a grant's refusal is most about (its sentence may name several)."""
    name = next((n for word, n in _NAMES if word in reason), "units" if units else "amount")
    return {"name": name, "in": "query", "reason": reason}


@router.get(
    "/v1/grants", responses={200: ok(list[models.PrepaidGrant], "grants in the order they were added"), **reads}
)
def grants(c: Annotated[Caller, Depends(caller)], s: AppServices, account: Account = None) -> Any:
    return list_grants(s.engine, scope(c, account))


@router.get("/v1/balance", responses={200: ok(models.Balance, "the account's prepaid balance"), **reads})
def balance(
    c: Annotated[Caller, Depends(caller)],
    s: AppServices,
    account: Account = None,
    on: Annotated[date | None, Query(description="the balance on this day (default today, UTC)")] = None,
) -> Any:
    code = scope(c, account)
    if code is None:
        raise ProblemError(
            "invalid-request",
            "finance reads one account's balance: give account",
            errors=[{"name": "account", "in": "query", "reason": "required for a finance key"}],
        )
    try:
        return account_balance(s.engine, code, on)
    except AccountNotFound:
        raise ProblemError("not-found", "no such account") from None
