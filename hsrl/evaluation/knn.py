r"""Exact k-NN classification of frozen embeddings by inner product (cosine on the sphere).

Two voting rules (:data:`KNN_PROTOCOLS`):

* ``paper`` (Wang & Isola's 5-NN): majority vote of the :math:`k = 5` nearest training points,
  :math:`\hat y(q) = \arg\max_c \sum_{i \in N_k(q)} [y_i = c]`;
* ``lightly`` (the protocol of lightly's and InstDisc's benchmark tables, :math:`k = 200`,
  :math:`\tau = 0.1`): votes weighted by similarity,
  :math:`\hat y(q) = \arg\max_c \sum_{i \in N_k(q)} e^{s_i / \tau} [y_i = c]` with :math:`s_i` the cosine
  similarity of :math:`q` and neighbour :math:`i`, so CIFAR-10 results compare with their published numbers.

Ties go to the smallest class index in both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["KNN_PROTOCOLS", "KNNProtocol", "knn_accuracy", "knn_predict", "knn_vote"]


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


def knn_predict(
    train: Tensor,
    train_labels: Tensor,
    queries: Tensor,
    *,
    k: int = 5,
    chunk: int = 1024,
    exclude_self: bool = False,
    temperature: float | None = None,
) -> Tensor:
    r"""k-NN labels of ``queries`` by inner product with ``train`` (cosine on the sphere).

    Majority vote of the ``k`` nearest (``temperature=None``, the paper's rule), or similarity-weighted
    votes :math:`\sum_i e^{s_i/\tau}[y_i = c]` (``temperature=0.1``: lightly's rule); ties go to the
    smallest class index. Exact search in chunks of queries, O(chunk * N) memory. ``exclude_self`` drops the
    best match (leave-one-out, when queries are the training set).
    """
    if train.shape[0] != train_labels.shape[0]:
        raise ValueError("train and train_labels must have the same number of rows")
    if train.shape[1] != queries.shape[1]:
        raise ValueError(f"dimension mismatch: train has {train.shape[1]}, queries {queries.shape[1]}")
    need = k + int(exclude_self)
    if not 1 <= need <= train.shape[0]:
        raise ValueError(f"k must be in [1, {train.shape[0] - int(exclude_self)}], got {k}")
    classes = int(train_labels.max()) + 1
    predictions = []
    for start in range(0, queries.shape[0], chunk):
        scores = queries[start : start + chunk] @ train.T
        best = scores.topk(need, dim=1)
        skip = int(exclude_self)
        predictions.append(knn_vote(train_labels[best.indices[:, skip:]], best.values[:, skip:], classes, temperature))
    return torch.cat(predictions)


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
