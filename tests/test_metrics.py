"""Dataset-level alignment/uniformity and the diagnostic-plot data (hsrl.metrics)."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import gaussian_kde

from hsrl.metrics import (
    AlignUniformMeter,
    alignment,
    angle_density,
    positive_distance_histogram,
    uniformity,
)


def sphere(n: int, d: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)


def positive_pairs(n: int, d: int, seed: int, noise: float = 0.5):
    x = sphere(n, d, seed)
    g = torch.Generator().manual_seed(seed + 1)
    y = F.normalize(x + noise * torch.randn(n, d, generator=g, dtype=x.dtype), dim=1)
    return x, y


def reference_alignment(x: torch.Tensor, y: torch.Tensor, alpha: float) -> float:
    return float((x.double() - y.double()).norm(dim=1).pow(alpha).mean())


def reference_uniformity(z: torch.Tensor, t: float) -> float:
    """The paper's code, in float64."""
    return float(torch.pdist(z.double(), p=2).pow(2).mul(-t).exp().mean().log())


def split(n: int, cuts: list[int]) -> list[slice]:
    edges = [0, *sorted({c for c in cuts if 0 < c < n}), n]
    return [slice(a, b) for a, b in pairwise(edges)]


def on_circle(angles: np.ndarray) -> torch.Tensor:
    a = torch.as_tensor(angles, dtype=torch.float64)
    return torch.stack([a.cos(), a.sin()], dim=1)


def trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(((y[1:] + y[:-1]) / 2 * np.diff(x)).sum())


# --------------------------------------------------------------------------- alignment


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 60),
    d=st.integers(1, 6),
    alpha=st.sampled_from([0.5, 1.0, 2.0, 3.7]),
    seed=st.integers(0, 10_000),
    cuts=st.lists(st.integers(1, 59), max_size=6),
)
def test_streaming_alignment_over_any_batches_equals_one_shot(n, d, alpha, seed, cuts):
    x, y = positive_pairs(n, d, seed)
    meter = AlignUniformMeter(alpha=alpha, sample_size=8)
    for rows in split(n, cuts):
        meter.update(x[rows].float(), y[rows].float())
    expected = reference_alignment(x.float(), y.float(), alpha)
    assert meter.compute_alignment() == pytest.approx(expected, rel=1e-12, abs=1e-15)
    result = meter.compute()
    assert result.alignment == meter.compute_alignment()
    assert (result.num_pairs, result.num_points_seen) == (n, 2 * n)
    assert (result.alpha, result.t) == (alpha, 2.0)


def test_alignment_function_on_tensors_arrays_and_batch_iterables():
    x, y = positive_pairs(103, 5, seed=4)
    expected = reference_alignment(x, y, 1.5)
    assert alignment(x, y, alpha=1.5, batch_size=7) == pytest.approx(expected, rel=1e-12)
    assert alignment(x.numpy(), y.numpy(), alpha=1.5) == pytest.approx(expected, rel=1e-12)
    batches_x, batches_y = x.split(10), y.split(10)
    assert alignment(iter(batches_x), iter(batches_y), alpha=1.5) == pytest.approx(expected, rel=1e-12)
    # Antipodal pairs are 2 apart: alignment 2**alpha.
    assert alignment(x, -x, alpha=3.0) == pytest.approx(8.0, rel=1e-12)


def test_meter_keeps_no_gradient():
    x = sphere(6, 3, seed=0).requires_grad_()
    meter = AlignUniformMeter()
    meter.update(x, x * 1)
    assert not meter.sample.requires_grad
    assert isinstance(meter.compute().alignment, float)


# --------------------------------------------------------------------------- uniformity


@pytest.mark.parametrize("t", [0.5, 2.0, 5.0])
def test_uniformity_equals_paper_reference_when_data_fit_the_sample(t):
    z = sphere(300, 5, seed=1)
    assert uniformity(z, t=t) == pytest.approx(reference_uniformity(z, t), abs=1e-6)
    # float32 embeddings are measured in float64: exact against float64 maths on them.
    z32 = z.float()
    assert uniformity(z32, t=t) == pytest.approx(reference_uniformity(z32, t), abs=1e-9)


