# No `from __future__ import annotations` here: FastAPI reads the parameter types below from the
# annotations of the endpoints that use them.
"""What the routers share: the input patterns (declared in OpenAPI, checked before anything else
reads a value: one spelling per value, so only the normal form reaches the caches and the
database), the common parameter types, the OpenAPI entries of answers, and content negotiation."""

from typing import Annotated, Any

import orjson
from fastapi import Header, Query
from fastapi.responses import Response

from billing.api.negotiation import negotiate
from billing.api.problems import ProblemError, error_responses
from billing.domain.accounts import CODE_PATTERN
from billing.services.billing_run import PERIOD_PATTERN
from billing.services.credentials import NAME
from billing.services.usage import GROUPS

__all__ = [
    "CREDENTIAL_ID_PATTERN",
    "CREDENTIAL_NAME_PATTERN",
    "CSV",
    "GROUPINGS",
    "GROUP_BY_PATTERN",
    "LINK",
    "MEDIA",
    "PATTERN_REASONS",
    "PDF",
    "REPLAYED",
    "STATEMENT_PATTERN",
    "Account",
    "IdempotencyKey",
    "Period",
    "acceptable",
    "json_response",
    "keyed",
    "limited_negotiated",
    "limited_reads",
    "ok",
    "reads",
]

STATEMENT_PATTERN = PERIOD_PATTERN.removesuffix("$") + r"(\.pdf)?$"
GROUPINGS = GROUPS[:-2]  # hour and day come from granularity
_GROUP = "(" + "|".join(GROUPINGS) + ")"
GROUP_BY_PATTERN = rf"^({_GROUP}(,{_GROUP})*)?$"
CREDENTIAL_NAME_PATTERN = NAME.pattern
CREDENTIAL_ID_PATTERN = r"^cred_[0-9a-f]{1,64}$"
# what a 422 says of a value that does not match its pattern
PATTERN_REASONS = {
    PERIOD_PATTERN: "not a billing period YYYY-MM (ASCII digits, 1970-01 to 9998-12)",
    STATEMENT_PATTERN: "not a billing period YYYY-MM (ASCII digits, 1970-01 to 9998-12), or one with .pdf",
    CODE_PATTERN: "not an account code (lowercase letters, digits, - and _)",
    CREDENTIAL_NAME_PATTERN: "not a credential name (1–63 lowercase letters, digits, '.', '_' or '-')",
    CREDENTIAL_ID_PATTERN: "not a credential id (cred_ and hex digits)",
    GROUP_BY_PATTERN: f"not a comma list (no spaces) of {', '.join(GROUPINGS)}",
}
Period = Annotated[str, Query(pattern=PERIOD_PATTERN, description="a billing period, `YYYY-MM`")]
Account = Annotated[str | None, Query(pattern=CODE_PATTERN, description="an account's code")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="a unique string per request (e.g. a UUID): a retry with the same key gets the first "
        "answer instead of doing the work again; kept 24 h",
    ),
]
MEDIA = {"json": "application/json", "csv": "text/csv", "pdf": "application/pdf"}  # format=…

LINK = {
    "Link": {"description": 'the next page: `<…>; rel="next"` (absent on the last page)', "schema": {"type": "string"}}
}
REPLAYED = {
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored answer to an earlier request with the same Idempotency-Key",
        "schema": {"type": "string"},
    }
}
CSV = {"text/csv": {"schema": {"type": "string"}}}
PDF = {"application/pdf": {"schema": {"type": "string", "format": "binary"}}}

# the problems every operation with a key can answer
keyed = ("unauthorized", "forbidden", "invalid-request", "too-many-failed-authentications", "database-unavailable")
reads = error_responses(*keyed, "not-found")
limited_reads = error_responses(*keyed, "not-found", "too-many-requests")
# Accept picks the media type
limited_negotiated = error_responses(*keyed, "not-found", "not-acceptable", "too-many-requests")


def ok(model: type[Any], description: str, extra: dict[str, Any] | None = None, **more: Any) -> dict[str, Any]:
    """The OpenAPI entry of a 200 answer with ``model`` as its JSON body (and other media types)."""
    return {"model": model, "description": description, **({"content": extra} if extra else {}), **more}


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def acceptable(accept: str | None, offers: tuple[str, ...]) -> str:
    """The media type ``Accept`` prefers among ``offers`` (none acceptable: 406)."""
    media = negotiate(accept, offers)
    if media is None:
        raise ProblemError("not-acceptable", f"this endpoint answers with {', '.join(offers)} only")
    return media
