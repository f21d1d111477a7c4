"""``GET /ui``: one static search page (no front-end build), and ``GET /ui/thumbnail/{index}/{id}``, the image
file an index's metadata names for that id.

The page asks ``/info`` for the indexes, sends a typed text to ``POST /search`` and shows the nearest images as
thumbnails with their scores; clicking one sends that image back to ``/search``. Thumbnails are only the files
an index's own metadata points to (its ``path``), so the route serves nothing the operator did not index.
"""

from __future__ import annotations

import mimetypes
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from hsrl_service.errors import ServiceError
from hsrl_service.routes.common import service_of

__all__ = ["router"]

IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/tiff"})

router = APIRouter(tags=["ui"])


def _page() -> str:
    return resources.files("hsrl_service").joinpath("static/search.html").read_text(encoding="utf-8")


@router.get("/", include_in_schema=False)
async def root() -> Response:
    return RedirectResponse("/ui")


@router.get("/ui", response_class=HTMLResponse, include_in_schema=False)
async def search_page() -> Response:
    """The search page."""
    return HTMLResponse(_page())


# Part of the page, like /ui, so not in the API's schema (its contract test would have no index ids to reach it).
@router.get("/ui/thumbnail/{name}/{id:int}", include_in_schema=False)
async def thumbnail(name: str, id: int, request: Request) -> Response:
    """The image file at the ``path`` the index's metadata holds for ``id``."""
    served = service_of(request).index(name)

    def lookup() -> dict | None:
        with served.lock:  # FAISS and the metadata are not safe against a concurrent write
            return served.index.get_metadata([id])[0]

    metadata = await run_in_threadpool(lookup)
    path = (metadata or {}).get("path")
    if not path:
        raise ServiceError(404, f"id {id} of index {served.name!r} has no image path in its metadata", "no_image")
    file = Path(str(path))
    kind = mimetypes.guess_type(file.name)[0]
    if kind not in IMAGE_TYPES or not file.is_file():
        raise ServiceError(404, f"the image of id {id} in index {served.name!r} is not readable", "no_image")
    return FileResponse(file, media_type=kind)
