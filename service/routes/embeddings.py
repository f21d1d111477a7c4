"""``POST /v1/embeddings`` (OpenAI-compatible, texts or image data URIs), its multipart twin for uploaded image
files, and ``GET /v1/models``."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from hsrl_service.encoders import Encoder
from hsrl_service.errors import ServiceError
from hsrl_service.images import decode_image, is_data_uri
from hsrl_service.routes.common import ERRORS, json_response, service_of, until_disconnected
from hsrl_service.runtime import Service
from hsrl_service.schemas import EmbeddingRequest, EmbeddingResponse
from hsrl_service.validation import check_count, check_dimensions, check_texts, decode_data_uris, encode_rows, truncate

router = APIRouter(tags=["embeddings"])


def _modality(items: list[str]) -> str:
    """Image when the inputs are data URIs, text otherwise; a mix is refused."""
    uris = sum(is_data_uri(item) for item in items)
    if uris and uris != len(items):
        raise ServiceError(422, "input mixes image data URIs and texts; send one modality per request", "mixed_input")
    return "image" if uris else "text"


async def _respond(
    request: Request,
    service: Service,
    encoder: Encoder,
    items: list,
    encoding_format: str,
    dimensions: int | None,
) -> Response:
    vectors, tokens = await service.embed(encoder, items, until_disconnected(request))
    vectors = truncate(vectors, dimensions, encoder.dim)
    rows = encode_rows(vectors, encoding_format)
    used = int(np.sum(tokens))
    return json_response(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)],
            "model": encoder.name,
            "usage": {"prompt_tokens": used, "total_tokens": used},
        }
    )


@router.post("/v1/embeddings", response_model=EmbeddingResponse, responses=ERRORS)
async def create_embeddings(body: EmbeddingRequest, request: Request) -> Response:
    """Embed texts or images (base64 data URIs) into L2-normalised vectors, as OpenAI's endpoint does."""
    service = service_of(request)
    items = [body.input] if isinstance(body.input, str) else list(body.input)
    check_count(items, service.limits, "input")
    if body.model is not None:
        encoder = service.encoder(body.model, None)
        modality = encoder.modality
    else:
        modality = _modality(items)
        encoder = service.encoder(None, modality)
    check_dimensions(body.dimensions, encoder.dim)
    if modality == "text":
        check_texts(items, service.limits, "input")
        inputs: list = items
    else:
        inputs = await run_in_threadpool(decode_data_uris, items, service.limits, "input")
    return await _respond(request, service, encoder, inputs, body.encoding_format, body.dimensions)


@router.post("/v1/embeddings/upload", response_model=EmbeddingResponse, responses=ERRORS)
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
    encoder = service.encoder(model, "image")
    check_dimensions(dimensions, encoder.dim)
    payloads = [await upload.read() for upload in files]
    max_pixels = service.limits.max_image_pixels

    def decode_all() -> list:
        return [decode_image(data, max_pixels=max_pixels, where=f"files[{i}]") for i, data in enumerate(payloads)]

    images = await run_in_threadpool(decode_all)
    return await _respond(request, service, encoder, images, encoding_format, dimensions)


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    """The served encoders, in OpenAI's model-list shape."""
    service = service_of(request)
    data = [
        {"id": e.name, "object": "model", "owned_by": "hsrl", "modality": e.modality, "dim": e.dim}
        for e in service.encoders.values()
    ]
    return json_response({"object": "list", "data": data})
