r"""Figure 3 for two modalities: images and captions of a 2-D two-tower model on the circle S¹.

A two-tower model with a shared dimension of 2 (the recipe's towers: a SmallAlexNet image tower and the
locked MiniLM text tower with a 384 → 2 projection) is trained with the cross-modal objective
``align:1,alpha=2 + uniform:1,t=2`` on Fashion-MNIST with generated captions. From the test images and their
held-out captions it draws:

* the circle: every image's and every caption's angle (images inside, captions outside the ring, coloured by
  class), and the two modalities' centres :math:`\bar f, \bar g` inside the disc, joined by the modality gap
  :math:`\lVert \bar f - \bar g \rVert`;
* the histogram of positive-pair distances :math:`\lVert f(x) - g(y) \rVert` (cross-modal alignment);
* the angle density of each modality (uniformity of each on the circle).

The same is written for the model before training (the seeded initial towers) for comparison.
"""

from __future__ import annotations

import random
import time
from typing import Any

import numpy as np
import torch

from hsrl.data.captions import CLASS_NAMES, FashionCaptions
from hsrl.data.pairs import FashionPairs, make_pair_loader
from hsrl.losses_crossmodal import CrossModalLoss
from hsrl.metrics import alignment, angle_density, positive_distance_histogram, uniformity
from hsrl.models.image import build_encoder
from hsrl.models.text import build_text_encoder
from hsrl.models.two_tower import ImageTower, TextTower, TwoTowerModel, load_two_tower, save_two_tower
from hsrl.reproduce.common import Context, markdown_table, write_csv, write_report
from hsrl.training import TrainConfig, fit, training_session

OBJECTIVE = "align:1,alpha=2 + uniform:1,t=2"


def _build(seed: int) -> TwoTowerModel:
    torch.manual_seed(seed)
    image = build_encoder("small_alexnet", in_channels=1, image_size=28, dim=64, width=0.25)
    model = TwoTowerModel(ImageTower(image, 2), TextTower(build_text_encoder("minilm", projection_dim=2)))
    model.log_logit_scale.requires_grad_(False)
    model.logit_bias.requires_grad_(False)
    return model


