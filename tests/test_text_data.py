"""Text data: the packaged Austen corpus, its extraction, sentence splitting, neighbour pairs."""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from collections import Counter
from importlib import resources
from pathlib import Path

import pytest
from conftest import ROOT, script_module
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from hsrl.data.text import (
    AUSTEN_BOOKS,
    AUSTEN_HELDOUT,
    Document,
    SentenceCorpus,
    SentencePairDataset,
    austen_splits,
    load_austen,
    neighbour_pairs,
    split_sentences,
)

austen = script_module(ROOT / "tools" / "build_austen_corpus.py", "build_austen_corpus")

# What `python tools/build_austen_corpus.py` extracted from Debian r-cran-janeaustenr 1.0.0-1.
PARAGRAPHS = {
    "emma": 2315,
    "mansfieldpark": 1788,
    "northangerabbey": 1017,
    "persuasion": 1006,
    "prideprejudice": 2057,
    "sensesensibility": 1807,
}
CHAPTERS = {
    "emma": 55,  # three volumes of 18 + 18 + 19, numbered through here
    "mansfieldpark": 48,
    "northangerabbey": 31,
    "persuasion": 24,
    "prideprejudice": 61,
    "sensesensibility": 50,
}


@pytest.fixture(scope="module")
def records() -> list[dict]:
    resource = resources.files("hsrl.data").joinpath("corpora/austen.jsonl.gz")
    with resource.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def documents() -> list[Document]:
    return load_austen()


# ---------------------------------------------------------------------------------------
# The packaged corpus
# ---------------------------------------------------------------------------------------


def test_packaged_corpus_has_the_six_books_in_order_with_their_paragraphs(records):
    books = list(dict.fromkeys(r["book"] for r in records))
    assert books == list(AUSTEN_BOOKS)
    assert Counter(r["book"] for r in records) == PARAGRAPHS
    assert all(set(r) == {"book", "chapter", "paragraph", "text"} for r in records)
    # DESIGN.md's 10,280 counts blank-line-separated blocks of the raw lines. The raw data
    # has 10,298 such blocks: our 9,990 paragraphs + 269 chapter and 3 volume headings +
    # 17 title-page blocks + 19 blocks of other non-prose (4 "THE END"/"FINIS", 7 scene
    # breaks, 3 editors' notes, 1 footnote, 2 + 2 of Northanger Abbey's advertisement and
    # "note on the text"). Headings and title pages included, 10,298 - 17 = 10,281, the
    # design's figure to within a block; the prose paragraphs alone are 3% fewer.
    chapters = sum(CHAPTERS.values())
    assert sum(PARAGRAPHS.values()) == 9990
    assert sum(PARAGRAPHS.values()) + chapters + 3 + 17 + 19 == 10_298
    assert abs(sum(PARAGRAPHS.values()) + chapters - 10_280) / 10_280 < 0.01


def test_chapters_and_paragraphs_are_numbered_from_one_in_order(records):
    for book in AUSTEN_BOOKS:
        keys = [(r["chapter"], r["paragraph"]) for r in records if r["book"] == book]
        chapters = sorted({c for c, _ in keys})
        assert chapters == list(range(1, CHAPTERS[book] + 1))
        for chapter in chapters:
            numbers = [p for c, p in keys if c == chapter]
            assert numbers == list(range(1, len(numbers) + 1))


def test_paragraphs_are_prose_only(records):
    texts = [r["text"] for r in records]
    assert all(t == " ".join(t.split()) for t in texts)  # joined, stripped, single spaces
    forbidden = ("CHAPTER", "Chapter", "VOLUME", "THE END", "FINIS", "Finis", "* * *")
    assert not [t for t in texts if t.startswith(forbidden)]
    assert not [t for t in texts if t.startswith("[") and "edition" in t]  # editors' notes
    assert records[0]["text"].startswith("Emma Woodhouse, handsome, clever, and rich")


def test_load_austen_gives_one_document_per_chapter_in_order(documents):
    assert len(documents) == sum(CHAPTERS.values())
    assert [d.id.split("/")[0] for d in documents] == [book for book in AUSTEN_BOOKS for _ in range(CHAPTERS[book])]
    assert documents[0].id == "emma/ch01"
    assert "persuasion/ch03" in {d.id for d in documents}
    assert all(d.sentences for d in documents)
    total = sum(len(d.sentences) for d in documents)
    assert 30_000 < total < 35_000  # DESIGN.md: about 34k; our rules give 31.4k


def test_a_known_sentence_is_one_sentence(documents):
    first = next(d for d in documents if d.id == "prideprejudice/ch01")
    assert first.sentences[0] == (
        "It is a truth universally acknowledged, that a single man in possession of a good "
        "fortune, must be in want of a wife."
    )


def test_load_austen_selects_books_and_rejects_unknown_ones():
    docs = load_austen(["persuasion", "emma"])
    assert [d.id for d in docs][:2] == ["persuasion/ch01", "persuasion/ch02"]
    assert len(docs) == CHAPTERS["persuasion"] + CHAPTERS["emma"]
    with pytest.raises(ValueError, match="unknown Austen book"):
        load_austen(["ulysses"])


