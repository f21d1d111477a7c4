"""Length-sorted forwards: the text recipe's step with ``--length-bucket-size N`` against one padded forward.

    python benchmarks/text_length_buckets.py --output benchmarks/results/text_length_buckets.md

One training step of ``make demo``'s shape: all-MiniLM-L6-v2 (48-token cap), 96 Austen neighbour pairs and one
negative sentence per pair (320 sentences a step, as with ``--hard-negatives``; ``--no-negatives``: 192), bf16
autocast when the CPU has it, forward + InfoNCE-and-uniformity loss + backward. Each bucket size runs
``--steps`` timed steps per round after one untimed one, and the sizes take turns for ``--rounds`` rounds, so
all see the same machine load; every size sees the same batches. Prints the median seconds a step and the speed
against one padded forward (``0``), and the padded tokens each forward pays for.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time

import torch
from _report import publish

from hsrl.backends import cpu_has_bf16
from hsrl.data.text import SentencePairDataset
from hsrl.data.text_sources import load_documents
from hsrl.losses import HypersphereLoss
from hsrl.models.text import build_text_encoder, pair_collate, pair_encoder


def padded_tokens(features: dict, bucket_size: int) -> int:
    """Token positions the forwards compute: rows x longest row, per group of ``bucket_size`` length-sorted rows."""
    lengths = sorted(features["attention_mask"].sum(dim=1).tolist())
    if bucket_size <= 0:
        return len(lengths) * max(lengths)
    return sum(len(g) * max(g) for g in (lengths[i : i + bucket_size] for i in range(0, len(lengths), bucket_size)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 32, 64, 128])
    parser.add_argument("--pairs", type=int, default=96)
    parser.add_argument("--no-negatives", action="store_true", help="pairs only (the demo without hard negatives)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    train_documents, _ = load_documents("austen")
    pairs = SentencePairDataset.from_documents(train_documents)
    encoder = build_text_encoder("minilm", max_seq_length=48, device="cpu")
    encoder.train()
    collate = pair_collate(encoder)
    loss_fn = HypersphereLoss("contrastive:1,tau=0.05 + uniform:0.22,t=2")
    draw = random.Random(0)
    batches = []
    for _ in range(args.steps + 1):
        items = [pairs[i] for i in draw.sample(range(len(pairs)), args.pairs)]
        if not args.no_negatives:
            items = [(a, b, pairs.sentences[draw.randrange(len(pairs.sentences))]) for a, b in items]
        batches.append(collate(items))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_has_bf16())

    def step(batch, encode) -> float:
        started = time.perf_counter()
        with autocast:
            views = [v.float() for v in encode(encoder, batch)]
        negatives = views[2] if len(views) == 3 else None
        loss_fn(views[0], views[1], negatives=negatives).backward()
        encoder.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    times: dict[int, list[float]] = {size: [] for size in args.sizes}
    for _ in range(args.rounds):
        for size in args.sizes:
            encode = pair_encoder(encoder, bucket_size=size)
            step(batches[0], encode)  # untimed
            times[size] += [step(batch, encode) for batch in batches[1:]]

    rows = sum(batch.views * batch.n for batch in batches[1:]) // args.steps
    base = statistics.median(times[args.sizes[0]])
    lines = [
        f"# Length-sorted forwards: one text training step ({rows} sentences)",
        "",
        f"`python benchmarks/text_length_buckets.py` — all-MiniLM-L6-v2 (48-token cap), {args.pairs} Austen pairs"
        f"{'' if args.no_negatives else ' + one negative each'}, bf16 autocast: {cpu_has_bf16()}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; median of "
        f"{args.steps * args.rounds} steps per size, sizes taking turns.",
        "",
        "| --length-bucket-size | s / step | speed vs one forward | token positions computed |",
        "| --- | --- | --- | --- |",
    ]
    for size in args.sizes:
        median = statistics.median(times[size])
        tokens = statistics.mean(padded_tokens(b.features, size) for b in batches[1:])
        label = f"{size} (one padded forward)" if size == 0 else str(size)
        lines.append(f"| {label} | {median:.2f} | {base / median:.2f}× | {tokens:,.0f} |")
    real = statistics.mean(int(b.features["attention_mask"].sum()) for b in batches[1:])
    lines += ["", f"Tokens in the batch (no padding): {real:,.0f} a step."]
    publish(lines, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
