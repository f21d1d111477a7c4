"""What every ``hsrl reproduce`` experiment shares: data, a small encoder, resumable runs, evaluation, files.

A *run* is one training of an encoder with one objective (full size: the ``fashion-mnist`` preset's
:class:`~hsrl.models.image.SmallResNet` and its views; ``--quick``: a tiny CNN). It lives in its own folder
``RUNS/<name>-<key>``, where ``key`` hashes everything that defines the run (objective, budget, seed,
starting weights, evaluation sizes): changing a setting starts a new run instead of reusing a stale one.
Inside, :func:`hsrl.training.fit` keeps its checkpoints (an interrupted run resumes from the latest) and a
finished run leaves ``metrics.json`` (written atomically) plus ``model/``, an hsrl image model folder. A run whose
``metrics.json`` exists is skipped: its numbers are read back and, where a figure needs features, its
weights are reloaded.

The evaluation is the paper's: 5-NN accuracy (cosine, the train images as memory, test images as
queries; at the encoder's headline layer, :data:`KNN_LAYER`, and at the output), alignment
:math:`L_{align} = \\mathbb{E}\\lVert f(x) - f(y)\\rVert_2^2` over two random views of each test image,
and uniformity :math:`L_{uniform} = \\log \\mathbb{E}\\, e^{-2\\lVert f(a) - f(b)\\rVert_2^2}`
over the clean test images (α = 2, t = 2, the paper's defaults).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from hsrl.checkpoints import atomic_write_bytes, atomic_write_json
from hsrl.data.images import ImageSplit, augment_defaults, batch_views, random_views, read_fashion_mnist
from hsrl.evaluation.knn import knn_accuracy
from hsrl.losses import HypersphereLoss
from hsrl.metrics import alignment, uniformity
from hsrl.models.folder import open_model, save_model
from hsrl.models.image import ImageEncoder, SmallCNN, SmallResNet
from hsrl.training import TrainConfig, fit, make_dataloader, training_session

__all__ = [
    "KNN_LAYER",
    "MODEL_FOLDER",
    "SUPERVISED",
    "UNTRAINED",
    "Context",
    "EncoderEval",
    "EvalSizes",
    "ImageBudget",
    "RunOutcome",
    "RunSpec",
    "describe_encoder",
    "embed",
    "evaluate_encoder",
    "fashion_mnist",
    "load_run_encoder",
    "raw_pixel_knn5",
    "run_folder",
    "small_encoder",
    "train_run",
    "write_csv",
    "write_report",
]

#: The objective name of the supervised baseline (encoder + linear classifier, cross-entropy).
SUPERVISED = "supervised"
#: The objective name of an untrained encoder (its seeded initial weights; needs ``steps = 0``).
UNTRAINED = "none"
#: Fashion-MNIST's pixel mean and standard deviation in [0, 1]; the encoder standardises with them.
_MEAN, _STD = 0.2860, 0.3530
#: a finished run's model folder inside its run folder (``hsrl export --model RUN/model`` opens it)
MODEL_FOLDER = "model"
#: The layer whose 5-NN accuracy is a run's ``knn5_accuracy``, by encoder: the tiny CNN's output, the
#: ResNet's ``stage2`` map (the recipe's headline layer: on Fashion-MNIST a garment's layout carries the label,
#: and global pooling throws it away). ``output_knn5_accuracy`` is always the L2-normalised output's.
KNN_LAYER: dict[str, str] = {"small_cnn": "output", "small_resnet": "stage2"}
#: Runs trained in this process (the tests read it to prove that finished runs are skipped).
TRAINED_RUNS: list[str] = []


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Context:
    """Where an experiment writes and on which device it computes."""

    output_dir: Path
    runs_dir: Path
    quick: bool
    device: torch.device
    log: Callable[[str], None] = print


@dataclass(frozen=True)
class ImageBudget:
    """Encoder and optimisation budget of one run (AdamW, batches of two random views).

    ``encoder``: ``small_resnet`` (the ``fashion-mnist`` preset's encoder and views, what the full-size figures
    use) or ``small_cnn`` (a tiny CNN of ``width``, for ``--quick``); ``width`` applies to ``small_cnn`` only.
    """

    encoder: Literal["small_cnn", "small_resnet"] = "small_cnn"
    dim: int = 32
    width: int = 16
    steps: int = 300
    batch_size: int = 128
    lr: float = 2e-3
    pretrain_size: int = 60000


@dataclass(frozen=True)
class EvalSizes:
    """How many train images form the 5-NN memory and how many test images are classified."""

    memory: int = 10000
    queries: int = 5000


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines one training run (hashed into its folder name).

    ``objective`` is a :class:`hsrl.losses.HypersphereLoss` string or :data:`SUPERVISED`;
    ``init_from`` is the folder of a finished run whose weights start this one (fine-tuning);
    ``eval_every`` evaluates every that many steps and keeps the trajectory (needs ``schedule="constant"``,
    since each segment is its own ``fit`` call and a decaying schedule would restart).
    """

    name: str
    objective: str
    budget: ImageBudget
    eval_sizes: EvalSizes
    seed: int = 0
    init_from: str | None = None
    eval_every: int | None = None
    schedule: Literal["cosine", "constant"] = "cosine"

    def key(self) -> str:
        payload = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:10]


