"""A deterministic WordPiece vocabulary: the same sentences always give the same tokens and ids.

🤗 tokenizers' ``WordPieceTrainer`` learns its vocabulary by byte-pair merges over word
counts kept in hash maps whose order changes from process to process; when two pairs have
the same count, which one merges first changes too, and so do the vocabulary and its ids
(84 of 2,000 ids differed between two runs on Austen). A from-scratch encoder whose ids
change cannot be reproduced from its seed. This trainer does the same merges with every
tie broken by the pair's text:

1. normalise and pre-split each sentence exactly as BERT does (``BertNormalizer`` lower-case,
   ``BertPreTokenizer``) and count the words;
2. spell each word as its first character followed by ``##``-prefixed continuation characters;
   every such symbol is in the alphabet;
3. repeatedly merge the most frequent adjacent pair (count >= ``min_frequency``; ties: the
   smallest ``(left, right)``), the merged token being ``left + right`` without the
   right's ``##``, until the vocabulary has ``vocab_size`` entries.

Merges are counted incrementally (a pair index and a lazily refreshed heap), so training on
hundreds of thousands of sentences takes seconds.
"""

from __future__ import annotations

import heapq
import itertools
import os
from collections import Counter, defaultdict
from collections.abc import Iterable

__all__ = ["CONTINUATION", "learn_wordpiece_vocabulary", "train_wordpiece_tokenizer", "word_counts"]

CONTINUATION = "##"


def word_counts(sentences: Iterable[str]) -> Counter[str]:
    """Words of the sentences after BERT's lower-casing normaliser and pre-tokenizer."""
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True)
    splitter = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for sentence in sentences:
        counts.update(word for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(sentence)))
    return counts


def _spell(word: str) -> list[str]:
    return [word[0], *(CONTINUATION + c for c in word[1:])]


def _merged(left: str, right: str) -> str:
    return left + right.removeprefix(CONTINUATION)


def learn_wordpiece_vocabulary(
    counts: Counter[str], vocab_size: int, specials: list[str], *, min_frequency: int = 2
) -> list[str]:
    """The vocabulary, in id order: specials, the sorted alphabet, then the merges in order.

    Args:
        counts: word counts, e.g. from :func:`word_counts`.
        vocab_size: the most entries; fewer when no pair is frequent enough to merge.
        specials: tokens such as ``[PAD]`` that come first, in the order given.
        min_frequency: a pair seen fewer times than this is never merged.
    """
    words = sorted(counts)  # a fixed order, so everything below is reproducible
    spellings = [_spell(w) for w in words]
    freq = [counts[w] for w in words]
    alphabet = sorted({symbol for spelling in spellings for symbol in spelling} - set(specials))
    vocab = [*specials, *alphabet]
    known = set(vocab)

    pair_count: defaultdict[tuple[str, str], int] = defaultdict(int)
    where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    for index, spelling in enumerate(spellings):
        for pair in itertools.pairwise(spelling):
            pair_count[pair] += freq[index]
            where[pair].add(index)
    heap = [(-count, pair) for pair, count in pair_count.items()]
    heapq.heapify(heap)

    while len(vocab) < vocab_size and heap:
        negative, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -negative:
            continue  # stale entry: the count changed since it was pushed
        if -negative < min_frequency:
            break
        token = _merged(*pair)
        if token not in known:
            vocab.append(token)
            known.add(token)
        changed: set[tuple[str, str]] = set()
        for index in sorted(where.pop(pair, ())):
            spelling = spellings[index]
            for old in itertools.pairwise(spelling):
                pair_count[old] -= freq[index]
                changed.add(old)
            merged: list[str] = []
            i = 0
            while i < len(spelling):
                if i + 1 < len(spelling) and (spelling[i], spelling[i + 1]) == pair:
                    merged.append(token)
                    i += 2
                else:
                    merged.append(spelling[i])
                    i += 1
            spellings[index] = merged
            for new in itertools.pairwise(merged):
                pair_count[new] += freq[index]
                where[new].add(index)
                changed.add(new)
        pair_count.pop(pair, None)
        for other in changed:
            if other != pair and pair_count.get(other, 0) > 0:
                heapq.heappush(heap, (-pair_count[other], other))
    return vocab


def train_wordpiece_tokenizer(sentences: Iterable[str], vocab_size: int, output_dir: str | os.PathLike[str]) -> None:
    """Train a lower-cased BERT WordPiece tokenizer on ``sentences`` and save it (offline).

    Deterministic: the same sentences give the same vocabulary with the same ids.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    # Our own merge loop, not tokenizers' WordPieceTrainer: its ties (and so its ids) change
    # from run to run, and a from-scratch model must be reproducible from its seed.
    vocab = learn_wordpiece_vocabulary(word_counts(sentences), vocab_size, specials, min_frequency=2)
    tokenizer = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    )  # fmt: skip
    fast.save_pretrained(str(output_dir))
