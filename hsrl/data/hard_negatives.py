"""Hard negatives for neighbour pairs: the sentences of a pair's book that look most like its first sentence.

In-batch negatives are mostly easy (another book, another scene). What a held-out next-sentence search has to
beat are sentences of the *same* book that resemble the query. Mining them once with the starting model, as DPR
mines BM25 negatives, and adding one per pair to InfoNCE's denominator (``contrastive_loss(...,
extra_negatives=...)``) trains on exactly those confusions: in the objective probe
(``benchmarks/text_objective_probe.py --hard-negatives 50``) it is the first setting that lifts *Persuasion*
recall@10 past 1.4× the untouched model.

For the first sentence ``i`` of each pair, the candidates are the ``k`` sentences ``m`` of the same book with the
largest cosine ``z_i·z_m``, leaving out

* ``m`` within ``exclude_within`` places of ``i`` (itself and its neighbours, which may be true positives), and
* any sentence whose text equals ``i``'s or its neighbour's ("Yes." recurs hundreds of times).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["mine_hard_negatives"]


def mine_hard_negatives(
    embeddings: Tensor,
    sentences: Sequence[str],
    pairs: Sequence[tuple[int, int]],
    groups: Sequence[str],
    k: int,
    *,
    exclude_within: int = 2,
    chunk_size: int = 1024,
) -> dict[int, list[int]]:
    """The ``k`` hard-negative candidates of each pair's first sentence, nearest first.

    Args:
        embeddings: ``(n, d)`` unit-norm embeddings of ``sentences`` (reading order), from the starting model.
        sentences: the sentences the pair indices point into.
        pairs: ``(i, j)`` neighbour pairs (as :class:`hsrl.data.text.SentencePairDataset` holds them).
        groups: each pair's book; candidates come from the same book only.
        k: candidates per sentence (a step draws one of them, so ``k`` > 1 varies the negatives).
        exclude_within: leave out sentences this many places or fewer from the query.
        chunk_size: queries scored at a time (memory: ``chunk_size × book size`` floats).

    Returns:
        ``{i: [m, ...]}`` for every first sentence ``i``; a list may be shorter than ``k`` (a small book) and is
        empty when nothing qualifies.

    Raises:
        ValueError: ``k`` < 1, or the inputs do not line up.
    """
    if k < 1:
        raise ValueError(f"--hard-negatives must be >= 1, got {k}")
    if embeddings.dim() != 2 or embeddings.shape[0] != len(sentences):
        raise ValueError(f"one embedding row per sentence is needed, got {tuple(embeddings.shape)} for "
                         f"{len(sentences)} sentences")  # fmt: skip
    if len(pairs) != len(groups):
        raise ValueError(f"one group per pair is needed, got {len(groups)} for {len(pairs)} pairs")
    book_of: dict[int, str] = {}
    neighbour_of: dict[int, int] = {}
    for (i, j), book in zip(pairs, groups, strict=True):
        book_of[i] = book_of[j] = book
        neighbour_of.setdefault(i, j)
    candidates: dict[int, list[int]] = {}
    for book in sorted(set(groups)):
        members = torch.tensor(sorted(i for i, b in book_of.items() if b == book))
        queries = torch.tensor([i for i in members.tolist() if i in neighbour_of])
        book_embeddings = embeddings[members].float().T  # gathered once per book, not once per chunk
        # Scored a little past k: texts equal to the query's or its neighbour's are dropped after ranking.
        depth = min(len(members), k + 8)
        for chunk in queries.split(chunk_size):
            scores = embeddings[chunk].float() @ book_embeddings
            scores[(chunk[:, None] - members[None, :]).abs() <= exclude_within] = float("-inf")
            best = scores.topk(depth, dim=1)
            for query, values, rows in zip(chunk.tolist(), best.values.tolist(), best.indices.tolist(), strict=True):
                same = {sentences[query], sentences[neighbour_of[query]]}
                found = [m for m, v in zip(members[rows].tolist(), values, strict=True)
                         if v != float("-inf") and sentences[m] not in same]  # fmt: skip
                candidates[query] = found[:k]
    return candidates
