"""Image encoders that end on the unit hypersphere, and their model folders.

* :class:`SmallAlexNet` (``small_alexnet``): the paper's STL-10 encoder, laid out as the official code
  (``SsnL/align_uniform``, after CMC's AlexNet): five conv blocks 96-192-384-384-192 (3×3 convs without
  bias, BatchNorm, ReLU; 3×3/2 max-pool after blocks 1, 2 and 5), fc6 and fc7 of 4096 (no bias,
  BatchNorm1d, ReLU), fc8 to 128 and L2 normalisation. Evaluation taps: ``conv5``, ``fc7``, ``output``
  (the paper: a linear classifier on fc7, 5-NN on the output).
* :class:`ResNetEncoder` (``resnet18``, ``resnet50``): torchvision's ResNet (``weights=None``) with the
  classifier replaced by a projection head (Linear-BN-ReLU-Linear, as SimCLR) and L2 normalisation; the
  CIFAR-style stem (3×3 stride-1 first conv, no max-pool) keeps 32 px images from shrinking to 1 px.
  Taps: ``layer4`` (spatial), ``pool`` (the 512/2048-d backbone feature), ``output``.

Every encoder starts with :class:`Normalize`: it takes uint8 images (or float in [0, 1]), checks the
channel count and applies the dataset's mean/std, so the loader ships uint8 and a saved model carries
its own preprocessing.

A model folder holds ``model.safetensors`` and ``hsrl_config.json``::

    save(model, "runs/stl10/model")           # both files written to a temporary folder, then renamed
    model = load("runs/stl10/model")          # the same architecture and weights, in eval mode
    pre = load_preprocess("runs/stl10/model")  # ImagePreprocess(size=64, channels=3, mean=..., std=...)

Every encoder is also a ``huggingface_hub.PyTorchModelHubMixin``: ``model.save_pretrained(folder)`` writes
the same two files (plus the mixin's ``config.json`` and a card), ``ImageEncoder.from_pretrained(folder or
"org/name")`` rebuilds any architecture from ``hsrl_config.json`` (a folder from :func:`save` too), and
``model.push_to_hub("org/name")`` uploads it.

``hsrl_config.json`` is plain JSON: ``{"format": "hsrl-image-encoder", "architecture": "small_alexnet",
"kwargs": {...}, "preprocess": {"size", "channels", "mean", "std", "resize"}, "dim", "layers"}``. To embed
an image elsewhere: resize its shorter side to ``resize``, centre-crop ``size``, convert to ``channels``,
and pass the uint8 ``(N, C, size, size)`` batch to the model (it normalises).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from hsrl.checkpoints import default_mode, publish_folder

__all__ = [
    "CONFIG_FILE",
    "ENCODERS",
    "WEIGHTS_FILE",
    "ImageEncoder",
    "ImagePreprocess",
    "Normalize",
    "ResNetEncoder",
    "SmallAlexNet",
    "SmallCNN",
    "SmallResNet",
    "build_encoder",
    "eval_view",
    "headline_layers",
    "load",
    "load_preprocess",
    "resnet18",
    "resnet50",
    "save",
    "small_alexnet",
    "small_cnn",
    "small_resnet",
]

CONFIG_FILE = "hsrl_config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "hsrl-image-encoder"


@dataclass(frozen=True)
class ImagePreprocess:
    """What an image must look like before the encoder: ``size``×``size``, ``channels``, and the
    statistics the encoder's :class:`Normalize` applies. ``resize``: the shorter side before the
    centre crop at evaluation time."""

    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int

    def to_array(self, image: Any) -> np.ndarray:
        """An image file path or PIL image as the encoder's uint8 ``(channels, size, size)`` input: converted to
        ``channels``, then :func:`eval_view` (export, the service and ``open_model`` all call this).

        Raises:
            ValueError: the file is not a readable image.
        """
        from PIL import Image, UnidentifiedImageError

        try:
            if isinstance(image, str | os.PathLike):
                with Image.open(image) as opened:
                    picture = opened.convert("L" if self.channels == 1 else "RGB")
            else:
                picture = image.convert("L" if self.channels == 1 else "RGB")
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"image {image}: not a readable image ({error})") from None
        array = np.array(picture, dtype=np.uint8)  # a writable copy: torch shares its memory
        pixels = torch.from_numpy(array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1)))
        return np.ascontiguousarray(eval_view(pixels, self.resize, self.size).numpy())


def eval_view(images: Tensor, resize: int, size: int) -> Tensor:
    """The evaluation view of uint8 ``(..., C, H, W)`` images: the shorter side resized to ``resize`` (bilinear,
    antialiased), then a centre crop of ``size``. The one definition training-time evaluation
    (:func:`hsrl.data.images.eval_transform`), export and serving share."""
    from torchvision.transforms.v2 import functional as TF

    return TF.center_crop(TF.resize(images, [resize], antialias=True), [size, size])


class Normalize(nn.Module):
    r"""uint8 (or float in [0, 1]) images to :math:`(x/255 - \mu_c)/\sigma_c`, checking the channels."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], channels_last: bool = False) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError("mean and std need one entry per channel")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.channels_last = channels_last

    @property
    def channels(self) -> int:
        return self.mean.shape[1]

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            kinds = {1: "greyscale (1 channel)", 3: "colour (3 channels)"}
            got = kinds.get(x.shape[1], f"{x.shape[1]} channels") if x.ndim == 4 else f"shape {tuple(x.shape)}"
            raise ValueError(
                f"this encoder takes {kinds.get(self.channels, self.channels)} images (N, C, H, W), got {got}"
            )
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


