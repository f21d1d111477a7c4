"""Bearer API key: ``Authorization: Bearer <key>``, compared in constant time.

With no key configured every request is allowed. With one, the routes that depend on :func:`api_key_guard`'s
dependency answer 401 (and change nothing) unless the header carries that key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from hsrl_service.errors import ServiceError

__all__ = ["api_key_guard"]

_bearer = HTTPBearer(auto_error=False, description="The service's API key (`--api-key` or `HSRL_API_KEY`).")


def api_key_guard(api_key: str | None) -> Callable[..., None]:
    """A FastAPI dependency that admits the request only with the configured key (or when none is set)."""
    # Compare digests rather than the keys so that not even the key's length shows in the timing.
    expected = hashlib.sha256(api_key.encode()).digest() if api_key else None

    def check(credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:  # noqa: B008
        if expected is None:
            return
        given = credentials.credentials if credentials and credentials.scheme.lower() == "bearer" else ""
        # compare_digest takes the same time wherever the first difference is.
        if not hmac.compare_digest(hashlib.sha256(given.encode()).digest(), expected):
            raise ServiceError(
                401,
                "missing or invalid API key (send `Authorization: Bearer <key>`)",
                "invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check
