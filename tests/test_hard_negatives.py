"""Hard-negative mining on hand-checkable embeddings (same book, nearest first, neighbours and copies left out),
and the dataset that serves one drawn negative per pair."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from hsrl.data.hard_negatives import HardNegativePairs, mine_hard_negatives


def _circle(angles: list[float]) -> torch.Tensor:
    a = torch.tensor(angles)
    return torch.stack([a.cos(), a.sin()], dim=1)


def test_candidates_are_the_nearest_far_enough_sentences_of_the_same_book() -> None:
    # Book "a" is sentences 0-5, book "b" 6-7. Sentence 0 sits at angle 0; by distance its nearest are 5 (0.1),
    # 1 (0.2, a neighbour: excluded), 4 (0.3), 2 (0.4, within two places: excluded), 3 (0.5); 6 and 7 (angle 0.05)
    # are nearer still but in the other book.
    z = _circle([0.0, 0.2, 0.4, 0.5, 0.3, 0.1, 0.05, 0.05])
    sentences = [f"s{i}" for i in range(8)]
    pairs = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (6, 7)]
    groups = ["a"] * 5 + ["b"]
    found = mine_hard_negatives(z, sentences, pairs, groups, k=2)
    assert found[0] == [5, 4]
    assert found[0] == mine_hard_negatives(z, sentences, pairs, groups, k=3)[0][:2]
    assert found[6] == []  # book "b" has no sentence more than two places from 6
    assert set(found) == {0, 1, 2, 3, 4, 6}  # every pair's first sentence, and only those


def test_a_positive_ratio_leaves_out_candidates_nearly_as_close_as_the_neighbour() -> None:
    # Sentence 0's neighbour 1 scores cos 0.2 = 0.980; with r = 0.95 a candidate must score at most 0.931:
    # 5 (cos 0.1 = 0.995) and 4 (cos 0.3 = 0.955) are left out, 3 (cos 0.5 = 0.878) stays.
    z = _circle([0.0, 0.2, 0.4, 0.5, 0.3, 0.1])
    sentences = [f"s{i}" for i in range(6)]
    pairs = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    assert mine_hard_negatives(z, sentences, pairs, ["a"] * 5, k=2)[0] == [5, 4]
    assert mine_hard_negatives(z, sentences, pairs, ["a"] * 5, k=2, max_positive_ratio=0.95)[0] == [3]
    assert mine_hard_negatives(z, sentences, pairs, ["a"] * 5, k=2, max_positive_ratio=0.99)[0] == [4, 3]


def test_copies_of_the_query_or_its_neighbour_are_never_negatives() -> None:
    z = _circle([0.0, 0.1, 0.5, 0.9, 0.01, 0.02, 0.03])
    sentences = ["Yes.", "No.", "a", "b", "c", "Yes.", "No."]  # 5 and 6 repeat the pair (0, 1)'s texts
    pairs = [(0, 1), (2, 3), (4, 5), (5, 6)]
    found = mine_hard_negatives(z, sentences, pairs, ["a"] * 4, k=3, exclude_within=1)
    # By nearness to 0: 4 (0.01), 5 and 6 (copies: dropped), 2 (0.5), 3 (0.9); 1 is within one place.
    assert found[0] == [4, 2, 3]


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(4, 40),
    k=st.integers(1, 6),
    window=st.integers(0, 3),
    ratio=st.one_of(st.none(), st.floats(0.1, 1.5)),
    seed=st.integers(0, 2**16),
)
def test_mined_lists_follow_the_rules(n: int, k: int, window: int, ratio: float | None, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(n, 8, generator=g), dim=1)
    sentences = [f"s{i % 7}" for i in range(n)]  # some texts repeat
    pairs = [(i, i + 1) for i in range(n - 1)]
    groups = ["a" if i < n // 2 else "b" for i in range(n - 1)]
    found = mine_hard_negatives(z, sentences, pairs, groups, k, exclude_within=window, max_positive_ratio=ratio)
    book_of = {}
    for (i, j), book in zip(pairs, groups, strict=True):
        book_of[i] = book_of[j] = book
    for query, candidates in found.items():
        assert len(candidates) <= k
        neighbour = query + 1
        ceiling = float("inf") if ratio is None else ratio * float(z[query] @ z[neighbour]) + 1e-6
        for m in candidates:
            assert float(z[query] @ z[m]) <= ceiling
            assert book_of[m] == book_of[query] and abs(m - query) > window
            assert sentences[m] not in {sentences[query], sentences[neighbour]}
        scores = [float(z[query] @ z[m]) for m in candidates]
        assert scores == sorted(scores, reverse=True)
        # Nothing admissible left out that beats the last one kept.
        if len(candidates) == k:
            texts = {sentences[query], sentences[neighbour]}
            admissible = [
                m
                for m in book_of
                if book_of[m] == book_of[query] and abs(m - query) > window and sentences[m] not in texts
                and m not in candidates and float(z[query] @ z[m]) <= ceiling - 2e-6
            ]  # fmt: skip
            assert all(float(z[query] @ z[m]) <= scores[-1] + 1e-6 for m in admissible)


def test_bad_input_is_one_clear_error() -> None:
    z = _circle([0.0, 0.1, 0.2])
    with pytest.raises(ValueError, match="must be >= 1"):
        mine_hard_negatives(z, ["a", "b", "c"], [(0, 1)], ["a"], k=0)
    with pytest.raises(ValueError, match="one embedding row per sentence"):
        mine_hard_negatives(z, ["a", "b"], [(0, 1)], ["a"], k=1)
    with pytest.raises(ValueError, match="positive ratio must be > 0"):
        mine_hard_negatives(z, ["a", "b", "c"], [(0, 1)], ["a"], k=1, max_positive_ratio=0.0)
    with pytest.raises(ValueError, match="one group per pair"):
        mine_hard_negatives(z, ["a", "b", "c"], [(0, 1), (1, 2)], ["a"], k=1)


def _served(size: int = 30, k: int = 4, seed: int = 0) -> HardNegativePairs:
    sentences = [f"s{i}" for i in range(size)]
    pairs = [(i, i + 1) for i in range(size - 1)]
    candidates = {i: [(i + 5 + c) % size for c in range(k)] for i, _ in pairs}
    candidates[3] = []  # nothing mined for this anchor
    return HardNegativePairs(sentences, pairs, ["a"] * len(pairs), candidates, seed=seed)


def test_served_triples_draw_from_the_candidates_by_seed_epoch_and_index() -> None:
    data = _served()
    first = [data[i] for i in range(len(data))]
    assert all(len(item) == 3 for item in first)
    for index, (anchor, neighbour, negative) in enumerate(first):
        i, j = data.pairs[index]
        assert (anchor, neighbour) == (f"s{i}", f"s{j}")
        m = data.negative_of(index)
        assert negative == f"s{m}"
        assert m in data.candidates[i] if data.candidates[i] else m not in (i, j)
    # The same (seed, epoch, index) draws the same negative: in a new object too (a resumed run, a worker's copy).
    assert [data[i] for i in range(len(data))] == first == [_served()[i] for i in range(len(data))]
    data.set_epoch(1)
    second = [data[i] for i in range(len(data))]
    assert second != first  # another epoch draws again
    assert [item[:2] for item in second] == [item[:2] for item in first]  # the pairs themselves do not move
    assert [_served(seed=1)[i] for i in range(len(data))] != first  # and another seed too


def test_every_candidate_is_drawn_over_epochs() -> None:
    data = _served(k=4)
    drawn = set()
    for epoch in range(40):
        data.set_epoch(epoch)
        drawn.add(data.negative_of(0))
    assert drawn == set(data.candidates[0])


def test_served_pairs_need_candidates_for_every_anchor() -> None:
    with pytest.raises(ValueError, match="no hard-negative candidates for sentence 1"):
        HardNegativePairs(["a", "b", "c"], [(0, 1), (1, 2)], None, {0: [2]})
    with pytest.raises(ValueError, match="outside the 3 sentences"):
        HardNegativePairs(["a", "b", "c"], [(0, 1)], None, {0: [7]})
