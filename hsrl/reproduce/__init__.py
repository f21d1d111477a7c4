"""``hsrl reproduce``: the paper's figures and tables at laptop scale, from real runs.

    hsrl reproduce fig3      representations on S¹ (m = 2): random, supervised, contrastive, align/uniform
    hsrl reproduce fig5      alignment vs uniformity vs 5-NN accuracy over a sweep of ≥ 16 objectives
    hsrl reproduce fig8      fine-tuning a contrastive encoder with align only, uniform only, both
    hsrl reproduce theorem1  L_contrastive(τ, M) − log M against its limit, M = 1 … 16384
    hsrl reproduce table     align/uniform vs contrastive, same budget, 3 seeds, mean ± std
    hsrl reproduce multimodal  images and captions of a 2-D two-tower model on S¹, with the modality gap
    hsrl reproduce all       all of them, each in its own sub-folder

Each writes a PNG, the CSV of the numbers it shows and ``report.md`` into ``--output-dir``
(default ``runs/reproduce/<experiment>``). Training runs go to ``--runs-dir`` (default
``<output-dir>/runs``): each is resumable (``fit``'s checkpoints) and skipped when its
``metrics.json`` exists, so re-running a command only redraws. ``--quick`` uses tiny settings
(a few hundred images, a few steps) for CI. Wang & Isola, ICML 2020 (arXiv 2005.10242).
"""

from __future__ import annotations

import importlib

from hsrl.reproduce.common import Context

__all__ = ["EXPERIMENTS", "run_experiment"]

#: experiment name -> one-line summary; each is the module ``hsrl.reproduce.<name>`` with ``run(ctx)``.
EXPERIMENTS: dict[str, str] = {
    "fig3": "representations on S¹ (m = 2) of four encoders: distance histograms and angle densities",
    "fig5": "alignment vs uniformity vs 5-NN accuracy over a sweep of objectives, with Spearman correlations",
    "fig8": "fine-tuning a contrastive encoder with alignment only, uniformity only, or both",
    "theorem1": "the contrastive loss minus log M converging to its limit as the negatives M grow",
    "table": "align/uniform vs contrastive at the same budget over seeds (mean ± std)",
    "multimodal": "images and captions of a 2-D two-tower model on S¹: modality gap, pair distances, densities",
}


def run_experiment(name: str, ctx: Context) -> dict[str, object]:
    """Run one experiment (``ctx.output_dir`` is created) and return its numbers."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r} (choose from {', '.join(EXPERIMENTS)}, all)")
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    module = importlib.import_module(f"hsrl.reproduce.{name}")
    return module.run(ctx)
