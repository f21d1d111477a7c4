"""Image datasets and two-view augmentation.

Datasets (:func:`open_images`; ``split`` is ``"pretrain"``, ``"train"`` or ``"test"``):

====================  ==========================================================================
``stl10``             torchvision's STL-10; ``pretrain`` = train + unlabeled (105k), the paper's split
``cifar10``           torchvision's CIFAR-10 (``cifar100``: CIFAR-100, fine labels)
``fashion-mnist``     the idx files of Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/
                      fashion-mnist``; ``HSRL_FASHION_MNIST_DIR`` or ``root=`` point elsewhere)
``imagefolder:PATH``  ``PATH/CLASS/*.png|jpg|...``, or ``PATH/train/CLASS/...`` + ``PATH/test/CLASS/...``
``hf:NAME``, a name   any 🤗 ``datasets`` image dataset by hub name, or a local folder (``save_to_disk``
or a local path       output or data files); the image and label columns are found from the features
====================  ==========================================================================

torchvision's downloaders fetch STL-10/CIFAR into ``root`` (``--data-root``, ``HSRL_DATA_DIR``, default
``~/.cache/hsrl/datasets``) when a user is online; offline (``HF_DATASETS_OFFLINE=1``, ``HF_HUB_OFFLINE=1``
or ``HSRL_OFFLINE=1``) a missing dataset raises :class:`FileNotFoundError` at once, with one line that says
what to do. A source without a test split (an unsplit image folder, a one-split 🤗 dataset) is split 80/20
by a fixed permutation (:data:`HOLDOUT_FRACTION`), the same for every run.

Every source yields ``(uint8 tensor (C, H, W), label)`` with ``label = -1`` when unknown. An image that
cannot be decoded is skipped with a warning and counted (:attr:`ImageSource.skipped`): the item is replaced
by the next readable one, so a corrupt file never stops an epoch.

Augmentation (:class:`TwoViewDataset`) is the paper's STL-10 recipe, RandomResizedCrop(64, scale
(0.08, 1)), horizontal flip, ColorJitter(0.4, 0.4, 0.4, 0.4), RandomGrayscale(0.2), on uint8 tensors with
torchvision's transforms v2 inside the loader's workers. Views stay uint8 (a quarter of the bytes to copy
and pin); normalisation by the dataset's mean/std is the encoder's first module
(:class:`hsrl.models.image.Normalize`), so the statistics travel with the saved model. ``dtype="float32"``
normalises in the loader instead, for other encoders.

**Deterministic views, for exact resume.** The two views of item ``i`` in epoch ``e`` are drawn from the
CPU generator seeded with ``mix(seed, e, i)`` inside ``torch.random.fork_rng``: they depend on nothing
else, not on the worker that made them, the number of workers, the batch or the global random state, so
a resumed run sees exactly the views of an uninterrupted one. The dataset learns the epoch through
:meth:`TwoViewDataset.set_epoch`, which writes a one-element tensor in shared memory that the (persistent)
workers read; :func:`make_view_loader` wires the loader's ``set_epoch`` (what :func:`hsrl.training.fit`
calls each epoch) to it.

The Fashion-MNIST reader and :func:`random_views` (batched augmentation on the device, drawing from the
global random state) are what ``recipes/quickstart.py`` uses.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import gzip
import math
import os
import struct
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "DATASET_DEFAULTS",
    "FASHION_MNIST_CLASSES",
    "HOLDOUT_FRACTION",
    "AugmentConfig",
    "BatchedTwoViews",
    "EvalImages",
    "HFImageSource",
    "ImageFolderSource",
    "ImageSource",
    "ImageSplit",
    "TensorImageSource",
    "TwoViewDataset",
    "augment_defaults",
    "batch_views",
    "check_channels",
    "dataset_kind",
    "eval_transform",
    "load_eval_split",
    "make_view_loader",
    "open_images",
    "random_views",
    "read_fashion_mnist",
    "two_view_dataset",
    "view_transform",
]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
#: Share of a test-less source held out as its test split (by a fixed permutation).
HOLDOUT_FRACTION = 0.2
Split = Literal["pretrain", "train", "test"]


# --------------------------------------------------------------------------- Fashion-MNIST (Debian files)


@dataclass(frozen=True)
class ImageSplit:
    """``images``: uint8 ``(N, C, H, W)``; ``labels``: int64 ``(N,)``."""

    images: Tensor
    labels: Tensor


def _read_idx(path: Path, magic: int, header_ints: int) -> tuple[tuple[int, ...], bytes]:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    values = struct.unpack(f">{1 + header_ints}I", data[: 4 * (1 + header_ints)])
    if values[0] != magic:
        raise ValueError(f"{path} is not an idx file of the expected kind (magic {values[0]:#x})")
    return values[1:], data[4 * (1 + header_ints) :]


def read_fashion_mnist(split: str = "train", root: str | os.PathLike[str] | None = None) -> ImageSplit:
    """Read Fashion-MNIST's ``train`` (60k) or ``test`` (10k) split as uint8 tensors ``(N, 1, 28, 28)``."""
    if split not in {"train", "test"}:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = Path(root or os.environ.get("HSRL_FASHION_MNIST_DIR", DEBIAN_FASHION_MNIST))
    prefix = "train" if split == "train" else "t10k"
    images_path = folder / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = folder / f"{prefix}-labels-idx1-ubyte.gz"
    if not images_path.is_file() or not labels_path.is_file():
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {folder}: install it with `apt-get install dataset-fashion-mnist` "
            "or set HSRL_FASHION_MNIST_DIR to a folder with the four idx .gz files"
        )
    (n, rows, cols), pixels = _read_idx(images_path, 0x803, 3)
    (n_labels,), labels = _read_idx(labels_path, 0x801, 1)
    if n != n_labels or len(pixels) != n * rows * cols or len(labels) != n:
        raise ValueError(f"Fashion-MNIST files in {folder} are truncated or do not match")
    images = torch.frombuffer(bytearray(pixels), dtype=torch.uint8).view(n, 1, rows, cols)
    return ImageSplit(images, torch.frombuffer(bytearray(labels), dtype=torch.uint8).long())


