"""The one model-folder contract: every command opens a model with :func:`open_model`, every recipe saves with
:func:`save_model`, so a folder one command writes, every other command opens.

    encoder = open_model("runs/stl10/model")      # a folder, a packaged name (minilm) or a Hub id (org/name)
    encoder.kind, encoder.modalities, encoder.dim  # "image", ("image",), 128
    rows = encoder.encode(["a.png", "b.png"])      # (2, 128) float32, every row of unit L2 norm

A model folder is one of the kinds in :data:`KINDS`, each a row of (how to recognise its folder, how to open
it, what it saves, how to save it):

* ``image``: ``model.safetensors`` + ``hsrl_config.json`` (``"format": "hsrl-image-encoder"``), rebuilt by
  :func:`hsrl.models.image.load`; its :class:`~hsrl.models.image.ImagePreprocess` (resize the shorter side,
  centre-crop, channels) is the one preprocessing training-time evaluation, export and the service share.
* ``two_tower``: an image–text model (``hsrl_multimodal.json``, ``image/``, ``text/``;
  :mod:`hsrl.models.two_tower`): both modalities into one space, ``encode(items, modality="image"|"text")``.
* ``text``: a sentence-transformers folder (``modules.json``; the Quick-Thought GRU included), opened by
  :func:`hsrl.models.text.load_sentence_transformer`; a bare 🤗 transformers folder is mean-pooled.

A new kind (e.g. a two-tower image–text model) is one more :class:`ModelKind` row: a ``detect`` that
recognises its folder from its files alone, an ``open`` that returns an :class:`Encoder`, and its ``save``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "KINDS",
    "Encoder",
    "ImageModel",
    "ModelKind",
    "TextModel",
    "TwoTowerEncoder",
    "local_model_folder",
    "model_kind",
    "open_model",
    "save_model",
]


class Encoder:
    """An opened model folder: what it is (``kind``, ``modalities``, ``dim``, ``preprocess``) and ``encode``.

    ``module`` is the underlying torch model (a ``SentenceTransformer``, an
    :class:`~hsrl.models.image.ImageEncoder`, ...) for code that needs more than embeddings (layer taps, training).
    """

    kind: str
    modalities: tuple[str, ...]
    dim: int
    path: Path
    module: Any
    #: the image preprocessing (:class:`hsrl.models.image.ImagePreprocess`); None for text-only models
    preprocess: Any = None

    def encode(self, items: Sequence[Any], *, modality: str | None = None, batch_size: int = 64) -> np.ndarray:
        """``(len(items), dim)`` float32 rows of unit L2 norm."""
        raise NotImplementedError

    def _modality(self, modality: str | None) -> str:
        if modality is None:
            if len(self.modalities) > 1:
                raise ValueError(f"{self.path} encodes {' and '.join(self.modalities)}: say which (modality=...)")
            return self.modalities[0]
        if modality not in self.modalities:
            raise ValueError(f"{self.path} is a {self.kind} model; it does not encode {modality}")
        return modality

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "modalities": list(self.modalities), "dim": self.dim, "path": str(self.path)}


def _unit_rows(rows: Any) -> np.ndarray:
    """float32 rows scaled to unit norm (the models already end in a normalisation; this removes rounding)."""
    array = np.asarray(rows, dtype=np.float32)
    return array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)


class TextModel(Encoder):
    """A sentence-transformers model: ``encode`` is ``model.encode(texts, normalize_embeddings=True)``."""

    kind = "text"
    modalities = ("text",)

    def __init__(self, module: Any, path: Path) -> None:
        self.module, self.path = module, path
        dimension = getattr(module, "get_embedding_dimension", None) or module.get_sentence_embedding_dimension
        self.dim = int(dimension())

    def encode(self, items: Sequence[Any], *, modality: str | None = None, batch_size: int = 64) -> np.ndarray:
        self._modality(modality)
        rows = self.module.encode(list(items), batch_size=batch_size, normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=False)  # fmt: skip
        return _unit_rows(rows)


class ImageModel(Encoder):
    """An hsrl image encoder: items are image paths or PIL images, preprocessed by the model's own recipe."""

    kind = "image"
    modalities = ("image",)

    def __init__(self, module: Any, path: Path, device: str) -> None:
        self.module, self.path, self.device = module.eval(), path, device
        self.preprocess = module.preprocess
        self.dim = int(module.dim)

    def encode(self, items: Sequence[Any], *, modality: str | None = None, batch_size: int = 64) -> np.ndarray:
        import torch

        self._modality(modality)
        parts = []
        for start in range(0, len(items), batch_size):
            batch = np.stack([self.preprocess.to_array(item) for item in items[start : start + batch_size]])
            with torch.inference_mode():
                parts.append(self.module(torch.from_numpy(batch).to(self.device)).float().cpu().numpy())
        return _unit_rows(np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32))


