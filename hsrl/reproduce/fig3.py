"""Figure 3: representations on the circle S¹ (m = 2) of four encoders.

The paper (CIFAR-10) shows that contrastive and align/uniform encoders put their features almost
uniformly around the circle while keeping positive pairs close, whereas a random encoder collapses
and a supervised one forms a few tight class clusters (aligned, not uniform). Here: Fashion-MNIST,
the small CNN with a 2-D output, four encoders:

* random init: the seeded initial weights, never trained;
* supervised: encoder + linear classifier on its normalised features, cross-entropy;
* contrastive: InfoNCE with in-batch negatives;
* align/uniform: ``align:1,alpha=2 + uniform:1,t=2``.

Per encoder, from the test images: the histogram of positive-pair distances ‖f(x) − f(y)‖₂ (two random
views of each image; alignment) and the wrapped Gaussian KDE of the features' angle (uniformity),
with the mean distance, L_align (α = 2) and L_uniform (t = 2) in the panel titles.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import numpy as np

from hsrl import plots
from hsrl.metrics import angle_density, positive_distance_histogram
from hsrl.reproduce.common import (
    SUPERVISED,
    UNTRAINED,
    Context,
    EvalSizes,
    ImageBudget,
    RunSpec,
    evaluate_encoder,
    load_run_encoder,
    markdown_table,
    train_run,
    write_csv,
    write_report,
)

__all__ = ["ENCODERS", "FULL", "QUICK", "Fig3Settings", "run"]

#: (panel name, objective); ``None`` is the untrained random encoder.
ENCODERS: tuple[tuple[str, str | None], ...] = (
    ("random init", None),
    ("supervised", SUPERVISED),
    ("contrastive (τ=0.5)", "contrastive:1,tau=0.5"),
    ("align + uniform", "align:1,alpha=2 + uniform:1,t=2"),
)


@dataclass(frozen=True)
class Fig3Settings:
    budget: ImageBudget
    eval_sizes: EvalSizes
    bins: int = 40


FULL = Fig3Settings(ImageBudget(dim=2, steps=300, batch_size=128), EvalSizes(memory=10000, queries=5000))
QUICK = Fig3Settings(
    ImageBudget(dim=2, width=8, steps=4, batch_size=64, pretrain_size=512), EvalSizes(memory=400, queries=200), bins=20
)


def run(ctx: Context) -> dict[str, object]:
    """Train (or reuse) the four 2-D encoders and write ``fig3.png``, three CSVs and ``report.md``."""
    settings = QUICK if ctx.quick else FULL
    start = time.perf_counter()
    panels, summary, hist_rows, angle_rows = [], [], [], []
    for name, objective in ENCODERS:
        budget = settings.budget
        if objective is None:
            # steps=0: the run only evaluates (and saves) the seeded initial weights.
            budget = ImageBudget(**{**budget.__dict__, "steps": 0})
        spec = RunSpec(
            name=f"fig3-{_slug(name)}", objective=objective or UNTRAINED, budget=budget, eval_sizes=settings.eval_sizes
        )
        outcome = train_run(spec, ctx, keep_features=True)
        ev = outcome.evaluation or evaluate_encoder(
            load_run_encoder(outcome.folder, budget, ctx.device), settings.eval_sizes, ctx.device, keep_features=True
        )
        assert ev.features is not None and ev.view1 is not None and ev.view2 is not None and ev.labels is not None
        hist = positive_distance_histogram(ev.view1, ev.view2, bins=settings.bins)
        density = angle_density(ev.features)
        panels.append(
            plots.Figure3Panel(name, hist, density, ev.labels.numpy(), ev.alignment, ev.uniformity, ev.knn5_accuracy)
        )
        summary.append(
            {
                "encoder": name,
                "objective": objective or "none (random init)",
                "knn5_accuracy": ev.knn5_accuracy,
                "alignment": ev.alignment,
                "uniformity": ev.uniformity,
                "mean_distance": hist.mean_distance,
                "num_pairs": hist.num_pairs,
                "max_norm_error": float((ev.features.norm(dim=1) - 1).abs().max()),
            }
        )
        hist_rows += [
            {"encoder": name, "bin_low": float(lo), "bin_high": float(hi), "count": int(c), "density": float(d)}
            for lo, hi, c, d in zip(hist.edges[:-1], hist.edges[1:], hist.counts, hist.density, strict=True)
        ]
        angle_rows += [
            {"encoder": name, "angle": float(a), "density": float(d)}
            for a, d in zip(density.grid, density.density, strict=True)
        ]
    out = ctx.output_dir
    plots.figure3(panels, out / "fig3.png")
    columns = ["encoder", "objective", "knn5_accuracy", "alignment", "uniformity", "mean_distance", "num_pairs"]
    write_csv(out / "fig3_summary.csv", summary, [*columns, "max_norm_error"])
    write_csv(out / "fig3_histograms.csv", hist_rows, ["encoder", "bin_low", "bin_high", "count", "density"])
    write_csv(out / "fig3_angle_density.csv", angle_rows, ["encoder", "angle", "density"])
    write_report(
        out / "report.md",
        "Figure 3: representations on S¹ (m = 2), Fashion-MNIST",
        [
            ("Setting", _setting_text(settings)),
            ("Numbers (test set)", markdown_table(summary, columns)),
            ("What the paper shows, and what to look for", _reading(summary)),
            ("Files", "`fig3.png`, `fig3_summary.csv`, `fig3_histograms.csv`, `fig3_angle_density.csv`."),
        ],
        ctx,
        time.perf_counter() - start,
    )
    return {"summary": summary}


def _slug(name: str) -> str:
    """``"align + uniform"`` -> ``"align-uniform"``: a readable folder name."""
    return re.sub(r"[^0-9a-zA-Z]+", "-", name.split(" (")[0]).strip("-")


def _setting_text(settings: Fig3Settings) -> str:
    b, e = settings.budget, settings.eval_sizes
    return (
        f"Small CNN (width {b.width}) with a {b.dim}-D normalised output; {b.steps} AdamW steps (lr {b.lr:g}, cosine), "
        f"batches of {b.batch_size} images × 2 random views, from the first {b.pretrain_size} training images. "
        f"Evaluation: the first {e.queries} test images (features; two random views each for the distance "
        f"histogram), 5-NN against the first {e.memory} training images. Histogram: {settings.bins} bins on [0, 2]."
    )


def _reading(summary: list[dict[str, object]]) -> str:
    best_uniform = min(summary, key=lambda r: float(r["uniformity"]))  # type: ignore[arg-type]
    best_aligned = min(summary, key=lambda r: float(r["alignment"]))  # type: ignore[arg-type]
    spread = {str(r["encoder"]): float(r["uniformity"]) for r in summary}  # type: ignore[arg-type]
    return (
        "The paper: unsupervised contrastive and align/uniform encoders spread features evenly over the circle "
        "and keep positive pairs close; random features are neither; supervised features sit in class clusters. "
        f"Here the most uniform encoder is **{best_uniform['encoder']}** and the best aligned is "
        f"**{best_aligned['encoder']}**. Uniformity per encoder: "
        + ", ".join(f"{k} {v:.3f}" for k, v in spread.items())
        + f". On S¹ the most uniform value possible (t = 2) is log I₀(4)e⁻⁴ ≈ {np.log(np.i0(4.0)) - 4:.3f}."
    )
