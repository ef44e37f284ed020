"""Cursors and ``Link`` headers of the paginated endpoints (``GET /v1/invoices``, ``GET /v1/usage``).

A cursor is opaque to clients: base64url of a small JSON document naming the endpoint (a cursor
of one endpoint is refused by the other) and the sort key of the last row served. The next page
starts strictly after that key (keyset pagination), so rows added between pages are never served
twice and never push an existing row out of the walk. The next page's address is given in a
``Link: <…>; rel="next"`` header (RFC 8288) — bodies (a JSON array, CSV) stay what they were.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.requests import Request

from billing.api.problems import ProblemError

__all__ = ["bad_cursor", "decode_cursor", "encode_cursor", "next_link"]


def encode_cursor(kind: str, key: list[Any]) -> str:
    raw = orjson.dumps({"v": 1, "k": kind, "after": key})
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def bad_cursor() -> ProblemError:
    return ProblemError(
        "invalid-request",
        "the cursor is not one this endpoint gave for these parameters; start again without it",
        errors=[{"name": "cursor", "in": "query", "reason": "not a cursor of this listing"}],
    )


def decode_cursor(kind: str, cursor: str, types: tuple[type, ...]) -> list[Any]:
    """The sort key in ``cursor``, checked to be one value of each of ``types``; a 422 problem
    when it is not one of this endpoint's cursors (or was made for another grouping)."""
    try:
        doc = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        key = doc["after"]
        valid = (
            doc.get("v") == 1
            and doc.get("k") == kind
            and isinstance(key, list)
            and len(key) == len(types)
            and all(type(v) is t for v, t in zip(key, types, strict=True))
        )
    except (ValueError, TypeError, KeyError, AttributeError, binascii.Error):
        valid = False
    if not valid:
        raise bad_cursor()
    return list(key)


def next_link(request: Request, cursor: str) -> str:
    """``<path?query&cursor=…>; rel="next"``: the request's own parameters with the new cursor (a
    relative reference, resolved against the request's address, so it is right behind a proxy)."""
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"]
    params.append(("cursor", cursor))
    return f'<{request.url.path}?{urlencode(params)}>; rel="next"'