def random_views(
    images: Tensor,
    *,
    max_shift: float = 0.15,
    scale: tuple[float, float] = (0.8, 1.1),
    flip: bool = True,
    jitter: float = 0.4,
) -> Tensor:
    """One random view of each image of a uint8 batch, as float32 in [0, 1].

    A random affine crop (translation up to ``max_shift`` of the size, zoom in
    ``scale``), a horizontal flip with probability 1/2, and brightness/contrast
    jitter of strength ``jitter`` — the paper's crop/flip/colour recipe, batched on
    the device for greyscale images.
    """
    x = images.float() / 255.0
    n = x.shape[0]
    zoom = torch.empty(n, device=x.device).uniform_(*scale)
    sign = torch.where(torch.rand(n, device=x.device) < 0.5, -1.0, 1.0) if flip else torch.ones(n, device=x.device)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = sign / zoom
    theta[:, 1, 1] = 1 / zoom
    theta[:, :, 2] = torch.empty(n, 2, device=x.device).uniform_(-max_shift, max_shift) * 2
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)
    brightness = 1 + torch.empty(n, 1, 1, 1, device=x.device).uniform_(-jitter, jitter)
    contrast = 1 + torch.empty(n, 1, 1, 1, device=x.device).uniform_(-jitter, jitter)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean * brightness).clamp_(0, 1)


# --------------------------------------------------------------------------- augmentation settings


