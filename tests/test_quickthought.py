"""The Quick-Thought GRU encoder (f and g) and the Quick-Thought objective."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from hsrl.data.text import load_austen
from hsrl.losses import HypersphereLoss, parse_objective, quickthought_loss, quickthought_targets
from hsrl.models.quickthought import (
    ROLE_KEY,
    ConsecutiveSentenceDataset,
    QuickThoughtGRU,
    build_gru_encoder,
    consecutive_collate,
    consecutive_encoder,
    gru_pair_collate,
    gru_pair_encoder,
    load_encoder,
)
from hsrl.models.text import encode_texts, save_text_encoder
from hsrl.training import TrainConfig, fit, make_dataloader, training_session

HIDDEN = 12  # each encoder's width; evaluation vectors are 2 * HIDDEN


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    return [s for doc in load_austen(["persuasion"]) for s in doc.sentences][:200]


@pytest.fixture(scope="module")
def encoder(sentences: list[str], tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    workdir = tmp_path_factory.mktemp("gru")
    return build_gru_encoder(
        sentences, vocab_size=300, embedding_dim=16, hidden_dim=HIDDEN, max_seq_length=24, workdir=workdir
    )


# --------------------------------------------------------------------------- the encoder


def test_evaluation_vector_is_the_normalised_concatenation_of_f_and_g(encoder, sentences: list[str]) -> None:
    z = encode_texts(encoder, sentences[:6])
    assert z.shape == (6, 2 * HIDDEN) and encoder.get_embedding_dimension() == 2 * HIDDEN
    torch.testing.assert_close(z.norm(dim=1), torch.ones(6), rtol=0, atol=1e-5)
    gru: QuickThoughtGRU = encoder[0]
    features = gru.preprocess(sentences[:6])
    lengths = features["attention_mask"].sum(dim=1)
    with torch.no_grad():
        f, g = gru.f(features["input_ids"], lengths), gru.g(features["input_ids"], lengths)
    torch.testing.assert_close(z, F.normalize(torch.cat([f, g], dim=1), dim=1), rtol=0, atol=1e-5)


def test_f_and_g_are_separate_encoders(encoder, sentences: list[str]) -> None:
    gru: QuickThoughtGRU = encoder[0]
    f_params, g_params = set(map(id, gru.f.parameters())), set(map(id, gru.g.parameters()))
    assert f_params and not f_params & g_params
    x, y = gru_pair_encoder(encoder)(encoder, gru_pair_collate(encoder, both_directions=False)(
        [(s, s) for s in sentences[:5]]
    ))  # fmt: skip
    assert x.shape == y.shape == (5, HIDDEN)
    assert (x - y).abs().max() > 1e-3  # the same sentences, two encoders: different vectors


def test_training_views_are_unit_norm_and_reach_both_encoders(encoder, sentences: list[str]) -> None:
    items = list(itertools.pairwise(sentences[:5]))
    features, n = gru_pair_collate(encoder)(items)
    assert n == 4 and features[ROLE_KEY].tolist() == [0] * 4 + [1] * 4
    assert features["input_ids"].shape[0] == 8
    x, y = gru_pair_encoder(encoder)(encoder, (features, n))
    torch.testing.assert_close(torch.cat([x, y]).norm(dim=1), torch.ones(8), rtol=0, atol=1e-5)
    encoder.zero_grad()
    (x.sum() + y.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder[0].parameters())
    encoder.zero_grad()

    # Every other pair is swapped, so f sees earlier and later sentences alike.
    reference = encoder.preprocess([items[0][0], items[1][1], items[0][1], items[1][0]])
    swapped, _ = gru_pair_collate(encoder)(items[:2])
    assert torch.equal(swapped["input_ids"], reference["input_ids"])


def test_consecutive_views_are_f_and_g_of_the_same_sentences(encoder, sentences: list[str]) -> None:
    dataset = ConsecutiveSentenceDataset(sentences)
    batch = consecutive_collate(encoder)([dataset[i] for i in range(5)])
    x, y = consecutive_encoder(encoder)(encoder, batch)
    gru: QuickThoughtGRU = encoder[0]
    plain = gru.preprocess(sentences[:5])
    lengths = plain["attention_mask"].sum(dim=1)
    with torch.no_grad():
        f, g = gru.f(plain["input_ids"], lengths), gru.g(plain["input_ids"], lengths)
    torch.testing.assert_close(x.detach(), F.normalize(f, dim=1), rtol=0, atol=1e-5)
    torch.testing.assert_close(y.detach(), F.normalize(g, dim=1), rtol=0, atol=1e-5)
    # A stream of (sentence, next) pairs is read by its first element.
    same = consecutive_collate(encoder)([(s, "ignored") for s in sentences[:5]])
    assert torch.equal(same[0]["input_ids"], batch[0]["input_ids"])


def test_save_and_load_give_the_same_embeddings(encoder, sentences: list[str], tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    folder = save_text_encoder(encoder, tmp_path / "model")
    assert {"modules.json", "quickthought_config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()
    }
    assert "hsrl.models.quickthought.QuickThoughtGRU" in (folder / "modules.json").read_text()
    expected = encode_texts(encoder, sentences[:10])
    for reopened in (SentenceTransformer(str(folder), device="cpu", trust_remote_code=True), load_encoder(folder)):
        again = torch.as_tensor(reopened.encode(sentences[:10], normalize_embeddings=False))
        torch.testing.assert_close(again, expected, rtol=0, atol=1e-5)
        assert isinstance(reopened[0], QuickThoughtGRU) and reopened.max_seq_length == 24


def test_bad_settings_are_refused(encoder) -> None:
    with pytest.raises(ValueError, match="two directions"):
        QuickThoughtGRU(encoder.tokenizer, embedding_dim=4, hidden_dim=5)
    with pytest.raises(ValueError, match="single texts"):
        encoder[0].preprocess([("a", "b")])


# --------------------------------------------------------------------------- the objective


def reference_quickthought(u: torch.Tensor, v: torch.Tensor, context: int, tau: float) -> torch.Tensor:
    """Logeswaran & Lee's loss written out, one sentence and one context at a time."""
    batch = u.shape[0]
    total = u.new_zeros(())
    for i in range(batch):
        others = [j for j in range(batch) if j != i]
        log_norm = torch.logsumexp(torch.stack([u[i] @ v[j] / tau for j in others]), dim=0)
        contexts = [j for j in others if abs(i - j) <= context]
        total = total - sum((u[i] @ v[j] / tau - log_norm) / len(contexts) for j in contexts)
    return total / batch


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(2, 9),
    dim=st.integers(1, 5),
    context=st.integers(1, 4),
    tau=st.sampled_from([1.0, 0.5, 0.1]),
    seed=st.integers(0, 2**16),
)
def test_loss_and_gradient_match_the_written_out_reference(
    batch: int, dim: int, context: int, tau: float, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    u = F.normalize(torch.randn(batch, dim, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    v = F.normalize(torch.randn(batch, dim, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    fast = quickthought_loss(u, v, context=context, tau=tau)
    (du, dv) = torch.autograd.grad(fast, (u, v))
    slow = reference_quickthought(u, v, context, tau)
    (ru, rv) = torch.autograd.grad(slow, (u, v))
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(du, ru, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(dv, rv, rtol=1e-9, atol=1e-12)


def test_closed_forms() -> None:
    # All scores equal: every other sentence is equally likely, so L = log(B - 1).
    same = F.normalize(torch.ones(7, 3), dim=1)
    assert float(quickthought_loss(same, same, context=2)) == pytest.approx(torch.log(torch.tensor(6.0)).item())
    targets = quickthought_targets(4, context=1)
    expected = torch.tensor([[0, 1, 0, 0], [0.5, 0, 0.5, 0], [0, 0.5, 0, 0.5], [0, 0, 1, 0]])
    torch.testing.assert_close(targets, expected)


def test_objective_strings_reach_the_term() -> None:
    g = torch.Generator().manual_seed(0)
    u, v = (F.normalize(torch.randn(10, 4, generator=g), dim=1) for _ in range(2))
    torch.testing.assert_close(HypersphereLoss("quickthought:1,context=1")(u, v), quickthought_loss(u, v))
    torch.testing.assert_close(
        HypersphereLoss("quickthought:0.5,context=2,tau=0.1 + uniform:1,t=2").terms(u, v)["quickthought"],
        quickthought_loss(u, v, context=2, tau=0.1),
    )
    assert parse_objective("quickthought")[0].params == {"context": 1.0, "tau": 1.0}
    with pytest.raises(ValueError, match="whole number"):
        HypersphereLoss("quickthought:1,context=1.5")(u, v)
    with pytest.raises(ValueError, match="not L2-normalised"):
        quickthought_loss(2 * u, v)


def test_fit_on_consecutive_sentences_lowers_the_quickthought_loss(sentences: list[str], tmp_path: Path) -> None:
    config = TrainConfig(output_dir=str(tmp_path), batch_size=32, epochs=4, optimizer="adam", lr=1e-2,
                         checkpoint_every=None, log_every=1, progress=False, log_with="none", seed=3)  # fmt: skip
    with training_session(config) as accelerator:
        encoder = build_gru_encoder(sentences, vocab_size=300, embedding_dim=16, hidden_dim=HIDDEN,
                                    max_seq_length=24, workdir=tmp_path / "init")  # fmt: skip
        loader = make_dataloader(ConsecutiveSentenceDataset(sentences), config,
                                 collate_fn=consecutive_collate(encoder), shuffle=False)  # fmt: skip
        loss = HypersphereLoss("quickthought:1,context=1,tau=0.1")
        result = fit(encoder, loss, loader, config, accelerator=accelerator, encode=consecutive_encoder(encoder))
    losses = [row["train/loss"] for row in result.history]
    per_epoch = len(sentences) // 32
    assert result.steps == 4 * per_epoch
    # Unshuffled: every epoch sees the same batches, so epochs compare like for like.
    assert sum(losses[-per_epoch:]) < sum(losses[:per_epoch]) - 0.1 * per_epoch
    # Below log(B - 1), the loss of guessing uniformly: f and g have learnt which sentences are neighbours.
    assert sum(losses[-per_epoch:]) / per_epoch < math.log(32 - 1) - 0.03
