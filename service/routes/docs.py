"""The OpenAPI schema (``GET /openapi.json``) and its Swagger page (``GET /docs``), served as routes so that the
API key guards them like every other read."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

__all__ = ["build_router"]


def build_router(app: FastAPI) -> APIRouter:
    """``/openapi.json`` (the app's own schema) and ``/docs``; neither appears in the schema itself."""
    router = APIRouter(include_in_schema=False)

    @router.get("/openapi.json")
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @router.get("/docs")
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="hsrl API")

    return router
