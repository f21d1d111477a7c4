"""Images and texts on one hypersphere: two towers trained with cross-modal alignment and uniformity.

    accelerate launch recipes/image_text.py --time-budget-min 5 --output-dir runs/image_text   # offline default
    accelerate launch recipes/image_text.py --loss "clip:1,tau=0.07"            # CLIP's InfoNCE, learnable τ
    accelerate launch recipes/image_text.py --loss "siglip:1,t=10"              # SigLIP's sigmoid loss
    accelerate launch recipes/image_text.py --unseen-classes sandal,bag         # language transfer to 2 classes
    accelerate launch recipes/image_text.py --dataset pairs.jsonl --image-size 64 --channels 3 --no-eval
    accelerate launch recipes/image_text.py --resume latest                     # continue where it stopped

The default data is Fashion-MNIST with captions *generated from its labels* (templates x phrasings x a coarse
category, some templates and phrasings held out for evaluation; :mod:`hsrl.data.captions`): it shows the
machinery working offline, not language understanding. Real pairs: ``--dataset hf:NAME`` or a
``save_to_disk`` folder (``--image-column``, ``--caption-column``), a ``.jsonl``/``.csv``/``.parquet`` of
``image`` + ``caption``, or WebDataset ``.tar`` shards (:mod:`hsrl.data.pairs`).

The towers: an hsrl image encoder trained from scratch, and the packaged all-MiniLM-L6-v2 locked
(LiT-style; ``--no-lock-text`` or ``--lock-text-unlocked-layers N`` to tune it), each with a linear
projection to ``--dim``. The objective is the paper's, across modalities:
``align:1,alpha=2 + uniform:1,t=2`` = E‖f(image) − g(caption)‖² + (L_uniform(f) + L_uniform(g))/2.

Read it top to bottom: configuration, data, towers, loss, ``hsrl.training.fit`` (global batch across
processes, time budget, resume; it logs cross-modal alignment, per-modality uniformity and the modality gap),
then ``OUTPUT/model`` (:func:`hsrl.models.two_tower.save_two_tower`) and the evaluation
(``hsrl eval image-text``: zero-shot with held-out prompts, recall@k both ways, the geometry) in
``OUTPUT/metrics.json``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hsrl.cli.config import parse_config
from hsrl.configuration import config_to_dict
from hsrl.data.captions import FashionCaptions
from hsrl.data.pairs import make_pair_loader, open_pairs
from hsrl.evaluation.image_text import evaluate_image_text, format_summary
from hsrl.evaluation.summary import write_metrics
from hsrl.losses_crossmodal import CrossModalLoss, initial_scales
from hsrl.models.folder import save_model
from hsrl.models.image import build_encoder
from hsrl.models.text import build_text_encoder
from hsrl.models.two_tower import ImageTower, TextTower, TwoTowerModel
from hsrl.training import TrainConfig, TrainingDivergedError, fit, training_session


@dataclass
class ImageTextConfig(TrainConfig):
    """Two-tower image–text training."""

    output_dir: str = field(default="runs/image_text", metadata={"help": "where the model, logs and metrics go"})
    dataset: str = field(
        default="fashion-mnist",
        metadata={"help": "fashion-mnist (label captions), hf:NAME, a save_to_disk folder, .jsonl/.csv/.parquet "
                          "of image + caption, or .tar shards"},
    )  # fmt: skip
    split: str = field(default="train", metadata={"help": "the 🤗 dataset's split"})
    image_column: str = field(default="image", metadata={"help": "column holding the image (or its path)"})
    caption_column: str = field(default="caption", metadata={"help": "column holding the caption(s)"})
    unseen_classes: str = field(
        default="", metadata={"help": "fashion-mnist: classes left out of training entirely, e.g. sandal,bag"}
    )
    text_model: str = field(default="minilm", metadata={"help": "sentence-transformers folder or packaged name"})
    lock_text: bool = field(default=True, metadata={"help": "freeze the text transformer (LiT); its projection trains"})
    lock_text_unlocked_layers: int = field(default=0, metadata={"help": "with --lock-text: train the last N layers"})
    image_encoder: Literal["small_alexnet", "resnet18", "resnet50"] = field(
        default="small_alexnet", metadata={"help": "image tower"}
    )
    width: float = field(default=0.5, metadata={"help": "small_alexnet: width multiplier"})
    image_size: int = field(default=28, metadata={"help": "image side in px"})
    channels: int = field(default=1, metadata={"help": "1 (greyscale) or 3 (colour)"})
    image_dim: int = field(default=128, metadata={"help": "the image encoder's own output dimension"})
    lock_image: bool = field(default=False, metadata={"help": "freeze the image encoder; its projection trains"})
    lock_image_unlocked_groups: int = field(default=0, metadata={"help": "with --lock-image: train the last N blocks"})
    dim: int | None = field(
        default=128, metadata={"help": "shared dimension of both projections (none: no projection)"}
    )
    loss: str = field(default="align:1,alpha=2 + uniform:1,t=2", metadata={"help": "objective (x images, y captions)"})
    flip: bool = field(default=True, metadata={"help": "random horizontal flips of the images"})
    batch_size: int = field(default=256, metadata={"help": "pairs per process and step"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate"})
    weight_decay: float = field(default=1e-4, metadata={"help": "weight decay"})
    lr_schedule: Literal["constant", "multistep", "cosine", "linear"] = field(
        default="cosine", metadata={"help": "learning-rate schedule after warm-up"}
    )
    warmup_steps: int = field(default=50, metadata={"help": "linear warm-up steps"})
    epochs: int = field(default=10, metadata={"help": "passes over the data (without --max-steps or a budget)"})
    checkpoint_every: int | None = field(default=500, metadata={"help": "checkpoint every N steps"})
    eval: bool = field(default=True, metadata={"help": "evaluate after training (fashion-mnist)"})
    eval_pairs: int = field(default=1000, metadata={"help": "test pairs for retrieval and geometry"})
    eval_test_size: int | None = field(default=None, metadata={"help": "evaluate on the first N test images only"})
    linear_probe: bool = field(default=False, metadata={"help": "also a linear probe on the image embeddings"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.channels not in (1, 3):
            raise ValueError(f"--channels must be 1 or 3, got {self.channels}")
        if self.dim is not None and self.dim < 1:
            raise ValueError(f"--dim must be >= 1 or none, got {self.dim}")
        if self.unseen_classes and self.dataset != "fashion-mnist":
            raise ValueError("--unseen-classes is for --dataset fashion-mnist (its classes are known)")


def main(argv: list[str] | None = None) -> int:
    config = parse_config(ImageTextConfig, argv)
    try:
        loss = CrossModalLoss(config.loss)
        captions = FashionCaptions(FashionCaptions.parse_unseen([c for c in config.unseen_classes.split(",")
                                                                 if c.strip()]))  # fmt: skip
        pairs = open_pairs(config.dataset, split=config.split, size=config.image_size, channels=config.channels,
                           seed=config.seed, flip=config.flip, image_column=config.image_column,
                           caption_column=config.caption_column, captions=captions)  # fmt: skip
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    with training_session(config) as accelerator:
        text_encoder = build_text_encoder(config.text_model, projection_dim=config.dim, device=str(accelerator.device))
        image_encoder = build_encoder(
            config.image_encoder, in_channels=config.channels, image_size=config.image_size, dim=config.image_dim,
            **({"width": config.width} if config.image_encoder == "small_alexnet" else {"cifar_stem": True}),
        )  # fmt: skip
        try:
            scale, bias = initial_scales(config.loss)
            model = TwoTowerModel(
                ImageTower(image_encoder, config.dim, lock=config.lock_image,
                           unlocked_groups=config.lock_image_unlocked_groups),
                TextTower(text_encoder, lock=config.lock_text, unlocked_layers=config.lock_text_unlocked_layers),
                logit_scale=scale, logit_bias=bias,
            )  # fmt: skip
        except ValueError as error:
            accelerator.print(f"error: {error}")
            return 2
        loss = CrossModalLoss(config.loss, model)
        if config.cache_chunk_size and loss.uses_scales():
            accelerator.print("error: --cache-chunk-size with clip/siglip: the cached backward reaches the towers, not "
                              "the learnable scale; use align/uniform terms or drop --cache-chunk-size")  # fmt: skip
            return 2
        # Parameters no term reads would get no gradient (and DDP would wait for them): freeze them.
        model.log_logit_scale.requires_grad_(loss.uses_scales())
        model.logit_bias.requires_grad_("siglip" in {term.name for term in loss.objective})
        if config.dataset == "fashion-mnist":
            model.text.warm_cache(captions.training_captions())  # a locked text tower runs once per caption
        loader = make_pair_loader(pairs, config)
        try:
            result = fit(model, loss, loader, config, accelerator=accelerator,
                         encode=lambda m, batch: m(batch.images, batch.captions))  # fmt: skip
        except (TrainingDivergedError, ValueError) as error:
            accelerator.print(f"error: {error}")
            return 1
        if not accelerator.is_main_process:
            return 0

        output = Path(config.output_dir)
        model = result.model
        save_model(model, output / "model")
        skipped = pairs.skips.as_dict() if hasattr(pairs, "skips") else {}
        metrics = {"steps": result.steps, "final_loss": result.last_loss, "train_seconds": result.train_seconds,
                   "skipped_pairs": skipped}  # fmt: skip
        if config.eval and config.dataset == "fashion-mnist":
            report = evaluate_image_text(model, captions=captions, pairs=config.eval_pairs, seed=config.seed,
                                         linear_probe=config.linear_probe, test_size=config.eval_test_size)  # fmt: skip
            metrics.update({"evaluation": report, "summary": report["summary"]})
            print(format_summary(report["summary"]))
        write_metrics(output / "metrics.json", {**metrics, "config": config_to_dict(config)})
        print(f"model: {output / 'model'}  metrics: {output / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
