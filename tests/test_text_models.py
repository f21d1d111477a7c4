"""Text encoders: a deterministic WordPiece tokenizer, from-scratch transformers, the packaged MiniLM, model names."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from hsrl.models.text import (
    ScratchConfig,
    build_text_encoder,
    embed_by_length,
    encode_texts,
    freeze_lower_layers,
    pair_collate,
    pair_encoder,
    resolve_model_path,
    save_text_encoder,
)
from hsrl.models.wordpiece import train_wordpiece_tokenizer

TINY = ScratchConfig(layers=1, hidden=32, heads=2, intermediate=64, vocab_size=400, max_seq_length=16)


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


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_embedding_by_length_gives_each_row_its_whole_batch_embedding_and_gradient(
    sentences: list[str], padding_side: str
) -> None:
    """MiniLM, dropout off, in float64 (so only rounding could differ, far below the tolerance): 23 sentences of very
    different lengths embedded in length-sorted groups of 5 (each cut to its own longest) equal one padded forward,
    row for row, values and parameter gradients."""
    encoder = build_text_encoder("minilm", max_seq_length=48).double()
    encoder[0].tokenizer.padding_side = padding_side
    encoder.eval()  # dropout off: both ways draw no masks
    texts = [" ".join(sentences[i : i + i % 4 + 1]) for i in range(23)]  # one to four sentences each
    features = encoder.preprocess(texts)
    mask = features["attention_mask"]
    assert int(mask.sum(1).min()) < mask.shape[1] // 2  # much padding to cut
    assert bool((mask[:, 0] == 0).any()) == (padding_side == "left")

    def embedded_and_grads(bucket_size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        encoder.zero_grad()
        z = embed_by_length(encoder, features, bucket_size)
        weights = torch.linspace(-1, 1, z.numel(), dtype=z.dtype).view_as(z)  # a different weight for every entry
        (z * weights).sum().backward()
        return z.detach(), {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}

    whole, whole_grads = embedded_and_grads(0)
    grouped, grouped_grads = embedded_and_grads(5)
    torch.testing.assert_close(grouped, whole, rtol=0, atol=1e-10)
    assert grouped_grads.keys() == whole_grads.keys() and len(whole_grads) > 50
    for name, grad in whole_grads.items():
        torch.testing.assert_close(grouped_grads[name], grad, rtol=1e-8, atol=1e-10)
    encode = pair_encoder(encoder, bucket_size=5)
    x, y = encode(encoder, pair_collate(encoder)(list(zip(texts[:11], texts[11:22], strict=True))))
    torch.testing.assert_close(torch.cat([x, y]).detach(), whole[:22], rtol=0, atol=1e-10)


def test_freezing_lower_layers_trains_only_the_upper_ones(sentences: list[str]) -> None:
    """After one optimiser step, the embeddings and the first 4 layers are bit-identical and the last 2 moved."""
    encoder = build_text_encoder("minilm", max_seq_length=32)
    before = {name: p.detach().clone() for name, p in encoder.named_parameters()}
    trainable = freeze_lower_layers(encoder, 4)
    assert trainable == sum(p.numel() for p in encoder.parameters() if p.requires_grad) > 0
    optimizer = torch.optim.SGD([p for p in encoder.parameters() if p.requires_grad], lr=0.5)
    x, y = pair_encoder(encoder)(encoder, pair_collate(encoder)(list(itertools.pairwise(sentences[:9]))))
    (-(x * y).sum()).backward()
    optimizer.step()
    after = dict(encoder.named_parameters())
    frozen = [n for n in before if ".embeddings." in n or any(f".layer.{i}." in n for i in range(4))]
    upper = [n for n in before if any(f".layer.{i}." in n for i in (4, 5))]
    assert frozen and upper
    assert all(torch.equal(before[n], after[n]) and not after[n].requires_grad for n in frozen)
    assert all(not torch.equal(before[n], after[n]) for n in upper if n.endswith("weight"))
    with pytest.raises(ValueError, match="only 6 transformer layers"):
        freeze_lower_layers(build_text_encoder("minilm", max_seq_length=32), 7)


def test_model_names_that_do_not_resolve_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ValueError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE=1"):
        resolve_model_path("sentence-transformers/all-mpnet-base-v2")
    with pytest.raises(ValueError, match="no such folder, and not a Hub id"):
        resolve_model_path(str(tmp_path / "missing" / "deeper" / "folder"))
    with pytest.raises(ValueError, match="not a sentence-transformers"):
        resolve_model_path(str(tmp_path))
