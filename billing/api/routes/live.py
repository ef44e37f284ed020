"""``/v1/live``: the live view (an ops or finance key; it names every account)."""

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from billing.api import models
from billing.api.deps import AppServices, live_viewer
from billing.api.params import keyed, ok
from billing.api.problems import ProblemError, error_responses
from billing.services.keys import Caller

__all__ = ["router"]

router = APIRouter()


@router.get(
    "/v1/live",
    responses={
        200: ok(models.LiveView, "the live view"),
        **error_responses(*keyed, "live-view-unavailable", "too-many-requests"),
    },
)
def live_view(c: Annotated[Caller, Depends(live_viewer)], s: AppServices) -> Any:
    if s.live is None:
        raise ProblemError("live-view-unavailable", "the live view is not running in this API process")
    return s.live.board.view(time.time())
