"""The models the service runs: a sentence-transformers text encoder and an hsrl image encoder.

Each encoder turns a list of items into L2-normalised float32 rows plus a per-item token count (OpenAI's
``usage``), and is called only from its batcher's worker thread.
"""

from __future__ import annotations

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
    #: orders items so that a model call holds similar ones (texts: by length, less padding); None: no order
    sort_key: Callable[[Any], Any] | None = None
    #: when the model was written (Unix seconds; OpenAI's ``created``): its folder's mtime, else the service's start
    created: int = 0
    #: a model call's fixed cost in ``sort_key`` units, for :func:`hsrl_service.engine.plan_calls`; None: no planning
    call_overhead: float | None = None

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

    def __init__(self, model: Any, name: str, *, sub_batch_size: int = 32) -> None:
        self.model, self.name, self.sub_batch_size = model, name, sub_batch_size
        # The batcher sorts a window of queued texts by length (as sentence-transformers does within one call)
        # so that a model call pads its texts to similar lengths: across requests, not only within one.
        self.sort_key: Callable[[Any], Any] = len
        # all-MiniLM-L6-v2 on one CPU thread: a call costs about 9 ms plus 0.04 ms per padded character, i.e.
        # its fixed cost is the compute of ~200 characters. Only the ratio matters, and it is a mild one:
        # splitting wins only where it saves hundreds of padded characters.
        self.call_overhead: float | None = 200.0
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
            # sentence-transformers sorts a batch by length before cutting it into sub-batches, so sub-batches
            # of similar lengths waste less compute on padding than one batch padded to its longest text.
            batch_size=min(len(items), self.sub_batch_size),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return _normalise(vectors), self.count_tokens(items)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "max_seq_length": self.max_seq_length}


def load_text_encoder(path: str | Path, *, device: str | None = None, name: str | None = None) -> TextEncoder:
    """Load a sentence-transformers folder (offline) as the service's text encoder."""
    folder = Path(path)
    if not folder.is_dir():
        if str(path).count("/") != 1 or str(path).startswith(("/", ".", "~")):
            raise ValueError(f"text model folder not found: {folder} (nor is it a Hub id, org/name)")
        from hsrl.models.text import resolve_model_path

        # A Hub id (org/name): from the Hugging Face cache, downloaded first unless HF_HUB_OFFLINE=1.
        name, folder = name or str(path), Path(resolve_model_path(str(path)))
    from hsrl.models.text import load_sentence_transformer  # slow to import: only once the folder is there

    model = load_sentence_transformer(folder, device=device)
    encoder = TextEncoder(model, name or folder.name)
    encoder.created = int(folder.stat().st_mtime)
    return encoder


@dataclass(frozen=True)
class ImagePreprocessing:
    """How a decoded image becomes the model's input: the recipe of ``hsrl export`` and the evaluation view.

    Convert to ``channels``, resize the shorter side to ``resize`` (bilinear), centre-crop ``size``. With
    ``mean``/``std`` the array is scaled to [0, 1] and normalised; without them it stays uint8, for models
    that normalise themselves (every ``hsrl.models.image`` encoder does).
    """

    size: int
    channels: int = 3
    resize: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.size < 1 or self.channels not in (1, 3) or (self.resize is not None and self.resize < self.size):
            raise ValueError(f"bad image preprocessing {self}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")

    def to_array(self, image: Any) -> np.ndarray:
        """A PIL image to a ``(channels, size, size)`` array: uint8, or float32 normalised."""
        from PIL import Image

        picture = image.convert("L" if self.channels == 1 else "RGB")
        scale = (self.resize or self.size) / min(picture.size)
        width, height = max(1, round(picture.width * scale)), max(1, round(picture.height * scale))
        picture = picture.resize((width, height), Image.Resampling.BILINEAR)
        left, top = (picture.width - self.size) // 2, (picture.height - self.size) // 2
        picture = picture.crop((left, top, left + self.size, top + self.size))
        array = np.asarray(picture, dtype=np.uint8)
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        if self.mean is None or self.std is None:
            return np.ascontiguousarray(array)
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        return np.ascontiguousarray((array.astype(np.float32) / 255.0 - mean) / std)


class ImageEncoder(Encoder):
    """A torch image model whose output rows are embeddings (L2-normalised here whatever it returns).

    Args:
        model: an ``nn.Module`` mapping a ``(n, c, h, w)`` batch (what ``preprocessing`` makes) to ``(n, d)``.
        name: the name clients may pass as ``model``.
        preprocessing: resize, crop and (optionally) normalisation.
        dim: the output dimension; measured with one blank image when not given.
        device: where the model runs.
    """

    modality = "image"

    def __init__(
        self, model: Any, name: str, preprocessing: ImagePreprocessing, *, dim: int | None = None, device: str = "cpu"
    ) -> None:
        import torch

        self._torch = torch
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
        return {**super().describe(), "image_size": p.size, "channels": p.channels}


def load_image_encoder(path: str | Path, *, device: str | None = None, name: str | None = None) -> ImageEncoder:
    """Load an image model folder (``model.safetensors`` + ``hsrl_config.json``) with ``hsrl.models.image``."""
    folder = Path(path)
    if not (folder / "hsrl_config.json").is_file():
        raise ValueError(f"image model folder {folder} has no hsrl_config.json")
    try:
        from hsrl.models import image as image_models
    except ImportError as error:
        raise ValueError(f"image models are not available in this install ({error})") from error
    device = device or "cpu"
    model = image_models.load(folder, map_location=device)
    recipe = image_models.load_preprocess(folder)
    # hsrl encoders take uint8 and normalise inside (their Normalize layer), so no mean/std here.
    preprocessing = ImagePreprocessing(size=recipe.size, channels=recipe.channels, resize=recipe.resize)
    encoder = ImageEncoder(model, name or folder.name, preprocessing, dim=getattr(model, "dim", None), device=device)
    encoder.created = int(folder.stat().st_mtime)
    return encoder
