"""Extract the six Jane Austen novels from Debian's ``r-cran-janeaustenr`` into the package (a tool, not hsrl).

The novels are hsrl's embedded default text corpus. They ship inside the package as
``hsrl/data/corpora/austen.jsonl.gz`` (gzip JSON lines, one record per paragraph)::

    {"book": "persuasion", "chapter": 3, "paragraph": 1, "text": "..."}

``chapter`` counts the chapters of a book from 1 in reading order (Emma's three volumes each
restart their printed numbering; here they run 1..55), ``paragraph`` counts the paragraphs of
a chapter from 1. This is the script that produced that file, kept so it can be
reproduced without R::

    apt-get download r-cran-janeaustenr && dpkg -x r-cran-janeaustenr_*.deb /tmp/ja
    python tools/build_austen_corpus.py /tmp/ja [--out hsrl/data/corpora/austen.jsonl.gz]

The package stores each novel as an R character vector in ``data/Rdata.rdb``, one string
per printed line, with empty strings between paragraphs. ``data/Rdata.rdx`` (gzip, R
serialisation) indexes it: for each object name an ``(offset, length)`` record in the rdb.
A record is a 4-byte big-endian uncompressed length and a zlib stream holding an R
serialisation (XDR format, ``X\\n``). :func:`unserialize` reads the subset of that format
these files use (character, logical, integer and double vectors, lists, pairlists for
attributes); no R is needed.

From the lines, :func:`paragraphs` keeps the novel's prose only:

* a paragraph is a run of non-empty lines; its lines are stripped and joined with single
  spaces (runs of whitespace, e.g. the double space after a full stop, collapse to one);
* ``CHAPTER IV`` / ``Chapter 4`` lines start a chapter and are not paragraphs;
  ``VOLUME II`` lines are dropped;
* title pages and anything else before the first chapter are dropped (including the
  "Advertisement by the Authoress" that precedes Northanger Abbey);
* the closing ``THE END`` / ``FINIS``, editors' end matter ("A NOTE ON THE TEXT"),
  editors' bracketed notes about the printed editions, footnotes (``*Vide ...``) and scene
  breaks (``* * *``) are dropped.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import re
import struct
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hsrl.data.text import AUSTEN_BOOKS, split_sentences

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "hsrl" / "data" / "corpora" / "austen.jsonl.gz"
_DATA_DIR = Path("usr/lib/R/site-library/janeaustenr/data")

# ---------------------------------------------------------------------------------------
# R serialisation (XDR), the subset the janeaustenr data files use
# ---------------------------------------------------------------------------------------

_NILVALUE, _REF = 254, 255
_SYMSXP, _LISTSXP, _CHARSXP = 1, 2, 9
_LGLSXP, _INTSXP, _REALSXP, _STRSXP, _VECSXP = 10, 13, 14, 16, 19
_NA_INT = -(2**31)
_LATIN1_MASK = 1 << 2  # CHARSXP "levels" bits
_HAS_ATTR, _HAS_TAG = 1 << 9, 1 << 10


@dataclass(frozen=True)
class RVector:
    """An R vector with attributes (only made when the vector has any).

    Attributes:
        values: The elements (``None`` for ``NA``).
        attributes: Attribute name to value, e.g. ``{"names": [...]}``.
    """

    values: list[Any]
    attributes: dict[str, Any]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.refs: list[Any] = []
        self.encoding = "utf-8"

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError("truncated R serialisation")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:  # long vector: two more ints
            hi, lo = struct.unpack(">II", self.take(8))
            n = (hi << 32) | lo
        if n < 0:
            raise ValueError(f"bad R vector length {n}")
        return n

    def header(self) -> None:
        if self.take(2) != b"X\n":
            raise ValueError("not an R XDR serialisation (expected 'X\\n' header)")
        version = self.int()
        self.int(), self.int()  # writer and minimal reader R versions
        if version == 3:
            self.encoding = self.take(self.int()).decode("ascii").lower()
        elif version != 2:
            raise ValueError(f"unsupported R serialisation version {version}")

    def attributes(self) -> dict[str, Any]:
        pairs = self.item()
        return dict(pairs) if isinstance(pairs, list) else {}

    def item(self) -> Any:
        flags = self.int()
        kind, levels = flags & 0xFF, flags >> 12
        if kind == _NILVALUE:
            return None
        if kind == _REF:
            index = flags >> 8 or self.int()
            return self.refs[index - 1]
        if kind == _CHARSXP:
            n = self.int()
            if n == -1:
                return None
            raw = self.take(n)
            return raw.decode("latin-1" if levels & _LATIN1_MASK else self.encoding)
        if kind == _SYMSXP:
            name = self.item()
            self.refs.append(name)
            return name
        if kind == _LISTSXP:  # pairlist: a list of (tag, value)
            if flags & _HAS_ATTR:
                self.attributes()
            tag = self.item() if flags & _HAS_TAG else None
            head = (tag, self.item())
            rest = self.item()
            return [head, *(rest or [])]
        if kind in (_LGLSXP, _INTSXP):
            n = self.length()
            ints = struct.unpack(f">{n}i", self.take(4 * n))
            values: list[Any] = [None if v == _NA_INT else v for v in ints]
            if kind == _LGLSXP:
                values = [None if v is None else bool(v) for v in values]
        elif kind == _REALSXP:
            n = self.length()
            values = list(struct.unpack(f">{n}d", self.take(8 * n)))
        elif kind in (_STRSXP, _VECSXP):
            values = [self.item() for _ in range(self.length())]
        else:
            raise ValueError(f"unsupported R object type {kind} in serialisation")
        if flags & _HAS_ATTR:
            return RVector(values, self.attributes())
        return values


def unserialize(data: bytes) -> Any:
    """Read one R object from its XDR serialisation (the format of ``serialize()``/``.rds``).

    Args:
        data: The uncompressed serialisation, starting with ``X\\n``.

    Returns:
        Character, logical, integer and double vectors as lists (``None`` for ``NA``), lists
        as lists, and any of these with attributes as an :class:`RVector`.

    Raises:
        ValueError: If ``data`` is not an XDR serialisation or uses an unsupported type.
    """
    reader = _Reader(data)
    reader.header()
    obj = reader.item()
    if reader.pos != len(data):
        raise ValueError(f"{len(data) - reader.pos} trailing bytes after the R object")
    return obj


def read_index(rdx: Path) -> dict[str, tuple[int, int]]:
    """Read an R lazy-load index (``.rdx``): object name to ``(offset, length)`` in the rdb.

    The index is gzip-compressed (as ``saveRDS`` writes it); an index stored like an rdb
    record (4-byte length + zlib stream) is read too.

    Raises:
        ValueError: If the file is not a lazy-load index of a zlib-compressed database.
    """
    try:
        raw = rdx.read_bytes()
        gzipped = raw[:2] == b"\x1f\x8b"
        index = unserialize(gzip.decompress(raw)) if gzipped else read_record(raw, 0, len(raw))
        top = dict(zip(index.attributes["names"], index.values, strict=True))
        variables = top["variables"]
        compressed = top["compressed"][0]
        entries = dict(zip(variables.attributes["names"], variables.values, strict=True))
    except (EOFError, zlib.error, gzip.BadGzipFile, KeyError, AttributeError, TypeError) as exc:
        raise ValueError(f"{rdx} is not an R lazy-load index ({exc})") from exc
    if compressed not in (True, 1):
        raise ValueError(f"{rdx}: only zlib-compressed databases are supported")
    return {name: (int(off_len[0]), int(off_len[1])) for name, off_len in entries.items()}


def read_record(rdb: bytes, offset: int, length: int) -> Any:
    """Read the object stored at ``rdb[offset : offset + length]``: a 4-byte length + zlib.

    Raises:
        ValueError: If the record is out of range, not zlib or of the wrong length.
    """
    if offset < 0 or length < 4 or offset + length > len(rdb):
        raise ValueError(f"record ({offset}, {length}) lies outside the {len(rdb)}-byte rdb")
    (expected,) = struct.unpack(">I", rdb[offset : offset + 4])
    try:
        data = zlib.decompress(rdb[offset + 4 : offset + length])
    except zlib.error as exc:
        raise ValueError(f"record at {offset} is not a zlib stream ({exc})") from exc
    if len(data) != expected:
        raise ValueError(f"record at {offset}: {len(data)} bytes, header says {expected}")
    return unserialize(data)


def find_rdb(path: str | os.PathLike[str]) -> Path:
    """Locate ``Rdata.rdb`` from the unpacked .deb, its ``data`` folder or the file itself.

    Raises:
        FileNotFoundError: If no ``Rdata.rdb`` (with its ``Rdata.rdx``) is there.
    """
    path = Path(path)
    for candidate in (path, path / "Rdata.rdb", path / _DATA_DIR / "Rdata.rdb"):
        if candidate.is_file() and candidate.with_suffix(".rdx").is_file():
            return candidate
    raise FileNotFoundError(f"no janeaustenr Rdata.rdb/.rdx under {path} (expected {path / _DATA_DIR})")


def read_books(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Read the six novels' lines from the janeaustenr data (see :func:`find_rdb`).

    Returns:
        Book name to its lines, in :data:`AUSTEN_BOOKS` order.

    Raises:
        FileNotFoundError: If the data files are missing.
        ValueError: If they are not the expected format or lack a novel.
    """
    rdb_path = find_rdb(path)
    index = read_index(rdb_path.with_suffix(".rdx"))
    missing = [book for book in AUSTEN_BOOKS if book not in index]
    if missing:
        raise ValueError(f"{rdb_path} lacks {', '.join(missing)}: not the janeaustenr data")
    rdb = rdb_path.read_bytes()
    books = {}
    for book in AUSTEN_BOOKS:
        lines = read_record(rdb, *index[book])
        if not isinstance(lines, list) or not all(isinstance(s, str | None) for s in lines):
            raise ValueError(f"{rdb_path}: {book} is not a character vector")
        books[book] = [s or "" for s in lines]
    return books


