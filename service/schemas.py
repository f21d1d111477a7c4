"""Request and response bodies (they are also the OpenAPI schema that clients and schemathesis read).

Types are checked here; limits that depend on the running service (items, characters, k, the model's
dimension) are checked by the routes, which answer with a message that names the offending field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AddRequest",
    "AddResponse",
    "DeleteResponse",
    "Embedding",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "ErrorBody",
    "ErrorDetail",
    "SearchHit",
    "SearchRequest",
    "SearchResponse",
    "Usage",
]


class _Strict(BaseModel):
    # Unknown fields are refused so that a typo (``imput``) is a 422, not a silently ignored field.
    model_config = ConfigDict(extra="forbid")


class EmbeddingRequest(_Strict):
    """OpenAI's ``POST /v1/embeddings`` body."""

    model_config = ConfigDict(extra="ignore")  # OpenAI clients send extra fields (e.g. ``user``)

    input: str | list[str] = Field(
        description="A text, an image as a base64 data URI (`data:image/png;base64,...`), or a list of either."
    )
    model: str | None = Field(
        default=None, description="`text`, `image` or an encoder's name; optional while one encoder per modality."
    )
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="`base64`: little-endian float32 bytes, base64-encoded."
    )
    dimensions: int | None = Field(
        default=None, description="Keep the first `dimensions` components and renormalise (≤ the model's dim)."
    )
    user: str | None = Field(default=None, description="Accepted for OpenAI compatibility; ignored.")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class SearchRequest(_Strict):
    """A query (exactly one of ``text``, ``image``, ``vector``) against a named index."""

    index: str | None = Field(default=None, description="The index name; optional when one index is served.")
    text: str | None = Field(default=None, description="Embedded with the text encoder.")
    image: str | None = Field(default=None, description="A base64 data URI, embedded with the image encoder.")
    vector: list[float] | None = Field(default=None, description="A raw query vector of the index's dimension.")
    k: int = Field(default=10, description="Neighbours to return (1 ≤ k ≤ the service's max_k).")
    model: str | None = Field(default=None, description="Which encoder embeds `text`/`image`, when several.")


class SearchHit(BaseModel):
    id: int
    score: float
    metadata: dict[str, Any] | None = None


class SearchResponse(BaseModel):
    object: Literal["search.result"] = "search.result"
    index: str
    k: int
    data: list[SearchHit]


class AddRequest(_Strict):
    """Vectors, or texts to embed, with optional ids and metadata (one per item)."""

    vectors: list[list[float]] | None = Field(default=None, description="Raw vectors of the index's dimension.")
    texts: list[str] | None = Field(
        default=None, description="Texts embedded with the text encoder; each is stored as metadata `text`."
    )
    ids: list[int] | None = Field(default=None, description="Your ids (int64); assigned when omitted.")
    metadata: list[dict[str, Any]] | None = Field(default=None, description="One JSON object per item.")
    model: str | None = Field(default=None, description="Which encoder embeds `texts`, when several.")


class AddResponse(BaseModel):
    object: Literal["index.add"] = "index.add"
    index: str
    ids: list[int]
    ntotal: int


class DeleteResponse(BaseModel):
    object: Literal["index.delete"] = "index.delete"
    index: str
    id: int
    deleted: bool
    ntotal: int


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None


class ErrorBody(BaseModel):
    """Every error the service returns."""

    error: ErrorDetail
