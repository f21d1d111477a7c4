"""Gradient caching: the chunked two-pass step equals the plain step (losses, gradients, weights)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from hsrl.gradcache import backward_chunks, check_cacheable, embed_chunks, split_batch
from hsrl.losses import HypersphereLoss
from hsrl.models.text import (
    TokenizedPairs,
    build_text_encoder,
    pair_collate,
    pair_encoder,
    resolve_model_path,
    set_dropout,
)

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = ["align:1,alpha=2 + uniform:1,t=2", "contrastive:1,tau=0.2", "align:3 + uniform:1,t=5"]


class Tower(nn.Module):
    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Dropout(dropout), nn.Linear(12, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)


def encode_pair(model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]:
    return model(batch[0]), model(batch[1])


def cached_grads(model: nn.Module, encode, batch, objective: str, chunk: int) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad()
    chunks = split_batch(batch, chunk)
    x, y, states = embed_chunks(model, encode, chunks)
    x.requires_grad_(True)
    y.requires_grad_(True)
    loss = HypersphereLoss(objective)(x, y)
    gx, gy = torch.autograd.grad(loss, [x, y])
    backward_chunks(model, encode, chunks, states, gx, gy)
    return float(loss.detach()), [p.grad.clone() if p.grad is not None else None for p in model.parameters()]


def plain_grads(model: nn.Module, encode, batch, objective: str) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad()
    x, y = encode(model, batch)
    loss = HypersphereLoss(objective)(x, y)
    loss.backward()
    return float(loss.detach()), [p.grad.clone() if p.grad is not None else None for p in model.parameters()]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 20), chunk=st.integers(1, 20), objective=st.sampled_from(OBJECTIVES), seed=st.integers(0, 99))
def test_cached_gradient_equals_the_plain_gradient(n: int, chunk: int, objective: str, seed: int) -> None:
    # In float64: the cached step sums the loss and the parameter gradients chunk by chunk, in another order than
    # one matmul, so the two differ only by rounding. float32 rounding (a few 1e-6 on a loss of order 5, which
    # hypothesis finds) would need a tolerance loose enough to hide a real error; float64's is 1e-15 relative.
    torch.manual_seed(seed)
    model = Tower().double()
    a = torch.randn(n, 6, dtype=torch.float64)
    batch = (a, a + 0.3 * torch.randn(n, 6, dtype=torch.float64))
    loss, grads = cached_grads(model, encode_pair, batch, objective, min(chunk, n))
    ref_loss, ref_grads = plain_grads(model, encode_pair, batch, objective)
    assert loss == pytest.approx(ref_loss, rel=1e-12, abs=1e-12)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)


def encode_triple(model: nn.Module, batch) -> tuple[torch.Tensor, ...]:
    return model(batch[0]), model(batch[1]), model(batch[2])


@settings(max_examples=20, deadline=None)
@given(n=st.integers(3, 16), chunk=st.integers(1, 16), seed=st.integers(0, 99))
def test_cached_gradient_with_a_third_view_of_negatives_equals_the_plain_gradient(n: int, chunk: int,
                                                                                  seed: int) -> None:  # fmt: skip
    """Three views (anchors, neighbours, mined negatives): each chunk's rows of all three are re-embedded and get
    their slices of the three cached gradients."""
    torch.manual_seed(seed)
    model = Tower().double()
    a = torch.randn(n, 6, dtype=torch.float64)
    batch = (a, a + 0.3 * torch.randn(n, 6, dtype=torch.float64), torch.randn(n, 6, dtype=torch.float64))
    loss_fn = HypersphereLoss("contrastive:1,tau=0.2 + uniform:0.5,t=2")

    model.zero_grad()
    chunks = split_batch(batch, min(chunk, n))
    x, y, h, states = embed_chunks(model, encode_triple, chunks)
    views = [v.requires_grad_(True) for v in (x, y, h)]
    loss = loss_fn(*views[:2], negatives=views[2])
    backward_chunks(model, encode_triple, chunks, states, *torch.autograd.grad(loss, views))
    grads = [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    x, y, h = encode_triple(model, batch)
    reference = loss_fn(x, y, negatives=h)
    reference.backward()
    assert float(loss) == pytest.approx(float(reference), rel=1e-12, abs=1e-12)
    assert float(reference) != pytest.approx(float(loss_fn(x, y)), abs=1e-9)  # the negatives count
    for g, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="3 views but 2 cached gradients"):
        backward_chunks(model, encode_triple, chunks, states, *torch.autograd.grad(loss_fn(*views[:2]), views[:2]))


def test_one_chunk_with_dropout_equals_the_plain_step_exactly() -> None:
    """The first pass's random state is restored, so the masks of both passes match the plain forward's."""
    model = Tower(dropout=0.5)
    a = torch.randn(10, 6)
    batch = (a, a + 0.1)
    torch.manual_seed(1)
    loss, grads = cached_grads(model, encode_pair, batch, OBJECTIVES[0], chunk=10)
    torch.manual_seed(1)
    ref_loss, ref_grads = plain_grads(model, encode_pair, batch, OBJECTIVES[0])
    assert loss == ref_loss
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-7)


@pytest.fixture(scope="module")
def minilm():
    return build_text_encoder("minilm", max_seq_length=24)


def test_minilm_with_dropout_cached_equals_the_chunked_graph(minilm) -> None:
    """On MiniLM in training mode (dropout 0.1): the cached step equals holding every chunk's graph.

    Chunked forwards draw dropout masks per chunk, so the reference is the same chunks with
    their graphs kept; if the random state were not restored the second pass would draw new
    masks and the gradients would differ.
    """
    from hsrl.data.text import austen_splits

    minilm.train()
    docs = austen_splits()[1][:2]
    sentences = [s for d in docs for s in d.sentences][:17]
    batch = pair_collate(minilm)(list(itertools.pairwise(sentences)))
    encode = pair_encoder(minilm)
    objective = OBJECTIVES[0]

    torch.manual_seed(5)
    loss, grads = cached_grads(minilm, encode, batch, objective, chunk=4)

    torch.manual_seed(5)
    minilm.zero_grad()
    parts = [encode(minilm, chunk) for chunk in split_batch(batch, 4)]
    x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    ref = HypersphereLoss(objective)(x, y)
    ref.backward()
    ref_grads = [p.grad.clone() if p.grad is not None else None for p in minilm.parameters()]
    assert loss == pytest.approx(float(ref.detach()), abs=1e-6)
    compared = 0
    for g, r in zip(grads, ref_grads, strict=True):
        assert (g is None) == (r is None)
        if r is not None:
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)
            compared += 1
    assert compared > 50  # every transformer weight, not just the pooling


def test_tokenized_pairs_chunks_keep_anchor_and_neighbour_rows(minilm) -> None:
    batch = pair_collate(minilm)([("a b", "c"), ("d", "e f g"), ("h", "i")])
    assert isinstance(batch, TokenizedPairs) and batch.n == 3
    chunks = split_batch(batch, 2)
    assert [c.n for c in chunks] == [2, 1]
    ids = batch.features["input_ids"]
    torch.testing.assert_close(chunks[0].features["input_ids"], ids[[0, 1, 3, 4]])
    torch.testing.assert_close(chunks[1].features["input_ids"], ids[[2, 5]])


def test_tokenized_triples_chunk_and_encode_every_view(minilm) -> None:
    """(anchor, neighbour, negative) items: three blocks of rows, chunked block by block, encoded as three views."""
    items = [("a b", "c", "x"), ("d", "e f g", "y z"), ("h", "i", "w")]
    batch = pair_collate(minilm)(items)
    assert batch.n == 3 and batch.views == 3
    ids = batch.features["input_ids"]
    chunks = split_batch(batch, 2)
    assert [(c.n, c.views) for c in chunks] == [(2, 3), (1, 3)]
    torch.testing.assert_close(chunks[0].features["input_ids"], ids[[0, 1, 3, 4, 6, 7]])
    torch.testing.assert_close(chunks[1].features["input_ids"], ids[[2, 5, 8]])
    minilm.eval()
    x, y, h = pair_encoder(minilm)(minilm, batch)
    expected = minilm.encode(["y z"], convert_to_tensor=True, normalize_embeddings=True)[0]
    torch.testing.assert_close(h[1], expected, rtol=0, atol=1e-5)  # padding in a batch shifts sums a little
    assert x.shape == y.shape == h.shape == (3, minilm.get_sentence_embedding_dimension())
    with pytest.raises(ValueError, match="same number of sentences"):
        pair_collate(minilm)([("a", "b"), ("c", "d", "e")])


def test_split_batch_shapes_and_errors() -> None:
    batch = {"view1": torch.zeros(5, 2), "view2": torch.ones(5, 2)}
    parts = split_batch(batch, 2)
    assert [p["view1"].shape[0] for p in parts] == [2, 2, 1] and set(parts[0]) == {"view1", "view2"}
    assert [len(p[0]) for p in split_batch((torch.zeros(4), torch.zeros(4)), 3)] == [3, 1]
    with pytest.raises(ValueError, match="cannot be split"):
        split_batch((["a", "b"], torch.zeros(2)), 1)
    with pytest.raises(ValueError, match="same number of rows"):
        split_batch((torch.zeros(3), torch.zeros(2)), 1)
    with pytest.raises(ValueError, match=">= 1"):
        split_batch(torch.zeros(3), 0)


def test_batch_norm_models_are_refused() -> None:
    with pytest.raises(ValueError, match="batch normalisation"):
        check_cacheable(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    check_cacheable(Tower())  # no batch norm: accepted


def test_set_dropout_reaches_every_layer_and_the_config(minilm) -> None:
    """Behaviour, not attributes alone: at p = 0 two forward passes in train mode agree bit for bit (whatever
    form each transformers version gives attention dropout), at p = 0.1 they differ."""
    features = minilm.preprocess(["Anne Elliot walked to Uppercross.", "The letter was short."])

    def forward() -> torch.Tensor:
        return minilm(dict(features))["sentence_embedding"].detach()

    was_training = minilm.training
    minilm.train()
    set_dropout(minilm, 0.0)
    assert all(m.p == 0.0 for m in minilm.modules() if isinstance(m, nn.Dropout))
    assert minilm[0].auto_model.config.hidden_dropout_prob == 0.0
    assert torch.equal(forward(), forward())
    set_dropout(minilm, 0.1)
    assert not torch.equal(forward(), forward())
    minilm.train(was_training)
    with pytest.raises(ValueError):
        set_dropout(minilm, 1.0)


# --------------------------------------------------------------------------- the recipe


def logged_losses(run: Path) -> list[float]:
    """The loss of every logged step of a run (its ``train_log.jsonl``)."""
    return [json.loads(line)["train/loss"] for line in (run / "train_log.jsonl").read_text().splitlines()]


def _recipe(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "recipes" / "bookcorpus.py"), "--dataset", "austen", "--model", "minilm",
               "--loss", "align:1,alpha=2 + uniform:1,t=2", "--max-steps", "3", "--batch-size", "16", "--lr", "1e-4",
               "--max-seq-length", "24", "--dropout", "0", "--eval-max-sentences", "60", "--eval-dataset", "none",
               "--log-every", "1", "--checkpoint-every", "none", "--log-with", "none", "--no-progress",
               "--output-dir", str(out), *extra]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # two MiniLM runs; the fast suite checks the same on 2 processes with a small BERT
def test_recipe_with_cache_chunk_size_logs_the_same_losses_and_saves_the_same_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    plain, cached = _recipe(tmp_path / "plain"), _recipe(tmp_path / "cached", "--cache-chunk-size", "8")
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert cached.returncode == 0, cached.stderr[-2000:]

    assert len(logged_losses(tmp_path / "plain")) == 3
    assert logged_losses(tmp_path / "cached") == pytest.approx(logged_losses(tmp_path / "plain"), abs=1e-5)
    a = load_file(tmp_path / "plain" / "model" / "model.safetensors")
    b = load_file(tmp_path / "cached" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    start = load_file(Path(resolve_model_path("minilm")) / "model.safetensors")
    moved = max(float((a[k] - start[k]).abs().max()) for k in a if k in start)
    assert moved > 1e-4  # the runs trained: equal weights are not the untouched checkpoint's
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-4


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--cache-chunk-size", "0"], "--cache-chunk-size must be >= 1"),
        (["--cache-chunk-size", "32"], "larger than --batch-size"),
        (["--cache-chunk-size", "4", "--pairs", "consecutive"], "not split into chunks"),
        (["--eval-dataset", "/no/such/set.txt"], "--eval-dataset /no/such/set.txt: no such file"),
    ],
)
def test_recipe_bad_cache_and_eval_flags_are_one_line(tmp_path: Path, flags: list[str], message: str) -> None:
    done = _recipe(tmp_path / "bad", *flags)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr + done.stdout
    assert message in (done.stderr + done.stdout).strip().splitlines()[-1]
