"""Text training throughput: the recipe's loop (``hsrl.training.fit``) against a bare PyTorch loop.

    python benchmarks/train_text.py                      # small from-scratch transformer (4 x 256)
    python benchmarks/train_text.py --model minilm       # the packaged all-MiniLM-L6-v2

Both loops train the same encoder (same initial weights), on the same Austen neighbour pairs,
with the same batch, tokenisation, loss (align + uniform) and Adam optimiser. Only the loop
differs: hsrl's adds the Accelerator, the gather, the finiteness checks, logging, metrics and
the LR schedule. Each loop runs ``--rounds`` times, alternating, so both see the same machine
load; the first ``--warmup`` steps of every run are not timed. Prints sentences/s (2 per pair)
and the ratio.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import tempfile
import time

import torch
from _report import publish

from hsrl.data.text import SentenceCorpus, SentencePairDataset, austen_splits
from hsrl.losses import HypersphereLoss
from hsrl.models.text import build_text_encoder, pair_collate, pair_encoder
from hsrl.training import TrainConfig, fit, make_dataloader, training_session

LOSS = "align:1,alpha=2 + uniform:1,t=2"


def bare_loop(encoder, dataset, batch: int, steps: int, warmup: int, lr: float) -> float:
    """Sentences/s of a plain loop: DataLoader, forward, loss, backward, Adam."""
    collate = pair_collate(encoder)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True, collate_fn=collate)
    loss_fn = HypersphereLoss(LOSS)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=lr)
    encoder.train()
    start = None
    for step, batch in enumerate(loader):
        if step == warmup:
            start = time.perf_counter()
        if step == warmup + steps:
            break
        z = encoder(batch.features)["sentence_embedding"]
        loss = loss_fn(z[: batch.n], z[batch.n :])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    assert start is not None
    return 2 * batch * steps / (time.perf_counter() - start)


def hsrl_loop(encoder, dataset, batch: int, steps: int, warmup: int, lr: float) -> float:
    """Sentences/s of the same training through ``hsrl.training.fit``."""
    stamps: list[float] = []
    encode = pair_encoder(encoder)

    def timed(model, features):
        stamps.append(time.perf_counter())
        return encode(model, features)

    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(output_dir=out, batch_size=batch, max_steps=warmup + steps + 1, optimizer="adam", lr=lr,
                             checkpoint_every=None, log_with="none", progress=False)  # fmt: skip
        with training_session(config) as accelerator:
            loader = make_dataloader(dataset, config, collate_fn=pair_collate(encoder))
            fit(encoder, HypersphereLoss(LOSS), loader, config, accelerator=accelerator, encode=timed)
    return 2 * batch * steps / (stamps[warmup + steps] - stamps[warmup])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="minilm, a folder, or omitted for a small from-scratch BERT")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-seq-length", type=int, default=48)
    parser.add_argument("--out", default="benchmarks/results/train_text.md")
    args = parser.parse_args()

    train, _ = austen_splits()
    dataset = SentencePairDataset.from_documents(train, context_size=1)
    with tempfile.TemporaryDirectory() as workdir:
        sentences = SentenceCorpus.from_documents(train).sentences
        torch.manual_seed(0)
        start = args.model
        if start is None:
            build_text_encoder(None, sentences=sentences, workdir=workdir, max_seq_length=args.max_seq_length)
            start = workdir
        initial = build_text_encoder(start, max_seq_length=args.max_seq_length)
        results: dict[str, list[float]] = {"hsrl fit": [], "bare PyTorch loop": []}
        for _ in range(args.rounds):
            for name, loop in (("hsrl fit", hsrl_loop), ("bare PyTorch loop", bare_loop)):
                torch.manual_seed(0)
                speed = loop(copy.deepcopy(initial), dataset, args.batch_size, args.steps, args.warmup, 3e-5)
                results[name].append(speed)
                print(f"{name:18s} {speed:8.1f} sentences/s", flush=True)

    hsrl_speed = statistics.median(results["hsrl fit"])
    bare_speed = statistics.median(results["bare PyTorch loop"])
    model = args.model or "from-scratch BERT 4x256"
    lines = [
        "# Text training throughput: hsrl.training.fit vs a bare PyTorch loop",
        "",
        f"- command: `python benchmarks/train_text.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; torch {torch.__version__}; "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        f"- model {model}, batch {args.batch_size} pairs, max {args.max_seq_length} tokens, {args.steps} timed steps "
        f"after {args.warmup} warm-up, {args.rounds} alternating rounds (median)",
        "",
        "| loop | sentences/s (median) | runs |",
        "| --- | --- | --- |",
        *(f"| {k} | {statistics.median(v):.1f} | {', '.join(f'{x:.1f}' for x in v)} |" for k, v in results.items()),
        "",
        f"hsrl / bare = {hsrl_speed / bare_speed:.3f} (target: at least 0.90)",
    ]
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