# ---------------------------------------------------------------------------------------
# Lines to paragraphs
# ---------------------------------------------------------------------------------------

_CHAPTER = re.compile(r"(?:CHAPTER|Chapter)\s+(?:[IVXLC]+|\d+)\.?")
_VOLUME = re.compile(r"VOLUME\s+[IVX]+\.?")
_THE_END = re.compile(r"THE END|FINIS|Finis")
_END_MATTER = re.compile(r"A NOTE ON THE TEXT")
_EDITORS_NOTE = re.compile(r"\[.*\bedition", re.DOTALL)
_FOOTNOTE = re.compile(r"\*\S")


@dataclass(frozen=True)
class Paragraph:
    """One paragraph of a novel (one record of the packaged corpus)."""

    book: str
    chapter: int
    paragraph: int
    text: str


def _blocks(lines: Sequence[str]) -> Iterator[str]:
    block: list[str] = []
    for line in [*lines, ""]:
        if line.strip():
            block.append(line)
        elif block:
            yield " ".join(" ".join(block).split())
            block = []


def _is_prose(text: str) -> bool:
    return not (
        _THE_END.fullmatch(text)
        or _EDITORS_NOTE.match(text)
        or _FOOTNOTE.match(text)
        or not any(c.isalnum() for c in text)
    )


