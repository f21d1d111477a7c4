r"""Image–text evaluation of a two-tower model: zero-shot, cross-modal retrieval, and the sphere's geometry.

``hsrl eval image-text --model MODEL [--dataset fashion-mnist] [--output metrics.json]`` (the recipe runs it):

* **zero-shot classification**: each class is the normalised mean of the text embeddings of its held-out
  prompts (prompt ensembling, as CLIP does); an image's class is the nearest one. Reported over all test
  images, and — when classes were held out of training — over the images of those classes alone.
* **class queries** (``text_to_image_precision@10``): each held-out prompt searches an ``hsrl.index`` of every
  test image; the share of its 10 nearest images that are of the prompt's class, averaged.
* **cross-modal retrieval** over ``pairs`` test pairs, each image with one held-out caption, searched through
  ``hsrl.index``: ``text_to_image_recall@k`` is the share of captions whose image is among the k nearest
  images, ``image_to_text_recall@k`` the reverse. A caption text shared by several pairs (label captions
  repeat) is one caption, asked and indexed once: any image paired with that exact text counts as its image.
* **geometry** on the same pairs: cross-modal alignment :math:`\mathbb{E}\lVert f(x)-g(y)\rVert^2`, the
  uniformity (t=2) of each modality, and the modality gap :math:`\lVert \bar f - \bar g \rVert`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hsrl.data.captions import CLASS_NAMES, FashionCaptions
from hsrl.index import VectorIndex
from hsrl.metrics import alignment, uniformity

__all__ = [
    "SUMMARY_KEYS",
    "class_embeddings",
    "evaluate_image_text",
    "format_summary",
    "paired_recall",
    "zero_shot_accuracy",
]

RECALL_AT = (1, 5, 10)
SUMMARY_KEYS = ("zero_shot_accuracy", "text_to_image_precision@10", "text_to_image_recall@10",
                "image_to_text_recall@10", "modality_gap", "align", "uniform_image", "uniform_text")  # fmt: skip


def class_embeddings(model: Any, prompts: Sequence[Sequence[str]]) -> Tensor:
    """One unit row per class: the normalised mean of its prompts' embeddings (prompt ensembling)."""
    rows = [F.normalize(model.encode_texts(list(p)).mean(0), dim=0) for p in prompts]
    return torch.stack(rows)


def zero_shot_accuracy(images: Tensor, labels: Tensor, classes: Tensor, among: Sequence[int] | None = None) -> float:
    """Share of images whose nearest class embedding is their label (``among``: only those classes compete)."""
    scores = images @ classes.T
    if among is not None:
        mask = torch.full((classes.shape[0],), float("-inf"))
        mask[list(among)] = 0
        scores = scores + mask
    return float((scores.argmax(1) == labels).float().mean())


