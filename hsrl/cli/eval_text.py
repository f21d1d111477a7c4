"""Evaluation of a text encoder: ``hsrl eval text --model PATH --dataset austen`` (alignment, uniformity,
neighbour-sentence retrieval, book attribution, SentEval-style tasks; see :mod:`hsrl.evaluation.text`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from hsrl.checkpoints import atomic_write_json
from hsrl.cli.harness import OneLineArgumentParser, UsageError, run_cli
from hsrl.data.text_sources import load_documents
from hsrl.evaluation.text import eval_set_name, evaluate_text_encoder, format_comparison, load_eval_documents
from hsrl.models.folder import open_model
from hsrl.models.text import resolve_model_path

__all__ = ["cli_main"]


def cli_main(argv: Sequence[str]) -> int:
    """``hsrl eval text``: metrics of ``--model`` (and ``--baseline``) on held-out text."""
    parser = OneLineArgumentParser(prog="hsrl eval text", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="sentence-transformers folder, packaged name (minilm) or "
                        "Hub id org/name (HF_HUB_OFFLINE=1: the local cache only)")  # fmt: skip
    parser.add_argument("--baseline", help="a second model evaluated in the same run, e.g. the starting checkpoint")
    parser.add_argument("--dataset", default="austen", help="austen or a local .txt/.jsonl/.parquet path")
    parser.add_argument(
        "--eval-dataset", action="append", default=[],
        help="another evaluation set (repeatable): factbook (embedded, another domain), persuasion, or a path",
    )  # fmt: skip
    parser.add_argument("--senteval", help="folder with MR/CR/SUBJ/MPQA files")
    parser.add_argument("--max-sentences", type=int, help="evaluate on the first N held-out sentences")
    parser.add_argument("--output", help="write the metrics as JSON here")
    return run_cli(parser, argv, _run)


def _run(args: argparse.Namespace) -> int:
    # Models first: a Hub id missing offline is one line before any corpus is read.
    folders = {}
    for role, name in (("baseline", args.baseline), ("model", args.model)):
        try:
            folders[role] = resolve_model_path(name) if name else None
        except ValueError as error:  # resolve_model_path names --model; say which flag it was
            raise ValueError(str(error).replace("--model", f"--{role}", 1)) from None
    _, heldout = load_documents(args.dataset)
    eval_sets = {eval_set_name(name): load_eval_documents(name) for name in args.eval_dataset}
    results = {}
    for role, folder in folders.items():
        if folder:
            opened = open_model(folder)  # the one model-folder contract
            if opened.kind != "text":
                raise UsageError(f"--{role} {folder} is an {opened.kind} model; hsrl eval text needs a text model")
            encoder = opened.module
            results[role] = evaluate_text_encoder(
                encoder, heldout, attribution=args.dataset == "austen", senteval_dir=args.senteval,
                max_sentences=args.max_sentences, eval_sets=eval_sets,
            )  # fmt: skip
    if "baseline" in results:
        print(format_comparison(results["baseline"], results["model"], ("baseline", "model")))
    else:
        print("\n".join(f"{k:20s} {v:.4f}" for k, v in results["model"].items()))
    if args.output:
        atomic_write_json(args.output, results)
    return 0
