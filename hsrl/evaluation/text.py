"""Evaluation of a text encoder: ``hsrl eval text --model PATH --dataset austen``.

Every figure is read against a baseline measured in the same run (the starting model:
the pretrained checkpoint before fine-tuning, or the random initialisation).

Metrics, on held-out documents:

* ``align`` / ``uniform``: the paper's :math:`L_{align}(\\alpha=2)` over neighbouring sentence
  pairs and :math:`L_{uniform}(t=2)` over the held-out sentences (lower is better for both).
* neighbour-sentence retrieval: for each sentence :math:`s_i` that has a successor in its
  document, rank every other held-out sentence by cosine similarity; with
  :math:`r_i` the rank of :math:`s_{i+1}`, ``recall@k`` :math:`= \\frac1n \\sum_i [r_i \\le k]`
  and ``mrr@10`` :math:`= \\frac1n \\sum_i [r_i \\le 10] / r_i`.
* second-domain sets (``eval_sets``, e.g. ``factbook``: CIA World Factbook backgrounds): the
  same ``align``, ``uniform`` and retrieval metrics on text of another kind, reported with the
  set's name as a prefix (``factbook_recall@10``), so that a fine-tune that helps on novels
  but costs general retrieval shows it.
* book attribution (Austen only): passages of three consecutive sentences, trained on
  even chapters and tested on odd ones, classified by 5-NN and by a logistic-regression probe
  on frozen embeddings (accuracy).
* SentEval-style binary tasks (MR, CR, SUBJ, MPQA) when ``--senteval DIR`` holds their files
  in the usual format (``rt-polarity.pos/.neg``, ``custrev.pos/.neg``,
  ``subj.objective/.subjective``, ``mpqa.pos/.neg``): 10-fold cross-validated accuracy of a
  logistic regression whose L2 strength is chosen by an inner 5-fold CV, as Quick-Thought did.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hsrl.data.text import AUSTEN_BOOKS, Document, SentenceCorpus, austen_splits, load_austen, load_factbook
from hsrl.data.text_sources import read_documents
from hsrl.evaluation.knn import knn_accuracy
from hsrl.evaluation.summary import format_change
from hsrl.losses import align_loss, uniform_loss

__all__ = [
    "SENTEVAL_TASKS",
    "book_attribution",
    "eval_set_name",
    "evaluate_text_encoder",
    "format_comparison",
    "load_eval_documents",
    "neighbour_retrieval",
    "senteval",
    "sphere_metrics",
    "summary_block",
]

#: task -> (positive file, negative file)
SENTEVAL_TASKS = {
    "MR": ("rt-polarity.pos", "rt-polarity.neg"),
    "CR": ("custrev.pos", "custrev.neg"),
    "SUBJ": ("subj.objective", "subj.subjective"),
    "MPQA": ("mpqa.pos", "mpqa.neg"),
}


def neighbour_retrieval(z: Tensor, doc_ids: Sequence[int], ks: Sequence[int] = (1, 10)) -> dict[str, float]:
    """Recall@k and MRR@10 of each sentence's successor among all other sentences.

    Args:
        z: ``(n, d)`` unit-norm embeddings of sentences in reading order.
        doc_ids: document of each sentence; a sentence's successor must be in its document.
    """
    if z.shape[0] != len(doc_ids):
        raise ValueError("one document id per embedding is needed")
    docs = torch.as_tensor(list(doc_ids))
    queries = torch.nonzero(docs[:-1] == docs[1:]).flatten()
    if len(queries) == 0:
        raise ValueError("no sentence has a successor in its document")
    ranks = []
    for chunk in queries.split(1024):
        scores = z[chunk] @ z.T
        scores[torch.arange(len(chunk)), chunk] = float("-inf")  # a sentence is not its own neighbour
        target = scores[torch.arange(len(chunk)), chunk + 1]
        ranks.append((scores > target[:, None]).sum(dim=1) + 1)
    rank = torch.cat(ranks).double()
    result = {f"recall@{k}": float((rank <= k).double().mean()) for k in ks}
    result["mrr@10"] = float(torch.where(rank <= 10, 1 / rank, torch.zeros_like(rank)).mean())
    return result


#: Evaluation sets that ship inside hsrl, by name.
EMBEDDED_EVAL_SETS = ("factbook", "persuasion")


def load_eval_documents(name: str) -> list[Document]:
    """The documents of an evaluation set: an embedded one by name, or every document of a path.

    ``factbook`` is the CIA World Factbook backgrounds (another domain), ``persuasion`` the
    held-out Austen novel; a ``.txt``/``.jsonl``/``.parquet`` file or folder is used whole.

    Raises:
        ValueError: one line naming the set, when it is missing, empty or has no neighbour pair.
    """
    if name == "factbook":
        return load_factbook()
    if name == "persuasion":
        return austen_splits()[1]
    path = Path(name)
    if not path.exists():
        raise ValueError(
            f"--eval-dataset {name}: no such file or folder (embedded sets: {', '.join(EMBEDDED_EVAL_SETS)})"
        )
    try:
        documents = read_documents(path)
    except ValueError as error:
        raise ValueError(f"--eval-dataset {name}: {error}") from None
    if not any(len(doc.sentences) >= 2 for doc in documents):
        raise ValueError(f"--eval-dataset {name}: empty, or no document with two sentences to retrieve between")
    return documents


def eval_set_name(name: str) -> str:
    """The metric prefix of an evaluation set: its embedded name or the path's stem."""
    return name if name in EMBEDDED_EVAL_SETS else Path(name).name.split(".")[0]