def test_austen_splits_holds_out_persuasion(documents):
    train, heldout = austen_splits()
    assert AUSTEN_HELDOUT == "persuasion"
    assert {d.id.split("/")[0] for d in heldout} == {"persuasion"}
    assert len(heldout) == CHAPTERS["persuasion"]
    assert "persuasion" not in {d.id.split("/")[0] for d in train}
    assert len(train) + len(heldout) == len(documents)


# ---------------------------------------------------------------------------------------
# Sentence splitting
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Mr. Bennet replied that he had not. Mrs. Long came.",
            ["Mr. Bennet replied that he had not.", "Mrs. Long came."],
        ),
        (
            '"Do you not want to know?" cried his wife. "_You_ want to tell me."',
            ['"Do you not want to know?" cried his wife.', '"_You_ want to tell me."'],
        ),
        (
            '"It is," returned she; "for Mrs. Long has been here." She left.',
            ['"It is," returned she; "for Mrs. Long has been here."', "She left."],
        ),
        (
            "Yours ever, F. C. Weston Churchill. Then St. James's.",
            ["Yours ever, F. C. Weston Churchill.", "Then St. James's."],
        ),
        (
            "It was her brother's. He knew it (as she did.) Then Dr. Grant left!",
            ["It was her brother's.", "He knew it (as she did.)", "Then Dr. Grant left!"],
        ),
        (
            '"Oh! yes, No. 97, Vol. II." said I. Is it so?  Yes.',
            ['"Oh! yes, No. 97, Vol. II." said I.', "Is it so?", "Yes."],
        ),
        ("  \n ", []),
    ],
)
def test_split_sentences_examples(text, expected):
    assert split_sentences(text) == expected


_TOKENS = st.sampled_from(
    [
        "Mr.",
        "Mrs.",
        "Dr.",
        "He",
        "said",
        "so.",
        "Yes!",
        "why?",
        '"Oh!"',
        "(it",
        "was.)",
        "I.",
        "A.",
        "brother's.",
        "the",
        "The",
        "_Her_",
        "--",
        "x'Mr.",
        "'Mr.",
        "...",
    ]
)
_SPACES = st.sampled_from([" ", "  ", "\n", "\t", " \n "])


@st.composite
def _prose(draw) -> str:
    words = draw(st.lists(st.one_of(_TOKENS, st.text(max_size=6)), max_size=30))
    return "".join(w + draw(_SPACES) for w in words)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_prose(), st.text()))
def test_splitting_keeps_every_non_space_character_in_order(text):
    sentences = split_sentences(text)
    assert "".join(" ".join(sentences).split()) == "".join(text.split())
    assert all(s and s == s.strip() for s in sentences)


@settings(max_examples=300, deadline=None)
@given(_prose())
def test_never_splits_after_mr(text):
    sentences = split_sentences(text)
    assert not [s for s in sentences[:-1] if s.split()[-1] in ("Mr.", "Mrs.", "Dr.")]


# ---------------------------------------------------------------------------------------
# Neighbour pairs
# ---------------------------------------------------------------------------------------


def _docs(sizes: list[int]) -> list[Document]:
    return [Document(f"d{k}", [f"s{k}.{i}" for i in range(n)]) for k, n in enumerate(sizes)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 8), max_size=8), st.integers(1, 4))
def test_neighbour_pairs_stay_inside_documents_and_are_all_there(sizes, c):
    documents = _docs(sizes)
    corpus = SentenceCorpus.from_documents(documents)
    pairs = neighbour_pairs(documents, context_size=c)
    assert pairs == corpus.pairs(c) == sorted(set(pairs))
    assert len(pairs) == sum(max(0, n - k) for n in sizes for k in range(1, c + 1))
    assert all(corpus.doc_ids[i] == corpus.doc_ids[j] and 0 < j - i <= c for i, j in pairs)
    # Every same-document pair within distance c is there (brute force).
    expected = {
        (i, j)
        for i in range(len(corpus))
        for j in range(len(corpus))
        if 0 < j - i <= c and corpus.doc_ids[i] == corpus.doc_ids[j]
    }
    assert set(pairs) == expected


def test_sentence_corpus_flattens_in_order():
    corpus = SentenceCorpus.from_documents(_docs([2, 0, 3]))
    assert corpus.sentences == ["s0.0", "s0.1", "s2.0", "s2.1", "s2.2"]
    assert corpus.doc_ids == [0, 0, 2, 2, 2]
    assert corpus.pairs(2) == [(0, 1), (2, 3), (2, 4), (3, 4)]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_context_size_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="context_size"):
        neighbour_pairs(_docs([3]), context_size=bad)


def test_pair_dataset_returns_sentence_strings_and_batches():
    dataset = SentencePairDataset.from_documents(_docs([3, 2]), context_size=1)
    assert len(dataset) == 3
    assert [dataset[k] for k in range(3)] == [("s0.0", "s0.1"), ("s0.1", "s0.2"), ("s1.0", "s1.1")]
    anchors, neighbours = next(iter(DataLoader(dataset, batch_size=3)))
    assert list(anchors) == ["s0.0", "s0.1", "s1.0"]
    assert list(neighbours) == ["s0.1", "s0.2", "s1.1"]
    with pytest.raises(ValueError, match="outside"):
        SentencePairDataset(["a"], [(0, 1)])


