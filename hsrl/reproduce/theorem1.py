r"""Theorem 1, numerically: the contrastive loss minus log M tends to alignment + uniformity terms.

For a fixed encoder f, positive pairs (x, y) and M negatives :math:`x_i^- \sim p_{data}` i.i.d.,

.. math::
    L_{contrastive}(f; \tau, M) - \log M \;\xrightarrow{M \to \infty}\;
    -\tfrac{1}{\tau}\,\mathbb{E}[f(x)^\top f(y)] + \mathbb{E}_{y}\log \mathbb{E}_{x^-} e^{f(x^-)^\top f(y)/\tau},

with a deviation the paper bounds by :math:`O(M^{-1/2})`. (The paper writes the second term with
f(x); x and y have the same marginal, so the two forms are equal. Here the anchor of the denominator is
y, exactly as in the loss, so the limit is computed for the same anchors as the finite-M loss.)

How it is measured. p_data is the empirical distribution of one random view of each image of a
*pool* of training images, embedded once; the anchors are pairs of views of test images (independent of
the pool). Negatives are drawn i.i.d. from the pool (with replacement), and the limit's inner expectation
:math:`\mathbb{E}_{x^-}` is computed exactly over the whole pool, so the only gap between the finite-M
loss and the limit is the finite M. For one draw of ``max(grid)`` negatives the loss at every M of the
grid comes from running sums over their prefixes (a prefix of an i.i.d. sequence is i.i.d.), and
``draws`` independent draws are averaged. Per anchor, with :math:`s^+ = f(x)^\top f(y)/\tau` and
:math:`e_i = e^{f(x_i^-)^\top f(y)/\tau}`,

.. math::
    \ell_M - \log M = -s^+ + \log\Big(\frac{e^{s^+}}{M} + \frac{1}{M}\sum_{i \le M} e_i\Big),
    \qquad \ell_\infty = -s^+ + \log \mathbb{E}_{x^-} e,

and two deviations are reported: the *bias* :math:`|\mathbb{E}[\ell_M - \log M] - \mathbb{E}\ell_\infty|`
(what the theorem bounds; both the :math:`e^{s^+}/M` term and the Jensen gap of the log of a mean are
O(1/M), so it shrinks like 1/M, faster than the bound) and the mean per-anchor
:math:`\mathbb{E}|\ell_M - \log M - \ell_\infty|` (that O(1/M) term plus the Monte Carlo fluctuation of one
anchor's loss, which is O(M^{-1/2}); its slope moves from about −1 towards −1/2 as M grows), each with its
fitted log-log slope.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from hsrl import plots
from hsrl.data.images import random_views
from hsrl.reproduce.common import (
    UNTRAINED,
    Context,
    EvalSizes,
    ImageBudget,
    RunSpec,
    embed,
    evaluation_views,
    fashion_mnist,
    load_run_encoder,
    markdown_table,
    train_run,
    write_csv,
    write_report,
)

__all__ = ["FULL", "QUICK", "Theorem1Settings", "fit_slope", "limit_terms", "loss_minus_log_m", "measure", "run"]

#: Anchors processed at once: bounds memory to ``chunk × max(grid)`` float64 numbers.
_CHUNK = 512


@dataclass(frozen=True)
class Theorem1Settings:
    encoder: RunSpec
    pool_size: int  # training images whose views form p_data
    anchors: int  # test images, two views each
    grid: tuple[int, ...]
    draws: int
    taus: tuple[float, ...]
    fit_from: int  # smallest M in the slope fits (the 1/M terms dominate below)


_POWERS = tuple(2**k for k in range(15))  # 1 .. 16384
FULL = Theorem1Settings(
    encoder=RunSpec(
        "theorem1-encoder", "contrastive:1,tau=0.5", ImageBudget(dim=32, steps=150), EvalSizes(10000, 3000)
    ),
    pool_size=60000,
    anchors=5000,
    grid=_POWERS,
    draws=8,
    taus=(0.2, 0.5),
    fit_from=16,
)
QUICK = Theorem1Settings(
    encoder=RunSpec(
        "theorem1-encoder", UNTRAINED, ImageBudget(dim=16, width=8, steps=0, pretrain_size=512), EvalSizes(400, 200)
    ),
    pool_size=2000,
    anchors=256,
    grid=_POWERS[:9],  # 1 .. 256
    draws=4,
    taus=(0.5,),
    fit_from=4,
)
COLUMNS = [
    "tau",
    "M",
    "loss_minus_log_m",
    "loss_minus_log_m_std",
    "limit",
    "bias",
    "bias_se",
    "abs_bias",
    "mean_abs_deviation",
]


# --------------------------------------------------------------------------- the mathematics


def loss_minus_log_m(x: Tensor, y: Tensor, negatives: Tensor, tau: float, grid: Sequence[int]) -> Tensor:
    r"""Per anchor, :math:`\ell_M - \log M` for every M of ``grid``, using the first M rows of ``negatives``.

    :math:`\ell_M = -\log \frac{e^{x^\top y/\tau}}{e^{x^\top y/\tau} + \sum_{i \le M} e^{n_i^\top y/\tau}}`,
    the contrastive loss of :func:`hsrl.losses.contrastive_loss` with anchor y, positive x and explicit
    negatives. All exponents are shifted by 1/τ (unit vectors: every dot product is ≤ 1), so float64 holds
    them for τ down to about 0.003.

    Args:
        x, y: ``(A, d)`` unit vectors, the positive pairs.
        negatives: ``(max(grid), d)`` unit vectors, i.i.d. negatives shared by every anchor.
        tau: temperature τ > 0.
        grid: increasing numbers of negatives M ≥ 1.

    Returns:
        ``(A, len(grid))`` float64.
    """
    x, y, negatives = x.double(), y.double(), negatives.double()
    positive = ((x * y).sum(dim=1, keepdim=True) - 1) / tau
    m = torch.tensor(list(grid), dtype=torch.float64, device=x.device)
    index = torch.tensor([g - 1 for g in grid], device=x.device)
    parts = []
    for start in range(0, y.shape[0], _CHUNK):
        rows = slice(start, start + _CHUNK)
        sums = torch.exp((y[rows] @ negatives.T - 1) / tau).cumsum(dim=1)[:, index]
        parts.append(-positive[rows] + torch.log(positive[rows].exp() / m + sums / m))
    return torch.cat(parts)


def limit_terms(x: Tensor, y: Tensor, pool: Tensor, tau: float) -> Tensor:
    r"""Per anchor, the limit :math:`\ell_\infty = -x^\top y/\tau + \log \mathbb{E}_{n \sim pool} e^{n^\top y/\tau}`.

    The expectation is the exact mean over every row of ``pool`` (float64, shifted by 1/τ).

    Returns:
        ``(A,)`` float64.
    """
    x, y, pool = x.double(), y.double(), pool.double()
    positive = ((x * y).sum(dim=1) - 1) / tau
    log_means = [
        torch.log(torch.exp((y[s : s + _CHUNK] @ pool.T - 1) / tau).mean(dim=1)) for s in range(0, y.shape[0], _CHUNK)
    ]
    return -positive + torch.cat(log_means)


def fit_slope(m: np.ndarray, values: np.ndarray) -> float:
    """Least-squares slope of log(values) against log(M) over the positive values (NaN with fewer than 2)."""
    keep = values > 0
    if keep.sum() < 2:
        return math.nan
    return float(np.polyfit(np.log(m[keep]), np.log(values[keep]), 1)[0])


def measure(
    x: Tensor,
    y: Tensor,
    pool: Tensor,
    taus: Sequence[float],
    grid: Sequence[int],
    draws: int,
    *,
    seed: int = 0,
    fit_from: int = 1,
) -> tuple[list[dict[str, float]], dict[float, dict[str, float]]]:
    """The rows of the Theorem 1 table (one per τ and M) and the fitted slopes per τ.

    Each draw takes ``max(grid)`` negatives i.i.d. (with replacement) from ``pool`` with a generator
    seeded by ``(seed, draw)``, the same draw for every τ.
    """
    largest = max(grid)
    generator = torch.Generator().manual_seed(seed)
    per_draw = {tau: [] for tau in taus}
    for _ in range(draws):
        index = torch.randint(pool.shape[0], (largest,), generator=generator).to(pool.device)
        for tau in taus:
            per_draw[tau].append(loss_minus_log_m(x, y, pool[index], tau, grid))
    rows, slopes = [], {}
    m = np.array(grid, dtype=float)
    for tau in taus:
        values = torch.stack(per_draw[tau])  # (draws, A, len(grid))
        limit = limit_terms(x, y, pool, tau)  # (A,)
        deviation = values - limit[None, :, None]
        draw_means = deviation.mean(dim=1)  # (draws, len(grid)): the independent units
        bias = draw_means.mean(dim=0)
        bias_se = draw_means.std(dim=0) / math.sqrt(draws) if draws > 1 else torch.full_like(bias, math.nan)
        loss_draws = values.mean(dim=1)
        mean_abs = deviation.abs().mean(dim=(0, 1))
        for j, count in enumerate(grid):
            rows.append(
                {
                    "tau": float(tau),
                    "M": int(count),
                    "loss_minus_log_m": float(loss_draws[:, j].mean()),
                    "loss_minus_log_m_std": float(loss_draws[:, j].std()) if draws > 1 else math.nan,
                    "limit": float(limit.mean()),
                    "bias": float(bias[j]),
                    "bias_se": float(bias_se[j]),
                    "abs_bias": abs(float(bias[j])),
                    "mean_abs_deviation": float(mean_abs[j]),
                }
            )
        use = m >= fit_from
        slopes[float(tau)] = {
            "abs_bias": fit_slope(m[use], np.abs(bias.numpy())[use]),
            "mean_abs_deviation": fit_slope(m[use], mean_abs.numpy()[use]),
        }
    return rows, slopes


# --------------------------------------------------------------------------- the experiment


def run(ctx: Context) -> dict[str, object]:
    """Embed the pool and the anchor pairs with a fixed encoder, measure, write ``theorem1.png``, CSVs, report."""
    settings = QUICK if ctx.quick else FULL
    start = time.perf_counter()
    outcome = train_run(settings.encoder, ctx)
    encoder = load_run_encoder(outcome.folder, settings.encoder.budget, ctx.device)
    train, test = fashion_mnist()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)  # the pool's views: one fixed sample of p_data
        pool_views = random_views(train.images[: settings.pool_size])
    pool = embed(encoder, pool_views, ctx.device).double()
    view1, view2 = evaluation_views(test.images[: settings.anchors], seed=2)
    x, y = embed(encoder, view1, ctx.device).double(), embed(encoder, view2, ctx.device).double()
    rows, slopes = measure(x, y, pool, settings.taus, settings.grid, settings.draws, seed=3, fit_from=settings.fit_from)
    out = ctx.output_dir
    write_csv(out / "theorem1.csv", rows, COLUMNS)
    slope_rows = [
        {
            "tau": tau,
            "slope_abs_bias": s["abs_bias"],
            "slope_mean_abs_deviation": s["mean_abs_deviation"],
            "fit_from_M": settings.fit_from,
        }
        for tau, s in slopes.items()
    ]
    write_csv(out / "theorem1_slopes.csv", slope_rows, list(slope_rows[0]))
    plots.theorem1(rows, slopes, out / "theorem1.png")
    write_report(
        out / "report.md",
        "Theorem 1: L_contrastive(τ, M) − log M and its limit, Fashion-MNIST features",
        [
            ("Setting", _setting_text(settings)),
            ("Fitted log-log slopes of the deviation vs M", markdown_table(slope_rows, list(slope_rows[0]))),
            ("Numbers", markdown_table(rows, COLUMNS)),
            ("What the paper states, and what is seen here", _reading(slopes)),
            ("Files", "`theorem1.png`, `theorem1.csv`, `theorem1_slopes.csv`."),
        ],
        ctx,
        time.perf_counter() - start,
    )
    return {"rows": rows, "slopes": slopes}


def _setting_text(settings: Theorem1Settings) -> str:
    enc = settings.encoder
    encoder = (
        "the randomly initialised small CNN"
        if enc.objective == UNTRAINED
        else f"the small CNN after {enc.budget.steps} steps of `{enc.objective}`"
    )
    return (
        f"Encoder: {encoder} ({enc.budget.dim}-D output), fixed. p_data: one random view of each of the first "
        f"{settings.pool_size} training images. Anchors: {settings.anchors} test images, two random views each. "
        f"M ∈ {{{', '.join(map(str, settings.grid))}}}; {settings.draws} independent draws of negatives, averaged; "
        f"τ ∈ {{{', '.join(f'{t:g}' for t in settings.taus)}}}. Slopes fitted over M ≥ {settings.fit_from}."
    )


def _reading(slopes: dict[float, dict[str, float]]) -> str:
    parts = [
        f"τ = {tau:g}: bias slope {s['abs_bias']:.2f}, per-anchor slope {s['mean_abs_deviation']:.2f}"
        for tau, s in slopes.items()
    ]
    return (
        "The paper: L_contrastive − log M converges to the alignment + uniformity limit with deviation O(M^−1/2). "
        "Here: " + "; ".join(parts) + ". A slope at or below −1/2 is consistent with the bound. The expected "
        "loss (bias) can approach the limit like 1/M (slope near −1: the e^{s⁺}/M term and the Jensen gap of the "
        "log of a mean are both O(1/M)), faster than the bound; one anchor's loss with one draw of negatives also "
        "fluctuates by O(M^−1/2), so its mean absolute deviation bends from slope −1 towards −1/2 once that "
        "fluctuation dominates. At large M the bias estimate is limited by Monte Carlo noise (see `bias_se`)."
    )
