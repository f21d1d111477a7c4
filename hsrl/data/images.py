"""Image datasets and two-view augmentation.

Fashion-MNIST is read from the idx files that Debian's ``dataset-fashion-mnist``
package installs (``/usr/share/datasets/fashion-mnist``), which is how it runs
offline; ``HSRL_FASHION_MNIST_DIR`` or ``root=`` point elsewhere.

Augmentation runs on whole batches in the training process, drawing from the
global random state, which checkpoints save and restore: a resumed run sees the
same views as an uninterrupted one.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FASHION_MNIST_CLASSES", "ImageSplit", "random_views", "read_fashion_mnist"]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


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
