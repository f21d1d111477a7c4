"""``POST /search`` and the index routes: ``GET /index/{name}``, ``POST /index/{name}/add`` and
``DELETE /index/{name}/{id}`` (the writes need the API key when one is configured)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from hsrl_service.errors import ServiceError
from hsrl_service.indexes import ServedIndex
from hsrl_service.routes.common import CONFLICT, ERRORS, json_response, service_of, until_disconnected
from hsrl_service.runtime import Service
from hsrl_service.schemas import AddRequest, AddResponse, DeleteResponse, SearchRequest, SearchResponse
from hsrl_service.validation import check_count, check_texts, decode_data_uris, unit_vectors


def build_router(reads: Sequence[Any], writes: Sequence[Any]) -> APIRouter:
    """The routes, with the API-key dependencies ``reads`` on search and stats and ``writes`` on the writes."""
    router = APIRouter(tags=["search"])
    router.add_api_route(
        "/search", search, methods=["POST"], response_model=SearchResponse, responses=ERRORS, dependencies=reads
    )
    router.add_api_route("/index/{name}", index_stats, methods=["GET"], responses=ERRORS, dependencies=reads)
    router.add_api_route(
        "/index/{name}/add",
        add_to_index,
        methods=["POST"],
        response_model=AddResponse,
        responses={**ERRORS, 409: CONFLICT},
        dependencies=writes,
    )
    router.add_api_route(
        # ``:int``: only digits match, so DELETE /index/{name}/add is 405 (wrong method), not a bad id
        "/index/{name}/{id:int}",
        delete_from_index,
        methods=["DELETE"],
        response_model=DeleteResponse,
        responses=ERRORS,
        dependencies=writes,
    )
    return router


def _check_model_dim(served: ServedIndex, dim: int, model: str) -> None:
    if dim != served.dim:
        raise ServiceError(
            422, f"model {model!r} gives {dim}-d vectors; index {served.name!r} holds {served.dim}-d", "wrong_dimension"
        )


async def _query_vector(request: Request, service: Service, served: ServedIndex, body: SearchRequest) -> np.ndarray:
    given = [name for name in ("text", "image", "vector") if getattr(body, name) is not None]
    if len(given) != 1:
        raise ServiceError(422, f"give exactly one of text, image, vector (got {given or 'none'})", "invalid_query")
    if body.vector is not None:
        return unit_vectors([body.vector], served.dim, "vector")
    modality = given[0]
    encoder = service.encoder(body.model, modality)
    _check_model_dim(served, encoder.dim, encoder.name)
    if body.text is not None:
        check_texts([body.text], service.limits, "text")
        items: list = [body.text]
    else:
        items = await run_in_threadpool(decode_data_uris, [body.image], service.limits, "image")
    vectors, _ = await service.embed(encoder, items, until_disconnected(request))
    return vectors


async def search(body: SearchRequest, request: Request) -> Response:
    """The ``k`` nearest neighbours (inner product of unit vectors = cosine) of a text, image or vector."""
    service = service_of(request)
    served = service.index(body.index)
    if not 1 <= body.k <= service.limits.max_k:
        raise ServiceError(422, f"k must be between 1 and {service.limits.max_k}, got {body.k}", "invalid_k")
    query = await _query_vector(request, service, served, body)
    scores, ids, metadata = await run_in_threadpool(served.search, query, body.k)
    found = ids[0] >= 0  # FAISS pads with -1 when the index holds fewer than k vectors
    hits = [
        {"id": int(id_), "score": float(score), "metadata": meta}
        for id_, score, meta in zip(ids[0][found], scores[0][found], metadata[0], strict=True)
    ]
    return json_response({"object": "search.result", "index": served.name, "k": body.k, "data": hits})


async def index_stats(name: str, request: Request) -> Response:
    """The index's size, dimension, type and statistics."""
    served = service_of(request).index(name)
    return json_response(await run_in_threadpool(served.stats))


async def add_to_index(name: str, body: AddRequest, request: Request) -> Response:
    """Add items (vectors, or texts embedded here) with optional ids and metadata; saved before the answer."""
    service = service_of(request)
    served = service.index(name)
    items = body.items
    check_count(items, service.limits, "items")
    given = [item.id for item in items if item.id is not None]
    if len(set(given)) != len(given):
        raise ServiceError(409, "items give the same id twice", "duplicate_id")
    vectors = np.empty((len(items), served.dim), dtype=np.float32)
    texts = {i: item.text for i, item in enumerate(items) if item.text is not None}
    for i, item in enumerate(items):
        if (item.vector is None) == (item.text is None):
            raise ServiceError(422, f"items[{i}]: give exactly one of vector, text", "invalid_add")
        if item.vector is not None:
            vectors[i] = unit_vectors([item.vector], served.dim, f"items[{i}].vector")[0]
    if texts:
        check_texts(list(texts.values()), service.limits, "texts")
        encoder = service.encoder(body.model, "text")
        _check_model_dim(served, encoder.dim, encoder.name)
        embedded, _ = await service.embed(encoder, list(texts.values()))
        vectors[list(texts)] = embedded
    metadata = [
        ({"text": item.text} if item.text is not None else {}) | (item.metadata or {})
        if item.text is not None or item.metadata is not None
        else None
        for item in items
    ]
    try:
        ids = await run_in_threadpool(served.add, vectors, [item.id for item in items], metadata)
    except ValueError as error:  # an id already in the index: nothing changed
        raise ServiceError(409, f"index {served.name!r}: {error}", "id_conflict") from error
    return json_response({"object": "index.add", "index": served.name, "ids": ids.tolist(), "ntotal": served.ntotal})


async def delete_from_index(name: str, id: int, request: Request) -> Response:
    """Remove one id; 404 when it is not in the index."""
    served = service_of(request).index(name)
    if not 0 <= id <= 2**63 - 1:  # unreachable through the route (digits only), kept for direct callers
        raise ServiceError(404, f"id {id} is not in index {served.name!r}", "id_not_found")
    removed = await run_in_threadpool(served.remove, id)
    if not removed:
        raise ServiceError(404, f"id {id} is not in index {served.name!r}", "id_not_found")
    payload = {"object": "index.delete", "index": served.name, "id": id, "deleted": True, "ntotal": served.ntotal}
    return json_response(payload)
