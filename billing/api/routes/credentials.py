"""The Kafka credentials the gateways accept (``billing.services.credentials``): list, issue,
rotate, revoke; each change published to the gateways."""

from datetime import timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response

from billing.api import models
from billing.api.deps import AppServices, Idempotency, Services, any_caller, scope, staff
from billing.api.params import (
    CREDENTIAL_ID_PATTERN,
    CREDENTIAL_NAME_PATTERN,
    REPLAYED,
    Account,
    json_response,
    keyed,
    ok,
    reads,
)
from billing.api.problems import ProblemError, error_responses
from billing.domain.accounts import CODE_PATTERN
from billing.errors import CredentialError, CredentialNotFound
from billing.services.credentials import (
    IssuedCredential,
    create_credential,
    credential_doc,
    list_credentials,
    revoke_credential,
    rotate_credential,
)
from billing.services.keys import Caller
from metering.credentials import MECHANISMS

__all__ = ["router"]

CredentialId = Annotated[str, Path(pattern=CREDENTIAL_ID_PATTERN, description="the credential's id (cred_…)")]
Name = Annotated[
    str | None,
    Query(pattern=CREDENTIAL_NAME_PATTERN, description="the name after <account>/ in the user name (default: random)"),
]
_POSTED = error_responses(*keyed, "not-found", "idempotency-key-in-use", "idempotency-key-reused")

router = APIRouter()


def _issued_doc(s: Services, issued: IssuedCredential) -> dict[str, Any]:
    return {
        "id": issued.id,
        "account": issued.account,
        "username": issued.username,
        "principal": issued.principal,
        "password": issued.password,
        "mechanisms": [*MECHANISMS, "PLAIN"],
        "published": s.published(),
    }


def _without_password(body: bytes) -> bytes:
    doc = orjson.loads(body)
    return orjson.dumps({**doc, "password": None})


def _own_credential(s: Services, c: Caller, credential_id: str) -> None:
    """404 unless the caller may act on the credential (a partner: its account's, active)."""
    views = list_credentials(s.engine, None if c.role != "partner" else c.account)
    if not any(v.id == credential_id for v in views):
        raise ProblemError("not-found", "no such active credential")


@router.get(
    "/v1/credentials",
    responses={200: ok(list[models.Credential], "the credentials, oldest first (never a secret)"), **reads},
)
def credentials(
    c: Annotated[Caller, Depends(any_caller)], s: AppServices, account: Account = None, include_revoked: bool = False
) -> Any:
    views = list_credentials(s.engine, scope(c, account), include_revoked=include_revoked)
    return [credential_doc(v) for v in views]


@router.post(
    "/v1/credentials",
    responses={200: ok(models.IssuedCredential, "the credential and its password", headers=REPLAYED), **_POSTED},
)
def create_credential_(
    c: Annotated[Caller, Depends(staff)],
    idem: Idempotency,
    s: AppServices,
    account: Annotated[str, Query(pattern=CODE_PATTERN, description="the account its traffic is billed to")],
    name: Name = None,
) -> Response:
    def work() -> Response:
        try:
            issued = create_credential(s.engine, account, name)
        except CredentialNotFound:
            raise ProblemError("not-found", "no such account") from None
        except CredentialError as exc:
            raise ProblemError(
                "invalid-request", str(exc), errors=[{"name": "name", "in": "query", "reason": str(exc)}]
            ) from None
        return json_response(_issued_doc(s, issued))

    return idem.run(c, work, kept_as=_without_password)


@router.post(
    "/v1/credentials/{credential_id}/rotate",
    responses={200: ok(models.IssuedCredential, "the new password", headers=REPLAYED), **_POSTED},
)
def rotate_credential_(
    credential_id: CredentialId,
    c: Annotated[Caller, Depends(any_caller)],
    idem: Idempotency,
    s: AppServices,
    overlap: Annotated[
        int, Query(ge=0, le=90 * 86400, description="seconds the old password stays valid (default 24 h)")
    ] = 86400,
) -> Response:
    def work() -> Response:
        _own_credential(s, c, credential_id)
        try:
            issued = rotate_credential(s.engine, credential_id, timedelta(seconds=overlap))
        except CredentialError:
            raise ProblemError("not-found", "no such active credential") from None
        return json_response(_issued_doc(s, issued))

    return idem.run(c, work, kept_as=_without_password)


@router.post(
    "/v1/credentials/{credential_id}/revoke",
    responses={200: ok(models.Revoked, "revoked; gateways close its connections", headers=REPLAYED), **_POSTED},
)
def revoke_credential_(
    credential_id: CredentialId,
    c: Annotated[Caller, Depends(staff)],
    idem: Idempotency,
    s: AppServices,
) -> Response:
    def work() -> Response:
        try:
            revoke_credential(s.engine, credential_id)
        except CredentialError:
            raise ProblemError("not-found", "no such active credential") from None
        return json_response({"id": credential_id, "revoked": True, "published": s.published()})

    return idem.run(c, work)
