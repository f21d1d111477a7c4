"""Choose `make demo`'s settings by measurement: a small sweep of the text recipe on Austen.

    python benchmarks/text_demo_sweep.py --parallel 2 --output benchmarks/results/text_demo_sweep.md

Every configuration fine-tunes the packaged all-MiniLM-L6-v2 with ``recipes/bookcorpus.py`` on
the embedded Austen corpus (*Persuasion* held out) and is read from its own ``metrics.json``:
next-sentence recall@10 on *Persuasion*, alignment and uniformity of held-out neighbour pairs,
and the same on the second-domain set (CIA World Factbook backgrounds) when the recipe reports
it. Runs go ``--parallel`` at a time with one intra-op thread each (2 cores: two runs, one
core each), so every configuration gets the same compute. Results are a Markdown table; a
finished run (its ``metrics.json`` exists) is read back, not retrained.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: name -> recipe flags. Same data and evaluation everywhere; each row changes one thing
#: against the row it is compared with (see the table's notes).
CONFIGS: dict[str, list[str]] = {
    "old demo: a1+u1, lr 3e-5, 60x32": [
        "--loss",
        "align:1,alpha=2 + uniform:1,t=2",
        "--lr",
        "3e-5",
        "--batch-size",
        "32",
        "--max-steps",
        "60",
    ],
    "a1+u1, lr 3e-5, 100x64": ["--loss", "align:1,alpha=2 + uniform:1,t=2", "--lr", "3e-5"],
    "a3+u1, lr 3e-5, 100x64": ["--loss", "align:3,alpha=2 + uniform:1,t=2", "--lr", "3e-5"],
    "a2+u1 t=5, lr 1e-4, 100x64": ["--loss", "align:2,alpha=2 + uniform:1,t=5", "--lr", "1e-4"],
    "a2+u1, lr 3e-5, 100x64": ["--loss", "align:2,alpha=2 + uniform:1,t=2", "--lr", "3e-5"],
    "a1.5+u1, lr 3e-5, 100x64": ["--loss", "align:1.5,alpha=2 + uniform:1,t=2", "--lr", "3e-5"],
    "a1.5+u1, lr 1e-4, 100x64": ["--loss", "align:1.5,alpha=2 + uniform:1,t=2", "--lr", "1e-4"],
    "a1.5+u1, lr 3e-5, 100x64, same-book": [
        "--loss",
        "align:1.5,alpha=2 + uniform:1,t=2",
        "--lr",
        "3e-5",
        "--pairs",
        "same-book",
    ],
    "a1+u1, lr 3e-5, 100x64, same-book": [
        "--loss",
        "align:1,alpha=2 + uniform:1,t=2",
        "--lr",
        "3e-5",
        "--pairs",
        "same-book",
    ],
    "contrastive tau=0.05, lr 3e-5, 100x64": ["--loss", "contrastive:1,tau=0.05", "--lr", "3e-5"],
    "contrastive tau=0.05, lr 1e-4, 100x64": ["--loss", "contrastive:1,tau=0.05", "--lr", "1e-4"],
}
COMMON = [
    "--dataset",
    "austen",
    "--model",
    "minilm",
    "--batch-size",
    "64",
    "--max-steps",
    "100",
    "--max-seq-length",
    "48",
    "--checkpoint-every",
    "100000",
    "--log-with",
    "none",
    "--no-progress",
]


def run(name: str, flags: list[str], runs_dir: Path, extra: list[str], train: bool = True) -> dict:
    folder = runs_dir / "".join(c if c.isalnum() or c in ".-" else "_" for c in name)
    metrics = folder / "metrics.json"
    if not metrics.is_file() and not train:
        return {"name": name, "error": ["not run"]}
    if not metrics.is_file():
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        # Later flags win in argparse, so the configuration's own flags override COMMON.
        cmd = [
            sys.executable,
            str(ROOT / "recipes" / "bookcorpus.py"),
            *COMMON,
            *flags,
            *extra,
            "--output-dir",
            str(folder),
        ]
        started = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            return {"name": name, "error": done.stderr.strip().splitlines()[-1:]}
        (folder / "wall_seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
    data = json.loads(metrics.read_text())
    wall = folder / "wall_seconds.txt"
    return {"name": name, "data": data, "wall": float(wall.read_text()) if wall.is_file() else float("nan")}


def table(results: list[dict]) -> str:
    head = (
        "| configuration | recall@10 (× untouched) | align | uniform | factbook recall@10 (×) "
        "| factbook align | factbook uniform | wall s |"
    )
    lines = [head, "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['name']} | error: {r['error']} | | | | | | |")
            continue
        s = r["data"].get("summary") or {}
        base, trained = r["data"]["baseline"] or {}, r["data"]["trained"]
        rec, brec = trained["recall@10"], base.get("recall@10", float("nan"))
        fb = s.get("factbook_recall@10", float("nan"))
        fbb = s.get("baseline_factbook_recall@10", float("nan"))
        lines.append(
            f"| {r['name']} | {rec:.4f} ({rec / brec:.2f}×) | {trained['align']:.3f} | {trained['uniform']:.3f} "
            f"| {fb:.4f} ({fb / fbb:.2f}×) | {s.get('factbook_align', float('nan')):.3f} "
            f"| {s.get('factbook_uniform', float('nan')):.3f} | {r['wall']:.0f} |"
        )
    with_baseline = [r for r in results if "data" in r and r["data"].get("baseline")]
    # Prefer a run that also measured the untouched model on the second-domain set.
    first = next((r for r in with_baseline if "baseline_factbook_recall@10" in (r["data"].get("summary") or {})),
                 with_baseline[0] if with_baseline else None)  # fmt: skip
    if first:
        b, s = first["data"]["baseline"], first["data"].get("summary") or {}
        lines.append(
            f"| untouched MiniLM | {b['recall@10']:.4f} (1.00×) | {b['align']:.3f} | {b['uniform']:.3f} "
            f"| {s.get('baseline_factbook_recall@10', float('nan')):.4f} (1.00×) "
            f"| {s.get('baseline_factbook_align', float('nan')):.3f} "
            f"| {s.get('baseline_factbook_uniform', float('nan')):.3f} | |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--runs-dir", default="runs/text_demo_sweep")
    parser.add_argument("--output", default="benchmarks/results/text_demo_sweep.md")
    parser.add_argument("--only", nargs="*", help="names (substrings) of the configurations to run")
    parser.add_argument("--report-only", action="store_true", help="tabulate finished runs; train nothing")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="flags added to every run")
    args = parser.parse_args()
    chosen = {k: v for k, v in CONFIGS.items() if not args.only or any(o in k for o in args.only)}
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda kv: run(kv[0], kv[1], Path(args.runs_dir), args.extra, not args.report_only),
                                chosen.items()))  # fmt: skip
    text = table(results)
    print(text)
    Path(args.output).write_text(
        "# `make demo` sweep: all-MiniLM-L6-v2 on Austen, held-out *Persuasion*\n\n"
        f"Command: `python benchmarks/text_demo_sweep.py --parallel {args.parallel}` "
        "(each run: one intra-op thread, two runs at a time on the 2-core machine).\n\n" + text + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
