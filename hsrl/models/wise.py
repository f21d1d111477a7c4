"""Weight-space ensembling of a fine-tuned model with its starting point (WiSE-FT).

Wortsman et al. (CVPR 2022, "Robust fine-tuning of zero-shot models") interpolate the weights of the starting
model θ₀ and the fine-tuned model θ₁:

    θ_α = (1 − α)·θ₀ + α·θ₁,    α ∈ [0, 1]

α = 1 is the fine-tuned model, α = 0 the untouched one. Fine-tuning from one pretrained start stays in one basin,
so the mixes in between are good models too: they keep more of the start's behaviour on other domains than θ₁ does,
at little cost (sometimes a gain) on the fine-tuning domain. Only floating-point tensors are mixed; integer
buffers (e.g. position ids) are the fine-tuned model's.
"""

from __future__ import annotations

import torch
from torch import nn


def snapshot_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of ``model``'s state dict: θ₀, taken before training moves it."""
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}


@torch.no_grad()
def interpolate_weights(model: nn.Module, start: dict[str, torch.Tensor], alpha: float) -> nn.Module:
    """Set ``model``'s weights to ``(1 − alpha)·start + alpha·model`` in place and return it.

    ``start`` must have the same keys and shapes as ``model.state_dict()`` (a :func:`snapshot_weights` of the same
    architecture); a mismatch is a ``ValueError`` naming the first offending key.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"--wise-ft must be in [0, 1], got {alpha}")
    state = model.state_dict()
    if state.keys() != start.keys():
        missing = sorted(state.keys() ^ start.keys())
        raise ValueError(f"the starting weights do not match the model: {missing[0]} is not in both")
    for name, tensor in state.items():
        if start[name].shape != tensor.shape:
            raise ValueError(f"the starting weights do not match the model: {name} has shape "
                             f"{tuple(start[name].shape)}, not {tuple(tensor.shape)}")  # fmt: skip
        if tensor.is_floating_point():
            tensor.lerp_(start[name].to(device=tensor.device, dtype=tensor.dtype), 1.0 - alpha)
    return model
