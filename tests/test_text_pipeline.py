"""Text pretraining: readers, tokenizer, encoders, evaluation metrics and the bookcorpus recipe end to end."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from model_folders import opens_everywhere

from hsrl.data.text import load_austen
from hsrl.data.text_sources import BookCorpusPairs, load_documents, read_text_file
from hsrl.evaluation.text import book_attribution, format_comparison, neighbour_retrieval, senteval
from hsrl.models.text import (
    ScratchConfig,
    build_text_encoder,
    encode_texts,
    resolve_model_path,
    save_text_encoder,
)
from hsrl.models.wordpiece import train_wordpiece_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
TINY = ScratchConfig(layers=1, hidden=32, heads=2, intermediate=64, vocab_size=400, max_seq_length=16)


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    return [s for doc in load_austen(["persuasion"])[:4] for s in doc.sentences]


@pytest.fixture()
def small_txt(tmp_path: Path, sentences: list[str]) -> Path:
    """Documents of 20 sentences, one sentence per line, blank line between documents."""
    blocks = ["\n".join(sentences[i : i + 20]) for i in range(0, 200, 20)]
    path = tmp_path / "books.txt"
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- readers


def test_txt_blank_lines_end_documents_and_prose_lines_are_split(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("One. Two here.\nThree.\n\n\nFour.\nFive.\n", encoding="utf-8")
    docs = read_text_file(path)
    assert [d.sentences for d in docs] == [["One.", "Two here.", "Three."], ["Four.", "Five."]]


def test_every_format_gives_the_same_documents(tmp_path: Path) -> None:
    records = [
        {"text": "A first. A second.", "doc": "x"},
        {"text": "A third.", "doc": "x"},
        {"text": "B one. B two.", "doc": "y"},
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "d.parquet")
    (tmp_path / "d.txt.gz").write_bytes(gzip.compress(b"A first. A second.\nA third.\n\nB one. B two.\n"))
    expected = [["A first.", "A second.", "A third."], ["B one.", "B two."]]
    for name in ("d.jsonl", "d.parquet", "d.txt.gz"):
        assert [d.sentences for d in read_text_file(tmp_path / name)] == expected, name
    train, heldout = load_documents(str(tmp_path))  # a folder: every file; the last document is held out
    assert sum(len(d.sentences) for d in train + heldout) == 3 * 5
    assert heldout == [train[-1].__class__("d.txt/00001", ["B one.", "B two."])]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (b"Only one sentence here.\n", "two or more sentences"),
        (b"caf\xe9 au lait. Another one.\n", "not UTF-8"),
    ],
)
def test_bad_files_fail_with_one_clear_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        load_documents(str(path))
    assert "\n" not in str(info.value)


def test_local_files_go_through_datasets_and_leave_the_folder_alone(tmp_path: Path) -> None:
    from hsrl.data.text_sources import _documents_through_datasets

    (tmp_path / "a.txt").write_text("One. Two.\n\nThree.\nFour.\n", encoding="utf-8")
    (tmp_path / "a.jsonl").write_text('{"text": "One. Two.", "document": 7}\n\n{"text": "Three."}\n')
    expected = {"a.txt": [["One.", "Two."], ["Three.", "Four."]], "a.jsonl": [["One.", "Two."], ["Three."]]}
    for name, sentences in expected.items():
        direct = _documents_through_datasets(tmp_path / name, Path(name).suffix)
        assert [d.sentences for d in direct] == sentences == [d.sentences for d in read_text_file(tmp_path / name)]
    assert [d.id for d in read_text_file(tmp_path / "a.jsonl")] == ["a/7", "a/0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "a.txt"]  # no cache beside the data
    (tmp_path / "b.jsonl").write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):  # the line reader names the line
        read_text_file(tmp_path / "b.jsonl")


def test_missing_dataset_and_unknown_type(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such file"):
        load_documents(str(tmp_path / "nope.txt"))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_documents(str(tmp_path / "x.csv"))


def test_bookcorpus_offline_fails_at_once_with_what_to_do_instead() -> None:
    with pytest.raises(ValueError, match="--dataset austen") as info:
        BookCorpusPairs()
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- tokenizer and encoders


def test_wordpiece_tokenizer_trains_offline(tmp_path: Path, sentences: list[str]) -> None:
    from transformers import AutoTokenizer

    train_wordpiece_tokenizer(sentences, vocab_size=300, output_dir=tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(tokenizer) <= 300
    ids = tokenizer("Anne Elliot")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.unk_token_id not in ids  # frequent words of the training text are in the vocabulary


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_scratch_transformer_is_unit_norm_and_round_trips_through_sentence_transformers(
    tmp_path: Path, sentences: list[str], pooling: str
) -> None:
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    build_text_encoder(None, sentences=sentences, scratch=TINY, workdir=tmp_path / "init", max_seq_length=16)
    encoder = build_text_encoder(str(tmp_path / "init"), pooling=pooling, projection_dim=8, max_seq_length=16)
    z = encode_texts(encoder, sentences[:10])
    assert z.shape == (10, 8)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(10), rtol=0, atol=1e-5)
    save_text_encoder(encoder, tmp_path / "model")
    for name in ("modules.json", "config_sentence_transformers.json", "1_Pooling"):
        assert (tmp_path / "model" / name).exists()
    reopened = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    again = torch.as_tensor(reopened.encode(sentences[:10], normalize_embeddings=False))
    torch.testing.assert_close(again, z, rtol=0, atol=1e-5)


def test_packaged_minilm_loads_and_matches_sentence_transformers(sentences: list[str]) -> None:
    from sentence_transformers import SentenceTransformer

    encoder = build_text_encoder("minilm", max_seq_length=256)
    reference = SentenceTransformer(resolve_model_path("minilm"), device="cpu")
    expected = torch.as_tensor(reference.encode(sentences[:8], normalize_embeddings=True))
    torch.testing.assert_close(encode_texts(encoder, sentences[:8]), expected, rtol=0, atol=1e-5)


def test_model_names_that_do_not_resolve_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ValueError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE=1"):
        resolve_model_path("sentence-transformers/all-mpnet-base-v2")
    with pytest.raises(ValueError, match="no such folder, and not a Hub id"):
        resolve_model_path(str(tmp_path / "missing" / "deeper" / "folder"))
    with pytest.raises(ValueError, match="not a sentence-transformers"):
        resolve_model_path(str(tmp_path))


# --------------------------------------------------------------------------- evaluation metrics


def test_neighbour_retrieval_on_hand_checkable_embeddings() -> None:
    # Four sentences of one document on the unit circle at these angles (radians).
    # Successor ranks among the other three: 0 -> 1 is nearest (rank 1); 1 -> 2 is 0.7 away
    # but 0 is 0.5 away (rank 2); 2 -> 3 is 1.8 away, behind 1 (0.7) and 0 (1.2) (rank 3).
    angles = torch.tensor([0.0, 0.5, 1.2, 3.0])
    z = torch.stack([angles.cos(), angles.sin()], dim=1)
    result = neighbour_retrieval(z, [0, 0, 0, 0], ks=(1, 2))
    assert result == pytest.approx({"recall@1": 1 / 3, "recall@2": 2 / 3, "mrr@10": (1 + 1 / 2 + 1 / 3) / 3})
    # A document boundary removes the query across it.
    assert neighbour_retrieval(z, [0, 0, 1, 1], ks=(1,))["recall@1"] == pytest.approx(0.5)


def test_format_comparison_marks_improvements_in_the_right_direction() -> None:
    table = format_comparison(
        {"align": 1.0, "recall@10": 0.2, "factbook_uniform": -3.0, "factbook_recall@10": 0.4},
        {"align": 0.5, "recall@10": 0.1, "factbook_uniform": -2.0, "factbook_recall@10": 0.5},
        ("a", "b"),
    )
    assert "| align | 1.0000 | 0.5000 | -0.5000 ✓ |" in table
    assert "| recall@10 | 0.2000 | 0.1000 | -0.1000 (0.50×) |" in table
    assert "| factbook_uniform | -3.0000 | -2.0000 | +1.0000 |" in table  # a loss that rose: worse
    assert "| factbook_recall@10 | 0.4000 | 0.5000 | +0.1000 (1.25×) ✓ |" in table


def test_senteval_on_separable_synthetic_task(tmp_path: Path) -> None:
    (tmp_path / "rt-polarity.pos").write_text("\n".join(f"good film {i}" for i in range(40)))
    (tmp_path / "rt-polarity.neg").write_bytes("\n".join(f"bad film caf\xe9 {i}" for i in range(40)).encode("latin-1"))

    def encode(texts: list[str]) -> torch.Tensor:
        return torch.tensor([[1.0, 0.0] if t.startswith("good") else [0.0, 1.0] for t in texts])

    assert senteval(encode, tmp_path, folds=5) == {"senteval_MR": 1.0}
    with pytest.raises(ValueError, match="none of the MR/CR/SUBJ/MPQA"):
        senteval(encode, tmp_path / "missing")


def test_book_attribution_is_perfect_for_an_oracle_and_chance_for_noise() -> None:
    books = ("persuasion", "northangerabbey")
    owner = {s: b for b in books for doc in load_austen([b]) for s in doc.sentences}

    def oracle(passages: list[str]) -> torch.Tensor:
        first = [next(b for s, b in owner.items() if p.startswith(s)) for p in passages]
        return torch.tensor([[1.0, 0.0] if b == books[0] else [0.0, 1.0] for b in first])

    result = book_attribution(oracle, books, per_book=20)
    assert result == {"attribution_knn5": 1.0, "attribution_linear": 1.0}

    def noise(passages: list[str]) -> torch.Tensor:
        return F.normalize(
            torch.randn(len(passages), 16, generator=torch.Generator().manual_seed(len(passages))), dim=1
        )

    assert book_attribution(noise, books, per_book=60)["attribution_knn5"] < 0.75


# --------------------------------------------------------------------------- the recipe


ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
SCRATCH_FLAGS = ["--scratch-layers", "1", "--scratch-hidden", "32", "--vocab-size", "400", "--max-seq-length", "16",
                 "--batch-size", "16", "--log-with", "none", "--no-progress", "--lr", "1e-3"]  # fmt: skip


def run_recipe(args: list[str], processes: int = 1, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    launch = [ACCELERATE, "launch", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if processes > 1:
        env["ACCELERATE_USE_CPU"] = "1"
        launch += ["--multi_gpu", "--num_processes", str(processes), "--main_process_port", "29541"]
    else:
        launch += ["--num_processes", "1"]
    command = [*launch, str(ROOT / "recipes" / "bookcorpus.py"), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_recipe_from_scratch_trains_evaluates_saves_and_resumes(tmp_path: Path, small_txt: Path) -> None:
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "run"
    common = ["--dataset", str(small_txt), "--output-dir", str(out), "--checkpoint-every", "2", *SCRATCH_FLAGS]
    first = run_recipe([*common, "--max-steps", "2"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert "| recall@10 |" in first.stdout
    resumed = run_recipe([*common, "--max-steps", "4", "--resume", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "(step 2," in resumed.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and {"align", "uniform", "recall@1", "mrr@10"} <= set(metrics["trained"])
    z = SentenceTransformer(str(out / "model"), device="cpu").encode(["Anne was there."])
    assert np.linalg.norm(z, axis=1) == pytest.approx([1.0], abs=1e-5)
    card = (out / "model" / "README.md").read_text()  # the card filled from this run, not the generic one
    assert "`align:0.9,alpha=2 + uniform:0.1,t=5`" in card and "random initialisation" in card
    assert f"| `recall@10` | {metrics['summary']['recall@10']:.4f} |" in card and "2005.10242" in card
    assert opens_everywhere(out / "model", tmp_path / "opened") == "text"


def test_recipe_on_two_cpu_processes(tmp_path: Path, small_txt: Path) -> None:
    out = tmp_path / "two"
    done = run_recipe(["--dataset", str(small_txt), "--output-dir", str(out), "--max-steps", "2",
                       "--checkpoint-every", "none", *SCRATCH_FLAGS], processes=2)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2
    assert "terminate called" not in done.stderr


def test_recipe_bad_loss_is_one_line(tmp_path: Path, small_txt: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "recipes" / "bookcorpus.py"), "--dataset", str(small_txt),
                           "--loss", "align:1 + uniform:one", "--output-dir", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "the weight of 'uniform' must be a number" in done.stderr.strip().splitlines()[-1]


def test_recipe_quickthought_gru_trains_and_reopens(tmp_path: Path, small_txt: Path) -> None:
    from hsrl.models.text import load_sentence_transformer

    out = tmp_path / "gru"
    done = run_recipe(["--dataset", str(small_txt), "--output-dir", str(out), "--max-steps", "2", "--encoder", "gru",
                       "--gru-dim", "16", "--gru-embedding-dim", "8", "--loss", "quickthought:1,tau=0.1",
                       "--checkpoint-every", "none", *SCRATCH_FLAGS])  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    z = load_sentence_transformer(out / "model").encode(["Anne was there."], normalize_embeddings=False)
    assert z.shape == (1, 32)  # evaluation vector: f and g concatenated
    assert np.linalg.norm(z, axis=1) == pytest.approx([1.0], abs=1e-5)
    assert opens_everywhere(out / "model", tmp_path / "opened") == "text"


def test_two_from_scratch_runs_with_one_seed_save_identical_weights(tmp_path: Path, small_txt: Path) -> None:
    """Two processes train the tokenizer (hash-map order differs between them) and the model."""
    from safetensors.torch import load_file

    for name in ("a", "b"):
        done = run_recipe(["--dataset", str(small_txt), "--output-dir", str(tmp_path / name), "--max-steps", "2",
                           "--seed", "5", "--checkpoint-every", "none", "--eval-dataset", "none",
                           *SCRATCH_FLAGS])  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    vocab = [json.loads((tmp_path / n / "model" / "tokenizer.json").read_text())["model"]["vocab"] for n in "ab"]
    assert vocab[0] == vocab[1] and len(vocab[0]) > 100
    a, b = (load_file(tmp_path / n / "model" / "model.safetensors") for n in "ab")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_recipe_under_a_time_budget_stops_saves_and_evaluates(tmp_path: Path, small_txt: Path) -> None:
    out = tmp_path / "budget"
    done = run_recipe(["--dataset", str(small_txt), "--output-dir", str(out), "--time-budget-min", "0.05",
                       "--checkpoint-every", "none", "--eval-dataset", "factbook", "--eval-max-sentences", "200",
                       *SCRATCH_FLAGS])  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "time budget:" in done.stdout
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    assert summary["steps"] >= 1 and summary["train_seconds"] >= 0.8 * 3.0
    for key in ("recall@10", "align", "uniform", "factbook_recall@10", "factbook_align", "factbook_uniform"):
        assert key in summary and f"baseline_{key}" in summary
    assert (out / "model" / "modules.json").is_file()
    assert "| factbook_recall@10 |" in done.stdout  # the summary table is printed


def test_recipe_refuses_a_budget_with_max_steps_in_one_line(tmp_path: Path, small_txt: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "recipes" / "bookcorpus.py"), "--dataset", str(small_txt),
                           "--time-budget-min", "5", "--max-steps", "10", "--output-dir", str(tmp_path)],
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--time-budget-min and --max-steps both set" in done.stderr.strip().splitlines()[-1]


def test_two_process_recipe_with_cache_chunk_size_equals_the_plain_run(tmp_path: Path, small_txt: Path) -> None:
    """2 processes x 8 pairs, re-embedded in chunks of 4: same logged losses, same saved weights."""
    from safetensors.torch import load_file

    for name, extra in (("plain", []), ("cached", ["--cache-chunk-size", "4"])):
        done = run_recipe(["--dataset", str(small_txt), "--output-dir", str(tmp_path / name), "--max-steps", "3",
                           "--seed", "2", "--dropout", "0", "--checkpoint-every", "none", "--eval-dataset", "none",
                           "--log-every", "1", *SCRATCH_FLAGS, "--batch-size", "8", *extra], processes=2)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]

    from test_gradcache import logged_losses

    assert len(logged_losses(tmp_path / "plain")) == 3
    assert logged_losses(tmp_path / "cached") == pytest.approx(logged_losses(tmp_path / "plain"), abs=1e-5)
    a, b = (load_file(tmp_path / n / "model" / "model.safetensors") for n in ("plain", "cached"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-4