@dataclass
class RunOutcome:
    """A finished run: its metrics, folder, whether this call trained it, and its trajectory (if any)."""

    spec: RunSpec
    folder: Path
    metrics: dict[str, float]
    trained: bool
    trajectory: list[dict[str, float]] = field(default_factory=list)
    evaluation: EncoderEval | None = None  # with features, when trained by this call with keep_features


# --------------------------------------------------------------------------- data and model


@lru_cache(maxsize=2)
def _read_both(folder: str) -> tuple[ImageSplit, ImageSplit]:
    return read_fashion_mnist("train", root=folder), read_fashion_mnist("test", root=folder)


def fashion_mnist() -> tuple[ImageSplit, ImageSplit]:
    """Fashion-MNIST's train and test splits, read once per process (per data folder).

    Raises:
        FileNotFoundError: the idx files are missing (the message says how to install them).
    """
    folder = os.environ.get("HSRL_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
    return _read_both(folder)


def small_encoder(budget: ImageBudget) -> ImageEncoder:
    """The experiments' encoder, with Fashion-MNIST's pixel statistics.

    ``small_resnet``: the ``fashion-mnist`` preset's :class:`hsrl.models.image.SmallResNet` (stages 32-64-128,
    channels-last, about 14 M multiply-adds per image), which beats raw pixels within a few hundred steps.
    ``small_cnn``: :class:`hsrl.models.image.SmallCNN` with stride-2 convolutions, widths ``width``/``2·width``
    and a 128-wide hidden layer (about 0.2 M multiply-adds: CI's ``--quick``). Either folder is an hsrl image
    model folder, so every ``hsrl`` command opens it.
    """
    if budget.encoder == "small_resnet":
        return SmallResNet(in_channels=1, image_size=28, dim=budget.dim, mean=(_MEAN,), std=(_STD,), channels_last=True)
    return SmallCNN(dim=budget.dim, width=budget.width, hidden=128, downsample="stride", mean=(_MEAN,), std=(_STD,))


def describe_encoder(budget: ImageBudget) -> str:
    """The encoder of ``budget`` in a few words, for reports."""
    if budget.encoder == "small_resnet":
        return (f"the `fashion-mnist` preset's SmallResNet (stages 32-64-128), {budget.dim}-D output, 5-NN at "
                f"`{KNN_LAYER['small_resnet']}` (the recipe's headline layer) and at the output")  # fmt: skip
    return f"small CNN (width {budget.width}), {budget.dim}-D output, 5-NN at the output"


class _SupervisedNet(nn.Module):
    """The encoder with a linear classifier on its normalised features (the paper's supervised baseline)."""

    def __init__(self, encoder: ImageEncoder, classes: int = 10) -> None:
        super().__init__()
        self.encoder = encoder
        self.classifier = nn.Linear(encoder.dim, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x)


class _CrossEntropyOnViews(nn.Module):
    """Cross-entropy of the classifier on both views' features.

    :func:`hsrl.training.fit` hands the loss only the two views' embeddings, so the batch's labels
    travel beside them: the ``encode`` function stores them in :attr:`labels` (one process only).
    """

    def __init__(self, classifier: nn.Linear) -> None:
        super().__init__()
        self.classifier = classifier
        self.labels: Tensor | None = None

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        assert self.labels is not None, "encode() sets the labels before the loss runs"
        labels = self.labels.to(x.device)
        return (F.cross_entropy(self.classifier(x), labels) + F.cross_entropy(self.classifier(y), labels)) / 2


def _two_views(model: nn.Module, batch: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """The tiny CNN's views (:func:`hsrl.data.images.random_views`: affine crop/zoom, flip, jitter)."""
    images = batch[0]
    # One forward over both views, so batch-norm statistics are shared (as the paper's code does).
    z = model(torch.cat([random_views(images), random_views(images)]))
    return z[: len(images)], z[len(images) :]


def _preset_views(seed: int) -> Callable[[nn.Module, Sequence[Tensor]], tuple[Tensor, Tensor]]:
    """The ``fashion-mnist`` preset's views (RandomResizedCrop 0.25–1, flip, jitter; :func:`batch_views`),
    drawn from a generator seeded by the run's seed."""
    augment, generator = augment_defaults("fashion-mnist", 1), torch.Generator().manual_seed(seed)

    def encode(model: nn.Module, batch: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        images = batch[0]
        z = model(torch.cat([batch_views(images, augment, generator), batch_views(images, augment, generator)]))
        return z[: len(images)], z[len(images) :]

    return encode


@torch.no_grad()
def embed(model: nn.Module, images: Tensor, device: torch.device, batch: int = 2048) -> Tensor:
    """Embeddings of ``images`` (uint8 or float in [0, 1]) in eval mode, as float32 on the CPU."""
    return embed_layers(model, images, device, ("output",), batch)["output"]


@torch.no_grad()
def embed_layers(
    model: nn.Module, images: Tensor, device: torch.device, layers: Sequence[str], batch: int = 2048
) -> dict[str, Tensor]:
    """``layers`` of ``model`` (an :class:`ImageEncoder`) for ``images`` in eval mode, float32 on the CPU;
    spatial maps are flattened (``(N, C·h·w)``). ``("output",)`` works for any module (its forward)."""
    was_training = model.training
    model.eval()
    parts: dict[str, list[Tensor]] = {layer: [] for layer in layers}
    for i in range(0, len(images), batch):
        x = images[i : i + batch].to(device)
        taps = {"output": model(x)} if tuple(layers) == ("output",) else model.forward_taps(x, layers)
        for layer in layers:
            parts[layer].append(taps[layer].flatten(1).float().cpu())
    model.train(was_training)
    return {layer: torch.cat(chunks) for layer, chunks in parts.items()}


def load_run_encoder(folder: Path, budget: ImageBudget, device: torch.device) -> ImageEncoder:
    """The encoder a finished run saved in ``folder/model`` (an hsrl image model folder).

    Runs finished before the folder contract kept only ``folder/model.safetensors`` (the same layers, without the
    normalisation's constant buffers); they are read too, so their training is not repeated.
    """
    if (folder / MODEL_FOLDER).is_dir():
        return open_model(folder / MODEL_FOLDER, device=str(device)).module.train()
    encoder = small_encoder(budget)
    weights = {**encoder.normalize.state_dict(prefix="normalize."), **load_file(str(folder / "model.safetensors"))}
    encoder.load_state_dict(weights)
    return encoder.to(device)


# --------------------------------------------------------------------------- evaluation


@dataclass
class EncoderEval:
    """The paper's three numbers for one encoder (5-NN at its headline layer), the output's 5-NN when the
    headline layer is another, and (on request) the output features behind them."""

    knn5_accuracy: float
    alignment: float
    uniformity: float
    output_knn5_accuracy: float | None = None
    features: Tensor | None = None  # (queries, dim) clean test images
    labels: Tensor | None = None
    view1: Tensor | None = None  # (queries, dim) two random views of the same test images
    view2: Tensor | None = None

    def metrics(self) -> dict[str, float]:
        values = {"knn5_accuracy": self.knn5_accuracy, "alignment": self.alignment, "uniformity": self.uniformity}
        if self.output_knn5_accuracy is not None:
            values["output_knn5_accuracy"] = self.output_knn5_accuracy
        return values


def evaluation_views(images: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """Two random views of each image, the same for every encoder and call (seeded, global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return random_views(images), random_views(images)


def evaluate_encoder(
    model: nn.Module, sizes: EvalSizes, device: torch.device, *, keep_features: bool = False, seed: int = 12345
) -> EncoderEval:
    """5-NN accuracy, alignment (α = 2, test views) and uniformity (t = 2, clean test images) of ``model``.

    5-NN: each test image takes the majority label of its 5 nearest train images by cosine similarity, at
    the encoder's headline layer (:data:`KNN_LAYER`; flattened and L2-normalised) and, when that is another
    layer, at the output too. Alignment and uniformity are always the output's, as in the paper.
    """
    train, test = fashion_mnist()
    memory_x, memory_y = train.images[: sizes.memory], train.labels[: sizes.memory]
    query_x, query_y = test.images[: sizes.queries], test.labels[: sizes.queries]
    headline = KNN_LAYER.get(getattr(model, "architecture", ""), "output")
    layers = tuple(dict.fromkeys([headline, "output"]))
    memory, queries = embed_layers(model, memory_x, device, layers), embed_layers(model, query_x, device, layers)

    def knn5(layer: str) -> float:
        return knn_accuracy(F.normalize(memory[layer], dim=1), memory_y, F.normalize(queries[layer], dim=1),
                            query_y, k=5)  # fmt: skip

    z_query = queries["output"]
    view1, view2 = (embed(model, v, device) for v in evaluation_views(query_x, seed))
    result = EncoderEval(
        knn5_accuracy=knn5(headline),
        alignment=alignment(view1, view2, alpha=2.0),
        uniformity=uniformity(z_query, t=2.0),
        output_knn5_accuracy=None if headline == "output" else knn5("output"),
    )
    if keep_features:
        result.features, result.labels, result.view1, result.view2 = z_query, query_y, view1, view2
    return result


# --------------------------------------------------------------------------- runs


def raw_pixel_knn5(sizes: EvalSizes) -> float:
    """5-NN accuracy of the L2-normalised raw pixels, same memory and queries as :func:`evaluate_encoder`."""
    train, test = fashion_mnist()
    memory = F.normalize(train.images[: sizes.memory].flatten(1).float(), dim=1)
    queries = F.normalize(test.images[: sizes.queries].flatten(1).float(), dim=1)
    return knn_accuracy(memory, train.labels[: sizes.memory], queries, test.labels[: sizes.queries], k=5)


def run_folder(spec: RunSpec, ctx: Context) -> Path:
    return ctx.runs_dir / f"{spec.name}-{spec.key()}"


def _build(spec: RunSpec, ctx: Context) -> tuple[nn.Module, ImageEncoder, Callable[..., Tensor], Callable]:
    """The model fit trains, the encoder inside it, the loss, and how a batch becomes two embeddings."""
    torch.manual_seed(spec.seed)  # the same seed gives the same initial weights
    encoder = small_encoder(spec.budget)
    if spec.init_from is not None:
        encoder.load_state_dict(load_run_encoder(Path(spec.init_from), spec.budget, torch.device("cpu")).state_dict())
    two_views = _preset_views(spec.seed) if spec.budget.encoder == "small_resnet" else _two_views
    if spec.objective == UNTRAINED:
        return encoder, encoder, lambda x, y: x.sum() * 0, two_views  # never trained: steps = 0
    if spec.objective != SUPERVISED:
        return encoder, encoder, HypersphereLoss(spec.objective), two_views
    net = _SupervisedNet(encoder)
    objective = _CrossEntropyOnViews(net.classifier)

    def encode(model: nn.Module, batch: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        objective.labels = batch[1]
        return two_views(model, batch)

    return net, encoder, objective, encode


def _fit_until(spec: RunSpec, ctx: Context, folder: Path, steps: int) -> ImageEncoder:
    """Train (or resume) the run up to ``steps`` optimizer steps; return its encoder."""
    budget = spec.budget
    config = TrainConfig(
        output_dir=str(folder),
        seed=spec.seed,
        batch_size=budget.batch_size,
        max_steps=steps,
        optimizer="adamw",
        lr=budget.lr,
        lr_schedule=spec.schedule,
        warmup_steps=0 if spec.schedule == "constant" else min(20, budget.steps // 10),
        checkpoint_every=max(1, min(100, steps)),
        keep_checkpoints=1,
        resume="latest",  # an interrupted run continues from its last checkpoint
        log_with="none",
        progress=False,
        metrics_every=max(1, budget.steps // 4),
        cpu=ctx.device.type == "cpu",
    )
    train, _ = fashion_mnist()
    dataset = TensorDataset(train.images[: budget.pretrain_size], train.labels[: budget.pretrain_size])
    model, encoder, loss, encode = _build(spec, ctx)
    with training_session(config) as accelerator:
        loader = make_dataloader(dataset, config)
        fit(model, loss, loader, config, accelerator=accelerator, encode=encode)
    return encoder


def _save_model(encoder: ImageEncoder, folder: Path) -> None:
    save_model(encoder, folder / MODEL_FOLDER)  # atomic: a temporary folder renamed into place


def train_run(spec: RunSpec, ctx: Context, *, keep_features: bool = False) -> RunOutcome:
    """Train ``spec`` (resuming an interrupted run) and evaluate it; skip it when already finished.

    A run with ``steps = 0`` is the randomly initialised encoder (evaluated, never trained).
    ``keep_features`` keeps the evaluation's features in ``outcome.evaluation`` (only when this call
    trained the run; a skipped run's caller reloads the encoder with :func:`load_run_encoder`).
    """
    folder = run_folder(spec, ctx)
    metrics_path = folder / "metrics.json"
    if metrics_path.is_file():
        saved = json.loads(metrics_path.read_text())
        ctx.log(f"  {spec.name}: done before, skipped ({folder})")
        return RunOutcome(spec, folder, saved["metrics"], False, saved.get("trajectory", []))
    if spec.eval_every is not None and spec.schedule != "constant":
        raise ValueError("a run evaluated along the way needs schedule='constant'")
    if (spec.objective == UNTRAINED) != (spec.budget.steps == 0):
        raise ValueError(f"objective {UNTRAINED!r} (an untrained encoder) goes with steps = 0, and only it")
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    ctx.log(f"  {spec.name}: training {spec.budget.steps} steps of {spec.objective!r} ...")
    trajectory, encoder = _train_with_trajectory(spec, ctx, folder) if spec.eval_every else ([], None)
    if encoder is None and spec.budget.steps == 0:
        encoder = _build(spec, ctx)[1].to(ctx.device)
    elif encoder is None:  # also reloads a run that finished training but died before metrics.json
        encoder = _fit_until(spec, ctx, folder, spec.budget.steps).to(ctx.device)
    evaluation = None
    if trajectory:
        final = trajectory[-1]
    else:
        evaluation = evaluate_encoder(encoder, spec.eval_sizes, ctx.device, keep_features=keep_features)
        final = evaluation.metrics()
    metrics = {k: float(v) for k, v in final.items() if k != "step"}
    _save_model(encoder, folder)
    payload = {"spec": asdict(spec), "metrics": metrics, "trajectory": trajectory}
    atomic_write_json(metrics_path, {**payload, "seconds": round(time.perf_counter() - start, 1)})
    TRAINED_RUNS.append(spec.name)
    ctx.log(f"  {spec.name}: {_summary(metrics)} ({time.perf_counter() - start:.0f} s)")
    return RunOutcome(spec, folder, metrics, True, trajectory, evaluation if keep_features else None)


def _train_with_trajectory(
    spec: RunSpec, ctx: Context, folder: Path
) -> tuple[list[dict[str, float]], ImageEncoder | None]:
    """Train in segments of ``eval_every`` steps, evaluating after each (and at step 0).

    Each evaluation is appended to ``trajectory.json`` atomically, and each segment ends with a
    checkpoint, so an interrupted run resumes after its last evaluated segment. Returns the trajectory and
    the final encoder (``None`` when every segment was already done).
    """
    assert spec.eval_every is not None
    path = folder / "trajectory.json"
    trajectory: list[dict[str, float]] = json.loads(path.read_text()) if path.is_file() else []
    if not trajectory:
        start = _build(spec, ctx)[1].to(ctx.device)
        trajectory.append({"step": 0, **evaluate_encoder(start, spec.eval_sizes, ctx.device).metrics()})
        atomic_write_json(path, trajectory)
    ends = [*range(spec.eval_every, spec.budget.steps, spec.eval_every), spec.budget.steps]
    encoder: ImageEncoder | None = None
    for end in ends:
        if end <= trajectory[-1]["step"]:
            continue
        encoder = _fit_until(spec, ctx, folder, end).to(ctx.device)
        trajectory.append({"step": end, **evaluate_encoder(encoder, spec.eval_sizes, ctx.device).metrics()})
        atomic_write_json(path, trajectory)
    return trajectory, encoder


def _summary(metrics: Mapping[str, float]) -> str:
    return f"5-NN {metrics['knn5_accuracy']:.4f}, align {metrics['alignment']:.4f}, uniform {metrics['uniformity']:.4f}"


# --------------------------------------------------------------------------- files


def write_csv(path: Path, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Write ``rows`` (dicts) with exactly ``columns`` as a CSV file, atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="raise", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    atomic_write_bytes(path, buffer.getvalue().encode())
    return path


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def write_report(path: Path, title: str, sections: Sequence[tuple[str, str]], ctx: Context, seconds: float) -> Path:
    """A short Markdown report: title, how it was made, then ``(heading, body)`` sections."""
    mode = "quick (tiny settings, for CI)" if ctx.quick else "full"
    lines = [
        f"# {title}",
        "",
        f"Mode: {mode}; device: {ctx.device}; wall time of this invocation: {seconds:.0f} s "
        "(runs finished earlier are reused, not retrained).",
        "",
    ]
    for heading, body in sections:
        lines += [f"## {heading}", "", body.strip(), ""]
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path


def _markdown_cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "–" if value is None else str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """``rows`` as a Markdown table (floats to 4 significant digits; a missing cell is "–")."""
    head = "| " + " | ".join(columns) + " |"
    rule = "| " + " | ".join("---" for _ in columns) + " |"
    body = ["| " + " | ".join(_markdown_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])
