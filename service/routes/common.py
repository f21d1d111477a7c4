"""Helpers every route module uses: the service from the request, JSON responses, documented error codes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from pydantic_core import to_json

from hsrl_service.runtime import Service
from hsrl_service.schemas import ErrorBody

__all__ = ["CONFLICT", "ERRORS", "json_response", "service_of", "until_disconnected"]

#: Error responses documented on every route (they all carry the one error body).
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        400: "The body could not be parsed (malformed multipart).",
        401: "Missing or wrong API key (when a key is configured).",
        404: "Unknown model, index or id.",
        413: "Request body over the byte limit, or an image over the pixel limit.",
        422: "Invalid request: it breaks a rule of this schema (types, lengths, limits, exactly-one-of) or "
        "names something unusable (a wrong vector dimension, an unreadable image, a model of another modality).",
        429: "Queue full; retry after `Retry-After` seconds.",
        503: "The model worker is not running.",
    }.items()
}


CONFLICT: dict[str, Any] = {"model": ErrorBody, "description": "An id is already in the index, or given twice."}


def service_of(request: Request) -> Service:
    return request.app.state.service


def json_response(payload: dict[str, Any], status_code: int = 200) -> Response:
    # pydantic-core's serializer is several times faster than json.dumps on thousands of floats.
    return Response(to_json(payload), status_code=status_code, media_type="application/json")


def until_disconnected(request: Request) -> Callable[[], Awaitable[None]]:
    """A coroutine factory that returns once the client of ``request`` has disconnected.

    The body has been read by then, so the next ASGI message the server delivers is ``http.disconnect``: it
    comes when the client closes the connection (or once the response is sent, when nobody waits any more).
    """

    async def wait() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return wait
