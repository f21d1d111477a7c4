"""Table: align/uniform vs contrastive at the same budget, over seeds (the paper's Tables 1 and 4).

The paper (STL-10, 5-NN on the output) reports 78.89 % for 0.98·align(α=2) + 0.96·uniform(t=2) and
78.75 % for contrastive with τ = 0.19: the two are close, align/uniform slightly ahead. Here: the same two
objectives (the paper's STL-10 settings), the same encoder, steps, batch and learning rate, over several
seeds; mean ± sample standard deviation of 5-NN accuracy, L_align (α = 2) and L_uniform (t = 2) on the test
images, next to a random encoder of the same architecture and raw pixels (cosine 5-NN).

The text half (the paper's Table 4, BookCorpus) runs ``recipes/bookcorpus.py --dataset austen --model
minilm`` for both objectives over the same seeds: see :mod:`hsrl.reproduce.text_table`.
"""

from __future__ import annotations

import math
import shlex
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hsrl import plots
from hsrl.reproduce import text_table
from hsrl.reproduce.common import (
    UNTRAINED,
    Context,
    EvalSizes,
    ImageBudget,
    RunSpec,
    describe_encoder,
    markdown_table,
    raw_pixel_knn5,
    train_run,
    write_csv,
    write_report,
)

__all__ = ["ENCODERS", "FULL", "QUICK", "TableSettings", "mean_std", "run"]

#: (row name, objective) compared at the same budget; the paper's STL-10 settings.
ENCODERS: tuple[tuple[str, str], ...] = (
    ("align+uniform", "align:0.98,alpha=2 + uniform:0.96,t=2"),
    ("contrastive", "contrastive:1,tau=0.19"),
    ("random init", UNTRAINED),
)
METRICS = ("knn5_accuracy", "alignment", "uniformity")
#: the text section of a report written before the text half has run
TEXT_PENDING = (
    "The text half runs next (`hsrl.reproduce.text_table`) and this report is rewritten with it when it finishes. "
    "If this line is still here, that run was interrupted, and the `table_text.*` files beside this report are "
    "from an earlier run."
)
#: Metrics only some encoders have (the output's 5-NN when the headline layer is another): summarised when present.
OPTIONAL_METRICS = ("output_knn5_accuracy",)
SUMMARY_COLUMNS = [
    "encoder", "objective", "seeds", *(f"{m}_{s}" for m in (*METRICS, *OPTIONAL_METRICS) for s in ("mean", "std"))
]  # fmt: skip


@dataclass(frozen=True)
class TableSettings:
    budget: ImageBudget
    eval_sizes: EvalSizes
    seeds: tuple[int, ...]


