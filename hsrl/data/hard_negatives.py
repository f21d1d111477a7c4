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
* any sentence whose text equals ``i``'s or its neighbour's ("Yes." recurs hundreds of times), and
* with ``max_positive_ratio`` r, any ``m`` with ``z_i·z_m > r · z_i·z_j`` (``j`` the pair's neighbour): a
  candidate the starting model finds nearly as close as the true neighbour is likely another valid continuation,
  a false negative (NV-Retriever's "positive-aware" mining, Moreira et al. 2024, keeps r = 0.95).

:class:`HardNegativePairs` serves them to training: item ``index`` is ``(anchor, neighbour, negative)``, the
negative drawn from the anchor's candidates by a generator seeded with ``(seed, epoch, index)``, so a resumed run
draws what an uninterrupted one would, and each epoch draws afresh. The text recipe mines and serves them with
``--hard-negatives K`` (``hsrl.pipelines.bookcorpus``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["HardNegativePairs", "mine_hard_negatives"]


def mine_hard_negatives(
    embeddings: Tensor,
    sentences: Sequence[str],
    pairs: Sequence[tuple[int, int]],
    groups: Sequence[str],
    k: int,
    *,
    exclude_within: int = 2,
    max_positive_ratio: float | None = None,
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
        max_positive_ratio: leave out sentences scoring above this share of the pair's own score (None: keep all).
        chunk_size: queries scored at a time (memory: ``chunk_size × book size`` floats, and never more than
            about 2**26 of them: fewer queries at a time in a large book).

    Returns:
        ``{i: [m, ...]}`` for every first sentence ``i``; a list may be shorter than ``k`` (a small book) and is
        empty when nothing qualifies.

    Raises:
        ValueError: ``k`` < 1, ``max_positive_ratio`` not positive, or the inputs do not line up.
    """
    if k < 1:
        raise ValueError(f"--hard-negatives must be >= 1, got {k}")
    if max_positive_ratio is not None and not max_positive_ratio > 0:
        raise ValueError(f"the positive ratio must be > 0, got {max_positive_ratio}")
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
        # At most ~2**26 scores (256 MB of float32) at a time, however large the book.
        queries_at_once = max(1, min(chunk_size, (1 << 26) // len(members)))
        for chunk in queries.split(queries_at_once):
            chunk_embeddings = embeddings[chunk].float()
            scores = chunk_embeddings @ book_embeddings
            scores[(chunk[:, None] - members[None, :]).abs() <= exclude_within] = float("-inf")
            if max_positive_ratio is not None:
                neighbours = torch.tensor([neighbour_of[q] for q in chunk.tolist()])
                positive = (chunk_embeddings * embeddings[neighbours].float()).sum(dim=1)
                scores[scores > max_positive_ratio * positive[:, None]] = float("-inf")
            best = scores.topk(depth, dim=1)
            for query, values, rows in zip(chunk.tolist(), best.values.tolist(), best.indices.tolist(), strict=True):
                same = {sentences[query], sentences[neighbour_of[query]]}
                found = [m for m, v in zip(members[rows].tolist(), values, strict=True)
                         if v != float("-inf") and sentences[m] not in same]  # fmt: skip
                candidates[query] = found[:k]
    return candidates


class HardNegativePairs(Dataset[tuple[str, str, str]]):
    """Neighbour pairs with one mined hard negative each: item ``index`` is ``(anchor, neighbour, negative)``.

    The negative is drawn from the anchor's candidates (:func:`mine_hard_negatives`) by ``random.Random`` seeded
    with ``(seed, epoch, index)``: the same item in the same epoch is always the same triple (exact resume, any
    number of loader workers), and another epoch draws again. An anchor with no candidate (a book too small to
    have one) gets a sentence of the whole corpus drawn the same way, other than the pair's own two: an ordinary
    random negative.

    Args:
        sentences, pairs, groups: the pair dataset's (:class:`hsrl.data.text.SentencePairDataset`).
        candidates: ``{anchor index: [sentence index, ...]}`` for every pair's anchor.
        seed: the run's seed.

    Raises:
        ValueError: a pair's anchor has no entry in ``candidates``, or a candidate is not a sentence index.
    """

    def __init__(
        self,
        sentences: Sequence[str],
        pairs: Sequence[tuple[int, int]],
        groups: Sequence[str] | None,
        candidates: Mapping[int, Sequence[int]],
        *,
        seed: int = 0,
    ) -> None:
        missing = next((i for i, _ in pairs if i not in candidates), None)
        if missing is not None:
            raise ValueError(f"no hard-negative candidates for sentence {missing}: mine them for every pair's anchor")
        if any(not 0 <= m < len(sentences) for found in candidates.values() for m in found):
            raise ValueError(f"a hard-negative candidate is outside the {len(sentences)} sentences")
        if len(sentences) < 3:
            raise ValueError("hard negatives need at least three sentences")
        self.sentences, self.pairs, self.groups = sentences, pairs, groups
        self.candidates = candidates
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the next epoch's negatives (:func:`hsrl.training.fit` calls it before each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def negative_of(self, index: int) -> int:
        """The sentence index drawn as pair ``index``'s negative in this epoch."""
        i, j = self.pairs[index]
        # Integers seed random.Random the same on every platform and Python (strings would hash per process).
        draw = random.Random((self.seed * 1_000_003 + self.epoch) * 1_000_000_007 + index)
        found = self.candidates[i]
        if found:
            return found[draw.randrange(len(found))]
        while True:  # no candidate: any other sentence (at least three exist)
            m = draw.randrange(len(self.sentences))
            if m not in (i, j):
                return m

    def __getitem__(self, index: int) -> tuple[str, str, str]:
        i, j = self.pairs[index]
        return self.sentences[i], self.sentences[j], self.sentences[self.negative_of(index)]
