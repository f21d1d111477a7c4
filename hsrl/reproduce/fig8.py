"""Figure 8: fine-tuning a contrastive encoder with alignment only, uniformity only, or both.

The paper starts from an encoder trained with the contrastive loss and keeps training it with
one of the two terms: alignment alone collapses the features (alignment improves, uniformity and
accuracy get worse), uniformity alone spreads them but pulls positive pairs apart (alignment and
accuracy get worse), and both together keep or improve accuracy. Here each fine-tuning run is
evaluated every ``eval_every`` steps (5-NN accuracy, L_align, L_uniform on the test images);
step 0 is the contrastive encoder itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from hsrl import plots
from hsrl.reproduce.common import (
    Context,
    EvalSizes,
    ImageBudget,
    RunSpec,
    describe_encoder,
    markdown_table,
    train_run,
    write_csv,
    write_report,
)

__all__ = ["FINE_TUNES", "FULL", "QUICK", "Fig8Settings", "run"]

BASE_OBJECTIVE = "contrastive:1,tau=0.2"
#: (label, objective) of each fine-tuning run.
FINE_TUNES: tuple[tuple[str, str], ...] = (
    ("align only", "align:1,alpha=2"),
    ("uniform only", "uniform:1,t=2"),
    ("align + uniform", "align:1,alpha=2 + uniform:1,t=2"),
)
COLUMNS = ["fine_tune", "objective", "step", "knn5_accuracy", "alignment", "uniformity", "output_knn5_accuracy"]


@dataclass(frozen=True)
class Fig8Settings:
    base: ImageBudget
    fine_tune: ImageBudget
    eval_every: int
    eval_sizes: EvalSizes


FULL = Fig8Settings(
    base=ImageBudget(encoder="small_resnet", dim=128, steps=600, batch_size=128),
    fine_tune=ImageBudget(encoder="small_resnet", dim=128, steps=200, batch_size=128, lr=1e-3),
    eval_every=25,
    eval_sizes=EvalSizes(memory=10000, queries=3000),
)
QUICK = Fig8Settings(
    base=ImageBudget(dim=16, width=8, steps=3, batch_size=64, pretrain_size=512),
    fine_tune=ImageBudget(dim=16, width=8, steps=4, batch_size=64, lr=1e-3, pretrain_size=512),
    eval_every=2,
    eval_sizes=EvalSizes(memory=400, queries=200),
)


def run(ctx: Context) -> dict[str, object]:
    """Train (or reuse) the contrastive encoder and its three fine-tunes; write ``fig8.png``, CSV, report."""
    settings = QUICK if ctx.quick else FULL
    start = time.perf_counter()
    base = train_run(RunSpec("fig8-base-contrastive", BASE_OBJECTIVE, settings.base, settings.eval_sizes), ctx)
    trajectories, rows = {}, []
    for label, objective in FINE_TUNES:
        spec = RunSpec(
            name=f"fig8-finetune-{label.replace(' ', '').replace('+', '-')}",
            objective=objective,
            budget=settings.fine_tune,
            eval_sizes=settings.eval_sizes,
            init_from=str(base.folder),
            eval_every=settings.eval_every,
            schedule="constant",  # fine-tuning in segments: a decaying schedule would restart each segment
        )
        outcome = train_run(spec, ctx)
        trajectories[label] = outcome.trajectory
        rows += [{"fine_tune": label, "objective": objective, **point} for point in outcome.trajectory]
    out = ctx.output_dir
    write_csv(out / "fig8_trajectories.csv", rows, COLUMNS)
    plots.figure8(
        trajectories,
        out / "fig8.png",
        title=f"Fine-tuning a contrastive encoder ({BASE_OBJECTIVE}) with one term or both, Fashion-MNIST",
    )
    ends = [
        {"fine_tune": label, **{k: points[-1][k] - points[0][k] for k in COLUMNS[3:] if k in points[-1]}}
        for label, points in trajectories.items()
    ]
    write_report(
        out / "report.md",
        "Figure 8: fine-tuning with alignment only, uniformity only, or both (Fashion-MNIST)",
        [
            ("Setting", _setting_text(settings)),
            (
                "Change from the contrastive encoder to the end of fine-tuning",
                markdown_table(ends, ["fine_tune", *COLUMNS[3:]]),
            ),
            ("What the paper shows, and whether it holds here", _reading(ends)),
            ("Files", "`fig8.png`, `fig8_trajectories.csv` (every evaluation)."),
        ],
        ctx,
        time.perf_counter() - start,
    )
    return {"trajectories": trajectories, "base": base.metrics}


def _setting_text(settings: Fig8Settings) -> str:
    b, f, e = settings.base, settings.fine_tune, settings.eval_sizes
    return (
        f"Start: `{BASE_OBJECTIVE}`, {b.steps} AdamW steps (lr {b.lr:g}, cosine), {describe_encoder(b)}, "
        f"batches of {b.batch_size} × 2 views. Fine-tuning: {f.steps} AdamW steps at a constant "
        f"lr {f.lr:g}, evaluated every {settings.eval_every} steps: 5-NN on the first {e.queries} test images "
        f"against the first {e.memory} training images, L_align (α = 2) over two views of each test image, "
        "L_uniform (t = 2) over the clean test images."
    )


def _reading(ends: list[dict[str, object]]) -> str:
    by = {str(r["fine_tune"]): r for r in ends}

    def sign(label: str, key: str) -> str:
        value = float(by[label][key])  # type: ignore[arg-type]
        return f"{'rose' if value > 0 else 'fell'} by {abs(value):.4f}"

    return (
        "The paper: alignment alone improves alignment but destroys uniformity and accuracy; uniformity alone "
        "improves uniformity but worsens alignment and accuracy; both together do not hurt. Here: "
        f"align only — L_align {sign('align only', 'alignment')}, L_uniform {sign('align only', 'uniformity')}, "
        f"accuracy {sign('align only', 'knn5_accuracy')}; uniform only — L_align {sign('uniform only', 'alignment')}, "
        f"L_uniform {sign('uniform only', 'uniformity')}, accuracy {sign('uniform only', 'knn5_accuracy')}; "
        f"both — accuracy {sign('align + uniform', 'knn5_accuracy')}."
    )
