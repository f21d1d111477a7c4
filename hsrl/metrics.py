r"""Alignment and uniformity as evaluation metrics over a whole dataset, and plot data.

Wang & Isola, *Understanding Contrastive Representation Learning through Alignment
and Uniformity on the Hypersphere*, ICML 2020 (arXiv 2005.10242).

The losses in :mod:`hsrl.losses` score one batch; an evaluation wants the same two
numbers over a whole validation set, which rarely fits in one batch:

* alignment :math:`\mathbb{E}\,\lVert f(x) - f(y) \rVert_2^{\alpha}` is a plain mean, so it
  is streamed exactly as a float64 running sum;
* uniformity :math:`\log \mathbb{E}\, e^{-t \lVert f(a) - f(b) \rVert_2^2}` needs every pair,
  so it is computed exactly over a uniform reservoir sample of at most ``sample_size``
  embeddings (exactly over the whole set when it fits).

:func:`positive_distance_histogram` and :func:`angle_density` return the data behind the
paper's Figure 3 (distances of positive pairs; feature density on the circle) as numpy
arrays; drawing them is :mod:`hsrl.plots`' business.

Example:
    >>> import torch, torch.nn.functional as F
    >>> from hsrl.metrics import AlignUniformMeter
    >>> meter = AlignUniformMeter(alpha=2, t=2, sample_size=4096, seed=0)
    >>> for _ in range(3):
    ...     x = F.normalize(torch.randn(32, 8), dim=1)
    ...     meter.update(x, F.normalize(x + 0.1 * torch.randn(32, 8), dim=1))
    >>> result = meter.compute()
    >>> result.num_pairs, result.num_points_sampled
    (96, 192)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import zip_longest

import numpy as np
import torch
from torch import Tensor

from hsrl.losses import _check_embeddings, _check_positive, _on_sphere, align_loss, uniform_loss

__all__ = [
    "AlignUniformMeter",
    "AlignUniformResult",
    "AngleDensity",
    "DistanceHistogram",
    "alignment",
    "angle_density",
    "positive_distance_histogram",
    "uniformity",
]

#: Stream positions per block of reservoir random numbers. Each block has its own
#: generator seeded from ``(seed, block)``, so the draws, and hence the sample, depend
#: only on a point's position in the stream, never on how the stream was batched.
_RANDOM_BLOCK = 1 << 16

#: Rows converted to float64 at once when measuring distances: bounds the extra memory.
_ROW_CHUNK = 1 << 16

#: Kernel evaluations (angles x grid points) per chunk in :func:`angle_density`.
_KDE_CHUNK_ELEMENTS = 1 << 22

Embeddings = Tensor | np.ndarray | Iterable[Tensor | np.ndarray]


def _check_count(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _as_tensor(x: object, name: str) -> Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    return x


# --------------------------------------------------------------------------- the meter


@dataclass(frozen=True)
class AlignUniformResult:
    """What :meth:`AlignUniformMeter.compute` measured.

    Attributes:
        alignment: mean ``‖x − y‖₂^alpha`` over every pair seen, or ``None`` when only
            unpaired points were given.
        uniformity: ``log mean exp(−t‖a − b‖₂²)`` over the distinct pairs of the sample.
        num_pairs: positive pairs seen.
        num_points_seen: embeddings offered to the sample (both rows of every pair).
        num_points_sampled: embeddings in the sample, ``min(num_points_seen, sample_size)``.
        alpha: the alignment exponent.
        t: the uniformity temperature.
    """

    alignment: float | None
    uniformity: float
    num_pairs: int
    num_points_seen: int
    num_points_sampled: int
    alpha: float
    t: float

    @property
    def uniformity_pairs(self) -> int:
        """Distinct pairs behind ``uniformity``: ``m(m − 1)/2`` with ``m`` points sampled."""
        return self.num_points_sampled * (self.num_points_sampled - 1) // 2

    @property
    def uniformity_is_exact(self) -> bool:
        """Whether every embedding seen was in the sample (no sampling error)."""
        return self.num_points_sampled == self.num_points_seen


class AlignUniformMeter:
    r"""Stream alignment and uniformity over a dataset of L2-normalised embeddings.

    * Alignment, :math:`\frac{1}{P}\sum_{i=1}^{P} \lVert x_i - y_i \rVert_2^{\alpha}` over all
      ``P`` pairs seen, is exact: each batch's :func:`~hsrl.losses.align_loss` is taken in
      float64 and added to a float64 running sum.
    * Uniformity, :math:`\log \frac{2}{m(m-1)} \sum_{a<b} e^{-t \lVert z_a - z_b \rVert_2^2}`,
      is the exact :func:`~hsrl.losses.uniform_loss` (in float64) over all
      ``m(m − 1)/2`` distinct pairs of a uniform random sample of ``m`` embeddings,
      ``m = min(points seen, sample_size)``: 8,386,560 pairs for the default 4096. When the
      dataset has at most ``sample_size`` embeddings the value is exact. Both rows of every
      pair are offered to the sample, in the order ``x[0], y[0], x[1], y[1], ...``.

    The sample is kept by reservoir sampling (Vitter's Algorithm R: the ``i``-th point,
    counting from 0, replaces a uniformly chosen slot with probability ``sample_size/(i+1)``),
    so after ``n`` points every subset of ``sample_size`` of them is equally likely. Its
    random numbers come from ``torch.Generator`` objects seeded from ``seed`` and the
    point's stream position, so the same seed and the same stream give the same result,
    however the stream is split into batches.

    Memory is ``sample_size × d`` floats (float32, or float64 for float64 input) on the
    device of the first batch; nothing else grows with the dataset. No gradients are kept.

    Args:
        alpha: alignment exponent :math:`\alpha > 0` (the paper's default is 2).
        t: uniformity temperature :math:`t > 0` (the paper's default is 2).
        sample_size: most embeddings kept for uniformity, at least 2.
        seed: non-negative integer seeding the reservoir.

    Example:
        >>> import torch.nn.functional as F
        >>> meter = AlignUniformMeter(sample_size=100)
        >>> z = F.normalize(torch.randn(10, 3), dim=1)
        >>> meter.update(z, z)
        >>> meter.compute().alignment
        0.0
    """

    def __init__(self, alpha: float = 2.0, t: float = 2.0, *, sample_size: int = 4096, seed: int = 0) -> None:
        _check_positive(alpha, "alpha")
        _check_positive(t, "t")
        self.alpha = float(alpha)
        self.t = float(t)
        self.sample_size = _check_count(sample_size, "sample_size", 2)
        self.seed = _check_count(seed, "seed", 0)
        self.reset()

    def reset(self) -> None:
        """Forget everything seen; the parameters stay."""
        self._align_sum: Tensor | None = None
        self._num_pairs = 0
        self._num_seen = 0
        self._dim: int | None = None
        self._sample: Tensor | None = None
        self._positions = torch.full((self.sample_size,), -1, dtype=torch.long)
        self._block_id = -1
        self._block_uniforms = torch.empty(0, dtype=torch.float64)

    @property
    def num_pairs(self) -> int:
        """Positive pairs seen so far."""
        return self._num_pairs

    @property
    def num_points_seen(self) -> int:
        """Embeddings offered to the sample so far."""
        return self._num_seen

    @property
    def sample(self) -> Tensor:
        """The ``(m, d)`` sampled embeddings, ``m = min(points seen, sample_size)``."""
        if self._sample is None:
            raise ValueError("nothing has been seen yet; call update() first")
        return self._sample[: min(self._num_seen, self.sample_size)]

    @property
    def sample_positions(self) -> Tensor:
        """Stream position of each row of :attr:`sample` (``x[i]`` of a pair batch is at
        ``2i`` past the batch's start, ``y[i]`` at ``2i + 1``)."""
        return self._positions[: min(self._num_seen, self.sample_size)].clone()

    @torch.no_grad()
    def update(self, x: Tensor, y: Tensor | None = None) -> None:
        """Add a batch of positive pairs ``(x[i], y[i])``, or unpaired points ``x`` alone.

        Args:
            x: ``(N, d)`` L2-normalised embeddings.
            y: ``(N, d)`` positives paired row for row with ``x``, or ``None`` to feed
                only the uniformity sample (e.g. the embeddings of a plain dataset).

        Raises:
            ValueError: a bad shape or dtype, ``x`` and ``y`` not paired row for row, a
                dimension different from earlier batches, rows that are not unit vectors
                or not finite.
        """
        _check_embeddings(x, "x")
        if y is not None:
            _check_embeddings(y, "y")
            if x.shape != y.shape:
                raise ValueError(
                    f"x and y must be paired row for row, got shapes {tuple(x.shape)} and {tuple(y.shape)}"
                )
        if self._dim is not None and x.shape[1] != self._dim:
            raise ValueError(f"earlier batches had {self._dim} features, this one has {x.shape[1]}")
        x = x.detach()
        if y is None:
            _on_sphere(x, "x", False)
            points = x
        else:
            y = y.detach()
            # align_loss also checks that both are finite unit vectors.
            batch_sum = align_loss(x.double(), y.double(), self.alpha) * x.shape[0]
            self._align_sum = batch_sum if self._align_sum is None else self._align_sum + batch_sum
            self._num_pairs += x.shape[0]
            points = torch.stack([x, y], dim=1).reshape(-1, x.shape[1])
        if self._sample is None:
            dtype = torch.promote_types(x.dtype, torch.float32)
            self._sample = x.new_empty((self.sample_size, x.shape[1]), dtype=dtype)
            self._dim = x.shape[1]
        self._offer(points.to(self._sample.device, self._sample.dtype))

    def _offer(self, points: Tensor) -> None:
        """Algorithm R over ``points``, vectorised over the batch."""
        assert self._sample is not None
        k, start, m = self.sample_size, self._num_seen, points.shape[0]
        fill = max(0, min(m, k - start))
        if fill:
            self._sample[start : start + fill] = points[:fill]
            self._positions[start : start + fill] = torch.arange(start, start + fill)
        if fill < m:
            positions = torch.arange(start + fill, start + m)
            slots = (self._uniforms(start + fill, start + m) * (positions + 1)).floor().long()
            taken = slots < k
            # Algorithm R replaces one point at a time: when a slot is drawn twice in one
            # batch, the later point is the one that survives.
            winner = torch.full((k,), -1, dtype=torch.long)
            winner.scatter_reduce_(0, slots[taken], positions[taken] - start, reduce="amax")
            hit = (winner >= 0).nonzero().squeeze(1)
            rows = winner[hit]
            device = self._sample.device
            self._sample[hit.to(device)] = points[rows.to(device)]
            self._positions[hit] = rows + start
        self._num_seen += m

    def _uniforms(self, lo: int, hi: int) -> Tensor:
        """Uniform [0, 1) numbers for stream positions ``lo..hi-1`` (float64, CPU)."""
        parts = []
        for block in range(lo // _RANDOM_BLOCK, (hi - 1) // _RANDOM_BLOCK + 1):
            if block != self._block_id:
                # SeedSequence mixes (seed, block) into well-separated generator seeds.
                state = np.random.SeedSequence([self.seed, block]).generate_state(1, np.uint64)
                generator = torch.Generator().manual_seed(int(state[0]))
                self._block_uniforms = torch.rand(_RANDOM_BLOCK, generator=generator, dtype=torch.float64)
                self._block_id = block
            base = block * _RANDOM_BLOCK
            parts.append(self._block_uniforms[max(lo, base) - base : min(hi, base + _RANDOM_BLOCK) - base])
        return torch.cat(parts)

    @torch.no_grad()
    def compute_alignment(self) -> float:
        """Exact mean ``‖x − y‖₂^alpha`` over every pair seen.

        Raises:
            ValueError: no pairs have been seen.
        """
        if self._align_sum is None:
            raise ValueError("no positive pairs seen; call update(x, y) before computing alignment")
        return float(self._align_sum) / self._num_pairs

    @torch.no_grad()
    def compute_uniformity(self) -> float:
        """``uniform_loss`` (float64) over all distinct pairs of the sample.

        Raises:
            ValueError: fewer than 2 points have been seen.
        """
        if self._num_seen == 0:
            raise ValueError("nothing seen; call update() before computing uniformity")
        if self._num_seen < 2:
            raise ValueError("uniformity needs at least 2 sampled points, got 1")
        return float(uniform_loss(self.sample.double(), t=self.t))

    def compute(self) -> AlignUniformResult:
        """Both metrics and the counts behind them.

        Raises:
            ValueError: nothing has been seen, or fewer than 2 points for uniformity.
        """
        uniformity_value = self.compute_uniformity()
        return AlignUniformResult(
            alignment=self.compute_alignment() if self._num_pairs else None,
            uniformity=uniformity_value,
            num_pairs=self._num_pairs,
            num_points_seen=self._num_seen,
            num_points_sampled=min(self._num_seen, self.sample_size),
            alpha=self.alpha,
            t=self.t,
        )


# --------------------------------------------------------------------------- one-call helpers


def _batches(x: Embeddings, name: str, batch_size: int) -> Iterator[Tensor]:
    """Rows of one tensor in slices of ``batch_size``, or the batches of an iterable."""
    if isinstance(x, np.ndarray | Tensor):
        x = _as_tensor(x, name)
        _check_embeddings(x, name)
        for start in range(0, x.shape[0], batch_size):
            yield x[start : start + batch_size]
        return
    if isinstance(x, str | bytes) or not isinstance(x, Iterable):
        raise ValueError(f"{name} must be a tensor, an array or an iterable of batches")
    for batch in x:
        yield _as_tensor(batch, f"a batch of {name}")


def alignment(x: Embeddings, y: Embeddings, alpha: float = 2.0, *, batch_size: int = 65536) -> float:
    r"""Dataset alignment: :math:`\frac{1}{P}\sum_i \lVert x_i - y_i \rVert_2^{\alpha}`.

    Exact (a float64 running sum), computed in batches so memory stays bounded.

    Args:
        x: ``(P, d)`` L2-normalised embeddings, or an iterable of ``(N_b, d)`` batches.
        y: their positives, in the same form, paired row for row with ``x``.
        alpha: exponent :math:`\alpha > 0`.
        batch_size: rows per step when ``x`` and ``y`` are whole tensors or arrays.

    Returns:
        The mean over all ``P`` pairs.

    Example:
        >>> import torch.nn.functional as F
        >>> z = F.normalize(torch.randn(5, 3), dim=1)
        >>> round(alignment(z, -z), 6)
        4.0
    """
    _check_positive(alpha, "alpha")
    _check_count(batch_size, "batch_size", 1)
    # Only alignment is read back; the smallest sample keeps the reservoir's cost nil.
    meter = AlignUniformMeter(alpha=alpha, sample_size=2)
    missing = object()
    batches = zip_longest(_batches(x, "x", batch_size), _batches(y, "y", batch_size), fillvalue=missing)
    for xb, yb in batches:
        if xb is missing or yb is missing:
            raise ValueError("x and y have different numbers of batches")
        meter.update(xb, yb)
    return meter.compute_alignment()


def uniformity(x: Embeddings, t: float = 2.0, *, sample_size: int = 4096, seed: int = 0) -> float:
    r"""Dataset uniformity: :math:`\log \frac{2}{m(m-1)} \sum_{a<b} e^{-t\lVert z_a-z_b\rVert^2}`.

    Over all ``m(m − 1)/2`` distinct pairs of a uniform random sample of
    ``m = min(N, sample_size)`` rows (see :class:`AlignUniformMeter`); exact, and equal to
    the paper's ``torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()``, when
    ``N <= sample_size``.

    Args:
        x: ``(N, d)`` L2-normalised embeddings, or an iterable of ``(N_b, d)`` batches.
        t: temperature :math:`t > 0`.
        sample_size: most embeddings kept, at least 2.
        seed: seeds the sample; the same seed and data give the same value.

    Returns:
        The estimate (negative; its minimum tends to ``-2t`` in high dimension).
    """
    meter = AlignUniformMeter(t=t, sample_size=sample_size, seed=seed)
    for batch in _batches(x, "x", _ROW_CHUNK):
        meter.update(batch)
    return meter.compute_uniformity()


# --------------------------------------------------------------------------- plot data


@dataclass(frozen=True)
class DistanceHistogram:
    """Histogram of positive-pair distances (the paper's Figure 3, alignment panel).

    Attributes:
        counts: ``(bins,)`` int64 counts; they sum to ``num_pairs``.
        density: ``(bins,)`` counts / (``num_pairs`` × bin width): integrates to 1.
        edges: ``(bins + 1,)`` bin edges.
        mean_distance: mean ``‖x − y‖₂`` over all pairs (float64, unclipped).
        num_pairs: pairs counted.
    """

    counts: np.ndarray
    density: np.ndarray
    edges: np.ndarray
    mean_distance: float
    num_pairs: int


def _pair_distances(x: Tensor, y: Tensor) -> np.ndarray:
    """``‖x_i − y_i‖₂`` in float64, a chunk of rows at a time."""
    parts = [
        torch.linalg.vector_norm(x[s : s + _ROW_CHUNK].double() - y[s : s + _ROW_CHUNK].double(), dim=1).cpu()
        for s in range(0, x.shape[0], _ROW_CHUNK)
    ]
    return torch.cat(parts).numpy()


@torch.no_grad()
def positive_distance_histogram(
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    bins: int = 50,
    range: tuple[float, float] = (0.0, 2.0),
) -> DistanceHistogram:
    r"""Histogram of :math:`\lVert f(x_i) - f(y_i) \rVert_2` over positive pairs.

    Unit vectors are at most 2 apart, so the default ``range`` covers every pair; a
    distance that rounding puts just outside ``range`` is counted in the nearest end bin,
    so the counts always sum to the number of pairs.

    Args:
        x: ``(P, d)`` L2-normalised embeddings.
        y: ``(P, d)`` positives, paired row for row with ``x``.
        bins: number of equal-width bins.
        range: ``(low, high)`` of the bins, ``low < high``.

    Returns:
        Counts, density, edges and the mean distance, as a :class:`DistanceHistogram`.

    Example:
        >>> import torch.nn.functional as F
        >>> z = F.normalize(torch.randn(6, 3), dim=1)
        >>> hist = positive_distance_histogram(z, z, bins=4)
        >>> hist.counts.tolist(), hist.mean_distance
        ([6, 0, 0, 0], 0.0)
    """
    x, y = _as_tensor(x, "x"), _as_tensor(y, "y")
    _check_embeddings(x, "x")
    _check_embeddings(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x and y must be paired row for row, got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    _check_count(bins, "bins", 1)
    try:
        low, high = (float(v) for v in range)
    except (TypeError, ValueError):
        low, high = math.nan, math.nan
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"range must be two finite numbers (low, high) with low < high, got {range!r}")
    _on_sphere(x, "x", False)
    _on_sphere(y, "y", False)
    distances = _pair_distances(x.detach(), y.detach())
    counts, edges = np.histogram(np.clip(distances, low, high), bins=bins, range=(low, high))
    num_pairs = int(distances.size)
    return DistanceHistogram(
        counts=counts.astype(np.int64),
        density=counts / (num_pairs * np.diff(edges)),
        edges=edges,
        mean_distance=float(distances.mean()),
        num_pairs=num_pairs,
    )


@dataclass(frozen=True)
class AngleDensity:
    """Density of 2-D features over the circle (the paper's Figure 3, uniformity panel).

    Attributes:
        grid: ``(num_points,)`` evenly spaced angles from ``−π`` to ``π`` inclusive (the
            two ends are the same point, so a plot closes the circle).
        density: ``(num_points,)`` density at ``grid``; integrates to 1 over the circle.
        angles: ``(N,)`` the features' angles, in ``[−π, π)``.
        bandwidth: the Gaussian kernel's standard deviation, in radians.
    """

    grid: np.ndarray
    density: np.ndarray
    angles: np.ndarray
    bandwidth: float


def _scott_bandwidth(angles: np.ndarray) -> float:
    """Scott's rule ``σ n^(−1/5)``, σ measured around the circular mean.

    Measuring the spread as deviations from the circular mean keeps a cluster that
    straddles ``±π`` from looking spread over the whole circle.
    """
    n = angles.size
    if n < 2:
        return 0.0
    centre = math.atan2(np.sin(angles).mean(), np.cos(angles).mean())
    deviations = np.remainder(angles - centre + math.pi, 2 * math.pi) - math.pi
    return float(deviations.std(ddof=1)) * n ** (-1 / 5)


@torch.no_grad()
def angle_density(z: Tensor | np.ndarray, num_points: int = 512, bandwidth: float | None = None) -> AngleDensity:
    r"""Wrapped Gaussian kernel density of the angles of 2-D features.

    With :math:`\theta_i = \operatorname{atan2}(z_{i,2}, z_{i,1}) \in [-\pi, \pi)`,

    .. math::
        p(\phi) \propto \frac{1}{N}\sum_{i=1}^{N} \sum_{s \in \{-2\pi, 0, 2\pi\}}
        \exp\Big(-\frac{(\phi - \theta_i + s)^2}{2h^2}\Big),

    evaluated on an even grid over :math:`[-\pi, \pi]` and normalised so that its
    trapezoid integral over the grid (one full turn) is 1. The shifted copies make the
    estimate wrap around the circle: mass near :math:`\pi` also shows near :math:`-\pi`.

    The bandwidth defaults to Scott's rule, :math:`h = \sigma N^{-1/5}` (the factor of
    ``scipy.stats.gaussian_kde``), with :math:`\sigma` the standard deviation (ddof=1) of
    the angles measured from their circular mean, and is never narrower than the grid
    spacing :math:`2\pi/(\text{num\_points} - 1)` so that even collapsed features give a
    peak the grid resolves. Rows need not be unit vectors, but must be nonzero.

    Args:
        z: ``(N, 2)`` features.
        num_points: grid points, at least 3.
        bandwidth: kernel standard deviation in radians; ``None`` for Scott's rule.

    Returns:
        Grid, density, angles and bandwidth, as an :class:`AngleDensity`.

    Example:
        >>> angles = torch.linspace(-3, 3, 100)
        >>> result = angle_density(torch.stack([angles.cos(), angles.sin()], dim=1))
        >>> result.grid.shape, result.density.shape
        ((512,), (512,))
    """
    z = _as_tensor(z, "z")
    _check_embeddings(z, "z")
    if z.shape[1] != 2:
        raise ValueError(f"angle_density needs 2-D features, got shape {tuple(z.shape)}")
    _check_count(num_points, "num_points", 3)
    if bandwidth is not None:
        _check_positive(bandwidth, "bandwidth")
    zd = z.detach().double().cpu()
    if not torch.isfinite(zd).all():
        raise ValueError("z contains NaN or infinite values")
    if (zd == 0).all(dim=1).any():
        raise ValueError("z has a zero row, whose angle is undefined")
    angles = torch.atan2(zd[:, 1], zd[:, 0]).numpy()
    angles = np.where(angles >= math.pi, angles - 2 * math.pi, angles)  # atan2 gives (−π, π]
    grid = np.linspace(-math.pi, math.pi, num_points)
    spacing = grid[1] - grid[0]
    h = float(bandwidth) if bandwidth is not None else max(_scott_bandwidth(angles), spacing)
    density = np.zeros(num_points)
    chunk = max(1, _KDE_CHUNK_ELEMENTS // num_points)
    for start in range(0, angles.size, chunk):
        diff = grid[None, :] - angles[start : start + chunk, None]
        for shift in (-2 * math.pi, 0.0, 2 * math.pi):
            density += np.exp(-0.5 * ((diff + shift) / h) ** 2).sum(axis=0)
    # The grid's two ends are the same angle, so the trapezoid rule is one full turn;
    # dividing by it also absorbs the far images (±4π, ...) the sum leaves out.
    density /= spacing * (density.sum() - (density[0] + density[-1]) / 2)
    return AngleDensity(grid=grid, density=density, angles=angles, bandwidth=h)
