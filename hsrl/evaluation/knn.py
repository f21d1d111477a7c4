r"""Exact k-NN classification of frozen embeddings by inner product (cosine on the sphere).

Two voting rules (:data:`KNN_PROTOCOLS`):

* ``paper`` (Wang & Isola's 5-NN): majority vote of the :math:`k = 5` nearest training points,
  :math:`\hat y(q) = \arg\max_c \sum_{i \in N_k(q)} [y_i = c]`;
* ``lightly`` (the protocol of lightly's and InstDisc's benchmark tables, :math:`k = 200`,
  :math:`\tau = 0.1`): votes weighted by similarity,
  :math:`\hat y(q) = \arg\max_c \sum_{i \in N_k(q)} e^{s_i / \tau} [y_i = c]` with :math:`s_i` the cosine
  similarity of :math:`q` and neighbour :math:`i`, so CIFAR-10 results compare with their published numbers.

Ties go to the smallest class index in both.

This is hsrl's one k-NN: image evaluation, text book attribution, ``hsrl eval retrieval --labels``, the recipes
and ``hsrl reproduce`` all classify through :func:`knn_predict` (exact search in torch, or
:class:`hsrl.index.VectorIndex` with ``backend="index"``) and :func:`knn_vote`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "KNN_PROTOCOLS",
    "KNNProtocol",
    "class_indices",
    "knn_accuracy",
    "knn_classify",
    "knn_predict",
    "knn_vote",
    "nearest",
]


@dataclass(frozen=True)
class KNNProtocol:
    r"""A k-NN classification rule: ``k`` neighbours, majority vote (``temperature=None``) or votes weighted
    by :math:`e^{s / \tau}`. ``metric`` names its accuracy in reports (``knn5``, ``knn200_t0.1``)."""

    name: str
    k: int
    temperature: float | None = None

    @property
    def metric(self) -> str:
        return f"knn{self.k}" if self.temperature is None else f"knn{self.k}_t{self.temperature:g}"


KNN_PROTOCOLS: dict[str, KNNProtocol] = {
    "paper": KNNProtocol("paper", 5),
    "lightly": KNNProtocol("lightly", 200, 0.1),
}


def knn_vote(neighbour_labels: Tensor, similarities: Tensor, classes: int, temperature: float | None = None) -> Tensor:
    """Predicted class per row of ``(M, k)`` neighbour labels: majority, or weighted by ``exp(s / temperature)``.

    ``argmax`` returns the first maximum, so ties go to the smallest class index.
    """
    if temperature is not None and not temperature > 0:
        raise ValueError(f"the k-NN temperature must be > 0, got {temperature}")
    one_hot = torch.nn.functional.one_hot(neighbour_labels, classes).float()
    if temperature is None:
        return one_hot.sum(dim=1).argmax(dim=1)
    # Subtracting each row's best similarity rescales a row's votes by one positive factor: same argmax,
    # and exp() cannot overflow for any temperature.
    weights = torch.exp((similarities - similarities[:, :1]) / temperature).unsqueeze(-1)
    return (one_hot * weights).sum(dim=1).argmax(dim=1)


def nearest(
    train: Tensor, queries: Tensor, k: int, *, backend: str = "torch", factory: str = "Flat", chunk: int = 1024
) -> tuple[Tensor, Tensor]:
    """``(similarities, indices)``, both ``(M, k)``, of the ``k`` rows of ``train`` with the largest inner product
    with each query, best first: exact matmul in chunks of queries (``backend="torch"``, O(chunk * N) memory) or
    a :class:`hsrl.index.VectorIndex` of ``factory`` (``"index"``; unit rows only)."""
    if backend == "index":
        from hsrl.index import build_index  # lazy: FAISS is an optional extra

        rows = train.detach().cpu().float().numpy()
        index = build_index(rows, factory=factory, recall_queries=0)
        scores, ids = index.search(queries.detach().cpu().float().numpy(), k)
        return torch.as_tensor(scores, dtype=torch.float32), torch.as_tensor(ids, dtype=torch.long)
    if backend != "torch":
        raise ValueError(f"backend must be torch or index, got {backend!r}")
    values, indices = [], []
    for start in range(0, queries.shape[0], chunk):
        best = (queries[start : start + chunk] @ train.T).topk(k, dim=1)
        values.append(best.values)
        indices.append(best.indices)
    return torch.cat(values), torch.cat(indices)


def knn_predict(
    train: Tensor,
    train_labels: Tensor,
    queries: Tensor,
    *,
    k: int = 5,
    chunk: int = 1024,
    exclude_self: bool = False,
    temperature: float | None = None,
    backend: str = "torch",
    factory: str = "Flat",
) -> Tensor:
    r"""k-NN labels of ``queries`` by inner product with ``train`` (cosine on the sphere).

    Majority vote of the ``k`` nearest (``temperature=None``, the paper's rule), or similarity-weighted
    votes :math:`\sum_i e^{s_i/\tau}[y_i = c]` (``temperature=0.1``: lightly's rule); ties go to the
    smallest class index. The search is :func:`nearest` (``backend``, ``factory``, ``chunk``). ``exclude_self``
    drops the best match (leave-one-out, when queries are the training set).
    """
    if train.shape[0] != train_labels.shape[0]:
        raise ValueError("train and train_labels must have the same number of rows")
    if train.shape[1] != queries.shape[1]:
        raise ValueError(f"dimension mismatch: train has {train.shape[1]}, queries {queries.shape[1]}")
    need = k + int(exclude_self)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= need <= train.shape[0]:
        raise ValueError(f"k must be in [1, {train.shape[0] - int(exclude_self)}], got {k!r}")
    classes = int(train_labels.max()) + 1
    similarities, indices = nearest(train, queries, need, backend=backend, factory=factory, chunk=chunk)
    skip = int(exclude_self)
    labels = train_labels.to(indices.device)[indices[:, skip:]]
    return knn_vote(labels, similarities[:, skip:], classes, temperature)


def knn_classify(
    train: Tensor,
    train_labels: Tensor,
    queries: Tensor,
    *,
    k: int = 5,
    backend: str = "auto",
    temperature: float | None = None,
    factory: str = "Flat",
) -> tuple[Tensor, str]:
    r"""k-NN labels of ``queries`` after L2-normalising every row (features of any layer), on the CPU.

    Args:
        train: ``(N, D)`` features (flattened and L2-normalised here).
        train_labels: ``(N,)`` class indices.
        queries: ``(M, D)`` features.
        k: neighbours per query.
        backend: ``"index"`` (:class:`hsrl.index.VectorIndex` of ``factory``), ``"torch"`` (exact matmul), or
            ``"auto"``: the index when ``hsrl.index`` (FAISS) is importable.
        temperature: ``None`` for a majority vote (the paper), else votes weighted by
            :math:`e^{s/\tau}` (lightly's protocol: ``k=200, temperature=0.1``).

    Returns:
        ``(predictions (M,), backend used)``.
    """
    if backend not in ("auto", "index", "torch"):
        raise ValueError(f"backend must be auto, index or torch, got {backend!r}")
    train = F.normalize(train.flatten(1).float(), dim=1)
    queries = F.normalize(queries.flatten(1).float(), dim=1)
    # An all-zero row (a black image, a dead ReLU layer) has no direction: the index only takes unit
    # rows, so such data goes to the exact torch search, where it simply scores 0 against everything.
    has_zero_rows = bool((train.abs().sum(1) == 0).any() or (queries.abs().sum(1) == 0).any())
    if backend == "index" and has_zero_rows:
        raise ValueError("the index needs unit rows, and some features are all zero")
    if backend == "auto":
        try:
            import faiss  # noqa: F401  (the index's engine; without it the exact torch search)
        except ImportError:
            backend = "torch"
        else:
            backend = "torch" if has_zero_rows else "index"
    predicted = knn_predict(train, train_labels.to(train.device), queries, k=k, temperature=temperature,
                            backend=backend, factory=factory)  # fmt: skip
    return predicted.cpu(), backend


def class_indices(labels: Sequence[Any], classes: Sequence[Any]) -> Tensor:
    """Labels of any sortable kind as indices into ``classes`` (sorted: ties go to the smallest label)."""
    position = {label: i for i, label in enumerate(classes)}
    return torch.tensor([position[label] for label in labels], dtype=torch.long)


def knn_accuracy(
    train: Tensor,
    train_labels: Tensor,
    queries: Tensor,
    query_labels: Tensor,
    *,
    k: int = 5,
    temperature: float | None = None,
) -> float:
    """Fraction of queries whose k-NN label (:func:`knn_predict`) is right; k = 5, majority: the paper's 5-NN."""
    if queries.shape[0] != query_labels.shape[0]:
        raise ValueError("queries and query_labels must have the same number of rows")
    predicted = knn_predict(train, train_labels, queries, k=k, temperature=temperature)
    return float((predicted == query_labels).float().mean())
