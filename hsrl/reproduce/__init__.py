"""``hsrl reproduce``: the paper's figures and tables at laptop scale, from real runs.

    hsrl reproduce fig3      representations on S¹ (m = 2): random, supervised, contrastive, align/uniform
    hsrl reproduce fig5      alignment vs uniformity vs 5-NN accuracy over a sweep of ≥ 16 objectives
    hsrl reproduce fig8      fine-tuning a contrastive encoder with align only, uniform only, both
    hsrl reproduce theorem1  L_contrastive(τ, M) − log M against its limit, M = 1 … 16384
    hsrl reproduce table     align/uniform vs contrastive, same budget, 3 seeds, mean ± std
    hsrl reproduce all       the five, each in its own sub-folder

Each writes a PNG, the CSV of the numbers it shows and ``report.md`` into ``--output-dir``
(default ``runs/reproduce/<experiment>``). Training runs go to ``--runs-dir`` (default
``<output-dir>/runs``): each is resumable (``fit``'s checkpoints) and skipped when its
``metrics.json`` exists, so re-running a command only redraws. ``--quick`` uses tiny settings
(a few hundred images, a few steps) for CI. Wang & Isola, ICML 2020 (arXiv 2005.10242).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from hsrl.reproduce.common import Context
from hsrl.training import TrainingDivergedError

__all__ = ["EXPERIMENTS", "cli_main", "run_experiment"]

#: experiment name -> one-line summary; each is the module ``hsrl.reproduce.<name>`` with ``run(ctx)``.
EXPERIMENTS: dict[str, str] = {
    "fig3": "representations on S¹ (m = 2) of four encoders: distance histograms and angle densities",
    "fig5": "alignment vs uniformity vs 5-NN accuracy over a sweep of objectives, with Spearman correlations",
    "fig8": "fine-tuning a contrastive encoder with alignment only, uniformity only, or both",
    "theorem1": "the contrastive loss minus log M converging to its limit as the negatives M grow",
    "table": "align/uniform vs contrastive at the same budget over seeds (mean ± std)",
}


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (raised, printed by :func:`cli_main`), not usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
        raise _UsageError(f"--device {name!r} is not a device (use cpu, cuda, cuda:N or auto)") from None
    if device.type not in {"cpu", "cuda"}:
        raise _UsageError(f"--device {name!r}: only cpu and cuda are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise _UsageError(f"--device {name}: no CUDA device is available here (use --device cpu)")
    return device


def run_experiment(name: str, ctx: Context) -> dict[str, object]:
    """Run one experiment (``ctx.output_dir`` is created) and return its numbers."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r} (choose from {', '.join(EXPERIMENTS)}, all)")
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    module = importlib.import_module(f"hsrl.reproduce.{name}")
    return module.run(ctx)


def cli_main(argv: Sequence[str] | None = None) -> int:
    """``hsrl reproduce EXPERIMENT [--quick] [--output-dir DIR] [--runs-dir DIR] [--device D]``.

    Returns 0 on success, 2 for a user's error (unknown experiment, bad flag, missing Fashion-MNIST) and 1
    for a diverged training run, each reported in one line on stderr.
    """
    try:
        args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
        names = list(EXPERIMENTS) if args.experiment == "all" else [args.experiment]
        if names[0] not in EXPERIMENTS:
            raise _UsageError(f"unknown experiment {args.experiment!r} (choose from {', '.join(EXPERIMENTS)}, all)")
        device = _device(args.device)
    except _UsageError as error:
        print(f"hsrl reproduce: error: {error}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
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
        except FileNotFoundError as error:  # the dataset is missing: the message says how to get it
            print(f"hsrl reproduce: error: {error}", file=sys.stderr)
            return 2
        except ValueError as error:
            print(f"hsrl reproduce: error: {error}", file=sys.stderr)
            return 2
        except TrainingDivergedError as error:  # a sweep point that diverges names its last good checkpoint
            print(f"hsrl reproduce: error: {error}", file=sys.stderr)
            return 1
        print(f"hsrl reproduce {name}: done in {time.perf_counter() - started:.0f} s ({output / 'report.md'})")
    return 0
