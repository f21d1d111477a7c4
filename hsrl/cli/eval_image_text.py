"""``hsrl eval image-text --model MODEL [--unseen-classes a,b] [--pairs N] [--linear-probe] [--output FILE]``:
zero-shot, cross-modal recall and the geometry of a two-tower model (:mod:`hsrl.evaluation.image_text`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from hsrl.cli.harness import OneLineArgumentParser, run_cli
from hsrl.data.captions import FashionCaptions
from hsrl.evaluation.image_text import evaluate_image_text, format_summary

__all__ = ["cli_main"]


def _parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(prog="hsrl eval image-text", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a two-tower model folder (recipes/image_text.py)")
    parser.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist"], help="evaluation data")
    parser.add_argument("--unseen-classes", default="", help="classes held out of training, comma-separated")
    parser.add_argument("--pairs", type=int, default=1000, help="test pairs for retrieval and geometry")
    parser.add_argument("--linear-probe", action="store_true", help="also a linear probe on the image embeddings")
    parser.add_argument("--output", default=None, help="write the report as JSON here")
    return parser


def _run(args: argparse.Namespace) -> int:
    from hsrl.models.folder import open_model

    unseen = FashionCaptions.parse_unseen([c for c in args.unseen_classes.split(",") if c.strip()])
    opened = open_model(args.model)
    if opened.kind != "two_tower":
        raise ValueError(f"--model {args.model}: a {opened.kind} model folder, not a two-tower one")
    report = evaluate_image_text(opened.module, captions=FashionCaptions(unseen), pairs=args.pairs,
                                 linear_probe=args.linear_probe)  # fmt: skip
    print(format_summary(report["summary"]))
    if args.output:
        from hsrl.checkpoints import atomic_write_json

        atomic_write_json(Path(args.output), report)
    else:
        json.dump(report["summary"], sys.stdout)
        print()
    return 0


def cli_main(argv: Sequence[str]) -> int:
    """``hsrl eval image-text`` (see ``--help``)."""
    return run_cli(_parser(), argv, _run)
