"""The one training loop every recipe shares, driven by 🤗 Accelerate.

A recipe builds its data, its encoder and its loss, then calls :func:`fit`::

    config = parse_config(MyConfig)              # a TrainConfig subclass; hsrl.cli.config.parse_config
    with training_session(config) as accelerator:
        loader = make_dataloader(dataset, config)
        model = build_model(...)
        result = fit(model, HypersphereLoss(config.loss), loader, config, accelerator=accelerator)

The Accelerator owns devices, processes and mixed precision; the loop owns the
science: the two views are encoded, gathered from every process *with gradients*
(so the loss sees the global batch, as in the paper's single-process runs), each
process computes its rows' share of the loss (the shares add up to the loss and
its gradients), and the loss, its parts and the alignment/uniformity of the batch
are logged.

Resuming is exact: checkpoints hold the model, optimizer, LR schedule and every
random state, and the position inside the epoch. The sampler's order depends
only on ``(seed, epoch)`` and the loader's generator is re-seeded per epoch, so a
run resumed mid-epoch sees the same batches in the same order, with the same
random state, as a run that was never interrupted. (Data augmentation that draws
from the global random state must not run in loader workers for this to hold
bit for bit; see :mod:`hsrl.data`.)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import typing
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, broadcast, set_seed
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from hsrl.budget import PROVISIONAL_STEPS, StepPlanner
from hsrl.checkpoints import (
    STATE_FILE,
    atomic_write_json,
    checkpoint_name,
    find_latest_checkpoint,
    list_checkpoints,
    publish_folder,
    read_trainer_state,
    remove_stale_temporaries,
)
from hsrl.configuration import config_to_dict
from hsrl.distributed import all_reduce_detached, destroy_process_group, gather_with_grad, row_offset, world_size
from hsrl.gradcache import backward_chunks, check_cacheable, embed_chunks, loss_precision, split_batch
from hsrl.losses import align_loss, uniform_loss

__all__ = [
    "EpochShuffleSampler",
    "FitResult",
    "GroupedBatchSampler",
    "TrainConfig",
    "TrainingDivergedError",
    "encode_views",
    "fit",
    "make_accelerator",
    "make_dataloader",
    "training_session",
]


#: Experiment trackers ``--log-with`` accepts: every one Accelerate integrates.
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio")


@dataclass
class TrainConfig:
    """Training settings shared by every recipe (each field is a command-line flag)."""

    output_dir: str = field(
        default="runs/hsrl", metadata={"help": "folder for checkpoints, logs, the model and metrics"}
    )
    seed: int = field(default=0, metadata={"help": "seed for model init, data order and augmentation"})
    batch_size: int = field(
        default=256, metadata={"help": "examples per process and step; the loss sees batch_size x processes"}
    )
    epochs: int = field(default=1, metadata={"help": "passes over the data (ignored when --max-steps is set)"})
    max_steps: int | None = field(
        default=None,
        metadata={"help": "stop after this many optimizer steps (with --time-budget-min: at most this many, fewer "
                          "if the budget runs out first)"},
    )  # fmt: skip
    time_budget_min: float | None = field(
        default=None,
        metadata={"help": "train for this many minutes of wall clock, with the LR schedule planned for the budget "
                          "from the measured step time (instead of --epochs; --max-steps then caps the steps)"},
    )  # fmt: skip
    gradient_accumulation_steps: int = field(
        default=1,
        metadata={"help": "add the gradients of N batches before each optimizer step (saves memory, but the loss "
                          "sees each batch alone: uniformity of N small batches is not that of one big batch; "
                          "--cache-chunk-size keeps the batch whole)"},
    )  # fmt: skip
    cache_chunk_size: int | None = field(
        default=None,
        metadata={"help": "gradient caching: embed each batch in chunks of this many examples, so a large batch "
                          "fits in memory; the loss and gradients are those of the whole batch"},
    )  # fmt: skip
    optimizer: Literal["sgd", "adam", "adamw"] = field(default="adamw", metadata={"help": "optimizer"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay (decoupled for adamw)"})
    betas: tuple[float, ...] = field(default=(0.9, 0.999), metadata={"help": "Adam betas"})
    lr_schedule: Literal["constant", "multistep", "cosine", "linear"] = field(
        default="constant", metadata={"help": "learning-rate schedule after warm-up"}
    )
    lr_milestones: tuple[float, ...] = field(
        default=(0.775, 0.85, 0.925),
        metadata={"help": "multistep: fractions of training at which the LR is multiplied by --lr-decay"},
    )
    lr_decay: float = field(default=0.1, metadata={"help": "multistep: LR factor at each milestone"})
    min_lr_ratio: float = field(default=0.0, metadata={"help": "cosine/linear: final LR as a fraction of --lr"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps"})
    max_grad_norm: float | None = field(default=None, metadata={"help": "clip gradients to this norm"})
    mixed_precision: Literal["no", "fp16", "bf16"] | None = field(
        default=None,
        metadata={"help": "autocast precision; default: what `accelerate launch --mixed_precision` or your accelerate "
                          "config says (no when run without accelerate)"},
    )  # fmt: skip
    num_workers: int = field(default=0, metadata={"help": "data-loader worker processes"})
    threads: int | None = field(
        default=None,
        metadata={"help": "intra-op threads per process when training on the CPU (default: the usable cores / "
                          "processes on this machine; `accelerate launch` alone would give each process one)"},
    )  # fmt: skip
    log_every: int = field(default=10, metadata={"help": "log loss and LR every N steps"})
    metrics_every: int = field(default=50, metadata={"help": "log batch alignment/uniformity every N steps"})
    checkpoint_every: int | None = field(
        default=500, metadata={"help": "save a checkpoint every N steps (and at the end)"}
    )
    keep_checkpoints: int = field(default=2, metadata={"help": "how many recent checkpoints to keep"})
    resume: str | None = field(
        default=None, metadata={"help": "'latest' (in output-dir) or a checkpoint folder to resume from"}
    )
    log_with: str = field(
        default="tensorboard",
        metadata={"help": f"experiment tracker(s), comma-separated: {', '.join(TRACKERS)}, all (every installed "
                          "one) or none"},
    )  # fmt: skip
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    cpu: bool = field(default=False, metadata={"help": "train on the CPU even when a GPU is present"})

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for name in ("optimizer", "lr_schedule"):
            # A recipe may widen the field to ``Literal[...] | None`` (None: its preset decides, before this runs).
            allowed = tuple(
                choice
                for option in (typing.get_args(hints[name]) or (hints[name],))
                for choice in (typing.get_args(option) if typing.get_origin(option) is typing.Literal else (option,))
                if isinstance(choice, str)
            )
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}")
        if self.mixed_precision not in (None, "no", "fp16", "bf16"):
            raise ValueError("--mixed-precision must be one of no, fp16, bf16")
        unknown = sorted(set(self.trackers()) - set(TRACKERS) - {"all"})
        if unknown:
            raise ValueError(f"--log-with: unknown tracker {', '.join(unknown)}; use {', '.join(TRACKERS)}, "
                             "all or none")  # fmt: skip
        from accelerate.tracking import get_available_trackers

        installed = {str(getattr(t, "value", t)) for t in get_available_trackers()}
        missing = sorted(set(self.trackers()) - installed - {"all"})
        if missing:
            raise ValueError(f"--log-with {', '.join(missing)}: not installed (pip install {' '.join(missing)}); "
                             f"installed: {', '.join(sorted(installed)) or 'none'}")  # fmt: skip
        positive = {
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "log_every": self.log_every,
            "metrics_every": self.metrics_every,
            "keep_checkpoints": self.keep_checkpoints,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        for name in ("max_steps", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.num_workers < 0:
            raise ValueError("--warmup-steps, --weight-decay and --num-workers must be >= 0")
        if any(not 0 < m < 1 for m in self.lr_milestones):
            raise ValueError(f"--lr-milestones are fractions of training in (0, 1), got {self.lr_milestones}")
        if len(self.betas) != 2 or any(not 0 <= b < 1 for b in self.betas):
            raise ValueError(f"--betas needs two numbers in [0, 1), got {self.betas}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"--max-grad-norm must be > 0, got {self.max_grad_norm}")
        budget = self.time_budget_min
        if budget is not None and not (isinstance(budget, int | float) and math.isfinite(budget) and budget > 0):
            raise ValueError(f"--time-budget-min must be a number of minutes > 0, got {budget}")
        if self.cache_chunk_size is not None:
            if self.cache_chunk_size < 1:
                raise ValueError(f"--cache-chunk-size must be >= 1, got {self.cache_chunk_size}")
            if self.cache_chunk_size > self.batch_size:
                raise ValueError(f"--cache-chunk-size {self.cache_chunk_size} is larger than --batch-size "
                                 f"{self.batch_size}: a chunk is part of one process's batch")  # fmt: skip

    def trackers(self) -> list[str]:
        """The trackers ``--log-with`` names (empty for ``none``)."""
        names = [n.strip() for n in self.log_with.split(",") if n.strip()]
        return [] if names in ([], ["none"]) else names


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainerState:
    """Where the loop is: what a checkpoint must hold besides Accelerate's state."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already trained on
    train_seconds: float = 0.0  # wall clock spent in the loop so far, over every resumed piece
    planned_steps: int = 0  # the step count a time budget planned (0: not planned yet)

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "train_seconds": self.train_seconds, "planned_steps": self.planned_steps}  # fmt: skip


