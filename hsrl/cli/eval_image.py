"""Evaluation of an image encoder: ``hsrl eval image --model PATH --dataset fashion-mnist`` (k-NN, linear probe and
alignment/uniformity at the chosen layers, beside a random encoder and raw pixels; see
:mod:`hsrl.evaluation.image`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from hsrl.checkpoints import atomic_write_json
from hsrl.cli.harness import OneLineArgumentParser, UsageError, run_cli
from hsrl.evaluation.image import evaluate_image_encoder, format_report, open_image_model
from hsrl.evaluation.knn import KNN_PROTOCOLS
from hsrl.evaluation.linear import LinearProbeConfig

__all__ = ["cli_main"]


def cli_main(argv: Sequence[str]) -> int:
    """``hsrl eval image``: k-NN, linear probe and alignment/uniformity of a saved image encoder."""
    parser = OneLineArgumentParser(prog="hsrl eval image", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an image model folder (model.safetensors + "
                        "hsrl_config.json) or a Hub id org/name (HF_HUB_OFFLINE=1: the local cache only)")  # fmt: skip
    parser.add_argument("--dataset", required=True, help="stl10, cifar10, cifar100, fashion-mnist, imagefolder:PATH, "
                        "hf:NAME or a local 🤗 dataset folder")  # fmt: skip
    parser.add_argument("--layer", action="append", help="layer to evaluate (repeatable; default: the paper's two)")
    parser.add_argument("--k", type=int, default=5, help="neighbours for majority-vote k-NN (default: %(default)s)")
    parser.add_argument(
        "--knn-protocol",
        choices=sorted(KNN_PROTOCOLS),
        help="a named k-NN rule instead of --k: "
        "paper (5-NN majority) or lightly (200-NN, similarity-weighted votes, temperature 0.1)",
    )
    parser.add_argument(
        "--linear-protocol",
        choices=["fast", "paper", "none"],
        default="fast",
        help="linear probe: fast (20 epochs) or the paper's 100 epochs (default: %(default)s)",
    )
    parser.add_argument("--linear-epochs", type=int, help="override the protocol's epochs")
    parser.add_argument("--train-size", type=int, help="a seeded subset of this many training images")
    parser.add_argument("--test-size", type=int, help="a seeded subset of this many test images")
    parser.add_argument("--data-root", help="folder of torchvision datasets (STL-10, CIFAR)")
    parser.add_argument("--channels", type=int, choices=[1, 3], help="convert images to this many channels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    parser.add_argument("--output", help="also write the report as JSON here")
    return run_cli(parser, argv, _run)


def _run(args: argparse.Namespace) -> int:
    if args.k < 1 or (args.linear_epochs is not None and args.linear_epochs < 1):
        raise UsageError("--k and --linear-epochs must be >= 1")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model = open_image_model(args.model, map_location=device)
    linear = None
    if args.linear_protocol != "none":
        make = LinearProbeConfig.paper if args.linear_protocol == "paper" else LinearProbeConfig.fast
        linear = make(seed=args.seed, **({"epochs": args.linear_epochs} if args.linear_epochs else {}))
    report = evaluate_image_encoder(
        model, args.dataset, layers=args.layer, k=args.k, knn_protocol=args.knn_protocol, linear=linear,
        train_size=args.train_size,
        test_size=args.test_size, data_root=args.data_root, channels=args.channels, seed=args.seed,
        batch_size=args.batch_size, num_workers=args.num_workers,
    )  # fmt: skip
    print(format_report(report))
    if args.output:
        atomic_write_json(args.output, report)
    return 0