def sphere_metrics(z: Tensor, doc_ids: Sequence[int]) -> dict[str, float]:
    """Alignment of consecutive sentences, uniformity, and next-sentence retrieval."""
    pairs = torch.tensor([(i, i + 1) for i in range(len(doc_ids) - 1) if doc_ids[i] == doc_ids[i + 1]])
    return {
        "align": float(align_loss(z[pairs[:, 0]], z[pairs[:, 1]], alpha=2.0)),
        "uniform": float(uniform_loss(z, t=2.0)),
        **neighbour_retrieval(z, doc_ids),
    }


def _logistic_regression(seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000, random_state=seed)


def book_attribution(encode: Any, books: Sequence[str] = AUSTEN_BOOKS, *, per_book: int = 150, seed: int = 0) -> dict:
    """5-NN and linear-probe accuracy of telling which novel a passage comes from.

    Passages are three consecutive sentences of one chapter; up to ``per_book`` are drawn
    from the even chapters (training) and as many from the odd chapters (test) of each book.
    """
    rng = np.random.default_rng(seed)
    splits: dict[str, tuple[list[str], list[int]]] = {"train": ([], []), "test": ([], [])}
    for label, book in enumerate(books):
        for part, parity in (("train", 0), ("test", 1)):
            passages = [
                " ".join(doc.sentences[i : i + 3])
                for n, doc in enumerate(load_austen([book]))
                if n % 2 == parity
                for i in range(0, len(doc.sentences) - 2, 3)
            ]
            chosen = rng.choice(len(passages), size=min(per_book, len(passages)), replace=False)
            splits[part][0].extend(passages[i] for i in sorted(chosen))
            splits[part][1].extend([label] * len(chosen))
    train_z, test_z = encode(splits["train"][0]), encode(splits["test"][0])
    train_y, test_y = torch.tensor(splits["train"][1]), torch.tensor(splits["test"][1])
    probe = _logistic_regression(seed).fit(train_z.numpy(), train_y.numpy())
    return {
        "attribution_knn5": knn_accuracy(train_z, train_y, test_z, test_y, k=5),
        "attribution_linear": float((probe.predict(test_z.numpy()) == test_y.numpy()).mean()),
    }


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")  # MR and CR ship in latin-1
    return [line.strip() for line in text.splitlines() if line.strip()]


