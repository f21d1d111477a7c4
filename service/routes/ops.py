"""Operations: ``GET /health`` (the engine's real state) and ``GET /metrics`` (Prometheus), open to probes and
scrapers; ``GET /info``, behind the API key."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from hsrl_service.errors import error_response
from hsrl_service.metrics import CONTENT_TYPE
from hsrl_service.routes.common import ERRORS, json_response, service_of

router = APIRouter(tags=["operations"])  # always open: probes and scrapers carry no key
guarded_router = APIRouter(tags=["operations"])  # behind the API key like every other route


@router.get("/health", responses={503: {"description": "A model worker is dead or wedged."}})
async def health(request: Request) -> Response:
    """200 when every model worker is alive and no batch has run past the wedge timeout; 503 otherwise."""
    ok, details = service_of(request).health()
    if ok:
        return json_response({"status": "ok", **details})
    reasons = "; ".join(f"{name}: {state['reason']}" for name, state in details["models"].items() if not state["ok"])
    return error_response(503, f"unhealthy: {reasons}", "engine_unavailable", status="unavailable", **details)


@guarded_router.get("/info", responses={401: ERRORS[401]})
async def info(request: Request) -> Response:
    """Models, dimensions, indexes, limits, batching settings and version."""
    return json_response(service_of(request).info())


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    return PlainTextResponse(service_of(request).metrics.render(), media_type=CONTENT_TYPE)