# ---------------------------------------------------------------------------------------
# Extraction from a synthetic janeaustenr rdb/rdx (written here with an independent writer)
# ---------------------------------------------------------------------------------------


def _i(v: int) -> bytes:
    return struct.pack(">i", v)


def _chars(s: str | None) -> bytes:
    if s is None:
        return _i(9) + _i(-1)
    raw = s.encode("utf-8")
    return _i(0x8009) + _i(len(raw)) + raw  # UTF8 level bit


def _names_attr(names: list[str]) -> bytes:
    # pairlist(names = c(...)): LISTSXP with a tag, SYMSXP "names", the STRSXP, then NULL.
    return _i(0x402) + _i(1) + _chars("names") + _strs(names) + _i(254)


def _strs(values: list[str | None], names: list[str] | None = None) -> bytes:
    flags = 16 | (0x200 if names else 0)
    body = _i(flags) + _i(len(values)) + b"".join(_chars(v) for v in values)
    return body + (_names_attr(names) if names else b"")


def _list(items: list[bytes], names: list[str]) -> bytes:
    return _i(19 | 0x200) + _i(len(items)) + b"".join(items) + _names_attr(names)


def _serialize(obj: bytes) -> bytes:
    return b"X\n" + _i(3) + _i(0x040201) + _i(0x030500) + _i(5) + b"UTF-8" + obj


def _record(obj: bytes) -> bytes:
    data = _serialize(obj)
    return struct.pack(">I", len(data)) + zlib.compress(data)


def _book_lines(book: str) -> list[str | None]:
    return [
        book.upper(),
        "",
        "By Jane Austen",
        "",
        "",
        "VOLUME I",
        "",
        "CHAPTER I",
        "",
        "",
        f"The first line of {book}, which",
        "   wraps  onto a second. Mr. Smith came.",
        "",
        "* * * * *",
        "",
        "[End volume one of this edition.]",
        None,
        "Chapter 2",
        "",
        "*Vide a footnote.",
        "",
        '"Yes!" said she.',
        "",
        "THE END",
        "",
    ]


def _write_rdb(folder: Path) -> None:
    data = folder / austen._DATA_DIR
    data.mkdir(parents=True)
    rdb, offsets = b"", []
    for book in AUSTEN_BOOKS:
        record = _record(_strs(_book_lines(book)))
        offsets.append(_i(13) + _i(2) + _i(len(rdb)) + _i(len(record)))
        rdb += record
    (data / "Rdata.rdb").write_bytes(rdb)
    index = _list(
        [_list(offsets, list(AUSTEN_BOOKS)), _list([], []), _i(10) + _i(1) + _i(1)],
        ["variables", "references", "compressed"],
    )
    (data / "Rdata.rdx").write_bytes(gzip.compress(_serialize(index)))


def test_extraction_round_trip_on_a_synthetic_rdb(tmp_path, capsys):
    _write_rdb(tmp_path)
    out = tmp_path / "out" / "austen.jsonl.gz"
    austen.main([str(tmp_path), "--out", str(out)])
    with gzip.open(out, "rt", encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines]
    assert len(rows) == 2 * len(AUSTEN_BOOKS)
    assert rows[6] == {
        "book": "persuasion",
        "chapter": 1,
        "paragraph": 1,
        "text": "The first line of persuasion, which wraps onto a second. Mr. Smith came.",
    }
    assert rows[7] == {"book": "persuasion", "chapter": 2, "paragraph": 1, "text": '"Yes!" said she.'}
    assert "persuasion" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["austen.jsonl.gz"]  # no temp left
    again = tmp_path / "again.jsonl.gz"
    austen.main([str(tmp_path / austen._DATA_DIR / "Rdata.rdb"), "--out", str(again)])
    assert again.read_bytes() == out.read_bytes()  # reproducible, byte for byte


def test_extraction_errors_are_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"no janeaustenr Rdata\.rdb") as missing:
        austen.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.jsonl.gz")])
    assert "\n" not in str(missing.value)
    _write_rdb(tmp_path)
    rdb = tmp_path / austen._DATA_DIR / "Rdata.rdb"
    rdb.write_bytes(b"\0\0\0\x10not zlib at all" * 100)
    with pytest.raises(SystemExit, match="not a zlib stream") as corrupt:
        austen.main([str(tmp_path), "--out", str(tmp_path / "x.jsonl.gz")])
    assert "\n" not in str(corrupt.value)
    assert not (tmp_path / "x.jsonl.gz").exists()


def test_unserialize_rejects_other_formats():
    with pytest.raises(ValueError, match="XDR"):
        austen.unserialize(b"RDX3\n")
    with pytest.raises(ValueError, match="truncated"):
        austen.unserialize(_serialize(_strs(["a", "b"]))[:-1])
    assert austen.unserialize(_serialize(_strs(["a", None, "é"]))) == ["a", None, "é"]
