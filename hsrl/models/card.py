"""Model cards (``README.md`` in a model folder) filled from what a run actually did.

sentence-transformers writes a generic card when it saves a model ("Base model: Unknown", no dataset,
objective or evaluation); image folders get none. :func:`write_model_card` replaces it with one that
states the base model, the dataset, the objective as the paper writes it, the metrics hsrl measured
in the run (the ``summary`` block of ``metrics.json``), how to open the model, and the paper's citation.
The YAML header is ``huggingface_hub.ModelCardData``, so the Hub indexes it (library, base model,
datasets, tags)::

    write_model_card("runs/demo/model", kind="text", base_model="minilm", dataset="austen",
                     objective="align:1,alpha=2 + uniform:1,t=2", metrics={"recall@10": 0.071})
    write_run_card("runs/demo", kind="text")   # the same, read from runs/demo/metrics.json
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from hsrl.checkpoints import atomic_write_bytes

__all__ = ["CARD_FILE", "PAPER_CITATION", "hub_base_model", "hub_dataset", "write_model_card", "write_run_card"]

CARD_FILE = "README.md"

PAPER = (
    "Tongzhou Wang and Phillip Isola, *Understanding Contrastive Representation Learning through Alignment and "
    "Uniformity on the Hypersphere*, ICML 2020 ([arXiv 2005.10242](https://arxiv.org/abs/2005.10242))"
)
PAPER_CITATION = """@inproceedings{wang2020hypersphere,
  title     = {Understanding Contrastive Representation Learning through Alignment and Uniformity on the Hypersphere},
  author    = {Wang, Tongzhou and Isola, Phillip},
  booktitle = {International Conference on Machine Learning (ICML)},
  pages     = {9929--9939},
  year      = {2020},
  eprint    = {2005.10242},
  archivePrefix = {arXiv}
}"""

#: hsrl's short names for models and datasets -> their ids on the Hugging Face Hub (for the card's metadata).
HUB_MODELS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}
HUB_DATASETS = {
    "bookcorpus": "bookcorpus/bookcorpus",
    "cifar10": "uoft-cs/cifar10",
    "cifar100": "uoft-cs/cifar100",
    "fashion-mnist": "zalando-datasets/fashion_mnist",
}


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not Path(name).exists() and not name.startswith((".", "/", "~"))


def hub_base_model(name: str | None) -> str | None:
    """The Hub id of a base model, when it has one (a short name hsrl knows or an ``org/name``)."""
    if name is None:
        return None
    return HUB_MODELS.get(name) or (name if _looks_like_hub_id(name) else None)


def hub_dataset(name: str) -> str | None:
    """The Hub id of a training dataset, when it has one (``hf:NAME``, ``org/name`` or a name hsrl knows)."""
    if name.startswith("hf:"):
        return name[3:]
    return HUB_DATASETS.get(name) or (name if _looks_like_hub_id(name) else None)


def _format_value(key: str, value: Any) -> str:
    if isinstance(value, float) and key in {"steps", "train_seconds"}:
        return f"{value:g}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _metrics_table(metrics: Mapping[str, Any]) -> list[str]:
    rows = [(k, v) for k, v in metrics.items() if isinstance(v, int | float | str) and not isinstance(v, bool)]
    if not rows:
        return ["No evaluation was run."]
    return ["| metric | value |", "| --- | --- |", *(f"| `{k}` | {_format_value(k, v)} |" for k, v in rows)]


def _usage(kind: str, where: str) -> list[str]:
    if kind == "text":
        return [
            "```python",
            "from sentence_transformers import SentenceTransformer",
            "",
            f'model = SentenceTransformer("{where}")',
            'embeddings = model.encode(["A sentence.", "Another one."])  # L2-normalised',
            "```",
        ]
    return [
        "```python",
        "from hsrl.models.image import ImageEncoder",
        "",
        f'model = ImageEncoder.from_pretrained("{where}")  # or hsrl.models.image.load(folder)',
        "embeddings = model(uint8_images)  # (N, C, H, W) uint8 in, L2-normalised (N, dim) out",
        "```",
    ]


def write_model_card(
    folder: str | os.PathLike[str],
    *,
    kind: Literal["text", "image"],
    base_model: str | None,
    dataset: str,
    objective: str,
    metrics: Mapping[str, Any],
    steps: int | None = None,
    repo_id: str | None = None,
    license: str | None = None,
    usage: str | None = None,
) -> Path:
    """Write ``folder/README.md``: a model card stating what the run did and measured.

    Args:
        folder: a saved model folder (sentence-transformers for ``text``, hsrl's image folder for ``image``).
        kind: ``text`` or ``image``.
        base_model: the starting checkpoint as given to the recipe (``minilm``, a folder, an ``org/name``),
            or ``None`` for a model trained from random initialisation.
        dataset: the training dataset as given to the recipe.
        objective: the loss as the paper writes it, e.g. ``align:1,alpha=2 + uniform:1,t=2``.
        metrics: the headline numbers measured in the run (``metrics.json``'s ``summary``), flat.
        steps: optimizer steps trained.
        repo_id: the Hub repository the card will live in (used in the usage snippet).
        license: an SPDX id for the metadata, when known.
        usage: Markdown for the card's Usage section (default: how sentence-transformers or
            ``hsrl.models.image`` opens it).

    Returns:
        The card's path.
    """
    from huggingface_hub import ModelCardData

    if kind not in ("text", "image"):
        raise ValueError(f"kind must be 'text' or 'image', got {kind!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no model folder {folder}")
    hub_model, hub_data = hub_base_model(base_model), hub_dataset(dataset)
    tags = ["hsrl", "alignment-uniformity", "hypersphere"]
    if kind == "text":
        tags = ["sentence-transformers", "feature-extraction", "sentence-similarity", *tags]
    else:
        tags = ["image-feature-extraction", "model_hub_mixin", "pytorch_model_hub_mixin", *tags]
    data = ModelCardData(
        base_model=hub_model, datasets=[hub_data] if hub_data else None, license=license,
        library_name="sentence-transformers" if kind == "text" else None, tags=tags,
        pipeline_tag="sentence-similarity" if kind == "text" else "image-feature-extraction",
    )  # fmt: skip
    start = base_model if base_model is not None else "random initialisation (trained from scratch)"
    what = "sentence-embedding" if kind == "text" else "image-embedding"
    lines = [
        "---", data.to_yaml(), "---", "",
        f"# {repo_id or folder.name}", "",
        f"A {what} model trained with hsrl (hypersphere representation "
        f"learning) using the objectives of {PAPER}. Its embeddings are L2-normalised: they lie on the unit "
        "hypersphere, and cosine similarity is their dot product.", "",
        "## Training", "",
        "| | |", "| --- | --- |",
        f"| base model | {f'[{hub_model}](https://huggingface.co/{hub_model})' if hub_model else start} |",
        f"| dataset | {f'[{hub_data}](https://huggingface.co/datasets/{hub_data})' if hub_data else dataset} |",
        f"| objective | `{objective}` |",
        *([f"| optimizer steps | {steps} |"] if steps is not None else []),
        "", "## Evaluation (measured by hsrl in the same run)", "",
        *_metrics_table(metrics), "",
        "`align` is alignment (lower: positive pairs closer), `uniform` is uniformity (lower: more uniform); "
        "`baseline_*` rows are the starting model measured in the same run.", "",
        "## Usage", "", *([usage] if usage else _usage(kind, repo_id or str(folder))), "",
        "## Citation", "", "```bibtex", PAPER_CITATION, "```", "",
    ]  # fmt: skip
    path = folder / CARD_FILE
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path


def write_run_card(
    run_dir: str | os.PathLike[str],
    *,
    kind: Literal["text", "image"],
    model_folder: str | os.PathLike[str] | None = None,
    base_model: str | None = None,
    dataset: str | None = None,
    repo_id: str | None = None,
    usage: str | None = None,
) -> Path:
    """The card of a recipe run, read from ``run_dir/metrics.json`` (its ``summary`` and ``config``).

    The model folder defaults to ``run_dir/model``; the base model to the run's ``--model``; the metrics to
    the ``summary`` block (or the run's top-level numbers when it has none); ``dataset`` to the run's
    ``--dataset``.
    """
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{run_dir} has no metrics.json")
    run = json.loads(metrics_path.read_text())
    config = run.get("config", {})
    metrics = run.get("summary") or {k: v for k, v in run.items() if isinstance(v, int | float) and k != "steps"}
    model = config.get("model") if base_model is None else base_model
    return write_model_card(
        model_folder or run_dir / "model", kind=kind, base_model=model if model not in (None, "None") else None,
        dataset=dataset or str(config.get("dataset", "unknown")), objective=str(config.get("loss", "unknown")),
        metrics=metrics, steps=run.get("steps"), repo_id=repo_id, usage=usage,
    )  # fmt: skip
