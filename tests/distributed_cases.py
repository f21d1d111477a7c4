"""Shared set-up of the two-process test and its single-process reference."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.utils.data import TensorDataset

from hsrl.losses import HypersphereLoss
from hsrl.training import FitResult, TrainConfig, fit, make_dataloader

# All three terms: uniformity and the contrastive negatives need the global batch.
OBJECTIVE = "align:1,alpha=2 + uniform:1,t=2 + contrastive:0.5,tau=0.5"
#: Every term of the objective table, for the per-process share (each term has its own share function).
EVERY_TERM = OBJECTIVE + " + quickthought:0.3,context=2,tau=0.5"


class TinyEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)


def global_batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(n, 8, generator=g)
    return x, x + 0.3 * torch.randn(n, 8, generator=g)


def pair_dataset() -> TensorDataset:
    return TensorDataset(*global_batch(48))


def fit_config(output_dir: Path, per_process_batch: int) -> TrainConfig:
    return TrainConfig(
        output_dir=str(output_dir),
        batch_size=per_process_batch,
        max_steps=4,
        optimizer="sgd",
        lr=0.5,
        momentum=0.9,
        checkpoint_every=None,
        log_every=1,
        log_with="none",
        progress=False,
        seed=3,
    )


def fit_tiny(config: TrainConfig, accelerator: Accelerator) -> FitResult:
    """``fit`` of a freshly seeded TinyEncoder on the pair dataset with the shared objective."""
    torch.manual_seed(config.seed)
    loader = make_dataloader(pair_dataset(), config)
    return fit(TinyEncoder(), HypersphereLoss(OBJECTIVE), loader, config, accelerator=accelerator)
