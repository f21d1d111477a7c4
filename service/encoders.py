"""The models the service runs: a sentence-transformers text encoder and an hsrl image encoder.

Each encoder turns a list of items into L2-normalised float32 rows plus a per-item token count (OpenAI's
``usage``), and is called only from its batcher's worker thread.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Encoded",
    "Encoder",
    "ImageEncoder",
    "ImagePreprocessing",
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

    def encode(self, items: list[Any]) -> Encoded:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "modality": self.modality, "dim": self.dim}


class TextEncoder(Encoder):
    """A sentence-transformers model (a folder loadable by ``SentenceTransformer(path)``).

    Embeddings are exactly ``model.encode(texts, normalize_embeddings=True)``; token counts come from the model's
    own tokenizer (with special tokens, truncated at ``max_seq_length``, as the model sees them).
    """

    modality = "text"

    def __init__(self, model: Any, name: str) -> None:
        self.model, self.name = model, name
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

    def encode(self, items: list[Any]) -> Encoded:
        vectors = self.model.encode(
            list(items),
            batch_size=len(items),  # the batcher already formed the batch
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return _normalise(vectors), self.count_tokens(items)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "max_seq_length": self.max_seq_length}


def load_text_encoder(path: str | Path, *, device: str | None = None, name: str | None = None) -> TextEncoder:
    """Load a sentence-transformers folder (offline) as the service's text encoder."""
    from sentence_transformers import SentenceTransformer

    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"text model folder not found: {folder}")
    model = SentenceTransformer(str(folder), device=device)
    return TextEncoder(model, name or folder.name)


@dataclass(frozen=True)
class ImagePreprocessing:
    """How a decoded image becomes the model's input tensor: resize to ``size``, channels, normalisation."""

    size: int = 224
    channels: int = 3
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ImagePreprocessing:
        """Read the fields an ``hsrl_config.json`` may carry (top level, or under ``preprocessing``/``data``)."""
        merged: dict[str, Any] = {}
        for section in (config, config.get("model", {}), config.get("data", {}), config.get("preprocessing", {})):
            if isinstance(section, dict):
                merged.update(section)
        size = merged.get("image_size", merged.get("input_size", merged.get("size", cls.size)))
        if isinstance(size, (list, tuple)):
            size = size[-1]
        channels = int(merged.get("in_channels", merged.get("channels", cls.channels)))
        default_mean, default_std = (cls.mean, cls.std) if channels == 3 else ((0.5,) * channels, (0.5,) * channels)
        mean = tuple(float(v) for v in merged.get("mean", default_mean))
        std = tuple(float(v) for v in merged.get("std", default_std))
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"image config: mean/std need {channels} values, got {mean} / {std}")
        return cls(size=int(size), channels=channels, mean=mean, std=std)

    def to_array(self, image: Any) -> np.ndarray:
        """A PIL image to a ``(channels, size, size)`` float32 array, normalised."""
        from PIL import Image

        image = image.convert("L" if self.channels == 1 else "RGB").resize((self.size, self.size), Image.BILINEAR)
        array = np.asarray(image, dtype=np.float32) / 255.0
        array = array[:, :, None] if array.ndim == 2 else array
        array = (array - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(array.transpose(2, 0, 1))


class ImageEncoder(Encoder):
    """A torch image model whose output rows are embeddings; they are L2-normalised here whatever it returns.

    Args:
        model: an ``nn.Module`` mapping ``(n, c, h, w)`` to ``(n, d)`` (or a tuple/dict whose first/``embedding``
            entry is that).
        name: the name clients may pass as ``model``.
        preprocessing: resize and normalisation.
        dim: the output dimension; measured with one dummy image when not given.
    """

    modality = "image"

    def __init__(
        self, model: Any, name: str, preprocessing: ImagePreprocessing, *, dim: int | None = None, device: str = "cpu"
    ) -> None:
        import torch

        self.model, self.name, self.preprocessing, self.device = model.eval().to(device), name, preprocessing, device
        self._torch = torch
        self._lock = threading.Lock()
        if dim is None:
            size, channels = preprocessing.size, preprocessing.channels
            dim = self._forward(np.zeros((1, channels, size, size), dtype=np.float32)).shape[1]
        self.dim = int(dim)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            output = self.model(torch.from_numpy(batch).to(self.device))
        if isinstance(output, dict):
            output = output.get("embedding", next(iter(output.values())))
        if isinstance(output, (tuple, list)):
            output = output[0]
        return output.float().reshape(output.shape[0], -1).cpu().numpy()

    def encode(self, items: list[Any]) -> Encoded:
        batch = np.stack([self.preprocessing.to_array(image) for image in items])
        return _normalise(self._forward(batch)), np.zeros(len(items), dtype=np.int64)

    def describe(self) -> dict[str, Any]:
        p = self.preprocessing
        return {**super().describe(), "image_size": p.size, "channels": p.channels}


def load_image_encoder(path: str | Path, *, device: str | None = None, name: str | None = None) -> ImageEncoder:
    """Load an image model folder (``model.safetensors`` + ``hsrl_config.json``) through ``hsrl.models.image``."""
    folder = Path(path)
    config_path = folder / "hsrl_config.json"
    if not config_path.is_file():
        raise ValueError(f"image model folder {folder} has no hsrl_config.json")
    try:
        from hsrl.models import image as image_models
    except ImportError as error:
        raise ValueError(f"image models are not available in this install ({error})") from error
    loader: Callable[..., Any] = image_models.load
    loaded = loader(str(folder))
    model = loaded[0] if isinstance(loaded, tuple) else loaded
    config = json.loads(config_path.read_text())
    preprocessing = ImagePreprocessing.from_config(config)
    dim = config.get("embedding_dim", config.get("dim"))
    return ImageEncoder(model, name or folder.name, preprocessing, dim=dim, device=device or "cpu")