def _search(corpus: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    index = VectorIndex.create(corpus.shape[1], "Flat", num_vectors_hint=corpus.shape[0])
    index.add(corpus)
    return index.search(queries, k)[1]


def paired_recall(images: np.ndarray, texts: np.ndarray, captions: Sequence[str], ks: Sequence[int] = RECALL_AT
                  ) -> dict[str, float]:  # fmt: skip
    """Recall@k both ways over pairs (row ``i`` of ``images`` with row ``i`` of ``texts``); see the module doc.

    Identical caption texts are one caption: text→image asks each distinct caption once, and a hit is any image
    paired with it; image→text searches the distinct captions, and a hit is the image's own caption text.
    """
    groups: dict[str, int] = {}
    group = np.array([groups.setdefault(c, len(groups)) for c in captions])
    first = np.array([captions.index(c) for c in groups])  # one row per distinct caption
    distinct_texts = texts[first]
    found_images = group[_search(images, distinct_texts, min(max(ks), len(images)))]
    found_texts = _search(distinct_texts, images, min(max(ks), len(groups)))  # positions = group numbers
    wanted = np.arange(len(groups))
    out = {}
    for k in ks:
        out[f"text_to_image_recall@{k}"] = float((found_images[:, :k] == wanted[:, None]).any(1).mean())
        out[f"image_to_text_recall@{k}"] = float((found_texts[:, :k] == group[:, None]).any(1).mean())
    return out


def class_query_precision(images: np.ndarray, labels: np.ndarray, queries: np.ndarray, query_labels: np.ndarray,
                          k: int = 10) -> float:  # fmt: skip
    """Mean share of the ``k`` images nearest each text query that have the query's label."""
    nearest = _search(images, queries, k)
    return float((labels[nearest] == query_labels[:, None]).mean())


def evaluate_image_text(
    model: Any,
    *,
    captions: FashionCaptions | None = None,
    pairs: int = 1000,
    seed: int = 0,
    linear_probe: bool = False,
    test_size: int | None = None,
) -> dict[str, Any]:
    """Every number of the module docstring for a two-tower ``model`` on Fashion-MNIST's test split.

    Args:
        model: has ``encode_images(uint8 tensor)`` and ``encode_texts(list[str])`` returning unit rows.
        captions: the caption generator the model was trained with (its ``unseen`` classes are reported apart).
        pairs: test pairs for retrieval and geometry.
        seed: picks the pairs and their held-out captions.
        linear_probe: also train a linear classifier on the image embeddings of the 60k training images
            (a supervised reference for zero-shot on the same features).
        test_size: evaluate on the first N test images only (quick checks).
    """
    from hsrl.data.pairs import FashionPairs

    captions = captions or FashionCaptions()
    test = FashionPairs("test", captions=captions, seed=seed)
    n = len(test) if test_size is None else min(test_size, len(test))
    images = model.encode_images(test.images[:n])
    labels = test.label_tensor[:n]
    prompts = [captions.prompts(label) for label in range(len(CLASS_NAMES))]
    classes = class_embeddings(model, prompts)
    report: dict[str, Any] = {"test_images": n, "prompts_per_class": len(prompts[0])}
    report["zero_shot_accuracy"] = zero_shot_accuracy(images, labels, classes)
    per_class = {}
    for label, name in enumerate(CLASS_NAMES):
        chosen = labels == label
        if chosen.any():
            per_class[name] = zero_shot_accuracy(images[chosen], labels[chosen], classes)
    report["zero_shot_per_class"] = per_class
    if captions.unseen:
        unseen = torch.isin(labels, torch.tensor(captions.unseen))
        report["unseen_classes"] = [CLASS_NAMES[c] for c in captions.unseen]
        report["zero_shot_accuracy_unseen_classes"] = zero_shot_accuracy(images[unseen], labels[unseen], classes)
        report["zero_shot_accuracy_unseen_among_unseen"] = zero_shot_accuracy(
            images[unseen], labels[unseen], classes, among=captions.unseen
        )
        report["zero_shot_accuracy_seen_classes"] = zero_shot_accuracy(images[~unseen], labels[~unseen], classes)

    query_texts = [p for group in prompts for p in group]
    query_labels = np.repeat(np.arange(len(prompts)), [len(g) for g in prompts])
    queries = model.encode_texts(query_texts).numpy()
    report["text_to_image_precision@10"] = class_query_precision(images.numpy(), labels.numpy(), queries,
                                                                 query_labels)  # fmt: skip

    chosen = sorted(random.Random(seed).sample(range(n), min(pairs, n)))
    pair_captions = [test.caption_at(i) for i in chosen]
    pair_images, pair_texts = images[chosen], model.encode_texts(pair_captions)
    report.update(paired_recall(pair_images.numpy(), pair_texts.numpy(), pair_captions))
    report["retrieval_pairs"] = len(chosen)
    report["align"] = alignment(pair_images, pair_texts)
    report["uniform_image"] = uniformity(pair_images, t=2.0)
    report["uniform_text"] = uniformity(pair_texts, t=2.0)
    report["modality_gap"] = float(torch.linalg.vector_norm(pair_images.mean(0) - pair_texts.mean(0)))
    if linear_probe:
        from hsrl.data.images import read_fashion_mnist
        from hsrl.evaluation.linear import LinearProbeConfig
        from hsrl.evaluation.linear import linear_probe as probe

        train = read_fashion_mnist("train")
        features = model.encode_images(train.images)
        result = probe(features, train.labels, images, labels, LinearProbeConfig.fast(seed=seed))
        report["linear_probe_accuracy"] = result.test_accuracy
    report["summary"] = {key: report[key] for key in SUMMARY_KEYS}
    for key in ("zero_shot_accuracy_unseen_classes", "linear_probe_accuracy"):
        if key in report:
            report["summary"][key] = report[key]
    return report


def format_summary(summary: dict[str, float]) -> str:
    """The summary as a two-column table."""
    width = max(len(k) for k in summary)
    return "\n".join(f"{key:<{width}}  {value:.4f}" for key, value in summary.items())
