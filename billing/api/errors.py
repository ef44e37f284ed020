"""Every answer a problem when it is an error, and every answer counted and timed: the API's
middleware and exception handlers (:func:`install`)."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from sqlalchemy.exc import DataError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from billing.adapters.db import unreachable
from billing.api.deps import services_of
from billing.api.params import PATTERN_REASONS
from billing.api.problems import ProblemError, problem_response

__all__ = ["install"]

log = logging.getLogger("streamtoll.api")

_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


def _nul_params(request: Request) -> list[dict[str, str]]:
    bad = []
    if "\x00" in request.scope["path"]:
        bad.append({"name": "path", "in": "path", "reason": "contains a NUL character"})
    for k, v in request.query_params.multi_items():
        if "\x00" in k or "\x00" in v:
            bad.append({"name": k.replace("\x00", "\\0"), "in": "query", "reason": "contains a NUL character"})
    return bad


def _route(request: Request) -> str:
    return getattr(request.scope.get("route"), "path", "unmatched")


async def observe(request: Request, call_next: Any) -> Any:
    """Answers a request (an unexpected exception: a logged 500 problem), and counts and times it."""
    started = time.perf_counter()
    bad = _nul_params(request)
    if bad:
        response: Any = problem_response(
            request, "invalid-request", "parameters may not contain NUL characters", errors=bad
        )
    elif b"%2f" in request.scope.get("raw_path", b"").lower():
        # a '/' in a path parameter (no ref or period has one): routed as a separator once
        # decoded, it would reach another operation (GET /v1/invoices/x%2Ffinalize: a 405)
        response = problem_response(request, "not-found", "there is nothing at this path")
    else:
        try:
            response = await call_next(request)
        except Exception:
            log.exception("request failed", extra={"route": _route(request), "method": request.method})
            response = problem_response(request, "internal-error", "the request failed unexpectedly; it is logged")
    method = request.method if request.method in _METHODS else "other"
    services_of(request).metrics.observe(_route(request), method, response.status_code, time.perf_counter() - started)
    return response


async def problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemError)
    return problem_response(request, exc.kind.slug, exc.detail, headers=exc.headers, errors=exc.errors)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = "there is nothing at this path"
    return problem_response(request, None, detail, status=exc.status_code, headers=exc.headers)


async def invalid(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for e in exc.errors():
        loc = [str(part) for part in e.get("loc", ())]
        reason = e["msg"]
        if e.get("type") == "string_pattern_mismatch":
            reason = PATTERN_REASONS.get(e.get("ctx", {}).get("pattern"), reason)
        errors.append({"name": ".".join(loc[1:]) or loc[0], "in": loc[0] if loc else "query", "reason": reason})
    names = ", ".join(dict.fromkeys(e["name"] for e in errors))
    return problem_response(request, "invalid-request", f"invalid parameters: {names}", errors=errors)


async def bad_value(request: Request, exc: Exception) -> Response:
    # a value no column can hold (e.g. a NUL character): the caller's mistake, not a 500
    return problem_response(request, "invalid-request", "a parameter holds a value that is not allowed")


async def database_down(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OperationalError)
    if unreachable(exc):
        return problem_response(request, "database-unavailable", "the database is unavailable; try again shortly")
    # the database refused the statement (too many columns, a cancelled query …): a bug
    log.exception("request failed", extra={"route": _route(request), "method": request.method}, exc_info=exc)
    return problem_response(request, "internal-error", "the request failed unexpectedly; it is logged")


def install(app: FastAPI) -> None:
    """The middleware and the exception handlers, in the order the app has always had them."""
    app.middleware("http")(observe)
    app.add_exception_handler(ProblemError, problem)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(DataError, bad_value)
    app.add_exception_handler(OperationalError, database_down)
