"""Image encoders in process: PyTorch eager against ONNX Runtime (``hsrl.onnx_image``), images/s and their ratio.

    python benchmarks/image_backends.py --threads 1 --output benchmarks/results/image_backends.md

For each architecture (the ``fashion-mnist`` preset's SmallResNet at 28 px greyscale, the paper's SmallAlexNet at
64 px colour, ResNet-18 with the CIFAR stem at 32 px) one random-weight model folder is saved, opened with
``open_model(folder)`` (torch) and ``open_model(folder, backend="onnx")`` (exported once, then cached), and both
run the same uint8 batches (what the service and ``hsrl export`` feed them) of ``--batch`` images. The two
alternate for ``--rounds`` rounds, each timing ``--batches`` calls after one untimed call, so they share the
machine's load; the table shows the median images/s over rounds and the median of the per-round ratios, plus
the largest difference between the two backends' unit vectors.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _report import publish

from hsrl.models.image import build_encoder, load, save

ARCHITECTURES: dict[str, dict[str, object]] = {
    "small_resnet (fashion-mnist preset, 1x28x28, channels-last)": {
        "name": "small_resnet", "in_channels": 1, "image_size": 28, "channels_last": True,
    },
    "small_alexnet (the paper's, 3x64x64)": {"name": "small_alexnet", "in_channels": 3, "image_size": 64},
    "resnet18 (CIFAR stem, 3x32x32)": {"name": "resnet18", "in_channels": 3, "image_size": 32, "cifar_stem": True},
}  # fmt: skip


def images_per_second(call, batch: torch.Tensor, batches: int) -> float:
    call(batch)  # untimed: first-call allocations
    start = time.perf_counter()
    for _ in range(batches):
        call(batch)
    return batches * len(batch) / (time.perf_counter() - start)


def measure(label: str, spec: dict[str, object], args: argparse.Namespace, scratch: Path) -> str:
    from hsrl.onnx_image import load_image_model

    kwargs = {k: v for k, v in spec.items() if k != "name"}
    torch.manual_seed(0)
    folder = save(build_encoder(str(spec["name"]), **kwargs).eval(), scratch / str(spec["name"]))
    torch_model = load(folder)
    onnx_model, _ = load_image_model(folder, "onnx", threads=args.threads)
    size, channels = int(spec["image_size"]), int(spec["in_channels"])
    rng = np.random.default_rng(0)
    batch = torch.from_numpy(rng.integers(0, 256, (args.batch, channels, size, size), dtype=np.uint8))

    def run_torch(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return torch_model(x)

    difference = float((run_torch(batch) - onnx_model(batch)).abs().max())
    rates: dict[str, list[float]] = {"torch": [], "onnx": []}
    for _ in range(args.rounds):
        rates["torch"].append(images_per_second(run_torch, batch, args.batches))
        rates["onnx"].append(images_per_second(onnx_model, batch, args.batches))
    ratio = statistics.median(o / t for o, t in zip(rates["onnx"], rates["torch"], strict=True))
    return (f"| {label} | {statistics.median(rates['torch']):.0f} | {statistics.median(rates['onnx']):.0f} | "
            f"{ratio:.2f}x | {difference:.1e} |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of torch and ONNX Runtime")
    parser.add_argument("--batch", type=int, default=64, help="images per call")
    parser.add_argument("--batches", type=int, default=10, help="timed calls per round and backend")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    parser.add_argument("--output", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    lines = [
        "# Image encoders in process: PyTorch eager vs ONNX Runtime fp32",
        "",
        f"Command: `python benchmarks/image_backends.py --threads {args.threads} --batch {args.batch} --batches "
        f"{args.batches} --rounds {args.rounds}`",
        "",
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} intra-op thread(s) "
        f"for both; uint8 batches of {args.batch}, random weights; medians of {args.rounds} alternating rounds.",
        "",
        "| encoder | torch images/s | ONNX Runtime images/s | onnx / torch | max abs difference |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    with tempfile.TemporaryDirectory(prefix="hsrl-image-backends-") as scratch:
        for label, spec in ARCHITECTURES.items():
            lines.append(measure(label, spec, args, Path(scratch)))
            print(lines[-1], flush=True)
    publish(lines, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
