"""Two towers into one sphere: an image encoder f and a text encoder g with projections to a shared dimension.

    f(image) = normalize(P_img · image_encoder(image)),    g(text) = normalize(P_txt · pool(transformer(text)))

The text tower is a sentence-transformers model whose projection is a ``Dense`` module followed by
``Normalize``, so its folder alone (``MODEL/text``) is an ordinary sentence-transformers model that embeds
into the shared space. The image tower is an hsrl image encoder (``MODEL/image``) plus a linear projection.
Either tower can be locked (frozen, LiT-style: Zhai et al. 2022, "LiT: Zero-Shot Transfer with Locked-image
text Tuning"), unlocked, or partly unlocked (its last N layers train); projections always train.

A fully locked text tower's pooled outputs never change, so they are memoised by caption: with captions
drawn from a finite set (templates x phrasings) the transformer runs once per distinct caption, not once
per step.

The model also carries the learnable logit scale and bias of the CLIP/SigLIP objectives
(:mod:`hsrl.losses_crossmodal`), so they are trained, checkpointed and saved with it.

Folder (:func:`save_two_tower` / :func:`load_two_tower`)::

    MODEL/hsrl_multimodal.json      format, shared dim, locks, logit scale and bias
    MODEL/image/                    hsrl image model folder (hsrl.models.image.load)
    MODEL/image_projection.safetensors
    MODEL/text/                     sentence-transformers folder (projection included)
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from hsrl.checkpoints import publish_folder
from hsrl.models import image as image_models

__all__ = [
    "MULTIMODAL_CONFIG",
    "ImageTower",
    "TextTower",
    "TwoTowerModel",
    "is_two_tower_folder",
    "load_two_tower",
    "save_two_tower",
]

MULTIMODAL_CONFIG = "hsrl_multimodal.json"
FORMAT = "hsrl-two-tower"
PROJECTION_FILE = "image_projection.safetensors"


def _set_trainable(modules: Sequence[nn.Module], trainable: bool) -> None:
    for module in modules:
        for parameter in module.parameters():
            parameter.requires_grad_(trainable)


# --------------------------------------------------------------------------- image tower


class ImageTower(nn.Module):
    """An hsrl image encoder (uint8 in, unit rows out) and a linear projection to the shared dimension.

    Args:
        encoder: an :class:`hsrl.models.image.ImageEncoder`.
        dim: shared dimension; ``None`` keeps the encoder's output (no projection, the dims must then match).
        lock: freeze the encoder (its BatchNorm statistics too).
        unlocked_groups: with ``lock``, leave the last N blocks trainable.
    """

    def __init__(self, encoder: nn.Module, dim: int | None, *, lock: bool = False, unlocked_groups: int = 0) -> None:
        super().__init__()
        self.encoder = encoder
        self.projection = nn.Linear(encoder.dim, dim, bias=False) if dim is not None else nn.Identity()
        self.dim = dim if dim is not None else int(encoder.dim)
        self.lock, self.unlocked_groups = lock, unlocked_groups
        if lock:
            groups = self.groups()
            if not 0 <= unlocked_groups <= len(groups):
                raise ValueError(f"--lock-image-unlocked-groups must be 0..{len(groups)}, got {unlocked_groups}")
            _set_trainable([encoder], False)
            _set_trainable(groups[len(groups) - unlocked_groups :], True)

    def groups(self) -> list[nn.Module]:
        """The encoder's blocks, input to output (what ``unlocked_groups`` counts)."""
        blocks = getattr(self.encoder, "blocks", None)
        if isinstance(blocks, nn.ModuleDict):
            return list(blocks.values())
        return [m for name, m in self.encoder.named_children() if name != "normalize"]

    def train(self, mode: bool = True) -> ImageTower:
        super().train(mode)
        if self.lock and mode:  # frozen layers keep their BatchNorm statistics
            frozen = self.groups()[: len(self.groups()) - self.unlocked_groups]
            for module in frozen:
                module.eval()
        return self

    def forward(self, images: Tensor) -> Tensor:
        return F.normalize(self.projection(self.encoder(images)).float(), dim=1)


# --------------------------------------------------------------------------- text tower


