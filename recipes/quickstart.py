"""Quick start: align/uniform pretraining of a small CNN on Fashion-MNIST, on a laptop CPU.

    accelerate launch recipes/quickstart.py                      # ~2 minutes on 2 cores
    accelerate launch recipes/quickstart.py --loss "contrastive:1,tau=0.5"
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 recipes/quickstart.py

Read it top to bottom: configuration, data, model, loss, ``hsrl.training.fit``, then
5-NN evaluation against a randomly initialised encoder and raw pixels, and the
model (an hsrl image model folder: ``hsrl export``, ``hsrl serve`` and ``hsrl eval image`` open it) and
``metrics.json`` written to ``--output-dir``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from hsrl.cli.config import parse_config
from hsrl.configuration import config_to_dict
from hsrl.data.images import random_views, read_fashion_mnist
from hsrl.evaluation.knn import knn_accuracy
from hsrl.evaluation.summary import format_summary, write_metrics
from hsrl.hub import publish_run, push_to_hub_field
from hsrl.losses import HypersphereLoss
from hsrl.metrics import alignment, uniformity
from hsrl.models.folder import save_model
from hsrl.models.image import SmallCNN
from hsrl.training import TrainConfig, TrainingDivergedError, fit, make_dataloader, training_session

#: Steps of a quick start without --time-budget-min.
QUICKSTART_STEPS = 400


@dataclass
class QuickstartConfig(TrainConfig):
    """Align/uniform pretraining of a small CNN on Fashion-MNIST (offline)."""

    output_dir: str = field(default="runs/quickstart", metadata={"help": "where the model, logs and metrics go"})
    loss: str = field(default="align:1,alpha=2 + uniform:1,t=2", metadata={"help": "objective, as the paper writes it"})
    dim: int = field(default=64, metadata={"help": "embedding dimension"})
    batch_size: int = field(default=256, metadata={"help": "images per process and step"})
    max_steps: int | None = field(
        default=None,
        metadata={"help": f"optimizer steps (default {QUICKSTART_STEPS}; with --time-budget-min, none: the budget "
                          "decides, or a cap)"},
    )  # fmt: skip
    lr: float = field(default=2e-3, metadata={"help": "AdamW learning rate"})
    lr_schedule: Literal["constant", "multistep", "cosine", "linear"] = field(
        default="cosine", metadata={"help": "learning-rate schedule after warm-up"}
    )
    warmup_steps: int = field(default=20, metadata={"help": "linear warm-up steps"})
    checkpoint_every: int | None = field(default=200, metadata={"help": "checkpoint every N steps"})
    eval_train_size: int = field(default=60000, metadata={"help": "training images used as the 5-NN memory bank"})
    eval_test_size: int = field(default=10000, metadata={"help": "test images classified by 5-NN"})
    push_to_hub: str | None = push_to_hub_field()

    def __post_init__(self) -> None:
        # The default length applies only without a budget: a default cap would silently cut a budget short.
        if self.max_steps is None and self.time_budget_min is None:
            self.max_steps = QUICKSTART_STEPS
        super().__post_init__()


USAGE = """```python
from hsrl.models.folder import open_model

model = open_model("model")                      # this folder: an hsrl image model folder (small_cnn)
embeddings = model.encode(["shoe.png", "bag.png"])  # (2, 64) float32 rows of unit norm
```"""


def small_cnn(dim: int) -> SmallCNN:
    """Two conv blocks (3×3 conv, BatchNorm, ReLU, 2×2 max-pool; 32 and 64 channels) and a 256-wide head."""
    return SmallCNN(in_channels=1, image_size=28, dim=dim, width=32, hidden=256, downsample="pool")


def two_views(model: nn.Module, batch: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    images = batch[0]
    z = model(torch.cat([random_views(images), random_views(images)]))  # one forward: shared BN statistics
    return z[: len(images)], z[len(images) :]


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    model.eval()
    return torch.cat([model(images[i : i + batch]) for i in range(0, len(images), batch)])


def evaluate(model: nn.Module, config: QuickstartConfig) -> dict[str, float]:
    train, test = read_fashion_mnist("train"), read_fashion_mnist("test")
    train_x, train_y = train.images[: config.eval_train_size], train.labels[: config.eval_train_size]
    test_x, test_y = test.images[: config.eval_test_size], test.labels[: config.eval_test_size]
    device = next(model.parameters()).device
    z_train, z_test = embed(model, train_x.to(device)).cpu(), embed(model, test_x.to(device)).cpu()
    torch.manual_seed(config.seed)
    random_init = small_cnn(config.dim).to(device)
    r_train, r_test = embed(random_init, train_x.to(device)).cpu(), embed(random_init, test_x.to(device)).cpu()
    p_train = F.normalize(train_x.flatten(1).float(), dim=1)
    p_test = F.normalize(test_x.flatten(1).float(), dim=1)
    torch.manual_seed(config.seed + 1)
    views = embed(model, (random_views(test_x) * 255).to(torch.uint8).to(device)).cpu()
    return {
        "knn5_accuracy": knn_accuracy(z_train, train_y, z_test, test_y, k=5),
        "knn5_accuracy_random_encoder": knn_accuracy(r_train, train_y, r_test, test_y, k=5),
        "knn5_accuracy_raw_pixels": knn_accuracy(p_train, train_y, p_test, test_y, k=5),
        "alignment_test_views": alignment(z_test, views),
        "uniformity_test": uniformity(z_test, t=2.0),
    }


def main(argv: list[str] | None = None) -> int:
    config = parse_config(QuickstartConfig, argv)
    try:
        loss = HypersphereLoss(config.loss)
        train = read_fashion_mnist("train")
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with training_session(config) as accelerator:
        model = small_cnn(config.dim)
        loader = make_dataloader(TensorDataset(train.images), config)
        try:
            result = fit(model, loss, loader, config, accelerator=accelerator, encode=two_views)
        except (TrainingDivergedError, ValueError) as error:
            accelerator.print(f"error: {error}")
            return 1
        if accelerator.is_main_process:
            metrics = {**evaluate(result.model, config), "steps": result.steps, "final_loss": result.last_loss}
            summary = {  # the key scheme of every recipe (hsrl.evaluation.summary)
                "knn5": metrics["knn5_accuracy"], "random_encoder_knn5": metrics["knn5_accuracy_random_encoder"],
                "raw_pixels_knn5": metrics["knn5_accuracy_raw_pixels"], "align": metrics["alignment_test_views"],
                "uniform": metrics["uniformity_test"], "steps": float(result.steps),
                "train_seconds": round(result.train_seconds, 1),
            }  # fmt: skip
            save_model(result.model, Path(config.output_dir) / "model")  # every hsrl command opens it
            write_metrics(Path(config.output_dir) / "metrics.json",
                          {**metrics, "summary": summary, "config": config_to_dict(config)})  # fmt: skip
            print(format_summary(summary))
            return publish_run(
                config.output_dir,
                kind="image",
                push_to_hub=config.push_to_hub,
                dataset="fashion-mnist",
                usage=USAGE.replace("dim=64", f"dim={config.dim}"),
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
