"""Image readers (Debian idx files, image folders, 🤗 datasets), clear errors, and deterministic two-view
augmentation down to an exactly resumable run with loader workers."""

from __future__ import annotations

import gzip
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from hsrl.checkpoints import find_latest_checkpoint
from hsrl.data.images import (
    AugmentConfig,
    BatchedTwoViews,
    ImageFolderSource,
    TensorImageSource,
    TwoViewDataset,
    augment_defaults,
    batch_views,
    check_channels,
    item_seed,
    load_eval_split,
    make_view_loader,
    open_images,
    read_fashion_mnist,
    two_view_dataset,
)
from hsrl.losses import HypersphereLoss
from hsrl.models.image import small_alexnet
from hsrl.training import TrainConfig, encode_views, fit, training_session

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
COLOURS = {"cats": (200, 30, 30), "dogs": (30, 30, 200)}


# --------------------------------------------------------------------------- fixtures the tests make


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    n, rows, cols = images.shape
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as handle:
        handle.write(struct.pack(">4I", 0x803, n, rows, cols) + images.astype(np.uint8).tobytes())
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as handle:
        handle.write(struct.pack(">2I", 0x801, n) + labels.astype(np.uint8).tobytes())


def png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (40, 30), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    image.putpixel((0, 0), (255, 255, 255))  # not flat: crops differ
    image.convert(mode).save(path)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    for name, colour in COLOURS.items():
        for i in range(5):
            png(tmp_path / "folder" / name / f"{i}.png", colour, mode="L" if i == 0 else "RGB")
    return tmp_path / "folder"


def tiny_source(n: int = 24, size: int = 20, channels: int = 1) -> TensorImageSource:
    images = torch.randint(0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(0))
    return TensorImageSource(images.to(torch.uint8), torch.arange(n) % 3, "tiny", num_classes=3)


TINY_AUGMENT = AugmentConfig(
    channels=1, size=16, eval_resize=16, scale=(0.3, 1.0), jitter=(0.4, 0.4, 0.0, 0.0), grayscale=0.0, mean=(0.5,),
    std=(0.25,),
)  # fmt: skip


# --------------------------------------------------------------------------- readers


def test_fashion_mnist_reads_idx_files_in_the_debian_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (7, 28, 28)), rng.integers(0, 256, (3, 28, 28))
    write_idx(tmp_path, "train", train, np.arange(7) % 10)
    write_idx(tmp_path, "t10k", test, np.array([9, 8, 7]))
    split = read_fashion_mnist("test", tmp_path)
    assert split.images.shape == (3, 1, 28, 28) and split.images.dtype == torch.uint8
    assert torch.equal(split.images[:, 0], torch.from_numpy(test.astype(np.uint8)))
    assert split.labels.tolist() == [9, 8, 7]
    source = open_images("fashion-mnist", "pretrain", root=tmp_path)
    assert len(source) == 7 and source.channels == 1
    image, label = source[6]
    assert torch.equal(image[0], torch.from_numpy(train[6].astype(np.uint8))) and label == 6
    colour = open_images("fashion-mnist", "test", root=tmp_path, channels=3)[0][0]
    assert colour.shape == (3, 28, 28) and torch.equal(colour[0], colour[2])  # grey replicated


