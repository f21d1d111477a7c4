"""``hsrl reproduce EXPERIMENT``: the paper's figures and tables at laptop scale (the experiments are
:mod:`hsrl.reproduce`)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from hsrl.cli.harness import OneLineArgumentParser, UsageError, run_cli
from hsrl.reproduce import EXPERIMENTS, run_experiment
from hsrl.reproduce.common import Context
from hsrl.training import TrainingDivergedError

__all__ = ["cli_main"]


def _parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="hsrl reproduce",
        description="Reproduce the paper's figures and tables at laptop scale (PNG + CSV + report.md).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="experiments:\n" + "\n".join(f"  {k:<9} {v}" for k, v in EXPERIMENTS.items()),
    )
    parser.add_argument("experiment", help=f"one of {', '.join(EXPERIMENTS)}, or all")
    parser.add_argument("--quick", action="store_true", help="tiny settings (CI): a few hundred images, a few steps")
    parser.add_argument("--output-dir", help="where the PNG, CSVs and report go (default runs/reproduce/EXPERIMENT)")
    parser.add_argument("--runs-dir", help="where training runs are kept and found again (default OUTPUT/runs)")
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda when available, else cpu)"
    )
    return parser


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device (use cpu, cuda, cuda:N or auto)") from None
    if device.type not in {"cpu", "cuda"}:
        raise UsageError(f"--device {name!r}: only cpu and cuda are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device is available here (use --device cpu)")
    return device


def _run(args: argparse.Namespace) -> int:
    names = list(EXPERIMENTS) if args.experiment == "all" else [args.experiment]
    if names[0] not in EXPERIMENTS:
        raise UsageError(f"unknown experiment {args.experiment!r} (choose from {', '.join(EXPERIMENTS)}, all)")
    device = _device(args.device)
    for name in names:
        output = Path(args.output_dir or Path("runs/reproduce") / name)
        if args.output_dir and len(names) > 1:
            output = output / name
        runs = (
            Path(args.runs_dir) / name if args.runs_dir and len(names) > 1 else Path(args.runs_dir or output / "runs")
        )
        ctx = Context(output_dir=output, runs_dir=runs, quick=args.quick, device=device)
        started = time.perf_counter()
        print(f"hsrl reproduce {name}{' --quick' if args.quick else ''}: writing to {output}")
        try:
            run_experiment(name, ctx)
        except TrainingDivergedError as error:  # a sweep point that diverges names its last good checkpoint
            print(f"hsrl reproduce: error: {error}", file=sys.stderr)
            return 1
        print(f"hsrl reproduce {name}: done in {time.perf_counter() - started:.0f} s ({output / 'report.md'})")
    return 0


def cli_main(argv: Sequence[str] | None = None) -> int:
    """``hsrl reproduce EXPERIMENT [--quick] [--output-dir DIR] [--runs-dir DIR] [--device D]``.

    Returns 0 on success, 2 for a user's error (unknown experiment, bad flag, missing Fashion-MNIST) and 1
    for a diverged training run, each reported in one line on stderr.
    """
    return run_cli(_parser(), sys.argv[1:] if argv is None else argv, _run, errors=(ValueError, OSError))