def senteval(encode: Any, folder: str | Path, *, folds: int = 10, seed: int = 0) -> dict[str, float]:
    """Cross-validated accuracy on the SentEval binary tasks whose files are in ``folder``."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    folder = Path(folder)
    results: dict[str, float] = {}
    for task, (pos_name, neg_name) in SENTEVAL_TASKS.items():
        pos_path, neg_path = _find(folder, pos_name), _find(folder, neg_name)
        if pos_path is None or neg_path is None:
            continue
        positives, negatives = _read_lines(pos_path), _read_lines(neg_path)
        features = encode(positives + negatives).numpy()
        labels = np.array([1] * len(positives) + [0] * len(negatives))
        inner = LogisticRegressionCV(Cs=[2.0**p for p in range(-2, 5)], cv=5, max_iter=2000, random_state=seed)
        outer = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        results[f"senteval_{task}"] = float(cross_val_score(inner, features, labels, cv=outer).mean())
    if not results:
        raise ValueError(f"--senteval {folder}: none of the MR/CR/SUBJ/MPQA files ({', '.join(SENTEVAL_TASKS)}) found")
    return results


def _find(folder: Path, name: str) -> Path | None:
    matches = sorted(folder.rglob(name))
    return matches[0] if matches else None


def evaluate_text_encoder(
    encoder: Any,
    heldout: Sequence[Document],
    *,
    attribution: bool = False,
    senteval_dir: str | None = None,
    max_sentences: int | None = None,
    eval_sets: dict[str, Sequence[Document]] | None = None,
    batch_size: int = 128,
    seed: int = 0,
) -> dict[str, float]:
    """All the text metrics of one encoder (a ``SentenceTransformer``) on held-out documents.

    ``eval_sets`` maps a name to the documents of another evaluation set; its metrics come
    back prefixed with the name (``factbook_recall@10``). ``max_sentences`` caps every set, the book-attribution
    passages included (``max_sentences // 6`` per book and split, at least 5).
    """
    from hsrl.models.text import encode_texts

    def encode(texts: Sequence[str]) -> Tensor:
        return encode_texts(encoder, texts, batch_size=batch_size)

    corpus = SentenceCorpus.from_documents(heldout)
    sentences, doc_ids = corpus.sentences, corpus.doc_ids
    if max_sentences is not None:
        sentences, doc_ids = sentences[:max_sentences], doc_ids[:max_sentences]
    metrics = {**sphere_metrics(encode(sentences), doc_ids), "heldout_sentences": float(len(sentences))}
    for name, documents in (eval_sets or {}).items():
        other = SentenceCorpus.from_documents(documents)
        keep = slice(None) if max_sentences is None else slice(max_sentences)
        results = sphere_metrics(encode(other.sentences[keep]), other.doc_ids[keep])
        metrics.update({f"{name}_{key}": value for key, value in results.items()})
    if attribution:
        # The cap holds here too: up to ``max_sentences`` passages per split (at least 5 per book).
        per_book = 150 if max_sentences is None else max(5, min(150, max_sentences // len(AUSTEN_BOOKS)))
        metrics.update(book_attribution(encode, per_book=per_book, seed=seed))
    if senteval_dir:
        metrics.update(senteval(encode, senteval_dir, seed=seed))
    return metrics


def summary_block(baseline: dict[str, float] | None, trained: dict[str, float], eval_sets: Sequence[str],
                  *, steps: int, train_seconds: float) -> dict[str, float]:  # fmt: skip
    """The flat ``summary`` of a text run's ``metrics.json``: trained and baseline side by side.

    Keys: ``recall@10``, ``align``, ``uniform`` on the held-out set and ``{set}_recall@10``,
    ``{set}_align``, ``{set}_uniform`` on each other evaluation set, each also with a
    ``baseline_`` prefix (the starting model, measured in the same run), plus ``steps`` and
    ``train_seconds``.
    """
    keys = [f"{prefix}{metric}" for prefix in ("", *(f"{name}_" for name in eval_sets))
            for metric in ("recall@10", "align", "uniform")]  # fmt: skip
    summary: dict[str, float] = {}
    for key in keys:
        if key in trained:
            summary[key] = trained[key]
            if baseline and key in baseline:
                summary[f"baseline_{key}"] = baseline[key]
    summary.update(steps=float(steps), train_seconds=round(train_seconds, 1))
    return summary


def format_comparison(baseline: dict[str, float], trained: dict[str, float], names: tuple[str, str]) -> str:
    """A Markdown table: metric, baseline, trained, change (better changes marked)."""
    lines = [f"| metric | {names[0]} | {names[1]} | change |", "| --- | --- | --- | --- |"]
    for key, value in trained.items():
        if key not in baseline or key == "heldout_sentences":
            continue
        lines.append(f"| {key} | {baseline[key]:.4f} | {value:.4f} | {format_change(baseline[key], value, key)} |")
    return "\n".join(lines)
