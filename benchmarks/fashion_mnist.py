"""Fashion-MNIST pretraining at equal wall-clock budget: the defaults, their ablations, and the baselines.

    python benchmarks/fashion_mnist.py ablation --minutes 3          # one change at a time against the defaults
    python benchmarks/fashion_mnist.py budget --minutes 10 --seeds 0   # the issue's 10-minute check
    python benchmarks/fashion_mnist.py budget --minutes 30 --seeds 0 1 2 --objectives align_uniform contrastive
    python benchmarks/fashion_mnist.py budget --minutes 30 --seeds 0 1 2 --objectives align_uniform contrastive \
        --jobs 2                                     # two runs at a time, one core each
    python benchmarks/fashion_mnist.py budget --minutes 30 --seeds 0 1 2 --report-only   # tables from finished runs

Every row is ``accelerate launch recipes/stl10.py --dataset fashion-mnist --time-budget-min M`` with the
row's flags on top of the defaults (the ``fashion-mnist`` preset), launched as a user launches it, one run at
a time with the whole machine (``--threads`` is the recipe's default: every core); ``--jobs N`` runs N at
once instead, each with cores / N intra-op threads (so each run gets a fraction of the machine: say so next to
its numbers). Each run's own
``metrics.json`` ``summary`` gives the row: k-NN (5-NN, cosine) at the headline layer and at the 128-d output,
the linear probe, alignment/uniformity on held-out views, the steps the budget allowed, and the raw-pixel and
random-encoder baselines measured in the same run. A finished run (its ``metrics.json`` exists) is read back,
not retrained, so an interrupted sweep resumes. ``--lock FILE`` holds an exclusive ``flock`` on FILE for
each run (for machines shared with other jobs). Results are a Markdown table (``--output``).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _report import publish

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
LAUNCH = [ACCELERATE, "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
          "--dynamo_backend", "no"]  # fmt: skip

#: Ablations: one change each against the defaults (the ``fashion-mnist`` preset), same budget.
ABLATIONS: dict[str, list[str]] = {
    "defaults (small_resnet 32-64-128, channels-last, batched views, AdamW 2e-3 cosine, batch 256)": [],
    "paper encoder: small_alexnet width 0.25": ["--encoder", "small_alexnet", "--width", "0.25"],
    "contrastive (InfoNCE, tau 0.2) instead of align/uniform": ["--loss", "contrastive:1,tau=0.2"],
    "views by torchvision per image in 2 loader workers (not batched)": ["--no-batched-views", "--num-workers", "2"],
    "no channels-last": ["--no-channels-last"],
    "batch 512": ["--batch-size", "512"],
    "crop scale 0.08-1": ["--crop-scale", "0.08"],
    "random erasing p 0.5": ["--erase", "0.5"],
    "projection head on the last map pooled to 4x4 (not global average)": ["--head-grid", "4"],
}
#: Objectives for the budget table.
OBJECTIVES: dict[str, list[str]] = {
    "align_uniform": [],  # the default loss: align:1,alpha=2 + uniform:1,t=2
    "contrastive": ["--loss", "contrastive:1,tau=0.2"],
}
SUMMARY_KEYS = ("knn5", "output_knn5", "linear", "align", "uniform", "steps", "train_seconds")


@contextmanager
def exclusive(lock: Path | None):
    """Hold an exclusive flock on ``lock`` (no-op when None) for the duration."""
    if lock is None:
        yield
        return
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in name)[:80]


def run(
    folder: Path, flags: list[str], minutes: float, seed: int, lock: Path | None, train: bool,
    threads: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The run's metrics.json (training it first unless it exists or ``train`` is False); ``threads``: the
    run's intra-op threads (None: the recipe's default, every core)."""
    metrics = folder / "metrics.json"
    if not metrics.is_file() and train:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
            flags = [*flags, "--threads", str(threads)]
        cmd = [*LAUNCH, str(ROOT / "recipes" / "stl10.py"), "--dataset", "fashion-mnist", "--time-budget-min",
               str(minutes), "--seed", str(seed), "--log-with", "none", "--no-progress", *flags,
               "--output-dir", str(folder)]  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        # The run writes to a file, not a pipe to this process: a run outlives this driver being stopped (a
        # pipe would break, and the run die at its next print).
        with exclusive(lock), open(folder / "benchmark.log", "w") as log:
            started = time.perf_counter()
            done = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
            wall = time.perf_counter() - started
        if done.returncode != 0:
            lines = (folder / "benchmark.log").read_text().strip().splitlines()
            return {"error": lines[-1:] or ["failed"]}
        print(f"{folder.name}: {wall:.0f} s wall", flush=True)
    if not metrics.is_file():
        return {"error": "not run"}
    return json.loads(metrics.read_text())


def row(name: str, metrics: dict[str, Any]) -> str:
    if "error" in metrics:
        return f"| {name} | {metrics['error']} |" + " |" * 6
    s = metrics["summary"]
    return (f"| {name} | {s['knn5']:.4f} | {s.get('output_knn5', float('nan')):.4f} | "
            f"{s.get('linear', float('nan')):.4f} | {s['align']:.3f} | {s['uniform']:.3f} | "
            f"{s['steps']:.0f} / {s['train_seconds']:.0f} s |")  # fmt: skip


HEADER = [
    "| run | 5-NN (headline layer) | 5-NN (output) | linear | align | uniform | steps / train s |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
]


