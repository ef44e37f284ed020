"""``/v1/usage``: usage rows by time and grouping, JSON or CSV, paginated by cursor."""

from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, Response

from billing.adapters.spreadsheet import csv_text
from billing.api import models
from billing.api.deps import AppServices, reader, scope
from billing.api.pagination import decode_cursor, encode_cursor, next_link
from billing.api.params import (
    CSV,
    GROUP_BY_PATTERN,
    GROUPINGS,
    LINK,
    MEDIA,
    Account,
    acceptable,
    limited_negotiated,
    ok,
)
from billing.api.problems import ProblemError
from billing.services.keys import Caller
from billing.services.usage import QUANTITIES, usage_page, usage_report

__all__ = ["MAX_RANGE", "router"]

MAX_RANGE = timedelta(days=400)
USAGE_LIMIT, USAGE_MAX_LIMIT = 10_000, 100_000
_USAGE_MEDIA = ("application/json", "text/csv")

router = APIRouter()


@router.get(
    "/v1/usage",
    responses={
        200: ok(list[models.UsageRow], "usage rows, sorted by their grouping", CSV, headers=LINK),
        **limited_negotiated,
    },
)
def usage(
    request: Request,
    c: Annotated[Caller, Depends(reader)],
    s: AppServices,
    from_: Annotated[date, Query(alias="from")],
    to: Annotated[date, Query()],
    granularity: Annotated[Literal["hour", "day", "month"], Query()] = "day",
    group_by: Annotated[
        str,
        Query(pattern=GROUP_BY_PATTERN, description=f"comma list of {', '.join(GROUPINGS)}, each at most once"),
    ] = "source,direction",
    account: Account = None,
    format: Literal["json", "csv"] | None = None,
    limit: Annotated[int, Query(ge=1, le=USAGE_MAX_LIMIT, description="rows per page")] = USAGE_LIMIT,
    cursor: Annotated[str | None, Query(description='from the `Link: rel="next"` of the page before')] = None,
    accept: Annotated[str | None, Header()] = None,
) -> Any:
    if to <= from_:
        raise ProblemError(
            "invalid-request",
            "`to` must be after `from`",
            errors=[{"name": "to", "in": "query", "reason": "not after from"}],
        )
    if to - from_ > MAX_RANGE:
        raise ProblemError(
            "invalid-request",
            f"the range may span at most {MAX_RANGE.days} days",
            errors=[{"name": "to", "in": "query", "reason": f"more than {MAX_RANGE.days} days after from"}],
        )
    groups = group_by.split(",") if group_by else []
    repeated = sorted({g for g in groups if groups.count(g) > 1})
    if repeated:
        raise ProblemError(
            "invalid-request",
            f"group by each field at most once ({', '.join(repeated)} repeated)",
            errors=[{"name": "group_by", "in": "query", "reason": f"repeated: {', '.join(repeated)}"}],
        )
    time_key = {"hour": "hour", "day": "day", "month": None}[granularity]
    keys = ([time_key] if time_key else []) + groups
    after = None if cursor is None else decode_cursor("usage", cursor, (str,) * len(keys))
    rows = usage_report(
        s.engine, datetime.combine(from_, dtime(), UTC), datetime.combine(to, dtime(), UTC), keys, scope(c, account)
    )
    page, last = usage_page(rows, keys, after, limit)
    headers = {"Link": next_link(request, encode_cursor("usage", list(last)))} if last is not None else {}
    if (MEDIA[format] if format else acceptable(accept, _USAGE_MEDIA)) == "text/csv":
        columns = [*keys, *QUANTITIES]
        csv = csv_text(columns, ([row.get(c) for c in columns] for row in page))
        return Response(csv, media_type="text/csv", headers=headers)
    return JSONResponse(page, headers=headers)
