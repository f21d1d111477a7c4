"""Checks on request content that depend on the running service's limits, each failing with a message that
names the field (``input[3]``) and a stable ``code``."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import numpy as np

from hsrl_service.errors import ServiceError
from hsrl_service.images import decode_image, parse_data_uri
from hsrl_service.limits import Limits

__all__ = [
    "check_count",
    "check_dimensions",
    "check_texts",
    "decode_data_uris",
    "encode_rows",
    "truncate",
    "unit_vectors",
]


def check_count(items: Sequence[Any], limits: Limits, field: str) -> None:
    if len(items) == 0:
        raise ServiceError(422, f"{field} must not be empty", "empty_input")
    if len(items) > limits.max_items:
        # 422, not 413: the schema states this limit (maxItems), so it is a validation rule like any other.
        raise ServiceError(
            422, f"{field} has {len(items)} items (limit {limits.max_items} per request)", "too_many_inputs"
        )


def check_texts(texts: Sequence[str], limits: Limits, field: str) -> None:
    check_count(texts, limits, field)
    for i, text in enumerate(texts):
        if not text or not text.strip():
            raise ServiceError(422, f"{field}[{i}] is empty", "empty_input")
        if len(text) > limits.max_text_chars:
            raise ServiceError(
                422, f"{field}[{i}] has {len(text)} characters (limit {limits.max_text_chars})", "text_too_long"
            )


def decode_data_uris(items: Sequence[str], limits: Limits, field: str) -> list[Any]:
    """Decoded PIL images from base64 data URIs (blocking: call it in a worker thread)."""
    check_count(items, limits, field)
    images = []
    for i, item in enumerate(items):
        where = f"{field}[{i}]"
        images.append(decode_image(parse_data_uri(item, where=where), max_pixels=limits.max_image_pixels, where=where))
    return images


def unit_vectors(rows: Sequence[Sequence[float]], dim: int, field: str) -> np.ndarray:
    """Rows as a float32 ``(n, dim)`` array scaled to unit norm; 422 on a wrong length, NaN/inf or a zero row."""
    for i, row in enumerate(rows):
        if len(row) != dim:
            message = f"{field}[{i}] has {len(row)} components; the index has dim {dim}"
            raise ServiceError(422, message, "wrong_dimension")
    array = np.asarray(rows, dtype=np.float64).reshape(len(rows), dim)
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        raise ServiceError(422, f"{field}[{int(np.argmax(bad))}] contains NaN or infinity", "invalid_vector")
    scale = np.abs(array).max(axis=1)
    if (scale == 0).any():
        raise ServiceError(422, f"{field}[{int(np.argmin(scale))}] is the zero vector", "invalid_vector")
    # Scaling by the largest component first keeps the norm finite for huge values (1e308).
    array /= scale[:, None]
    # Renormalising lets clients send unnormalised vectors; the index compares by inner product = cosine.
    return (array / np.linalg.norm(array, axis=1, keepdims=True)).astype(np.float32)


def truncate(vectors: np.ndarray, dimensions: int | None, model_dim: int) -> np.ndarray:
    """Keep the first ``dimensions`` components and renormalise (OpenAI's ``dimensions``)."""
    if dimensions is None or dimensions == model_dim:
        return vectors
    kept = vectors[:, :dimensions]
    return (kept / np.maximum(np.linalg.norm(kept, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def check_dimensions(dimensions: int | None, model_dim: int) -> None:
    if dimensions is not None and not 1 <= dimensions <= model_dim:
        raise ServiceError(422, f"dimensions must be between 1 and {model_dim}, got {dimensions}", "invalid_dimensions")


def encode_rows(vectors: np.ndarray, encoding_format: str) -> list[list[float]] | list[str]:
    """Rows as JSON numbers, or as base64 of their bytes: little-endian float32 (what OpenAI's clients decode), or
    the int8 / packed-binary codes' own bytes."""
    if encoding_format == "base64":
        little = vectors.astype("<f4", copy=False) if vectors.dtype.kind == "f" else vectors
        return [base64.b64encode(row.tobytes()).decode("ascii") for row in little]
    return vectors.tolist()
