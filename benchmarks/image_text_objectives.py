"""Cross-modal align/uniform against CLIP's InfoNCE and SigLIP at the same wall-clock budget, with a linear probe.

    python benchmarks/image_text_objectives.py --budget-min 10 --seeds 0 1 2
    python benchmarks/image_text_objectives.py --budget-min 10 --seeds 0 1 2 --jobs 2   # two runs at a time

Each objective trains ``recipes/image_text.py``'s default two towers (SmallAlexNet image tower, locked
MiniLM text tower, projections to 128) on Fashion-MNIST with generated captions for ``--budget-min`` minutes
of training, once per seed, then is evaluated as the recipe does (held-out prompts). The linear probe on the
image tower's embeddings (the 60k labelled training images) is the supervised reference on the same features.
Writes the table to ``--out`` (mean ± sample standard deviation over seeds when there are several). A run whose
folder already has its ``metrics.json`` is read back, not trained again (delete ``--runs`` to start over).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _report import publish

OBJECTIVES = {
    "align/uniform": "align:1,alpha=2 + uniform:1,t=2",
    "CLIP InfoNCE (learnable τ)": "clip:1,tau=0.07",
    "SigLIP (learnable t, b)": "siglip:1,t=10",
}
COLUMNS = ("zero_shot_accuracy", "text_to_image_precision@10", "text_to_image_recall@10",
           "image_to_text_recall@10", "modality_gap", "align", "uniform_image", "uniform_text",
           "linear_probe_accuracy")  # fmt: skip


def run(objective: str, seed: int, budget: float, out: Path, threads: int | None = None) -> dict[str, float]:
    command = [sys.executable, "recipes/image_text.py", "--loss", objective, "--seed", str(seed), "--time-budget-min",
               str(budget), "--output-dir", str(out), "--linear-probe", "--no-progress", "--log-with", "none",
               "--checkpoint-every", "none"]  # fmt: skip
    if threads is not None:
        command += ["--threads", str(threads)]
    if not (out / "metrics.json").is_file():  # a finished run is read back, not trained again
        subprocess.run(command, check=True)
    metrics = json.loads((out / "metrics.json").read_text())
    return {**metrics["summary"], "steps": metrics["steps"]}


def cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-min", type=float, default=10.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", default="runs/image_text_objectives")
    parser.add_argument("--out", default="benchmarks/results/image_text_objectives.md")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, each with cores/jobs intra-op threads")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
    # Seeds outside, objectives inside: with --jobs 2 every objective runs next to each of the others.
    plan = [(name, objective, seed) for seed in args.seeds for name, objective in OBJECTIVES.items()]

    def one(item: tuple[str, str, int]) -> dict[str, float]:
        name, objective, seed = item
        slug = name.split()[0].replace("/", "-").lower()
        summary = run(objective, seed, args.budget_min, Path(args.runs) / f"{slug}-seed{seed}", threads)
        print(name, seed, json.dumps(summary), flush=True)
        return summary

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        summaries = list(pool.map(one, plan))
    results: dict[str, list[dict[str, float]]] = {}
    for name in OBJECTIVES:
        results[name] = [summary for (run_name, _, _), summary in zip(plan, summaries, strict=True) if run_name == name]
    header = "| objective | steps | " + " | ".join(COLUMNS) + " |"
    lines = [
        "# Image–text objectives at equal wall-clock budget (Fashion-MNIST, generated captions)",
        "",
        f"- command: `python benchmarks/image_text_objectives.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {args.budget_min:g} min of training per run, "
        f"seeds {', '.join(map(str, args.seeds))}; recipe defaults otherwise"
        + (f"; {args.jobs} runs at a time, {threads} thread(s) each" if args.jobs > 1 else "")
        + "; cells: mean ± sample standard deviation over the seeds",
        "",
        header,
        "| " + " | ".join(["---"] * (len(COLUMNS) + 2)) + " |",
    ]
    for name, runs in results.items():
        counts = [float(r["steps"]) for r in runs]
        steps = f"{statistics.mean(counts):.0f}" + (f" ± {statistics.stdev(counts):.0f}" if len(counts) > 1 else "")
        lines.append(f"| {name} | {steps} | " + " | ".join(cell([r[c] for r in runs]) for c in COLUMNS) + " |")
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
