"""Every error the HTTP API answers is an RFC 9457 problem (``application/problem+json``).

A problem has a stable ``type`` (one of :data:`PROBLEMS`, an absolute URI that identifies the
kind of error; clients branch on it, never on ``detail``), a ``title`` (the same for every
problem of that type), the HTTP ``status``, a ``detail`` sentence about this occurrence and the
``instance`` (the request's path). A 422 for invalid input lists the parameters in ``errors``.
``docs/api.md`` lists the types; a test checks that list against this one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

__all__ = [
    "MEDIA_TYPE",
    "PROBLEMS",
    "TYPE_BASE",
    "InvalidParam",
    "Problem",
    "ProblemError",
    "ProblemType",
    "error_responses",
    "problem_response",
]

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://streamtoll.dev/problems/"


@dataclass(frozen=True)
class ProblemType:
    slug: str
    status: int
    title: str
    meaning: str  # for people: docs/api.md and the OpenAPI descriptions

    @property
    def uri(self) -> str:
        return TYPE_BASE + self.slug


PROBLEMS: dict[str, ProblemType] = {
    p.slug: p
    for p in (
        ProblemType(
            "unauthorized",
            401,
            "Missing or invalid API key",
            "No usable key: none sent, malformed, unknown, wrong or revoked. Send "
            "`Authorization: Bearer stk_…`. The answer carries `WWW-Authenticate: Bearer`.",
        ),
        ProblemType(
            "forbidden",
            403,
            "Not allowed for this key",
            "The key is valid but its role may not do this: a partner key on a finance endpoint, an ops "
            "key anywhere but `/v1/live`, entitlements and credentials, a partner key on `/v1/live` or issuing "
            "or revoking a credential.",
        ),
        ProblemType(
            "not-found",
            404,
            "Not found",
            "No such resource — or one the key may not see (another account's invoice, a draft for a "
            "partner): the answer is the same, so it never tells which. Also an unknown path, and the PDF "
            "of a draft.",
        ),
        ProblemType("method-not-allowed", 405, "Method not allowed", "The path exists but not with this HTTP method."),
        ProblemType(
            "not-acceptable",
            406,
            "No acceptable media type",
            "The `Accept` header accepts none of the media types this endpoint answers with (the "
            "`detail` names them; `q=0` excludes one). Accept one of them, or ask with `format=`.",
        ),
        ProblemType(
            "invoice-state-conflict",
            409,
            "The invoice's status does not allow this",
            "Finalizing an invoice that is already finalized or void, voiding one that is a draft or "
            "already void. Look at the invoice (`GET /v1/invoices/{ref}`) before trying again.",
        ),
        ProblemType(
            "product-conflict",
            409,
            "The product or the request's state does not allow this",
            "Subscribing to a deprecated product, approving or rejecting a request that is no longer "
            "requested. Look at the product or the requests (`GET /v1/product-requests`) first.",
        ),
        ProblemType(
            "idempotency-key-in-use",
            409,
            "A request with this Idempotency-Key is still running",
            "Another request with the same `Idempotency-Key` (same key holder) has not finished. Retry "
            "later with the same key: you get its answer once it is done.",
        ),
        ProblemType(
            "idempotency-key-reused",
            422,
            "This Idempotency-Key was used for another request",
            "The `Idempotency-Key` was already used (within its 24 h) for a request with another method, "
            "path, query or body. Use a new key for a new request.",
        ),
        ProblemType(
            "invalid-request",
            422,
            "Invalid request",
            "A parameter is missing or invalid (a bad date, a period not spelled `YYYY-MM` in ASCII "
            "digits, an unknown or repeated grouping, a range over the limit, a bad cursor, a NUL "
            "character …); `errors` lists each one with `name`, `in` and `reason` where they are known.",
        ),
        ProblemType(
            "too-many-failed-authentications",
            429,
            "Too many failed authentications",
            "Too many requests with a bad key from this client address within a minute; every request "
            "from it is refused for `Retry-After` seconds.",
        ),
        ProblemType(
            "too-many-requests",
            429,
            "Too many requests for this key",
            "This API key is over its limit on the expensive endpoints (statements, usage, invoice "
            "PDFs, the live view, entitlements, billing runs, finalize, void): too many requests per second, or too "
            "many running at once. Nothing was done; retry after `Retry-After` seconds. The limits "
            "depend on the key's role (`STREAMTOLL_API_LIMITS_*`).",
        ),
        ProblemType(
            "database-unavailable",
            503,
            "The database is unavailable",
            "PostgreSQL cannot be reached (no connection, or the connection was lost). Retry shortly (a "
            "POST with the same `Idempotency-Key`). A statement the database refused is a 500, not this.",
        ),
        ProblemType(
            "live-view-unavailable",
            503,
            "The live view is not running",
            "This API process runs no live feed (no `STREAMTOLL_KAFKA_BOOTSTRAP`); `/v1/live` has no data.",
        ),
        ProblemType(
            "internal-error",
            500,
            "Internal error",
            "A bug: the request failed unexpectedly. It is logged and counted; retrying may not help.",
        ),
    )
}

# the type an HTTP error of this status gets when the code raising it names none
_BY_STATUS = {
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    422: "invalid-request",
}


class InvalidParam(BaseModel):
    """One invalid parameter of a 422 ``invalid-request`` problem."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(description="the parameter's name (a header's in lower case)")
    in_: str = Field(alias="in", description="query, path, header or body")
    reason: str


