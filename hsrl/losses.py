"""The paper's objectives on the unit hypersphere, exact and fast.

Wang & Isola, *Understanding Contrastive Representation Learning through Alignment
and Uniformity on the Hypersphere*, ICML 2020 (arXiv 2005.10242).

Inputs are embeddings ``f(x)`` of shape ``(N, d)`` that lie on the unit sphere. The
official code silently assumes this; a user who forgets the final ``F.normalize``
gets a loss that is quietly wrong. Here every loss checks it: rows whose norm
differs from 1 by more than ``NORM_TOLERANCE`` raise a ``ValueError``, unless the
caller passes ``normalize=True``, in which case the loss normalises (and
differentiates through the normalisation) itself. The tolerance is loose enough
for bf16/fp16 encoder outputs.

Example:
    >>> import torch, torch.nn.functional as F
    >>> from hsrl.losses import HypersphereLoss
    >>> x = F.normalize(torch.randn(8, 16), dim=1)
    >>> y = F.normalize(x + 0.1 * torch.randn(8, 16), dim=1)
    >>> loss = HypersphereLoss("align:1,alpha=2 + uniform:1,t=2")
    >>> value = loss(x, y)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "NEGATIVE_TERMS",
    "NORM_TOLERANCE",
    "HypersphereLoss",
    "LossTerm",
    "align_loss",
    "clip_loss",
    "contrastive_loss",
    "parse_objective",
    "quickthought_loss",
    "quickthought_targets",
    "siglip_loss",
    "uniform_loss",
    "uniform_loss_share",
    "uniform_union_loss",
]

#: Largest allowed deviation of a row norm from 1 before a loss refuses the input.
#: bf16 rounds a unit vector's norm to within about 2**-8 = 0.004; 1e-2 keeps a margin.
NORM_TOLERANCE = 1e-2

#: Elements of one row block of pair exponents chosen by ``block_size=None``: small
#: enough to stay in a CPU's cache (8 MiB of float32), large enough to keep a GPU busy
#: (256 MiB). Either way the extra memory is O(N * block), never O(N^2).
AUTO_BLOCK_ELEMENTS = {"cpu": 1 << 21, "cuda": 1 << 26}


# --------------------------------------------------------------------------- checks


def _check_embeddings(x: Tensor, name: str, *, min_rows: int = 1) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (N, d), got shape {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {x.shape[0]}")
    if x.shape[1] < 1:
        raise ValueError(f"{name} must have at least one feature column, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")


def _check_positive(value: float, name: str) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _on_sphere(x: Tensor, name: str, normalize: bool) -> Tensor:
    """Return ``x`` on the unit sphere, or raise if it is not finite / not normalised.

    One host synchronisation covers both checks.
    """
    with torch.no_grad():
        norms = torch.linalg.vector_norm(x.detach().float(), dim=1)
        finite = torch.isfinite(norms).all()
        off = (norms - 1).abs().max() if not normalize else norms.new_zeros(())
        finite_ok, off_value = bool(finite), float(off)
    if not finite_ok:
        raise ValueError(f"{name} contains NaN or infinite values")
    if normalize:
        return F.normalize(x, dim=1)
    if off_value > NORM_TOLERANCE:
        raise ValueError(
            f"{name} is not L2-normalised (a row norm is off from 1 by {off_value:.3g}); "
            "end the encoder with F.normalize(z, dim=1) or pass normalize=True"
        )
    return x


def _at_least_float32(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()


# --------------------------------------------------------------------------- alignment


def align_loss(
    x: Tensor, y: Tensor, alpha: float = 2.0, *, normalize: bool = False, rows: slice | None = None
) -> Tensor:
    r"""Alignment of positive pairs: :math:`L_{align} = \mathbb{E}\,\lVert f(x) - f(y) \rVert_2^{\alpha}`.

    Args:
        x: ``(N, d)`` embeddings of the first views, L2-normalised.
        y: ``(N, d)`` embeddings of the positives, row ``i`` paired with ``x[i]``.
        alpha: exponent :math:`\alpha > 0` (the paper's default is 2).
        normalize: normalise the rows instead of raising when they are not unit vectors.
        rows: only these pairs' share, :math:`\frac1N \sum_{i \in rows} \lVert x_i - y_i \rVert^\alpha`
            (shares over a partition of the rows add up to the loss: one process's part of a global batch).

    Returns:
        A scalar tensor: the mean over the ``N`` pairs.

    Example:
        >>> x = F.normalize(torch.randn(4, 3), dim=1)
        >>> float(align_loss(x, x))
        0.0
    """
    _check_embeddings(x, "x")
    _check_embeddings(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x and y must be paired row for row, got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    _check_positive(alpha, "alpha")
    x = _on_sphere(x, "x", normalize)
    y = _on_sphere(y, "y", normalize)
    n = x.shape[0]
    if rows is not None:
        x, y = x[rows], y[rows]
    squared = (x - y).pow(2).sum(dim=1)
    if alpha != 2:
        # ||d||^alpha = (||d||^2)^(alpha/2). At a coincident pair the derivative is 0 for
        # alpha > 1 and infinite for alpha < 1; the reference's autograd then gives NaN.
        # Such a pair is at the minimum, so its (sub)gradient is taken as 0: keep the
        # power's input away from 0 there and zero the term.
        apart = squared > 0
        safe = torch.where(apart, squared, torch.ones_like(squared))
        squared = torch.where(apart, safe.pow(alpha / 2), torch.zeros_like(squared))
    # alpha = 2, the common case, needs no square root, and its gradient is smooth at 0.
    return squared.mean() if rows is None else squared.sum() / n


# --------------------------------------------------------------------------- uniformity


def _auto_block(n: int, device: torch.device) -> int:
    elements = AUTO_BLOCK_ELEMENTS.get(device.type, AUTO_BLOCK_ELEMENTS["cuda"])
    return max(1, min(n, elements // n))


def uniform_loss(x: Tensor, t: float = 2.0, *, block_size: int | None = None, normalize: bool = False) -> Tensor:
    r"""Uniformity: :math:`L_{uniform} = \log \mathbb{E}_{i<j}\, e^{-t \lVert f(x_i) - f(x_j) \rVert_2^2}`.

    The value is exactly that of the paper's reference
    ``torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()`` (the mean over the
    ``N(N-1)/2`` distinct pairs), computed from one matrix product
    (:math:`\lVert x_i - x_j \rVert^2 = \lVert x_i \rVert^2 + \lVert x_j \rVert^2 - 2 x_i^\top x_j`)
    with a closed-form backward, so no pairwise intermediates are kept for autograd.
    The reduction is shifted by its largest exponent, so it stays finite for large
    ``t`` (up to 100 and beyond) where the reference underflows to ``-inf``, and it is
    computed in float32 (float64 for float64 input) even under bf16/fp16 autocast.

    Its minimum tends to ``-2t`` in high dimension, so negative values are expected.

    Args:
        x: ``(N, d)`` L2-normalised embeddings, ``N >= 2``.
        t: temperature :math:`t > 0` (the paper's default is 2).
        block_size: rows of pairs computed at once. ``None`` picks ``2**21 / N`` rows on
            CPU (cache-sized) and ``2**26 / N`` on GPU, so the extra memory is
            O(N * block) and N = 131072 fits on one GPU. Whatever the block, only
            O(N * d) is kept for backward and the result is the same.
        normalize: normalise the rows instead of raising when they are not unit vectors.

    Returns:
        A scalar tensor in ``x``'s dtype.

    Example:
        >>> x = F.normalize(torch.randn(64, 8), dim=1)
        >>> ref = torch.pdist(x, p=2).pow(2).mul(-2).exp().mean().log()
        >>> bool(torch.allclose(uniform_loss(x, t=2), ref, rtol=1e-5))
        True
    """
    _check_embeddings(x, "x", min_rows=2)
    _check_positive(t, "t")
    if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"block_size must be a positive integer or None, got {block_size!r}")
    x = _on_sphere(x, "x", normalize)
    block = _auto_block(x.shape[0], x.device) if block_size is None else block_size
    return _Uniform.apply(x, float(t), 0, x.shape[0], block, _no_reduce)  # every row: the whole loss


#: ``reduce(value, op)``: ``value`` (a detached tensor) summed (``op="sum"``) or maximised (``"max"``) over the
#: processes that share a batch; the identity with one process (:func:`hsrl.distributed.all_reduce_detached`).
Reduce = Callable[[Tensor, str], Tensor]


def _no_reduce(value: Tensor, op: str) -> Tensor:
    return value


class _Uniform(torch.autograd.Function):
    r"""``log mean_{i<j} exp(-t ||x_i - x_j||^2)`` with a closed-form gradient, or one process's share of it.

    Write :math:`-t d_{ij} = 2t\,x_i^\top x_j - t n_i - t n_j` with :math:`n_i = \lVert x_i \rVert^2`,
    :math:`b_i = e^{t(1 - n_i)}` (close to 1 on the sphere) and, with a shift :math:`m` (the largest exponent),
    :math:`e_{ij} = e^{2t x_i^\top x_j - m}` (0 on the diagonal). Then
    :math:`\sum_{i \ne j} e^{-t d_{ij}} = e^{m - 2t} s` with :math:`s = \sum_{i \ne j} b_i e_{ij} b_j`, and

    .. math::
        \frac{\partial L}{\partial x_i}
        = -\frac{4t}{s}\, b_i \Big(x_i \sum_j e_{ij} b_j - \sum_j e_{ij} b_j x_j\Big).

    Forward computes ``Z = E @ [b * x, b]`` for the rows ``R = start:stop``, block by block, so only ``Z``
    (|R| x (d+1)) is kept for backward: no N x N matrix outlives a block, and backward needs no second pass.

    A process's share (``R`` its rows of a gathered batch): ``reduce`` makes the shift common (max) and sums
    :math:`s_R = \sum_{i \in R} b_i Z_{i,d}` into :math:`s`. The value is :math:`(s_R / s)\,L`, so the shares add
    up to :math:`L`; the backward is :math:`\partial L / \partial x_i` for :math:`i \in R` (the full gradient of
    those rows: the kernel is symmetric, so their own row sums suffice) and 0 for the other rows, so the gradients
    add up to :math:`\partial L / \partial x`. Work: :math:`|R| \cdot N` pairs instead of :math:`N^2`. With every
    row and no ``reduce`` it is the whole loss.
    """

    @staticmethod
    def forward(ctx, x: Tensor, t: float, start: int, stop: int, block: int, reduce: Reduce) -> Tensor:  # type: ignore[override]
        with torch.autocast(device_type=x.device.type, enabled=False):
            xc = x.detach().to(torch.float64 if x.dtype == torch.float64 else torch.float32)
            n = xc.shape[0]
            b = torch.exp(t * (1 - xc.pow(2).sum(dim=1)))
            weighted = torch.cat([xc * b[:, None], b[:, None]], dim=1)
            scaled = xc * (2 * t)
            z = torch.zeros((stop - start, weighted.shape[1]), dtype=xc.dtype, device=xc.device)
            shifts = torch.full((stop - start,), float("-inf"), dtype=xc.dtype, device=xc.device)
            for first in range(start, stop, block):
                last = min(first + block, stop)
                e = scaled[first:last] @ xc.T
                idx = torch.arange(last - first, device=e.device)
                e[idx, idx + first] = float("-inf")  # i == j is not a pair
                shift = e.max()
                z[first - start : last - start] = e.sub_(shift).exp_() @ weighted
                shifts[first - start : last - start] = shift
            m = reduce(shifts.max() if stop > start else shifts.new_tensor(float("-inf")), "max")
            if stop > start:
                z.mul_(torch.exp(shifts - m)[:, None])  # every row block to the common shift m
            s_rows = (b[start:stop] * z[:, -1]).sum()
            s = reduce(s_rows.clone(), "sum")
            value = m - 2 * t + s.log() - math.log(n * (n - 1))
            ctx.save_for_backward(x, b, z)
            ctx.t, ctx.s, ctx.start, ctx.stop = t, s, start, stop
            return (s_rows / s * value).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        x, b, z = ctx.saved_tensors
        start, stop = ctx.start, ctx.stop
        with torch.autocast(device_type=x.device.type, enabled=False):
            xr = x.detach()[start:stop].to(z.dtype)
            scale = (-4.0 * ctx.t / ctx.s) * grad_output.to(z.dtype)
            grad = torch.zeros_like(x)
            grad[start:stop] = ((z[:, -1:] * xr - z[:, :-1]) * (b[start:stop, None] * scale)).to(x.dtype)
            return grad, None, None, None, None, None


def uniform_loss_share(
    x: Tensor, t: float = 2.0, *, rows: slice, reduce: Reduce = _no_reduce, block_size: int | None = None
) -> Tensor:
    r"""This process's share of :func:`uniform_loss` of a batch gathered from several processes.

    ``x`` is the whole (gathered) batch and ``rows`` this process's rows of it. The values returned on all the
    processes add up to ``uniform_loss(x, t)``, and so do their gradients; each process computes only its rows'
    pairs, so the pairwise work is divided by the number of processes. ``reduce`` combines two scalars across
    the processes (a shift and a sum); with the default (one process) and every row, it is the loss itself.

    Example:
        >>> x = F.normalize(torch.randn(10, 4), dim=1)
        >>> bool(torch.allclose(uniform_loss_share(x, rows=slice(0, 10)), uniform_loss(x), atol=1e-5))
        True
    """
    _check_embeddings(x, "x", min_rows=2)
    _check_positive(t, "t")
    start, stop, _ = rows.indices(x.shape[0])
    block = _auto_block(x.shape[0], x.device) if block_size is None else block_size
    return _Uniform.apply(_on_sphere(x, "x", False), float(t), start, stop, block, reduce)


# --------------------------------------------------------------------------- contrastive


def contrastive_loss(
    x: Tensor,
    y: Tensor,
    tau: float = 0.5,
    *,
    negatives: Tensor | None = None,
    symmetric: bool = True,
    normalize: bool = False,
    rows: slice | None = None,
    extra_negatives: Tensor | None = None,
) -> Tensor:
    r"""InfoNCE, the paper's contrastive loss, as cross-entropy on ``f(x)ᵀf(y)/τ`` logits.

    .. math::
        L = \mathbb{E}\Big[-\log \frac{e^{f(x)^\top f(y)/\tau}}
            {e^{f(x)^\top f(y)/\tau} + \sum_{i=1}^{M} e^{f(x_i^-)^\top f(y)/\tau}}\Big]

    * In-batch negatives (default): row ``i`` of ``x`` is positive with row ``i`` of
      ``y``; the other ``N-1`` rows of ``x`` are its negatives (``M = N-1``). With
      ``symmetric=True`` the loss is averaged over both directions (``y`` against the
      ``x`` rows and ``x`` against the ``y`` rows), as SimCLR/CLIP do.
    * Explicit negatives: ``negatives`` is an ``(M, d)`` tensor (e.g. a MoCo queue)
      shared by every row; the logits of row ``i`` are ``[x_iᵀy_i, x_iᵀn_1, ..., x_iᵀn_M] / τ``
      and ``symmetric`` is ignored.
    * In-batch *and* extra negatives: ``extra_negatives`` is an ``(M, d)`` tensor (e.g. mined hard negatives, one
      per pair) appended to every row's negatives in both directions: row ``i`` of ``y`` is scored against every
      row of ``x`` and every extra negative, and with ``symmetric=True`` row ``i`` of ``x`` against every row of
      ``y`` and every extra negative (:math:`M = N - 1 + M_{extra}`).

    Args:
        x: ``(N, d)`` L2-normalised embeddings.
        y: ``(N, d)`` positives, paired row for row with ``x``.
        tau: temperature :math:`\tau > 0`.
        negatives: optional ``(M, d)`` explicit negatives.
        symmetric: average both directions with in-batch negatives.
        normalize: normalise the rows instead of raising when they are not unit vectors.
        extra_negatives: optional ``(M, d)`` negatives added to the in-batch ones (not with ``negatives``).
        rows: with in-batch negatives, only these rows' share (their cross-entropies against the whole batch,
            divided by ``N``): shares over a partition of the rows add up to the loss.

    Example:
        >>> x = F.normalize(torch.randn(8, 4), dim=1)
        >>> float(contrastive_loss(x, x, tau=0.1)) < float(contrastive_loss(x, x.roll(1, 0), tau=0.1))
        True
    """
    _check_embeddings(x, "x", min_rows=1 if negatives is not None else 2)
    _check_embeddings(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x and y must be paired row for row, got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    _check_positive(tau, "tau")
    x = _on_sphere(x, "x", normalize)
    y = _on_sphere(y, "y", normalize)
    if negatives is not None and extra_negatives is not None:
        raise ValueError("give negatives (instead of the in-batch ones) or extra_negatives (beside them), not both")
    if negatives is not None:
        negatives = _checked_negatives(negatives, "negatives", x.shape[1], normalize)
    if extra_negatives is not None:
        # none at all is allowed: a step whose pairs had nothing to mine is still the in-batch loss
        extra_negatives = _checked_negatives(extra_negatives, "extra_negatives", x.shape[1], normalize, min_rows=0)
    # Logits and cross-entropy in at least float32, even under autocast: half-precision
    # logits divided by a small tau lose the differences the loss is about.
    with torch.autocast(device_type=x.device.type, enabled=False):
        xf, yf = _at_least_float32(x), _at_least_float32(y)
        if negatives is not None:
            nf = negatives.to(xf.dtype)
            positive = (xf * yf).sum(dim=1, keepdim=True)
            logits = torch.cat([positive, xf @ nf.T], dim=1) / tau
            target = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            return F.cross_entropy(logits, target)
        # Columns a row is scored against: the other view's rows, then any extra negatives.
        x_columns, y_columns = xf, yf
        if extra_negatives is not None:
            ef = extra_negatives.to(xf.dtype)
            x_columns, y_columns = torch.cat([xf, ef]), torch.cat([yf, ef])
        if rows is not None:  # this process's rows against the whole batch, both directions
            start, stop, _ = rows.indices(x.shape[0])
            target = torch.arange(start, stop, device=x.device)
            loss = F.cross_entropy((yf[rows] @ x_columns.T) / tau, target, reduction="sum") / x.shape[0]
            if symmetric:
                backward = F.cross_entropy((xf[rows] @ y_columns.T) / tau, target, reduction="sum") / x.shape[0]
                loss = (loss + backward) / 2
            return loss
        target = torch.arange(x.shape[0], device=x.device)
        if extra_negatives is None:  # one product serves both directions
            logits = (yf @ xf.T) / tau  # row i: y_i against every x; the paper's denominator
            loss = F.cross_entropy(logits, target)
            return (loss + F.cross_entropy(logits.T, target)) / 2 if symmetric else loss
        loss = F.cross_entropy((yf @ x_columns.T) / tau, target)
        if symmetric:
            loss = (loss + F.cross_entropy((xf @ y_columns.T) / tau, target)) / 2
        return loss


def _checked_negatives(negatives: Tensor, name: str, columns: int, normalize: bool, min_rows: int = 1) -> Tensor:
    _check_embeddings(negatives, name, min_rows=min_rows)
    if negatives.shape[1] != columns:
        raise ValueError(f"{name} must have {columns} columns, got shape {tuple(negatives.shape)}")
    return negatives if len(negatives) == 0 else _on_sphere(negatives, name, normalize)


# --------------------------------------------------------------------------- Quick-Thought


def quickthought_targets(
    batch: int, context: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Quick-Thought's soft targets: row ``i`` uniform over ``{j : 0 < |i - j| <= context}``, ``(batch, batch)``."""
    index = torch.arange(batch, device=device)
    gap = (index[:, None] - index[None, :]).abs()
    near = ((gap > 0) & (gap <= context)).to(dtype)
    return near / near.sum(dim=1, keepdim=True)


def quickthought_loss(
    u: Tensor, v: Tensor, context: int = 1, tau: float = 1.0, *, normalize: bool = False, rows: slice | None = None
) -> Tensor:
    r"""The Quick-Thought objective (Logeswaran & Lee, ICLR 2018) on one batch of consecutive sentences.

    Row ``i`` of ``u`` is ``f(s_i)`` and row ``i`` of ``v`` is ``g(s_i)`` for sentences
    ``s_1..s_B`` in reading order. Each sentence must pick out its context sentences among the
    other sentences of the batch:

    .. math::
        S_{ij} = u_i^\top v_j / \tau \;(j \ne i), \qquad S_{ii} = -\infty, \qquad
        p_{ij} = \frac{e^{S_{ij}}}{\sum_{k} e^{S_{ik}}},

        t_{ij} = \frac{[\,0 < |i - j| \le c\,]}{|\{k : 0 < |i - k| \le c\}|}, \qquad
        L = -\frac{1}{B} \sum_{i=1}^{B} \sum_{j=1}^{B} t_{ij} \log p_{ij},

    a cross-entropy with soft targets uniform over the ``±c`` neighbours inside the batch
    (rows at the edges have fewer). With unit vectors and ``τ = 1`` the scores are cosines
    in ``[-1, 1]``; Quick-Thought itself scored unnormalised GRU states (and zeroed, rather
    than masked, the diagonal logit). Computed in at least float32, even under autocast.

    Args:
        u: ``(B, d)`` L2-normalised ``f`` embeddings of the batch, ``B >= 2``.
        v: ``(B, d)`` L2-normalised ``g`` embeddings of the same sentences, same order.
        context: ``c``, a positive integer (Quick-Thought: 1).
        tau: temperature ``τ > 0`` (1: Quick-Thought's plain dot products).
        normalize: normalise the rows instead of raising when they are not unit vectors.
        rows: only these rows' share (their terms divided by ``B``): shares over a partition add up to the loss.

    Returns:
        A scalar tensor: the mean over the ``B`` rows.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> u = F.normalize(torch.randn(6, 3), dim=1)
        >>> bool(quickthought_loss(u, u, context=1) > 0)
        True
    """
    _check_embeddings(u, "u", min_rows=2)
    _check_embeddings(v, "v", min_rows=2)
    if u.shape != v.shape:
        raise ValueError(f"u and v must be the same sentences row for row, got {tuple(u.shape)} and {tuple(v.shape)}")
    if isinstance(context, bool) or float(context) != int(context) or int(context) < 1:
        raise ValueError(f"quickthought context must be a positive integer, got {context!r}")
    if not (isinstance(tau, int | float) and tau > 0 and tau != float("inf")):
        raise ValueError(f"quickthought tau must be a finite number > 0, got {tau!r}")
    u = _on_sphere(u, "u", normalize)
    v = _on_sphere(v, "v", normalize)
    with torch.autocast(device_type=u.device.type, enabled=False):
        uf = u if u.dtype == torch.float64 else u.float()
        vf = v.to(uf.dtype)
        batch = uf.shape[0]
        start, stop, _ = (rows or slice(None)).indices(batch)
        index = torch.arange(start, stop, device=u.device)
        diagonal = index[:, None] == torch.arange(batch, device=u.device)[None, :]
        scores = (uf[start:stop] @ vf.T / tau).masked_fill(diagonal, float("-inf"))  # not its own context
        # The diagonal's log-probability is -inf with target 0; zero it so 0 * -inf gives no NaN.
        log_p = scores.log_softmax(dim=1).masked_fill(diagonal, 0.0)
        targets = quickthought_targets(batch, int(context), u.device, uf.dtype)[start:stop]
        per_row = -(targets * log_p).sum(dim=1)
        return per_row.mean() if rows is None else per_row.sum() / batch


# --------------------------------------------------------------------------- objective strings


@dataclass(frozen=True)
class LossTerm:
    """One weighted term of an objective, e.g. ``uniform:1,t=2``."""

    name: str
    weight: float
    params: Mapping[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        extra = "".join(f",{k}={v:g}" for k, v in self.params.items())
        return f"{self.name}:{self.weight:g}{extra}"


# --------------------------------------------------------------------------- image–text (two towers)

#: SigLIP's initial bias (the paper's b = −10: most pairs are negatives).
SIGLIP_BIAS = -10.0


def _paired(x: Tensor, y: Tensor, normalize: bool) -> tuple[Tensor, Tensor]:
    _check_embeddings(x, "image embeddings")
    _check_embeddings(y, "text embeddings")
    if x.shape != y.shape:
        raise ValueError(f"image and text embeddings must be paired row for row, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")  # fmt: skip
    return _on_sphere(x, "image embeddings", normalize), _on_sphere(y, "text embeddings", normalize)


def clip_loss(x: Tensor, y: Tensor, logit_scale: Tensor | float, *, normalize: bool = False) -> Tensor:
    r"""CLIP's symmetric InfoNCE: :math:`\tfrac12[\mathrm{CE}(s\,xy^\top, I) + \mathrm{CE}(s\,yx^\top, I)]`.

    Args:
        x: ``(N, d)`` unit image embeddings.
        y: ``(N, d)`` unit caption embeddings, row ``i`` the caption of image ``i``.
        logit_scale: :math:`s = 1/\tau` (a tensor to learn it).

    Example:
        >>> x = F.normalize(torch.randn(4, 3), dim=1)
        >>> float(clip_loss(x, x, 100.0)) < float(clip_loss(x, x.roll(1, 0), 100.0))
        True
    """
    x, y = _paired(x, y, normalize)
    with torch.autocast(device_type=x.device.type, enabled=False):
        logits = torch.as_tensor(logit_scale, dtype=torch.float32, device=x.device) * (x.float() @ y.float().T)
        target = torch.arange(x.shape[0], device=x.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def siglip_loss(
    x: Tensor, y: Tensor, logit_scale: Tensor | float, logit_bias: Tensor | float, *, normalize: bool = False
) -> Tensor:
    r"""SigLIP: :math:`-\frac1N \sum_{i,j} \log\sigma(z_{ij}(t\,x_i^\top y_j + b))`, :math:`z = 2I - 1`.

    Example:
        >>> x = F.normalize(torch.randn(4, 3), dim=1)
        >>> float(siglip_loss(x, x, 10.0, -10.0)) < float(siglip_loss(x, -x, 10.0, -10.0))
        True
    """
    x, y = _paired(x, y, normalize)
    with torch.autocast(device_type=x.device.type, enabled=False):
        t = torch.as_tensor(logit_scale, dtype=torch.float32, device=x.device)
        b = torch.as_tensor(logit_bias, dtype=torch.float32, device=x.device)
        logits = t * (x.float() @ y.float().T) + b
        signs = 2 * torch.eye(x.shape[0], device=x.device) - 1
        return -F.logsigmoid(signs * logits).sum() / x.shape[0]


def uniform_union_loss(x: Tensor, y: Tensor, t: float = 2.0, *, normalize: bool = False) -> Tensor:
    r"""Uniformity of both modalities as one set: :math:`L_{uniform}([x; y]; t)` over all distinct pairs."""
    x, y = _paired(x, y, normalize)
    return uniform_loss(torch.cat([x, y]), t=t)


def _clip_term(x: Tensor, y: Tensor, *, tau: float = 0.07) -> Tensor:
    return clip_loss(x, y, 1.0 / tau)


def _siglip_term(x: Tensor, y: Tensor, *, t: float = 10.0) -> Tensor:
    return siglip_loss(x, y, t, SIGLIP_BIAS)


def _uniform_union_term(x: Tensor, y: Tensor, *, t: float = 2.0) -> Tensor:
    return uniform_union_loss(x, y, t=t)


def _align_term(x: Tensor, y: Tensor, *, alpha: float = 2.0) -> Tensor:
    return align_loss(x, y, alpha=alpha)


def _uniform_term(x: Tensor, y: Tensor, *, t: float = 2.0) -> Tensor:
    # The paper's Figure 6: uniformity of both views, averaged.
    return (uniform_loss(x, t=t) + uniform_loss(y, t=t)) / 2


def _contrastive_term(
    x: Tensor, y: Tensor, *, tau: float = 0.5, symmetric: float = 1.0, extra_negatives: Tensor | None = None
) -> Tensor:
    return contrastive_loss(x, y, tau=tau, symmetric=bool(symmetric), extra_negatives=extra_negatives)


def _quickthought_term(x: Tensor, y: Tensor, *, context: float = 1.0, tau: float = 1.0) -> Tensor:
    # Objective strings parse numbers as floats; the context is a count of sentences.
    return _quickthought_share(x, y, None, _no_reduce, context=context, tau=tau)


def _align_share(x: Tensor, y: Tensor, rows: slice, reduce: Reduce, *, alpha: float = 2.0) -> Tensor:
    return align_loss(x, y, alpha=alpha, rows=rows)


def _uniform_share(x: Tensor, y: Tensor, rows: slice, reduce: Reduce, *, t: float = 2.0) -> Tensor:
    return (uniform_loss_share(x, t=t, rows=rows, reduce=reduce) + uniform_loss_share(y, t=t, rows=rows,
                                                                                       reduce=reduce)) / 2  # fmt: skip


def _contrastive_share(
    x: Tensor,
    y: Tensor,
    rows: slice,
    reduce: Reduce,
    *,
    tau: float = 0.5,
    symmetric: float = 1.0,
    extra_negatives: Tensor | None = None,
) -> Tensor:
    return contrastive_loss(x, y, tau=tau, symmetric=bool(symmetric), rows=rows, extra_negatives=extra_negatives)


def _quickthought_share(
    x: Tensor, y: Tensor, rows: slice | None, reduce: Reduce, *, context: float = 1.0, tau: float = 1.0
) -> Tensor:
    if float(context) != int(context):
        raise ValueError(f"quickthought context must be a whole number of sentences, got {context:g}")
    return quickthought_loss(x, y, context=int(context), tau=tau, rows=rows)


#: name -> (function of the two views, allowed parameters with their defaults). A static table: every objective
#: hsrl knows is here, so an objective string parses the same whatever has been imported. A new objective is a
#: function above and one row here.
TERMS: Mapping[str, tuple[Callable[..., Tensor], Mapping[str, float]]] = MappingProxyType(
    {
        "align": (_align_term, {"alpha": 2.0}),
        "uniform": (_uniform_term, {"t": 2.0}),
        "contrastive": (_contrastive_term, {"tau": 0.5, "symmetric": 1.0}),
        "quickthought": (_quickthought_term, {"context": 1.0, "tau": 1.0}),
        # x = images, y = captions (hsrl.losses_crossmodal binds CLIP/SigLIP's scales to a model's parameters)
        "clip": (_clip_term, {"tau": 0.07}),
        "siglip": (_siglip_term, {"t": 10.0}),
        "uniform_union": (_uniform_union_term, {"t": 2.0}),
    }
)
#: name -> this process's share of the term on a gathered batch (``fn(x, y, rows, reduce, **params)``): over the
#: processes, the shares' values and gradients add up to the term's. A term without a row here is computed
#: whole on every process (correct, only not divided).
SHARES: Mapping[str, Callable[..., Tensor]] = MappingProxyType(
    {"align": _align_share, "uniform": _uniform_share, "contrastive": _contrastive_share,
     "quickthought": _quickthought_share}
)  # fmt: skip
#: Terms that score rows against negatives and so can take extra ones (e.g. mined hard negatives): their
#: functions accept ``extra_negatives=``. The other terms ignore negatives (uniformity is of the two views only).
NEGATIVE_TERMS = frozenset({"contrastive"})


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def parse_objective(spec: str) -> list[LossTerm]:
    """Parse an objective as the paper writes it: ``align:1,alpha=2 + uniform:1,t=2``.

    A term is ``name[:weight][,key=value...]``; terms are joined by ``+``. The weight
    defaults to 1. Unknown names or parameters, non-positive weights and parameters,
    and malformed numbers raise ``ValueError`` naming the offending piece.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("the objective is empty; write e.g. 'align:1,alpha=2 + uniform:1,t=2'")
    terms: list[LossTerm] = []
    for raw in spec.split("+"):
        piece = raw.strip()
        head, *assignments = [p.strip() for p in piece.split(",")]
        name, _, weight_text = head.partition(":")
        name = name.strip().lower()
        if name not in TERMS:
            raise ValueError(f"unknown loss term {name!r} in {piece!r}; known terms: {', '.join(sorted(TERMS))}")
        weight_text = weight_text.strip() or "1"
        if not re.fullmatch(_NUMBER, weight_text) or float(weight_text) <= 0:
            raise ValueError(f"the weight of {name!r} must be a number > 0, got {weight_text!r}")
        defaults = TERMS[name][1]
        params = dict(defaults)
        for assignment in assignments:
            key, eq, value = (s.strip() for s in assignment.partition("="))
            if not eq or key not in defaults:
                allowed = ", ".join(f"{k}=" for k in defaults) or "none"
                raise ValueError(f"bad parameter {assignment!r} for {name!r}; allowed: {allowed}")
            if not re.fullmatch(_NUMBER, value):
                raise ValueError(f"parameter {key} of {name!r} must be a number, got {value!r}")
            params[key] = float(value)
            if key != "symmetric":
                _check_positive(params[key], f"{name} parameter {key}")
        if any(term.name == name for term in terms):
            raise ValueError(f"the term {name!r} appears twice in {spec!r}")
        terms.append(LossTerm(name, float(weight_text), params))
    return terms


def term_value(term: LossTerm, x: Tensor, y: Tensor) -> Tensor:
    """One term's unweighted value, from the static table :data:`TERMS` with the term's own parameters."""
    return TERMS[term.name][0](x, y, **term.params)


def weighted_terms(
    objective: Sequence[LossTerm],
    x: Tensor,
    y: Tensor,
    value_of: Callable[[LossTerm, Tensor, Tensor], Tensor] = term_value,
) -> dict[str, Tensor]:
    r"""Each term's unweighted value under its name and :math:`\sum_k w_k L_k` as ``loss``; ``value_of``
    computes one term (a loss with learnable parameters, e.g. CLIP's scale, passes its own)."""
    values: dict[str, Tensor] = {}
    total: Tensor | None = None
    for term in objective:
        value = value_of(term, x, y)
        values[term.name] = value
        total = value * term.weight if total is None else total + value * term.weight
    if total is None:
        raise ValueError("an objective needs at least one term")
    values["loss"] = total
    return values


class HypersphereLoss(nn.Module):
    r"""A weighted sum of the paper's objectives, configured as the paper writes it.

        ``HypersphereLoss("align:1,alpha=2 + uniform:1,t=2")`` is the paper's Figure 6,
        :math:`L = L_{align}(x, y; \alpha) + \lambda \cdot (L_{uniform}(x; t) + L_{uniform}(y; t)) / 2`;
        ``"contrastive:1,tau=0.5"`` is InfoNCE with in-batch negatives; ``"quickthought:1,context=1"`` is
    Quick-Thought's objective on a run of consecutive sentences. :data:`TERMS` lists every term.

        With ``gather=True`` and a process group of more than one process, both views are
        first gathered from every process with gradients
        (:func:`hsrl.distributed.gather_with_grad`), so uniformity and the contrastive
        negatives see the global batch, as the paper's single-process runs did.
        :func:`hsrl.training.fit` gathers itself, so it is off by default; turn it on in a
        hand-written distributed loop.

        ``forward`` returns the total; :meth:`terms` also returns each weighted part.
    """

    def __init__(self, objective: str | list[LossTerm], *, gather: bool = False) -> None:
        super().__init__()
        self.objective = parse_objective(objective) if isinstance(objective, str) else list(objective)
        if not self.objective:
            raise ValueError("an objective needs at least one term")
        self.gather = gather

    def extra_repr(self) -> str:
        return " + ".join(str(term) for term in self.objective)

    def takes_negatives(self) -> bool:
        """Whether a term of the objective can use extra negatives (:data:`NEGATIVE_TERMS`)."""
        return any(term.name in NEGATIVE_TERMS for term in self.objective)

    def _negative_params(self, term: LossTerm, negatives: Tensor | None) -> dict[str, Tensor]:
        if negatives is None or term.name not in NEGATIVE_TERMS:
            return {}
        return {"extra_negatives": negatives}

    def _check_negatives(self, negatives: Tensor | None) -> None:
        if negatives is not None and not self.takes_negatives():
            raise ValueError(f"extra negatives need a term that uses negatives ({', '.join(sorted(NEGATIVE_TERMS))}) "
                             f"in the objective {self.extra_repr()!r}")  # fmt: skip

    def terms(self, x: Tensor, y: Tensor, *, negatives: Tensor | None = None) -> dict[str, Tensor]:
        """Each term's unweighted value under its name, and the weighted total as ``loss``.

        ``negatives``: optional ``(M, d)`` extra negatives (e.g. one mined hard negative per pair), scored by the
        contrastive term beside the in-batch ones (``contrastive_loss(..., extra_negatives=)``).
        """
        self._check_negatives(negatives)
        if self.gather:
            from hsrl.distributed import gather_with_grad

            x, y = gather_with_grad(x), gather_with_grad(y)
            negatives = None if negatives is None else gather_with_grad(negatives)
        return weighted_terms(
            self.objective, x, y,
            lambda term, a, b: TERMS[term.name][0](a, b, **term.params, **self._negative_params(term, negatives)),
        )  # fmt: skip

    def share_terms(
        self, x: Tensor, y: Tensor, *, rows: slice, reduce: Reduce, processes: int, negatives: Tensor | None = None
    ) -> dict[str, Tensor]:
        """This process's share of :meth:`terms` of a batch gathered from ``processes`` processes.

        ``x``, ``y``: the whole gathered batch; ``rows``: this process's rows of it; ``negatives``: the gathered
        extra negatives, if any. Summed over the processes, the shares (and their gradients) are :meth:`terms`
        (and its gradients), while each process computes only its rows' part of every pairwise term
        (:data:`SHARES`), as lightly's losses do; a term without a share function is computed whole and divided
        by ``processes``.
        """
        self._check_negatives(negatives)

        def share_of(term: LossTerm, a: Tensor, b: Tensor) -> Tensor:
            share = SHARES.get(term.name)
            extra = self._negative_params(term, negatives)
            if share is None:
                return TERMS[term.name][0](a, b, **term.params, **extra) / processes
            return share(a, b, rows, reduce, **term.params, **extra)

        return weighted_terms(self.objective, x, y, share_of)

    def forward(self, x: Tensor, y: Tensor, *, negatives: Tensor | None = None) -> Tensor:
        return self.terms(x, y, negatives=negatives)["loss"]