def test_meter_uniformity_uses_both_views_of_every_pair():
    x, y = positive_pairs(150, 4, seed=2)
    meter = AlignUniformMeter(t=3.0, sample_size=300)
    for rows in split(150, [17, 90]):
        meter.update(x[rows], y[rows])
    result = meter.compute()
    assert result.uniformity == pytest.approx(reference_uniformity(torch.cat([x, y]), 3.0), abs=1e-6)
    assert result.uniformity_is_exact
    assert (result.num_points_sampled, result.uniformity_pairs) == (300, 300 * 299 // 2)


def test_subsampled_uniformity_is_seeded_and_close_to_the_full_value():
    z = sphere(3000, 3, seed=3)
    full = reference_uniformity(z, 2.0)
    estimates = [uniformity(z, sample_size=500, seed=seed) for seed in range(5)]
    assert uniformity(z, sample_size=500, seed=0) == estimates[0]
    assert len(set(estimates)) == len(estimates)
    assert max(abs(e - full) for e in estimates) < 0.05
    meter = AlignUniformMeter(sample_size=500)
    meter.update(z)
    result = meter.compute()
    assert (result.num_points_sampled, result.num_points_seen) == (500, 3000)
    assert not result.uniformity_is_exact
    assert result.uniformity == estimates[0]


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(1, 299), max_size=12), seed=st.integers(0, 2**32))
def test_sample_depends_on_the_stream_not_on_its_batching(cuts, seed):
    z = sphere(300, 3, seed=5)
    whole = AlignUniformMeter(sample_size=16, seed=seed)
    whole.update(z)
    pieces = AlignUniformMeter(sample_size=16, seed=seed)
    for rows in split(300, cuts):
        pieces.update(z[rows])
    assert torch.equal(whole.sample_positions, pieces.sample_positions)
    assert torch.equal(whole.sample, pieces.sample)


def test_batched_reservoir_equals_one_point_at_a_time():
    # One point per update is Algorithm R itself; a big batch must resolve a slot drawn
    # twice the same way (the later point wins).
    z = sphere(2000, 2, seed=6)
    batched = AlignUniformMeter(sample_size=8, seed=11)
    batched.update(z)
    single = AlignUniformMeter(sample_size=8, seed=11)
    for i in range(z.shape[0]):
        single.update(z[i : i + 1])
    assert torch.equal(batched.sample_positions, single.sample_positions)
    assert torch.equal(batched.sample, z[batched.sample_positions])


def test_sample_rows_are_the_streamed_points_at_their_positions():
    x, y = positive_pairs(500, 3, seed=7)
    meter = AlignUniformMeter(sample_size=50, seed=1)
    for rows in split(500, [100, 333]):
        meter.update(x[rows], y[rows])
    stream = torch.stack([x, y], dim=1).reshape(-1, 3)  # x[0], y[0], x[1], y[1], ...
    assert torch.equal(meter.sample, stream[meter.sample_positions])


