"""The FastAPI application: middleware (request metrics, body size limit, optional CORS), error handlers,
routes, and the lifespan that starts and stops the batching workers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from hsrl_service.auth import api_key_guard
from hsrl_service.contract import install_contract
from hsrl_service.errors import CatchAll, install_error_handlers
from hsrl_service.limits import BodySizeLimit
from hsrl_service.metrics import RequestMetrics
from hsrl_service.routes import docs, embeddings, ops, search, ui
from hsrl_service.runtime import Service, service_version

__all__ = ["create_app"]


def create_app(service: Service) -> FastAPI:
    """An app serving ``service``; its workers start with the app's lifespan and stop with it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(
        title="hsrl",
        version=service_version(),
        description="Embeddings on the unit hypersphere (texts and images) and nearest-neighbour search.",
        lifespan=lifespan,
        # Served below behind the read guard (with an API key they are not public unless --public-reads).
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    install_error_handlers(app)
    key = service.config.api_key
    # Every route but /health and /metrics needs the key; --public-reads leaves only the index writes guarded.
    reads = [Depends(api_key_guard(None if service.config.public_reads else key))]
    writes = [Depends(api_key_guard(key))]
    app.include_router(embeddings.build_router(service), dependencies=reads)
    app.include_router(search.build_router(reads=reads, writes=writes))
    app.include_router(ops.router)
    app.include_router(ops.guarded_router, dependencies=reads)
    app.include_router(docs.build_router(app), dependencies=reads)
    app.include_router(ui.router, dependencies=reads)
    install_contract(app, service)
    if service.config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(service.config.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    # Added last = outermost: the size check runs before parsing; metrics see every answer, 413s and 500s included.
    app.add_middleware(BodySizeLimit, limit=service.limits.max_request_bytes)
    app.add_middleware(CatchAll)
    app.add_middleware(RequestMetrics, metrics=service.metrics)
    return app
