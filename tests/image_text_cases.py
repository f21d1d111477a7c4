"""Shared set-up of the two-process image–text test and its single-process reference."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.utils.data import Dataset

from hsrl.data.pairs import make_pair_loader
from hsrl.losses_crossmodal import CrossModalLoss
from hsrl.models.text import build_text_encoder
from hsrl.models.two_tower import ImageTower, TextTower, TwoTowerModel
from hsrl.training import FitResult, TrainConfig, fit

# Every term that compares a pair with the rest of the batch, and both learnable scales.
OBJECTIVE = "align:1 + uniform:1 + uniform_union:0.5 + clip:0.5,tau=0.1 + siglip:0.1,t=5"
WORDS = ("bag", "boot", "coat", "dress", "shirt", "sandal", "sneaker", "pullover")


class TinyImageEncoder(nn.Module):
    """No BatchNorm: per-process statistics would differ from one big batch's, by design of BatchNorm."""

    dim = 6

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x.float() / 255), dim=1)


class TinyPairs(Dataset):
    def __init__(self, n: int = 48) -> None:
        g = torch.Generator().manual_seed(5)
        self.images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
        self.captions = [f"a photo of a {WORDS[i % len(WORDS)]} number {i % 5}" for i in range(n)]

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, int]:
        return self.images[i], self.captions[i], i % len(WORDS)


def fit_config(output_dir: Path, per_process_batch: int) -> TrainConfig:
    return TrainConfig(output_dir=str(output_dir), batch_size=per_process_batch, max_steps=3, optimizer="sgd",
                       lr=0.5, momentum=0.9, checkpoint_every=None, log_every=1, log_with="none", progress=False,
                       seed=3)  # fmt: skip


def fit_two_towers(config: TrainConfig, accelerator: Accelerator, objective: str = OBJECTIVE) -> FitResult:
    """``fit`` of a freshly seeded tiny two-tower model (MiniLM locked, its projection and the scales learned)."""
    torch.manual_seed(config.seed)
    model = TwoTowerModel(ImageTower(TinyImageEncoder(), 6), TextTower(build_text_encoder("minilm", projection_dim=6)),
                          logit_scale=10.0, logit_bias=-10.0)  # fmt: skip
    loss = CrossModalLoss(objective, model)
    model.log_logit_scale.requires_grad_(loss.uses_scales())
    model.logit_bias.requires_grad_("siglip" in objective)
    loader = make_pair_loader(TinyPairs(), config)
    return fit(model, loss, loader, config, accelerator=accelerator, encode=lambda m, b: m(b.images, b.captions))


def trained_state(result: FitResult) -> dict[str, torch.Tensor]:
    """What training changed: everything but the frozen transformer."""
    return {k: v.detach().clone() for k, v in result.model.state_dict().items()
            if not k.startswith("text.encoder.0.")}  # fmt: skip