class ImageEncoder(
    nn.Module, PyTorchModelHubMixin, library_name="hsrl", paper_url="https://arxiv.org/abs/2005.10242",
    pipeline_tag="image-feature-extraction", tags=["hsrl", "alignment-uniformity"],
):  # fmt: skip
    """Base: ``forward(x)`` is the L2-normalised output; ``forward_features(x, layer)`` any tap.

    Subclasses set ``layers`` (tap names, the last is ``"output"``), ``config`` (the constructor's
    keyword arguments, JSON-able) and ``preprocess``. ``save_pretrained``/``from_pretrained``/
    ``push_to_hub`` (``PyTorchModelHubMixin``) read and write hsrl's folder contract.
    """

    layers: tuple[str, ...] = ("output",)
    architecture: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.config: dict[str, Any] = {}

    @property
    def preprocess(self) -> ImagePreprocess:
        c = self.config
        return ImagePreprocess(c["image_size"], c["in_channels"], tuple(c["mean"]), tuple(c["std"]), c["resize"])

    @property
    def dim(self) -> int:
        return int(self.config["dim"])

    def _check_layer(self, layer: str) -> None:
        if layer not in self.layers:
            raise ValueError(f"{self.architecture} has no layer {layer!r}; choose from {', '.join(self.layers)}")

    def forward_taps(self, x: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
        """The activations at every layer in ``layers`` from one forward pass."""
        raise NotImplementedError

    def forward_features(self, x: Tensor, layer: str = "output") -> Tensor:
        """The activations at ``layer`` (conv taps keep ``(N, C, H, W)``); ``"output"`` is L2-normalised."""
        return self.forward_taps(x, [layer])[layer]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x, "output")

    def _save_pretrained(self, save_directory: Path) -> None:
        """The mixin's hook: hsrl's ``model.safetensors`` + ``hsrl_config.json``, so :func:`load` opens it."""
        _write_files(self, Path(save_directory))

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | Path, *, force_download: bool = False,
        token: str | bool | None = None, cache_dir: str | Path | None = None, local_files_only: bool = False,
        revision: str | None = None, map_location: str = "cpu", **model_kwargs: Any,
    ) -> ImageEncoder:  # fmt: skip
        """A folder or Hub repository (``org/name``) with hsrl's two files, as the mixin's ``from_pretrained``.

        ``hsrl_config.json`` alone describes the encoder, so the mixin's ``config.json`` is neither needed
        nor read (a folder from :func:`save` has none). Offline, a Hub id comes from the local cache.
        """
        return cls._from_pretrained(
            model_id=str(pretrained_model_name_or_path), revision=revision, cache_dir=cache_dir,
            force_download=force_download, local_files_only=local_files_only, token=token, map_location=map_location,
        )  # fmt: skip

    @classmethod
    def _from_pretrained(
        cls, *, model_id: str, revision: str | None, cache_dir: str | Path | None, force_download: bool,
        local_files_only: bool, token: str | bool | None, map_location: str = "cpu", strict: bool = False,
        **model_kwargs: Any,
    ) -> ImageEncoder:  # fmt: skip
        """The mixin's hook: a local folder or a Hub repository holding hsrl's two files, rebuilt by :func:`load`
        (whatever the architecture; ``model_kwargs`` from the mixin's ``config.json`` are not needed)."""
        folder = model_id
        if not os.path.isdir(model_id):
            from huggingface_hub import snapshot_download

            folder = snapshot_download(
                repo_id=model_id, revision=revision, cache_dir=cache_dir, force_download=force_download,
                local_files_only=local_files_only, token=token, allow_patterns=[CONFIG_FILE, WEIGHTS_FILE],
            )  # fmt: skip
        model = load(folder, map_location=map_location)
        if not isinstance(model, cls):
            raise ValueError(f"{model_id} holds a {model.architecture} encoder, not a {cls.__name__}")
        return model


