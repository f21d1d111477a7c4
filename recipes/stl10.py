"""The paper's STL-10 run: align/uniform pretraining of SmallAlexNet, then its evaluation protocol.

    accelerate launch recipes/stl10.py                                   # the paper: 200 epochs, batch 768
    accelerate launch recipes/stl10.py --loss "contrastive:1,tau=0.19"   # the paper's contrastive baseline
    accelerate launch recipes/stl10.py --dataset cifar10 --encoder resnet18
    accelerate launch recipes/stl10.py --dataset fashion-mnist --max-steps 300 --batch-size 256 --width 0.25
    accelerate launch recipes/stl10.py --resume latest                   # continue exactly where it stopped

Defaults are the paper's (Wang & Isola 2020, its STL-10 code): batch 768, SGD with momentum 0.9 and
weight decay 1e-4, lr 0.12 x batch / 256 (the global batch, over all processes), 200 epochs with the lr
x0.1 at epochs 155, 170 and 185 (fractions 0.775, 0.85, 0.925), ``align:1,alpha=2 + uniform:1,t=2``,
views by RandomResizedCrop(64, scale 0.08-1), flip, ColorJitter(0.4, 0.4, 0.4, 0.4), RandomGrayscale(0.2)
of STL-10's train + unlabeled images (105k).

Read it top to bottom: configuration, data, model, loss, ``hsrl.training.fit``, then the model saved to
``OUTPUT/model/`` and the evaluation (linear probe on fc7 and 5-NN on the output, with a random encoder
and raw pixels as baselines, see ``hsrl eval image``) written to ``OUTPUT/metrics.json``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hsrl.configuration import config_to_dict, parse_config
from hsrl.data.images import TwoViewDataset, augment_defaults, make_view_loader, open_images
from hsrl.evaluation.image import evaluate_image_encoder, format_report, summary_metrics
from hsrl.hub import publish_run, push_to_hub_field
from hsrl.losses import HypersphereLoss
from hsrl.models.image import DEFAULT_EVAL_LAYERS, build_encoder, headline_layers, save
from hsrl.training import TrainConfig, TrainingDivergedError, fit, training_session, write_run_metrics


@dataclass
class STL10Config(TrainConfig):
    """Align/uniform image pretraining with the paper's STL-10 settings."""

    output_dir: str = field(default="runs/stl10", metadata={"help": "where the model, logs and metrics go"})
    dataset: str = field(
        default="stl10",
        metadata={"help": "stl10, cifar10, cifar100, fashion-mnist, imagefolder:PATH, hf:NAME or a 🤗 dataset folder"},
    )
    data_root: str | None = field(default=None, metadata={"help": "folder of torchvision datasets (STL-10, CIFAR)"})
    encoder: Literal["small_alexnet", "resnet18", "resnet50"] = field(
        default="small_alexnet", metadata={"help": "image encoder"}
    )
    loss: str = field(default="align:1,alpha=2 + uniform:1,t=2", metadata={"help": "objective, as the paper writes it"})
    dim: int = field(default=128, metadata={"help": "embedding dimension"})
    width: float = field(default=1.0, metadata={"help": "small_alexnet: scale every layer's width (1 = the paper)"})
    channels: int | None = field(default=None, metadata={"help": "convert images to 1 or 3 channels"})
    image_size: int | None = field(default=None, metadata={"help": "view size in px (default: per dataset)"})
    channels_last: bool = field(default=False, metadata={"help": "channels-last memory format (faster on GPUs)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the encoder"})
    batch_size: int = field(default=768, metadata={"help": "images per process and step"})
    epochs: int = field(default=200, metadata={"help": "passes over the data (ignored when --max-steps is set)"})
    optimizer: Literal["sgd", "adam", "adamw"] = field(default="sgd", metadata={"help": "optimizer"})
    lr: float | None = field(default=None, metadata={"help": "learning rate (default: 0.12 x global batch / 256)"})
    weight_decay: float = field(default=1e-4, metadata={"help": "weight decay"})
    lr_schedule: Literal["constant", "multistep", "cosine", "linear"] = field(
        default="multistep", metadata={"help": "learning-rate schedule after warm-up"}
    )
    num_workers: int = field(default=min(8, os.cpu_count() or 1), metadata={"help": "data-loader worker processes"})
    checkpoint_every: int | None = field(default=1000, metadata={"help": "checkpoint every N steps"})
    eval: bool = field(default=True, metadata={"help": "evaluate after training"})
    eval_layers: tuple[str, ...] = field(default=(), metadata={"help": "layers to evaluate (default: fc7 output)"})
    eval_train_size: int | None = field(default=None, metadata={"help": "labelled training images for evaluation"})
    eval_test_size: int | None = field(default=None, metadata={"help": "test images for evaluation"})
    linear_protocol: Literal["paper", "fast", "none"] = field(
        default="paper", metadata={"help": "linear probe: the paper's 100 epochs, a fast 20, or none"}
    )
    push_to_hub: str | None = push_to_hub_field()
    lr_from_batch: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.lr is None:  # rescaled by the number of processes once the accelerator is up
            self.lr, self.lr_from_batch = 0.12 * self.batch_size / 256, True
        super().__post_init__()
        if self.channels not in (None, 1, 3):
            raise ValueError(f"--channels must be 1 or 3, got {self.channels}")
        if not self.width > 0:
            raise ValueError(f"--width must be > 0, got {self.width}")


