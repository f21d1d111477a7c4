"""Retrieval evaluation of frozen embeddings through ``hsrl.index``: IR metrics and k-NN classification.

``hsrl eval retrieval --queries Q --corpus C (--qrels R | --labels) [--model M]``. Queries and corpus are
BEIR/MTEB-style ``.jsonl`` files (``_id`` or ``id``, ``text``, optional ``title`` — prepended to a corpus text —
and ``label``), encoded with ``--model``, or ``hsrl export`` folders (already embedded; ``id`` and ``label``
from their metadata). Relevance comes from qrels (``.tsv`` with the header ``query-id corpus-id score``, or
``.jsonl`` with those keys; a pair is relevant when its score is > 0) or, with ``--labels``, from class
labels (a corpus item is relevant to a query of the same label), which also reports 5-NN accuracy.

The metrics are those of sentence-transformers' ``InformationRetrievalEvaluator``, computed the same way
(and tested equal to it to 1e-6): queries without a relevant document are left out; each query's hits are
ranked by decreasing score, ties by increasing corpus id. With ``R_q`` the relevant set of query ``q``,
``rel_i ∈ {0, 1}`` whether the hit at rank ``i`` (from 1) is relevant, and means over the evaluated queries:

- ``accuracy@k  = mean_q [∃ i ≤ k: rel_i]``
- ``precision@k = mean_q (Σ_{i≤k} rel_i) / k``  (divided by ``k`` even when fewer hits exist)
- ``recall@k    = mean_q (Σ_{i≤k} rel_i) / |R_q|``
- ``mrr@k       = mean_q 1 / min{i ≤ k: rel_i}``  (0 when no relevant hit in the top k)
- ``ndcg@k      = mean_q DCG_k / IDCG_k``, ``DCG_k = Σ_{i≤k} rel_i / log₂(i + 1)``, ``IDCG_k`` the DCG of
  ``|R_q|`` relevant hits in front (binary relevance both times)
- ``map@k       = mean_q (Σ_{i≤k} rel_i · precision@i) / min(k, |R_q|)``
- ``knn{k}_accuracy = mean_q [majority label of the k nearest corpus items = label_q]``, a tie going to the
  smallest label (the paper's 5-NN protocol, as ``hsrl.evaluation.knn``)
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hsrl.evaluation.knn import class_indices, knn_predict
from hsrl.index import VectorIndex, check_unit_rows

__all__ = [
    "Items",
    "compute_metrics",
    "embed_items",
    "knn_classification_accuracy",
    "label_relevance",
    "rank_corpus",
    "read_items",
    "read_qrels",
    "retrieval_metrics",
]

ACCURACY_AT_K = (1, 3, 5, 10)
PRECISION_RECALL_AT_K = (1, 3, 5, 10)
MRR_AT_K = (10,)
NDCG_AT_K = (10,)
MAP_AT_K = (100,)
#: Extra neighbours fetched so that hits tied at the k-th score can be re-ordered by corpus id.
TIE_MARGIN = 16

Ranking = list[tuple[float, str]]


def rank_corpus(
    queries: np.ndarray, corpus: np.ndarray, corpus_ids: Sequence[str], k: int, *, factory: str = "Flat"
) -> list[Ranking]:
    """The top-``k`` ``(score, corpus id)`` of each query by inner product, searched through ``hsrl.index``.

    Sorted by decreasing score, ties by increasing corpus id (the order of ``InformationRetrievalEvaluator``).
    """
    corpus_rows = check_unit_rows(corpus, np.asarray(corpus).shape[-1], "corpus embeddings")
    if len(corpus_ids) != corpus_rows.shape[0]:
        raise ValueError(f"{len(corpus_ids)} corpus ids for {corpus_rows.shape[0]} corpus embeddings")
    index = VectorIndex.create(corpus_rows.shape[1], factory, num_vectors_hint=corpus_rows.shape[0])
    index.add(corpus_rows)  # ids are positions 0..n-1
    scores, positions = index.search(queries, k + TIE_MARGIN)
    rankings = []
    for row_scores, row_positions in zip(scores.tolist(), positions.tolist(), strict=True):
        hits = [(score, corpus_ids[p]) for score, p in zip(row_scores, row_positions, strict=True) if p >= 0]
        hits.sort(key=lambda hit: (-hit[0], hit[1]))
        rankings.append(hits[:k])
    return rankings


def _dcg(relevances: Sequence[int], k: int) -> float:
    return sum(relevances[i] / np.log2(i + 2) for i in range(min(len(relevances), k)))


def compute_metrics(
    rankings: Sequence[Ranking],
    relevant: Sequence[set[str]],
    *,
    accuracy_at_k: Sequence[int] = ACCURACY_AT_K,
    precision_recall_at_k: Sequence[int] = PRECISION_RECALL_AT_K,
    mrr_at_k: Sequence[int] = MRR_AT_K,
    ndcg_at_k: Sequence[int] = NDCG_AT_K,
    map_at_k: Sequence[int] = MAP_AT_K,
) -> dict[str, float]:
    """The module docstring's metrics from ranked hits and each query's (non-empty) relevant set."""
    if len(rankings) != len(relevant) or not rankings:
        raise ValueError(f"need one relevant set per ranking and at least one query, got {len(relevant)}")
    sums: Counter[str] = Counter()
    for hits, wanted in zip(rankings, relevant, strict=True):
        flags = [int(cid in wanted) for _, cid in hits]
        for k in accuracy_at_k:
            sums[f"accuracy@{k}"] += float(any(flags[:k]))
        for k in precision_recall_at_k:
            sums[f"precision@{k}"] += sum(flags[:k]) / k
            sums[f"recall@{k}"] += sum(flags[:k]) / len(wanted)
        for k in mrr_at_k:
            sums[f"mrr@{k}"] += next((1.0 / (i + 1) for i, flag in enumerate(flags[:k]) if flag), 0.0)
        for k in ndcg_at_k:
            sums[f"ndcg@{k}"] += _dcg(flags, k) / _dcg([1] * len(wanted), k)
        for k in map_at_k:
            precisions = [sum(flags[: i + 1]) / (i + 1) for i, flag in enumerate(flags[:k]) if flag]
            sums[f"map@{k}"] += sum(precisions) / min(k, len(wanted))
    return {name: float(total / len(rankings)) for name, total in sums.items()}


def retrieval_metrics(
    query_embeddings: np.ndarray,
    corpus_embeddings: np.ndarray,
    query_ids: Sequence[str],
    corpus_ids: Sequence[str],
    relevant_docs: dict[str, set[str]],
    *,
    factory: str = "Flat",
    **ks: Sequence[int],
) -> dict[str, float]:
    """IR metrics of the queries that have relevant documents (``InformationRetrievalEvaluator``'s rule).

    ``ks`` overrides ``accuracy_at_k``, ``precision_recall_at_k``, ``mrr_at_k``, ``ndcg_at_k``, ``map_at_k``.
    Returns the metrics plus ``"queries"`` (evaluated) and ``"corpus"`` counts.
    """
    if len(query_ids) != len(query_embeddings):
        raise ValueError(f"{len(query_ids)} query ids for {len(query_embeddings)} query embeddings")
    keep = [i for i, qid in enumerate(query_ids) if relevant_docs.get(qid)]
    if not keep:
        raise ValueError("no query has a relevant document in the qrels")
    depth = max(max(values) for values in _all_ks(ks).values())
    queries = np.asarray(query_embeddings)[keep]
    rankings = rank_corpus(queries, corpus_embeddings, [str(c) for c in corpus_ids], depth, factory=factory)
    metrics = compute_metrics(rankings, [relevant_docs[query_ids[i]] for i in keep], **_all_ks(ks))
    return {**metrics, "queries": len(keep), "corpus": len(corpus_ids)}


def _all_ks(ks: dict[str, Sequence[int]]) -> dict[str, Sequence[int]]:
    defaults = {"accuracy_at_k": ACCURACY_AT_K, "precision_recall_at_k": PRECISION_RECALL_AT_K,
                "mrr_at_k": MRR_AT_K, "ndcg_at_k": NDCG_AT_K, "map_at_k": MAP_AT_K}  # fmt: skip
    unknown = set(ks) - set(defaults)
    if unknown:
        raise ValueError(f"unknown cut-off list {sorted(unknown)[0]!r}")
    merged = {**defaults, **ks}
    for name, values in merged.items():
        if not values or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in values):
            raise ValueError(f"{name} must be a non-empty list of positive integers, got {values!r}")
    return merged


def label_relevance(
    query_ids: Sequence[str], query_labels: Sequence[Any], corpus_ids: Sequence[str], corpus_labels: Sequence[Any]
) -> dict[str, set[str]]:
    """Relevance from classes: the corpus items with the query's label."""
    by_label: dict[Any, set[str]] = {}
    for cid, label in zip(corpus_ids, corpus_labels, strict=True):
        by_label.setdefault(label, set()).add(str(cid))
    return {str(qid): set(by_label.get(label, ())) for qid, label in zip(query_ids, query_labels, strict=True)}


def knn_classification_accuracy(
    query_embeddings: np.ndarray,
    query_labels: Sequence[Any],
    corpus_embeddings: np.ndarray,
    corpus_labels: Sequence[Any],
    *,
    k: int = 5,
    factory: str = "Flat",
) -> float:
    """Share of queries whose ``k`` nearest corpus items' majority label is theirs (ties: smallest label), by
    :func:`hsrl.evaluation.knn.knn_predict` searching a ``factory`` index of the corpus."""
    if len(query_labels) != len(query_embeddings) or len(corpus_labels) != len(corpus_embeddings):
        raise ValueError("need one label per query and per corpus embedding")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(corpus_labels):
        raise ValueError(f"k must be in [1, {len(corpus_labels)}], got {k!r}")
    corpus_rows = check_unit_rows(corpus_embeddings, np.asarray(corpus_embeddings).shape[-1], "corpus embeddings")
    classes = sorted(set(corpus_labels))
    predicted = knn_predict(torch.from_numpy(corpus_rows), class_indices(corpus_labels, classes),
                            torch.from_numpy(np.asarray(query_embeddings, dtype=np.float32)), k=k, backend="index",
                            factory=factory)  # fmt: skip
    return sum(classes[int(p)] == truth for p, truth in zip(predicted, query_labels, strict=True)) / len(query_labels)


# --------------------------------------------------------------------------- files


@dataclass
class Items:
    """Queries or corpus: ids, texts (``None`` when already embedded), embeddings, labels."""

    ids: list[str]
    texts: list[str] | None
    embeddings: np.ndarray | None
    labels: list[Any] | None


def read_items(path: str | Path, *, corpus: bool) -> Items:
    """A BEIR-style ``.jsonl`` (``_id``/``id``, ``text``, ``title``, ``label``) or an ``hsrl export`` folder."""
    source = Path(path)
    if source.is_dir():
        from hsrl.export import load_embeddings

        vectors, table = load_embeddings(source)
        columns = table.column_names
        ids = [str(v) for v in table.column("id").to_pylist()] if "id" in columns else []
        labels = table.column("label").to_pylist() if "label" in columns else None
        return Items(ids or [str(i) for i in range(len(vectors))], None, vectors, labels)
    if not source.is_file():
        raise ValueError(f"{source}: no such file or export folder")
    ids, texts, labels = [], [], []
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ids.append(str(row["_id"] if "_id" in row else row["id"]))
            text = row["text"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f"{source}: line {number} needs a JSON object with '_id' (or 'id') and 'text'") from None
        title = row.get("title") if corpus else None
        texts.append(f"{title} {text}".strip() if title else text)
        labels.append(row.get("label"))
    if not ids:
        raise ValueError(f"{source} holds no items")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{source}: ids are not unique")
    return Items(ids, texts, None, labels if all(label is not None for label in labels) else None)


def read_qrels(path: str | Path) -> dict[str, set[str]]:
    """``query id -> relevant corpus ids`` from a BEIR ``.tsv`` (with header) or ``.jsonl``; score > 0 counts."""
    source = Path(path)
    if not source.is_file():
        raise ValueError(f"qrels {source}: no such file")
    if source.suffix == ".jsonl":
        rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        with open(source, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
    relevant: dict[str, set[str]] = {}
    for number, row in enumerate(rows, 1):
        try:
            query, doc, score = str(row["query-id"]), str(row["corpus-id"]), float(row.get("score", 1))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"qrels {source}: row {number} needs query-id, corpus-id and a numeric score") from None
        if score > 0:
            relevant.setdefault(query, set()).add(doc)
    return relevant


def embed_items(items: Items, model: Any, batch_size: int) -> np.ndarray:
    """The items' rows: their exported embeddings, or ``model.encode`` of their texts (an opened model folder,
    :func:`hsrl.models.folder.open_model`; unit rows)."""
    if items.embeddings is not None:
        return items.embeddings
    if model is None:
        raise ValueError("text queries or corpus need --model (a model folder that encodes text)")
    return model.encode(items.texts, modality="text", batch_size=batch_size)