def write_stl10(root: Path, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """STL-10's binary layout (``stl10_binary/*.bin``): uint8 images stored column-major, labels 1–10."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    splits = {"train": 4, "test": 3, "unlabeled": 5}
    written: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for name, count in splits.items():
        images = rng.integers(0, 256, (count, 3, 96, 96), dtype=np.uint8)  # (N, C, H, W) as a user sees them
        images.transpose(0, 1, 3, 2).tofile(folder / f"{name}_X.bin")  # the file holds each plane transposed
        labels = None
        if name != "unlabeled":
            labels = rng.integers(0, 10, count).astype(np.uint8)
            (labels + 1).tofile(folder / f"{name}_y.bin")
        written[name] = (images, labels)
    (folder / "class_names.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    (folder / "fold_indices.txt").write_text("0 1\n")
    return written


def test_stl10_reads_its_binary_files_with_the_papers_splits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets as tvd

    written = write_stl10(tmp_path, np.random.default_rng(0))
    # torchvision checks the real files' MD5 sums; these are small stand-ins in the same format.
    monkeypatch.setattr(tvd.STL10, "_check_integrity", lambda self: True)
    pretrain = open_images("stl10", "pretrain", root=tmp_path, download=False)
    assert len(pretrain) == 4 + 5 and pretrain.channels == 3  # the paper pretrains on train + unlabeled
    image, label = pretrain[0]
    assert image.shape == (3, 96, 96) and image.dtype == torch.uint8
    assert torch.equal(image, torch.from_numpy(written["train"][0][0]))  # upright, not transposed
    assert label == int(written["train"][1][0])  # labels 1–10 on disk, 0–9 here
    assert torch.equal(pretrain[4 + 2][0], torch.from_numpy(written["unlabeled"][0][2]))
    test = open_images("stl10", "test", root=tmp_path, download=False)
    assert len(test) == 3 and [test[i][1] for i in range(3)] == written["test"][1].tolist()
    grey = open_images("stl10", "train", root=tmp_path, channels=1, download=False)[1][0]
    assert grey.shape == (1, 96, 96)


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_reads_its_pickled_batches(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    import torchvision.datasets as tvd

    rng = np.random.default_rng(1)
    classes, key = (10, "labels") if kind == "cifar10" else (100, "fine_labels")
    cls = tvd.CIFAR10 if kind == "cifar10" else tvd.CIFAR100
    folder = tmp_path / cls.base_folder
    folder.mkdir()
    written: dict[str, tuple[np.ndarray, list[int]]] = {}
    for name, _ in cls.train_list + cls.test_list:
        images = rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, classes, 2).tolist()
        with open(folder / name, "wb") as handle:  # rows of 3072 bytes: the red plane, then green, then blue
            pickle.dump({"data": images.reshape(2, -1), key: labels}, handle)
        written[name] = (images, labels)
    with open(folder / cls.meta["filename"], "wb") as handle:
        pickle.dump({cls.meta["key"]: [f"class{i}" for i in range(classes)]}, handle)
    # torchvision checks the real files' MD5 sums; these are small stand-ins in the same format.
    monkeypatch.setattr(cls, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tvd.cifar, "check_integrity", lambda path, md5=None: Path(path).is_file())
    train = open_images(kind, "train", root=tmp_path, download=False)
    assert len(train) == 2 * len(cls.train_list) and train.num_classes == classes
    first_batch = cls.train_list[0][0]
    image, label = train[1]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
    assert torch.equal(image, torch.from_numpy(written[first_batch][0][1]))  # channels first, as the model takes
    assert label == written[first_batch][1][1]
    test = open_images(kind, "test", root=tmp_path, download=False)
    assert [test[i][1] for i in range(2)] == written[cls.test_list[0][0]][1]


@pytest.mark.skipif(not (DEBIAN / "t10k-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist absent")
def test_fashion_mnist_from_the_installed_debian_package() -> None:
    test = open_images("fashion-mnist", "test")
    assert len(test) == 10_000 and test.num_classes == 10
    image, label = test[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.uint8 and 0 <= label < 10


def test_image_folder_labels_channels_and_holdout(image_folder: Path) -> None:
    train = open_images(f"imagefolder:{image_folder}", "train")
    test = open_images(f"imagefolder:{image_folder}", "test")
    assert len(train) == 8 and len(test) == 2  # the fixed 80/20 holdout of 10 files
    seen = set()
    for source in (train, test):
        for i in range(len(source)):
            image, label = source[i]
            assert image.shape == (3, 30, 40) and image.dtype == torch.uint8  # greyscale PNGs become RGB too
            seen.add(source.describe(i))
            expected = COLOURS[["cats", "dogs"][label]]
            if not source.describe(i).endswith("0.png"):
                assert tuple(image[:, 10, 10].tolist()) == expected
    assert len(seen) == 10  # train and test are disjoint and cover the folder
    assert open_images(f"imagefolder:{image_folder}", "train", channels=1)[0][0].shape == (1, 30, 40)


def test_image_folder_with_train_and_test_folders(tmp_path: Path) -> None:
    for split, count in (("train", 3), ("test", 2)):
        for name, colour in COLOURS.items():
            for i in range(count):
                png(tmp_path / split / name / f"{i}.jpg", colour)
    train = open_images(f"imagefolder:{tmp_path}", "train")
    test = open_images(f"imagefolder:{tmp_path}", "test")
    assert (len(train), len(test)) == (6, 4)
    assert sorted(test[i][1] for i in range(4)) == [0, 0, 1, 1]


def test_hf_dataset_saved_to_disk_with_columns_found_by_type(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"picture": datasets.Image(), "kind": datasets.ClassLabel(names=["red", "blue"])})
    rows = {"picture": [], "kind": []}
    for i in range(6):
        colour = (220, 0, 0) if i % 2 == 0 else (0, 0, 220)
        rows["picture"].append(Image.new("RGB", (12, 10), colour))
        rows["kind"].append(i % 2)
    whole = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": whole.select(range(4)), "test": whole.select(range(4, 6))}).save_to_disk(
        str(tmp_path / "dd")
    )
    test = open_images(str(tmp_path / "dd"), "test")
    assert len(test) == 2 and test.num_classes == 2
    image, label = test[1]
    assert image.shape == (3, 10, 12) and label == 1 and image[2, 0, 0] == 220
    whole.save_to_disk(str(tmp_path / "one"))  # one split only: the fixed holdout gives the test set
    assert len(open_images(f"hf:{tmp_path / 'one'}", "train")) + len(open_images(str(tmp_path / "one"), "test")) == 6


# --------------------------------------------------------------------------- clear errors


@pytest.mark.parametrize(
    "spec, message",
    [
        ("cifar10", "cifar10 is not in"),
        ("stl10", "stl10 is not in"),
        ("imagefolder:/nonexistent/images", "does not exist"),
        ("/nonexistent/hf-dataset", "does not exist"),
    ],
)
def test_a_missing_dataset_fails_at_once_with_one_line(
    spec: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as caught:
        open_images(spec, "train", root=tmp_path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_missing_hub_dataset_offline_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    with pytest.raises(FileNotFoundError) as caught:
        open_images("hf:nobody/no-such-image-dataset", "train")
    assert "could not load" in str(caught.value) and "\n" not in str(caught.value)


def test_a_corrupt_image_is_skipped_with_a_warning_and_counted(image_folder: Path) -> None:
    (image_folder / "dogs" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    source = ImageFolderSource(image_folder)
    views = TwoViewDataset(source, augment_defaults("imagefolder", size=16, eval_resize=16))
    with pytest.warns(UserWarning, match="3.png"):
        batches = list(DataLoader(views, batch_size=4))  # a whole epoch, no crash
    assert sum(len(b[0]) for b in batches) == len(source) and source.skipped == 1
    assert source.skipped_items()[0].endswith("3.png")
    # Evaluation leaves it out instead of reading a neighbour twice.
    split = load_eval_split(ImageFolderSource(image_folder), views.config)
    assert len(split.labels) == len(source) - 1


def test_corrupt_images_seen_by_workers_are_counted_in_the_main_process(image_folder: Path) -> None:
    for name in ("cats/1.png", "dogs/2.png"):
        (image_folder / name).write_bytes(b"garbage")
    source = ImageFolderSource(image_folder)
    views = TwoViewDataset(source, augment_defaults("imagefolder", size=16, eval_resize=16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # workers' warnings go to their own stderr
        batches = list(DataLoader(views, batch_size=2, num_workers=2))
    assert sum(len(b[0]) for b in batches) == 10
    assert source.skipped == 2 and sorted(Path(p).name for p in source.skipped_items()) == ["1.png", "2.png"]


def test_greyscale_and_colour_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"colour \(3 channels\) images but tiny gives greyscale"):
        TwoViewDataset(tiny_source(), augment_defaults("stl10"))
    with pytest.raises(ValueError, match="--channels 1"):
        check_channels(1, tiny_source(channels=3))
    model = small_alexnet(in_channels=3, image_size=16, width=0.05, fc_dim=64)
    with pytest.raises(ValueError, match="takes colour"):
        model(torch.zeros(2, 1, 16, 16, dtype=torch.uint8))


# --------------------------------------------------------------------------- augmentation


def test_views_shapes_and_dtypes() -> None:
    source = TensorImageSource(torch.randint(0, 256, (4, 3, 96, 96), dtype=torch.uint8), None, "stl-like")
    a, b = TwoViewDataset(source, augment_defaults("stl10"))[0]
    assert a.shape == b.shape == (3, 64, 64) and a.dtype == torch.uint8 and not torch.equal(a, b)
    x, _ = TwoViewDataset(source, augment_defaults("stl10"), dtype="float32")[0]
    assert x.dtype == torch.float32 and x.shape == (3, 64, 64) and x.min() < 0  # normalised
    grey, _ = TwoViewDataset(tiny_source(size=28), augment_defaults("fashion-mnist"))[0]
    assert grey.shape == (1, 28, 28) and grey.dtype == torch.uint8


def test_views_depend_only_on_seed_epoch_and_index() -> None:
    views = TwoViewDataset(tiny_source(), TINY_AUGMENT, seed=5)
    state = torch.get_rng_state()
    first = views[3]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is untouched
    torch.manual_seed(999)
    again = views[3]
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    views.set_epoch(1)
    assert not torch.equal(views[3][0], first[0])
    assert not torch.equal(TwoViewDataset(tiny_source(), TINY_AUGMENT, seed=6)[3][0], first[0])
    assert len({item_seed(0, e, i) for e in range(50) for i in range(50)}) == 2500


def test_persistent_workers_see_the_epoch_set_through_the_loader() -> None:
    views = TwoViewDataset(tiny_source(), TINY_AUGMENT, seed=1)
    config = TrainConfig(batch_size=6, num_workers=2, seed=1, output_dir="unused")
    loader = make_view_loader(views, config)
    by_epoch = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)  # what fit's loader.set_epoch reaches
        by_epoch.append(torch.cat([batch[0] for batch in loader]))
    order = list(iter(loader.sampler))  # the sampler is at epoch 1 now
    reference = TwoViewDataset(tiny_source(), TINY_AUGMENT, seed=1)
    reference.set_epoch(1)
    expected = torch.stack([reference[i][0] for i in order])
    assert torch.equal(by_epoch[1], expected) and not torch.equal(by_epoch[0], by_epoch[1])


def _train_tiny(out: Path, encode=encode_views, resume: str | None = None):
    config = TrainConfig(
        output_dir=str(out), batch_size=6, epochs=3, optimizer="sgd", lr=0.05, checkpoint_every=5, seed=3,
        num_workers=2, progress=False, log_with="none", resume=resume,
    )  # fmt: skip
    with training_session(config) as accelerator:
        model = small_alexnet(in_channels=1, image_size=16, width=0.1, fc_dim=320, dim=8, mean=(0.5,), std=(0.25,))
        views = TwoViewDataset(tiny_source(), TINY_AUGMENT, seed=3)
        loss = HypersphereLoss("align:1,alpha=2 + uniform:1,t=2")
        result = fit(model, loss, make_view_loader(views, config), config, accelerator=accelerator, encode=encode)
        return result, views


@pytest.fixture
def one_thread():
    # A tiny model's ops are thread hand-offs more than arithmetic: on a busy 2-core machine, one thread
    # is 10-30x faster. Bit-identity between runs does not depend on it.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_a_run_resumed_mid_epoch_with_workers_ends_with_the_same_weights(tmp_path: Path) -> None:
    # 24 images / batch 6 = 4 steps an epoch, 12 in all; checkpoints at 5 and 10 (epochs 2 and 3).
    uninterrupted, views = _train_tiny(tmp_path / "a")
    assert views.epoch == 2  # fit's set_epoch reached the dataset (epochs 0, 1, 2)
    calls = {"n": 0}

    def dies_at_step_8(model, batch):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt("simulated kill")
        return encode_views(model, batch)

    with pytest.raises(KeyboardInterrupt):
        _train_tiny(tmp_path / "b", encode=dies_at_step_8)
    assert find_latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step-00000005"
    resumed, _ = _train_tiny(tmp_path / "b", resume="latest")
    assert resumed.steps == uninterrupted.steps == 12
    for name, value in uninterrupted.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


# --------------------------------------------------------------------------- batched views


def _plain(size: int = 28, **overrides: object) -> AugmentConfig:
    """No crop, flip, jitter or erasing unless asked: every random step can be checked on its own."""
    settings = {"channels": 1, "size": size, "eval_resize": size, "scale": (1.0, 1.0), "ratio": (1.0, 1.0),
                "flip": 0.0, "jitter": (0.0,) * 4, "grayscale": 0.0, "mean": (0.5,), "std": (0.25,)}  # fmt: skip
    return AugmentConfig(**{**settings, **overrides})


def test_batch_views_without_randomness_are_the_image_and_a_flip_mirrors_it() -> None:
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    same = batch_views(images, _plain(), torch.Generator().manual_seed(1))
    assert same.dtype == torch.float32 and same.shape == (5, 1, 28, 28)
    torch.testing.assert_close(same, images.float() / 255, rtol=0, atol=1e-5)  # the full box, pixel centres
    mirrored = batch_views(images, _plain(flip=1.0), torch.Generator().manual_seed(1))
    torch.testing.assert_close(mirrored, images.flip(-1).float() / 255, rtol=0, atol=1e-5)


def test_batch_views_crop_jitter_and_erase_stay_in_range_and_follow_the_seed() -> None:
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    config = augment_defaults("cifar10", jitter=(0.4, 0.4, 0.4, 0.0), erase=0.5, batched=True)
    first = batch_views(images, config, torch.Generator().manual_seed(7))
    again = batch_views(images, config, torch.Generator().manual_seed(7))
    other = batch_views(images, config, torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.shape == (64, 3, 32, 32) and float(first.min()) >= 0 and float(first.max()) <= 1
    erased = (first == 0).all(dim=1).flatten(1).any(dim=1)  # a zeroed rectangle in about half the views
    assert 10 < int(erased.sum()) < 54


def test_batch_views_erase_a_rectangle_of_zeros() -> None:
    images = torch.full((8, 1, 28, 28), 200, dtype=torch.uint8)
    views = batch_views(images, _plain(erase=1.0), torch.Generator().manual_seed(3))
    for view in views[:, 0]:
        rows, cols = (view == 0).any(dim=1), (view == 0).any(dim=0)
        assert int(rows.sum()) > 0 and int(cols.sum()) > 0
        # Zeros form exactly the rectangle spanned by their rows and columns; the rest is untouched.
        assert torch.equal(view == 0, rows[:, None] & cols[None, :])
        assert torch.allclose(view[view != 0], torch.tensor(200 / 255))


def test_batched_views_depend_only_on_the_batch_and_epoch_and_resume_exactly() -> None:
    views = BatchedTwoViews(tiny_source(size=28), augment_defaults("fashion-mnist"), seed=3)
    batch = [views[i] for i in (4, 1, 7)]
    first = views.collate(batch)
    torch.manual_seed(123)  # the global random state plays no part
    again = views.collate(batch)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], first[1])  # two different views
    views.set_epoch(1)
    assert not torch.equal(views.collate(batch)[0], first[0])
    config = TrainConfig(batch_size=3, seed=3, output_dir="unused")
    loader = make_view_loader(two_view_dataset(tiny_source(size=28), augment_defaults("fashion-mnist"), 3), config)
    assert isinstance(loader.dataset, BatchedTwoViews)
    v1, v2 = next(iter(loader))
    assert v1.shape == v2.shape == (3, 1, 28, 28) and v1.dtype == torch.float32


def test_batched_views_refuse_hue_jitter() -> None:
    with pytest.raises(ValueError, match="hue"):
        AugmentConfig(batched=True)  # the STL-10 defaults jitter hue