FULL = TableSettings(
    ImageBudget(encoder="small_resnet", dim=128, steps=400, batch_size=128),
    EvalSizes(memory=10000, queries=5000),
    (0, 1, 2),
)
QUICK = TableSettings(
    ImageBudget(dim=16, width=8, steps=3, batch_size=64, pretrain_size=512), EvalSizes(memory=400, queries=200), (0, 1)
)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1 in the denominator; NaN for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def run(ctx: Context) -> dict[str, object]:
    """Train (or reuse) every (objective, seed) run; write ``table.png``, two CSVs and ``report.md``."""
    settings = QUICK if ctx.quick else FULL
    start = time.perf_counter()
    per_seed, summary = [], []
    for name, objective in ENCODERS:
        budget = settings.budget if objective != UNTRAINED else ImageBudget(**{**settings.budget.__dict__, "steps": 0})
        results = []
        for seed in settings.seeds:
            spec = RunSpec(
                f"table-{name.replace('+', '-').replace(' ', '-')}-seed{seed}",
                objective,
                budget,
                settings.eval_sizes,
                seed,
            )
            outcome = train_run(spec, ctx)
            results.append(outcome.metrics)
            per_seed.append({"encoder": name, "objective": objective, "seed": seed, **outcome.metrics})
        row: dict[str, object] = {"encoder": name, "objective": objective, "seeds": len(results)}
        for metric in METRICS:
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std([r[metric] for r in results])
        for metric in OPTIONAL_METRICS:
            if all(metric in r for r in results):
                row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std([r[metric] for r in results])
        summary.append(row)
    pixels = raw_pixel_knn5(settings.eval_sizes)
    summary.append(
        {
            "encoder": "raw pixels",
            "objective": "none (cosine on pixels)",
            "seeds": 1,
            "knn5_accuracy_mean": pixels,
            "knn5_accuracy_std": math.nan,
        }
    )
    out = ctx.output_dir
    write_csv(out / "table_per_seed.csv", per_seed, ["encoder", "objective", "seed", *METRICS, *OPTIONAL_METRICS])
    write_csv(out / "table.csv", summary, SUMMARY_COLUMNS)
    plots.table_bars(
        summary,
        out / "table.png",
        title=f"Fashion-MNIST, {settings.budget.encoder}, same budget, {len(settings.seeds)} seeds: mean ± std",
    )
    image_sections = [
        ("Images: setting", _setting_text(settings)),
        ("Images: results (mean ± std over seeds)", _table_text(summary)),
        ("Images: what the paper reports, and what is seen here", _reading(summary)),
    ]
    # The image half is written now: the text half takes far longer, and an interrupted run keeps this report.
    write_report(
        out / "report.md",
        "Table: align/uniform vs contrastive at the same budget (Fashion-MNIST images; Austen text)",
        [*image_sections, ("Text", TEXT_PENDING)],
        ctx,
        time.perf_counter() - start,
    )
    text_summary, text_per_seed, text_settings = text_table.run_text(ctx)
    text_keys = [key for key, _ in text_table.TEXT_METRICS]
    write_csv(out / "table_text_per_seed.csv", text_per_seed, ["encoder", "objective", "seed", *text_keys])
    write_csv(
        out / "table_text.csv",
        text_summary,
        ["encoder", "objective", "seeds", *(f"{k}_{s}" for k in text_keys for s in ("mean", "std"))],
    )
    plots.table_bars(
        text_summary,
        out / "table_text.png",
        title=f"Austen, MiniLM fine-tuned, same budget, {len(text_settings.seeds)} seeds: mean ± std (Persuasion)",
        metrics=text_table.TEXT_METRICS,
    )
    write_report(
        out / "report.md",
        "Table: align/uniform vs contrastive at the same budget (Fashion-MNIST images; Austen text)",
        [
            *image_sections,
            ("Text: setting", _text_setting(text_settings)),
            ("Text: results (mean ± std over seeds, held-out Persuasion)", _text_table(text_summary)),
            ("Text: what the paper reports, and what is seen here", _text_reading(text_summary)),
            (
                "Files",
                "`table.png`, `table.csv` (summary), `table_per_seed.csv`; "
                "`table_text.png`, `table_text.csv`, `table_text_per_seed.csv`.",
            ),
        ],
        ctx,
        time.perf_counter() - start,
    )
    return {"summary": summary, "per_seed": per_seed, "text_summary": text_summary, "text_per_seed": text_per_seed}


def _setting_text(settings: TableSettings) -> str:
    b, e = settings.budget, settings.eval_sizes
    return (
        f"Seeds {', '.join(map(str, settings.seeds))}; each run: {describe_encoder(b)}, "
        f"{b.steps} AdamW steps (lr {b.lr:g}, cosine), batches of {b.batch_size} × 2 random views. "
        f"5-NN on the first {e.queries} test images against the first {e.memory} training images."
    )


def _summary_table(summary: list[dict[str, object]], metrics: Sequence[str]) -> str:
    rows = [
        {"encoder": r["encoder"], "objective": f"`{r['objective']}`", **{m: _cell(r, m) for m in metrics}}
        for r in summary
    ]
    return markdown_table(rows, ["encoder", "objective", *metrics])


def _table_text(summary: list[dict[str, object]]) -> str:
    present = [m for m in OPTIONAL_METRICS if any(f"{m}_mean" in r for r in summary)]
    return _summary_table(summary, [*METRICS, *present])


def _difference(summary: list[dict[str, object]], metric: str) -> tuple[float, float, str]:
    """Align/uniform minus contrastive in the mean of ``metric``, the two stds combined, and the outcome:
    ``tie`` (|difference| ≤ combined std), ``align+uniform`` or ``contrastive`` (ahead beyond it), or
    ``unknown`` (one seed: no spread)."""
    by = {str(r["encoder"]): r for r in summary}
    au, co = by["align+uniform"], by["contrastive"]
    diff = float(au[f"{metric}_mean"]) - float(co[f"{metric}_mean"])  # type: ignore[arg-type]
    spread = math.hypot(float(au[f"{metric}_std"]), float(co[f"{metric}_std"]))  # type: ignore[arg-type]
    if math.isnan(spread):
        return diff, spread, "unknown"
    if abs(diff) <= spread:
        return diff, spread, "tie"
    return diff, spread, "align+uniform" if diff > 0 else "contrastive"


