"""Exact k-NN classification of frozen embeddings by inner product (cosine on the sphere)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["knn_accuracy", "knn_predict"]


def knn_predict(
    train: Tensor, train_labels: Tensor, queries: Tensor, *, k: int = 5, chunk: int = 1024, exclude_self: bool = False
) -> Tensor:
    r"""Majority vote of the ``k`` nearest training points by inner product (cosine on the sphere).

    :math:`\hat y(q) = \arg\max_c \sum_{i \in N_k(q)} [y_i = c]`, ties broken by the
    smallest class index. Exact search in chunks of queries, O(chunk * N) memory.
    ``exclude_self`` drops the best match (leave-one-out, when queries are the training set).
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
        neighbours = scores.topk(need, dim=1).indices[:, int(exclude_self) :]
        votes = torch.nn.functional.one_hot(train_labels[neighbours], classes).sum(dim=1)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


def knn_accuracy(train: Tensor, train_labels: Tensor, queries: Tensor, query_labels: Tensor, *, k: int = 5) -> float:
    """Fraction of queries whose k-NN majority label is right (the paper's 5-NN protocol)."""
    if queries.shape[0] != query_labels.shape[0]:
        raise ValueError("queries and query_labels must have the same number of rows")
    return float((knn_predict(train, train_labels, queries, k=k) == query_labels).float().mean())
