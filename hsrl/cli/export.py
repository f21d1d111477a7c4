"""``hsrl export --model PATH --dataset INPUT --output DIR``: a dataset's embeddings as verified shards (the library
is :mod:`hsrl.export`, whose docstring describes the folder)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from hsrl.backends import BACKENDS
from hsrl.cli.harness import OneLineArgumentParser, run_cli
from hsrl.export import export_embeddings

__all__ = ["cli_main"]


def _parser() -> OneLineArgumentParser:
    description = "Encode a dataset with a model folder into sharded, verified, L2-normalised embeddings."
    parser = OneLineArgumentParser(prog="hsrl export", description=description)
    parser.add_argument("--model", required=True, help="sentence-transformers folder or image model folder")
    parser.add_argument("--dataset", required=True, help=".txt, .jsonl, .parquet or an image folder")
    parser.add_argument("--output", required=True, help="export folder (rerun to resume)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=10_000, help="records per shard")
    parser.add_argument("--device", default=None, help="torch device (default: the process's accelerator)")
    parser.add_argument(
        "--backend", default="torch", choices=BACKENDS,
        help="what runs the model: text (hsrl.backends); image: torch, onnx, auto (hsrl.onnx_image)",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _run(args: argparse.Namespace) -> int:
    from accelerate import PartialState  # one process, or one of several under `accelerate launch`
    from accelerate.utils import parse_flag_from_env

    # Accelerator() reads ACCELERATE_USE_CPU itself; PartialState needs it passed, or CPU-only ranks run alone.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    try:
        result = export_embeddings(args.model, args.dataset, args.output, batch_size=args.batch_size,
                                   shard_size=args.shard_size, device=args.device or str(state.device),
                                   rank=state.process_index, world_size=state.num_processes,
                                   progress=not args.no_progress, backend=args.backend)  # fmt: skip
        state.wait_for_everyone()
    finally:
        if state.num_processes > 1:
            state.destroy_process_group()
    if state.is_main_process:
        summary = {k: result[k] for k in ("num_records", "num_shards", "exported", "skipped")}
        print(json.dumps({"output": str(args.output), **summary}))
    return 0


def cli_main(argv: Sequence[str]) -> int:
    """``hsrl export`` (see ``hsrl export --help``)."""
    return run_cli(_parser(), argv, _run)


if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:]))
