"""Evaluation of a text encoder: ``hsrl eval text --model PATH --dataset austen`` (alignment, uniformity,
neighbour-sentence retrieval, book attribution, SentEval-style tasks; see :mod:`hsrl.evaluation.text`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

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
    parser.add_argument("--max-seq-length", type=int, help="embed at most N tokens of each sentence, for every "
                        "model evaluated (default: each model's own, as saved; a model trained on short inputs "
                        "saves its training length)")  # fmt: skip
    parser.add_argument("--output", help="write the metrics as JSON here")
    return run_cli(parser, argv, _run)


def _run(args: argparse.Namespace) -> int:
    if args.max_seq_length is not None and args.max_seq_length < 1:
        raise UsageError(f"--max-seq-length must be >= 1, got {args.max_seq_length}")
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
            if args.max_seq_length is not None:
                set_max_seq_length(encoder, args.max_seq_length, role)
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


def set_max_seq_length(encoder: Any, length: int, role: str) -> None:
    """Truncate ``encoder``'s inputs to ``length`` tokens: one line when its position table is shorter.

    A transformer embeds at most ``max_position_embeddings`` tokens (512 for MiniLM's BERT); past them its
    position lookup would fail mid-evaluation. A recurrent encoder has no such limit.
    """
    first = encoder[0]
    limit = getattr(getattr(getattr(first, "auto_model", None), "config", None), "max_position_embeddings", None)
    if limit is not None and length > limit:
        raise UsageError(f"--max-seq-length {length}: --{role} embeds at most {limit} tokens")
    encoder.max_seq_length = length