class TextTower(nn.Module):
    """A sentence-transformers model ending in ``[Dense,] Normalize``; captions in, unit rows out.

    Args:
        encoder: the ``SentenceTransformer`` (e.g. from :func:`hsrl.models.text.build_text_encoder` with a
            ``projection_dim``).
        lock: freeze the transformer and pooling (the projection trains).
        unlocked_layers: with ``lock``, leave the last N transformer layers trainable.
    """

    def __init__(self, encoder: Any, *, lock: bool = True, unlocked_layers: int = 0) -> None:
        super().__init__()
        self.encoder = encoder
        self.lock, self.unlocked_layers = lock, unlocked_layers
        modules = list(encoder)
        self.base_modules = [m for m in modules if type(m).__name__ not in {"Dense", "Normalize"}]
        self.head_modules = modules[len(self.base_modules) :]
        self.dim = int(_output_dim(encoder))
        self._cache: dict[str, Tensor] = {}
        if lock:
            layers = self.layers()
            if not 0 <= unlocked_layers <= len(layers):
                raise ValueError(f"--lock-text-unlocked-layers must be 0..{len(layers)}, got {unlocked_layers}")
            _set_trainable(self.base_modules, False)
            _set_trainable(layers[len(layers) - unlocked_layers :], True)

    def layers(self) -> list[nn.Module]:
        """The transformer's layers, input to output (what ``unlocked_layers`` counts)."""
        auto = getattr(self.base_modules[0], "auto_model", None)
        encoder = getattr(auto, "encoder", None)
        layer = getattr(encoder, "layer", None)
        return list(layer) if layer is not None else list(self.base_modules)

    @property
    def cached(self) -> bool:
        """Whether the base's outputs are memoised (fully locked: they cannot change)."""
        return self.lock and self.unlocked_layers == 0

    def train(self, mode: bool = True) -> TextTower:
        super().train(mode)
        if self.lock and mode and self.unlocked_layers == 0:
            for module in self.base_modules:  # no dropout in a frozen base: its outputs are fixed
                module.eval()
        return self

    def _device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def _base(self, captions: Sequence[str]) -> Tensor:
        # sentence-transformers 5 renamed tokenize to preprocess (the old name warns).
        tokenize = getattr(self.encoder, "preprocess", None) or self.encoder.tokenize
        features = tokenize(list(captions))
        device = self._device()
        features = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in features.items()}
        for module in self.base_modules:
            features = module(features)
        return features["sentence_embedding"]

    def _cached_base(self, captions: Sequence[str], batch_size: int = 256) -> Tensor:
        missing = list(dict.fromkeys(c for c in captions if c not in self._cache))
        if missing:
            with torch.no_grad():
                for start in range(0, len(missing), batch_size):
                    chunk = missing[start : start + batch_size]
                    for caption, row in zip(chunk, self._base(chunk).float().cpu(), strict=True):
                        self._cache[caption] = row
        return torch.stack([self._cache[c] for c in captions]).to(self._device())

    def warm_cache(self, captions: Sequence[str]) -> None:
        """Embed ``captions`` with the locked base once, ahead of training."""
        if self.cached:
            self._cached_base(captions)

    def forward(self, captions: Sequence[str]) -> Tensor:
        base = self._cached_base(captions) if self.cached else self._base(captions)
        features = {"sentence_embedding": base}
        for module in self.head_modules:
            features = module(features)
        return F.normalize(features["sentence_embedding"].float(), dim=1)


def _output_dim(encoder: Any) -> int:
    get = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
    return int(get())


# --------------------------------------------------------------------------- both


