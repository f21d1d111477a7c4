"""recipes/bookcorpus.py end to end. Launched as users launch it: from scratch, resumed, its model folder opened by
every command; on two processes, plain and with gradient caching. In this process: the Quick-Thought GRU, a time
budget, frozen lower layers with WiSE-FT."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import OFFLINE, ROOT, launch, recipe_module
from model_folders import opens_everywhere

SCRATCH_FLAGS = ["--scratch-layers", "1", "--scratch-hidden", "32", "--vocab-size", "400", "--max-seq-length", "16",
                 "--batch-size", "16", "--log-with", "none", "--no-progress", "--lr", "1e-3"]  # fmt: skip


def run_recipe(args: list[str], processes: int = 1, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """``accelerate launch recipes/bookcorpus.py ARGS``, as users run it."""
    return launch("bookcorpus.py", *args, processes=processes, env={"OMP_NUM_THREADS": "1"}, timeout=timeout)


def recipe_main(args: list[str]) -> int:
    """The recipe's ``main(ARGS)`` in this process."""
    return recipe_module("bookcorpus").main(args)


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


def test_recipe_bad_loss_is_one_line(tmp_path: Path, small_txt: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "recipes" / "bookcorpus.py"), "--dataset", str(small_txt),
                           "--loss", "align:1 + uniform:one", "--output-dir", str(tmp_path)],
                          env=OFFLINE, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "the weight of 'uniform' must be a number" in done.stderr.strip().splitlines()[-1]


def test_recipe_quickthought_gru_trains_and_reopens(tmp_path: Path, small_txt: Path) -> None:
    """In this process (the launched tests cover launching)."""
    from hsrl.models.text import load_sentence_transformer

    out = tmp_path / "gru"
    code = recipe_main(["--dataset", str(small_txt), "--output-dir", str(out), "--max-steps", "2", "--encoder", "gru",
                        "--gru-dim", "16", "--gru-embedding-dim", "8", "--loss", "quickthought:1,tau=0.1",
                        "--checkpoint-every", "none", *SCRATCH_FLAGS])  # fmt: skip
    assert code == 0
    z = load_sentence_transformer(out / "model").encode(["Anne was there."], normalize_embeddings=False)
    assert z.shape == (1, 32)  # evaluation vector: f and g concatenated
    assert np.linalg.norm(z, axis=1) == pytest.approx([1.0], abs=1e-5)
    assert opens_everywhere(out / "model", tmp_path / "opened") == "text"


