"""Does loading bound training? Two-view data pipeline throughput against SmallAlexNet's own step rate.

    python benchmarks/image_pipeline.py                         # CPU, batch 32, 2 workers, ~3 minutes
    python benchmarks/image_pipeline.py --device cuda --batch-size 768 --bf16 --workers 8

The 64 px STL-10 setting: 96×96 colour uint8 images (STL-10's size) through the paper's augmentation
(RandomResizedCrop(64, 0.08-1), flip, ColorJitter(0.4, 0.4, 0.4, 0.4), RandomGrayscale(0.2), transforms v2
on uint8) in loader workers, as ``recipes/stl10.py`` does (``TwoViewDataset`` + ``make_view_loader``).
STL-10 itself cannot be downloaded here, so the images are a stand-in: random uint8 pixels
(``--source random``, default) or Fashion-MNIST resized to 96 px and replicated to RGB
(``--source fashion-mnist``); the augmentation's cost does not depend on the content.

Three rows, measured in one run, in image pairs per second (a pair = the two views of one image):

1. pipeline: batches drawn from the loader alone (workers, pinned memory when on a GPU);
2. model step: SmallAlexNet (the paper's, 58.7M parameters) forward + backward of both views, the
   align/uniform loss and an SGD step, on a batch already in memory (a bare PyTorch loop);
3. end to end: the same step fed by the loader, which on a CPU shares the cores with the workers.

The target is pipeline ≥ 1.5 × model step. On a CPU the paper's batch of 768 would take minutes a step, so
the default batch is 32 (the step rate per image hardly depends on it there); pass ``--batch-size 768``
on a GPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

from hsrl.data.images import TensorImageSource, TwoViewDataset, augment_defaults, make_view_loader
from hsrl.losses import HypersphereLoss
from hsrl.models.image import small_alexnet
from hsrl.training import TrainConfig


def stand_in_images(source: str, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` uint8 (3, 96, 96) images: random pixels, or Fashion-MNIST upscaled and replicated to RGB."""
    if source == "random":
        return torch.randint(0, 256, (n, 3, 96, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    from hsrl.data.images import read_fashion_mnist

    grey = read_fashion_mnist("train").images[:n].float()
    big = F.interpolate(grey, size=96, mode="bilinear", align_corners=False).round().clamp(0, 255).byte()
    return big.expand(-1, 3, -1, -1).contiguous()


def time_pipeline(loader, batches: int, device: torch.device) -> float:
    """Pairs per second drawn from ``loader`` (after one warm-up batch that starts the workers)."""
    iterator = iter(loader)
    next(iterator)
    start, pairs = time.perf_counter(), 0
    for _ in range(batches):
        view1, view2 = next(iterator)
        view1, view2 = view1.to(device, non_blocking=True), view2.to(device, non_blocking=True)
        pairs += len(view1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return pairs / (time.perf_counter() - start)


def make_step(model, device: torch.device, bf16: bool):
    loss_fn = HypersphereLoss("align:1,alpha=2 + uniform:1,t=2")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.12, momentum=0.9, weight_decay=1e-4)

    def step(view1: torch.Tensor, view2: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            z = model(torch.cat([view1, view2]))  # one forward for both views, as the recipe
        loss = loss_fn(z[: len(view1)].float(), z[len(view1) :].float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_model(step, batch: tuple[torch.Tensor, torch.Tensor], steps: int, device: torch.device) -> float:
    step(*batch)  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(*batch)
    sync(device)
    return steps * len(batch[0]) / (time.perf_counter() - start)


def time_end_to_end(step, loader, steps: int, device: torch.device) -> float:
    iterator = iter(loader)
    step(*(v.to(device) for v in next(iterator)))
    sync(device)
    start, pairs = time.perf_counter(), 0
    for _ in range(steps):
        view1, view2 = next(iterator)
        step(view1.to(device, non_blocking=True), view2.to(device, non_blocking=True))
        pairs += len(view1)
    sync(device)
    return pairs / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per step (the paper: 768)")
    parser.add_argument("--workers", type=int, default=2, help="loader worker processes")
    parser.add_argument("--source", choices=["random", "fashion-mnist"], default="random")
    parser.add_argument("--images", type=int, default=2048, help="stand-in images in memory")
    parser.add_argument("--pipeline-batches", type=int, default=20)
    parser.add_argument("--model-steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="autocast the model step to bfloat16")
    parser.add_argument("--output", help="append the markdown table to this file")
    args = parser.parse_args()
    device = torch.device(args.device)

    images = stand_in_images(args.source, args.images)
    views = TwoViewDataset(TensorImageSource(images, None, "stl10-stand-in"), augment_defaults("stl10"), seed=0)
    config = TrainConfig(batch_size=args.batch_size, num_workers=args.workers, cpu=device.type != "cuda",
                         output_dir="unused")  # fmt: skip
    loader = make_view_loader(views, config)
    torch.manual_seed(0)
    model = small_alexnet().to(device).train()
    step = make_step(model, device, args.bf16)
    first = next(iter(loader))
    batch = (first[0].to(device), first[1].to(device))

    pipeline = time_pipeline(loader, args.pipeline_batches, device)
    model_rate = time_model(step, batch, args.model_steps, device)
    end_to_end = time_end_to_end(step, loader, args.model_steps, device)

    what = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'CPU'}"
    header = (
        f"device: {args.device} ({what}), {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op threads; batch {args.batch_size} pairs, {args.workers} workers, "
        f"source {args.source}, bf16 {args.bf16}"
    )
    rows = [
        ("pipeline: two 64 px views from 96 px uint8, in workers", pipeline),
        ("model step: small_alexnet fwd+bwd both views + SGD (bare loop)", model_rate),
        ("end to end: the model step fed by the loader", end_to_end),
    ]
    table = [header, "", "| what | pairs/s | × model step |", "| --- | ---: | ---: |"]
    table += [f"| {name} | {rate:.1f} | {rate / model_rate:.2f} |" for name, rate in rows]
    verdict = "meets" if pipeline >= 1.5 * model_rate else "MISSES"
    table += ["", f"pipeline / model step = {pipeline / model_rate:.1f}× ({verdict} the ≥ 1.5× target)"]
    text = "\n".join(table)
    print(text)
    if args.output:
        with open(args.output, "a") as handle:
            handle.write(f"\n```\npython benchmarks/image_pipeline.py {' '.join(sys.argv[1:])}\n```\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
