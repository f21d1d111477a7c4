"""The paper's STL-10 run: align/uniform pretraining of SmallAlexNet, then its evaluation protocol.

    accelerate launch recipes/stl10.py                                   # the paper: 200 epochs, batch 768
    accelerate launch recipes/stl10.py --loss "contrastive:1,tau=0.19"   # the paper's contrastive baseline
    accelerate launch recipes/stl10.py --dataset cifar10 --encoder resnet18
    accelerate launch recipes/stl10.py --dataset fashion-mnist --time-budget-min 10   # a good encoder, 10 min
    accelerate launch recipes/stl10.py --resume latest                   # continue exactly where it stopped

Settings come from a preset (``--preset``, default ``auto``: ``fashion-mnist`` for that dataset, else
``paper-stl10``); every flag given on the command line wins over the preset.

* ``paper-stl10``, the paper's (Wang & Isola 2020, its STL-10 code): SmallAlexNet, batch 768, SGD with
  momentum 0.9 and weight decay 1e-4, lr 0.12 x batch / 256 (the global batch, over all processes), 200
  epochs with the lr x0.1 at epochs 155, 170 and 185 (fractions 0.775, 0.85, 0.925),
  ``align:1,alpha=2 + uniform:1,t=2``, views by RandomResizedCrop(64, scale 0.08-1), flip,
  ColorJitter(0.4, 0.4, 0.4, 0.4), RandomGrayscale(0.2) of STL-10's train + unlabeled images (105k).
* ``fashion-mnist``, chosen by measurement on a 2-core CPU (``benchmarks/fashion_mnist.py``, ablation table
  in ``benchmarks/results/``): the 28 px greyscale :class:`~hsrl.models.image.SmallResNet`, views made a
  whole batch at a time in the loader (no worker processes: both cores go to the model), AdamW with a
  cosine schedule, evaluated at the pooled backbone feature (``pool``). Use it with ``--time-budget-min``.

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

from hsrl.cli.config import parse_config
from hsrl.configuration import config_to_dict
from hsrl.data.images import augment_defaults, dataset_kind, make_view_loader, open_images, two_view_dataset
from hsrl.evaluation.image import evaluate_image_encoder, format_report, image_summary
from hsrl.evaluation.summary import format_summary, write_metrics
from hsrl.hub import publish_run, push_to_hub_field
from hsrl.losses import HypersphereLoss
from hsrl.models.folder import save_model
from hsrl.models.image import DEFAULT_EVAL_LAYERS, build_encoder, headline_layers
from hsrl.training import TrainConfig, TrainingDivergedError, fit, training_session

#: Settings by preset; a field the command line leaves unset (None) takes the preset's value.
PRESETS: dict[str, dict[str, object]] = {
    "paper-stl10": {
        "encoder": "small_alexnet", "batch_size": 768, "epochs": 200, "optimizer": "sgd", "weight_decay": 1e-4,
        "lr_schedule": "multistep", "warmup_steps": 0, "num_workers": min(8, os.cpu_count() or 1),
        "channels_last": False,
    },
    "fashion-mnist": {
        "encoder": "small_resnet", "batch_size": 256, "epochs": 30, "optimizer": "adamw", "lr": 2e-3,
        "weight_decay": 1e-4, "lr_schedule": "cosine", "warmup_steps": 30, "num_workers": 0,
        "channels_last": True,
    },
}  # fmt: skip


@dataclass
class STL10Config(TrainConfig):
    """Align/uniform image pretraining with the paper's STL-10 settings."""

    output_dir: str = field(default="runs/stl10", metadata={"help": "where the model, logs and metrics go"})
    dataset: str = field(
        default="stl10",
        metadata={"help": "stl10, cifar10, cifar100, fashion-mnist, imagefolder:PATH, hf:NAME or a 🤗 dataset folder"},
    )
    data_root: str | None = field(default=None, metadata={"help": "folder of torchvision datasets (STL-10, CIFAR)"})
    preset: str = field(
        default="auto", metadata={"help": f"settings to start from: auto (by dataset), {', '.join(PRESETS)}"}
    )
    encoder: Literal["small_alexnet", "small_resnet", "resnet18", "resnet50"] | None = field(
        default=None, metadata={"help": "image encoder (default: the preset's)"}
    )
    loss: str = field(default="align:1,alpha=2 + uniform:1,t=2", metadata={"help": "objective, as the paper writes it"})
    dim: int = field(default=128, metadata={"help": "embedding dimension"})
    width: float = field(default=1.0, metadata={"help": "small_alexnet: scale every layer's width (1 = the paper)"})
    head_grid: int = field(
        default=1, metadata={"help": "small_resnet: the projection head sees the last map pooled to a g x g grid "
                                     "(1: global average pooling)"}
    )  # fmt: skip
    channels: int | None = field(default=None, metadata={"help": "convert images to 1 or 3 channels"})
    image_size: int | None = field(default=None, metadata={"help": "view size in px (default: per dataset)"})
    channels_last: bool | None = field(
        default=None, metadata={"help": "channels-last memory format (fashion-mnist preset: on, 2x faster on a CPU)"}
    )
    batched_views: bool | None = field(
        default=None, metadata={"help": "make views a whole batch at a time in the loader (default: per dataset)"}
    )
    crop_scale: float | None = field(default=None, metadata={"help": "smallest crop area fraction (per dataset)"})
    erase: float | None = field(default=None, metadata={"help": "random-erasing probability (per dataset)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the encoder"})
    batch_size: int | None = field(default=None, metadata={"help": "images per process and step (preset's)"})
    epochs: int | None = field(default=None, metadata={"help": "passes over the data, without --max-steps or a "
                                                               "time budget (preset's)"})  # fmt: skip
    optimizer: Literal["sgd", "adam", "adamw"] | None = field(default=None, metadata={"help": "optimizer (preset's)"})
    lr: float | None = field(default=None, metadata={"help": "learning rate (paper-stl10: 0.12 x global batch / 256)"})
    weight_decay: float | None = field(default=None, metadata={"help": "weight decay (preset's)"})
    lr_schedule: Literal["constant", "multistep", "cosine", "linear"] | None = field(
        default=None, metadata={"help": "learning-rate schedule after warm-up (preset's)"}
    )
    warmup_steps: int | None = field(default=None, metadata={"help": "linear warm-up steps (preset's)"})
    num_workers: int | None = field(default=None, metadata={"help": "data-loader worker processes (preset's)"})
    checkpoint_every: int | None = field(default=1000, metadata={"help": "checkpoint every N steps"})
    eval: bool = field(default=True, metadata={"help": "evaluate after training"})
    eval_layers: tuple[str, ...] = field(default=(), metadata={"help": "layers to evaluate (default: fc7 output)"})
    eval_train_size: int | None = field(default=None, metadata={"help": "labelled training images for evaluation"})
    eval_test_size: int | None = field(default=None, metadata={"help": "test images for evaluation"})
    knn_protocol: Literal["paper", "lightly"] = field(
        default="paper", metadata={"help": "k-NN: the paper's 5-NN majority vote, or lightly's 200-NN weighted by "
                                           "similarity (temperature 0.1) to compare with its CIFAR-10 tables"}
    )  # fmt: skip
    linear_protocol: Literal["paper", "fast", "none"] = field(
        default="paper", metadata={"help": "linear probe: the paper's 100 epochs, a fast 20, or none"}
    )
    push_to_hub: str | None = push_to_hub_field()
    lr_from_batch: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.preset == "auto":
            self.preset = "fashion-mnist" if dataset_kind(self.dataset) == "fashion-mnist" else "paper-stl10"
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from auto, {', '.join(PRESETS)}")
        for name, value in PRESETS[self.preset].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.lr is None:  # the paper's rule, rescaled by the number of processes once the accelerator is up
            self.lr, self.lr_from_batch = 0.12 * self.batch_size / 256, True
        super().__post_init__()
        if self.channels not in (None, 1, 3):
            raise ValueError(f"--channels must be 1 or 3, got {self.channels}")
        if not self.width > 0:
            raise ValueError(f"--width must be > 0, got {self.width}")
        if self.head_grid < 1:
            raise ValueError(f"--head-grid must be >= 1, got {self.head_grid}")
        if self.head_grid != 1 and self.encoder != "small_resnet":
            raise ValueError(f"--head-grid is for the small_resnet encoder, not {self.encoder}")
        if self.crop_scale is not None and not 0 < self.crop_scale <= 1:
            raise ValueError(f"--crop-scale must be in (0, 1], got {self.crop_scale}")
        if self.erase is not None and not 0 <= self.erase <= 1:
            raise ValueError(f"--erase is a probability in [0, 1], got {self.erase}")