class TwoTowerModel(nn.Module):
    """Image and text towers into one ``dim``-sphere, with the contrastive objectives' logit scale and bias.

    ``forward(images, captions)`` returns ``(f(images), g(captions))``, both ``(N, dim)`` unit rows.

    Args:
        image: the image tower.
        text: the text tower.
        logit_scale: initial CLIP/SigLIP scale ``1/τ`` (kept as its log, as CLIP does).
        logit_bias: initial SigLIP bias.
    """

    def __init__(self, image: ImageTower, text: TextTower, *, logit_scale: float = 10.0, logit_bias: float = -10.0):
        super().__init__()
        if image.dim != text.dim:
            raise ValueError(f"the image tower gives {image.dim}-d vectors and the text tower {text.dim}-d: give both "
                             "a projection to one shared dimension (--dim)")  # fmt: skip
        self.image, self.text = image, text
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(logit_bias)))

    @property
    def dim(self) -> int:
        return self.image.dim

    def forward(self, images: Tensor, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        return self.image(images), self.text(captions)

    def encode_images(self, images: Tensor, batch_size: int = 512) -> Tensor:
        """Unit rows for uint8 images, in eval mode and without gradients (float32, on the CPU)."""
        return _batched(self.image, images, batch_size)

    def encode_texts(self, captions: Sequence[str], batch_size: int = 256) -> Tensor:
        """Unit rows for captions, in eval mode and without gradients (float32, on the CPU)."""
        return _batched(self.text, list(captions), batch_size)


def _batched(tower: nn.Module, items: Any, batch_size: int) -> Tensor:
    was_training = tower.training
    tower.eval()
    device = next(tower.parameters()).device
    try:
        with torch.inference_mode():
            parts = [tower(items[i : i + batch_size].to(device) if isinstance(items, Tensor)
                           else items[i : i + batch_size]).float().cpu()
                     for i in range(0, len(items), batch_size)]  # fmt: skip
    finally:
        tower.train(was_training)
    return torch.cat(parts) if parts else torch.zeros(0, tower.dim)


# --------------------------------------------------------------------------- folders


def is_two_tower_folder(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / MULTIMODAL_CONFIG).is_file()


def save_two_tower(model: nn.Module, folder: str | os.PathLike[str]) -> Path:
    """Write the model folder (see the module docstring) atomically: a temporary sibling, then one rename."""
    while not isinstance(model, TwoTowerModel):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if model is None:
            raise ValueError("save_two_tower takes a TwoTowerModel")
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    image_models.save(model.image.encoder, tmp / "image")
    projection = model.image.projection
    weights = {"weight": projection.weight.detach().cpu().contiguous()} if isinstance(projection, nn.Linear) else {}
    save_file(weights, str(tmp / PROJECTION_FILE), metadata={"format": "pt"})
    model.text.encoder.save(str(tmp / "text"))
    config = {
        "format": FORMAT,
        "version": 1,
        "dim": model.dim,
        "image_projection": isinstance(projection, nn.Linear),
        "logit_scale": float(model.log_logit_scale.detach().exp()),
        "logit_bias": float(model.logit_bias.detach()),
        "modalities": ["image", "text"],
    }
    (tmp / MULTIMODAL_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    publish_folder(tmp, target)
    return target


def read_two_tower_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(folder) / MULTIMODAL_CONFIG
    if not path.is_file():
        raise ValueError(f"{folder} is not an hsrl multimodal model folder (no {MULTIMODAL_CONFIG})")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    if config.get("format") != FORMAT:
        raise ValueError(f"{path} does not describe an hsrl two-tower model (format {config.get('format')!r})")
    return config


def load_image_tower(folder: str | os.PathLike[str], *, device: str = "cpu") -> ImageTower:
    """Only the image tower of a saved model (what image export and the service need)."""
    config = read_two_tower_config(folder)
    encoder = image_models.load(Path(folder) / "image", map_location="cpu")
    tower = ImageTower(encoder, config["dim"] if config["image_projection"] else None)
    if config["image_projection"]:
        tower.projection.load_state_dict(load_file(str(Path(folder) / PROJECTION_FILE)))
    return tower.to(device).eval()


def load_text_tower(folder: str | os.PathLike[str], *, device: str = "cpu") -> Any:
    """Only the text tower of a saved model, as a plain ``SentenceTransformer`` (shared-space output)."""
    read_two_tower_config(folder)
    from hsrl.models.text import load_sentence_transformer

    return load_sentence_transformer(Path(folder) / "text", device=device)


def load_two_tower(folder: str | os.PathLike[str], *, device: str = "cpu") -> TwoTowerModel:
    """Rebuild the model :func:`save_two_tower` wrote (eval mode)."""
    config = read_two_tower_config(folder)
    text = TextTower(load_text_tower(folder, device=device), lock=False)
    model = TwoTowerModel(load_image_tower(folder, device=device), text, logit_scale=config["logit_scale"],
                          logit_bias=config["logit_bias"])  # fmt: skip
    return model.to(device).eval()