@dataclass
class FitResult:
    model: nn.Module  # unwrapped from DDP/compile
    steps: int
    last_loss: float
    history: list[dict[str, float]]
    checkpoint: Path | None
    train_seconds: float = 0.0  # wall clock in the loop, resumed pieces included


# --------------------------------------------------------------------------- data


class EpochShuffleSampler(Sampler[int]):
    """A random permutation of ``range(n)`` that depends only on ``(seed, epoch)``.

    Unlike ``RandomSampler`` it draws nothing from the global random state, so the
    order of an epoch can be rebuilt exactly when a run resumes.
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches whose examples all come from one group (e.g. one book), in an order set by ``(seed, epoch)``.

    Each epoch, every group's indices are shuffled and cut into full batches, and the
    batches of all groups are shuffled together. Uniformity and in-batch negatives then
    compare examples of one group only: the model cannot spread a batch apart by telling
    groups apart (e.g. by characters' names), so it learns the finer differences that
    retrieval *within* a book needs.
    """

    def __init__(self, groups: Sequence[Hashable], batch_size: int, seed: int = 0) -> None:
        by_group: dict[Hashable, list[int]] = {}
        for index, group in enumerate(groups):
            by_group.setdefault(group, []).append(index)
        self.members = [by_group[g] for g in sorted(by_group, key=str)]
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        batches = []
        for members in self.members:
            order = [members[i] for i in torch.randperm(len(members), generator=g).tolist()]
            batches += [order[i : i + self.batch_size] for i in range(0, len(order) - self.batch_size + 1,
                                                                      self.batch_size)]  # fmt: skip
        return iter([batches[i] for i in torch.randperm(len(batches), generator=g).tolist()])

    def __len__(self) -> int:
        return sum(len(m) // self.batch_size for m in self.members)


def make_dataloader(
    dataset: Dataset,
    config: TrainConfig,
    *,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    shuffle: bool = True,
    drop_last: bool = True,
    groups: Sequence[Hashable] | None = None,
) -> DataLoader:
    """A loader for :func:`fit`: resumable order, workers, pinned memory, full batches.

    ``drop_last`` defaults to True because the losses compare every example of a
    batch with every other: a tiny last batch would be a noisy, differently scaled step.
    With ``groups`` (one per example), every batch holds examples of one group
    (:class:`GroupedBatchSampler`).
    """
    workers = config.num_workers
    common: dict[str, Any] = {
        "batch_size": config.batch_size,
        "collate_fn": collate_fn,
        "num_workers": workers,
        "pin_memory": torch.cuda.is_available() and not config.cpu,
        # Workers hold a copy of the dataset: one whose items depend on the epoch (set_epoch) needs fresh workers
        # each epoch to see it.
        "persistent_workers": workers > 0 and not hasattr(dataset, "set_epoch"),
        "prefetch_factor": 4 if workers > 0 else None,
        # The loader's own generator (re-seeded per epoch by fit) seeds the workers,
        # so creating an iterator never consumes the global random state.
        "generator": torch.Generator().manual_seed(config.seed),
        "drop_last": drop_last,
    }
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return DataLoader(dataset, **common)
    if not isinstance(dataset, Sized):
        raise ValueError("the dataset must be a map-style Dataset with __len__ or an IterableDataset")
    if groups is not None:
        if len(groups) != len(dataset):
            raise ValueError("one group per example is needed")
        batches = GroupedBatchSampler(groups, config.batch_size, seed=config.seed)
        if len(batches) == 0:
            raise ValueError(f"no group has a full batch of {config.batch_size} examples; lower --batch-size")
        unbatched = {k: v for k, v in common.items() if k not in {"batch_size", "drop_last"}}
        return DataLoader(dataset, batch_sampler=batches, **unbatched)
    sampler = EpochShuffleSampler(len(dataset), seed=config.seed, shuffle=shuffle)
    return DataLoader(dataset, sampler=sampler, **common)


def encode_views(model: nn.Module, batch: Any) -> tuple[Tensor, Tensor]:
    """Default: ``batch`` is ``(view1, view2, *rest)``; both views go through one forward.

    One forward over the concatenated views (as the paper's code does) keeps batch
    normalisation statistics shared by both views.
    """
    if isinstance(batch, Mapping):
        view1, view2 = batch["view1"], batch["view2"]
    else:
        view1, view2 = batch[0], batch[1]
    z = model(torch.cat([view1, view2]))
    return z[: len(view1)], z[len(view1) :]


# --------------------------------------------------------------------------- optimisation


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    betas = (config.betas[0], config.betas[1])
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, betas=betas, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, betas=betas, weight_decay=config.weight_decay)


