"""``POST /v1/embeddings`` (OpenAI-compatible: texts, token ids or image data URIs), its multipart twin for
uploaded image files, and ``GET /v1/models`` / ``GET /v1/models/{id}``."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from hsrl.encoding import quantize_rows
from hsrl_service.encoders import Encoder
from hsrl_service.errors import ServiceError
from hsrl_service.images import decode_image, is_data_uri
from hsrl_service.routes.common import ERRORS, json_response, service_of, until_disconnected
from hsrl_service.runtime import Service
from hsrl_service.schemas import EmbeddingRequest, EmbeddingResponse, ModelCard, ModelList
from hsrl_service.tokens import decode_token_ids
from hsrl_service.validation import check_count, check_dimensions, check_texts, decode_data_uris, encode_rows, truncate

__all__ = ["build_router"]


def _modality(items: list[str]) -> str:
    """Image when the inputs are data URIs, text otherwise; a mix is refused."""
    uris = sum(is_data_uri(item) for item in items)
    if uris and uris != len(items):
        raise ServiceError(422, "input mixes image data URIs and texts; send one modality per request", "mixed_input")
    return "image" if uris else "text"


def _encoder(service: Service, model: str | None, modality: str) -> Encoder:
    """The named encoder, else the one serving ``modality`` (a name the service does not know, such as an OpenAI
    model name that a client sends by default, is answered by the served model; the response names it)."""
    if model is not None and (model in service.encoders or model in {"text", "image"}):
        return service.encoder(model, modality)
    return service.encoder(None, modality)


async def _respond(
    request: Request,
    service: Service,
    encoder: Encoder,
    items: list,
    encoding_format: str,
    dimensions: int | None,
    embedding_type: str = "float",
) -> Response:
    vectors, tokens = await service.embed(encoder, items, until_disconnected(request))
    vectors = truncate(vectors, dimensions, encoder.dim)
    rows = encode_rows(quantize_rows(vectors, embedding_type), encoding_format)
    used = int(np.sum(tokens))
    return json_response(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)],
            "model": encoder.name,
            "usage": {"prompt_tokens": used, "total_tokens": used},
        }
    )


def _token_rows(body: EmbeddingRequest) -> list[list[int]] | None:
    """The input as lists of token ids, or ``None`` when it is text."""
    given = body.input
    if isinstance(given, list) and given and isinstance(given[0], int):
        return [list(given)]  # type: ignore[arg-type]
    if isinstance(given, list) and given and isinstance(given[0], list):
        return [list(row) for row in given]  # type: ignore[union-attr]
    return None


async def create_embeddings(body: EmbeddingRequest, request: Request) -> Response:
    """Embed texts, token ids or images (base64 data URIs) into L2-normalised vectors, as OpenAI's endpoint does."""
    service = service_of(request)
    token_rows = _token_rows(body)
    if token_rows is not None:
        if body.modality == "image":
            raise ServiceError(422, "token ids are text input; modality 'image' needs data URIs", "wrong_modality")
        check_count(token_rows, service.limits, "input")
        for i, row in enumerate(token_rows):
            if len(row) > service.limits.max_text_chars:
                message = f"input[{i}] has {len(row)} token ids (limit {service.limits.max_text_chars})"
                raise ServiceError(422, message, "text_too_long")
        encoder = _encoder(service, body.model, "text")
        check_dimensions(body.dimensions, encoder.dim)
        inputs: list = decode_token_ids(token_rows, model=body.model, field="input")
        return await _respond(request, service, encoder, inputs, body.encoding_format, body.dimensions,
                              body.embedding_type)  # fmt: skip
    items: list[str] = [body.input] if isinstance(body.input, str) else list(body.input)  # type: ignore[arg-type]
    check_count(items, service.limits, "input")
    modality = body.modality or _modality(items)
    encoder = _encoder(service, body.model, modality)
    check_dimensions(body.dimensions, encoder.dim)
    if modality == "text":
        check_texts(items, service.limits, "input")
        inputs = items
    else:
        for i, item in enumerate(items):
            if not is_data_uri(item):
                message = (f"input[{i}]: images must be base64 data URIs (data:image/png;base64,...); the service "
                           "does not fetch URLs")  # fmt: skip
                raise ServiceError(422, message, "invalid_image")
        inputs = await run_in_threadpool(decode_data_uris, items, service.limits, "input")
    return await _respond(request, service, encoder, inputs, body.encoding_format, body.dimensions, body.embedding_type)


async def upload_embeddings(
    request: Request,
    files: Annotated[list[UploadFile], File(description="One or more image files.")],
    model: Annotated[str | None, Form()] = None,
    encoding_format: Annotated[Literal["float", "base64"], Form()] = "float",
    dimensions: Annotated[int | None, Form()] = None,
) -> Response:
    """Embed uploaded image files (multipart/form-data, field ``files``)."""
    service = service_of(request)
    check_count(files, service.limits, "files")
    encoder = _encoder(service, model, "image")
    check_dimensions(dimensions, encoder.dim)
    payloads = [await upload.read() for upload in files]
    max_pixels = service.limits.max_image_pixels

    def decode_all() -> list:
        return [decode_image(data, max_pixels=max_pixels, where=f"files[{i}]") for i, data in enumerate(payloads)]

    images = await run_in_threadpool(decode_all)
    return await _respond(request, service, encoder, images, encoding_format, dimensions)


def _card(encoder: Encoder) -> dict:
    created = int(getattr(encoder, "created", 0))
    card = {"id": encoder.name, "object": "model", "created": created, "owned_by": "hsrl",
            "modality": encoder.modality, "dim": encoder.dim}  # fmt: skip
    described = encoder.describe()  # which backend and precision serve it
    return card | {"backend": described.get("backend", "torch"), "precision": described.get("precision", "fp32")}


async def list_models(request: Request) -> Response:
    """The served encoders, in OpenAI's model-list shape."""
    service = service_of(request)
    return json_response({"object": "list", "data": [_card(e) for e in service.encoders.values()]})


async def retrieve_model(model_id: str, request: Request) -> Response:
    """One served encoder (OpenAI's ``models.retrieve``); 404 for a name it does not serve."""
    encoder = service_of(request).encoders.get(model_id)
    if encoder is None:
        raise ServiceError(404, f"model {model_id!r} is not served", "model_not_found")
    return json_response(_card(encoder))


def build_router(service: Service) -> APIRouter:
    """The embedding routes; the upload route only when an image model is served."""
    router = APIRouter(tags=["embeddings"])
    router.add_api_route("/v1/embeddings", create_embeddings, methods=["POST"], response_model=EmbeddingResponse,
                         responses=ERRORS)  # fmt: skip
    if any(encoder.modality == "image" for encoder in service.encoders.values()):
        router.add_api_route("/v1/embeddings/upload", upload_embeddings, methods=["POST"],
                             response_model=EmbeddingResponse, responses=ERRORS)  # fmt: skip
    router.add_api_route("/v1/models", list_models, methods=["GET"], response_model=ModelList,
                         responses={401: ERRORS[401]})  # fmt: skip
    router.add_api_route("/v1/models/{model_id}", retrieve_model, methods=["GET"], response_model=ModelCard,
                         responses={401: ERRORS[401], 404: ERRORS[404]})  # fmt: skip
    return router
