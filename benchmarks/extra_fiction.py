"""Build the three non-Austen books of the objective probe's ``--extra-text`` rows (text the registries ship).

    apt-get download r-cran-tokenizers && dpkg -x r-cran-tokenizers_*.deb /tmp/tok    # Moby-Dick (1851)
    pip download --no-deps --no-binary :all: brotli sentencepiece -d /tmp/sdist     # Alice (1865), Botchan (1919)
    python benchmarks/extra_fiction.py /tmp/tok /tmp/sdist --output-dir runs/extra_fiction

Writes ``mobydick.jsonl``, ``alice.jsonl`` and ``botchan.jsonl`` (one ``{"doc": "ch001", "text": paragraph}``
record per paragraph, hsrl's ``.jsonl`` format, so a chapter is a document). These are the only public-domain
novels besides Austen found installable here: Debian's R package ``tokenizers`` keeps *Moby-Dick* as its example
data, brotli's source distribution keeps the Canterbury corpus' ``alice29.txt`` among its test files and
sentencepiece's keeps ``botchan.txt`` (Natsume's *Botchan*, the 1919 English translation). Each book's Project
Gutenberg header, front matter, licence and transcriber's notes are dropped.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from build_austen_corpus import find_rdb, read_index, read_record

#: A line that starts a chapter: "CHAPTER 12. The Chase." (Moby-Dick) or "CHAPTER IV." (Alice, Botchan).
CHAPTER = re.compile(r"^\s*CHAPTER (\d+\.|[IVXL]+\.?\s*$)")


def chapters_to_records(lines: list[str], *, blank_ends_paragraph: bool, title_line: bool) -> list[dict]:
    """Paragraph records from a book's lines, from its first ``CHAPTER`` line on.

    ``blank_ends_paragraph``: paragraphs are separated by blank lines (otherwise a chapter is one paragraph: Botchan's
    file has no blank lines). ``title_line``: the line after a chapter heading is its title (Alice), not prose.
    """
    records: list[dict] = []
    chapter, paragraph, skip_title = 0, [], False

    def flush() -> None:
        text = re.sub(r"\s+", " ", " ".join(paragraph)).replace("`", "'").strip()
        if chapter and text and not re.fullmatch(r"[*\s]+", text):
            records.append({"doc": f"ch{chapter:03d}", "text": text})
        paragraph.clear()

    for line in lines:
        if CHAPTER.match(line) or line.strip() == "Epilogue":
            flush()
            chapter, skip_title = chapter + 1, title_line
        elif not line.strip():
            if blank_ends_paragraph:
                flush()
        elif skip_title:
            skip_title = False
        elif chapter:
            paragraph.append(line.strip())
    flush()
    return records


def _until(lines: list[str], marker: str) -> list[str]:
    end = next((i for i, line in enumerate(lines) if marker in line), None)
    if end is None:  # another edition of the file: say so in one line rather than a StopIteration traceback
        raise SystemExit(f"extra_fiction.py: no {marker!r} line in this copy of the book; is it the edition named?")
    return lines[:end]


def moby_dick(tokenizers_dir: Path) -> list[dict]:
    rdb = find_rdb(tokenizers_dir / "usr/lib/R/site-library/tokenizers/data")
    (offset, length) = read_index(rdb.with_suffix(".rdx"))["mobydick"]
    text = read_record(rdb.read_bytes(), offset, length).values[0]
    return chapters_to_records(_until(text.splitlines(), "End of Project Gutenberg"),
                               blank_ends_paragraph=True, title_line=False)  # fmt: skip


def _member(archive: Path, suffix: str) -> str:
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(suffix))
        return tar.extractfile(member).read().decode("utf-8-sig").replace("\r", "")


def alice(sdist_dir: Path) -> list[dict]:
    text = _member(next(sdist_dir.glob("brotli-*.tar.gz")), "tests/testdata/alice29.txt")
    return chapters_to_records(_until(text.splitlines(), "THE END"), blank_ends_paragraph=True, title_line=True)


def botchan(sdist_dir: Path) -> list[dict]:
    text = _member(next(sdist_dir.glob("sentencepiece-*.tar.gz")), "test/botchan.txt")
    prose, in_note = [], False
    for line in _until(text.splitlines(), "End of Project Gutenberg"):
        # footnotes and the transcriber's notes are bracketed blocks of their own lines: "[Footnote 1: ...]"
        in_note = in_note or line.startswith("[")
        if not in_note:
            prose.append(line)
        elif line.rstrip().endswith("]"):
            in_note = False
    return chapters_to_records(prose, blank_ends_paragraph=False, title_line=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tokenizers_dir", type=Path, help="r-cran-tokenizers unpacked (dpkg -x)")
    parser.add_argument("sdist_dir", type=Path, help="folder with the brotli and sentencepiece source archives")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/extra_fiction"))
    args = parser.parse_args()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for name, records in (("mobydick", moby_dick(args.tokenizers_dir)), ("alice", alice(args.sdist_dir)),
                          ("botchan", botchan(args.sdist_dir))):  # fmt: skip
        path = args.output_dir / f"{name}.jsonl"
        path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
        print(f"{path}: {len(records)} paragraphs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