class TwoTowerEncoder(Encoder):
    """A two-tower folder opened by :func:`hsrl.models.folder.open_model`: kind ``two_tower``, both modalities.

    ``encode(items, modality="image")`` takes image paths or PIL images (the image tower's own preprocessing);
    ``modality="text"`` takes strings. Either way the rows are unit vectors of the shared space.
    """

    kind = "two_tower"
    modalities = ("image", "text")

    def __init__(self, model: Any, path: Path, device: str = "cpu") -> None:
        from hsrl.models.image import load_preprocess

        self.module, self.path, self.device = model.eval(), Path(path), device
        self.dim = int(model.dim)
        self.preprocess = load_preprocess(Path(path) / "image")

    def encode(self, items: Sequence[Any], *, modality: str | None = None, batch_size: int = 64) -> np.ndarray:
        import torch

        if self._modality(modality) == "text":
            rows = self.module.text.encoder.encode(list(items), batch_size=batch_size, normalize_embeddings=True,
                                                   convert_to_numpy=True, show_progress_bar=False)  # fmt: skip
        else:
            parts = []
            for start in range(0, len(items), batch_size):
                batch = np.stack([self.preprocess.to_array(item) for item in items[start : start + batch_size]])
                with torch.inference_mode():
                    parts.append(self.module.image(torch.from_numpy(batch).to(self.device)).float().cpu().numpy())
            rows = np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)
        return _unit_rows(rows)


# --------------------------------------------------------------------------- the kinds


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _is_image_folder(folder: Path) -> bool:
    from hsrl.models.image import CONFIG_FILE, FORMAT

    return _read_json(folder / CONFIG_FILE).get("format") == FORMAT


def _is_text_folder(folder: Path) -> bool:
    if (folder / "modules.json").is_file() or (folder / "config_sentence_transformers.json").is_file():
        return True
    return "model_type" in _read_json(folder / "config.json")  # a bare 🤗 transformers model


def _open_image(folder: Path, device: str) -> Encoder:
    from hsrl.models.image import load

    return ImageModel(load(folder, map_location=device), folder, device)


def _open_text(folder: Path, device: str) -> Encoder:
    from hsrl.models.text import build_text_encoder, load_sentence_transformer

    if (folder / "modules.json").is_file():
        return TextModel(load_sentence_transformer(folder, device=device), folder)
    return TextModel(build_text_encoder(str(folder), device=device), folder)  # mean pooling + normalisation


def _owns_image(model: Any) -> bool:
    from hsrl.models.image import ImageEncoder

    return isinstance(_unwrapped(model), ImageEncoder)


def _owns_text(model: Any) -> bool:
    from sentence_transformers import SentenceTransformer

    return isinstance(_unwrapped(model), SentenceTransformer)


def _save_image(model: Any, folder: Path) -> Path:
    from hsrl.models.image import save

    return save(model, folder)


def _save_text(model: Any, folder: Path) -> Path:
    from hsrl.models.text import save_text_encoder

    return save_text_encoder(_unwrapped(model), folder)


def _is_two_tower_folder(folder: Path) -> bool:
    return _read_json(folder / "hsrl_multimodal.json").get("format") == "hsrl-two-tower"


def _open_two_tower(folder: Path, device: str) -> Encoder:
    from hsrl.models.two_tower import load_two_tower

    return TwoTowerEncoder(load_two_tower(folder, device=device), folder, device)


def _owns_two_tower(model: Any) -> bool:
    from hsrl.models.two_tower import TwoTowerModel

    return isinstance(_unwrapped(model), TwoTowerModel)


