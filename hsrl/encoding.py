"""Text encoding in two steps, tokenise then run, and the compact output types of embeddings.

A server cuts its batches by token counts and reports them as OpenAI's ``usage``; it should not tokenise twice
to do so. :func:`tokenize_texts` runs the model's own preprocessing (``SentenceTransformer.preprocess``, or
``tokenize`` in older releases: lower-casing, truncation at ``max_seq_length`` and special tokens, exactly as
``encode`` does) once per request and keeps each text's unpadded features; :func:`embed_tokenized` pads any
mix of them into one model call and returns the ``sentence_embedding`` rows. Together they equal
``model.encode(texts, normalize_embeddings=True)`` whatever the backend (torch or ONNX Runtime).

Output types (:func:`quantize_rows`), all batch-independent so the same text always gives the same code:

* ``int8``: each unit vector scaled so that its largest component is ±127, rounded: ``q = round(127 x / ‖x‖_∞)``.
  Cosine is kept up to rounding (``cos(q_a, q_b) ≈ cos(a, b)``); 4× smaller than float32.
* ``binary``: the sign bits, packed 8 to a byte (``numpy.packbits``, most significant bit first): ``d / 8``
  bytes, 32× smaller; Hamming distance between codes approximates angle (``P[bit differs] = θ / π``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "EMBEDDING_TYPES",
    "Tokenized",
    "embed_tokenized",
    "quantize_rows",
    "supports_pretokenizing",
    "tokenize_texts",
]

#: what ``embedding_type`` may ask for
EMBEDDING_TYPES = ("float", "int8", "binary")


@dataclass(frozen=True, eq=False)
class Tokenized:
    """One text's model inputs, unpadded: ``features[name]`` is a 1-D int64 array of ``length`` entries."""

    text: str
    features: dict[str, np.ndarray]
    length: int

    def __len__(self) -> int:
        return self.length


def supports_pretokenizing(model: Any) -> bool:
    """Whether ``model``'s first module is a 🤗 transformers module with a tokenizer (its features can be split
    per text and padded again); custom modules such as the Quick-Thought GRU are encoded whole instead."""
    first = model[0] if hasattr(model, "__getitem__") else None
    standard = type(first).__name__ == "Transformer" and type(first).__module__.startswith("sentence_transformers")
    tokenizer = getattr(first, "tokenizer", None)
    return standard and tokenizer is not None and getattr(tokenizer, "pad_token_id", None) is not None


def _preprocess(model: Any, texts: list[str]) -> dict[str, Any]:
    preprocess = getattr(model, "preprocess", None)  # sentence-transformers >= 5.x; tokenize before
    return preprocess(texts) if preprocess is not None else model.tokenize(texts)


def tokenize_texts(model: Any, texts: Sequence[str]) -> list[Tokenized]:
    """Tokenise ``texts`` once with the model's own preprocessing; one unpadded :class:`Tokenized` per text."""
    features = _preprocess(model, list(texts))
    mask = np.asarray(features["attention_mask"])
    lengths = mask.sum(axis=1).astype(np.int64)
    left = getattr(model[0].tokenizer, "padding_side", "right") == "left"
    columns = {
        name: np.asarray(value, dtype=np.int64)
        for name, value in features.items()
        if hasattr(value, "shape") and tuple(value.shape) == mask.shape
    }
    width = mask.shape[1]
    out = []
    for row, (text, length) in enumerate(zip(texts, lengths.tolist(), strict=True)):
        span = slice(width - length, width) if left else slice(0, length)
        out.append(Tokenized(text, {name: column[row, span] for name, column in columns.items()}, length))
    return out


def _pad(items: Sequence[Tokenized], pad_id: int, left: bool) -> dict[str, Any]:
    import torch

    width = max(item.length for item in items)
    batch: dict[str, Any] = {}
    for name in items[0].features:
        fill = pad_id if name == "input_ids" else 0
        array = np.full((len(items), width), fill, dtype=np.int64)
        for row, item in enumerate(items):
            values = item.features[name]
            if left:
                array[row, width - len(values) :] = values
            else:
                array[row, : len(values)] = values
        batch[name] = torch.from_numpy(array)
    return batch


def embed_tokenized(model: Any, items: Sequence[Tokenized]) -> np.ndarray:
    """One model call on ``items`` padded to the longest; ``(n, d)`` float32 rows, L2-normalised here (the model's
    ``Normalize`` module usually did so already; a model without one is normalised as ``encode(...,
    normalize_embeddings=True)`` would)."""
    import torch

    tokenizer = model[0].tokenizer
    batch = _pad(items, int(tokenizer.pad_token_id), getattr(tokenizer, "padding_side", "right") == "left")
    device = getattr(model, "device", None)
    if device is not None and str(device) != "cpu":
        batch = {name: value.to(device) for name, value in batch.items()}
    with torch.inference_mode():
        output = model.forward(batch)["sentence_embedding"]
    vectors = output.float().cpu().numpy()
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def quantize_rows(vectors: np.ndarray, embedding_type: str) -> np.ndarray:
    """``float`` rows as they are, ``int8`` codes or packed ``binary`` sign bits (see the module docstring)."""
    if embedding_type == "float":
        return vectors
    if embedding_type == "int8":
        scale = np.maximum(np.abs(vectors).max(axis=1, keepdims=True), 1e-12)
        return np.rint(vectors / scale * 127.0).astype(np.int8)
    if embedding_type == "binary":
        return np.packbits(vectors > 0, axis=1)
    raise ValueError(f"unknown embedding_type {embedding_type!r} (choose from {', '.join(EMBEDDING_TYPES)})")
