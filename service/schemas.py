"""Request and response bodies (they are also the OpenAPI schema that clients and schemathesis read).

The schema states what validation enforces: required fields, minimum lengths, "exactly one of" (``oneOf``), and
(through :mod:`hsrl_service.contract`, which fills them in per running service) the limits on items,
characters, ``k``, vector and embedding dimensions and the served modalities. Fields are not nullable unless
OpenAI's API has them nullable: leave a field out instead of sending ``null``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

__all__ = [
    "AddItem",
    "AddRequest",
    "AddResponse",
    "DeleteResponse",
    "Embedding",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "ErrorBody",
    "ErrorDetail",
    "ModelCard",
    "ModelList",
    "SearchHit",
    "SearchRequest",
    "SearchResponse",
    "Text",
    "Usage",
]


def _json_integer(value: Any) -> Any:
    """JSON Schema's integer: a number with no fractional part (``5`` or ``5.0``), never ``true`` or ``"5"``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("Input should be an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("Input should be an integer")
        return int(value)
    return value


def _json_number(value: Any) -> Any:
    """JSON's number: never ``true`` or ``"1.5"`` (pydantic's lax mode would take both)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("Input should be a number")
    return value


def _json_int(**bounds: int) -> Any:
    """An integer as JSON Schema defines it, with ``ge``/``le`` bounds (stated in the schema as minimum/maximum)."""
    return Annotated[int, Field(**bounds), BeforeValidator(_json_integer)]  # type: ignore[call-overload]


#: A text with at least one non-space character.
Text = Annotated[str, Field(min_length=1, pattern=r"\S")]
TokenId = _json_int(ge=0)
TokenIds = Annotated[list[TokenId], Field(min_length=1)]
Vector = Annotated[list[Annotated[float, BeforeValidator(_json_number)]], Field(min_length=1)]
#: The largest id: int64, less the last 1023 values, which a float64 (as some JSON parsers read numbers) cannot tell
#: apart from 2^63; this bound itself is exact in both.
MAX_ID = 2**63 - 1024
Id = _json_int(ge=0, le=MAX_ID)
Positive = _json_int(ge=1)


def _exactly_one(*names: str) -> dict[str, Any]:
    return {"oneOf": [{"required": [name]} for name in names]}


class _Strict(BaseModel):
    # Unknown fields are refused so that a typo (``imput``) is a 422, not a silently ignored field.
    model_config = ConfigDict(extra="forbid")


class EmbeddingRequest(BaseModel):
    """OpenAI's ``POST /v1/embeddings`` body, plus hsrl's optional ``modality``."""

    model_config = ConfigDict(extra="ignore")  # OpenAI clients send extra fields

    input: Text | Annotated[list[Text], Field(min_length=1)] | TokenIds | Annotated[list[TokenIds], Field(min_length=1)]
    model: str | None = Field(
        default=None,
        description="`text`, `image` or a served model's name. Any other name (e.g. an OpenAI model name) is "
        "answered by the served model of the input's modality; the response's `model` says which.",
    )
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="`base64`: little-endian float32 bytes, base64-encoded."
    )
    dimensions: Positive | None = Field(
        default=None, description="Keep the first `dimensions` components and renormalise (≤ the model's dim)."
    )
    embedding_type: Literal["float", "int8", "binary"] = Field(
        default="float",
        description="`int8`: each vector scaled so its largest component is ±127 and rounded (cosine kept up to "
        "rounding); `binary`: the sign bits packed 8 to a byte, most significant first (`dim / 8` integers "
        "0–255). With `encoding_format` `base64` the codes' raw bytes are base64-encoded.",
    )
    modality: Literal["text", "image"] | None = Field(
        default=None,
        description="`text` embeds every string as text (even one starting with `data:`); `image` requires base64 "
        "data URIs (URLs are not fetched). Default: images for data URIs, text otherwise.",
    )
    user: str | None = Field(default=None, description="Accepted for OpenAI compatibility; ignored.")


EmbeddingRequest.model_fields["input"].description = (
    "A text, a list of texts, an image as a base64 data URI (`data:image/png;base64,...`) or a list of them, or "
    "token ids: a list of ints (one input) or a list of such lists, in the tiktoken encoding OpenAI clients use "
    "for `model` (`cl100k_base` for names tiktoken does not know); they are decoded and embedded as text."
)


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | list[int] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    """One served model, in OpenAI's shape (plus its modality and dimension)."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="When the model's folder was written (Unix seconds).")
    owned_by: str
    modality: Literal["text", "image"]
    dim: int
    backend: str = Field(default="torch", description="What runs the model: `torch`, `onnx` or `onnx-int8`.")
    precision: str = Field(default="fp32", description="Its weights' precision: `fp32` or `int8`.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class SearchRequest(_Strict):
    """A query (exactly one of ``text``, ``image``, ``vector``) against a named index."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_exactly_one("text", "image", "vector"))

    index: str = Field(default=None, description="The index name; optional when one index is served.")  # type: ignore[assignment]
    text: Text = Field(default=None, description="Embedded with the text encoder.")  # type: ignore[assignment]
    image: str = Field(default=None, description="A base64 data URI, embedded with the image encoder.")  # type: ignore[assignment]
    vector: Vector = Field(default=None, description="A raw query vector of the index's dimension (not all zeros).")  # type: ignore[assignment]
    k: Positive = Field(default=10, description="Neighbours to return.")
    model: str = Field(default=None, description="Which encoder embeds `text`/`image`, when several.")  # type: ignore[assignment]


class SearchHit(BaseModel):
    id: int
    score: float
    metadata: dict[str, Any] | None = None


class SearchResponse(BaseModel):
    object: Literal["search.result"] = "search.result"
    index: str
    k: int
    data: list[SearchHit]


class AddItem(_Strict):
    """One vector, or one text to embed, with an optional id and metadata."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_exactly_one("vector", "text"))

    vector: Vector = Field(default=None, description="A raw vector of the index's dimension (not all zeros).")  # type: ignore[assignment]
    text: Text = Field(default=None, description="Embedded with the text encoder and stored as metadata `text`.")  # type: ignore[assignment]
    id: Id = Field(default=None, description="Your id (int64); assigned when omitted. Taken ids answer 409.")  # type: ignore[assignment]
    metadata: dict[str, Any] = Field(default=None, description="A JSON object stored with the item.")  # type: ignore[assignment]


class AddRequest(_Strict):
    """Items to add, each self-contained (so ids and metadata can never be misaligned with the vectors)."""

    items: Annotated[list[AddItem], Field(min_length=1)]
    model: str = Field(default=None, description="Which encoder embeds texts, when several.")  # type: ignore[assignment]


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