def main(argv: list[str] | None = None) -> int:
    config = parse_config(STL10Config, argv)
    try:
        loss = HypersphereLoss(config.loss)
        images = open_images(config.dataset, "pretrain", root=config.data_root, channels=config.channels)
        augment = augment_defaults(
            config.dataset, images.channels, size=config.image_size, erase=config.erase,
            batched=config.batched_views, scale=(config.crop_scale, 1.0) if config.crop_scale else None,
        )  # fmt: skip
        views = two_view_dataset(images, augment, seed=config.seed)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    with training_session(config) as accelerator:
        if config.lr_from_batch:
            config.lr = 0.12 * config.batch_size * accelerator.num_processes / 256
        architecture = {
            "small_alexnet": {"width": config.width},
            "small_resnet": {"head_grid": config.head_grid},
        }.get(config.encoder, {"cifar_stem": augment.size <= 32})
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
        save_model(result.model, output / "model")  # every hsrl command opens it
        metrics = {"steps": result.steps, "final_loss": result.last_loss, "skipped_images": images.skipped}
        if config.eval:
            # The architecture's taps (small_alexnet: the paper's, linear on fc7 and k-NN on the output) and the
            # output itself (what export and the service use), unless the user chose layers.
            layers = list(config.eval_layers or dict.fromkeys([*DEFAULT_EVAL_LAYERS[config.encoder], "output"]))
            linear_layer, knn_layer = headline_layers(config.encoder, layers)
            try:
                report = evaluate_image_encoder(
                    result.model, config.dataset, layers=layers, knn_protocol=config.knn_protocol,
                    linear=None if config.linear_protocol == "none" else config.linear_protocol,
                    train_size=config.eval_train_size, test_size=config.eval_test_size, data_root=config.data_root,
                    channels=config.channels, seed=config.seed, num_workers=min(config.num_workers, 4),
                )  # fmt: skip
            except (ValueError, FileNotFoundError) as error:
                write_metrics(output / "metrics.json", {**metrics, "config": config_to_dict(config)})
                print(f"error: evaluation failed: {error}", file=sys.stderr)
                return 2
            results = report["results"]
            knn = report["knn_metric"]
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
            summary = image_summary(report, layer=knn_layer, linear_layer=linear_layer, steps=result.steps,
                                    train_seconds=result.train_seconds)  # fmt: skip
            metrics.update({"evaluation": report, "summary": summary})
            print(format_report(report))
            print(format_summary(summary))
        write_metrics(output / "metrics.json", {**metrics, "config": config_to_dict(config)})
        print(f"model: {output / 'model'}  metrics: {output / 'metrics.json'}")
        return publish_run(output, kind="image", push_to_hub=config.push_to_hub)
    return 0


if __name__ == "__main__":
    sys.exit(main())
