r"""Evaluation of an image encoder: ``hsrl eval image --model PATH --dataset fashion-mnist``.

The paper's protocol on frozen features, at any exposed layer (``--layer conv5|fc7|output`` for
``small_alexnet``; by default its two reported taps, ``fc7`` and ``output``):

* **linear classifier** (:mod:`hsrl.evaluation.linear`): Adam, lr :math:`10^{-3}`, betas (0.5, 0.999);
  ``--linear-protocol paper`` is its 100 epochs with ×0.2 at 60 and 80, ``fast`` (the default) 20 epochs.
* **k-NN classification** (``--k 5``, the paper's 5-NN): majority vote of the ``k`` nearest training
  features by cosine similarity (features are L2-normalised first; the output already is),
  :math:`\hat y(q) = \arg\max_c \sum_{i \in N_k(q)} [y_i = c]`, ties to the smallest class. The search runs
  through :class:`hsrl.index.VectorIndex` (FAISS, exact ``Flat``) when that module is importable, else exact
  search in torch (:func:`hsrl.evaluation.knn.knn_predict`).
* **alignment and uniformity** on held-out positive pairs: two augmented views of each test image (the
  training augmentation, seeded), :math:`L_{align} = \frac1n\sum_i \lVert f(v_i) - f(v'_i)\rVert_2^2` and
  :math:`L_{uniform} = \log \frac{2}{m(m-1)} \sum_{a<b} e^{-2\lVert f(x_a) - f(x_b)\rVert_2^2}` over the
  test images' embeddings (:mod:`hsrl.metrics`).

Every report carries, measured in the same run on the same images, a **randomly initialised encoder** of
the same architecture (seeded) and **raw pixels** (the flattened evaluation image, L2-normalised for k-NN
and alignment/uniformity, standardised for the linear probe).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hsrl.data.images import (
    augment_defaults,
    check_channels,
    item_seed,
    load_eval_split,
    open_images,
    view_transform,
)
from hsrl.evaluation.knn import KNN_PROTOCOLS, KNNProtocol, knn_classify
from hsrl.evaluation.linear import LinearProbeConfig, linear_probe
from hsrl.metrics import alignment, uniformity
from hsrl.models.image import DEFAULT_EVAL_LAYERS, ENCODERS, ImageEncoder

__all__ = [
    "REPRESENTATIONS",
    "evaluate_image_encoder",
    "extract_features",
    "format_report",
    "image_summary",
    "open_image_model",
    "summary_metrics",
]

REPRESENTATIONS = ("pretrained", "random_encoder", "raw_pixels")


@torch.no_grad()
def extract_features(
    model: ImageEncoder, images: Tensor, layers: Sequence[str], *, batch_size: int = 256
) -> dict[str, Tensor]:
    """Features of uint8 ``images`` at ``layers`` (flattened, float32, on the CPU), in eval mode."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts: dict[str, list[Tensor]] = {layer: [] for layer in layers}
    for start in range(0, len(images), batch_size):
        taps = model.forward_taps(images[start : start + batch_size].to(device, non_blocking=True), layers)
        for layer in layers:
            parts[layer].append(taps[layer].flatten(1).float().cpu())
    model.train(was_training)
    return {layer: torch.cat(chunks) for layer, chunks in parts.items()}


def _test_views(images: Tensor, config: Any, seed: int) -> tuple[Tensor, Tensor]:
    """Two augmented views of each image, each drawn from its own seeded generator."""
    transform = view_transform(config)
    first, second = [], []
    with torch.random.fork_rng(devices=[]):
        for i, image in enumerate(images):
            torch.default_generator.manual_seed(item_seed(seed, 0, i))
            first.append(transform(image))
            second.append(transform(image))
    return torch.stack(first), torch.stack(second)


def _scores(
    train: Tensor, train_y: Tensor, test: Tensor, test_y: Tensor, *, knn: KNNProtocol,
    linear: LinearProbeConfig | None, knn_backend: str, num_classes: int,
) -> tuple[dict[str, float], str]:  # fmt: skip
    predictions, used = knn_classify(train, train_y, test, k=knn.k, backend=knn_backend, temperature=knn.temperature)
    scores = {knn.metric: float((predictions == test_y).float().mean())}
    if linear is not None:
        scores["linear"] = linear_probe(train, train_y, test, test_y, linear, num_classes=num_classes).test_accuracy
    return scores, used


