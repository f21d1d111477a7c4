"""The models the service runs: a sentence-transformers text encoder and an hsrl image encoder, each opened by
``hsrl.models.folder.open_model`` (the one model-folder contract every command shares).

Each encoder turns a list of items into L2-normalised float32 rows plus a per-item token count (OpenAI's
``usage``), and is called only from its batcher's worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Encoded",
    "Encoder",
    "ImageEncoder",
    "TextEncoder",
    "load_image_encoder",
    "load_text_encoder",
]

Encoded = tuple[np.ndarray, np.ndarray]  # (n, d) float32 unit rows, (n,) token counts


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class Encoder:
    """What the service needs from a model: its name, modality, output dimension and ``encode``."""

    name: str
    modality: str
    dim: int
    #: orders items so that a model call holds similar ones (texts: by length, less padding); None: no order
    sort_key: Callable[[Any], Any] | None = None
    #: when the model was written (Unix seconds; OpenAI's ``created``): its folder's mtime, else the service's start
    created: int = 0
    #: a model call's fixed cost in ``sort_key`` units, for :func:`hsrl_service.engine.plan_calls`; None: no planning
    call_overhead: float | None = None

    def encode(self, items: list[Any]) -> Encoded:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "modality": self.modality, "dim": self.dim, "backend": "torch", "precision": "fp32"}


class TextEncoder(Encoder):
    """A sentence-transformers model (a folder loadable by ``SentenceTransformer(path)``) on any backend.

    Embeddings are exactly ``model.encode(texts, normalize_embeddings=True)``; token counts come from the model's
    own tokenizer (with special tokens, truncated at ``max_seq_length``, as the model sees them). A 🤗 transformers
    model is tokenised once per request (:meth:`prepare`, off the event loop and while the worker runs the model):
    the batcher then sorts and cuts windows by token counts, and the same tokens feed the model call and ``usage``.
    """

    modality = "text"

    def __init__(self, model: Any, name: str, *, sub_batch_size: int = 32, backend: Any = None) -> None:
        from hsrl.backends import BackendInfo
        from hsrl.encoding import supports_pretokenizing

        self.model, self.name, self.sub_batch_size = model, name, sub_batch_size
        self.backend = backend or BackendInfo("torch", "fp32", "torch")
        self.pretokenized = supports_pretokenizing(model)
        # The batcher sorts a window of queued texts by length (as sentence-transformers does within one call)
        # so that a model call pads its texts to similar lengths: across requests, not only within one.
        self.sort_key: Callable[[Any], Any] = len
        # all-MiniLM-L6-v2 on one CPU thread: a call costs about 9 ms plus 0.04 ms per padded character, i.e.
        # its fixed cost is the compute of ~200 characters. Only the ratio matters, and it is a mild one:
        # splitting wins only where it saves hundreds of padded characters.
        self.call_overhead: float | None = 200.0
        if self.pretokenized:  # sorted by token count (ties by characters); plans cost padded tokens
            self.sort_key = _tokens_then_characters
            self.call_overhead = TOKEN_CALL_OVERHEAD
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(dimension())
        self.max_seq_length = int(getattr(model, "max_seq_length", 0) or 0) or None

    def count_tokens(self, texts: Sequence[str]) -> np.ndarray:
        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is None:  # a model without a tokenizer attribute: count whitespace words
            return np.array([len(text.split()) for text in texts], dtype=np.int64)
        ids = tokenizer(
            list(texts),
            add_special_tokens=True,
            truncation=self.max_seq_length is not None,
            max_length=self.max_seq_length,
        )["input_ids"]
        return np.array([len(row) for row in ids], dtype=np.int64)

    def prepare(self, texts: Sequence[str]) -> list[Any]:
        """What the batcher queues: each text's tokens (tokenised once), or the texts for a custom module."""
        if not self.pretokenized:
            return list(texts)
        from hsrl.encoding import tokenize_texts

        return tokenize_texts(self.model, texts)

    def encode(self, items: list[Any]) -> Encoded:
        if self.pretokenized:
            from hsrl.encoding import embed_tokenized

            tokens = items if items and not isinstance(items[0], str) else self.prepare(items)
            return embed_tokenized(self.model, tokens), np.array([len(t) for t in tokens], dtype=np.int64)
        vectors = self.model.encode(
            list(items),
            # sentence-transformers sorts a batch by length before cutting it into sub-batches, so sub-batches
            # of similar lengths waste less compute on padding than one batch padded to its longest text.
            batch_size=min(len(items), self.sub_batch_size),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return _normalise(vectors), self.count_tokens(items)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "max_seq_length": self.max_seq_length, **self.backend.as_dict()}


