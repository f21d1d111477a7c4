"""The losses against straightforward reference implementations, closed forms and gradcheck."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from hsrl.losses import (
    HypersphereLoss,
    LossTerm,
    align_loss,
    contrastive_loss,
    parse_objective,
    uniform_loss,
)

# --------------------------------------------------------------------------- references
# Written as the paper writes them, independently of hsrl's algebra.


def ref_uniform(x: torch.Tensor, t: float) -> torch.Tensor:
    return torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()


def ref_align(x: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    return (x - y).norm(p=2, dim=1).pow(alpha).mean()


def ref_infonce(x: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """-log e^{x_i.y_i/τ} / Σ_j e^{x_j.y_i/τ}, averaged over i, one row at a time."""
    losses = []
    for i in range(len(x)):
        scores = torch.stack([x[j] @ y[i] for j in range(len(x))]) / tau
        losses.append(-(scores[i] - torch.log(torch.exp(scores).sum())))
    return torch.stack(losses).mean()


def sphere(n: int, d: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)


def with_duplicates(n: int, d: int, distinct: int, seed: int) -> torch.Tensor:
    """``n`` unit vectors drawn from only ``distinct`` points: many coincident pairs."""
    g = torch.Generator().manual_seed(seed)
    points = F.normalize(torch.randn(distinct, d, generator=g, dtype=torch.float64), dim=1)
    return points[torch.randint(0, distinct, (n,), generator=g)]


def value_and_grad(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_()
    value = fn(x)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


# --------------------------------------------------------------------------- uniformity


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 48),
    d=st.integers(1, 12),
    t=st.floats(0.01, 100.0),
    block=st.one_of(st.none(), st.integers(1, 50)),
    duplicates=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_uniform_matches_pdist_reference_in_float64(n, d, t, block, duplicates, seed) -> None:
    x = with_duplicates(n, d, max(1, n // 4), seed) if duplicates else sphere(n, d, seed)
    ref_value, ref_grad = value_and_grad(lambda z: ref_uniform(z, t), x)
    value, grad = value_and_grad(lambda z: uniform_loss(z, t=t, block_size=block), x)
    if torch.isfinite(ref_value):
        torch.testing.assert_close(value, ref_value, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-7, atol=1e-9)
    assert torch.isfinite(value) and torch.isfinite(grad).all()


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 64), d=st.integers(2, 32), t=st.floats(0.1, 100.0), seed=st.integers(0, 2**16))
def test_uniform_float32_is_finite_and_close_to_the_float64_value(n, d, t, seed) -> None:
    x64 = sphere(n, d, seed)
    x32 = x64.float()
    value, grad = value_and_grad(lambda z: uniform_loss(z, t=t), x32)
    assert value.dtype == torch.float32
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    # float64 of the same rounded points; the float32 reference underflows at large t.
    ref_value, ref_grad = value_and_grad(lambda z: ref_uniform(z, t), x32.double())
    torch.testing.assert_close(value.double(), ref_value, rtol=1e-5, atol=1e-5 * t)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-3, atol=1e-6 * t)


def test_uniform_stays_finite_where_the_float32_reference_underflows() -> None:
    x = sphere(256, 64, 0).float()
    assert torch.isinf(ref_uniform(x, 100.0))  # exp(-100 * ~2) is 0 in float32
    value = uniform_loss(x, t=100.0)
    assert torch.isfinite(value)
    torch.testing.assert_close(value.double(), ref_uniform(x.double(), 100.0), rtol=1e-5, atol=0)


def test_uniform_closed_form_on_a_regular_simplex() -> None:
    # N vertices of a regular simplex on the sphere: every pair is at ||xi-xj||^2 = 2 + 2/(N-1).
    n = 6
    centred = torch.eye(n, dtype=torch.float64) - 1.0 / n
    x = F.normalize(centred, dim=1)
    for t in (0.5, 2.0, 40.0):
        expected = -t * (2 + 2 / (n - 1))
        assert uniform_loss(x, t=t).item() == pytest.approx(expected, rel=1e-12)


def test_uniform_of_identical_points_is_zero_with_zero_gradient() -> None:
    x = F.normalize(torch.ones(5, 3, dtype=torch.float64), dim=1)
    value, grad = value_and_grad(lambda z: uniform_loss(z, t=3.0), x)
    assert value.item() == pytest.approx(0.0, abs=1e-12)
    assert grad.abs().max().item() < 1e-12


@pytest.mark.parametrize("block", [1, 7, 64, None])
def test_uniform_gradcheck(block) -> None:
    x = sphere(9, 4, 3).requires_grad_()
    # Finite differences move x off the sphere: still exact, as hsrl keeps the full ||x||^2.
    assert torch.autograd.gradcheck(
        lambda z: uniform_loss(z, t=1.5, block_size=block, normalize=False), (x,), eps=1e-7, atol=1e-6, nondet_tol=0.0
    )


def test_blocked_equals_unblocked_in_float32() -> None:
    x = sphere(300, 16, 5).float()
    full_value, full_grad = value_and_grad(lambda z: uniform_loss(z, t=5.0, block_size=300), x)
    for block in (1, 17, 128):
        value, grad = value_and_grad(lambda z, b=block: uniform_loss(z, t=5.0, block_size=b), x)
        torch.testing.assert_close(value, full_value, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grad, full_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_uniform_under_autocast_reduces_in_float32(dtype) -> None:
    x = sphere(128, 32, 1).to(dtype).requires_grad_()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        value = uniform_loss(x, t=50.0)
    value.backward()
    assert value.dtype == dtype and torch.isfinite(value) and torch.isfinite(x.grad).all()
    expected = ref_uniform(x.detach().double(), 50.0)
    assert value.double().item() == pytest.approx(expected.item(), rel=2e-2)


# --------------------------------------------------------------------------- alignment


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 32),
    d=st.integers(1, 12),
    alpha=st.floats(0.1, 4.0),
    coincide=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_align_matches_reference(n, d, alpha, coincide, seed) -> None:
    x = sphere(n, d, seed)
    y = x.clone() if coincide else sphere(n, d, seed + 1)
    if coincide and n > 1:
        y[: n // 2] = sphere(n // 2, d, seed + 2)  # half the pairs coincide
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    ref = ref_align(xr, yr, alpha)
    ref.backward()
    xa, ya = x.clone().requires_grad_(), y.clone().requires_grad_()
    value = align_loss(xa, ya, alpha=alpha)
    value.backward()
    torch.testing.assert_close(value, ref.detach(), rtol=1e-10, atol=1e-12)
    # Where the reference's autograd gives NaN (alpha < 1 at a coincident pair, where
    # the derivative is infinite), hsrl takes the subgradient 0 at that minimum.
    for mine, theirs in ((xa.grad, xr.grad), (ya.grad, yr.grad)):
        assert torch.isfinite(mine).all()
        expected = torch.where(torch.isnan(theirs), torch.zeros_like(theirs), theirs)
        torch.testing.assert_close(mine, expected, rtol=1e-8, atol=1e-12)


def test_align_closed_form_antipodal_pairs() -> None:
    x = sphere(4, 3, 0)
    assert align_loss(x, -x, alpha=2).item() == pytest.approx(4.0)
    assert align_loss(x, -x, alpha=1).item() == pytest.approx(2.0)


# --------------------------------------------------------------------------- contrastive


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 12), d=st.integers(2, 8), tau=st.floats(0.05, 2.0), seed=st.integers(0, 2**16))
def test_contrastive_matches_the_papers_formula_both_directions(n, d, tau, seed) -> None:
    x, y = sphere(n, d, seed), sphere(n, d, seed + 1)
    expected = (ref_infonce(x, y, tau) + ref_infonce(y, x, tau)) / 2
    torch.testing.assert_close(contrastive_loss(x, y, tau=tau), expected, rtol=1e-9, atol=1e-10)
    one_way = contrastive_loss(x, y, tau=tau, symmetric=False)
    torch.testing.assert_close(one_way, ref_infonce(x, y, tau), rtol=1e-9, atol=1e-10)
    # Gradients agree too.
    xa = x.clone().requires_grad_()
    xr = x.clone().requires_grad_()
    contrastive_loss(xa, y, tau=tau).backward()
    ((ref_infonce(xr, y, tau) + ref_infonce(y, xr, tau)) / 2).backward()
    torch.testing.assert_close(xa.grad, xr.grad, rtol=1e-7, atol=1e-10)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 8), m=st.integers(1, 20), tau=st.floats(0.05, 2.0), seed=st.integers(0, 2**16))
def test_contrastive_with_explicit_negatives(n, m, tau, seed) -> None:
    x, y, negatives = sphere(n, 5, seed), sphere(n, 5, seed + 1), sphere(m, 5, seed + 2)
    expected = torch.stack(
        [
            -torch.log(
                torch.exp(x[i] @ y[i] / tau) / (torch.exp(x[i] @ y[i] / tau) + torch.exp(negatives @ x[i] / tau).sum())
            )
            for i in range(n)
        ]
    ).mean()
    torch.testing.assert_close(contrastive_loss(x, y, tau=tau, negatives=negatives), expected, rtol=1e-9, atol=1e-10)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 8), m=st.integers(0, 12), tau=st.floats(0.05, 2.0), seed=st.integers(0, 2**16))
def test_contrastive_with_extra_negatives_beside_the_batch(n, m, tau, seed) -> None:
    """Each direction's denominator: the other view's N rows and the M extra negatives (written out by hand)."""
    x, y, extra = sphere(n, 5, seed), sphere(n, 5, seed + 1), sphere(m, 5, seed + 2)

    def direction(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        terms = []
        for i in range(n):
            denominator = torch.exp(b @ a[i] / tau).sum() + torch.exp(extra @ a[i] / tau).sum()
            terms.append(-torch.log(torch.exp(a[i] @ b[i] / tau) / denominator))
        return torch.stack(terms).mean()

    expected = (direction(y, x) + direction(x, y)) / 2
    torch.testing.assert_close(contrastive_loss(x, y, tau=tau, extra_negatives=extra), expected, rtol=1e-9, atol=1e-10)
    # Its per-process shares still add up to it (what the multi-process loss sums).
    cut = n // 2
    shares = sum(contrastive_loss(x, y, tau=tau, extra_negatives=extra, rows=r) for r in (slice(0, cut), slice(cut, n)))
    torch.testing.assert_close(shares, expected, rtol=1e-9, atol=1e-10)
    if m == 0:  # no extra negative: the in-batch loss itself
        torch.testing.assert_close(expected, contrastive_loss(x, y, tau=tau), rtol=1e-9, atol=1e-10)


def test_theorem1_limit_is_approached_as_negatives_grow() -> None:
    """L_contrastive - log M tends to -E[xᵀy]/τ + E_x log E_{x⁻} e^{x⁻ᵀx/τ} (Theorem 1)."""
    tau, d = 0.5, 3
    x = sphere(64, d, 0)
    y = F.normalize(x + 0.2 * sphere(64, d, 1), dim=1)
    pool = sphere(20000, d, 2)  # p_data, approximated by many samples
    limit = -(x * y).sum(1).mean() / tau + torch.logsumexp(x @ pool.T / tau, dim=1).mean() - math.log(len(pool))
    deviations = []
    for m in (4, 64, 4096):
        value = contrastive_loss(x, y, tau=tau, negatives=pool[:m]) - math.log(m)
        deviations.append(abs(value.item() - limit.item()))
    assert deviations[0] > deviations[1] > deviations[2]


# --------------------------------------------------------------------------- objectives


def test_parse_objective_as_the_paper_writes_it() -> None:
    terms = parse_objective("align:0.98,alpha=2 + uniform:0.96,t=2")
    assert terms == [LossTerm("align", 0.98, {"alpha": 2.0}), LossTerm("uniform", 0.96, {"t": 2.0})]
    assert parse_objective("contrastive:1,tau=0.19")[0].params["tau"] == 0.19
    assert parse_objective("uniform")[0] == LossTerm("uniform", 1.0, {"t": 2.0})


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "empty"),
        ("alignment:1", "unknown loss term"),
        ("align:-1", "weight"),
        ("align:x", "weight"),
        ("uniform:1,t=0", "t must be"),
        ("uniform:1,temperature=2", "bad parameter"),
        ("contrastive:1,tau=abc", "must be a number"),
        ("align:1 + align:2", "twice"),
    ],
)
def test_parse_objective_rejects_mistakes_clearly(spec, message) -> None:
    with pytest.raises(ValueError, match=message):
        parse_objective(spec)


def test_hypersphere_loss_is_the_papers_figure_6() -> None:
    x, y = sphere(20, 6, 0), sphere(20, 6, 1)
    lam, t = 0.7, 3.0
    expected = ref_align(x, y, 2) + lam * (ref_uniform(x, t) + ref_uniform(y, t)) / 2
    loss = HypersphereLoss(f"align:1,alpha=2 + uniform:{lam},t={t}")
    torch.testing.assert_close(loss(x, y), expected, rtol=1e-10, atol=1e-12)
    parts = loss.terms(x, y)
    assert set(parts) == {"align", "uniform", "loss"}
    assert "align:1,alpha=2 + uniform:0.7,t=3" in repr(loss)


def test_hypersphere_loss_contrastive_plus_uniform() -> None:
    x, y = sphere(10, 4, 2), sphere(10, 4, 3)
    loss = HypersphereLoss("contrastive:1,tau=0.5 + uniform:2,t=2")
    expected = contrastive_loss(x, y, tau=0.5) + 2 * (ref_uniform(x, 2) + ref_uniform(y, 2)) / 2
    torch.testing.assert_close(loss(x, y), expected, rtol=1e-10, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 9), cut=st.integers(1, 8), tau=st.floats(0.05, 1.0), weight=st.floats(0.1, 3.0),
       seed=st.integers(0, 2**16))  # fmt: skip
def test_hypersphere_loss_with_extra_negatives_and_its_shares(n, cut, tau, weight, seed) -> None:
    """``negatives=`` reach the contrastive term only (uniformity stays that of the two views), and the shares of
    a split of the rows add up to the loss, values and gradients (what two processes back-propagate)."""
    x, y, extra = sphere(n, 5, seed), sphere(n, 5, seed + 1), sphere(n, 5, seed + 2)
    loss = HypersphereLoss(f"contrastive:1,tau={tau} + uniform:{weight},t=2")
    expected = contrastive_loss(x, y, tau=tau, extra_negatives=extra) + weight * (
        ref_uniform(x, 2) + ref_uniform(y, 2)) / 2  # fmt: skip
    torch.testing.assert_close(loss(x, y, negatives=extra), expected, rtol=1e-10, atol=1e-12)
    terms = loss.terms(x, y, negatives=extra)
    assert float(terms["contrastive"]) != pytest.approx(float(loss.terms(x, y)["contrastive"]), abs=1e-9)

    # Shares of a split of the rows (uniformity's shares need a real all-reduce: tests/test_distributed.py).
    pairwise = HypersphereLoss(f"contrastive:1,tau={tau} + align:{weight}")
    cut = min(max(cut, 1), n - 1)
    rows = (slice(0, cut), slice(cut, n))

    def total(a: torch.Tensor, b: torch.Tensor, e: torch.Tensor, shared: bool) -> torch.Tensor:
        if not shared:
            return pairwise(a, b, negatives=e)
        return sum(pairwise.share_terms(a, b, rows=r, reduce=lambda v, op: v, processes=2, negatives=e)["loss"]
                   for r in rows)  # fmt: skip

    def grads(shared: bool) -> tuple[torch.Tensor, ...]:
        views = [v.clone().requires_grad_(True) for v in (x, y, extra)]
        total(*views, shared).backward()
        return tuple(v.grad for v in views)

    torch.testing.assert_close(total(x, y, extra, True), total(x, y, extra, False), rtol=1e-9, atol=1e-10)
    for got, want in zip(grads(True), grads(False), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_extra_negatives_need_a_term_that_uses_them() -> None:
    x, y = sphere(4, 3, 0), sphere(4, 3, 1)
    assert HypersphereLoss("contrastive:1 + uniform:1").takes_negatives()
    assert not HypersphereLoss("align:1 + uniform:1").takes_negatives()
    with pytest.raises(ValueError, match="need a term that uses negatives"):
        HypersphereLoss("align:1 + uniform:1")(x, y, negatives=sphere(4, 3, 2))


# --------------------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: uniform_loss(sphere(1, 3, 0)), "at least 2 rows"),
        (lambda: uniform_loss(torch.ones(3)), "shape"),
        (lambda: uniform_loss(sphere(4, 3, 0), t=0), "t must be"),
        (lambda: uniform_loss(sphere(4, 3, 0), t=float("nan")), "t must be"),
        (lambda: uniform_loss(sphere(4, 3, 0), block_size=0), "block_size"),
        (lambda: align_loss(sphere(4, 3, 0), sphere(5, 3, 0)), "paired"),
        (lambda: align_loss(sphere(4, 3, 0), sphere(4, 3, 0), alpha=-1), "alpha"),
        (lambda: contrastive_loss(sphere(4, 3, 0), sphere(4, 3, 1), tau=0), "tau"),
        (lambda: contrastive_loss(sphere(1, 3, 0), sphere(1, 3, 1)), "at least 2 rows"),
        (lambda: contrastive_loss(sphere(2, 3, 0), sphere(2, 3, 1), negatives=sphere(3, 4, 0)), "columns"),
        (lambda: contrastive_loss(sphere(2, 3, 0), sphere(2, 3, 1), extra_negatives=sphere(3, 4, 0)), "columns"),
        (
            lambda: contrastive_loss(
                sphere(2, 3, 0), sphere(2, 3, 1), negatives=sphere(3, 3, 0), extra_negatives=sphere(3, 3, 1)
            ),
            "not both",
        ),
        (lambda: uniform_loss(torch.tensor([[1.0, 0.0], [float("nan"), 0.0]])), "NaN or infinite"),
        (lambda: uniform_loss(torch.tensor([[1.0, 0.0], [3.0, 4.0]])), "not L2-normalised"),
        (lambda: align_loss(torch.ones(2, 2, dtype=torch.long), torch.ones(2, 2, dtype=torch.long)), "floating"),
    ],
)
def test_bad_input_raises_a_clear_value_error(call, message) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_normalize_true_equals_normalising_first() -> None:
    raw = torch.randn(12, 5, dtype=torch.float64) * 3
    unit = F.normalize(raw, dim=1)
    torch.testing.assert_close(uniform_loss(raw, normalize=True), uniform_loss(unit))
    torch.testing.assert_close(align_loss(raw, raw.flip(0), normalize=True), align_loss(unit, unit.flip(0)))
    torch.testing.assert_close(contrastive_loss(raw, raw.flip(0), normalize=True), contrastive_loss(unit, unit.flip(0)))