def evaluate_image_encoder(
    model: ImageEncoder,
    dataset: str,
    *,
    layers: Sequence[str] | None = None,
    k: int = 5,
    knn_protocol: str | None = None,
    linear: LinearProbeConfig | str | None = "fast",
    train_size: int | None = None,
    test_size: int | None = None,
    pairs: int = 4096,
    data_root: str | None = None,
    channels: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    num_workers: int = 0,
    knn_backend: str = "auto",
) -> dict[str, Any]:
    """The paper's frozen-feature evaluation of ``model`` on ``dataset``, with both baselines.

    Args:
        model: an :class:`~hsrl.models.image.ImageEncoder` (e.g. from :func:`hsrl.models.image.load`).
        dataset: a dataset spec (:func:`hsrl.data.images.open_images`); its ``train`` split is the k-NN
            memory and the linear probe's training set, ``test`` is scored.
        layers: taps to score (default: the architecture's linear-probe and k-NN layers, e.g. fc7, output).
        k: neighbours for a majority-vote k-NN (the paper's protocol with k = 5).
        knn_protocol: a named rule of :data:`hsrl.evaluation.knn.KNN_PROTOCOLS` instead (``"lightly"``:
            k = 200, similarity-weighted votes, temperature 0.1); it sets ``k``.
        linear: the linear-probe protocol: a config, ``"fast"`` / ``"paper"`` (:class:`LinearProbeConfig`'s
            presets, seeded with ``seed``), or ``None`` for no linear probe.
        train_size: use a seeded random subset of this many training images.
        test_size: the same for the test images.
        pairs: most test images used for alignment/uniformity.
        data_root: where torchvision datasets live.
        channels: convert the images to this many channels (default: the dataset's own; a mismatch with
            the encoder is an error).
        seed: seeds the subsets, the random encoder, the views and the linear probe.
        batch_size: images per forward pass.
        num_workers: loader workers for decoding the images.
        knn_backend: ``auto``, ``index`` or ``torch`` (see :func:`knn_classify`).

    Returns:
        A JSON-able report: ``results[representation][layer] = {"knn5": acc, "linear": acc}`` and
        ``results[representation]["alignment"|"uniformity"]`` for ``pretrained``, ``random_encoder``
        and ``raw_pixels`` (whose only layer is ``pixels``), plus what was measured on.

    Raises:
        FileNotFoundError: the dataset is missing.
        ValueError: a bad layer, a channel mismatch, or unlabelled evaluation data.
    """
    if knn_protocol is not None and knn_protocol not in KNN_PROTOCOLS:
        raise ValueError(f"unknown k-NN protocol {knn_protocol!r}; choose from {', '.join(KNN_PROTOCOLS)}")
    knn = KNN_PROTOCOLS[knn_protocol] if knn_protocol else KNNProtocol("majority", k)
    if knn.k < 1:
        raise ValueError(f"k must be >= 1, got {knn.k}")
    pre = model.preprocess
    architecture = model.architecture
    layers = list(layers or dict.fromkeys(DEFAULT_EVAL_LAYERS.get(architecture, ("output",))))
    for layer in layers:
        model._check_layer(layer)
    if isinstance(linear, str):
        if linear not in ("fast", "paper"):
            raise ValueError(f"linear protocol must be fast or paper, got {linear!r}")
        linear = LinearProbeConfig.fast(seed=seed) if linear == "fast" else LinearProbeConfig.paper(seed=seed)
    train_source = open_images(dataset, "train", root=data_root, channels=channels)
    check_channels(pre.channels, train_source)
    test_source = open_images(dataset, "test", root=data_root, channels=channels)
    config = augment_defaults(dataset, train_source.channels, size=pre.size, eval_resize=max(pre.resize, pre.size))
    train = load_eval_split(train_source, config, limit=train_size, seed=seed, num_workers=num_workers)
    test = load_eval_split(test_source, config, limit=test_size, seed=seed + 1, num_workers=num_workers)
    if (train.labels < 0).any() or (test.labels < 0).any():
        raise ValueError(f"{dataset}: evaluation needs labelled train and test images")
    num_classes = int(max(int(train.labels.max()), int(test.labels.max()))) + 1
    views = _test_views(test.images[:pairs], config, seed)

    with torch.random.fork_rng(devices=[]):  # the baseline's init must not move the caller's random state
        torch.manual_seed(seed)
        random_encoder = ENCODERS[architecture](**model.config).to(next(model.parameters()).device)

    results: dict[str, dict[str, Any]] = {}
    backend_used = knn_backend
    for role, encoder in (("pretrained", model), ("random_encoder", random_encoder)):
        taps = list(dict.fromkeys([*layers, "output"]))
        train_features = extract_features(encoder, train.images, taps, batch_size=batch_size)
        test_features = extract_features(encoder, test.images, taps, batch_size=batch_size)
        results[role] = {}
        for layer in layers:
            results[role][layer], backend_used = _scores(
                train_features[layer], train.labels, test_features[layer], test.labels, knn=knn, linear=linear,
                knn_backend=knn_backend, num_classes=num_classes,
            )  # fmt: skip
        z1 = extract_features(encoder, views[0], ["output"], batch_size=batch_size)["output"]
        z2 = extract_features(encoder, views[1], ["output"], batch_size=batch_size)["output"]
        results[role]["alignment"] = alignment(z1, z2)
        results[role]["uniformity"] = uniformity(test_features["output"], t=2.0, seed=seed)

    pixels_train, pixels_test = train.images.flatten(1).float() / 255, test.images.flatten(1).float() / 255
    pixel_linear = LinearProbeConfig(**{**asdict(linear), "standardize": True}) if linear else None
    results["raw_pixels"] = {}
    results["raw_pixels"]["pixels"], _ = _scores(
        pixels_train, train.labels, pixels_test, test.labels, knn=knn, linear=pixel_linear, knn_backend=knn_backend,
        num_classes=num_classes,
    )  # fmt: skip
    results["raw_pixels"]["alignment"] = alignment(
        F.normalize(views[0].flatten(1).float(), dim=1), F.normalize(views[1].flatten(1).float(), dim=1)
    )
    results["raw_pixels"]["uniformity"] = uniformity(F.normalize(pixels_test, dim=1), t=2.0, seed=seed)

    return {
        "dataset": dataset,
        "architecture": architecture,
        "layers": layers,
        "k": knn.k,
        "knn_protocol": knn.name,
        "knn_metric": knn.metric,
        "knn_temperature": knn.temperature,
        "knn_backend": backend_used,
        "linear_probe": {k_: list(v) if isinstance(v, tuple) else v for k_, v in asdict(linear).items()}
        if linear
        else None,
        "train_images": len(train.labels),
        "test_images": len(test.labels),
        "positive_pairs": len(views[0]),
        "skipped_images": train_source.skipped + test_source.skipped,
        "image_size": pre.size,
        "channels": train_source.channels,
        "results": results,
    }