def paragraphs(book: str, lines: Sequence[str]) -> list[Paragraph]:
    """Split a novel's printed lines into its chapters' paragraphs (rules in the module doc).

    Args:
        book: The book name stored in each paragraph.
        lines: One string per printed line, empty strings between paragraphs.

    Returns:
        The paragraphs in reading order.

    Raises:
        ValueError: If no chapter heading is found.
    """
    out: list[Paragraph] = []
    chapter = number = 0
    for text in _blocks(lines):
        if _CHAPTER.fullmatch(text):
            chapter, number = chapter + 1, 0
        elif _END_MATTER.fullmatch(text):
            break
        elif chapter and not _VOLUME.fullmatch(text) and _is_prose(text):
            number += 1
            out.append(Paragraph(book, chapter, number, text))
    if not chapter:
        raise ValueError(f"{book}: no chapter headings found")
    return out


def extract(path: str | os.PathLike[str]) -> list[Paragraph]:
    """Read the janeaustenr data under ``path`` and return all six novels' paragraphs."""
    return [p for book, lines in read_books(path).items() for p in paragraphs(book, lines)]


def write_jsonl_gz(records: Sequence[Paragraph], out: str | os.PathLike[str]) -> None:
    """Write paragraphs as gzip JSON lines, atomically and byte-for-byte reproducibly.

    The file is written next to ``out`` under a temporary name, fsynced and renamed, so a
    reader never sees a half-written corpus; the gzip header carries no time or file name.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
                text = io.TextIOWrapper(gz, encoding="utf-8", newline="\n")
                for p in records:
                    row = {"book": p.book, "chapter": p.chapter, "paragraph": p.paragraph}
                    text.write(json.dumps({**row, "text": p.text}, ensure_ascii=False) + "\n")
                text.flush()
                text.detach()
            raw.flush()
            os.fchmod(raw.fileno(), 0o644)  # mkstemp makes it owner-only
            os.fsync(raw.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: extract, write, and print paragraphs/chapters/sentences per book."""
    parser = argparse.ArgumentParser(prog="python tools/build_austen_corpus.py", description=__doc__.splitlines()[0])
    parser.add_argument("deb_dir", help="the unpacked r-cran-janeaustenr .deb (dpkg -x)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="gzip JSON-lines output")
    args = parser.parse_args(argv)
    try:
        records = extract(args.deb_dir)
        write_jsonl_gz(records, args.out)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"build_austen_corpus: error: {exc}") from None

    total_sentences = 0
    for book in AUSTEN_BOOKS:
        rows = [p for p in records if p.book == book]
        n_sentences = sum(len(split_sentences(p.text)) for p in rows)
        total_sentences += n_sentences
        chapters = rows[-1].chapter if rows else 0
        print(f"{book:18s} {len(rows):6d} paragraphs {chapters:3d} chapters {n_sentences:6d} sentences")
    size = os.path.getsize(args.out)
    print(
        f"{'total':18s} {len(records):6d} paragraphs {total_sentences:17d} sentences "
        f"-> {args.out} ({size / 1e6:.2f} MB)"
    )


if __name__ == "__main__":
    main()
