"""Where training text comes from: BookCorpus (streamed), local files, or the embedded Austen corpus.

``--dataset`` takes one of:

* ``bookcorpus`` — the hub's BookCorpus through 🤗 ``datasets`` with ``streaming=True``, so
  74M sentences are never held in memory. The hub copy is one ``text`` field per sentence in
  corpus order *with no book ids*: neighbour pairs therefore run across the boundary
  between two books once per book (about 11k of 74M pairs), a negligible amount of noise
  that the original Quick-Thought training had too. Offline, it fails at once with one
  line saying how to use a local copy or the embedded corpus.
* ``austen`` — the six Jane Austen novels shipped in the package; *Persuasion* is held out.
* a path — read through 🤗 ``datasets`` (``load_dataset("text"|"json"|"parquet", data_files=...,
  streaming=True)``, falling back to hsrl's own readers for their one-line errors):
  ``.txt`` (one sentence per line, a blank line ends a document), ``.txt.gz``,
  ``.jsonl`` (a ``text`` field; optional ``doc``/``document`` id field), ``.parquet`` (same
  columns), or a folder of such files (each file is at least one document). Prose that is not
  one sentence per line (a line with several sentences) is split with
  :func:`hsrl.data.text.split_sentences`.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

from torch.utils.data import IterableDataset

from hsrl.data.text import Document, austen_splits, split_sentences

__all__ = ["TEXT_SUFFIXES", "BookCorpusPairs", "load_documents", "read_documents", "read_text_file", "split_heldout"]

TEXT_SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".parquet")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in TEXT_SUFFIXES if name.endswith(s)), "")


def _decode(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (bad byte at offset {error.start}); re-encode it as UTF-8") from None


def _documents_from_lines(lines: list[str], stem: str) -> list[Document]:
    documents: list[Document] = []
    current: list[str] = []
    for line in [*lines, ""]:
        text = line.strip()
        if text:
            current.extend(split_sentences(text))
        elif current:
            documents.append(Document(f"{stem}/{len(documents):05d}", current))
            current = []
    return documents


def _documents_from_records(records: list[dict], path: Path) -> list[Document]:
    by_doc: dict[str, list[str]] = {}
    for number, record in enumerate(records, 1):
        text = record.get("text")
        if not isinstance(text, str):
            raise ValueError(f"{path}: record {number} has no string 'text' field")
        doc = str(record.get("doc", record.get("document", "0")))
        by_doc.setdefault(doc, []).extend(split_sentences(text))
    return [Document(f"{path.stem}/{doc}", sentences) for doc, sentences in by_doc.items() if sentences]


#: 🤗 ``datasets`` packaged builders for the plain local formats (``.txt.gz`` keeps the gzip reader).
DATASETS_BUILDERS = {".txt": "text", ".jsonl": "json", ".parquet": "parquet"}


def _documents_through_datasets(path: Path, kind: str) -> list[Document]:
    """``datasets.load_dataset(builder, data_files=path, streaming=True)`` rows made into documents.

    Streaming writes no Arrow cache (only lock files, under ``HF_DATASETS_CACHE``, never beside the data)
    and works with ``HF_DATASETS_OFFLINE=1``. The ``text`` builder yields the file's lines (blank ones
    included), so blank lines still end documents; the ``json`` builder skips blank lines as the line reader
    does, so record numbers in errors are the same.
    """
    from datasets import load_dataset

    rows = load_dataset(DATASETS_BUILDERS[kind], data_files=str(path), split="train", streaming=True)
    if kind == ".txt":
        return _documents_from_lines([row["text"] for row in rows], path.stem)
    # One schema for every row: a field a record lacks comes back as None; drop it, as the record has none.
    return _documents_from_records([{k: v for k, v in row.items() if v is not None} for row in rows], path)


def read_text_file(path: str | Path) -> list[Document]:
    """Documents of one local file (see the module docstring for the formats)."""
    path = Path(path)
    kind = _suffix(path)
    if kind in DATASETS_BUILDERS:
        try:
            return _documents_through_datasets(path, kind)
        except Exception:
            # datasets could not read it (bad UTF-8 reported by its offset in a 10 MB chunk, bad JSON without
            # a line number, a corrupt parquet file, mixed column types) or a record has no text: the exact
            # readers below give hsrl's one-line message naming the byte offset or line, or read what pyarrow
            # refused.
            pass
    if kind in {".txt", ".txt.gz"}:
        raw = gzip.decompress(path.read_bytes()) if kind == ".txt.gz" else path.read_bytes()
        return _documents_from_lines(_decode(raw, path).splitlines(), path.stem)
    if kind == ".jsonl":
        records = []
        for number, line in enumerate(_decode(path.read_bytes(), path).splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    raise ValueError(f"{path}: line {number} is not valid JSON") from None
        return _documents_from_records(records, path)
    if kind == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as error:  # pyarrow raises several types for corrupt files
            raise ValueError(f"{path}: not a readable parquet file ({error})") from None
        return _documents_from_records(table.to_pylist(), path)
    raise ValueError(f"{path}: unsupported file type; use one of {', '.join(TEXT_SUFFIXES)}")


def read_documents(path: str | Path) -> list[Document]:
    """Every document of a text file, or of every file under a folder in name order (see :func:`read_text_file`;
    a file of another type is a ``ValueError``)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [doc for f in files for doc in read_text_file(f)]


