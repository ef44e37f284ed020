"""Health, metrics and the live page: no key, no account shown."""

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from billing.api import models
from billing.api.deps import AppServices
from billing.api.params import ok

__all__ = ["router"]

_LIVE_PAGE = files("billing") / "templates" / "live" / "index.html"

router = APIRouter()


@router.get(
    "/healthz",
    responses={
        200: ok(models.Health, "the database (and the broker, with a live view) are reachable"),
        503: {"model": models.Health, "description": "something is unreachable: the body says what"},
    },
)
def healthz(s: AppServices) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        with s.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "reachable"
    except SQLAlchemyError:
        checks["database"] = "unreachable"
    if s.live is None:
        checks["kafka"] = "not used by this process"
    else:
        checks["kafka"] = "reachable" if s.live.kafka_ok() else "unreachable"
    ready = "unreachable" not in checks.values()
    body = {"status": "ok" if ready else "unavailable", "live": True, "ready": ready, **checks}
    return JSONResponse(body, status_code=200 if ready else 503)


# async: answered in the event loop, never queued behind requests waiting for a worker thread
@router.get("/healthz/live", responses={200: ok(models.Liveness, "the process serves")})
async def liveness() -> dict[str, bool]:
    return {"live": True}


@router.get("/metrics", include_in_schema=False)
def prometheus(s: AppServices) -> Response:
    return Response(generate_latest(s.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/live", include_in_schema=False)
def live_page() -> HTMLResponse:
    return HTMLResponse(_LIVE_PAGE.read_text(encoding="utf-8"))