def _tokens_then_characters(item: Any) -> tuple[int, int]:
    return len(item), len(item.text)


#: A model call's fixed cost in padded tokens (all-MiniLM-L6-v2, one thread): its time over the time per token.
#: One value for every backend: only the ratio matters, and it only decides where a batch is split.
TOKEN_CALL_OVERHEAD = 40.0


def _open(path: str | Path, kind: str, flag: str, device: str | None, **options: Any) -> Any:
    """``hsrl.models.folder.open_model`` (a folder, packaged name or Hub id) of the ``kind`` the flag serves."""
    from hsrl.models.folder import open_model  # slow to import: only when a model is served

    try:
        opened = open_model(path, device=device, **options)
    except ValueError as error:  # the library names the flag --model; the service's flag is another
        raise ValueError(str(error).replace("--model", flag, 1)) from None
    if opened.kind != kind:
        raise ValueError(f"{flag} {path}: a {opened.kind} model folder, not a {kind} one")
    return opened


def load_text_encoder(
    path: str | Path,
    *,
    device: str | None = None,
    name: str | None = None,
    backend: str = "torch",
    threads: int | None = None,
) -> TextEncoder:
    """A text model folder, packaged name or Hub id (offline: the local cache) as the service's text encoder, on
    ``backend`` (:data:`hsrl.backends.BACKENDS`; ``threads``: ONNX Runtime's intra-op threads)."""
    opened = _open(path, "text", "--text-model", device, backend=backend, threads=threads)
    encoder = TextEncoder(opened.module, name or (opened.path.name if Path(path).exists() else str(path)),
                          backend=getattr(opened, "backend", None))  # fmt: skip
    encoder.created = int(opened.path.stat().st_mtime)
    return encoder


class ImageEncoder(Encoder):
    """An image model whose output rows are embeddings (L2-normalised here whatever it returns).

    Args:
        model: an ``nn.Module`` (or :class:`hsrl.onnx_image.OnnxImageEncoder`) mapping a ``(n, c, h, w)`` batch
            (what ``preprocessing`` makes) to ``(n, d)``.
        name: the name clients may pass as ``model``.
        preprocessing: the model's own :class:`hsrl.models.image.ImagePreprocess` (``to_array``: channels, resize,
            centre crop; uint8 out, which hsrl encoders normalise themselves).
        dim: the output dimension; measured with one blank image when not given.
        device: where the model runs.
        backend: what runs it (:class:`hsrl.backends.BackendInfo`; default torch fp32), for ``/info``.
    """

    modality = "image"

    def __init__(
        self, model: Any, name: str, preprocessing: Any, *, dim: int | None = None, device: str = "cpu",
        backend: Any = None,
    ) -> None:  # fmt: skip
        import torch

        from hsrl.backends import BackendInfo

        self._torch = torch
        self.backend = backend or BackendInfo("torch", "fp32", "torch")
        self.model, self.name, self.preprocessing, self.device = model.eval().to(device), name, preprocessing, device
        if dim is None:
            from PIL import Image

            blank = Image.new("RGB", (preprocessing.size, preprocessing.size))
            dim = self._forward(preprocessing.to_array(blank)[None]).shape[1]
        self.dim = int(dim)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            output = self.model(torch.from_numpy(batch).to(self.device))
        return output.float().reshape(output.shape[0], -1).cpu().numpy()

    def encode(self, items: list[Any]) -> Encoded:
        batch = np.stack([self.preprocessing.to_array(image) for image in items])
        return _normalise(self._forward(batch)), np.zeros(len(items), dtype=np.int64)

    def describe(self) -> dict[str, Any]:
        p = self.preprocessing
        return {**super().describe(), "image_size": p.size, "channels": p.channels, **self.backend.as_dict()}


def load_image_encoder(
    path: str | Path, *, device: str | None = None, name: str | None = None, backend: str = "torch",
    threads: int | None = None,
) -> ImageEncoder:  # fmt: skip
    """An hsrl image model folder (or Hub id) as the service's image encoder, with the model's own preprocessing,
    on ``backend`` (``torch``, ``onnx`` or ``auto``: :mod:`hsrl.onnx_image`; ``threads``: ONNX Runtime's)."""
    opened = _open(path, "image", "--image-model", device or "cpu", backend=backend, threads=threads)
    model, folder = opened.module, opened.path
    encoder = ImageEncoder(model, name or folder.name, opened.preprocess, dim=opened.dim, device=device or "cpu",
                           backend=getattr(opened, "backend", None))  # fmt: skip
    encoder.created = int(folder.stat().st_mtime)
    return encoder