def test_reservoir_covers_the_whole_stream_evenly():
    n, k = 20_000, 1000
    meter = AlignUniformMeter(sample_size=k, seed=0)
    for rows in split(n, list(range(777, n, 777))):
        meter.update(sphere(n, 2, seed=8)[rows])
    positions = meter.sample_positions.numpy()
    assert len(np.unique(positions)) == k
    assert positions.min() < 0.01 * n and positions.max() > 0.99 * n
    per_tenth = np.bincount(positions * 10 // n, minlength=10)
    assert per_tenth.min() > 60 and per_tenth.max() < 140  # 100 expected, sd about 9.5


def test_every_point_is_sampled_with_probability_k_over_n():
    n, k, seeds = 12, 4, 1000
    z = sphere(n, 2, seed=9)
    hits = np.zeros(n)
    for seed in range(seeds):
        meter = AlignUniformMeter(sample_size=k, seed=seed)
        meter.update(z)
        hits[meter.sample_positions.numpy()] += 1
    # k/n = 1/3 each; sd of a frequency over 1000 seeds is about 0.015.
    np.testing.assert_allclose(hits / seeds, k / n, atol=0.07)


def test_reset_forgets_everything():
    meter = AlignUniformMeter()
    meter.update(*positive_pairs(10, 3, seed=0))
    meter.reset()
    with pytest.raises(ValueError, match="nothing seen"):
        meter.compute()


# --------------------------------------------------------------------------- histogram


def test_histogram_counts_every_pair_and_reports_the_mean_distance():
    x, y = positive_pairs(1000, 6, seed=10, noise=0.8)
    hist = positive_distance_histogram(x.float(), y.float(), bins=40)
    distances = (x.float().double() - y.float().double()).norm(dim=1).numpy()
    expected_counts, expected_edges = np.histogram(distances, bins=40, range=(0, 2))
    np.testing.assert_array_equal(hist.counts, expected_counts)
    np.testing.assert_allclose(hist.edges, expected_edges)
    assert hist.counts.sum() == hist.num_pairs == 1000
    assert hist.mean_distance == pytest.approx(distances.mean(), rel=1e-12)
    assert trapezoid(np.repeat(hist.density, 2), np.repeat(hist.edges, 2)[1:-1]) == pytest.approx(1.0)


def test_histogram_end_bins_hold_identical_and_antipodal_pairs():
    z = sphere(50, 3, seed=11, dtype=torch.float32)
    same = positive_distance_histogram(z, z, bins=10)
    assert same.counts[0] == 50 and same.mean_distance == 0.0
    # Rounding can put an antipodal pair a hair past 2; it still counts, in the last bin.
    opposite = positive_distance_histogram(z, -z, bins=10)
    assert opposite.counts[-1] == 50
    assert opposite.mean_distance == pytest.approx(2.0, abs=1e-6)


# --------------------------------------------------------------------------- angle density


@pytest.mark.parametrize("bandwidth", [None, 0.05, 0.5, 3.0])
def test_angle_density_integrates_to_one(bandwidth):
    angles = np.random.default_rng(0).uniform(-2, 3, size=400)
    result = angle_density(on_circle(angles), num_points=400, bandwidth=bandwidth)
    assert trapezoid(result.density, result.grid) == pytest.approx(1.0, abs=1e-3)
    assert result.grid[0] == -math.pi and result.grid[-1] == math.pi
    assert (result.density >= 0).all()


def test_angle_density_is_flat_for_evenly_spread_angles():
    angles = -math.pi + 2 * math.pi * np.arange(360) / 360
    result = angle_density(on_circle(angles))
    np.testing.assert_allclose(result.density, 1 / (2 * math.pi), rtol=1e-3)


def test_angle_density_wraps_a_cluster_at_pi_around_both_ends():
    rng = np.random.default_rng(1)
    angles = math.pi + 0.1 * rng.standard_normal(500)
    result = angle_density(on_circle(angles), num_points=513)
    d = result.density
    assert result.bandwidth < 0.1  # spread measured around the circular mean, not ±π
    assert d[0] == pytest.approx(d[-1], rel=1e-9)
    assert d[0] > 0.8 * d.max() and d[-1] > 0.8 * d.max()
    assert d[256] < 1e-6 * d.max()  # grid[256] == 0, opposite the cluster


def test_angle_density_turns_with_the_features():
    # A cluster at π must look like the cluster at 0 turned half-way round.
    rng = np.random.default_rng(2)
    angles = 0.3 * rng.standard_normal(300)
    at_zero = angle_density(on_circle(angles), num_points=513, bandwidth=0.2).density
    at_pi = angle_density(on_circle(angles + math.pi), num_points=513, bandwidth=0.2).density
    np.testing.assert_allclose(at_pi[:-1], np.roll(at_zero[:-1], 256), rtol=1e-6, atol=1e-12)


def test_angle_density_matches_scipy_kde_away_from_the_wrap():
    rng = np.random.default_rng(3)
    angles = 0.5 + 0.3 * rng.standard_normal(400)
    result = angle_density(on_circle(angles))
    kde = gaussian_kde(angles)
    assert result.bandwidth == pytest.approx(kde.factor * angles.std(ddof=1), rel=1e-9)
    np.testing.assert_allclose(result.density, kde(result.grid), rtol=1e-5, atol=1e-9)


def test_angles_are_in_minus_pi_to_pi():
    z = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, -2.0]])
    np.testing.assert_allclose(angle_density(z).angles, [-math.pi, 0.0, math.pi / 2, -math.pi / 2], atol=1e-7)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 0}, "alpha"),
        ({"alpha": -1.0}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"t": 0.0}, "t must"),
        ({"sample_size": 1}, "sample_size"),
        ({"sample_size": 2.5}, "sample_size"),
        ({"seed": -1}, "seed"),
    ],
)
def test_meter_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AlignUniformMeter(**kwargs)


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (torch.ones(3), None, r"shape \(N, d\)"),
        (sphere(3, 2, 0), sphere(4, 2, 0), "paired row for row"),
        (torch.ones(3, 2), None, "not L2-normalised"),
        (sphere(3, 2, 0), torch.ones(3, 2), "not L2-normalised"),
        (torch.full((3, 2), float("nan")), None, "NaN"),
        (torch.ones(3, 2, dtype=torch.long), None, "floating-point"),
        (np.ones((3, 2)), None, "torch.Tensor"),
    ],
)
def test_update_rejects_bad_batches(x, y, match):
    with pytest.raises(ValueError, match=match):
        AlignUniformMeter().update(x, y)


