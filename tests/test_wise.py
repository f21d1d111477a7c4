"""WiSE-FT weight interpolation: θ_α = (1 − α)·θ₀ + α·θ₁, exactly, for every floating tensor."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from hsrl.models.wise import interpolate_weights, snapshot_weights


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    model.register_buffer("position_ids", torch.arange(5) + seed)  # an integer buffer is never mixed
    return model


@settings(max_examples=40, deadline=None)
@given(alpha=st.floats(0.0, 1.0), seeds=st.tuples(st.integers(0, 1000), st.integers(0, 1000)))
def test_interpolation_is_the_convex_mix_and_keeps_integer_buffers(alpha: float, seeds: tuple[int, int]) -> None:
    start, trained = _model(seeds[0]), _model(seeds[1])
    theta0, theta1 = snapshot_weights(start), snapshot_weights(trained)
    mixed = interpolate_weights(trained, theta0, alpha).state_dict()
    for name, value in mixed.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (1 - alpha) * theta0[name] + alpha * theta1[name], rtol=0, atol=1e-6)
        else:
            assert torch.equal(value, theta1[name])


def test_the_ends_are_the_two_models() -> None:
    start, trained = _model(0), _model(1)
    theta0, theta1 = snapshot_weights(start), snapshot_weights(trained)
    assert all(torch.equal(v, theta1[k]) for k, v in interpolate_weights(trained, theta0, 1.0).state_dict().items())
    ends = interpolate_weights(_model(1), theta0, 0.0).state_dict()
    assert all(torch.equal(v, theta0[k]) for k, v in ends.items() if v.is_floating_point())


def test_snapshot_is_a_copy_not_a_view() -> None:
    model = _model(0)
    theta0 = snapshot_weights(model)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert not torch.equal(theta0["0.weight"], model[0].weight)


def test_mismatches_and_bad_alpha_are_clear() -> None:
    theta0 = snapshot_weights(_model(0))
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        interpolate_weights(_model(1), theta0, 1.5)
    with pytest.raises(ValueError, match="is not in both"):
        interpolate_weights(nn.Sequential(nn.Linear(4, 3)), theta0, 0.5)
    wider = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(3))
    wider.register_buffer("position_ids", torch.arange(5))
    with pytest.raises(ValueError, match="has shape"):
        interpolate_weights(wider, theta0, 0.5)