@dataclass(frozen=True)
class AugmentConfig:
    """Image size, channels, statistics and the two-view augmentation of a dataset.

    Attributes:
        channels: 3 (colour) or 1 (greyscale); sources convert to it.
        size: side of the square views (RandomResizedCrop's output) and of evaluation images.
        scale: RandomResizedCrop's area range.
        ratio: RandomResizedCrop's aspect-ratio range.
        flip: probability of a horizontal flip.
        jitter: ColorJitter's (brightness, contrast, saturation, hue) strengths.
        jitter_p: probability of applying ColorJitter (the paper's code: always).
        grayscale: probability of RandomGrayscale.
        erase: probability of RandomErasing (a rectangle of 2–33 % of the view, aspect 0.3–3.3, set to 0).
        batched: make the views a whole batch at a time (:func:`batch_views`, in the loader's collate step)
            instead of image by image with torchvision: much faster for small images held in memory.
        eval_resize: evaluation images are resized (shorter side) to this, then centre-cropped to ``size``.
        mean: per-channel mean of the data in [0, 1], for normalisation.
        std: per-channel standard deviation, for normalisation.
    """

    channels: int = 3
    size: int = 64
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.4)
    jitter_p: float = 1.0
    grayscale: float = 0.2
    erase: float = 0.0
    batched: bool = False
    eval_resize: int = 70
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (greyscale) or 3 (colour), got {self.channels}")
        if self.size < 1 or self.eval_resize < self.size:
            raise ValueError(f"need size >= 1 and eval_resize >= size, got {self.size} and {self.eval_resize}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {self.scale}")
        for name in ("flip", "jitter_p", "grayscale", "erase"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a probability in [0, 1], got {getattr(self, name)}")
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise ValueError("mean and std need one entry per channel, and std > 0")
        if self.batched and self.jitter[3] > 0:
            raise ValueError("batched views have no hue jitter: set jitter's hue to 0 or batched=False")

    def with_channels(self, channels: int) -> AugmentConfig:
        """The same settings for ``channels``; statistics are averaged (3 -> 1) or repeated (1 -> 3)."""
        if channels == self.channels:
            return self
        mean, std = self.mean, self.std
        if channels == 1:
            mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
        else:
            mean, std = mean * channels if len(mean) == 1 else mean, std * channels if len(std) == 1 else std
        return dataclasses.replace(self, channels=channels, mean=mean, std=std)


#: Per-dataset defaults. STL-10: the paper's code (statistics of STL-10's train+unlabeled); CIFAR: the
#: usual statistics and 32 px views; Fashion-MNIST: greyscale 28 px views with milder crops (a 0.08 crop
#: of a 28 px image is 8 px: too little left of a garment) and no hue/saturation (meaningless in grey).
DATASET_DEFAULTS: dict[str, AugmentConfig] = {
    "stl10": AugmentConfig(
        mean=(0.44087801806139126, 0.42790631331699347, 0.3867879370752931),
        std=(0.26826768628079806, 0.2610450402318512, 0.26866836876860795),
    ),
    "cifar10": AugmentConfig(size=32, eval_resize=32, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    "cifar100": AugmentConfig(size=32, eval_resize=32, mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
    "fashion-mnist": AugmentConfig(
        channels=1,
        size=28,
        eval_resize=28,
        scale=(0.25, 1.0),
        jitter=(0.4, 0.4, 0.0, 0.0),
        jitter_p=0.8,
        grayscale=0.0,
        batched=True,
        mean=(0.2860,),
        std=(0.3530,),
    ),
    "imagefolder": AugmentConfig(),  # ImageNet statistics
    "hf": AugmentConfig(),
}


def dataset_kind(spec: str) -> str:
    """Which reader a dataset spec goes to: a key of :data:`DATASET_DEFAULTS`."""
    name = spec.strip().lower().replace("_", "-")
    if name in {"stl10", "stl-10"}:
        return "stl10"
    if name in {"cifar10", "cifar-10"}:
        return "cifar10"
    if name in {"cifar100", "cifar-100"}:
        return "cifar100"
    if name in {"fashion-mnist", "fashionmnist", "fmnist"}:
        return "fashion-mnist"
    if spec.startswith("imagefolder:"):
        return "imagefolder"
    return "hf"


def augment_defaults(spec: str, channels: int | None = None, **overrides: Any) -> AugmentConfig:
    """The defaults of the dataset named by ``spec``, for ``channels``, with ``overrides`` applied."""
    config = DATASET_DEFAULTS[dataset_kind(spec)]
    if channels is not None:
        config = config.with_channels(channels)
    return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})


def view_transform(config: AugmentConfig, dtype: Literal["uint8", "float32"] = "uint8") -> Callable[[Tensor], Tensor]:
    """One random view of a uint8 ``(C, H, W)`` image: the paper's STL-10 augmentation, torchvision v2."""
    from torchvision.transforms import v2 as T

    steps: list[Callable[[Tensor], Tensor]] = [
        T.RandomResizedCrop(config.size, scale=config.scale, ratio=config.ratio, antialias=True),
        T.RandomHorizontalFlip(config.flip),
    ]
    if any(config.jitter) and config.jitter_p > 0:
        steps.append(T.RandomApply([T.ColorJitter(*config.jitter)], p=config.jitter_p))
    if config.grayscale > 0 and config.channels == 3:
        steps.append(T.RandomGrayscale(config.grayscale))
    if config.erase > 0:
        steps.append(T.RandomErasing(config.erase, scale=ERASE_AREA, ratio=ERASE_RATIO, value=0))
    if dtype == "float32":
        steps += [T.ToDtype(torch.float32, scale=True), T.Normalize(list(config.mean), list(config.std))]
    return T.Compose(steps)


#: RandomErasing's area fraction and aspect-ratio ranges (torchvision's defaults), for both view makers.
ERASE_AREA, ERASE_RATIO = (0.02, 0.33), (0.3, 3.3)


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    return torch.rand(n, generator=generator) * (high - low) + low


def _boxes(
    n: int, area: tuple[float, float], ratio: tuple[float, float], generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Random boxes as fractions of the image: width, height (area fraction ``s``, aspect ``r`` log-uniform:
    :math:`w = \sqrt{s r}`, :math:`h = \sqrt{s / r}`, clipped to 1) and a centre placing them inside."""
    s = _uniform(n, *area, generator)
    r = torch.exp(_uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator))
    w, h = (s * r).sqrt().clamp(max=1.0), (s / r).sqrt().clamp(max=1.0)
    cx = w / 2 + torch.rand(n, generator=generator) * (1 - w)
    cy = h / 2 + torch.rand(n, generator=generator) * (1 - h)
    return w, h, cx, cy


def batch_views(images: Tensor, config: AugmentConfig, generator: torch.Generator) -> Tensor:
    r"""One random view of each image of a uint8 ``(N, C, H, W)`` batch, float32 in [0, 1], ``config.size`` px.

    The same augmentation as :func:`view_transform`, drawn for the whole batch at once (all randomness
    from ``generator``, on the CPU, so a batch's views depend only on its seed):

    * RandomResizedCrop: a box of area fraction :math:`s \sim U(\text{scale})` and aspect
      :math:`\log r \sim U(\log \text{ratio})` (clipped to the image rather than re-drawn), resampled
      bilinearly to ``size`` by one ``affine_grid``/``grid_sample``;
    * horizontal flip with probability ``flip`` (a sign in the same affine map);
    * with probability ``jitter_p``: brightness :math:`x \cdot b`, contrast :math:`(x - \bar x) c + \bar x`
      and, for colour, saturation (a blend with the grey image), factors :math:`U(1 - j, 1 + j)`, in that
      fixed order (torchvision shuffles the order; hue is not supported here);
    * RandomGrayscale(``grayscale``) for colour, RandomErasing(``erase``) with value 0.
    """
    if images.ndim != 4:
        raise ValueError(f"batch_views takes an (N, C, H, W) batch, got shape {tuple(images.shape)}")
    n, device = images.shape[0], images.device
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    w, h, cx, cy = _boxes(n, config.scale, config.ratio, generator)
    sign = torch.where(torch.rand(n, generator=generator) < config.flip, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = w * sign, h
    theta[:, 0, 2], theta[:, 1, 2] = cx * 2 - 1, cy * 2 - 1
    grid = F.affine_grid(theta.to(device), [n, x.shape[1], config.size, config.size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def factors(strength: float) -> Tensor:
        return _uniform(n, 1 - strength, 1 + strength, generator).view(n, 1, 1, 1).to(device)

    brightness, contrast, saturation, _ = config.jitter
    if any(config.jitter[:3]) and config.jitter_p > 0:
        apply = (torch.rand(n, generator=generator) < config.jitter_p).view(n, 1, 1, 1).to(device)
        jittered = x * factors(brightness) if brightness else x
        if contrast:
            mean = _grey(jittered).mean(dim=(1, 2, 3), keepdim=True)
            jittered = (jittered - mean) * factors(contrast) + mean
        if saturation and x.shape[1] == 3:
            grey = _grey(jittered)
            jittered = (jittered - grey) * factors(saturation) + grey
        x = torch.where(apply, jittered.clamp(0, 1), x)
    if config.grayscale > 0 and x.shape[1] == 3:
        to_grey = (torch.rand(n, generator=generator) < config.grayscale).view(n, 1, 1, 1).to(device)
        x = torch.where(to_grey, _grey(x).expand_as(x), x)
    if config.erase > 0:
        erase = torch.rand(n, generator=generator) < config.erase
        ew, eh, ecx, ecy = _boxes(n, ERASE_AREA, ERASE_RATIO, generator)
        ys = (torch.arange(config.size) + 0.5) / config.size
        inside_x = (ys.view(1, -1) - ecx.view(-1, 1)).abs() <= ew.view(-1, 1) / 2
        inside_y = (ys.view(1, -1) - ecy.view(-1, 1)).abs() <= eh.view(-1, 1) / 2
        mask = (inside_y[:, :, None] & inside_x[:, None, :] & erase.view(-1, 1, 1)).unsqueeze(1)
        x = x.masked_fill(mask.to(device), 0.0)
    return x


def _grey(x: Tensor) -> Tensor:
    """ITU-R 601 luma of ``(N, 3, H, W)`` images (identity for one channel), keeping a channel axis."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def eval_transform(config: AugmentConfig) -> Callable[[Tensor], Tensor]:
    """The evaluation view: resize the shorter side to ``eval_resize``, centre crop ``size`` (uint8 out); the
    model's own :func:`hsrl.models.image.eval_view`, which export and the service apply too."""
    from hsrl.models.image import eval_view

    return functools.partial(eval_view, resize=config.eval_resize, size=config.size)


# --------------------------------------------------------------------------- sources


def _convert_channels(image: Tensor, channels: int) -> Tensor:
    """uint8 ``(C, H, W)`` with 1/2/3/4 channels (grey, grey+alpha, RGB, RGBA) to ``channels``."""
    if image.ndim == 2:
        image = image.unsqueeze(0)
    if image.shape[0] in (2, 4):  # drop alpha
        image = image[: image.shape[0] - 1]
    if image.shape[0] == channels:
        return image
    if channels == 3:
        return image.expand(3, -1, -1).contiguous()
    weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)  # ITU-R 601, as PIL's convert("L")
    return (image.float() * weights).sum(0, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)


class ImageSource(Dataset):
    """A map-style dataset of ``(uint8 (C, H, W) image, int label)``; ``label = -1`` when unknown.

    Subclasses implement :meth:`_load`. A failure to decode item ``i`` is recorded in a shared-memory
    flag (so workers' skips are counted too), warned about once per file and process, and the next
    readable item is returned instead.
    """

    name: str = "images"
    channels: int = 3
    num_classes: int | None = None

    def __init__(self, size: int) -> None:
        # One byte per item, in shared memory: every worker marks what it skipped, the main process counts.
        self._bad = torch.zeros(size, dtype=torch.uint8).share_memory_()

    def _load(self, index: int) -> tuple[Tensor, int]:
        raise NotImplementedError

    def describe(self, index: int) -> str:
        return f"item {index} of {self.name}"

    def __len__(self) -> int:
        return int(self._bad.numel())

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image, label, _ = self.get(index)
        return image, label

    def get(self, index: int) -> tuple[Tensor, int, int]:
        """``(image, label, index actually read)``: the last differs from ``index`` when it was skipped."""
        n = len(self)
        for offset in range(n):
            i = (index + offset) % n
            if self._bad[i]:
                continue
            try:
                image, label = self._load(i)
                return _convert_channels(image, self.channels), int(label), i
            except Exception as error:  # any decoding error: never stop an epoch for one file
                self._bad[i] = 1
                warnings.warn(f"skipping unreadable image: {self.describe(i)} ({error})", stacklevel=2)
        raise ValueError(f"no readable image in {self.name}")

    @property
    def skipped(self) -> int:
        """How many items were found unreadable so far (by any worker)."""
        return int(self._bad.sum())

    def skipped_items(self) -> list[str]:
        return [self.describe(i) for i in self._bad.nonzero().flatten().tolist()]


class TensorImageSource(ImageSource):
    """Images already in memory: uint8 ``(N, C, H, W)`` and int labels ``(N,)``."""

    def __init__(
        self, images: Tensor, labels: Tensor | None, name: str, channels: int | None = None,
        num_classes: int | None = None,
    ) -> None:  # fmt: skip
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        super().__init__(images.shape[0])
        self.images = images
        self.labels = labels if labels is not None else torch.full((images.shape[0],), -1, dtype=torch.long)
        self.name, self.channels = name, channels or images.shape[1]
        self.num_classes = num_classes

    def _load(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])


class SubsetSource(ImageSource):
    """Some items of another source, by index."""

    def __init__(self, source: ImageSource, indices: Sequence[int], name: str) -> None:
        super().__init__(len(indices))
        self.source, self.indices = source, list(indices)
        self.name, self.channels, self.num_classes = name, source.channels, source.num_classes

    def _load(self, index: int) -> tuple[Tensor, int]:
        image, label, read = self.source.get(self.indices[index])
        if read != self.indices[index]:
            raise ValueError("unreadable")  # let this subset count and skip it, not read a neighbour twice
        return image, label

    def describe(self, index: int) -> str:
        return self.source.describe(self.indices[index])


class ConcatSource(ImageSource):
    """Several sources one after the other (STL-10's train + unlabeled)."""

    def __init__(self, parts: Sequence[ImageSource], name: str) -> None:
        self.parts = list(parts)
        self.ends = torch.tensor([len(p) for p in self.parts]).cumsum(0).tolist()
        super().__init__(self.ends[-1])
        self.name, self.channels, self.num_classes = name, parts[0].channels, parts[0].num_classes

    def _load(self, index: int) -> tuple[Tensor, int]:
        part = bisect.bisect_right(self.ends, index)
        start = self.ends[part - 1] if part else 0
        image, label, _ = self.parts[part].get(index - start)
        return image, label


class ImageFolderSource(ImageSource):
    """``root/CLASS/IMAGE`` files (torchvision's ImageFolder layout), decoded by ``torchvision.io``.

    Classes are the sorted sub-folder names; images directly in ``root`` (no class folders) get label -1.
    """

    def __init__(self, root: str | os.PathLike[str], channels: int = 3, classes: Sequence[str] | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        found = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.classes = list(classes) if classes is not None else found
        files: list[tuple[Path, int]] = []
        for label, name in enumerate(self.classes):
            folder = self.root / name
            if folder.is_dir():
                files += [(p, label) for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
        if not self.classes:
            files = [(p, -1) for p in sorted(self.root.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {self.root}")
        super().__init__(len(files))
        self.files = [str(p) for p, _ in files]
        self.labels = torch.tensor([label for _, label in files], dtype=torch.long)
        self.name, self.channels = f"imagefolder:{self.root}", channels
        self.num_classes = len(self.classes) or None

    def _load(self, index: int) -> tuple[Tensor, int]:
        from torchvision.io import ImageReadMode, decode_image, read_file

        mode = ImageReadMode.RGB if self.channels == 3 else ImageReadMode.GRAY
        return decode_image(read_file(self.files[index]), mode=mode), int(self.labels[index])

    def describe(self, index: int) -> str:
        return self.files[index]


class HFImageSource(ImageSource):
    """A 🤗 ``datasets.Dataset`` with an image column (and optionally a label column)."""

    IMAGE_NAMES = ("image", "img", "images", "picture", "pixel_values")
    LABEL_NAMES = ("label", "labels", "fine_label", "target", "class", "coarse_label")

    def __init__(
        self, dataset: Any, name: str, channels: int = 3, image_column: str | None = None,
        label_column: str | None = None,
    ) -> None:  # fmt: skip
        import datasets

        features = dataset.features
        self.image_column = image_column or next(
            (k for k, f in features.items() if isinstance(f, datasets.Image)),
            next((k for k in self.IMAGE_NAMES if k in features), None),
        )
        if self.image_column is None or self.image_column not in features:
            raise ValueError(f"{name}: no image column among {list(features)} (pass image_column=)")
        self.label_column = label_column or next(
            (k for k, f in features.items() if isinstance(f, datasets.ClassLabel)),
            next((k for k in self.LABEL_NAMES if k in features), None),
        )
        super().__init__(len(dataset))
        self.dataset = dataset.select_columns([c for c in (self.image_column, self.label_column) if c])
        self.name, self.channels = name, channels
        label_feature = features.get(self.label_column) if self.label_column else None
        self.num_classes = getattr(label_feature, "num_classes", None)

    def _load(self, index: int) -> tuple[Tensor, int]:
        from PIL import Image
        from torchvision.transforms.v2.functional import pil_to_tensor

        row = self.dataset[index]
        image = row[self.image_column]
        if not isinstance(image, Image.Image):
            raise ValueError(f"column {self.image_column!r} holds {type(image).__name__}, not an image")
        image = pil_to_tensor(image.convert("RGB" if self.channels == 3 else "L"))
        label = row[self.label_column] if self.label_column else -1
        return image, int(label if label is not None else -1)

    def describe(self, index: int) -> str:
        return f"row {index} of {self.name}"


# --------------------------------------------------------------------------- opening a dataset by name


def _offline() -> bool:
    names = ("HSRL_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    return any(os.environ.get(n, "").strip().lower() in {"1", "true", "yes", "on"} for n in names)


def default_data_root() -> Path:
    return Path(os.environ.get("HSRL_DATA_DIR", Path.home() / ".cache" / "hsrl" / "datasets"))


def _torchvision_dataset(kind: str, split: str, root: Path, download: bool | None) -> Any:
    import torchvision.datasets as tvd

    make = {
        "stl10": lambda dl: tvd.STL10(str(root), split=split, download=dl),
        "cifar10": lambda dl: tvd.CIFAR10(str(root), train=split == "train", download=dl),
        "cifar100": lambda dl: tvd.CIFAR100(str(root), train=split == "train", download=dl),
    }[kind]
    try:
        return make(False)
    except RuntimeError:  # torchvision: "Dataset not found or corrupted"
        pass
    if download is False or (download is None and _offline()):
        raise FileNotFoundError(
            f"{kind} is not in {root} and downloads are off (offline): fetch it once online "
            f"(it is downloaded into the data root) or pass --data-root to a folder that has it"
        )
    try:
        return make(True)
    except Exception as error:  # network errors come in many types (URLError, OSError, HTTP errors)
        raise FileNotFoundError(f"could not download {kind} into {root}: {error}") from None


def _holdout(source: ImageSource, split: str, seed: int = 0) -> ImageSource:
    """``train``/``pretrain``: the first 80% of a fixed permutation; ``test``: the rest."""
    order = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed)).tolist()
    cut = len(order) - max(1, round(HOLDOUT_FRACTION * len(order)))
    indices = order[cut:] if split == "test" else order[:cut]
    return SubsetSource(
        source, sorted(indices), f"{source.name} ({split}, held out)" if split == "test" else source.name
    )


def _open_hf(spec: str, split: str, channels: int) -> ImageSource:
    name = spec[3:] if spec.startswith("hf:") else spec
    try:
        import datasets
    except ImportError as error:  # pragma: no cover - datasets is a dependency
        raise ValueError(f"{spec}: 🤗 datasets is not installed ({error})") from None
    path = Path(name).expanduser()
    looks_local = path.exists() or name.startswith((".", "/", "~"))
    if looks_local and not path.exists():
        raise FileNotFoundError(f"dataset folder {path} does not exist")
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(str(path) if looks_local else name)
    except Exception as error:  # hub, cache and format errors differ by version: one line for all of them
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        hint = " (offline: only datasets already in the 🤗 cache or on disk load)" if _offline() else ""
        raise FileNotFoundError(f"could not load the 🤗 dataset {name!r}{hint}: {first}") from None
    if isinstance(loaded, datasets.DatasetDict):
        wanted = {"pretrain": ["train"], "train": ["train"], "test": ["test", "validation", "valid", "val"]}[split]
        chosen = next((s for s in wanted if s in loaded), None)
        if chosen is not None:
            return HFImageSource(loaded[chosen], f"{name}[{chosen}]", channels)
        if "train" not in loaded and split != "test":
            raise ValueError(f"{name}: no 'train' split (has {', '.join(loaded)})")
        loaded = loaded["train"] if "train" in loaded else loaded[next(iter(loaded))]
        return _holdout(HFImageSource(loaded, name, channels), split)
    return _holdout(HFImageSource(loaded, name, channels), split)


def _open_imagefolder(path: str, split: str, channels: int) -> ImageSource:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    test_dir = next((root / n for n in ("test", "val", "validation") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        train = ImageFolderSource(root / "train", channels)
        if split == "test":  # the train split's classes fix the labels
            return ImageFolderSource(test_dir, channels, classes=train.classes)
        return train
    return _holdout(ImageFolderSource(root, channels), split)


def open_images(
    spec: str,
    split: Split = "pretrain",
    *,
    root: str | os.PathLike[str] | None = None,
    channels: int | None = None,
    download: bool | None = None,
) -> ImageSource:
    """Open a dataset by its spec (see the module docstring) as an :class:`ImageSource`.

    Args:
        spec: ``stl10``, ``cifar10``, ``cifar100``, ``fashion-mnist``, ``imagefolder:PATH``, ``hf:NAME``,
            a 🤗 hub name or a local dataset folder.
        split: ``pretrain`` (what self-supervised training reads: STL-10's train + unlabeled, else the
            training split), ``train`` or ``test`` (labelled, for evaluation).
        root: where torchvision datasets live (default :func:`default_data_root`); the Fashion-MNIST idx
            folder for ``fashion-mnist``.
        channels: convert images to 1 or 3 channels (default: the dataset's own, see
            :data:`DATASET_DEFAULTS`).
        download: use torchvision's downloader when the files are absent (default: unless offline).

    Raises:
        FileNotFoundError: the dataset is absent and cannot be fetched (one line that says what to do).
        ValueError: a bad split or channel count, or a 🤗 dataset without an image column.
    """
    if split not in ("pretrain", "train", "test"):
        raise ValueError(f"split must be 'pretrain', 'train' or 'test', got {split!r}")
    kind = dataset_kind(spec)
    channels = channels or DATASET_DEFAULTS[kind].channels
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if kind == "fashion-mnist":
        data = read_fashion_mnist("test" if split == "test" else "train", root)
        return TensorImageSource(data.images, data.labels, f"fashion-mnist[{split}]", channels, 10)
    if kind in ("stl10", "cifar10", "cifar100"):
        folder = Path(root).expanduser() if root else default_data_root()
        names = {"pretrain": ["train", "unlabeled"], "train": ["train"], "test": ["test"]}[split]
        if kind != "stl10":
            names = ["test" if split == "test" else "train"]
        parts = []
        for name in names:
            data = _torchvision_dataset(kind, name, folder, download)
            images = torch.from_numpy(data.data)
            if images.shape[-1] == 3:  # CIFAR stores (N, H, W, C)
                images = images.permute(0, 3, 1, 2).contiguous()
            labels = torch.as_tensor(data.labels if kind == "stl10" else data.targets, dtype=torch.long)
            classes = 10 if kind != "cifar100" else 100
            parts.append(TensorImageSource(images, labels, f"{kind}[{name}]", channels, classes))
        return parts[0] if len(parts) == 1 else ConcatSource(parts, f"{kind}[train+unlabeled]")
    if kind == "imagefolder":
        return _open_imagefolder(spec.split(":", 1)[1], split, channels)
    return _open_hf(spec, split, channels)


def check_channels(encoder_channels: int, source: ImageSource | int, what: str = "the data") -> None:
    """Raise a clear ``ValueError`` when the encoder's input channels differ from the images'."""
    channels = source if isinstance(source, int) else source.channels
    name = what if isinstance(source, int) else source.name
    if channels != encoder_channels:
        kinds = {1: "greyscale (1 channel)", 3: "colour (3 channels)"}
        raise ValueError(
            f"the encoder takes {kinds.get(encoder_channels, encoder_channels)} images but {name} gives "
            f"{kinds.get(channels, channels)}: pass --channels {encoder_channels} to convert the images"
        )


# --------------------------------------------------------------------------- two views, deterministically


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for item ``index`` of ``epoch`` (SplitMix64 of the three numbers)."""
    h = 0
    for value in (seed, epoch, index):
        h = _splitmix64(h ^ (value & _MASK64))
    return h >> 1


class _EpochViews(Dataset):
    """Views of ``source`` that depend on (seed, epoch, index): the epoch lives in shared memory, so
    persistent loader workers see what the main process sets with :meth:`set_epoch`."""

    def __init__(self, source: ImageSource, config: AugmentConfig, seed: int = 0) -> None:
        if source.channels != config.channels:
            check_channels(config.channels, source)
        self.source, self.config, self.seed = source, config, seed
        self._epoch = torch.zeros(1, dtype=torch.long).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = epoch

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def __len__(self) -> int:
        return len(self.source)


class TwoViewDataset(_EpochViews):
    """``(view1, view2)`` of each image: two independent draws of the augmentation.

    The draws for item ``i`` in epoch ``e`` come from the CPU generator seeded with
    :func:`item_seed` ``(seed, e, i)`` inside ``torch.random.fork_rng`` (the caller's random state is
    untouched), so they are the same whichever worker makes them: the basis of exact resume.

    Args:
        source: the images.
        config: the augmentation (:func:`augment_defaults`).
        seed: the run's seed.
        dtype: ``"uint8"`` (normalised later by the encoder's :class:`~hsrl.models.image.Normalize`)
            or ``"float32"`` (normalised here).
    """

    def __init__(
        self, source: ImageSource, config: AugmentConfig, seed: int = 0, dtype: Literal["uint8", "float32"] = "uint8"
    ) -> None:
        super().__init__(source, config, seed)
        self.transform = view_transform(config, dtype)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, _ = self.source[index]
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(item_seed(self.seed, self.epoch, index))
            return self.transform(image), self.transform(image)


class BatchedTwoViews(_EpochViews):
    """Two views per image, made a whole batch at a time (:func:`batch_views`) in the loader's collate step.

    Items are ``(uint8 image, index)``; :meth:`collate` stacks a batch and draws both views from one CPU
    generator seeded with :func:`item_seed` ``(seed, epoch, i)`` mixed over the batch's indices, so a batch's
    views depend only on which images it holds and the epoch: exact resume holds as for
    :class:`TwoViewDataset`. Same ``set_epoch`` contract (shared memory, seen by persistent workers).
    """

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image, _ = self.source[index]
        return image, index

    def batch_seed(self, indices: Sequence[int]) -> int:
        """The generator seed of a batch: the item seeds of its images, mixed in order."""
        seed = 0
        for index in indices:
            seed = _splitmix64(seed ^ item_seed(self.seed, self.epoch, int(index)))
        return seed & (2**63 - 1)

    def collate(self, items: Sequence[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
        images = torch.stack([image for image, _ in items])
        generator = torch.Generator().manual_seed(self.batch_seed([index for _, index in items]))
        return batch_views(images, self.config, generator), batch_views(images, self.config, generator)


def two_view_dataset(source: ImageSource, config: AugmentConfig, seed: int = 0) -> TwoViewDataset | BatchedTwoViews:
    """The two-view dataset ``config`` asks for: :class:`BatchedTwoViews` when ``config.batched``."""
    return BatchedTwoViews(source, config, seed) if config.batched else TwoViewDataset(source, config, seed)


def make_view_loader(views: TwoViewDataset | BatchedTwoViews, config: Any) -> DataLoader:
    """:func:`hsrl.training.make_dataloader` for two views, with the epoch passed on to ``views``.

    ``fit`` calls the loader's ``set_epoch`` each epoch, which reaches the sampler (Accelerate's
    loader calls a dataset's own ``set_epoch`` only when the sampler has none); this wraps the
    sampler's ``set_epoch`` so the dataset hears it too.
    """
    from hsrl.training import make_dataloader

    loader = make_dataloader(views, config, collate_fn=getattr(views, "collate", None))
    sampler = loader.sampler
    sampler_set_epoch = sampler.set_epoch

    def set_epoch(epoch: int) -> None:
        sampler_set_epoch(epoch)
        views.set_epoch(epoch)

    sampler.set_epoch = set_epoch  # type: ignore[method-assign]
    return loader


# --------------------------------------------------------------------------- evaluation images


class EvalImages(Dataset):
    """``(image, label, index read)`` with the evaluation transform (resize + centre crop, uint8)."""

    def __init__(self, source: ImageSource, config: AugmentConfig) -> None:
        self.source, self.transform = source, eval_transform(config)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        image, label, read = self.source.get(index)
        return self.transform(image), label, read


def load_eval_split(
    source: ImageSource, config: AugmentConfig, *, limit: int | None = None, seed: int = 0, num_workers: int = 0,
    batch_size: int = 256,
) -> ImageSplit:  # fmt: skip
    """The evaluation images of ``source`` in memory: uint8 ``(N, C, size, size)`` and labels.

    ``limit`` keeps a seeded random subset (the same for a given seed). Unreadable images are left out
    (counted in ``source.skipped``), not replaced by a neighbour.
    """
    if limit is not None and limit < len(source):
        order = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed))[:limit]
        source = SubsetSource(source, sorted(order.tolist()), source.name)
    loader = DataLoader(EvalImages(source, config), batch_size=batch_size, num_workers=num_workers)
    images, labels, start = [], [], 0
    for batch, label, read in loader:
        keep = read == torch.arange(start, start + len(read))  # a skipped item was read from a neighbour
        start += len(read)
        images.append(batch[keep])
        labels.append(label[keep])
    return ImageSplit(torch.cat(images), torch.cat(labels).long())
