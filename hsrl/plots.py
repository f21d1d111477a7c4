"""The paper's figures, drawn headless from plain numbers.

Every function takes the data (numpy arrays, dicts; computed by :mod:`hsrl.metrics` and
:mod:`hsrl.reproduce`) and a path, and writes one PNG. Figures are built with matplotlib's
object-oriented API on an Agg canvas (``matplotlib.figure.Figure``), so nothing touches
pyplot's global state or needs a display, and they can be drawn from any thread.

Wang & Isola, *Understanding Contrastive Representation Learning through Alignment and
Uniformity on the Hypersphere*, ICML 2020: Figure 3 (features on S¹), Figure 5 (alignment vs
uniformity vs accuracy), Figure 8 (fine-tuning with one term), Theorem 1 (the limit of the
contrastive loss).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from hsrl.metrics import AngleDensity, DistanceHistogram

__all__ = [
    "Figure3Panel",
    "figure3",
    "figure5",
    "figure8",
    "save",
    "table_bars",
    "theorem1",
]

_DPI = 120
#: Fashion-MNIST's classes, for legends; other datasets pass their own names.
_CLASS_NAMES = ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot")


def save(figure: Figure, path: str | os.PathLike[str]) -> None:
    """Write ``figure`` as a PNG (the Agg canvas; no display needed)."""
    figure.savefig(os.fspath(path), dpi=_DPI)  # constrained layout already fits everything in


# --------------------------------------------------------------------------- Figure 3


@dataclass(frozen=True)
class Figure3Panel:
    """One encoder's column of Figure 3.

    Attributes:
        name: the encoder, e.g. ``"contrastive"``.
        histogram: positive-pair distances (:func:`hsrl.metrics.positive_distance_histogram`).
        density: angle density of the features (:func:`hsrl.metrics.angle_density`).
        labels: ``(N,)`` class of each feature in ``density.angles`` (colours the points on the circle).
        alignment: :math:`L_{align}` (α = 2).
        uniformity: :math:`L_{uniform}` (t = 2).
        accuracy: 5-NN accuracy, or ``None`` to leave it out of the title.
    """

    name: str
    histogram: DistanceHistogram
    density: AngleDensity
    labels: np.ndarray
    alignment: float
    uniformity: float
    accuracy: float | None = None


def figure3(panels: Sequence[Figure3Panel], path: str | os.PathLike[str], *, max_points: int = 2000) -> None:
    """The paper's Figure 3: per encoder, features on S¹, their angle density, positive-pair distances.

    Row 1: the features on the unit circle coloured by class, with the angle density drawn as a radial
    band (the farther out, the denser). Row 2: the density over the angle (wrapped Gaussian KDE).
    Row 3: the histogram of ‖f(x) − f(y)‖₂ over positive pairs, the mean marked.
    """
    cols = len(panels)
    figure = Figure(figsize=(3.3 * cols, 9.6), layout="constrained")
    axes = figure.subplots(3, cols, squeeze=False)
    density_top = max(float(p.density.density.max()) for p in panels)
    for col, panel in enumerate(panels):
        _circle_panel(axes[0, col], panel, max_points, density_top)
        accuracy = "" if panel.accuracy is None else f"\n5-NN accuracy {panel.accuracy:.1%}"
        axes[0, col].set_title(f"{panel.name}{accuracy}", fontsize=11)

        ax = axes[1, col]
        ax.fill_between(panel.density.grid, panel.density.density, color="tab:blue", alpha=0.3)
        ax.plot(panel.density.grid, panel.density.density, color="tab:blue")
        ax.set_xlim(-math.pi, math.pi)
        ax.set_ylim(0, density_top * 1.05)
        ax.set_xticks([-math.pi, -math.pi / 2, 0, math.pi / 2, math.pi], ["−π", "−π/2", "0", "π/2", "π"])
        ax.axhline(1 / (2 * math.pi), color="grey", ls=":", lw=1, label="uniform on S¹")
        ax.set_xlabel("feature angle θ (rad)")
        ax.set_ylabel("density (1/rad)")
        ax.set_title(f"uniformity: L_uniform(t=2) = {panel.uniformity:.3f}", fontsize=10)
        ax.legend(loc="upper right", fontsize=8)

        hist = panel.histogram
        ax = axes[2, col]
        ax.bar(hist.edges[:-1], hist.counts, width=np.diff(hist.edges), align="edge", color="tab:green", alpha=0.7)
        ax.axvline(hist.mean_distance, color="black", ls="--", lw=1, label=f"mean {hist.mean_distance:.3f}")
        ax.set_xlim(hist.edges[0], hist.edges[-1])
        ax.set_xlabel("positive-pair distance ‖f(x) − f(y)‖₂")
        ax.set_ylabel(f"pairs (of {hist.num_pairs})")
        ax.set_title(
            f"alignment: mean dist {hist.mean_distance:.3f}\nL_align(α=2) = {panel.alignment:.3f}", fontsize=10
        )
        ax.legend(loc="upper right", fontsize=8)
    handles, names = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, names, loc="outside lower center", ncol=10, fontsize=8, markerscale=2, title="class")
    figure.suptitle(
        "Representations on S¹ (m = 2). Row 1: test features on the circle (band: angle density); "
        "row 2: angle density (uniformity); row 3: positive-pair distances (alignment)",
        fontsize=10,
    )
    save(figure, path)


def _circle_panel(ax: Any, panel: Figure3Panel, max_points: int, density_top: float) -> None:
    angles, labels = panel.density.angles, np.asarray(panel.labels)
    keep = np.linspace(0, angles.size - 1, min(max_points, angles.size)).astype(int)
    # One radial scale for every panel, so band heights compare across encoders.
    band = 1 + 0.5 * panel.density.density / max(density_top, 1e-12)
    ax.plot(np.cos(panel.density.grid) * band, np.sin(panel.density.grid) * band, color="tab:blue", lw=1)
    ax.plot(np.cos(panel.density.grid), np.sin(panel.density.grid), color="grey", lw=0.8)
    for cls in np.unique(labels[keep]):
        chosen = keep[labels[keep] == cls]
        name = _CLASS_NAMES[cls] if 0 <= cls < len(_CLASS_NAMES) else str(cls)
        ax.scatter(np.cos(angles[chosen]), np.sin(angles[chosen]), s=6, alpha=0.5, label=name, color=f"C{cls % 10}")
    ax.set_aspect("equal")
    ax.set_xlim(-1.6, 1.6)
    ax.set_ylim(-1.6, 1.6)
    ax.set_xlabel("feature 1")
    ax.set_ylabel("feature 2")


# --------------------------------------------------------------------------- Figure 5

_MARKERS = {"contrastive": "o", "align+uniform": "^", "align only": "s", "uniform only": "D"}


def figure5(rows: Sequence[Mapping[str, object]], path: str | os.PathLike[str], *, title: str = "") -> None:
    """The paper's Figure 5: L_uniform (x) against L_align (y), coloured by 5-NN accuracy.

    ``rows`` need ``uniformity``, ``alignment``, ``knn5_accuracy``, ``family`` (marker) and ``label``
    (a short annotation such as ``τ=0.2``). Lower-left is better on both metrics.
    """
    figure = Figure(figsize=(7.5, 5.8), layout="constrained")
    ax = figure.subplots()
    accuracy = np.array([float(r["knn5_accuracy"]) for r in rows])
    low, high = float(accuracy.min()), float(accuracy.max())
    scatter = None
    for family in dict.fromkeys(str(r["family"]) for r in rows):
        chosen = [r for r in rows if r["family"] == family]
        scatter = ax.scatter(
            [float(r["uniformity"]) for r in chosen],
            [float(r["alignment"]) for r in chosen],
            c=[float(r["knn5_accuracy"]) for r in chosen],
            cmap="viridis",
            vmin=low,
            vmax=high if high > low else low + 1e-6,
            marker=_MARKERS.get(family, "P"),
            s=80,
            edgecolors="black",
            linewidths=0.6,
            label=family,
        )
        for r in chosen:
            ax.annotate(
                str(r["label"]),
                (float(r["uniformity"]), float(r["alignment"])),
                fontsize=7,
                xytext=(5, 4),
                textcoords="offset points",
            )
    assert scatter is not None, "figure5 needs at least one row"
    colorbar = figure.colorbar(scatter, ax=ax)
    colorbar.set_label("5-NN test accuracy")
    ax.set_xlabel("uniformity  L_uniform (t = 2)   (lower = more uniform)")
    ax.set_ylabel("alignment  L_align (α = 2)   (lower = better aligned)")
    legend = ax.legend(title="objective", loc="best", fontsize=8)
    for handle in legend.legend_handles:
        handle.set_facecolor("lightgrey")
    ax.set_title(title or "Alignment vs uniformity, coloured by accuracy")
    ax.grid(alpha=0.3)
    save(figure, path)


# --------------------------------------------------------------------------- Figure 8


def figure8(
    trajectories: Mapping[str, Sequence[Mapping[str, float]]], path: str | os.PathLike[str], *, title: str = ""
) -> None:
    """The paper's Figure 8: alignment, uniformity and 5-NN accuracy over fine-tuning steps, one line per objective.

    ``trajectories`` maps an objective's label to its evaluations (``step``, ``alignment``,
    ``uniformity``, ``knn5_accuracy``); step 0 is the starting (contrastive) encoder.
    """
    figure = Figure(figsize=(14, 4.2), layout="constrained")
    axes = figure.subplots(1, 3)
    panels = (
        ("alignment", "L_align (α = 2)  (lower = better aligned)"),
        ("uniformity", "L_uniform (t = 2)  (lower = more uniform)"),
        ("knn5_accuracy", "5-NN test accuracy"),
    )
    for ax, (key, label) in zip(axes, panels, strict=True):
        for i, (name, points) in enumerate(trajectories.items()):
            steps = [p["step"] for p in points]
            ax.plot(steps, [p[key] for p in points], marker="o", ms=3, color=f"C{i}", label=name)
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(title="fine-tuned with", fontsize=8)
    figure.suptitle(title or "Fine-tuning a contrastive encoder with one term or both")
    save(figure, path)


# --------------------------------------------------------------------------- Theorem 1


def theorem1(
    rows: Sequence[Mapping[str, float]],
    slopes: Mapping[float, Mapping[str, float]],
    path: str | os.PathLike[str],
) -> None:
    """Theorem 1: L_contrastive(τ, M) − log M approaching its limit as M grows.

    ``rows`` hold, per ``tau`` and ``M``: ``loss_minus_log_m`` (mean over anchors and draws),
    ``loss_minus_log_m_std`` (across draws), ``limit``, ``abs_bias`` (|mean deviation|) and
    ``mean_abs_deviation`` (mean over anchors and draws of the per-anchor |deviation|).
    ``slopes[tau]`` holds the fitted log-log slopes ``abs_bias`` and ``mean_abs_deviation``.
    """
    figure = Figure(figsize=(13, 4.8), layout="constrained")
    left, right = figure.subplots(1, 2)
    taus = sorted({float(r["tau"]) for r in rows})
    for i, tau in enumerate(taus):
        chosen = sorted((r for r in rows if float(r["tau"]) == tau), key=lambda r: r["M"])
        m = np.array([r["M"] for r in chosen], dtype=float)
        value = np.array([r["loss_minus_log_m"] for r in chosen])
        spread = np.array([r["loss_minus_log_m_std"] for r in chosen])
        left.errorbar(m, value, yerr=spread, marker="o", ms=3, color=f"C{i}", capsize=2, label=f"τ = {tau:g}")
        left.axhline(chosen[0]["limit"], color=f"C{i}", ls="--", lw=1, label=f"limit, τ = {tau:g}")
        bias = np.array([r["abs_bias"] for r in chosen])
        per_anchor = np.array([r["mean_abs_deviation"] for r in chosen])
        fit = slopes[tau]
        right.plot(
            m,
            per_anchor,
            marker="o",
            ms=3,
            color=f"C{i}",
            label=f"E|deviation| per anchor, τ={tau:g} (slope {fit['mean_abs_deviation']:.2f})",
        )
        positive = bias > 0
        right.plot(
            m[positive],
            bias[positive],
            marker="x",
            ls=":",
            color=f"C{i}",
            label=f"|E deviation| (bias), τ={tau:g} (slope {fit['abs_bias']:.2f})",
        )
    m_all = np.array(sorted({float(r["M"]) for r in rows}))
    anchor = max(float(r["mean_abs_deviation"]) for r in rows if float(r["M"]) == m_all[0])
    right.plot(m_all, anchor * m_all**-0.5, color="grey", lw=1, label="∝ M^−1/2 (the theorem's rate)")
    left.set_xscale("log", base=2)
    left.set_xlabel("negatives M (log scale)")
    left.set_ylabel("L_contrastive(τ, M) − log M  (nats)")
    left.set_title("The loss minus log M tends to the limit\n−E[f(x)ᵀf(y)]/τ + E_x log E_x⁻ exp(f(x⁻)ᵀf(x)/τ)")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set_xlabel("negatives M (log scale)")
    right.set_ylabel("deviation from the limit (nats, log scale)")
    right.set_title("Deviation shrinks with M (fitted log-log slopes)")
    right.legend(fontsize=7)
    right.grid(alpha=0.3, which="both")
    save(figure, path)


# --------------------------------------------------------------------------- table


#: The image table's panels: (summary key, axis label).
IMAGE_TABLE_METRICS: tuple[tuple[str, str], ...] = (
    ("knn5_accuracy", "5-NN test accuracy"),
    ("alignment", "L_align (α = 2)"),
    ("uniformity", "L_uniform (t = 2)"),
)


def table_bars(
    summary: Sequence[Mapping[str, object]],
    path: str | os.PathLike[str],
    *,
    title: str = "",
    metrics: Sequence[tuple[str, str]] = IMAGE_TABLE_METRICS,
) -> None:
    """Mean ± std over seeds of each of ``metrics`` (key, axis label), one panel each, one bar per encoder.

    ``summary`` rows need ``encoder`` and, per metric key ``k``, ``k_mean`` and ``k_std`` (missing metrics are
    left blank). Panels whose key ends in ``accuracy`` or starts with ``recall``/``mrr`` are zoomed on the bars.
    """
    figure = Figure(figsize=(4.4 * len(metrics), 4.2), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(metrics)))
    names = [str(r["encoder"]) for r in summary]
    for ax, (key, label) in zip(axes, metrics, strict=True):
        means = [_number(r.get(f"{key}_mean")) for r in summary]
        stds = [_number(r.get(f"{key}_std")) for r in summary]
        x = np.arange(len(names))
        shown = [i for i in x if math.isfinite(means[i])]  # e.g. raw pixels have no alignment: no bar
        ax.bar(
            [x[i] for i in shown],
            [means[i] for i in shown],
            yerr=[np.nan_to_num(stds[i]) for i in shown],
            capsize=4,
            color=[f"C{i}" for i in shown],
            alpha=0.8,
        )
        ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(label)
        finite = [m for m in means if math.isfinite(m)]
        if finite and (key.endswith("accuracy") or key.startswith(("recall", "mrr"))):
            spread = max(finite) - min(finite)
            ax.set_ylim(max(0.0, min(finite) - max(0.05, spread)), min(1.0, max(finite) + max(0.03, spread / 2)))
        for xi, m, s in zip(x, means, stds, strict=True):
            if math.isfinite(m):
                ax.annotate(
                    f"{m:.3f}" + (f"±{s:.3f}" if math.isfinite(s) else ""),
                    (xi + 0.05, m),
                    fontsize=7,
                    ha="left",
                    va="bottom" if m >= 0 else "top",
                    xytext=(4, 0),
                    textcoords="offset points",
                )
        ax.grid(alpha=0.3, axis="y")
    figure.suptitle(title or "Align/uniform vs contrastive: mean ± std over seeds")
    save(figure, path)


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else math.nan