def summary_metrics(report: dict[str, Any]) -> dict[str, float]:
    """Flat ``{"pretrained/fc7/linear": 0.71, ...}`` of a report (for ``metrics.json`` and trackers)."""
    flat: dict[str, float] = {}
    for role, values in report["results"].items():
        for key, value in values.items():
            if isinstance(value, dict):
                flat.update({f"{role}/{key}/{metric}": v for metric, v in value.items()})
            else:
                flat[f"{role}/{key}"] = value
    return flat


def image_summary(
    report: dict[str, Any], *, layer: str, linear_layer: str | None = None, steps: int, train_seconds: float
) -> dict[str, float | str]:
    """The flat ``summary`` block of an image run's ``metrics.json`` (one key scheme for every recipe).

    ``layer`` is the headline layer (its k-NN is ``knn5`` under the paper's protocol, ``knn200_t0.1`` under
    lightly's); ``linear`` is the probe on ``linear_layer`` (default ``layer``); ``output_*`` the embedding that
    export and the service use; ``raw_pixels_*`` and ``random_encoder_*`` the baselines of the same run;
    ``align``/``uniform`` the pretrained encoder's alignment and uniformity on held-out views.
    """
    results, metric = report["results"], report.get("knn_metric", f"knn{report['k']}")
    linear_layer = linear_layer or layer
    pretrained, random_encoder, pixels = results["pretrained"], results["random_encoder"], results["raw_pixels"]
    summary: dict[str, float | str] = {"layer": layer, metric: pretrained[layer][metric]}
    if linear_layer != layer:
        summary["linear_layer"] = linear_layer
    if "linear" in pretrained[linear_layer]:
        summary["linear"] = pretrained[linear_layer]["linear"]
    if "output" in pretrained:
        summary[f"output_{metric}"] = pretrained["output"][metric]
    summary[f"raw_pixels_{metric}"] = pixels["pixels"][metric]
    summary[f"random_encoder_{metric}"] = random_encoder[layer][metric]
    if "linear" in pixels["pixels"]:
        summary["raw_pixels_linear"] = pixels["pixels"]["linear"]
    if "linear" in random_encoder[linear_layer]:
        summary["random_encoder_linear"] = random_encoder[linear_layer]["linear"]
    summary.update(align=pretrained["alignment"], uniform=pretrained["uniformity"])
    summary.update(steps=float(steps), train_seconds=round(float(train_seconds), 1))
    return summary


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table: one row per representation and layer."""
    metric = report.get("knn_metric", f"knn{report['k']}")
    lines = [
        f"{report['dataset']}: {report['train_images']} train / {report['test_images']} test images, "
        f"{report['image_size']} px, {report['channels']} channel(s); k-NN via {report['knn_backend']}"
        + (f"; {report['skipped_images']} unreadable images skipped" if report["skipped_images"] else ""),
        f"{'representation':16s} {'layer':8s} {metric:>7s} {'linear':>7s} {'align':>7s} {'uniform':>8s}",
    ]
    for role, values in report["results"].items():
        align, unif = values.get("alignment", float("nan")), values.get("uniformity", float("nan"))
        for layer, scores in ((n, v) for n, v in values.items() if isinstance(v, dict)):
            linear = scores.get("linear", float("nan"))
            lines.append(f"{role:16s} {layer:8s} {scores[metric]:7.4f} {linear:7.4f} {align:7.4f} {unif:8.4f}")
    return "\n".join(lines)


def open_image_model(name: str, map_location: str | torch.device = "cpu") -> ImageEncoder:
    """The image encoder of a model folder, packaged name or Hub id (``org/name``; offline: the local cache),
    opened by :func:`hsrl.models.folder.open_model` like every other command opens a model.

    Raises:
        ValueError: one line saying what is missing, or that the folder holds another kind of model.
    """
    from hsrl.models.folder import open_model

    encoder = open_model(name, device=str(map_location))
    if encoder.kind != "image":
        raise ValueError(f"model {name} is a {encoder.kind} model; hsrl eval image needs an image model")
    return encoder.module
