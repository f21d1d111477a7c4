"""One error body for every failure: ``{"error": {"message", "type", "code"}}`` (OpenAI's shape).

Routes raise :class:`ServiceError`; the handlers installed by :func:`install_error_handlers` turn it, FastAPI's
validation errors, Starlette's 404/405 and any unexpected exception into that body, so a client never sees a
bare 500 or a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["CatchAll", "ServiceError", "error_body", "error_response", "install_error_handlers"]

log = logging.getLogger("hsrl.service")

#: The error ``type`` for each status, following OpenAI's names where it has one.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "payload_too_large_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
}


class ServiceError(Exception):
    """An error with its HTTP status, a machine-readable ``code`` and a message meant for the client."""

    def __init__(
        self, status: int, message: str, code: str, *, headers: dict[str, str] | None = None, type_: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.type = type_ or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or {}


def error_body(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code}}


def error_response(
    status_code: int, message: str, code: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """The error body with ``extra`` top-level fields (e.g. /health's details) beside ``error``."""
    default = "server_error" if status_code >= 500 else "invalid_request_error"
    body = error_body(message, _TYPES.get(status_code, default), code)
    body.update(extra)
    return JSONResponse(body, status_code=status_code, headers=headers)


def _describe_validation(error: RequestValidationError) -> str:
    """One readable line from pydantic's error list, e.g. ``body.input: Input should be a valid string``."""
    parts = []
    for item in error.errors()[:5]:
        location = ".".join(str(part) for part in item.get("loc", ()) if part != "body") or "body"
        parts.append(f"{location}: {item.get('msg', 'invalid value')}")
    more = len(error.errors()) - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    body = error_body(exc.message, exc.type, exc.code)
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, _describe_validation(exc), "invalid_request")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    messages = {404: f"no route {request.url.path}", 405: f"method {request.method} not allowed on {request.url.path}"}
    message = messages.get(exc.status_code, str(exc.detail))
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, message, code, headers=getattr(exc, "headers", None))


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # The traceback goes to the server log, never to the client.
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal server error", "internal_error")


class CatchAll:
    """Pure ASGI middleware: an unexpected exception becomes the JSON 500 and the connection stays usable.

    Starlette's own last-resort handler sends the 500 and then re-raises, which makes the server drop the
    keep-alive connection; catching here, below it, answers and ends the request normally.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as error:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"), exc_info=error)
            if started:  # too late for a clean answer: let the server close the connection
                raise
            response = error_response(500, "internal server error", "internal_error")
            await response(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """Route every error the app can raise to the one JSON error body."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