def test_update_rejects_a_change_of_dimension_and_keeps_its_state():
    meter = AlignUniformMeter()
    meter.update(*positive_pairs(4, 3, seed=0))
    with pytest.raises(ValueError, match="3 features"):
        meter.update(*positive_pairs(4, 5, seed=0))
    assert meter.compute().num_pairs == 4


def test_compute_refuses_too_little_data():
    meter = AlignUniformMeter()
    with pytest.raises(ValueError, match="nothing seen"):
        meter.compute()
    meter.update(sphere(1, 3, seed=0))
    with pytest.raises(ValueError, match="at least 2 sampled points"):
        meter.compute()
    with pytest.raises(ValueError, match="no positive pairs"):
        meter.compute_alignment()
    meter.update(sphere(1, 3, seed=1))
    assert meter.compute().alignment is None


def test_helpers_reject_bad_arguments():
    x, y = positive_pairs(20, 3, seed=0)
    with pytest.raises(ValueError, match="different numbers of batches"):
        alignment(x.split(5), y.split(5)[:3])
    with pytest.raises(ValueError, match="batch_size"):
        alignment(x, y, batch_size=0)
    with pytest.raises(ValueError, match="alpha"):
        alignment(x, y, alpha=0)
    with pytest.raises(ValueError, match="t must"):
        uniformity(x, t=-2)
    with pytest.raises(ValueError, match="nothing seen"):
        uniformity([])
    with pytest.raises(ValueError, match="bins"):
        positive_distance_histogram(x, y, bins=0)
    with pytest.raises(ValueError, match="range"):
        positive_distance_histogram(x, y, range=(2.0, 0.0))
    with pytest.raises(ValueError, match="paired row for row"):
        positive_distance_histogram(x, y[:-1])
    with pytest.raises(ValueError, match="not L2-normalised"):
        positive_distance_histogram(2 * x, y)


@pytest.mark.parametrize(
    ("z", "kwargs", "match"),
    [
        (sphere(10, 3, 0), {}, "2-D features"),
        (torch.zeros(2, 2), {}, "zero row"),
        (torch.full((2, 2), float("inf")), {}, "NaN or infinite"),
        (sphere(10, 2, 0), {"num_points": 2}, "num_points"),
        (sphere(10, 2, 0), {"bandwidth": 0.0}, "bandwidth"),
    ],
)
def test_angle_density_rejects_bad_input(z, kwargs, match):
    with pytest.raises(ValueError, match=match):
        angle_density(z, **kwargs)