def _reading(summary: list[dict[str, object]]) -> str:
    diff, spread, outcome = _difference(summary, "knn5_accuracy")
    verdict = {
        "unknown": "too few seeds to judge",
        "tie": "within the seed-to-seed spread: a tie, as in the paper (78.89 vs 78.75)",
        "align+uniform": "align/uniform ahead beyond the seed spread, in the paper's direction",
        "contrastive": "contrastive ahead beyond the seed spread, the opposite of the paper's STL-10 result",
    }[outcome]
    return (
        "The paper (STL-10, output + 5-NN): align/uniform 78.89 %, contrastive 78.75 %. Here align/uniform minus "
        f"contrastive = {diff:+.4f} in 5-NN accuracy (combined std {spread:.4f}): {verdict}."
    )


def _cell(row: dict[str, object], metric: str) -> str:
    mean, std = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
    if not isinstance(mean, float):
        return "–"
    return f"{mean:.4f}" + (f" ± {std:.4f}" if isinstance(std, float) and math.isfinite(std) else "")


def _text_setting(settings: text_table.TextSettings) -> str:
    b = settings.budget
    example = text_table.recipe_arguments(
        text_table.TEXT_ENCODERS[0][1], b, settings.seeds[0], Path("runs/table-text/au-0"), cpu=False
    )
    command = "accelerate launch recipes/bookcorpus.py " + " ".join(shlex.quote(a) for a in example)
    held_out = f"the first {b.eval_max_sentences}" if b.eval_max_sentences else "all"
    return (
        f"Seeds {', '.join(map(str, settings.seeds))}; each run: `recipes/bookcorpus.py` on the embedded Austen "
        f"corpus (Persuasion held out), {b.model} fine-tuned for {b.steps} Adam steps of {b.batch_size} "
        f"neighbour-sentence pairs (lr {b.lr:g}, sentences cut at {b.max_seq_length} tokens), then evaluated on "
        f"{held_out} held-out sentences. One run, by hand:\n\n```bash\n{command}\n```"
    )


def _text_table(summary: list[dict[str, object]]) -> str:
    return _summary_table(summary, [key for key, _ in text_table.TEXT_METRICS])


def _text_reading(summary: list[dict[str, object]]) -> str:
    by = {str(r["encoder"]): r for r in summary}
    au, co = by["align+uniform"], by["contrastive"]
    diff, spread, outcome = _difference(summary, "recall@10")
    verdict = {
        "unknown": "too few seeds to judge",
        "tie": "within the seed-to-seed spread: a tie",
        "align+uniform": "align/uniform ahead beyond the seed spread",
        "contrastive": "contrastive ahead beyond the seed spread",
    }[outcome]
    base = next((r for name, r in by.items() if name.startswith("untouched")), None)
    gain = ""
    if base is not None:
        start = float(base["recall@10_mean"])  # type: ignore[arg-type]
        gain = (
            f" Against the untouched model (recall@10 {start:.4f}), align/uniform changes it by "
            f"{float(au['recall@10_mean']) - start:+.4f} and contrastive by "  # type: ignore[arg-type]
            f"{float(co['recall@10_mean']) - start:+.4f}."  # type: ignore[arg-type]
        )
    paper_weights = by.get(text_table.TEXT_ENCODERS[2][0])
    collapse = ""
    if paper_weights is not None and isinstance(paper_weights.get("uniform_mean"), float):
        uniform = float(paper_weights["uniform_mean"])  # type: ignore[arg-type]
        align = float(paper_weights["align_mean"])  # type: ignore[arg-type]
        state = "has collapsed" if uniform > -1.0 else "has not collapsed"
        collapse = (
            f" With the paper's own BookCorpus weights (`{text_table.TEXT_ENCODERS[2][1]}`), MiniLM {state}: "
            f"L_uniform {uniform:.3f} (0 means every sentence on one point) and L_align {align:.3f}, recall@10 "
            f"{float(paper_weights['recall@10_mean']):.4f}. Those weights were chosen for GRUs trained from "  # type: ignore[arg-type]
            "scratch; on a pretrained model the 9:1 pull towards alignment wins, which is the paper's own point "
            "that both properties are needed."
        )
    return (
        "The paper (BookCorpus, Quick-Thought GRU encoders trained from scratch, 7 transfer tasks) finds "
        "align/uniform on par with or slightly ahead of its contrastive objective. Here, fine-tuning a pretrained "
        f"MiniLM briefly, align/uniform minus contrastive = {diff:+.4f} in next-sentence recall@10 (combined std "
        f"{spread:.4f}): {verdict}.{gain} The setting differs from the paper's (a pretrained transformer, one "
        "small corpus, retrieval on a held-out novel rather than SentEval transfer), so this checks the "
        f"direction, not the paper's numbers.{collapse}"
    )