@dataclass
class LRSchedule:
    """Multiplier of the peak LR at a step: linear warm-up, then the chosen shape."""

    total_steps: int
    warmup_steps: int
    shape: str
    milestones: tuple[float, ...]
    decay: float
    min_ratio: float

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.shape == "multistep":
            passed = sum(step >= round(m * self.total_steps) for m in self.milestones)
            return self.decay**passed
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, progress)
        if self.shape == "cosine":
            return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if self.shape == "linear":
            return 1 - (1 - self.min_ratio) * progress
        return 1.0


# --------------------------------------------------------------------------- the loop


def make_accelerator(config: TrainConfig, *, find_unused_parameters: bool = False) -> Accelerator:
    """The Accelerator for a run, with the run's seed applied (call before building the model).

    ``find_unused_parameters`` is for models with parameters the loss never reaches
    (e.g. a BERT pooler that sentence embeddings skip), which DDP would otherwise reject.
    """
    project = ProjectConfiguration(project_dir=config.output_dir, logging_dir=str(Path(config.output_dir) / "logs"))
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,  # None: the launcher's or the accelerate config's choice
        cpu=config.cpu,
        log_with=config.trackers() or None,
        project_config=project,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)]
        if find_unused_parameters
        else None,
    )
    if accelerator.device.type == "cpu":
        torch.set_num_threads(config.threads or cpu_threads_per_process(accelerator.num_processes))
    set_seed(config.seed)
    return accelerator


