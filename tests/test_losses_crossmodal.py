"""Cross-modal objectives against hand-written references (loops over pairs), closed forms and properties."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings

from hsrl.losses import HypersphereLoss
from hsrl.losses_crossmodal import (
    MAX_LOGIT_SCALE,
    CrossModalLoss,
    clip_loss,
    initial_scales,
    modality_gap,
    siglip_loss,
    uniform_union_loss,
)


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=1)


def clip_reference(x: torch.Tensor, y: torch.Tensor, scale: float) -> float:
    """CLIP's loss written out: for each image, -log softmax over captions at its own; and each caption likewise."""
    n = len(x)
    total = 0.0
    for i in range(n):
        image_row = [scale * float(x[i] @ y[j]) for j in range(n)]
        text_row = [scale * float(y[i] @ x[j]) for j in range(n)]
        total += -image_row[i] + math.log(sum(math.exp(v) for v in image_row))
        total += -text_row[i] + math.log(sum(math.exp(v) for v in text_row))
    return total / (2 * n)


def siglip_reference(x: torch.Tensor, y: torch.Tensor, t: float, b: float) -> float:
    """SigLIP written out: every (image, caption) pair is a binary problem, positive only on the diagonal."""
    n = len(x)
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            total += math.log(1 + math.exp(-z * (t * float(x[i] @ y[j]) + b)))
    return total / n


def union_reference(x: torch.Tensor, y: torch.Tensor, t: float) -> float:
    points = list(torch.cat([x, y]))
    values = [math.exp(-t * float((points[i] - points[j]).pow(2).sum()))
              for i in range(len(points)) for j in range(i + 1, len(points))]  # fmt: skip
    return math.log(sum(values) / len(values))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 7), d=st.integers(2, 6), seed=st.integers(0, 10_000), scale=st.floats(0.5, 50))
def test_clip_matches_the_written_out_loss(n: int, d: int, seed: int, scale: float) -> None:
    x, y = _unit(n, d, seed), _unit(n, d, seed + 1)
    assert float(clip_loss(x, y, scale)) == pytest.approx(clip_reference(x, y, scale), rel=1e-5, abs=1e-6)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 7), d=st.integers(2, 6), seed=st.integers(0, 10_000), t=st.floats(0.5, 20),
       b=st.floats(-15, 5))  # fmt: skip
def test_siglip_matches_the_written_out_loss(n: int, d: int, seed: int, t: float, b: float) -> None:
    x, y = _unit(n, d, seed), _unit(n, d, seed + 1)
    assert float(siglip_loss(x, y, t, b)) == pytest.approx(siglip_reference(x, y, t, b), rel=1e-5, abs=1e-6)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), d=st.integers(2, 5), seed=st.integers(0, 10_000), t=st.floats(0.5, 5))
def test_uniform_union_matches_the_written_out_loss(n: int, d: int, seed: int, t: float) -> None:
    x, y = _unit(n, d, seed), _unit(n, d, seed + 1)
    assert float(uniform_union_loss(x, y, t)) == pytest.approx(union_reference(x, y, t), rel=1e-6)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 6), seed=st.integers(0, 10_000))
def test_clip_is_symmetric_in_the_two_modalities(n: int, seed: int) -> None:
    x, y = _unit(n, 4, seed), _unit(n, 4, seed + 1)
    torch.testing.assert_close(clip_loss(x, y, 7.0), clip_loss(y, x, 7.0))


def test_closed_forms() -> None:
    # Orthonormal pairs matched to themselves: CLIP = log(1 + (n-1) e^{-s}); the gap of a pair is |x - y|.
    x = torch.eye(4, dtype=torch.float64)
    assert float(clip_loss(x, x, 3.0)) == pytest.approx(math.log(1 + 3 * math.exp(-3)))
    assert float(siglip_loss(x, x, 2.0, -1.0)) == pytest.approx(
        math.log(1 + math.exp(-1)) + 3 * math.log(1 + math.exp(-1))
    )
    assert float(modality_gap(x[:1], x[1:2])) == pytest.approx(math.sqrt(2))
    assert float(modality_gap(x, x)) == 0.0


def test_learnable_scale_and_bias_get_gradients_and_are_clamped() -> None:
    class Scales(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.log_logit_scale = torch.nn.Parameter(torch.tensor(math.log(1000.0)))
            self.logit_bias = torch.nn.Parameter(torch.tensor(-10.0))

    scales = Scales()
    x, y = _unit(6, 4, 0).float(), _unit(6, 4, 1).float()
    loss = CrossModalLoss("siglip:1 + clip:1", scales)
    terms = loss.terms(x, y)
    assert float(terms["logit_scale"]) == MAX_LOGIT_SCALE  # exp(log 1000) clamped at 100
    expected = siglip_loss(x, y, MAX_LOGIT_SCALE, -10.0) + clip_loss(x, y, MAX_LOGIT_SCALE)
    torch.testing.assert_close(terms["loss"], expected)
    terms["loss"].backward()
    assert scales.logit_bias.grad is not None and scales.logit_bias.grad != 0
    assert list(loss.parameters()) == []  # the loss does not own the model's parameters


def test_diagnostics_and_terms_in_one_objective() -> None:
    x, y = _unit(8, 5, 2).float(), _unit(8, 5, 3).float()
    loss = CrossModalLoss("align:1,alpha=2 + uniform:1,t=2 + uniform_union:0.5")
    terms = loss.terms(x, y)
    plain = HypersphereLoss("align:1,alpha=2 + uniform:1,t=2 + uniform_union:0.5")(x, y)
    torch.testing.assert_close(terms["loss"], plain)
    torch.testing.assert_close(terms["xm_align"], (x - y).pow(2).sum(1).mean())
    torch.testing.assert_close(terms["uniform_image"], torch.pdist(x).pow(2).mul(-2).exp().mean().log())
    torch.testing.assert_close(terms["modality_gap"], (x.mean(0) - y.mean(0)).norm())


def test_initial_scales_follow_the_objective() -> None:
    assert initial_scales("clip:1,tau=0.05") == (pytest.approx(20.0), -10.0)
    assert initial_scales("siglip:1,t=5") == (5.0, -10.0)


def test_bad_input_is_refused() -> None:
    x = _unit(4, 3, 0)
    with pytest.raises(ValueError, match="paired row for row"):
        clip_loss(x, x[:3], 1.0)
    with pytest.raises(ValueError, match="not L2-normalised"):
        siglip_loss(2 * x, x, 1.0, 0.0)
    with pytest.raises(ValueError, match="unknown loss term 'clipp'"):
        CrossModalLoss("clipp:1")