class Problem(BaseModel):
    """An error answer (RFC 9457, ``application/problem+json``)."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(description="identifies the kind of problem; one of the types in docs/api.md")
    title: str = Field(description="a short summary, the same for every problem of this type")
    status: int = Field(description="the HTTP status code")
    detail: str = Field(description="what went wrong in this request, one sentence")
    instance: str = Field(description="the path of the request that failed")
    errors: list[InvalidParam] | None = Field(None, description="the invalid parameters (422 invalid-request)")


class ProblemError(Exception):
    """Raised by the API's code to answer with a problem (handled in ``billing.api.errors``)."""

    def __init__(
        self,
        slug: str,
        detail: str,
        headers: dict[str, str] | None = None,
        errors: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.kind = PROBLEMS[slug]
        self.detail = detail
        self.headers = headers or {}
        self.errors = errors


def problem_response(
    request: Request,
    slug: str | None,
    detail: str,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
    errors: list[dict[str, str]] | None = None,
) -> Response:
    """The problem answer for ``request``: a known type by ``slug``, else (``slug`` None) the type
    for ``status``, else ``about:blank`` with the status's reason phrase as title (RFC 9457 4.2)."""
    slug = slug or _BY_STATUS.get(status or 500)
    if slug is not None:
        kind = PROBLEMS[slug]
        body: dict[str, Any] = {"type": kind.uri, "title": kind.title, "status": kind.status}
    else:
        code = status or 500
        try:
            title = HTTPStatus(code).phrase
        except ValueError:
            title = "Error"
        body = {"type": "about:blank", "title": title, "status": code}
    body["detail"] = detail
    # the path as a URI reference (percent-encoded again, like the request's own)
    body["instance"] = quote(request.scope.get("root_path", "") + request.scope["path"], safe="/:@!$&'()*+,;=-._~")
    if errors is not None:
        body["errors"] = errors
    return Response(orjson.dumps(body), status_code=body["status"], headers=headers, media_type=MEDIA_TYPE)


def error_responses(*slugs: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entries of an operation's error answers (problem+json), one per
    status of the problem types in ``slugs``."""
    by_status: dict[int, list[ProblemType]] = {}
    for slug in slugs:
        by_status.setdefault(PROBLEMS[slug].status, []).append(PROBLEMS[slug])
    out: dict[int | str, dict[str, Any]] = {}
    for status, kinds in sorted(by_status.items()):
        types = "; ".join(f"`{TYPE_BASE}{p.slug}`: {p.title}" for p in kinds)
        entry: dict[str, Any] = {
            "description": f"{HTTPStatus(status).phrase} (problem type {types})",
            "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        if status == 401:
            entry["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "`Bearer`"}}
        if status == 429:
            entry["headers"] = {
                "Retry-After": {"schema": {"type": "integer"}, "description": "seconds until requests are taken"}
            }
        out[status] = entry
    return out
