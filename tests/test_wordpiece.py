"""The deterministic WordPiece vocabulary learner."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from hsrl.models.wordpiece import learn_wordpiece_vocabulary, word_counts

SPECIALS = ["[PAD]", "[UNK]"]
words = st.text(alphabet="abcde", min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(counts=st.dictionaries(words, st.integers(1, 9), min_size=1, max_size=30), size=st.integers(3, 60))
def test_vocabulary_is_a_function_of_the_counts_alone(counts: dict[str, int], size: int) -> None:
    items = list(counts.items())
    shuffled = dict(random.Random(len(items)).sample(items, len(items)))  # same counts, another insertion order
    a = learn_wordpiece_vocabulary(Counter(counts), size, SPECIALS)
    b = learn_wordpiece_vocabulary(Counter(shuffled), size, SPECIALS)
    assert a == b
    assert a[:2] == SPECIALS and len(set(a)) == len(a)
    alphabet = {w[0] for w in counts} | {"##" + c for w in counts for c in w[1:]}
    assert alphabet <= set(a)  # every word can be spelt: no [UNK] for seen characters
    assert len(a) <= max(size, len(SPECIALS) + len(alphabet))


def test_merges_follow_counts_and_ties_break_by_text() -> None:
    # "ab" occurs 5 times, "cd" 5 times, "ef" once: the two tied pairs merge in text order.
    vocab = learn_wordpiece_vocabulary(Counter({"ab": 5, "cd": 5, "ef": 1}), 100, [], min_frequency=2)
    merges = vocab[len({"a", "##b", "c", "##d", "e", "##f"}) :]
    assert merges == ["ab", "cd"]  # "ef" is below min_frequency


def test_word_counts_use_berts_normaliser_and_splitter() -> None:
    assert word_counts(["Hello, WORLD!", "hello"]) == Counter({"hello": 2, ",": 1, "world": 1, "!": 1})
