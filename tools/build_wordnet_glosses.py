"""Build the embedded replay corpus ``wordnet``: a fixed sample of WordNet 3.0's definitions (glosses).

    apt-get download wordnet-base && dpkg -x wordnet-base_*.deb /tmp/wordnet-base
    python tools/build_wordnet_glosses.py /tmp/wordnet-base/usr/share/wordnet
    python tools/build_wordnet_glosses.py /tmp/wordnet-base/usr/share/wordnet --every 10 --output wordnet10.txt

Why glosses: replay anchoring (``hsrl.replay``) protects the regions of embedding space its sentences cover. The
Python reference (``pydoc``) covers software; WordNet's definitions cover the whole English vocabulary — people,
places, institutions, nature, actions — in short expository sentences, so anchoring them keeps general text
where the starting model put it (measured in ``benchmarks/results/text_objective_probe.md``). They are not the
Factbook: a gloss defines one word sense, it says nothing of any country's history.

What is kept: the definition of each synset of ``data.noun``, ``data.verb``, ``data.adj`` and ``data.adv`` (the
text after ``|`` up to the first quoted example), capitalised and ended with a full stop, when it has at least six
words; then every 30th of those in file order (2,927 of 87,808), a sample in proportion to the parts of speech
(2,301 nouns, 365 adjectives, 225 verbs, 36 adverbs) and spread over WordNet's lexicographer files. Examples
quoted without the ``; "`` separator stay in (a few dozen glosses). Writes
``hsrl/data/corpora/wordnet_glosses.jsonl.gz`` (one record per gloss); WordNet's licence lies next to it in the
repository (``WORDNET_LICENSE``), as that licence asks of every copy, and the build refuses to write without it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

CORPORA = Path(__file__).resolve().parents[1] / "hsrl" / "data" / "corpora"
OUTPUT = CORPORA / "wordnet_glosses.jsonl.gz"
LICENSE = CORPORA / "WORDNET_LICENSE"
PARTS_OF_SPEECH = ("noun", "verb", "adj", "adv")
EVERY = 30
MIN_WORDS = 6


def definition(line: str) -> str | None:
    """The definition of one ``data.*`` synset line (its gloss without the quoted examples), or None."""
    if line.startswith("  ") or "|" not in line:  # the licence header lines start with two spaces
        return None
    gloss = line.split("|", 1)[1].strip().split('; "')[0].strip().rstrip(";").strip()
    if len(gloss.split()) < MIN_WORDS:
        return None
    return gloss[0].upper() + gloss[1:] + "."


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="WordNet's dict folder (the one with data.noun)")
    parser.add_argument("--every", type=int, default=EVERY, help="keep every N-th gloss (the shipped corpus: 30)")
    parser.add_argument("--output", type=Path, default=None,
                        help="a .txt file (one gloss per paragraph, for --replay-dataset PATH) instead of the "
                             "shipped corpus")  # fmt: skip
    args = parser.parse_args(argv)
    if not (args.folder / "data.noun").is_file() or args.every < 1:
        print(f"error: {args.folder} has no data.noun, or --every < 1", file=sys.stderr)
        return 2
    if args.output is None and not LICENSE.is_file():
        print(f"error: {LICENSE} is missing: WordNet's licence must ship next to its glosses", file=sys.stderr)
        return 2
    rows = []
    for pos in PARTS_OF_SPEECH:
        for line in (args.folder / f"data.{pos}").read_text(encoding="latin-1").splitlines():
            text = definition(line)
            if text is not None:
                rows.append({"pos": pos, "offset": line.split(" ", 1)[0], "text": text})
    sample = rows[:: args.every]
    if args.output is not None:  # a variant for probing, e.g. --every 10: read back with --replay-dataset PATH
        args.output.write_text("\n\n".join(row["text"] for row in sample) + "\n", encoding="utf-8")
        print(f"{len(sample)} of {len(rows)} glosses -> {args.output}")
        return 0
    # mtime=0: the same input gives byte-identical output.
    with open(OUTPUT, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
        out.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in sample).encode("utf-8"))
    print(f"{len(sample)} of {len(rows)} glosses -> {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
