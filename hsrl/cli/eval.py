"""``hsrl eval text|image|retrieval|image-text``: dispatch to the evaluator of each kind."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

KINDS: dict[str, str] = {
    "text": "hsrl.cli.eval_text",
    "image": "hsrl.cli.eval_image",
    "retrieval": "hsrl.cli.eval_retrieval",
    "image-text": "hsrl.cli.eval_image_text",
}


def main(argv: Sequence[str]) -> int:
    """``hsrl eval KIND ...``: the evaluator of KIND, imported only when used."""
    args = list(argv)
    if not args or args[0] in {"-h", "--help"}:
        print("usage: hsrl eval {text,image,retrieval,image-text} [options]  (hsrl eval KIND --help for each)")
        return 0
    kind = args[0]
    if kind not in KINDS:
        print(f"hsrl eval: error: unknown kind {kind!r} (choose from {', '.join(KINDS)})", file=sys.stderr)
        return 2
    return int(importlib.import_module(KINDS[kind]).cli_main(args[1:]) or 0)