def _train(ctx: Context, steps: int) -> TwoTowerModel:
    folder = ctx.runs_dir / "two-tower-2d"
    if (folder / "model").is_dir():
        return load_two_tower(folder / "model")
    captions = FashionCaptions()
    config = TrainConfig(output_dir=str(folder), batch_size=256, max_steps=steps, lr=2e-3, weight_decay=1e-4,
                         lr_schedule="cosine", warmup_steps=min(50, steps // 5), checkpoint_every=100,
                         log_with="none", progress=False, resume="latest", cpu=ctx.device.type == "cpu")  # fmt: skip
    with training_session(config) as accelerator:
        model = _build(0)
        model.text.warm_cache(captions.training_captions())
        loader = make_pair_loader(FashionPairs("train", captions=captions, flip=True), config)
        result = fit(model, CrossModalLoss(OBJECTIVE, model), loader, config, accelerator=accelerator,
                     encode=lambda m, b: m(b.images, b.captions))  # fmt: skip
    save_two_tower(result.model, folder / "model")
    return result.model.eval()


def _embed(model: TwoTowerModel, n: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    test = FashionPairs("test")
    chosen = sorted(random.Random(0).sample(range(len(test)), n))
    images = model.encode_images(test.images[chosen])
    texts = model.encode_texts([test.caption_at(i) for i in chosen])
    return images, texts, test.label_tensor[chosen].numpy()


def _numbers(name: str, images: torch.Tensor, texts: torch.Tensor) -> dict[str, Any]:
    return {
        "model": name,
        "align": alignment(images, texts),
        "uniform_image": uniformity(images),
        "uniform_text": uniformity(texts),
        "modality_gap": float((images.mean(0) - texts.mean(0)).norm()),
        "mean_pair_distance": positive_distance_histogram(images, texts).mean_distance,
    }


def _draw(rows: list[tuple[dict[str, Any], torch.Tensor, torch.Tensor, np.ndarray]], path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hsrl import plots

    figure, axes = plt.subplots(3, len(rows), figsize=(5 * len(rows), 12), layout="constrained", squeeze=False)
    colours = plt.get_cmap("tab10")
    for column, (numbers, images, texts, labels) in enumerate(rows):
        circle, histogram_ax, density_ax = axes[0, column], axes[1, column], axes[2, column]
        circle.add_patch(plt.Circle((0, 0), 1, fill=False, color="0.7"))
        for radius, points, marker in ((0.92, images, "."), (1.1, texts, "x")):
            angles = np.arctan2(points[:, 1].numpy(), points[:, 0].numpy())
            circle.scatter(radius * np.cos(angles), radius * np.sin(angles), c=[colours(int(c)) for c in labels],
                           s=8 if marker == "." else 14, marker=marker, alpha=0.6, linewidths=0.8)  # fmt: skip
        f_mean, g_mean = images.mean(0).numpy(), texts.mean(0).numpy()
        circle.plot([f_mean[0], g_mean[0]], [f_mean[1], g_mean[1]], "k-", lw=1.5)
        circle.scatter(*f_mean, c="k", marker="o", s=40, label="image centre")
        circle.scatter(*g_mean, c="k", marker="^", s=40, label="caption centre")
        circle.set(xlim=(-1.25, 1.25), ylim=(-1.25, 1.25), aspect="equal", xticks=[], yticks=[])
        circle.set_title(f"{numbers['model']}: images (•, inside), captions (×, outside)\n"
                         f"modality gap {numbers['modality_gap']:.3f}", fontsize=10)  # fmt: skip
        if column == 0:
            handles = [plt.Line2D([], [], color=colours(i), marker="o", ls="", label=n) for i, n in
                       enumerate(CLASS_NAMES)]  # fmt: skip
            circle.legend(handles=handles, fontsize=7, loc="upper left", ncol=2, framealpha=0.6)
        hist = positive_distance_histogram(images, texts)
        histogram_ax.bar(hist.edges[:-1], hist.density, width=np.diff(hist.edges), align="edge", color="tab:blue")
        histogram_ax.set_title(f"‖f(image) − g(caption)‖: mean {hist.mean_distance:.3f}, "
                               f"L_align {numbers['align']:.3f}", fontsize=10)  # fmt: skip
        histogram_ax.set_xlim(0, 2)
        for points, name, colour in ((images, "images", "tab:blue"), (texts, "captions", "tab:orange")):
            density = angle_density(points)
            density_ax.plot(density.grid, density.density, color=colour, label=name)
        density_ax.set_title(f"angle density: L_uniform images {numbers['uniform_image']:.3f}, captions "
                             f"{numbers['uniform_text']:.3f}", fontsize=10)  # fmt: skip
        density_ax.legend(fontsize=8)
    plots.save(figure, path)
    plt.close(figure)


def run(ctx: Context) -> dict[str, object]:
    """Train (or reuse) the 2-D model, draw the figure, write the CSV and the report."""
    started = time.perf_counter()
    steps, points = (6, 300) if ctx.quick else (300, 2000)
    rows = []
    for name, model in (("initial towers", _build(0).eval()), ("align/uniform", _train(ctx, steps))):
        images, texts, labels = _embed(model, points)
        rows.append((_numbers(name, images, texts), images, texts, labels))
    figure = ctx.output_dir / "multimodal.png"
    _draw(rows, figure)
    columns = ("model", "align", "uniform_image", "uniform_text", "modality_gap", "mean_pair_distance")
    numbers = [r[0] for r in rows]
    write_csv(ctx.output_dir / "multimodal.csv", numbers, columns)
    write_report(ctx.output_dir / "report.md", "Two modalities on S¹", [
        ("Figure", f"![images and captions on the circle]({figure.name})"),
        ("Numbers", markdown_table(numbers, columns)),
        ("Setting", f"{steps} steps of `{OBJECTIVE}` (batch 256) of a 2-D two-tower model; {points} test images "
                    "with one held-out caption each."),
    ], ctx, time.perf_counter() - started)  # fmt: skip
    return {"rows": numbers, "figure": str(figure)}
