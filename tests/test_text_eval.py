"""Text evaluation metrics on hand-checkable embeddings: neighbour retrieval, comparisons, SentEval, attribution."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hsrl.data.text import load_austen
from hsrl.evaluation.text import book_attribution, format_comparison, neighbour_retrieval, senteval, sphere_metrics


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


def test_sphere_metrics_pairs_only_consecutive_sentences_of_one_document() -> None:
    # The same four points; documents [0, 0, 1, 1] leave two neighbour pairs, (0, 1) and (2, 3).
    angles = torch.tensor([0.0, 0.5, 1.2, 3.0])
    z = torch.stack([angles.cos(), angles.sin()], dim=1)
    result = sphere_metrics(z, [0, 0, 1, 1])
    chord2 = lambda a, b: float((z[a] - z[b]).pow(2).sum())  # noqa: E731
    assert result["align"] == pytest.approx((chord2(0, 1) + chord2(2, 3)) / 2, rel=1e-5)
    pairwise = [chord2(i, j) for i in range(4) for j in range(i + 1, 4)]
    expected_uniform = torch.tensor(pairwise).mul(-2).exp().mean().log()
    assert result["uniform"] == pytest.approx(float(expected_uniform), rel=1e-5)
    assert result["recall@1"] == pytest.approx(0.5)


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


def test_max_sentences_caps_every_set_book_attribution_included(monkeypatch: pytest.MonkeyPatch) -> None:
    """``max_sentences=60`` encodes at most 60 held-out sentences, 60 of the other set, and 10 passages per book
    and split for attribution (60 // 6 books); without a cap, attribution draws its full 150 per book."""
    import hsrl.models.text
    from hsrl.evaluation.text import evaluate_text_encoder

    calls: list[int] = []

    def recording_encoder(_encoder: object, texts: list[str], batch_size: int = 128) -> torch.Tensor:
        calls.append(len(texts))
        generator = torch.Generator().manual_seed(len(texts))
        return F.normalize(torch.randn(len(texts), 8, generator=generator), dim=1)

    monkeypatch.setattr(hsrl.models.text, "encode_texts", recording_encoder)
    heldout, other = load_austen(["persuasion"]), load_austen(["emma"])
    evaluate_text_encoder(None, heldout, attribution=True, max_sentences=60, eval_sets={"other": other})
    assert calls == [60, 60, 60, 60]  # held-out, other set, attribution train, attribution test
    calls.clear()
    evaluate_text_encoder(None, heldout[:1], attribution=True)
    assert calls[-2:] == [6 * 150, 6 * 150]


def test_eval_text_max_seq_length_truncates_every_model_and_bad_values_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``hsrl eval text --max-seq-length N`` embeds every model (``--model`` and ``--baseline``) on N tokens: its
    numbers are those of the packaged MiniLM truncated by hand, and differ from the model's own length."""
    import json

    from model_folders import _text_corpus
    from sentence_transformers import SentenceTransformer

    from hsrl.cli import main as hsrl_main
    from hsrl.data.text_sources import load_documents
    from hsrl.evaluation.text import evaluate_text_encoder
    from hsrl.models.text import resolve_model_path

    corpus = _text_corpus(tmp_path / "books.txt")
    runs = {}
    for name, extra in (("own", []), ("short", ["--max-seq-length", "6"])):
        out = tmp_path / f"{name}.json"
        argv = ["eval", "text", "--model", "minilm", "--baseline", "minilm", "--dataset", str(corpus)]
        assert hsrl_main([*argv, "--output", str(out), *extra]) == 0
        runs[name] = json.loads(out.read_text())
    by_hand = SentenceTransformer(resolve_model_path("minilm"), device="cpu")
    by_hand.max_seq_length = 6
    expected = evaluate_text_encoder(by_hand, load_documents(str(corpus))[1])
    for role in ("model", "baseline"):
        assert runs["short"][role] == pytest.approx(expected, abs=1e-5)
        assert abs(runs["own"][role]["align"] - expected["align"]) > 1e-2  # 6 tokens embed less of each sentence
    capsys.readouterr()
    for value, message in (("0", "--max-seq-length must be >= 1"), ("600", "--baseline embeds at most 512 tokens")):
        assert hsrl_main([*argv, "--max-seq-length", value]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