def _spread(values: list[float]) -> str:
    """One value as it is; several as ``mean ± sd (n seeds)``."""
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f} ({len(values)} seeds)"


def baselines(summaries: list[dict[str, Any]]) -> list[str]:
    """Raw pixels and the random encoder, measured in the runs themselves (one summary per seed).

    The random encoder is drawn from each seed; the raw-pixel linear probe too has a seed (its SGD order).
    """
    nan = float("nan")
    layer = summaries[0]["layer"]
    return [
        f"| raw pixels (same run) | {_spread([s['raw_pixels_knn5'] for s in summaries])} | | "
        f"{_spread([s.get('raw_pixels_linear', nan) for s in summaries])} | | | |",
        f"| random encoder (same run, layer {layer}) | {_spread([s['random_encoder_knn5'] for s in summaries])} | "
        f"| {_spread([s.get('random_encoder_linear', nan) for s in summaries])} | | | |",
    ]


def ablation(args: argparse.Namespace) -> list[str]:
    title = f"# Fashion-MNIST ablations: one change at a time, {args.minutes:g}-minute budget each, seed {args.seed}"
    command = (
        f"Command: `python benchmarks/fashion_mnist.py ablation --minutes {args.minutes:g}"
        + (f" --recipe-flags '{args.recipe_flags}'" if args.recipe_flags else "")
        + (" --only " + " ".join(shlex.quote(part) for part in args.only) if args.only else "")
        + "`"
    )
    lines = [title, "", command, "", *HEADER]
    first: dict[str, Any] | None = None
    for name, flags in ABLATIONS.items():
        folder = args.runs / f"ablation-{args.minutes:g}min" / slug(name)
        chosen = not args.only or any(part in name for part in args.only)
        metrics = run(folder, [*flags, *args.extra], args.minutes, args.seed, args.lock,
                      chosen and not args.report_only)  # fmt: skip
        lines.append(row(name, metrics))
        first = first or (metrics if "summary" in metrics else None)
    if first:
        lines += baselines([first["summary"]])
    return lines


def budget(args: argparse.Namespace) -> list[str]:
    seeds = " ".join(map(str, args.seeds))
    command = (
        f"python benchmarks/fashion_mnist.py budget --minutes {args.minutes:g} --seeds {seeds} "
        f"--objectives {' '.join(args.objectives)}" + (f" --jobs {args.jobs}" if args.jobs > 1 else "")
    )
    lines = [f"# Fashion-MNIST, {args.minutes:g}-minute budget, defaults only, seeds {seeds}", "",
             f"Command: `{command}`", ""]  # fmt: skip
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
    if threads is not None:
        lines += [f"{args.jobs} runs at a time, {threads} intra-op thread(s) each: every run had about "
                  f"1/{args.jobs} of this {os.cpu_count()}-core machine for its budget.", ""]  # fmt: skip
    lines += HEADER
    # Seeds outside, objectives inside: with --jobs 2 the objectives of one seed run side by side.
    cells = [(objective, seed) for seed in args.seeds for objective in args.objectives]

    def one(cell: tuple[str, int]) -> dict[str, Any]:
        objective, seed = cell
        folder = args.runs / f"budget-{args.minutes:g}min" / f"{objective}-seed{seed}"
        return run(folder, [*OBJECTIVES[objective], *args.extra], args.minutes, seed, args.lock,
                   not args.report_only, threads)  # fmt: skip

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = dict(zip(cells, pool.map(one, cells), strict=True))
    means = []
    per_seed: dict[int, dict[str, Any]] = {}  # one summary per seed for the baselines
    for objective in args.objectives:
        runs = []
        for seed in args.seeds:
            metrics = results[(objective, seed)]
            lines.append(row(f"{objective}, seed {seed}", metrics))
            if "summary" in metrics:
                runs.append(metrics["summary"])
                per_seed.setdefault(seed, metrics["summary"])
        if len(runs) > 1:
            mean_cells = []
            for key in SUMMARY_KEYS[:5]:
                values = [r[key] for r in runs if key in r]
                mean_cells.append(f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}")
            steps = statistics.mean(r["steps"] for r in runs)
            means.append(f"| **{objective}, mean ± sd of {len(runs)} seeds** | " + " | ".join(mean_cells)
                         + f" | {steps:.0f} (mean) |")  # fmt: skip
    lines += means
    if per_seed:
        lines += baselines(list(per_seed.values()))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["ablation", "budget"])
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per run")
    parser.add_argument("--seed", type=int, default=0, help="ablation: the seed of every row")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="budget: seeds per objective")
    parser.add_argument("--objectives", nargs="+", choices=sorted(OBJECTIVES), default=["align_uniform"])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "fashion_mnist_benchmark")
    parser.add_argument("--lock", type=Path, help="hold an exclusive flock on this file during each run")
    parser.add_argument("--report-only", action="store_true", help="tables from finished runs only")
    parser.add_argument("--output", type=Path, help="also write the table here")
    parser.add_argument("--only", nargs="+", default=[], help="ablation: train only the rows whose name contains "
                        "one of these (the others are read back when finished)")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=1, help="budget: runs at once, each with cores/jobs threads")
    parser.add_argument("--recipe-flags", default="", help='flags added to every run, e.g. "--linear-protocol fast"')
    args = parser.parse_args(argv)
    args.extra = shlex.split(args.recipe_flags)
    if args.minutes <= 0:
        parser.error("--minutes must be > 0")
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    lines = ablation(args) if args.mode == "ablation" else budget(args)
    publish(lines, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
