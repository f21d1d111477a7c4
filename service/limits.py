"""Request limits: the numbers, and the ASGI middleware that enforces the payload size before parsing.

The body is read (at most ``max_request_bytes`` of it) before FastAPI parses anything, so an oversized request
costs a bounded amount of memory and ends in 413 with the JSON error body, whether or not it announced its
``Content-Length``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hsrl_service.errors import error_body

__all__ = ["BodySizeLimit", "Limits"]


@dataclass(frozen=True)
class Limits:
    """What one request may ask for.

    Attributes:
        max_request_bytes: the whole HTTP body (JSON or multipart).
        max_items: inputs per embeddings request, vectors or texts per index add.
        max_text_chars: characters per text.
        max_image_pixels: width x height per image (checked from the header, before decoding).
        max_k: neighbours per search.
    """

    max_request_bytes: int = 16 * 1024 * 1024
    max_items: int = 2048
    max_text_chars: int = 32_768
    max_image_pixels: int = 4096 * 4096
    max_k: int = 1000

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if int(value) < 1:
                raise ValueError(f"limit {name} must be >= 1, got {value}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def _send_413(send: Send, limit: int) -> None:
    body = json.dumps(
        error_body(f"request body larger than {limit} bytes", "payload_too_large_error", "payload_too_large")
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodySizeLimit:
    """Pure ASGI middleware: 413 for a body over ``limit`` bytes, announced or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _send_413(send, self.limit)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await _send_413(send, self.limit)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            # The app reads the buffered body once, then waits for the client to go away, as ASGI servers do.
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