def cpu_threads_per_process(processes: int) -> int:
    """The usable cores shared by the processes of this machine (``LOCAL_WORLD_SIZE`` of them when a
    launcher says so): `accelerate launch` sets ``OMP_NUM_THREADS=1`` unless told otherwise, which would
    leave all but one core idle on a CPU run."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", processes))
    return max(1, cores // max(1, local))


@contextlib.contextmanager
def training_session(config: TrainConfig, *, find_unused_parameters: bool = False) -> Iterator[Accelerator]:
    """An Accelerator that is always shut down cleanly.

    Ending trackers and destroying the process group on the way out, error or not,
    keeps multi-process runs from aborting at exit ("terminate called without an
    active exception").
    """
    accelerator = make_accelerator(config, find_unused_parameters=find_unused_parameters)
    try:
        yield accelerator
    finally:
        accelerator.end_training()
        destroy_process_group()


def _batch_metrics(x: Tensor, y: Tensor) -> dict[str, float]:
    """The paper's two diagnostics on the (global) batch: L_align(α=2), L_uniform(t=2)."""
    with torch.no_grad():
        x, y = x.detach().float(), y.detach().float()
        uniform = (uniform_loss(x, t=2.0, normalize=True) + uniform_loss(y, t=2.0, normalize=True)) / 2
        return {"align": float(align_loss(x, y, normalize=True)), "uniform": float(uniform)}


def _set_epoch(loader: Any, epoch: int, seed: int) -> None:
    if hasattr(loader, "set_epoch"):  # Accelerate's loader forwards it to the sampler (or else the dataset)
        loader.set_epoch(epoch)
    dataset = getattr(loader, "dataset", None)
    if hasattr(dataset, "set_epoch"):  # a dataset whose items depend on the epoch (e.g. drawn hard negatives)
        dataset.set_epoch(epoch)
    generator = getattr(loader, "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(seed * 1_000_003 + epoch)


def _resolve_resume(config: TrainConfig, checkpoints: Path) -> Path | None:
    if config.resume is None:
        return None
    if config.resume == "latest":
        return find_latest_checkpoint(checkpoints)  # nothing yet: start fresh
    path = Path(config.resume)
    if not (path / STATE_FILE).is_file():
        raise ValueError(f"--resume {config.resume}: not an hsrl checkpoint folder (no {STATE_FILE})")
    return path


def _save_checkpoint(accelerator: Accelerator, state: TrainerState, folder: Path, keep: int) -> Path:
    target = folder / checkpoint_name(state.step)
    tmp = folder / f".tmp-{target.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # every process writes its own random state
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / STATE_FILE, state.as_dict())
        publish_folder(tmp, target)
        for old in list_checkpoints(folder)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return target


def _diverged(what: str, step: int, checkpoints: Path) -> TrainingDivergedError:
    return TrainingDivergedError(
        f"{what} became NaN or infinite at step {step}; stopped without saving. "
        f"Last good checkpoint: {find_latest_checkpoint(checkpoints) or 'none'}. "
        "Try a lower --lr, --max-grad-norm, or --mixed-precision no."
    )


def fit(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    dataloader: DataLoader,
    config: TrainConfig,
    *,
    accelerator: Accelerator | None = None,
    encode: Callable[[nn.Module, Any], tuple[Tensor, ...]] = encode_views,
    regularizer: Callable[[nn.Module, int], Tensor] | None = None,
) -> FitResult:
    """Train ``model`` so that ``loss_fn(x, y)`` on the global batch goes down.

    Args:
        model: an encoder returning L2-normalised embeddings.
        loss_fn: called on the views of the *global* batch, gathered from every
            process with gradients. If it has a ``terms(x, y)`` method returning a
            dict with ``"loss"`` (like :class:`hsrl.losses.HypersphereLoss`), every
            part is logged.
        dataloader: from :func:`make_dataloader` (for exact resume), or any loader.
        config: the run's :class:`TrainConfig`.
        accelerator: from :func:`training_session`; one is made if omitted.
        encode: maps ``(model, batch)`` to the two views' embeddings, or to three: ``(x, y, negatives)``, whose
            extra negatives are gathered like the views and passed to ``loss_fn.terms(x, y, negatives=...)``
            (:class:`hsrl.losses.HypersphereLoss` scores them in its contrastive term).
        regularizer: a term of this process's own, added to the loss every step: called as
            ``regularizer(model, step)`` (e.g. :class:`hsrl.replay.ReplayAnchor`); logged under its ``name``.

    Raises:
        TrainingDivergedError: the loss became NaN or infinite. Nothing is saved for the
            bad step; the last good checkpoint stays the latest.
    """
    accelerator = accelerator or make_accelerator(config)
    output = Path(config.output_dir)
    checkpoints = output / "checkpoints"
    if accelerator.is_main_process:
        checkpoints.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(checkpoints)

    if config.cache_chunk_size:
        check_cacheable(model)
    optimizer = build_optimizer(model, config)
    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    accumulate = config.gradient_accumulation_steps
    try:
        steps_per_epoch: int | None = len(dataloader) // accumulate  # optimizer steps; the rest of an epoch is unused
    except TypeError:  # an iterable dataset without a length
        steps_per_epoch = None
    if config.max_steps is None and steps_per_epoch is None and config.time_budget_min is None:
        raise ValueError("this dataset has no length: set --max-steps or --time-budget-min")
    total_steps = config.max_steps or config.epochs * int(steps_per_epoch or 0)
    if config.time_budget_min is not None:  # the planner sets it; until then the cap, or a horizon of ~infinity
        total_steps = config.max_steps or PROVISIONAL_STEPS
    if total_steps < 1 or steps_per_epoch == 0:
        raise ValueError(
            f"no full batch of {config.batch_size} x {accelerator.num_processes} processes in the data; "
            "lower --batch-size or add data"
        )
    schedule = LRSchedule(
        total_steps, config.warmup_steps, config.lr_schedule, config.lr_milestones, config.lr_decay, config.min_lr_ratio
    )
    # Not passed to prepare(): Accelerate would step it once per process per step.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    accelerator.register_for_checkpointing(scheduler)

    state = TrainerState()
    resume_from = _resolve_resume(config, checkpoints)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        state = TrainerState(**read_trainer_state(resume_from))
        accelerator.print(f"resumed from {resume_from} (step {state.step}, epoch {state.epoch})")
    planner = None
    if config.time_budget_min is not None:
        planner = StepPlanner(config.time_budget_min * 60, max_steps=config.max_steps)
        if state.step:  # resumed: plan the rest of the budget from the run's average step time
            total_steps = schedule.total_steps = state.planned_steps = planner.resume(state.step, state.train_seconds)

    if config.trackers():
        accelerator.init_trackers("hsrl", config=config_to_dict(config))
    log_path = output / "train_log.jsonl"
    history: list[dict[str, float]] = []
    bar = tqdm(
        total=None if total_steps == PROVISIONAL_STEPS else total_steps,
        initial=state.step,
        desc="train",
        dynamic_ncols=True,
        disable=not (config.progress and accelerator.is_local_main_process),
    )
    last_loss = float("nan")
    last_checkpoint = resume_from
    clock = _TrainingClock(state.train_seconds)

    model.train()
    out_of_time = False
    while state.step < total_steps and not out_of_time:
        _set_epoch(dataloader, state.epoch, config.seed)
        loader = dataloader
        if state.batch_in_epoch:
            loader = accelerator.skip_first_batches(dataloader, state.batch_in_epoch)
        finished_epoch, seen_batch, micro = True, False, 0
        optimizer.zero_grad(set_to_none=True)  # an epoch's unfinished accumulation is dropped
        for batch in loader:
            seen_batch = True
            micro += 1
            state.batch_in_epoch += 1
            boundary = micro % accumulate == 0
            # Between optimizer steps, data-parallel processes keep their gradients to themselves.
            sync = contextlib.nullcontext() if boundary else accelerator.no_sync(model)
            try:
                with sync:
                    terms, x, y = _train_step(model, batch, loss_fn, accelerator, config, encode, state.step + 1,
                                              checkpoints, loss_scale=1 / accumulate,
                                              regularizer=regularizer)  # fmt: skip
            except TrainingDivergedError:
                bar.close()
                raise
            if not boundary:
                continue
            if config.max_grad_norm is not None:
                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            lr_used = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.train_seconds = clock.elapsed()
            last_loss = float(terms["loss"].detach())
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr_used:.2e}", epoch=state.epoch)

            if planner is not None:
                plan, out_of_time = _agree_on_plan(planner, state, accelerator)
                if plan:
                    total_steps = schedule.total_steps = state.planned_steps = plan
                    bar.total = plan
                    bar.refresh()
            logs: dict[str, float] = {}
            last_step = state.step >= total_steps or out_of_time
            if state.step % config.log_every == 0 or last_step:
                logs.update({f"train/{k}": float(v.detach()) for k, v in terms.items()})
                logs["train/lr"] = lr_used
            if state.step % config.metrics_every == 0 or last_step:
                logs.update({f"batch/{k}": v for k, v in _batch_metrics(x, y).items()})
            if logs:
                logs.update({"step": state.step, "epoch": state.epoch})
                history.append(logs)
                accelerator.log(logs, step=state.step)
                if accelerator.is_main_process:
                    with open(log_path, "a") as handle:
                        handle.write(json.dumps(logs) + "\n")

            if config.checkpoint_every and state.step % config.checkpoint_every == 0:
                last_checkpoint = _save_checkpoint(accelerator, state, checkpoints, config.keep_checkpoints)
            if last_step:
                finished_epoch = False
                break
        if not seen_batch and state.batch_in_epoch == 0:
            raise ValueError(f"the data yielded no batch of {config.batch_size} in epoch {state.epoch}")
        if finished_epoch:
            state.epoch += 1
            state.batch_in_epoch = 0
    bar.close()
    if planner is not None:
        accelerator.print(f"time budget: {state.step} steps in {state.train_seconds / 60:.2f} of "
                          f"{config.time_budget_min:g} min")  # fmt: skip

    if config.checkpoint_every and (last_checkpoint is None or not last_checkpoint.name.endswith(f"{state.step:08d}")):
        last_checkpoint = _save_checkpoint(accelerator, state, checkpoints, config.keep_checkpoints)
    accelerator.wait_for_everyone()
    return FitResult(
        # Without the autocast wrapper: what fit returns embeds in full precision (evaluation, saving, serving).
        accelerator.unwrap_model(model, keep_fp32_wrapper=False),
        state.step,
        last_loss,
        history,
        last_checkpoint,
        state.train_seconds,
    )


