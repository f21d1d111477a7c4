"""The running service: its configuration, encoders and their batchers, indexes, and metrics.

Routes reach it as ``request.app.state.service``. It owns the choice of encoder for a request (``model``
names a modality or an encoder), turns engine failures into HTTP errors, and reports health.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from hsrl_service.encoders import Encoder
from hsrl_service.engine import Batcher, Embedded, EngineUnavailableError, QueueFullError
from hsrl_service.errors import ServiceError
from hsrl_service.indexes import IndexRegistry, ServedIndex
from hsrl_service.limits import Limits
from hsrl_service.metrics import ServiceMetrics

__all__ = ["BatchingConfig", "Service", "ServiceConfig", "service_version"]


def service_version() -> str:
    try:
        return importlib.metadata.version("hsrl")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class BatchingConfig:
    """Micro-batching: see :class:`hsrl_service.engine.Batcher` (a window below ``max_batch_size`` is raised to it)."""

    max_batch_size: int = 32
    max_wait_ms: float = 0.0
    max_queue: int = 1024
    window: int = 256
    wedge_timeout_s: float = 120.0
    #: most padded tokens per text model call (TEI's --max-batch-tokens); None: only max_batch_size bounds a call
    max_batch_tokens: int | None = 16384


@dataclass(frozen=True)
class ServiceConfig:
    limits: Limits = field(default_factory=Limits)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    api_key: str | None = None
    #: with an API key: True leaves reads (embeddings, search, models, info, the schema) open, guarding writes only
    public_reads: bool = False
    cors_origins: tuple[str, ...] = ()


class Service:
    """Encoders (at most one per modality), their batchers, and the indexes."""

    def __init__(
        self,
        encoders: Sequence[Encoder],
        indexes: IndexRegistry | None = None,
        config: ServiceConfig | None = None,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.config = config or ServiceConfig()
        self.metrics = metrics or ServiceMetrics()
        self.indexes = indexes or IndexRegistry()
        self.encoders: dict[str, Encoder] = {}
        for encoder in encoders:
            if encoder.modality in {e.modality for e in self.encoders.values()}:
                raise ValueError(f"two {encoder.modality} encoders; serve one per modality")
            if encoder.name in self.encoders or encoder.name in {"text", "image"}:
                raise ValueError(f"encoder name {encoder.name!r} is taken; pass another name")
            self.encoders[encoder.name] = encoder
            encoder.created = encoder.created or int(time.time())
        if not self.encoders and not len(self.indexes):
            raise ValueError("nothing to serve: give at least one model or index")
        b = self.config.batching
        self.batchers = {
            name: Batcher(
                name,
                encoder.encode,
                max_batch_size=b.max_batch_size,
                max_wait_ms=b.max_wait_ms,
                max_queue=b.max_queue,
                window=max(b.window, b.max_batch_size),
                sort_key=encoder.sort_key,
                call_overhead=encoder.call_overhead,
                max_tokens=b.max_batch_tokens if getattr(encoder, "pretokenized", False) else None,
                wedge_timeout_s=b.wedge_timeout_s,
                metrics=self.metrics,
            )
            for name, encoder in self.encoders.items()
        }
        for served in self.indexes.values():
            self.metrics.index_vectors.set_function(lambda s=served: s.ntotal, index=served.name)

    @property
    def limits(self) -> Limits:
        return self.config.limits

    def start(self) -> None:
        for batcher in self.batchers.values():
            batcher.start()

    def stop(self) -> None:
        for batcher in self.batchers.values():
            batcher.stop()

    # ---------------------------------------------------------------- encoders
    def encoder(self, model: str | None, modality: str | None) -> Encoder:
        """The encoder a request names (``text``, ``image`` or a name), or the one for ``modality``."""
        if model is not None:
            found = self._by_modality(model) if model in {"text", "image"} else self.encoders.get(model)
            if found is None:
                available = ", ".join(sorted(self.encoders) + sorted({e.modality for e in self.encoders.values()}))
                message = f"model {model!r} is not served (available: {available or 'none'})"
                raise ServiceError(404, message, "model_not_found")
            if modality is not None and found.modality != modality:
                raise ServiceError(422, f"model {model!r} embeds {found.modality}, not {modality}", "wrong_modality")
            return found
        if modality is None:
            raise ServiceError(422, "model is required", "model_required")
        found = self._by_modality(modality)
        if found is None:
            raise ServiceError(422, f"no {modality} model is loaded in this service", "model_not_loaded")
        return found

    def _by_modality(self, modality: str) -> Encoder | None:
        return next((e for e in self.encoders.values() if e.modality == modality), None)

    async def embed(
        self,
        encoder: Encoder,
        items: Sequence[Any],
        disconnected: Callable[[], Awaitable[Any]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows and token counts for ``items``, through the encoder's batcher; 429/503 when it cannot take them.

        ``disconnected`` returns once the client has gone away. If that happens first, the request is withdrawn
        from the batcher (its items still queued are never embedded) and a 499 is raised, which nobody reads.
        """
        prepare = getattr(encoder, "prepare", None)
        if prepare is not None:  # tokenise in a pool thread: off the event loop, overlapping the model call
            items = await asyncio.to_thread(prepare, items)
        try:
            submitted = self.batchers[encoder.name].submit(items)
            if disconnected is None:
                return await submitted
            return await self._unless_disconnected(encoder.name, submitted, disconnected)
        except QueueFullError as error:
            retry = {"Retry-After": str(error.retry_after)}
            raise ServiceError(429, str(error), "queue_full", headers=retry) from error
        except EngineUnavailableError as error:
            raise ServiceError(503, f"model {encoder.name!r} is unavailable: {error}", "engine_unavailable") from error
        except Exception as error:  # the model failed on this batch (logged by the worker); the worker lives on
            raise ServiceError(500, f"model {encoder.name!r} failed on this batch", "inference_error") from error

    async def _unless_disconnected(
        self, model: str, work: Awaitable[Embedded], disconnected: Callable[[], Awaitable[Any]]
    ) -> Embedded:
        task, watcher = asyncio.ensure_future(work), asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                return task.result()
            task.cancel()  # Batcher.submit marks the request done: the worker skips what is left of it
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            self.metrics.abandoned.inc(model=model)
            raise ServiceError(499, "the client closed the connection", "client_closed")
        finally:
            for pending in (task, watcher):
                pending.cancel()

    # ---------------------------------------------------------------- indexes
    def index(self, name: str | None) -> ServedIndex:
        served = self.indexes.get(name)
        if served is None:
            if name is None:
                names = ", ".join(self.indexes.names()) or "none"
                raise ServiceError(422, f"index is required (served: {names})", "index_required")
            raise ServiceError(404, f"index {name!r} is not served", "index_not_found")
        return served

    # ---------------------------------------------------------------- state
    def health(self) -> tuple[bool, dict[str, Any]]:
        engines = {name: batcher.health() for name, batcher in self.batchers.items()}
        return all(state["ok"] for state in engines.values()), {"models": engines, "indexes": self.indexes.names()}

    def _auth(self) -> str:
        if not self.config.api_key:
            return "none"
        return "api-key (writes)" if self.config.public_reads else "api-key"

    def info(self) -> dict[str, Any]:
        return {
            "service": "hsrl",
            "version": service_version(),
            "models": [encoder.describe() for encoder in self.encoders.values()],
            "indexes": [{"name": s.name, "dim": s.dim, "ntotal": s.ntotal} for s in self.indexes.values()],
            "limits": self.limits.as_dict(),
            "batching": asdict(self.config.batching),
            "auth": self._auth(),
        }
