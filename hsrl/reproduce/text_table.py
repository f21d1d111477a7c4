"""Text half of the table: the text pipeline with align/uniform and with contrastive, same budget, seeds.

The paper's Table 4 (BookCorpus, Quick-Thought encoders, 7 downstream tasks) finds align/uniform on par with or a
little ahead of the contrastive objective. Here each (objective, seed) is one run of the text pipeline
(:func:`hsrl.pipelines.bookcorpus.run`, what ``recipes/bookcorpus.py`` runs) on the embedded Austen corpus, fine-
tuning the packaged all-MiniLM-L6-v2, and the numbers are the recipe's own held-out evaluation on *Persuasion*
(never trained on): next-sentence retrieval (recall@1/10, MRR@10 over every sentence of the book), book attribution
by 5-NN (even chapters → odd ones), and L_align / L_uniform of held-out neighbour pairs. The untouched MiniLM is
measured in the same runs (the recipe's baseline).

Runs are found again by a hash of their settings: a finished run (its ``metrics.json`` exists) is read, an
interrupted one resumes from its last checkpoint (``--resume latest``).
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from hsrl.pipelines import bookcorpus
from hsrl.reproduce.common import TRAINED_RUNS, Context

__all__ = [
    "FULL",
    "QUICK",
    "TEXT_ENCODERS",
    "TEXT_METRICS",
    "TextBudget",
    "TextSettings",
    "recipe_arguments",
    "run_text",
]

#: (row name, objective). The first two are the comparison (``make demo``'s objectives); the third is the
#: paper's BookCorpus weighting, which suits GRUs trained from scratch but collapses a pretrained MiniLM (its
#: alignment term outweighs uniformity 9:1), kept so that the table shows it.
TEXT_ENCODERS: tuple[tuple[str, str], ...] = (
    ("align+uniform", "align:1,alpha=2 + uniform:1,t=2"),
    ("contrastive", "contrastive:1,tau=0.05"),
    ("align+uniform, paper's BookCorpus weights", "align:0.9,alpha=2 + uniform:0.1,t=5"),
)
#: (metric key in the recipe's metrics.json, axis label).
TEXT_METRICS: tuple[tuple[str, str], ...] = (
    ("recall@10", "next-sentence recall@10"),
    ("mrr@10", "next-sentence MRR@10"),
    ("attribution_knn5", "book attribution, 5-NN"),
    ("align", "L_align (α = 2)"),
    ("uniform", "L_uniform (t = 2)"),
)


@dataclass(frozen=True)
class TextBudget:
    """One text run: the recipe's flags that matter for the comparison (the rest are its defaults)."""

    model: str = "minilm"
    steps: int = 60
    batch_size: int = 32
    lr: float = 3e-5
    max_seq_length: int = 48
    eval_max_sentences: int | None = None


@dataclass(frozen=True)
class TextSettings:
    budget: TextBudget
    seeds: tuple[int, ...]


FULL = TextSettings(TextBudget(), (0, 1, 2))
QUICK = TextSettings(TextBudget(steps=2, batch_size=8, max_seq_length=16, eval_max_sentences=60), (0, 1))


def run_key(objective: str, budget: TextBudget, seed: int) -> str:
    payload = json.dumps({"objective": objective, "budget": asdict(budget), "seed": seed}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:10]


def run_settings(objective: str, budget: TextBudget, seed: int, folder: Path, *, cpu: bool) -> dict[str, object]:
    """The text pipeline's settings for one run (:class:`~hsrl.pipelines.bookcorpus.BookCorpusConfig` fields)."""
    settings: dict[str, object] = {
        "dataset": "austen", "model": budget.model, "loss": objective, "seed": seed, "max_steps": budget.steps,
        "batch_size": budget.batch_size, "lr": budget.lr, "max_seq_length": budget.max_seq_length,
        "checkpoint_every": _checkpoint_every(budget.steps), "log_with": "none", "output_dir": str(folder),
    }  # fmt: skip
    if budget.eval_max_sentences is not None:
        settings["eval_max_sentences"] = budget.eval_max_sentences
    if cpu:
        settings["cpu"] = True
    return settings


def _checkpoint_every(steps: int) -> int:
    """Half-way and at the end, so an interrupted run resumes; a run of under 10 steps restarts cheaply and keeps
    only the end (each checkpoint of MiniLM with its optimiser state is 270 MB)."""
    return steps if steps < 10 else steps // 2


def recipe_arguments(objective: str, budget: TextBudget, seed: int, folder: Path, *, cpu: bool) -> list[str]:
    """The same run as ``recipes/bookcorpus.py`` flags (printed in the report, so it can be rerun by hand)."""
    argv: list[str] = []
    for key, value in run_settings(objective, budget, seed, folder, cpu=cpu).items():
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return argv


def _train_or_reuse(objective: str, budget: TextBudget, seed: int, ctx: Context) -> dict:
    family = next(term for term in ("align", "contrastive") if objective.startswith(term))
    folder = ctx.runs_dir / f"text-{family}-seed{seed}-{run_key(objective, budget, seed)}"
    metrics = folder / "metrics.json"
    if not metrics.is_file():
        settings = run_settings(objective, budget, seed, folder, cpu=ctx.device.type == "cpu")
        if any((folder / "checkpoints").glob("*")):
            settings["resume"] = "latest"
        ctx.log(f"  text run {folder.name}: training ({budget.steps} steps)")
        code = bookcorpus.run(bookcorpus.BookCorpusConfig(**settings))
        TRAINED_RUNS.append(folder.name)
        if code != 0 or not metrics.is_file():
            raise ValueError(f"the text recipe failed on {folder} (exit {code}); see the lines above")
    return json.loads(metrics.read_text())


def run_text(ctx: Context) -> tuple[list[dict[str, object]], list[dict[str, object]], TextSettings]:
    """Train (or reuse) every (objective, seed) text run; return (summary rows, per-seed rows, settings)."""
    settings = QUICK if ctx.quick else FULL
    per_seed: list[dict[str, object]] = []
    baselines: list[dict] = []
    for name, objective in TEXT_ENCODERS:
        for seed in settings.seeds:
            result = _train_or_reuse(objective, settings.budget, seed, ctx)
            per_seed.append({"encoder": name, "objective": objective, "seed": seed, **_pick(result["trained"])})
            if result.get("baseline"):
                baselines.append(_pick(result["baseline"]))
    rows = [_summarise(name, objective, [r for r in per_seed if r["encoder"] == name])
            for name, objective in TEXT_ENCODERS]  # fmt: skip
    if baselines:  # the untouched model: the same numbers in every run (no randomness in its evaluation)
        rows.append(_summarise(f"untouched {settings.budget.model}", "none (no training)", baselines[:1]))
    return rows, per_seed, settings


def _pick(metrics: dict) -> dict[str, float]:
    return {key: float(metrics[key]) for key, _ in TEXT_METRICS if key in metrics}


def _summarise(name: str, objective: str, results: list[dict]) -> dict[str, object]:
    row: dict[str, object] = {"encoder": name, "objective": objective, "seeds": len(results)}
    for key, _ in TEXT_METRICS:
        values = [float(r[key]) for r in results if key in r]
        if values:
            row[f"{key}_mean"] = statistics.fmean(values)
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else math.nan
    return row