def _local_documents(path: Path) -> list[Document]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p))
        if not files:
            raise ValueError(f"{path}: no {', '.join(TEXT_SUFFIXES)} files in this folder")
        documents = [doc for f in files for doc in read_text_file(f)]
    else:
        documents = read_text_file(path)
    sentences = sum(len(d.sentences) for d in documents)
    if sentences == 0:
        raise ValueError(f"{path}: no text found (the file is empty)")
    if sentences < 2 or all(len(d.sentences) < 2 for d in documents):
        raise ValueError(f"{path}: needs at least one document of two or more sentences to make neighbour pairs")
    return documents


def split_heldout(documents: list[Document], fraction: float = 0.1) -> tuple[list[Document], list[Document]]:
    """Hold out the last ``fraction`` of documents (at least one) when there are several."""
    if len(documents) < 2:
        return documents, documents
    cut = max(1, round(len(documents) * fraction))
    return documents[:-cut], documents[-cut:]


def load_documents(dataset: str) -> tuple[list[Document], list[Document]]:
    """``(train, heldout)`` documents for ``austen`` or a local path.

    Raises:
        ValueError: one line for a missing path, an empty or unreadable file, or too little text.
    """
    if dataset == "austen":
        return austen_splits()
    if dataset == "bookcorpus":
        raise ValueError("bookcorpus is streamed: use BookCorpusPairs")
    path = Path(dataset)
    if not path.exists():
        raise ValueError(
            f"--dataset {dataset}: no such file or folder (use 'austen' for the embedded corpus, "
            "'bookcorpus' for the hub's, or a .txt/.jsonl/.parquet path)"
        )
    return split_heldout(_local_documents(path))


class BookCorpusPairs(IterableDataset):
    """Consecutive-sentence pairs ``(s_i, s_{i+1})`` streamed from the hub's BookCorpus.

    Opening the stream happens in ``__init__`` so that, offline, the recipe fails at
    once with a clear line rather than in the middle of the first epoch.
    """

    def __init__(self, name: str = "bookcorpus", split: str = "train", skip: int = 0) -> None:
        from datasets import load_dataset

        try:
            self.stream = load_dataset(name, split=split, streaming=True)
            self.first = next(iter(self.stream.take(1)))
        except Exception as error:  # ConnectionError, OfflineModeIsEnabled, DatasetNotFoundError, ...
            reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
            raise ValueError(
                f"cannot stream BookCorpus from the Hugging Face Hub ({reason}). "
                "Use a local copy with --dataset PATH (.txt one sentence per line, .jsonl, .parquet, or a folder) "
                "or the embedded corpus with --dataset austen"
            ) from None
        self.skip = skip
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[str, str]]:
        previous: str | None = None
        for record in self.stream.skip(self.skip):
            text = record["text"].strip()
            if not text:
                previous = None  # treat blank lines as document breaks
                continue
            if previous is not None:
                yield previous, text
            previous = text