def main(argv: list[str] | None = None) -> int:
    config = parse_config(STL10Config, argv)
    try:
        loss = HypersphereLoss(config.loss)
        images = open_images(config.dataset, "pretrain", root=config.data_root, channels=config.channels)
        augment = augment_defaults(config.dataset, images.channels, size=config.image_size)
        views = TwoViewDataset(images, augment, seed=config.seed)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    with training_session(config) as accelerator:
        if config.lr_from_batch:
            config.lr = 0.12 * config.batch_size * accelerator.num_processes / 256
        architecture = (
            {"width": config.width} if config.encoder == "small_alexnet" else {"cifar_stem": augment.size <= 32}
        )
        model = build_encoder(
            config.encoder, compile=config.compile, in_channels=augment.channels, image_size=augment.size,
            dim=config.dim, mean=augment.mean, std=augment.std, resize=augment.eval_resize,
            channels_last=config.channels_last, **architecture,
        )  # fmt: skip
        loader = make_view_loader(views, config)
        try:
            result = fit(model, loss, loader, config, accelerator=accelerator)
        except (TrainingDivergedError, ValueError) as error:
            accelerator.print(f"error: {error}")
            return 1
        if not accelerator.is_main_process:
            return 0

        output = Path(config.output_dir)
        save(result.model, output / "model")
        metrics = {"steps": result.steps, "final_loss": result.last_loss, "skipped_images": images.skipped}
        if config.eval:
            layers = list(config.eval_layers or DEFAULT_EVAL_LAYERS[config.encoder])
            # Headline figures: the paper's taps (linear on fc7, k-NN on the output) when evaluated.
            linear_layer, knn_layer = headline_layers(config.encoder, layers)
            try:
                report = evaluate_image_encoder(
                    result.model, config.dataset, layers=layers,
                    linear=None if config.linear_protocol == "none" else config.linear_protocol,
                    train_size=config.eval_train_size, test_size=config.eval_test_size, data_root=config.data_root,
                    channels=config.channels, seed=config.seed, num_workers=min(config.num_workers, 4),
                )  # fmt: skip
            except (ValueError, FileNotFoundError) as error:
                write_run_metrics(output / "metrics.json", {**metrics, "config": config_to_dict(config)})
                print(f"error: evaluation failed: {error}", file=sys.stderr)
                return 2
            results = report["results"]
            knn = f"knn{report['k']}"
            for role, suffix in (("pretrained", ""), ("random_encoder", "_random_encoder")):
                metrics[f"{knn}_accuracy{suffix}"] = results[role][knn_layer][knn]
                if "linear" in results[role][linear_layer]:
                    metrics[f"linear_accuracy{suffix}"] = results[role][linear_layer]["linear"]
            metrics[f"{knn}_accuracy_raw_pixels"] = results["raw_pixels"]["pixels"][knn]
            if "linear" in results["raw_pixels"]["pixels"]:
                metrics["linear_accuracy_raw_pixels"] = results["raw_pixels"]["pixels"]["linear"]
            metrics.update({"linear_layer": linear_layer, "knn_layer": knn_layer})
            metrics["alignment_test_views"] = results["pretrained"]["alignment"]
            metrics["uniformity_test"] = results["pretrained"]["uniformity"]
            metrics.update({"evaluation": report, "summary": summary_metrics(report)})
            print(format_report(report))
        write_run_metrics(output / "metrics.json", {**metrics, "config": config_to_dict(config)})
        print(f"model: {output / 'model'}  metrics: {output / 'metrics.json'}")
        return publish_run(output, kind="image", push_to_hub=config.push_to_hub)
    return 0


if __name__ == "__main__":
    sys.exit(main())
