"""Image–caption pairs for two-tower training: readers for the common layouts, one batch type.

Sources (:func:`open_pairs`):

* ``fashion-mnist`` — the offline default: Fashion-MNIST with captions generated from its labels
  (:mod:`hsrl.data.captions`); they demonstrate the machinery, not language understanding.
* a 🤗 dataset: ``hf:NAME`` (``datasets.load_dataset``) or a ``save_to_disk`` folder, with configurable image
  and caption columns. A caption cell may hold one string or a list (COCO/Flickr30k: several per image);
  each epoch draws one of them per image.
* a ``.jsonl`` / ``.csv`` / ``.parquet`` table of ``image`` (a path, relative to the table's folder) and
  ``caption`` columns (optional ``label``).
* WebDataset-style tar shards (``.tar`` file, a folder of them, or ``shards-{000..009}.tar``): members
  sharing a key, ``KEY.jpg``/``KEY.png`` with ``KEY.txt`` (optional ``KEY.cls``), streamed in order.

Bad input: a caption column that does not exist, or no usable pair at all, is a ``ValueError`` with one line.
Individual bad records (a missing image file, an empty caption) are skipped at open and counted, with one
warning; an image that fails to decode is dropped from its batch when it is read, and counted too.

Every example is ``(uint8 image (C, S, S), caption, label)``; :func:`collate_pairs` makes an
:class:`ImageCaptionBatch`, which gradient caching can split into chunks.
"""

from __future__ import annotations

import io
import json
import random
import re
import tarfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset

from hsrl.data.captions import FashionCaptions
from hsrl.data.images import item_seed, read_fashion_mnist

