"""Image–text training throughput: the shared loop (``hsrl.training.fit``) against a bare PyTorch loop.

    flock /work/notes/quiet.lock python benchmarks/train_image_text.py

Both loops train the same two towers (same initial weights: the recipe's SmallAlexNet image tower and the locked
MiniLM text tower with its cached captions), on the same Fashion-MNIST pairs with generated captions, batch,
loss (cross-modal align + uniform) and AdamW. Only the loop differs: hsrl's adds the Accelerator, the gather, the
finiteness checks, logging (with the cross-modal diagnostics), batch metrics and the LR schedule. The loops
alternate for ``--rounds`` rounds, so both see the same machine load; the first ``--warmup`` steps of every
run are not timed. Prints pairs/s and the ratio (target: the loop costs at most 5%). ``--profile DIR`` also
writes each run's cProfile (``--steps 40 --rounds 2 --profile /tmp/prof`` separates the torch kernels, which
both loops share, from the loop's own Python work).
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _report import publish

from hsrl.data.captions import FashionCaptions
from hsrl.data.pairs import FashionPairs, collate_pairs, make_pair_loader
from hsrl.losses_crossmodal import CrossModalLoss
from hsrl.models.image import build_encoder
from hsrl.models.text import build_text_encoder
from hsrl.models.two_tower import ImageTower, TextTower, TwoTowerModel
from hsrl.training import TrainConfig, fit, training_session

LOSS = "align:1,alpha=2 + uniform:1,t=2"


def bare_loop(model: TwoTowerModel, pairs: FashionPairs, batch: int, steps: int, warmup: int) -> float:
    """Pairs/s of a plain loop: DataLoader, both towers, loss, backward, AdamW."""
    loader = torch.utils.data.DataLoader(pairs, batch_size=batch, shuffle=True, drop_last=True,
                                         collate_fn=collate_pairs)  # fmt: skip
    loss_fn = CrossModalLoss(LOSS, model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    start = None
    for step, pair_batch in enumerate(loader):
        if step == warmup:
            start = time.perf_counter()
        if step == warmup + steps:
            break
        x, y = model(pair_batch.images, pair_batch.captions)
        loss = loss_fn(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    assert start is not None
    return batch * steps / (time.perf_counter() - start)


def hsrl_loop(model: TwoTowerModel, pairs: FashionPairs, batch: int, steps: int, warmup: int) -> float:
    """Pairs/s of the same training through ``hsrl.training.fit`` (as the recipe calls it)."""
    stamps: list[float] = []

    def timed(m, pair_batch):
        stamps.append(time.perf_counter())
        return m(pair_batch.images, pair_batch.captions)

    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(output_dir=out, batch_size=batch, max_steps=warmup + steps + 1, lr=1e-3,
                             checkpoint_every=None, log_with="none", progress=False)  # fmt: skip
        with training_session(config) as accelerator:
            loader = make_pair_loader(pairs, config)
            fit(model, CrossModalLoss(LOSS, model), loader, config, accelerator=accelerator, encode=timed)
    return batch * steps / (stamps[warmup + steps] - stamps[warmup])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--out", default="benchmarks/results/train_image_text.md")
    parser.add_argument("--profile", metavar="DIR", help="also write a cProfile of every run to DIR (where time goes)")
    args = parser.parse_args()

    captions = FashionCaptions()
    pairs = FashionPairs("train", captions=captions, flip=True)
    torch.manual_seed(0)
    image = build_encoder("small_alexnet", in_channels=1, image_size=28, dim=128, width=args.width)
    initial = TwoTowerModel(ImageTower(image, 128), TextTower(build_text_encoder("minilm", projection_dim=128)))
    initial.log_logit_scale.requires_grad_(False)
    initial.logit_bias.requires_grad_(False)
    initial.text.warm_cache(captions.training_captions())
    results: dict[str, list[float]] = {"hsrl fit": [], "bare PyTorch loop": []}
    loops = (("hsrl fit", hsrl_loop), ("bare PyTorch loop", bare_loop))
    ratios: list[float] = []
    for round_index in range(args.rounds):
        # A shared machine's speed drifts by 10-20% within minutes: each round pairs the two loops back to back and
        # alternates which goes first, and the result is the median of the rounds' ratios.
        for name, loop in loops if round_index % 2 == 0 else loops[::-1]:
            torch.manual_seed(0)
            profile = cProfile.Profile() if args.profile else None
            if profile is not None:
                profile.enable()
            speed = loop(copy.deepcopy(initial), pairs, args.batch_size, args.steps, args.warmup)
            if profile is not None:
                profile.disable()  # read with: python -m pstats FILE (sort tottime, stats 20)
                Path(args.profile).mkdir(parents=True, exist_ok=True)
                profile.dump_stats(Path(args.profile) / f"{name.split()[0]}-round{round_index}.prof")
            results[name].append(speed)
            print(f"{name:18s} {speed:8.1f} pairs/s", flush=True)
        ratios.append(results["hsrl fit"][-1] / results["bare PyTorch loop"][-1])

    ratio = statistics.median(ratios)
    low, _, high = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratio, ratio, ratio)
    lines = [
        "# Image–text training throughput: hsrl.training.fit vs a bare PyTorch loop",
        "",
        f"- command: `python benchmarks/train_image_text.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; torch {torch.__version__}; "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        f"- SmallAlexNet x{args.width} (28 px greyscale) + locked all-MiniLM-L6-v2 (cached captions), projections to "
        f"128; batch {args.batch_size} pairs; {args.steps} timed steps after {args.warmup} warm-up, {args.rounds} "
        "alternating rounds",
        "",
        "| loop | pairs/s (median) | runs |",
        "| --- | --- | --- |",
        *(f"| {k} | {statistics.median(v):.1f} | {', '.join(f'{x:.1f}' for x in v)} |" for k, v in results.items()),
        "",
        f"hsrl / bare = {ratio:.3f}, the median of the {len(ratios)} rounds' ratios (quartiles {low:.3f}–{high:.3f}; "
        "target: at least 0.95, i.e. the loop costs at most 5%)",
    ]
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