def _common_config(
    in_channels: int, image_size: int, dim: int, mean: tuple[float, ...] | None, std: tuple[float, ...] | None,
    resize: int | None,
) -> dict[str, Any]:  # fmt: skip
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    mean = tuple(mean) if mean is not None else (0.5,) * in_channels
    std = tuple(std) if std is not None else (0.25,) * in_channels
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(f"mean/std need {in_channels} entries, got {len(mean)}/{len(std)}")
    return {
        "in_channels": in_channels, "image_size": image_size, "dim": dim, "mean": list(mean), "std": list(std),
        "resize": resize or image_size,
    }  # fmt: skip


# --------------------------------------------------------------------------- SmallAlexNet


def _pooled(size: int) -> int:
    """Side after a 3×3 stride-2 max-pool without padding."""
    return (size - 3) // 2 + 1


class SmallAlexNet(ImageEncoder):
    """The paper's STL-10 encoder (see the module docstring); ``width`` scales every layer (1 = the paper).

    Args:
        in_channels: 3 (colour) or 1 (greyscale).
        image_size: input side (64 in the paper); at least 15, so three pools leave a pixel.
        dim: output dimension (128).
        width: multiplier of the conv channels and fc widths (for small CPU runs).
        fc_dim: width of fc6/fc7 before ``width`` (4096).
        mean: per-channel mean for :class:`Normalize`.
        std: per-channel std for :class:`Normalize`.
        resize: evaluation resize before the centre crop (recorded for preprocessing).
        channels_last: run convolutions in channels-last memory format.
    """

    layers = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "output")
    architecture = "small_alexnet"

    def __init__(
        self, in_channels: int = 3, image_size: int = 64, dim: int = 128, width: float = 1.0, fc_dim: int = 4096,
        mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None, resize: int | None = None,
        channels_last: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.config = {
            **_common_config(in_channels, image_size, dim, mean, std, resize),
            "width": width, "fc_dim": fc_dim, "channels_last": channels_last,
        }  # fmt: skip
        final = _pooled(_pooled(_pooled(image_size)))
        if final < 1:
            raise ValueError(f"small_alexnet needs images of at least 15 px, got {image_size}")
        c1, c2, c3, c4, c5 = (max(1, round(c * width)) for c in (96, 192, 384, 384, 192))
        fc = max(1, round(fc_dim * width))

        def conv(cin: int, cout: int, pool: bool) -> nn.Sequential:
            parts: list[nn.Module] = [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(True),
            ]
            return nn.Sequential(*parts, nn.MaxPool2d(3, 2)) if pool else nn.Sequential(*parts)

        self.normalize = Normalize(tuple(self.config["mean"]), tuple(self.config["std"]), channels_last)
        self.blocks = nn.ModuleDict({
            "conv1": conv(in_channels, c1, True),
            "conv2": conv(c1, c2, True),
            "conv3": conv(c2, c3, False),
            "conv4": conv(c3, c4, False),
            "conv5": conv(c4, c5, True),
            "fc6": nn.Sequential(nn.Flatten(), nn.Linear(c5 * final * final, fc, bias=False), nn.BatchNorm1d(fc),
                                 nn.ReLU(True)),
            "fc7": nn.Sequential(nn.Linear(fc, fc, bias=False), nn.BatchNorm1d(fc), nn.ReLU(True)),
            "output": nn.Linear(fc, dim),
        })  # fmt: skip
        self._init_weights()
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def _init_weights(self) -> None:
        # As the official code: N(0, 0.02) linear weights, unit/zero BatchNorm; convs keep PyTorch's default.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_taps(self, x: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
        """Activations after each block named in ``layers``; the forward stops at the deepest one."""
        for layer in layers:
            self._check_layer(layer)
        deepest = max(self.layers.index(layer) for layer in layers)
        taps: dict[str, Tensor] = {}
        x = self.normalize(x)
        for name, block in list(self.blocks.items())[: deepest + 1]:
            x = block(x)
            if name in layers:
                taps[name] = F.normalize(x.float(), dim=1) if name == "output" else x
        return taps


# --------------------------------------------------------------------------- ResNets


class ResNetEncoder(ImageEncoder):
    """torchvision's ResNet-18/50 (random init), a projection head and L2 normalisation.

    Args:
        depth: 18 or 50.
        in_channels: 3 or 1.
        image_size: input side (recorded for preprocessing; any size works).
        dim: output dimension.
        cifar_stem: 3×3 stride-1 first conv and no max-pool (for 32 px images).
        hidden_dim: width of the projection head's hidden layer (default: the backbone's width).
        mean: per-channel mean for :class:`Normalize`.
        std: per-channel std for :class:`Normalize`.
        resize: evaluation resize (recorded for preprocessing).
        channels_last: channels-last memory format.
    """

    layers = ("layer4", "pool", "output")

    def __init__(
        self, depth: int = 18, in_channels: int = 3, image_size: int = 32, dim: int = 128, cifar_stem: bool = True,
        hidden_dim: int | None = None, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
        resize: int | None = None, channels_last: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        import torchvision

        if depth not in (18, 50):
            raise ValueError(f"depth must be 18 or 50, got {depth}")
        self.architecture = f"resnet{depth}"
        backbone = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        if cifar_stem:
            backbone.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            backbone.maxpool = nn.Identity()
        elif in_channels != 3:
            backbone.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        features = backbone.fc.in_features
        backbone.fc = nn.Identity()
        hidden = hidden_dim or features
        self.config = {
            **_common_config(in_channels, image_size, dim, mean, std, resize),
            "depth": depth, "cifar_stem": cifar_stem, "hidden_dim": hidden, "channels_last": channels_last,
        }  # fmt: skip
        self.normalize = Normalize(tuple(self.config["mean"]), tuple(self.config["std"]), channels_last)
        self.backbone = backbone
        self.head = nn.Sequential(
            nn.Linear(features, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(True), nn.Linear(hidden, dim)
        )
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward_taps(self, x: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
        """``layer4``: the last stage's ``(N, C, h, w)`` map; ``pool``: its global average; ``output``:
        the L2-normalised projection."""
        for layer in layers:
            self._check_layer(layer)
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(self.normalize(x)))))
        x = b.layer4(b.layer3(b.layer2(b.layer1(x))))
        taps = {"layer4": x} if "layer4" in layers else {}
        if "pool" in layers or "output" in layers:
            pooled = torch.flatten(b.avgpool(x), 1)
            if "pool" in layers:
                taps["pool"] = pooled
            if "output" in layers:
                taps["output"] = F.normalize(self.head(pooled).float(), dim=1)
        return taps


# --------------------------------------------------------------------------- a small CNN for 28 px images


class SmallCNN(ImageEncoder):
    """Two conv blocks and a two-layer head for small greyscale images on a CPU: the quick start's encoder and the
    one every ``hsrl reproduce`` experiment trains.

    Args:
        in_channels: 1 (greyscale) or 3.
        image_size: input side (28 for Fashion-MNIST); a multiple of 4.
        dim: output dimension.
        width: channels of the first conv (the second has twice as many).
        hidden: width of the head's hidden layer.
        downsample: ``"pool"``: 3×3 convs each followed by a 2×2 max-pool (the quick start);
            ``"stride"``: 3×3 stride-2 convs, about 4× cheaper (reproduce's sweeps).
        mean, std: per-channel statistics for :class:`Normalize` (default 0 and 1: pixels in [0, 1]).
        resize: evaluation resize before the centre crop.
    """

    layers = ("features", "output")
    architecture = "small_cnn"

    def __init__(
        self, in_channels: int = 1, image_size: int = 28, dim: int = 64, width: int = 32, hidden: int = 256,
        downsample: str = "pool", mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
        resize: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        if downsample not in ("pool", "stride"):
            raise ValueError(f"downsample must be pool or stride, got {downsample!r}")
        if image_size % 4:
            raise ValueError(f"small_cnn needs an image side divisible by 4, got {image_size}")
        mean = (0.0,) * in_channels if mean is None else mean
        std = (1.0,) * in_channels if std is None else std
        self.config = {
            **_common_config(in_channels, image_size, dim, mean, std, resize),
            "width": width, "hidden": hidden, "downsample": downsample,
        }  # fmt: skip
        self.normalize = Normalize(tuple(self.config["mean"]), tuple(self.config["std"]))

        def block(cin: int, cout: int) -> list[nn.Module]:
            if downsample == "stride":
                return [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]

        side = image_size // 4
        self.features = nn.Sequential(
            *block(in_channels, width), *block(width, 2 * width),
            nn.Flatten(), nn.Linear(2 * width * side * side, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(hidden, dim)

    def forward_taps(self, x: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
        """``features``: the head's ``hidden``-wide input; ``output``: the L2-normalised embedding."""
        for layer in layers:
            self._check_layer(layer)
        features = self.features(self.normalize(x))
        taps = {"features": features} if "features" in layers else {}
        if "output" in layers:
            taps["output"] = F.normalize(self.head(features), dim=1)
        return taps


# --------------------------------------------------------------------------- builders, save and load


# --------------------------------------------------------------------------- a small ResNet for small images


class _BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with a residual connection (a 1×1 conv-BN one when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class SmallResNet(ImageEncoder):
    """A ResNet sized for 28–32 px images on a CPU budget: a 3×3 stem (stride 2 by default), stages of basic
    blocks (the first block of every stage after the first halves the side), global average pooling, and a
    projection head (Linear-BN-ReLU-Linear, as SimCLR) to ``dim`` with L2 normalisation.

    With the defaults (widths 32-64-128, one block per stage, stem stride 2: 28 → 14 → 7 → 4 px) a 28 px
    greyscale image costs about 14 M multiply-adds; with channels-last a 2-core CPU trains on about 1,000
    image pairs a second (stem stride 1: 4× slower), so it sees ten epochs of
    Fashion-MNIST in ten minutes. Taps: ``stage1`` … ``stageN`` (spatial maps, flattened for k-NN), ``pool``
    (their global average), ``output``. The headline k-NN layer is ``stage2`` (the 64 × 7 × 7 map): on
    Fashion-MNIST, where raw pixels alone reach 0.858 5-NN, the layout of a garment matters and the pooled
    features throw it away (``benchmarks/results/fashion_mnist_ablation.md``).

    Args:
        in_channels: 1 or 3.
        image_size: input side (recorded for preprocessing; any size works).
        dim: output dimension.
        widths: channels of each stage.
        blocks: basic blocks per stage.
        stem_stride: 2 halves the side in the stem already (a quarter of the first stage's cost).
        hidden_dim: the projection head's hidden width (default: twice the last stage's width).
        head_grid: what the projection head sees: 1 (default) the last map's global average; g > 1 the map
            average-pooled to a g × g grid and flattened (``C·g²`` inputs), so the output keeps the coarse
            layout that global pooling throws away. The ``pool`` tap is the global average either way.
        mean: per-channel mean for :class:`Normalize`.
        std: per-channel std for :class:`Normalize`.
        resize: evaluation resize (recorded for preprocessing).
        channels_last: channels-last memory format.
    """

    architecture = "small_resnet"

    def __init__(
        self, in_channels: int = 1, image_size: int = 28, dim: int = 128, widths: Sequence[int] = (32, 64, 128),
        blocks: Sequence[int] = (1, 1, 1), stem_stride: int = 2, hidden_dim: int | None = None, head_grid: int = 1,
        mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None, resize: int | None = None,
        channels_last: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        widths, blocks = [int(w) for w in widths], [int(b) for b in blocks]
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        if not widths or len(widths) != len(blocks) or min(widths) < 1 or min(blocks) < 1:
            raise ValueError(f"small_resnet needs one width and one block count >= 1 per stage, got {widths}, {blocks}")
        if int(head_grid) < 1:
            raise ValueError(f"head_grid must be >= 1, got {head_grid}")
        hidden, head_grid = hidden_dim or 2 * widths[-1], int(head_grid)
        self.config = {
            **_common_config(in_channels, image_size, dim, mean, std, resize),
            "widths": widths, "blocks": blocks, "stem_stride": stem_stride, "hidden_dim": hidden,
            "head_grid": head_grid, "channels_last": channels_last,
        }  # fmt: skip
        self.layers = (*(f"stage{i + 1}" for i in range(len(widths))), "pool", "output")
        self.normalize = Normalize(tuple(self.config["mean"]), tuple(self.config["std"]), channels_last)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, stem_stride, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(True)
        )
        stages, cin = [], widths[0]
        for i, (width, count) in enumerate(zip(widths, blocks, strict=True)):
            stage = [_BasicBlock(cin if j == 0 else width, width, 2 if i > 0 and j == 0 else 1) for j in range(count)]
            stages.append(nn.Sequential(*stage))
            cin = width
        self.stages = nn.ModuleList(stages)
        self.head_grid = head_grid
        self.head = nn.Sequential(
            nn.Linear(cin * head_grid**2, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(True),
            nn.Linear(hidden, dim),
        )
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward_taps(self, x: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
        """``stageK``: that stage's ``(N, C, h, w)`` map; ``pool``: the last map's global average;
        ``output``: the L2-normalised projection. The forward stops at the deepest tap asked for."""
        for layer in layers:
            self._check_layer(layer)
        deepest = max(self.layers.index(layer) for layer in layers)
        taps: dict[str, Tensor] = {}
        x = self.stem(self.normalize(x))
        for i, stage in enumerate(self.stages[: deepest + 1]):
            x = stage(x)
            if f"stage{i + 1}" in layers:
                taps[f"stage{i + 1}"] = x
        if deepest >= len(self.stages):
            pooled = x.mean(dim=(2, 3))
            if "pool" in layers:
                taps["pool"] = pooled
            if "output" in layers:
                # adaptive pooling makes the grid's size independent of the input's side
                head_input = pooled if self.head_grid == 1 else F.adaptive_avg_pool2d(x, self.head_grid).flatten(1)
                taps["output"] = F.normalize(self.head(head_input).float(), dim=1)
        return taps


def small_resnet(**kwargs: Any) -> SmallResNet:
    return SmallResNet(**kwargs)


def small_alexnet(**kwargs: Any) -> SmallAlexNet:
    return SmallAlexNet(**kwargs)


def small_cnn(**kwargs: Any) -> SmallCNN:
    return SmallCNN(**kwargs)


def resnet18(**kwargs: Any) -> ResNetEncoder:
    return ResNetEncoder(depth=18, **kwargs)


def resnet50(**kwargs: Any) -> ResNetEncoder:
    return ResNetEncoder(depth=50, **kwargs)


ENCODERS: dict[str, Callable[..., ImageEncoder]] = {
    "small_alexnet": small_alexnet,
    "small_resnet": small_resnet,
    "small_cnn": small_cnn,
    "resnet18": resnet18,
    "resnet50": resnet50,
}

#: Evaluation taps by architecture: (the paper's linear-probe layer, the k-NN layer).
DEFAULT_EVAL_LAYERS: dict[str, tuple[str, str]] = {
    "small_alexnet": ("fc7", "output"),
    "small_resnet": ("stage2", "stage2"),
    "small_cnn": ("features", "output"),
    "resnet18": ("pool", "output"),
    "resnet50": ("pool", "output"),
}


def headline_layers(architecture: str, evaluated: Sequence[str]) -> tuple[str, str]:
    """The (linear-probe, k-NN) layers a run reports as its headline, among the ``evaluated`` layers.

    The paper's taps (:data:`DEFAULT_EVAL_LAYERS`) when they were evaluated; otherwise the first evaluated
    layer stands in for the linear tap and the last for the k-NN tap (so ``--eval-layers conv5`` alone reports
    conv5 for both, rather than failing on a layer that was never computed).
    """
    if not evaluated:
        raise ValueError("no layers were evaluated")
    linear, knn = DEFAULT_EVAL_LAYERS[architecture]
    return (linear if linear in evaluated else evaluated[0], knn if knn in evaluated else evaluated[-1])


def build_encoder(name: str, *, compile: bool = False, **kwargs: Any) -> ImageEncoder:
    """An encoder by name (:data:`ENCODERS`); ``compile=True`` compiles it in place (``nn.Module.compile``,
    so the class, its state-dict keys and :func:`save` are unchanged)."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose from {', '.join(ENCODERS)}")
    model = ENCODERS[name](**kwargs)
    if compile:
        model.compile()
    return model


def _unwrap(model: nn.Module) -> ImageEncoder:
    while not isinstance(model, ImageEncoder):
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if inner is None:
            raise ValueError(f"save() takes an hsrl image encoder, got {type(model).__name__}")
        model = inner
    return model


def save(model: nn.Module, folder: str | os.PathLike[str]) -> Path:
    """Write ``model.safetensors`` and ``hsrl_config.json`` to ``folder``, atomically.

    Both files go to a hidden temporary sibling folder, which is flushed and renamed into place: readers
    see the old folder or the new one, never weights without their config.
    """
    encoder = _unwrap(model)
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    _write_files(encoder, tmp)
    publish_folder(tmp, target)
    return target


def _write_files(encoder: ImageEncoder, folder: Path) -> None:
    """``model.safetensors`` and ``hsrl_config.json`` of ``encoder`` into the existing ``folder``."""
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    config = {
        "format": FORMAT,
        "version": 1,
        "architecture": encoder.architecture,
        "kwargs": {k: v for k, v in encoder.config.items() if k not in ("depth",)},
        "preprocess": asdict(encoder.preprocess),
        "dim": encoder.dim,
        "layers": list(encoder.layers),
    }
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        os.chmod(folder / name, default_mode(folder=False))  # the user's umask, not safetensors' 0600


def _read_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not an hsrl image model folder (no {CONFIG_FILE})")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    if config.get("format") != FORMAT or config.get("architecture") not in ENCODERS:
        raise ValueError(f"{path} does not describe an hsrl image encoder (format {config.get('format')!r})")
    return config


def load(folder: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> ImageEncoder:
    """Rebuild the encoder saved by :func:`save` in ``folder`` (eval mode, on ``map_location``)."""
    config = _read_config(folder)
    weights = Path(folder) / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{folder} has no {WEIGHTS_FILE}")
    model = ENCODERS[config["architecture"]](**config["kwargs"])
    model.load_state_dict(load_file(str(weights), device="cpu"))
    return model.to(map_location).eval()


def load_preprocess(folder: str | os.PathLike[str]) -> ImagePreprocess:
    """The preprocessing of a saved encoder (size, channels, mean/std, resize), without building it."""
    p = _read_config(folder)["preprocess"]
    return ImagePreprocess(int(p["size"]), int(p["channels"]), tuple(p["mean"]), tuple(p["std"]), int(p["resize"]))