def _save_two_tower(model: Any, folder: Path) -> Path:
    from hsrl.models.two_tower import save_two_tower

    return save_two_tower(model, folder)


def _unwrapped(model: Any) -> Any:
    """The model inside a DDP / compiled wrapper."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if inner is None or not hasattr(inner, "state_dict"):
            return model
        model = inner


@dataclass(frozen=True)
class ModelKind:
    """One kind of model folder: ``detect(folder)`` from its files alone, ``open(folder, device)``,
    ``owns(model)`` (a model in memory is this kind) and ``save(model, folder)`` (atomic)."""

    detect: Callable[[Path], bool]
    open: Callable[[Path, str], Encoder]
    owns: Callable[[Any], bool]
    save: Callable[[Any, Path], Path]
    description: str


#: Every kind of model folder hsrl reads and writes, tried in this order.
KINDS: dict[str, ModelKind] = {
    "image": ModelKind(
        _is_image_folder,
        _open_image,
        _owns_image,
        _save_image,
        "an hsrl image model folder (model.safetensors + hsrl_config.json)",
    ),
    "text": ModelKind(
        _is_text_folder, _open_text, _owns_text, _save_text, "a sentence-transformers folder (modules.json)"
    ),
    "two_tower": ModelKind(
        _is_two_tower_folder,
        _open_two_tower,
        _owns_two_tower,
        _save_two_tower,
        "an hsrl two-tower image-text folder (hsrl_multimodal.json, image/, text/)",
    ),
}


def local_model_folder(name: str | os.PathLike[str]) -> Path:
    """An existing path as is; a packaged name (``minilm``) or Hub id (``org/name``) resolved to its folder."""
    path = Path(name)
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"model {path}: not a folder")
        return path
    from hsrl.models.text import resolve_model_path  # packaged names and the Hub (offline: the cache only)

    return Path(resolve_model_path(str(name)))


def model_kind(folder: str | os.PathLike[str]) -> str:
    """The :data:`KINDS` name of a model folder; a one-line ``ValueError`` when it is none of them."""
    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"model {path}: no such folder")
    for name, kind in KINDS.items():
        if kind.detect(path):
            return name
    expected = "; or ".join(kind.description for kind in KINDS.values())
    raise ValueError(f"model {path}: not an hsrl model folder (expected {expected})")


def open_model(
    name: str | os.PathLike[str], *, device: str | None = None, backend: str = "torch", threads: int | None = None
) -> Encoder:
    """Open a model folder, a packaged name or a Hub id as an :class:`Encoder` (eval mode, on ``device``).

    ``backend`` (:data:`hsrl.backends.BACKENDS`) runs a text model on ONNX Runtime (``threads``: its intra-op
    threads), and an image model on ONNX Runtime too (``onnx``/``auto``: :mod:`hsrl.onnx_image`); the opened model's
    ``backend`` says what serves it. Two-tower models run on torch.

    Raises:
        ValueError: one line naming the folder and what is wrong (missing, not a model folder, unreadable,
            a backend that cannot serve it).
    """
    folder = local_model_folder(name)
    kind = model_kind(folder)
    if backend != "torch":
        from hsrl.backends import check_backend, load_text_model

        check_backend(backend)
        if kind == "image":
            from hsrl.onnx_image import load_image_model

            module, info = load_image_model(folder, backend, device=device, threads=threads)
            opened: Encoder = ImageModel(module, folder, device or "cpu")
        elif kind == "text":
            module, info = load_text_model(folder, backend, device=device, threads=threads)
            opened = TextModel(module, folder)
        else:
            raise ValueError(f"model {folder}: backend {backend!r} runs text and image models; {kind} models run "
                             "on torch")  # fmt: skip
        opened.backend = info
        return opened
    try:
        return KINDS[kind].open(folder, device or "cpu")
    except (FileNotFoundError, KeyError) as error:
        raise ValueError(f"model {folder}: an incomplete {kind} model folder ({error})") from None


def save_model(model: Any, folder: str | os.PathLike[str]) -> Path:
    """Write ``model`` as the folder of its kind (atomically: readers see the old folder or the new one)."""
    for kind in KINDS.values():
        if kind.owns(model):
            return kind.save(model, Path(folder))
    raise ValueError(f"save_model: no model-folder kind saves a {type(_unwrapped(model)).__name__}")