class _TrainingClock:
    """Seconds of training so far: what earlier pieces of the run spent plus this piece's time."""

    def __init__(self, before: float) -> None:
        self.before, self.start = before, time.perf_counter()

    def elapsed(self) -> float:
        return self.before + time.perf_counter() - self.start


def _agree_on_plan(planner: StepPlanner, state: TrainerState, accelerator: Accelerator) -> tuple[int, bool]:
    """The main process's plan and stop decision, shared by every process (clocks differ a little).

    Returns:
        ``(new planned step count or 0, whether the budget is spent)``.
    """
    plan = planner.observe(state.step, state.train_seconds) or 0
    decision = torch.tensor([plan, int(planner.exhausted(state.train_seconds))], dtype=torch.long)
    if accelerator.num_processes > 1:
        decision = broadcast(decision.to(accelerator.device), from_process=0).cpu()
        planner.planned = int(decision[0]) or planner.planned
    return int(decision[0]), bool(decision[1])


def _train_step(
    model: nn.Module,
    batch: Any,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    accelerator: Accelerator,
    config: TrainConfig,
    encode: Callable[[nn.Module, Any], tuple[Tensor, ...]],
    step: int,
    checkpoints: Path,
    *,
    loss_scale: float = 1.0,
    regularizer: Callable[[nn.Module, int], Tensor] | None = None,
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Forward, global-batch loss and backward of one batch; gradients are added to the model's.

    ``loss_scale`` (1 / accumulation steps) scales what is back-propagated, not the logged terms.

    With ``--cache-chunk-size`` the batch is embedded in chunks with no graph, the loss's
    gradient with respect to the embeddings is computed once, and each chunk is embedded
    again with a graph to back-propagate it (:mod:`hsrl.gradcache`): same loss, same
    gradients, the activation memory of one chunk.

    A ``regularizer`` is this process's own term (it needs no other process's rows), computed before the batch's
    forward: it joins the loss's backward, or, with caching, has its own backward first, inside ``no_sync``, so
    that the last chunk's backward synchronises every gradient once.

    Returns:
        ``(terms, x, y)``: the loss and its parts, and the global batch's embeddings.
    """
    extra = None
    if regularizer is not None:
        # First in both paths, so that dropout draws the same random numbers with and without caching.
        extra = _regularizer_value(regularizer, model, step, checkpoints)
        if config.cache_chunk_size:
            with accelerator.no_sync(model):
                accelerator.backward(extra * loss_scale)
    chunks: list[Any] = []
    if config.cache_chunk_size:
        chunks = split_batch(batch, config.cache_chunk_size)
        *local, states = embed_chunks(model, encode, chunks)
        for view in local:
            view.requires_grad_(True)
    else:
        local = list(encode(model, batch))
    if len(local) not in (2, 3):
        raise ValueError(f"encode must return (x, y) or (x, y, negatives), got {len(local)} views")
    x_local = local[0]
    # Every view of the global batch, gathered with gradients: x, y and any extra negatives.
    x, y, *extra_views = (gather_with_grad(loss_precision(view)) for view in local)
    if not all(bool(torch.isfinite(view.detach()).all()) for view in (x, y, *extra_views)):
        raise _diverged("the embeddings", step, checkpoints)
    negatives = extra_views[0] if extra_views else None
    terms, loss = _loss_terms(loss_fn, x, y, x_local, negatives)
    if not torch.isfinite(terms["loss"]):
        raise _diverged(f"the loss ({float(terms['loss'])})", step, checkpoints)
    if extra is not None:
        name = getattr(regularizer, "name", "regularizer")
        terms = {**terms, name: extra.detach(), "loss": terms["loss"] + extra.detach()}
        if not config.cache_chunk_size:
            loss = loss + extra
    if not config.cache_chunk_size:
        accelerator.backward(loss * loss_scale)
        return terms, x, y
    # fp16 training scales the loss so that small gradients survive; the cached gradient
    # enters the backward in place of the loss, so it carries the scale instead.
    scale = accelerator.scaler.get_scale() if accelerator.scaler is not None else 1.0
    grads = torch.autograd.grad(loss * (scale * loss_scale), local)
    backward_chunks(model, encode, chunks, states, *grads, no_sync=lambda: accelerator.no_sync(model))
    return terms, x.detach(), y.detach()


def _regularizer_value(
    regularizer: Callable[[nn.Module, int], Tensor], model: nn.Module, step: int, checkpoints: Path
) -> Tensor:
    value = regularizer(model, step)
    if not torch.isfinite(value.detach()):
        raise _diverged(f"the {getattr(regularizer, 'name', 'regularizer')} term ({float(value)})", step, checkpoints)
    return value


def _loss_terms(
    loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor, x_local: Tensor, negatives: Tensor | None
) -> tuple[dict[str, Tensor], Tensor]:
    """``(terms of the global batch, detached; what this process back-propagates)``.

    ``negatives`` (a third view, e.g. mined hard negatives) go to the loss as ``negatives=``; a loss that does not
    take them is refused.

    With several processes and a loss that can be shared (``share_terms``, as :class:`hsrl.losses.HypersphereLoss`),
    each process computes only its rows' share and back-propagates ``W`` times it (see :mod:`hsrl.distributed`):
    the same value and gradients as every process computing the whole loss, at ``1/W`` of the pairwise work.
    The logged terms are the shares summed over the processes (one small all-reduce).
    """
    with_negatives: dict[str, Tensor] = {}
    if negatives is not None:
        if not hasattr(loss_fn, "terms"):
            raise ValueError("the batch has a third view (extra negatives) but the loss takes only two")
        with_negatives["negatives"] = negatives
    processes = world_size()
    if processes > 1 and hasattr(loss_fn, "share_terms"):
        start = row_offset(x_local)
        shares = loss_fn.share_terms(x, y, rows=slice(start, start + x_local.shape[0]), reduce=all_reduce_detached,
                                     processes=processes, **with_negatives)  # fmt: skip
        names = list(shares)
        summed = all_reduce_detached(torch.stack([shares[name].detach().float() for name in names]))
        return dict(zip(names, summed, strict=True)), shares["loss"] * processes
    terms = loss_fn.terms(x, y, **with_negatives) if hasattr(loss_fn, "terms") else {"loss": loss_fn(x, y)}
    return {name: value.detach() for name, value in terms.items()}, terms["loss"]
