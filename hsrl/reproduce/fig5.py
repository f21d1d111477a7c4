"""Figure 5: alignment vs uniformity vs accuracy over a sweep of objectives.

The paper (STL-10, NYU-Depth) trains many encoders with different objectives and finds that the
accurate ones have both low L_align and low L_uniform: accuracy rises towards the lower-left corner
of the (L_uniform, L_align) plane. Here: one short Fashion-MNIST run per objective of :data:`SWEEP`
(contrastive τ; align/uniform weight λ, α and t; each term alone), 5-NN accuracy on the test images,
and the Spearman rank correlation of each metric with accuracy (negative = lower metric, more accurate).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from scipy.stats import spearmanr

from hsrl import plots
from hsrl.reproduce.common import (
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

__all__ = ["FULL", "QUICK", "SWEEP", "Fig5Settings", "SweepPoint", "run", "spearman"]


@dataclass(frozen=True)
class SweepPoint:
    """One objective of the sweep: its family (the plot's marker), a short label and the objective string."""

    family: str
    label: str
    objective: str


SWEEP: tuple[SweepPoint, ...] = (
    *(SweepPoint("contrastive", f"τ={tau:g}", f"contrastive:1,tau={tau:g}") for tau in (0.05, 0.1, 0.2, 0.5, 1, 2)),
    *(
        SweepPoint("align+uniform", f"λ={lam:g}", f"align:1,alpha=2 + uniform:{lam:g},t=2")
        for lam in (0.1, 0.3, 1, 3, 10)
    ),
    *(SweepPoint("align+uniform", f"α={a:g}", f"align:1,alpha={a:g} + uniform:1,t=2") for a in (1, 3)),
    *(SweepPoint("align+uniform", f"t={t:g}", f"align:1,alpha=2 + uniform:1,t={t:g}") for t in (1, 5)),
    SweepPoint("align only", "align", "align:1,alpha=2"),
    SweepPoint("uniform only", "uniform", "uniform:1,t=2"),
)


@dataclass(frozen=True)
class Fig5Settings:
    budget: ImageBudget
    eval_sizes: EvalSizes
    points: tuple[SweepPoint, ...]


FULL = Fig5Settings(
    ImageBudget(encoder="small_resnet", dim=128, steps=400, batch_size=128),
    EvalSizes(memory=10000, queries=5000),
    SWEEP,
)
#: CI: one point of each family on tiny settings.
QUICK = Fig5Settings(
    ImageBudget(dim=16, width=8, steps=3, batch_size=64, pretrain_size=512),
    EvalSizes(memory=400, queries=200),
    (SWEEP[2], SWEEP[8], SWEEP[-2], SWEEP[-1]),
)
COLUMNS = ["family", "label", "objective", "knn5_accuracy", "alignment", "uniformity", "output_knn5_accuracy", "run"]
SPEARMAN_COLUMNS = ["metric", "accuracy", "spearman_rho", "p_value", "runs"]


def spearman(values: list[float], accuracy: list[float]) -> tuple[float, float]:
    """Spearman's ρ of ``values`` with ``accuracy`` and its two-sided p-value (NaN when undefined).

    ρ is Pearson's correlation of the ranks: ρ = 1 − 6 Σ dᵢ² / (n(n² − 1)) without ties.
    """
    if len(values) < 3 or len(set(values)) < 2 or len(set(accuracy)) < 2:
        return math.nan, math.nan
    result = spearmanr(values, accuracy)
    return float(result.statistic), float(result.pvalue)


def run(ctx: Context) -> dict[str, object]:
    """Run (or reuse) every sweep point and write ``fig5.png``, ``fig5_sweep.csv`` and ``report.md``."""
    settings = QUICK if ctx.quick else FULL
    start = time.perf_counter()
    rows = []
    for i, point in enumerate(settings.points):
        spec = RunSpec(
            name=f"fig5-{i:02d}-{point.objective.replace(' ', '').replace(':', '').replace(',', '_')}",
            objective=point.objective,
            budget=settings.budget,
            eval_sizes=settings.eval_sizes,
        )
        outcome = train_run(spec, ctx)
        rows.append(
            {
                "family": point.family,
                "label": point.label,
                "objective": point.objective,
                **outcome.metrics,
                "run": outcome.folder.name,
            }
        )
    accuracy = [float(r["knn5_accuracy"]) for r in rows]
    rho_align, p_align = spearman([float(r["alignment"]) for r in rows], accuracy)
    rho_uniform, p_uniform = spearman([float(r["uniformity"]) for r in rows], accuracy)
    pixels = raw_pixel_knn5(settings.eval_sizes)
    out = ctx.output_dir
    write_csv(out / "fig5_sweep.csv", rows, COLUMNS)
    correlations = [
        {"metric": "alignment", "accuracy": "knn5_accuracy", "spearman_rho": rho_align, "p_value": p_align,
         "runs": len(rows)},
        {"metric": "uniformity", "accuracy": "knn5_accuracy", "spearman_rho": rho_uniform, "p_value": p_uniform,
         "runs": len(rows)},
    ]  # fmt: skip
    if all("output_knn5_accuracy" in r for r in rows):  # the headline layer is not the output: rank both
        at_output = [float(r["output_knn5_accuracy"]) for r in rows]
        for metric in ("alignment", "uniformity"):
            rho, p = spearman([float(r[metric]) for r in rows], at_output)
            correlations.append({"metric": metric, "accuracy": "output_knn5_accuracy", "spearman_rho": rho,
                                 "p_value": p, "runs": len(rows)})  # fmt: skip
    write_csv(out / "fig5_spearman.csv", correlations, SPEARMAN_COLUMNS)
    plots.figure5(
        rows,
        out / "fig5.png",
        title=f"{len(rows)} runs on Fashion-MNIST\nSpearman ρ with 5-NN accuracy: "
        f"alignment {rho_align:.2f}, uniformity {rho_uniform:.2f}",
    )
    write_report(
        out / "report.md",
        "Figure 5: alignment vs uniformity vs 5-NN accuracy, Fashion-MNIST",
        [
            ("Setting", _setting_text(settings)),
            (
                "Spearman correlation with 5-NN accuracy",
                markdown_table(correlations, SPEARMAN_COLUMNS),
            ),
            ("Runs", markdown_table(rows, COLUMNS[:-1])),
            ("Baseline", _baseline_text(pixels, rows)),
            ("What the paper claims, and whether it holds here", _reading(rho_align, rho_uniform, rows)),
            ("Files", "`fig5.png`, `fig5_sweep.csv`, `fig5_spearman.csv`."),
        ],
        ctx,
        time.perf_counter() - start,
    )
    return {"rows": rows, "spearman": {"alignment": rho_align, "uniformity": rho_uniform}, "raw_pixels": pixels}


def _baseline_text(pixels: float, rows: list[dict[str, object]]) -> str:
    """How many encoders beat raw pixels, naming the smaller group (the ones below, or the ones above)."""
    above = [r for r in rows if float(r["knn5_accuracy"]) > pixels]  # type: ignore[arg-type]
    below = [r for r in rows if r not in above]
    names = ", ".join(f"`{r['objective']}`" for r in (below if len(above) > len(below) else above))
    which = "" if not above or not below else f" ({'all but' if len(above) > len(below) else 'only'} {names})"
    return (
        f"Raw pixels (L2-normalised, same memory and queries): 5-NN {pixels:.4f}. {len(above)} of {len(rows)} "
        f"encoders beat it{which}."
    )


def _setting_text(settings: Fig5Settings) -> str:
    b, e = settings.budget, settings.eval_sizes
    return (
        f"{len(settings.points)} runs, one per objective; each: {describe_encoder(b)}; "
        f"{b.steps} AdamW steps (lr {b.lr:g}, cosine), batches of {b.batch_size} × 2 views, seed 0. 5-NN on the "
        f"first {e.queries} test images against the first {e.memory} training images; L_align (α = 2) over two "
        "random views of each test image; L_uniform (t = 2) over the clean test images."
    )


def _reading(rho_align: float, rho_uniform: float, rows: list[dict[str, object]]) -> str:
    best = max(rows, key=lambda r: float(r["knn5_accuracy"]))  # type: ignore[arg-type]

    def verdict(rho: float) -> str:
        if math.isnan(rho):
            return "undefined (too few or constant values)"
        return "agrees (lower is more accurate)" if rho < 0 else "does not agree (lower is not more accurate)"

    def point(family: str) -> str:
        found = [r for r in rows if r["family"] == family]
        if not found:
            return ""
        r = found[0]
        return (
            f" {family}: L_align {float(r['alignment']):.3f}, L_uniform {float(r['uniformity']):.3f}, "  # type: ignore[arg-type]
            f"accuracy {float(r['knn5_accuracy']):.4f};"  # type: ignore[arg-type]
        )

    return (
        "The paper: accurate encoders have both low alignment and low uniformity loss. "
        f"Here, alignment vs accuracy: ρ = {rho_align:.2f}, {verdict(rho_align)}; uniformity vs accuracy: "
        f"ρ = {rho_uniform:.2f}, {verdict(rho_uniform)}. The most accurate run is `{best['objective']}` "
        f"({float(best['knn5_accuracy']):.4f}: L_align {float(best['alignment']):.3f}, "  # type: ignore[arg-type]
        f"L_uniform {float(best['uniformity']):.3f}). A rank correlation of one metric at a time can mislead when "  # type: ignore[arg-type]
        "the runs trade one metric against the other, from well aligned but not uniform to uniform but not "
        "aligned:" + point("align only") + point("uniform only") + " the claim is about having both low, i.e. "
        "where on that curve the accurate runs sit (see the figure)."
    )