def test_two_from_scratch_runs_with_one_seed_save_identical_weights(tmp_path: Path, small_txt: Path) -> None:
    """Two processes train the tokenizer (hash-map order differs between them) and the model."""
    from safetensors.torch import load_file

    for name in ("a", "b"):  # two interpreters (their string hashes differ), no launcher needed for that
        done = subprocess.run([sys.executable, str(ROOT / "recipes" / "bookcorpus.py"), "--dataset", str(small_txt),
                               "--output-dir", str(tmp_path / name), "--max-steps", "2", "--seed", "5",
                               "--checkpoint-every", "none", "--eval-dataset", "none", *SCRATCH_FLAGS],
                              env=OFFLINE, capture_output=True, text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    vocab = [json.loads((tmp_path / n / "model" / "tokenizer.json").read_text())["model"]["vocab"] for n in "ab"]
    assert vocab[0] == vocab[1] and len(vocab[0]) > 100
    a, b = (load_file(tmp_path / n / "model" / "model.safetensors") for n in "ab")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_recipe_under_a_time_budget_stops_saves_and_evaluates(
    tmp_path: Path, small_txt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In this process (the launched tests cover launching)."""
    out = tmp_path / "budget"
    code = recipe_main(["--dataset", str(small_txt), "--output-dir", str(out), "--time-budget-min", "0.05",
                        "--checkpoint-every", "none", "--eval-dataset", "factbook", "--eval-max-sentences", "200",
                        *SCRATCH_FLAGS])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert "time budget:" in printed
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    assert summary["steps"] >= 1 and summary["train_seconds"] >= 0.8 * 3.0
    for key in ("recall@10", "align", "uniform", "factbook_recall@10", "factbook_align", "factbook_uniform"):
        assert key in summary and f"baseline_{key}" in summary
    assert (out / "model" / "modules.json").is_file()
    assert "| factbook_recall@10 |" in printed  # the summary table is printed


HARD_NEGATIVES = ["--loss", "contrastive:1,tau=0.1 + uniform:0.2,t=2", "--hard-negatives", "5"]


@pytest.mark.parametrize("objective", [[], HARD_NEGATIVES], ids=["align-uniform", "hard-negatives"])
def test_two_process_recipe_with_cache_chunk_size_equals_the_plain_run(
    tmp_path: Path, small_txt: Path, objective: list[str]
) -> None:
    """The recipe on two CPU processes (gloo), plain and with 8 pairs per process re-embedded in chunks of 4: both
    finish cleanly; same logged losses, same saved weights. With mined hard negatives too: a third view, gathered
    from both processes like the pairs, whose chunks are re-embedded with theirs."""
    from safetensors.torch import load_file

    for name, extra in (("plain", []), ("cached", ["--cache-chunk-size", "4"])):
        done = run_recipe(["--dataset", str(small_txt), "--output-dir", str(tmp_path / name), "--max-steps", "3",
                           "--seed", "2", "--dropout", "0", "--checkpoint-every", "none", "--eval-dataset", "none",
                           "--log-every", "1", *SCRATCH_FLAGS, "--batch-size", "8", *objective, *extra],
                          processes=2)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads((tmp_path / name / "metrics.json").read_text())["steps"] == 3
        assert "terminate called" not in done.stderr  # the process group is shut down cleanly

    from test_gradcache import logged_losses

    assert len(logged_losses(tmp_path / "plain")) == 3
    # The bar for "the same run" is 1e-4. Chunks are padded to their own longest sentence, so float32 sums
    # run in another order: transformers 4.57 gave 1.04e-5 here, 5.x under 1e-5.
    assert logged_losses(tmp_path / "cached") == pytest.approx(logged_losses(tmp_path / "plain"), abs=1e-4)
    a, b = (load_file(tmp_path / n / "model" / "model.safetensors") for n in ("plain", "cached"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-4


def test_hard_negative_run_resumed_across_an_epoch_equals_the_uninterrupted_run(
    tmp_path: Path, small_txt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--hard-negatives``: mined once (the candidates saved with the run), one drawn per pair and step. Stopped
    at step 6 and resumed to 14 (past the end of the first epoch, 11 batches), the run logs the losses and saves
    the weights of one run straight to 14: the draws depend on (seed, epoch, pair), the candidates are read back,
    not mined again."""
    from safetensors.torch import load_file

    def run(out: Path, *extra: str) -> str:
        code = recipe_main(["--dataset", str(small_txt), "--output-dir", str(out), "--eval-dataset", "none",
                            "--log-every", "1", "--checkpoint-every", "6", *SCRATCH_FLAGS, *HARD_NEGATIVES,
                            *extra])  # fmt: skip
        assert code == 0
        return capsys.readouterr().out

    straight = run(tmp_path / "straight", "--max-steps", "14")
    assert "hard negatives: 5 candidates for each of" in straight
    run(tmp_path / "resumed", "--max-steps", "6")
    resumed = run(tmp_path / "resumed", "--max-steps", "14", "--resume", "latest")
    assert "resumed from" in resumed and "hard negatives:" not in resumed  # read back, not mined again
    from test_gradcache import logged_losses

    assert len(logged_losses(tmp_path / "straight")) == 14
    assert logged_losses(tmp_path / "resumed") == logged_losses(tmp_path / "straight")
    saved = json.loads((tmp_path / "straight" / "hard_negatives.json").read_text())
    assert saved["k"] == 5 and len(saved["candidates"]) > 150
    a, b = (load_file(tmp_path / n / "model" / "model.safetensors") for n in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--hard-negatives", "5"], "--hard-negatives adds negatives to a contrastive term"),
        (["--hard-negatives", "-1"], "--hard-negatives must be >= 0"),
        (["--hard-negatives", "5", "--encoder", "gru", "--loss", "contrastive:1"], "not streamed BookCorpus, the GRU"),
    ],
)
def test_recipe_bad_hard_negative_flags_are_one_line(tmp_path: Path, small_txt: Path, flags: list[str],
                                                     message: str) -> None:  # fmt: skip
    done = subprocess.run([sys.executable, str(ROOT / "recipes" / "bookcorpus.py"), "--dataset", str(small_txt),
                           "--output-dir", str(tmp_path), *flags],
                          env=OFFLINE, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr + done.stdout
    assert message in done.stderr.strip().splitlines()[-1]


def test_frozen_lower_layers_and_wise_ft_mix_save_what_they_say(
    tmp_path: Path, small_txt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--freeze-layers 4 --wise-ft 0.25`` on MiniLM (in this process): the final checkpoint (the trained weights
    θ₁) keeps the embeddings and layers 0-3 of the start θ₀ bit for bit and moved layers 4-5; the saved model is
    0.25·θ₁ + 0.75·θ₀."""
    from safetensors.torch import load_file

    from hsrl.models.text import build_text_encoder

    out = tmp_path / "mixed"
    code = recipe_main(["--dataset", str(small_txt), "--model", "minilm", "--output-dir", str(out), "--max-steps", "2",
                        "--batch-size", "8", "--max-seq-length", "16", "--lr", "1e-3", "--freeze-layers", "4",
                        "--wise-ft", "0.25", "--eval-dataset", "none", "--log-with", "none",
                        "--no-progress"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    start = build_text_encoder("minilm", max_seq_length=16).state_dict()
    trained = load_file(sorted((out / "checkpoints").glob("step-*/model.safetensors"))[-1])
    saved = build_text_encoder(str(out / "model"), max_seq_length=16).state_dict()
    frozen = [k for k in start if ".embeddings." in k or any(f".layer.{i}." in k for i in range(4))]
    upper = [k for k in start if any(f".layer.{i}." in k for i in (4, 5)) and k.endswith("weight")]
    assert frozen and upper
    assert all(torch.equal(trained[k], start[k]) for k in frozen)
    assert all(not torch.equal(trained[k], start[k]) for k in upper)
    for key in upper:
        torch.testing.assert_close(saved[key], 0.75 * start[key] + 0.25 * trained[key], rtol=0, atol=1e-6)
    assert "wise-ft: weights = 0.75·start + 0.25·trained" in printed
    bad = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "bookcorpus.py"), "--dataset", str(small_txt), "--model", "none",
         "--wise-ft", "0.5", "--output-dir", str(tmp_path / "bad")],
        env=OFFLINE, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "--wise-ft" in bad.stderr.strip().splitlines()[-1]
