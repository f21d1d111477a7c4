"""Image–caption readers on small fixtures in the real formats, the generated captions, and bad input."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hsrl.data.captions import (
    CLASS_NAMES,
    EVAL_SYNONYMS,
    EVAL_TEMPLATES,
    TRAIN_TEMPLATES,
    FashionCaptions,
    with_article,
)
from hsrl.data.pairs import (
    FashionPairs,
    ImageCaptionBatch,
    PairDataset,
    WebDatasetPairs,
    collate_pairs,
    open_pairs,
    read_pair_records,
)


def _png(value: int, size: int = 12, colour: bool = True) -> bytes:
    mode = "RGB" if colour else "L"
    array = np.full((size, size, 3) if colour else (size, size), value, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def image_files(tmp_path: Path) -> list[str]:
    names = []
    for i, value in enumerate((10, 120, 250)):
        (tmp_path / f"img{i}.png").write_bytes(_png(value))
        names.append(f"img{i}.png")
    return names


CAPTIONS = ["a dark square", "a grey square", "a white square"]


def _check_dataset(dataset, size: int = 8, channels: int = 3) -> None:
    batch = collate_pairs([dataset[i] for i in range(len(dataset))])
    assert isinstance(batch, ImageCaptionBatch)
    assert batch.images.shape == (3, channels, size, size) and batch.images.dtype == torch.uint8
    assert batch.captions == CAPTIONS
    # The pixel values survive decoding, resizing and cropping (a flat image stays flat).
    assert batch.images[:, 0, 0, 0].tolist() == [10, 120, 250]


def test_jsonl_with_relative_image_paths(tmp_path: Path, image_files: list[str]) -> None:
    table = tmp_path / "pairs.jsonl"
    table.write_text(
        "".join(json.dumps({"image": f, "caption": c}) + "\n" for f, c in zip(image_files, CAPTIONS, strict=True))
    )
    _check_dataset(open_pairs(str(table), size=8, channels=3))


def test_csv(tmp_path: Path, image_files: list[str]) -> None:
    table = tmp_path / "pairs.csv"
    table.write_text("image,caption,label\n" + "".join(f"{f},{c},{i}\n" for i, (f, c) in
                                                      enumerate(zip(image_files, CAPTIONS, strict=True))))  # fmt: skip
    dataset = open_pairs(str(table), size=8, channels=3)
    _check_dataset(dataset)
    assert dataset.labels == [0, 1, 2]


def test_parquet_with_own_column_names(tmp_path: Path, image_files: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"file": image_files, "text": CAPTIONS}), table)
    _check_dataset(open_pairs(str(table), size=8, channels=3, image_column="file", caption_column="text"))


def test_hf_save_to_disk_with_image_feature_and_several_captions(tmp_path: Path) -> None:
    import datasets

    pictures = [Image.open(io.BytesIO(_png(v))) for v in (10, 120, 250)]
    several = [[c, c.replace("square", "tile")] for c in CAPTIONS]  # COCO-like: several captions per image
    features = datasets.Features({"img": datasets.Image(), "sentences": datasets.Sequence(datasets.Value("string"))})
    data = datasets.Dataset.from_dict({"img": pictures, "sentences": several}, features=features)
    folder = tmp_path / "hf"
    datasets.DatasetDict({"train": data}).save_to_disk(str(folder))
    dataset = open_pairs(str(folder), size=8, channels=1, image_column="img", caption_column="sentences")
    assert isinstance(dataset, PairDataset)
    seen = set()
    for epoch in range(8):  # each epoch draws one of an image's captions
        dataset.set_epoch(epoch)
        seen.add(dataset[0][1])
    assert seen == {"a dark square", "a dark tile"}
    assert dataset[0][0].shape == (1, 8, 8)


def _tar(path: Path, samples: list[tuple[str, bytes | None, str | None]]) -> None:
    with tarfile.open(path, "w") as archive:
        for key, image, caption in samples:
            for suffix, data in ((".png", image), (".txt", caption.encode() if caption is not None else None)):
                if data is None:
                    continue
                info = tarfile.TarInfo(key + suffix)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))


def test_webdataset_shards_streamed_in_order_with_bad_samples_counted(tmp_path: Path) -> None:
    _tar(tmp_path / "shard-000.tar", [("a/0", _png(10), CAPTIONS[0]), ("a/1", _png(120), CAPTIONS[1])])
    _tar(tmp_path / "shard-001.tar", [("b/2", _png(250), CAPTIONS[2]), ("b/3", b"not a png", "broken"),
                                      ("b/4", None, "no image"), ("b/5", _png(1), "")])  # fmt: skip
    dataset = open_pairs(str(tmp_path / "shard-{000..001}.tar"), size=8, channels=3)
    assert isinstance(dataset, WebDatasetPairs)
    items = list(dataset)
    _check_dataset(items)
    assert dataset.skips.as_dict() == {"missing_image": 1, "empty_caption": 1, "undecodable_image": 1}
    assert len(list(open_pairs(str(tmp_path), size=8, channels=3))) == 3  # a folder of shards


def test_missing_image_and_empty_caption_are_skipped_and_counted(tmp_path: Path, image_files: list[str]) -> None:
    table = tmp_path / "pairs.jsonl"
    rows = [{"image": image_files[0], "caption": "ok"}, {"image": "gone.png", "caption": "missing"},
            {"image": image_files[1], "caption": "  "}]  # fmt: skip
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.warns(UserWarning, match="skipped 1 rows with a missing image file and 1 with an empty caption"):
        records = read_pair_records(table)
    assert len(records) == 1 and records.skipped == {"missing_image": 1, "empty_caption": 1}


def test_undecodable_image_is_dropped_from_its_batch(tmp_path: Path, image_files: list[str]) -> None:
    (tmp_path / "bad.png").write_bytes(b"\x89PNG but not really")
    table = tmp_path / "pairs.jsonl"
    table.write_text(json.dumps({"image": image_files[0], "caption": "a"}) + "\n"
                     + json.dumps({"image": "bad.png", "caption": "b"}) + "\n")  # fmt: skip
    dataset = open_pairs(str(table), size=8, channels=3)
    batch = collate_pairs([dataset[0], dataset[1]])
    assert batch.captions == ["a"] and dataset.skips.as_dict()["undecodable_image"] == 1


@pytest.mark.parametrize(
    ("rows", "kwargs", "message"),
    [
        (
            [{"image": "x.png", "text": "a"}],
            {},
            "no caption column 'caption' (columns: image, text); pass --caption-column",
        ),
        ([{"picture": "x.png", "caption": "a"}], {}, "no image column 'image'"),
        ([{"image": "gone.png", "caption": "a"}], {}, "no usable pair in 1 rows (1 missing images, 0 empty captions)"),
    ],
)
def test_bad_tables_are_one_line_errors(tmp_path: Path, rows: list[dict], kwargs: dict, message: str) -> None:
    table = tmp_path / "pairs.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        read_pair_records(table, **kwargs)
    assert "\n" not in str(error.value)


def test_unknown_source_and_missing_shard(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected fashion-mnist, hf:NAME"):
        open_pairs(str(tmp_path / "pairs.txt"))
    with pytest.raises(ValueError, match="no tar shard found"):
        open_pairs(str(tmp_path / "s-{0..1}.tar"))
    with pytest.raises(ValueError, match="not a 🤗 save_to_disk folder"):
        open_pairs(str(tmp_path))


# --------------------------------------------------------------------------- generated captions


def test_held_out_templates_and_phrasings_never_appear_in_training_captions() -> None:
    captions = FashionCaptions()
    training = set(captions.training_captions())
    rng = random.Random(0)
    drawn = {captions.caption(rng.randrange(10), rng) for _ in range(3000)}
    assert drawn <= training  # the cache list covers everything training can draw
    assert len(training) == 10 * 4 * len(TRAIN_TEMPLATES)
    for label in range(10):
        for prompt in captions.prompts(label):
            assert prompt not in training
        for phrase in EVAL_SYNONYMS[label]:
            assert not any(phrase in caption for caption in training)
    # The held-out templates' fixed words are absent from every training caption.
    for template in EVAL_TEMPLATES:
        head = template.split("{")[0].strip()
        assert not any(caption.startswith(head) for caption in training)


def test_articles_and_categories() -> None:
    assert with_article("ankle boot") == "an ankle boot"
    assert with_article("trousers") == "a pair of trousers"
    assert with_article("bag") == "a bag"
    assert "a kind of footwear" in " ".join(FashionCaptions().training_captions())


def test_unseen_classes_have_no_training_caption_and_no_training_image() -> None:
    unseen = FashionCaptions.parse_unseen(["sandal", "Bag"])
    assert unseen == (5, 8)
    captions = FashionCaptions(unseen)
    assert not any(n in c for c in captions.training_captions() for n in ("sandal", "bag", "purse"))
    with pytest.raises(ValueError, match="held out"):
        captions.caption(5, random.Random(0))
    train = FashionPairs("train", captions=captions)
    assert not set(train.labels) & {5, 8} and len(train) == 48_000
    with pytest.raises(ValueError, match="unknown Fashion-MNIST class 'hat'"):
        FashionCaptions.parse_unseen(["hat"])


def test_fashion_pairs_are_deterministic_per_epoch() -> None:
    pairs = FashionPairs("train", seed=3, flip=True)
    first = [pairs[i][1] for i in range(20)]
    assert first == [pairs[i][1] for i in range(20)]
    pairs.set_epoch(1)
    assert first != [pairs[i][1] for i in range(20)]
    test = FashionPairs("test")
    image, caption, label = test[0]
    assert image.shape == (1, 28, 28) and CLASS_NAMES[label] in caption
    assert any(caption.startswith(t.split("{")[0]) for t in EVAL_TEMPLATES)