__all__ = [
    "ImageCaptionBatch",
    "PairDataset",
    "PairRecords",
    "SkipCounter",
    "WebDatasetPairs",
    "collate_pairs",
    "decode_image",
    "make_pair_loader",
    "open_pairs",
    "read_pair_records",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


class ImageCaptionBatch(NamedTuple):
    """A batch of pairs: uint8 images ``(N, C, S, S)``, their captions, labels (``-1``: none)."""

    images: Tensor
    captions: list[str]
    labels: Tensor

    def chunks(self, size: int) -> Iterator[ImageCaptionBatch]:
        """Consecutive pieces of ``size`` pairs (for gradient caching)."""
        for start in range(0, len(self.captions), size):
            stop = start + size
            yield ImageCaptionBatch(self.images[start:stop], self.captions[start:stop], self.labels[start:stop])

    def to(self, device: Any, **kwargs: Any) -> ImageCaptionBatch:
        return ImageCaptionBatch(self.images.to(device, **kwargs), self.captions, self.labels.to(device, **kwargs))


class SkipCounter:
    """Records dropped while reading, by reason (shared-memory counts, so loader workers add to them)."""

    REASONS = ("missing_image", "empty_caption", "undecodable_image")

    def __init__(self) -> None:
        self._counts = torch.zeros(len(self.REASONS), dtype=torch.long).share_memory_()

    def add(self, reason: str, n: int = 1) -> None:
        self._counts[self.REASONS.index(reason)] += n

    def as_dict(self) -> dict[str, int]:
        return {reason: int(c) for reason, c in zip(self.REASONS, self._counts, strict=True)}

    @property
    def total(self) -> int:
        return int(self._counts.sum())


# --------------------------------------------------------------------------- images


def decode_image(data: Any, size: int, channels: int) -> Tensor:
    """A PIL image, encoded bytes, an array or a path to uint8 ``(channels, size, size)``.

    Shorter side resized to ``size`` (bilinear), then centre-cropped: the same recipe as ``hsrl export``.
    Raises ``ValueError`` when the data is not a readable image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        if isinstance(data, Image.Image):
            picture = data
        elif isinstance(data, bytes | bytearray):
            picture = Image.open(io.BytesIO(data))
        elif isinstance(data, dict) and (data.get("bytes") or data.get("path")):  # 🤗 Image feature, undecoded
            picture = Image.open(io.BytesIO(data["bytes"])) if data.get("bytes") else Image.open(data["path"])
        elif isinstance(data, np.ndarray):
            picture = Image.fromarray(data)
        else:
            picture = Image.open(Path(data))
        picture = picture.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, ValueError, TypeError) as error:
        raise ValueError(f"not a readable image ({error})") from None
    scale = size / min(picture.size)
    picture = picture.resize((max(size, round(picture.width * scale)), max(size, round(picture.height * scale))),
                             Image.Resampling.BILINEAR)  # fmt: skip
    left, top = (picture.width - size) // 2, (picture.height - size) // 2
    array = np.asarray(picture.crop((left, top, left + size, top + size)), dtype=np.uint8)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.array(array, copy=True))  # PIL arrays are read-only


# --------------------------------------------------------------------------- tables and 🤗 datasets


@dataclass
class PairRecords:
    """Pairs read from a table or a 🤗 dataset: image references, their captions (one or more each), labels."""

    images: list[Any]
    captions: list[list[str]]
    labels: list[int]
    skipped: dict[str, int]
    source: str

    def __len__(self) -> int:
        return len(self.images)


def _captions_of(cell: Any) -> list[str]:
    if cell is None:
        return []
    if isinstance(cell, str):
        return [cell.strip()] if cell.strip() else []
    if isinstance(cell, Sequence | np.ndarray):
        return [str(c).strip() for c in cell if c is not None and str(c).strip()]
    return [str(cell).strip()] if str(cell).strip() else []


def _read_table(path: Path) -> dict[str, list[Any]]:
    import pyarrow as pa

    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        elif path.suffix == ".csv":
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path)
        else:
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            table = pa.Table.from_pylist(rows)
    except (OSError, ValueError, pa.ArrowException) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"pairs {path}: not a readable {path.suffix[1:]} table ({first})") from None
    return table.to_pydict()


def _open_hf(spec: str, split: str) -> tuple[dict[str, list[Any]] | Any, str]:
    try:
        import datasets
    except ImportError as error:  # pragma: no cover - datasets is a core dependency
        raise ValueError(f"🤗 datasets is needed for {spec} ({error})") from None
    try:
        if spec.startswith("hf:"):
            loaded = datasets.load_dataset(spec[3:], split=split)
        else:
            loaded = datasets.load_from_disk(spec)
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise ValueError(f"{spec} has no split {split!r} (splits: {', '.join(loaded)})")
                loaded = loaded[split]
    except ValueError:
        raise
    except Exception as error:  # the hub, a corrupt folder: one line
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"pairs {spec}: cannot open the 🤗 dataset ({first})") from None
    return loaded, spec


def _column(table: Any, name: str, what: str, source: str, flag: str) -> list[Any]:
    columns = list(table.column_names if hasattr(table, "column_names") else table)
    if name not in columns:
        raise ValueError(f"pairs {source}: no {what} column {name!r} (columns: {', '.join(columns) or 'none'}); "
                         f"pass {flag}")  # fmt: skip
    return list(table[name])


def read_pair_records(
    spec: str | Path,
    *,
    split: str = "train",
    image_column: str = "image",
    caption_column: str = "caption",
    label_column: str | None = "label",
) -> PairRecords:
    """Image–caption pairs from a table file or a 🤗 dataset (see the module docstring).

    Rows with a missing image file or no non-empty caption are skipped and counted (one warning).

    Raises:
        ValueError: unreadable source, a missing image or caption column, or no usable pair.
    """
    text = str(spec)
    path = Path(text)
    base: Path | None = None
    if path.suffix in TABLE_SUFFIXES and not path.is_dir():
        if not path.is_file():
            raise ValueError(f"pairs {path}: no such file")
        table: Any = _read_table(path)
        base = path.parent
    elif text.startswith("hf:") or path.is_dir():
        if path.is_dir() and not any((path / f).is_file() for f in ("state.json", "dataset_dict.json")):
            raise ValueError(f"pairs {path}: not a 🤗 save_to_disk folder (no state.json or dataset_dict.json)")
        table, _ = _open_hf(text, split)
    else:
        raise ValueError(f"pairs {text}: expected fashion-mnist, hf:NAME, a save_to_disk folder, tar shards or a "
                         f"{'/'.join(TABLE_SUFFIXES)} file")  # fmt: skip
    images = _column(table, image_column, "image", text, "--image-column")
    cells = _column(table, caption_column, "caption", text, "--caption-column")
    columns = list(table.column_names if hasattr(table, "column_names") else table)
    raw_labels = list(table[label_column]) if label_column and label_column in columns else [-1] * len(images)
    kept_images, kept_captions, kept_labels = [], [], []
    skipped = {"missing_image": 0, "empty_caption": 0}
    for image, cell, label in zip(images, cells, raw_labels, strict=True):
        captions = _captions_of(cell)
        if not captions:
            skipped["empty_caption"] += 1
            continue
        if isinstance(image, str) or image is None:
            if not image:
                skipped["missing_image"] += 1
                continue
            file = Path(image) if base is None or Path(image).is_absolute() else base / image
            if not file.is_file():
                skipped["missing_image"] += 1
                continue
            image = str(file)
        kept_images.append(image)
        kept_captions.append(captions)
        kept_labels.append(int(label) if isinstance(label, int | np.integer) else -1)
    if not kept_images:
        counts = f"{skipped['missing_image']} missing images, {skipped['empty_caption']} empty captions"
        raise ValueError(f"pairs {text}: no usable pair in {len(images)} rows ({counts})")
    if sum(skipped.values()):
        warnings.warn(f"pairs {text}: skipped {skipped['missing_image']} rows with a missing image file and "
                      f"{skipped['empty_caption']} with an empty caption, of {len(images)}", stacklevel=2)  # fmt: skip
    return PairRecords(kept_images, kept_captions, kept_labels, skipped, text)


class PairDataset(Dataset):
    """Map-style pairs: item ``i`` is ``(uint8 image, caption, label)``, or ``None`` if its image does not decode.

    Which caption an image gets (when it has several), and whether it is flipped, is drawn from
    :func:`hsrl.data.images.item_seed` ``(seed, epoch, i)``, so a resumed run sees the same pairs.
    """

    def __init__(self, records: PairRecords, *, size: int, channels: int, seed: int = 0, flip: bool = False) -> None:
        self.records, self.size, self.channels, self.seed, self.flip = records, size, channels, seed, flip
        self.skips = SkipCounter()
        self._epoch = torch.zeros(1, dtype=torch.long).share_memory_()
        self.labels = list(records.labels)

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Tensor, str, int] | None:
        rng = random.Random(item_seed(self.seed, int(self._epoch[0]), index))
        caption = rng.choice(self.records.captions[index])
        try:
            image = decode_image(self.records.images[index], self.size, self.channels)
        except ValueError:
            self.skips.add("undecodable_image")
            return None
        if self.flip and rng.random() < 0.5:
            image = image.flip(-1)
        return image, caption, self.records.labels[index]


# --------------------------------------------------------------------------- Fashion-MNIST with generated captions


class FashionPairs(Dataset):
    """Fashion-MNIST images with captions generated from their labels (:class:`FashionCaptions`).

    Training (``split="train"``) draws a training caption per item and epoch and drops the ``unseen`` classes;
    ``split="test"`` gives each image one held-out caption, fixed by ``seed``.
    """

    def __init__(
        self,
        split: str = "train",
        *,
        captions: FashionCaptions | None = None,
        seed: int = 0,
        flip: bool = False,
        root: str | None = None,
    ) -> None:
        data = read_fashion_mnist(split, root)
        self.captions = captions or FashionCaptions()
        keep = torch.ones(len(data.labels), dtype=torch.bool)
        if split == "train":
            for label in self.captions.unseen:
                keep &= data.labels != label
        self.images, self.label_tensor = data.images[keep], data.labels[keep]
        self.labels = self.label_tensor.tolist()
        self.split, self.seed, self.flip = split, seed, flip
        self.skips = SkipCounter()
        self._epoch = torch.zeros(1, dtype=torch.long).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def caption_at(self, index: int) -> str:
        label = self.labels[index]
        if self.split == "train":
            return self.captions.caption(label, random.Random(item_seed(self.seed, int(self._epoch[0]), index)))
        return self.captions.eval_caption(label, random.Random(item_seed(self.seed, -1, index)))

    def __getitem__(self, index: int) -> tuple[Tensor, str, int]:
        image = self.images[index]
        if self.flip and random.Random(item_seed(self.seed + 1, int(self._epoch[0]), index)).random() < 0.5:
            image = image.flip(-1)
        return image, self.caption_at(index), self.labels[index]


# --------------------------------------------------------------------------- WebDataset tar shards


def _expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> ``a-000.tar a-001.tar a-002.tar`` (zero padding kept); one range per pattern."""
    match = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not match:
        return [pattern]
    first, last = match.group(1), match.group(2)
    width = len(first)
    return [pattern[: match.start()] + f"{i:0{width}d}" + pattern[match.end() :]
            for i in range(int(first), int(last) + 1)]  # fmt: skip


def tar_shards(spec: str) -> list[Path]:
    """The shard files a spec names (a ``.tar``, a brace pattern, or a folder of ``.tar`` files)."""
    path = Path(spec)
    shards = sorted(path.glob("*.tar")) if path.is_dir() else [Path(p) for p in _expand_braces(spec)]
    missing = [str(s) for s in shards if not s.is_file()]
    if not shards or missing:
        raise ValueError(f"pairs {spec}: no tar shard found" + (f" ({missing[0]} is missing)" if missing else ""))
    return shards


class WebDatasetPairs(IterableDataset):
    """Pairs streamed from WebDataset-style tar shards: ``KEY.jpg|png|...`` + ``KEY.txt`` (+ ``KEY.cls``).

    Shards are read in order; with several loader workers each reads every ``num_workers``-th shard. A sample
    without an image or a caption, or whose image does not decode, is skipped and counted.
    """

    def __init__(self, spec: str, *, size: int, channels: int) -> None:
        self.shards = tar_shards(spec)
        self.spec, self.size, self.channels = spec, size, channels
        self.skips = SkipCounter()

    def set_epoch(self, epoch: int) -> None:  # streamed in shard order: nothing to reseed
        pass

    def _samples(self, shard: Path) -> Iterator[dict[str, bytes]]:
        try:
            archive = tarfile.open(shard)  # noqa: SIM115 - closed by the `with` below, after the error check
        except (tarfile.TarError, OSError) as error:
            raise ValueError(f"pairs {shard}: not a readable tar file ({error})") from None
        with archive:
            key, sample = None, {}
            for member in archive:
                if not member.isfile():
                    continue
                name = Path(member.name)
                stem, suffix = str(name.parent / name.name.split(".")[0]), "." + ".".join(name.name.split(".")[1:])
                if stem != key:
                    if sample:
                        yield sample
                    key, sample = stem, {}
                handle = archive.extractfile(member)
                if handle is not None:
                    sample[suffix.lower()] = handle.read()
            if sample:
                yield sample

    def __iter__(self) -> Iterator[tuple[Tensor, str, int]]:
        info = torch.utils.data.get_worker_info()
        shards = self.shards if info is None else self.shards[info.id :: info.num_workers]
        for shard in shards:
            for sample in self._samples(shard):
                data = next((sample[s] for s in IMAGE_SUFFIXES if s in sample), None)
                caption = sample.get(".txt", b"").decode("utf-8", "replace").strip()
                if data is None:
                    self.skips.add("missing_image")
                    continue
                if not caption:
                    self.skips.add("empty_caption")
                    continue
                try:
                    image = decode_image(data, self.size, self.channels)
                except ValueError:
                    self.skips.add("undecodable_image")
                    continue
                label_text = sample.get(".cls", b"").decode().strip()
                yield image, caption, int(label_text) if label_text.lstrip("-").isdigit() else -1


# --------------------------------------------------------------------------- opening and batching


def _is_tar_spec(spec: str) -> bool:
    path = Path(spec)
    return spec.endswith(".tar") or (path.is_dir() and any(path.glob("*.tar")) and not (path / "state.json").exists())


def open_pairs(
    spec: str,
    *,
    split: str = "train",
    size: int = 28,
    channels: int = 1,
    seed: int = 0,
    flip: bool = False,
    image_column: str = "image",
    caption_column: str = "caption",
    label_column: str | None = "label",
    captions: FashionCaptions | None = None,
) -> Dataset | IterableDataset:
    """A dataset of ``(uint8 image, caption, label)`` for ``spec`` (see the module docstring)."""
    if spec == "fashion-mnist":
        return FashionPairs(split, captions=captions, seed=seed, flip=flip)
    if _is_tar_spec(spec):
        return WebDatasetPairs(spec, size=size, channels=channels)
    records = read_pair_records(spec, split=split, image_column=image_column, caption_column=caption_column,
                                label_column=label_column)  # fmt: skip
    return PairDataset(records, size=size, channels=channels, seed=seed, flip=flip)


def collate_pairs(items: list[tuple[Tensor, str, int] | None]) -> ImageCaptionBatch:
    """Stack pairs into an :class:`ImageCaptionBatch`, dropping the ones that failed to decode (``None``)."""
    kept = [item for item in items if item is not None]
    if not kept:
        return ImageCaptionBatch(torch.zeros(0, 1, 1, 1, dtype=torch.uint8), [], torch.zeros(0, dtype=torch.long))
    images = torch.stack([item[0] for item in kept])
    return ImageCaptionBatch(images, [item[1] for item in kept], torch.tensor([item[2] for item in kept]))


def make_pair_loader(dataset: Dataset | IterableDataset, config: Any) -> Any:
    """:func:`hsrl.training.make_dataloader` for pairs, with the epoch passed on to the dataset (its captions
    and flips are drawn per epoch; Accelerate's loader tells only the sampler)."""
    from hsrl.training import make_dataloader

    loader = make_dataloader(dataset, config, collate_fn=collate_pairs)
    sampler = getattr(loader, "sampler", None)
    if sampler is not None and hasattr(sampler, "set_epoch") and hasattr(dataset, "set_epoch"):
        sampler_set_epoch = sampler.set_epoch

        def set_epoch(epoch: int) -> None:
            sampler_set_epoch(epoch)
            dataset.set_epoch(epoch)

        sampler.set_epoch = set_epoch
    return loader
