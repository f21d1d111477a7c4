"""Screen text objectives fast: held-out metrics of MiniLM fine-tuned on Austen, measured along the run.

    python benchmarks/text_objective_probe.py NAME --loss "contrastive:1,tau=0.05 + uniform:0.25,t=2" --lr 1e-4 \\
        --replay wordnet --replay-weight 4 --steps 100 --eval-at 50 100
    python benchmarks/text_objective_probe.py --table --output benchmarks/results/text_objective_probe.md

``make demo``'s settings were chosen with this. One probe is a plain loop (one intra-op thread, bfloat16 autocast,
Adam, gradients clipped to norm 1), on the recipe's parts: the packaged all-MiniLM-L6-v2 at 48 tokens, Austen
neighbour pairs (*Persuasion* held out), :class:`hsrl.losses.HypersphereLoss`, :class:`hsrl.replay.ReplayAnchor`
and :func:`hsrl.evaluation.text.evaluate_text_encoder` (float32, all 3,559 *Persuasion* and 3,186 Factbook
sentences) at the steps named. A step is ``--batch`` examples: ``--batch − --replay-sentences`` neighbour pairs
and the replay sentences. Two probes run side by side on the 2 cores (one thread each). The recipe
(``recipes/bookcorpus.py``) is what ``make demo`` runs; the probe only finds where to point it, at a third of
the cost (it saves no checkpoint and evaluates only the steps asked for).

``--replay-mode pooled`` feeds replay *pairs* through the same objective instead of anchoring replay sentences
(the comparison in ``hsrl.replay``'s docstring).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from _report import publish

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "text_objective_probe"
METRICS = ("recall@10", "align", "uniform", "factbook_recall@10", "factbook_align", "factbook_uniform")
#: The probe that evaluates the untouched model (``--steps 0 --eval-at 0``); the table's ratios are against it.
UNTOUCHED_PROBE = "untouched"
NOTES = """\
Every probe: all-MiniLM-L6-v2 at 48 tokens, Austen neighbour pairs (*Persuasion* held out), Adam at a constant lr
(unless "cosine": from lr down to 0 at the last step), 128 examples a step unless named (with replay: 96 pairs and
32 replay sentences, or 32 replay pairs when pooled), bf16 autocast, seed 0 (the probes named s1: seed 1);
evaluated in float32 on all 3,559 *Persuasion* and 3,186 Factbook sentences. ✗ marks alignment or uniformity worse
than the untouched model's. The 2026-12-07 probes ran on a first draft of this script, the same loop and formula,
whose replay sentences were drawn with Python's `random` instead of `hsrl.replay.ReplayAnchor.indices` (and from
2,237 sentences of pydoc, before the filter dropped heading lines: 2,120 now); a rerun draws other sentences.

What it says (and why `make demo` uses contrastive:1,tau=0.05 + uniform:0.19 with WordNet's definitions anchored
at weight 4):
- Anchoring the replay text (c3) keeps the Factbook at 0.97× where the previous demo (the same objective, no
  replay) kept 0.82×; feeding the same text through the objective as pairs (c2) keeps 0.88× and crowds both
  domains.
- *What* is anchored matters, not how hard: with the demo's objective, WordNet's definitions (h1) keep the
  Factbook at 1.02× after 50 steps and 0.96× after 100, where the Python reference (h0) keeps 0.93× and 0.89×;
  recall is as high or higher (1.34× against 1.30× at 100) and both alignment and uniformity stay better than the
  start (h0's uniformity does not). With seed 1 (h1s1, h0s1): 0.98× against 0.93×, recall 1.27× and 1.28×. Four
  times the weight (i1, mu = 16), twice the sentences a step (i2, 64), or three times the corpus (j1, every 10th
  gloss, 8,781 sentences: `tools/build_wordnet_glosses.py DIR --every 10 --output wordnet10.txt`) change nothing
  beyond the noise (0.94-0.97×);
  nor do 128 pairs a step instead of 96 (k1, k1s1: recall 1.32× / 1.27×, Factbook 0.98× / 0.94×).
- The trade-off along a run (seed 0): the Factbook is above the start at 50 steps and then gives way while
  Persuasion recall still climbs (1.24× → 1.34×); seed 1 keeps 0.98× at both. A cosine schedule (j2) ends at
  Factbook 1.01× but recall 1.28× and alignment worse than the start; a higher learning rate (g1: 2e-4, cosine) or
  larger batches at it (g2: 256 pairs) make uniformity worse than the start and recall lower.
- Contrastive carries Persuasion recall (1.23-1.35×); the uniformity weight sets the geometry: 0.1 (f1) leaves
  alignment better and uniformity worse than the start, 0.25 (e1) the reverse; 0.19 lies between, where both are
  better.
- Batches from one book (d1, d2, e2) give the most recall and cost the most Factbook (0.64-0.72×), and a heavier
  anchor (mu = 16, e2/f2) does not protect it more than mu = 4.
- Until the hard negatives below, nothing tried on top of h1 raised recall past the 1.34× it already reached
  (2026-12-07, one seed each, 100 steps; h1's seed-0 run is reproduced exactly by ema95's raw weights, 0.0829):
  temperature 0.1 or 0.03 (t10, t03: 1.33× both; 0.03 collapses uniformity, 0.1 costs alignment), half of each batch
  from one book (bm50: 1.34×, Factbook 0.85×), dropping pairs with a sentence under four words (mw4: 1.35×, 0.94×),
  an EMA of the weights (ema95, decay 0.95: 1.33×, alignment ✗), the ±2 neighbours as positives (ctx2: 1.22×),
  freezing the embeddings and two lower layers (fr2: 1.26×, 20% faster steps), or replacing each pair's character
  and place names with random ones so that no novel's names can be learnt (names: 1.26×). Every setting lands
  between 1.22× and 1.35×.
- The oracle (trained on *Persuasion*'s own pairs, not a setting: it sees the pairs it is scored on) reaches 7.1×
  in the same 100 steps: neither the metric, the model nor the budget caps recall; what caps it is what five
  other Austen novels teach about a sixth.
- Other fiction costs recall (2026-12-07 evening): h1 plus *Moby-Dick*'s pairs (moby) 1.25×, plus *Moby-Dick*,
  *Alice* and *Botchan* (fic3; `benchmarks/extra_fiction.py` builds them; fic3 ran on a first draft of the Botchan
  file that still held its footnotes and transcriber's notes, some 40 lines) 1.20×, alignment worse than the start
  in both. A layer-wise learning rate (llrd8: 2e-4 at the top, ×0.8 a layer down) 1.34×, dropout off (nodrop)
  1.35×, both with uniformity worse than the start; a cross-batch memory of 1,024 earlier rows as extra negatives
  (xbm1k) collapsed *Persuasion* by step 50 and was stopped.
- **Mined hard negatives are the first lever that moves recall** (hn*): before training, the *starting* model
  embeds all 27,865 training sentences and each pair's first sentence gets the K sentences of its book nearest to
  it (itself, its ±2 neighbours and copies of either sentence left out; about 4 minutes on one thread beside a
  second probe). Each step draws one of them per pair, and InfoNCE's negatives are the batch's plus the mined
  ones (τ = 0.05) in place of the loss's own contrastive term; the uniformity term stays. A step embeds 96 more
  sentences: 1.43× the time of h1's. At 100 steps, uniformity 0.19: K = 10 1.39×, K = 50 **1.41×** (the highest
  of any probe), both with alignment better than the start (1.216, 1.299) but uniformity worse (−2.839, −3.012)
  and the Factbook at 0.92-0.94×. Raising the uniformity weight to 0.3 (hn50u30) fixes uniformity (−3.493) and
  keeps 1.40× but pushes alignment past the start (1.533); at h1's compute (hn50b96u25: 64 pairs + 64 mined + 32
  replay a step, 0.25) 1.31×, alignment ✗. At equal training time (step 70 against h1's 100): 1.32-1.38×
  against 1.34×. The gain holds with seed 1 (hn50s1: 1.37× against h1s1's 1.27×; over both seeds 1.39× against
  1.31×). **Uniformity at 0.22 (hn50u22) gives 1.41× with alignment and uniformity both better than the start**
  (1.373, −3.166): the first setting to pass those three bars at once; the Factbook is at 0.94× (0.96× for h1),
  the bar it still misses, and it costs 1.43× h1's step time plus the mining. In the recipe
  (`--hard-negatives 50`, uniformity 0.22, 100 steps) seeds 0 and 1 give 1.30× and 1.39× (README, under
  `make demo`): over the five runs 1.38× against h1's 1.30×, the Factbook below the start in all five.
- **Four seeds each (2026-12-08): the noise is as large as the gap to the target.** h1 (the demo's settings)
  over seeds 0-3 (h1, h1s1, h1s2, h1s3): recall@10 1.34×, 1.27×, 1.36×, 1.25×, mean **1.30×**; alignment worse
  than the start in one (s3), the Factbook 0.96-1.02× (mean 0.98×). hn50u22 over seeds 0-3 (hn50u22, hn50u22s1-s3):
  1.41×, 1.37×, 1.42×, 1.27×, mean **1.37×**; alignment and uniformity better than the start in all four, the
  Factbook 0.91-0.96× (mean 0.93×). One run's recall spans ±0.08× around its setting's mean, so a single run
  above or below 1.4× says little; neither setting's mean reaches 1.4×, and hard negatives buy their ~0.07× with
  ~0.05× of the Factbook.
- **Nothing tried protects the Factbook under hard negatives** (2026-12-08, hn50u22's settings and seed 0, 100
  steps, against its 1.41× / Factbook 0.94×): mining only candidates the starting model scores below 0.95× or
  1.5× the pair's own score (hn50u22pa95, hn50u22pa150: NV-Retriever's "positive-aware" filter against false
  negatives; a pair's neighbour scores 0.30 on average and 98.5% of anchors have a candidate above it, so 0.95
  keeps about 6% of the old top 50) gives 1.32× / 1.31×, alignment worse than the start, Factbook 0.96× / 0.94×:
  the *hardest* candidates carry the gain. Rank-16 LoRA adapters of a frozen model (hn50u22lora16, lr 5e-4; a
  low-rank update "learns less and forgets less", Biderman et al. 2024) 1.36×, alignment ✗, Factbook 0.90×. The
  anchor at μ = 16 (hn50u22mu16) 1.35×, alignment ✗, 0.94×. A uniformity term over the anchored replay sentences
  as well (hn50u22ru22, weight 0.22: fine-tuning crowds other domains, the Factbook's uniformity −3.43 → −3.2)
  1.40×, 0.95×. Candidates mined from every book instead of the anchor's own (hn50u22any) 1.34×, uniformity ✗,
  0.95×.
- Noise: the same settings in the recipe and in the probe differ by a few hundredths (h0 is the pydoc demo's
  settings: 1.30× here, 1.36× in `make demo`; uniformity -3.085 here, -3.162 there).
"""


def probe(args: argparse.Namespace) -> None:
    import torch

    from hsrl.data.text import SentencePairDataset, austen_splits, load_factbook
    from hsrl.data.text_sources import read_documents
    from hsrl.evaluation.text import evaluate_text_encoder
    from hsrl.losses import HypersphereLoss, contrastive_loss
    from hsrl.models.text import build_text_encoder, freeze_lower_layers, pair_collate, pair_encoder
    from hsrl.replay import ReplayAnchor, load_replay_documents

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    draw = random.Random(args.seed)
    out = RUNS / args.name
    out.mkdir(parents=True, exist_ok=True)
    train_docs, heldout = austen_splits()
    factbook = load_factbook()
    # --oracle trains on the held-out book itself: not a setting, a ceiling (how far this budget could go at all)
    # --extra-text: other books' neighbour pairs join the five novels' (each file's documents are one more "book")
    extra = [doc for path in args.extra_text for doc in read_documents(path)]
    pairs = SentencePairDataset.from_documents(heldout if args.oracle else train_docs + extra,
                                               context_size=args.context_size)  # fmt: skip
    if args.min_words > 1:  # drop pairs with a fragment ("Yes." / "Oh!") on either side: nothing to retrieve by
        kept = [
            k
            for k, (i, j) in enumerate(pairs.pairs)
            if min(len(pairs.sentences[i].split()), len(pairs.sentences[j].split())) >= args.min_words
        ]
        pairs = SentencePairDataset(pairs.sentences, [pairs.pairs[k] for k in kept],
                                    [pairs.groups[k] for k in kept] if pairs.groups else None)  # fmt: skip
    encoder = build_text_encoder("minilm", max_seq_length=48, device="cpu")
    if args.freeze_layers:
        freeze_lower_layers(encoder, args.freeze_layers)
    if args.lora:
        _add_low_rank_adapters(encoder, args.lora)
    collate, encode = pair_collate(encoder), pair_encoder(encoder)
    loss = HypersphereLoss(args.loss)
    anchor, pooled = None, None
    n_replay = args.replay_sentences if args.replay else 0
    if args.replay and args.replay_mode == "anchor":
        anchor = ReplayAnchor.from_documents(encoder, load_replay_documents(args.replay), per_step=n_replay,
                                             weight=args.replay_weight, seed=args.seed)  # fmt: skip
    elif args.replay:
        pooled = SentencePairDataset.from_documents(load_replay_documents(args.replay))
    by_book: dict[str, list[int]] = {}
    for index, book in enumerate(pairs.groups or []):
        by_book.setdefault(book, []).append(index)
    order, position = list(range(len(pairs))), len(pairs)

    def batch(n: int) -> list[int]:
        nonlocal position
        if args.same_book:
            book = draw.choices(list(by_book), weights=[len(v) for v in by_book.values()])[0]
            return draw.sample(by_book[book], n)
        one_book: list[int] = []
        if args.book_mix:  # this share of the batch from one book (harder negatives), the rest shuffled
            book = draw.choices(list(by_book), weights=[len(v) for v in by_book.values()])[0]
            one_book = draw.sample(by_book[book], round(args.book_mix * n))
            n -= len(one_book)
        if position + n > len(order):
            draw.shuffle(order)
            position = 0
        position += n
        return one_book + order[position - n : position]

    swap = _name_swapper(pairs.sentences, draw) if args.swap_names else None
    hard = (_hard_negative_candidates(encoder, pairs, args.hard_negatives, args.hn_positive_ratio, args.hn_any_book)
            if args.hard_negatives else None)  # fmt: skip
    optimizer = torch.optim.Adam(_parameter_groups(encoder, args.lr, args.llrd), lr=args.lr)
    # the recipe's --lr-schedule cosine (min 0, no warm-up) when asked; constant otherwise
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / args.steps)) if args.schedule == "cosine" else 1.0
    )
    log: list[dict] = []
    # --no-dropout: train with the encoder in eval mode (dropout off; MiniLM has no batch norm, so nothing else changes)
    encoder.train(not args.no_dropout)
    seconds = 0.0

    # --ema D: an exponential moving average of the weights, w̄ ← D·w̄ + (1 − D)·w after every step, evaluated too
    ema = {k: v.detach().clone().float() for k, v in encoder.state_dict().items()} if args.ema else None

    def evaluate(step: int) -> None:
        metrics = evaluate_text_encoder(encoder, heldout, eval_sets={"factbook": factbook})
        row = {"step": step, "train_seconds": seconds, **{k: metrics[k] for k in METRICS}}
        if ema is not None:
            trained = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
            encoder.load_state_dict(ema)
            averaged = evaluate_text_encoder(encoder, heldout, eval_sets={"factbook": factbook})
            encoder.load_state_dict(trained)
            row["ema"] = {k: averaged[k] for k in METRICS}
        encoder.train(not args.no_dropout)
        log.append(row)
        print(json.dumps(log[-1]), flush=True)
        (out / "log.json").write_text(json.dumps({"args": vars(args), "log": log}, indent=1))

    if 0 in args.eval_at:
        evaluate(0)
    width = encoder.get_sentence_embedding_dimension()
    memory = (torch.empty(0, width), torch.empty(0, width))  # --memory: the last steps' x and y rows, newest first
    for step in range(1, args.steps + 1):
        started = time.perf_counter()
        chosen = batch(args.batch - n_replay)
        items = [pairs[i] for i in chosen]
        if swap is not None:
            items = [swap(a, b) for a, b in items]
        if pooled is not None:
            items += [pooled[i] for i in draw.sample(range(len(pooled)), n_replay)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x, y = encode(encoder, collate(items))
            x, y = x.float(), y.float()
            value = loss(x, y)
            if hard is not None:  # one mined negative per pair: a sentence of the same book that looks like x_i
                texts = [pairs.sentences[draw.choice(hard[pairs.pairs[i][0]])] for i in chosen]
                h = encoder(dict(encoder.preprocess(texts)))["sentence_embedding"].float()
                value = value + contrastive_loss(x, y, tau=args.memory_tau, extra_negatives=h)
            if args.memory:
                value = value + _memory_contrastive(x, y, memory, args.memory_tau)
                memory = (torch.cat([x.detach(), memory[0]])[: args.memory],
                          torch.cat([y.detach(), memory[1]])[: args.memory])  # fmt: skip
            if anchor is not None and args.replay_uniform:
                value = value + _anchor_and_spread(encoder, anchor, step, args.replay_uniform)
            elif anchor is not None:
                value = value + anchor(encoder, step)
        value.backward()
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
        optimizer.step()
        if ema is not None:
            with torch.no_grad():
                for key, weight in encoder.state_dict().items():
                    ema[key].lerp_(weight.float(), 1 - args.ema)
        optimizer.zero_grad()
        scheduler.step()
        seconds += time.perf_counter() - started
        if step % 10 == 0:
            print(f"step {step} loss {value.item():.4f} {seconds:.0f}s", flush=True)
        if step in args.eval_at:
            evaluate(step)
    if args.save:  # for weight averages across probes (benchmarks/text_soup.py)
        encoder.save(str(out / "model"))


def _anchor_and_spread(encoder, anchor, step: int, weight: float):
    r"""The replay anchor plus a uniformity term over the same replay rows, from one forward pass:
    :math:`\mu \cdot \frac1R \sum_i \lVert f(s_i) - f_0(s_i) \rVert^2 + w \cdot L_{uniform}(f(s_1..s_R); t=2)`.
    Why: fine-tuning on novels crowds other domains' text together (the Factbook's uniformity goes from −3.43 to
    about −3.2); spreading the general-English replay sentences asks the model to keep such text apart."""
    from hsrl.losses import uniform_loss

    z, targets = anchor.embed(encoder, step)
    return anchor.penalty(z, targets) + weight * uniform_loss(z, t=2.0)


def _add_low_rank_adapters(encoder, rank: int) -> None:
    r"""Freeze the transformer and give each of its linear maps a trainable low-rank update (LoRA, Hu et al. 2022):
    :math:`h = W x + b + \tfrac{\alpha}{r} B A x`, ``A`` (r × in) drawn small, ``B`` (out × r) zero, so training
    starts at the untouched model; α = 2r. Why: a low-rank update learns less and forgets less (Biderman et al.
    2024), which is what the second-domain bar asks of a fine-tune."""
    import torch
    from torch import nn

    class LowRank(nn.Module):
        def __init__(self, base: nn.Linear) -> None:
            super().__init__()
            self.base = base
            self.down = nn.Parameter(torch.randn(rank, base.in_features) / base.in_features**0.5)
            self.up = nn.Parameter(torch.zeros(base.out_features, rank))

        def forward(self, x):
            return self.base(x) + 2.0 * (x @ self.down.T) @ self.up.T

    for p in encoder.parameters():
        p.requires_grad_(False)
    for layer in encoder[0].auto_model.encoder.layer:
        for parent in (layer.attention.self, layer.attention.output, layer.intermediate, layer.output):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, LowRank(child))


def _parameter_groups(encoder, lr: float, decay: float) -> list[dict]:
    """Adam's parameter groups: one at ``lr``, or (``decay`` < 1, layer-wise decay) the top transformer layer and
    what follows it at ``lr``, each layer below at ``decay`` times the one above, the embeddings lowest."""
    trainable = [(name, p) for name, p in encoder.named_parameters() if p.requires_grad]
    if decay >= 1.0:
        return [{"params": [p for _, p in trainable], "lr": lr}]
    depth = len(encoder[0].auto_model.encoder.layer)
    groups: dict[int, list] = {}
    for name, p in trainable:
        if ".embeddings." in name:
            level = 0
        elif ".encoder.layer." in name:
            level = int(name.split(".encoder.layer.")[1].split(".")[0]) + 1
        else:
            level = depth
        groups.setdefault(level, []).append(p)
    return [{"params": ps, "lr": lr * decay ** (depth - min(level, depth))} for level, ps in sorted(groups.items())]


def _hard_negative_candidates(encoder, pairs, k: int, ratio: float | None, any_book: bool) -> dict[int, list[int]]:
    """:func:`hsrl.data.hard_negatives.mine_hard_negatives` with the *starting* model's embeddings (mined once,
    before training, and kept in ``RUNS/start_embeddings.pt`` for the next probe over the same sentences); a first
    sentence with no candidate at all (none in a large book) gets one fixed sentence."""
    import torch

    from hsrl.data.hard_negatives import mine_hard_negatives
    from hsrl.models.text import encode_texts

    # Keyed by the sentences themselves: --extra-text or --oracle embed other text, which must not reuse the cache.
    digest = hashlib.sha256("\n".join(pairs.sentences).encode()).hexdigest()
    cache = RUNS / "start_embeddings.pt"
    saved = torch.load(cache) if cache.is_file() else {}
    z = saved.get("embeddings") if saved.get("sentences_sha256") == digest else None
    if z is None:
        z = encode_texts(encoder, pairs.sentences)
        torch.save({"sentences_sha256": digest, "embeddings": z}, cache)
    # any_book: one group for all, so a sentence's nearest may come from any novel (its own included)
    groups = ["all"] * len(pairs) if any_book else pairs.groups
    found = mine_hard_negatives(z, pairs.sentences, pairs.pairs, groups, k, max_positive_ratio=ratio)
    return {i: c or [pairs.pairs[0][1]] for i, c in found.items()}


def _memory_contrastive(x, y, memory, tau: float):
    r"""Symmetric InfoNCE with in-batch *and* remembered negatives (a cross-batch memory):
    :math:`\tfrac12[\mathrm{CE}(x Y^\top/\tau) + \mathrm{CE}(y X^\top/\tau)]`, ``Y`` = this batch's ``y`` rows then
    the memory's, ``X`` likewise; row ``i``'s positive is column ``i``. With an empty memory it is the loss's own
    ``contrastive`` term."""
    import torch
    import torch.nn.functional as F

    target = torch.arange(len(x))
    forward = F.cross_entropy(x @ torch.cat([y, memory[1]]).T / tau, target)
    backward = F.cross_entropy(y @ torch.cat([x, memory[0]]).T / tau, target)
    return (forward + backward) / 2


#: Capitalised words that are not a character's or a place's name: titles, days, months and the like.
# fmt: off
NOT_NAMES = frozenset([
    "Mr", "Mrs", "Miss", "Sir", "Lady", "Lord", "Colonel", "Captain", "Admiral", "Dr", "Rev", "General", "Major",
    "Madam", "Ma", "God", "Christmas", "England", "English", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday",
    "Saturday", "Sunday", "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
])
# fmt: on


def _name_swapper(sentences: list[str], draw: random.Random):
    """``swap(a, b)``: the pair with each proper name replaced by a random one, the same in both sentences.

    Names are the capitalised words seen mid-sentence at least 10 times and (almost) never in lower case. Why: a
    fine-tune on five novels can learn their characters' names as what links neighbours, which says nothing about
    a sixth novel's characters; swapping names keeps "the same name in both" and drops "this name".
    """
    import collections
    import re

    capitalised, lower = collections.Counter(), collections.Counter()
    for sentence in sentences:
        words = re.findall(r"[A-Za-z]+", sentence)
        for k, word in enumerate(words):
            if word[:1].isupper() and word[1:].islower() and k > 0:
                capitalised[word] += 1
            elif word.islower():
                lower[word] += 1
    pool = sorted(w for w, c in capitalised.items() if c >= 10 and lower[w.lower()] <= 0.05 * c and w not in NOT_NAMES)
    pattern = re.compile(r"\b(" + "|".join(pool) + r")\b")

    def swap(a: str, b: str) -> tuple[str, str]:
        present = sorted(set(pattern.findall(a)) | set(pattern.findall(b)))
        if not present:
            return a, b
        mapping = dict(zip(present, draw.sample(pool, len(present)), strict=True))
        return tuple(pattern.sub(lambda m: mapping[m.group(1)], text) for text in (a, b))  # type: ignore[return-value]

    return swap


def table() -> list[str]:
    untouched_log = RUNS / UNTOUCHED_PROBE / "log.json"
    if not untouched_log.is_file():
        raise SystemExit(f"no {untouched_log}: run `python {Path(__file__).name} {UNTOUCHED_PROBE} --steps 0 "
                         "--eval-at 0` first (the untouched model, on the same sets)")  # fmt: skip
    untouched = json.loads(untouched_log.read_text())["log"][0]
    lines = [
        "# Text objective probe: MiniLM on Austen, held-out metrics along the run",
        "",
        "Each probe: `python benchmarks/text_objective_probe.py NAME --loss LOSS --lr LR [--schedule cosine] "
        "[--batch B] [--seed S] [--same-book] [--replay wordnet|pydoc|PATH --replay-mode anchor|pooled "
        "--replay-weight MU --replay-sentences R] [--book-mix F] [--context-size K] [--min-words W] [--swap-names] "
        "[--freeze-layers N] [--ema D] [--extra-text FILE ...] [--memory M --memory-tau T] [--llrd D] [--no-dropout] "
        "[--oracle] [--hard-negatives K --hn-positive-ratio R --hn-any-book] [--replay-uniform W] [--lora R] "
        "--steps N --eval-at ...` (two at a time, one intra-op thread "
        "each, on 2 cores); this table: `python benchmarks/text_objective_probe.py --table --output FILE`.",
        "",
        "| probe | objective | pairs | replay | lr | step | Persuasion recall@10 | align | uniform "
        "| Factbook recall@10 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| untouched MiniLM (probe `{UNTOUCHED_PROBE}`) | | | | | 0 | {untouched['recall@10']:.4f} "
        f"| {untouched['align']:.3f} "
        f"| {untouched['uniform']:.3f} | {untouched['factbook_recall@10']:.4f} |",
    ]
    for path in sorted(RUNS.glob("*/log.json")):
        if path == untouched_log:
            continue
        data = json.loads(path.read_text())
        a = data["args"]
        replay = "none" if not a["replay"] else f"{a['replay']} {a['replay_mode']} ×{a['replay_sentences']}"
        if a["replay"] and a["replay_mode"] == "anchor":
            replay += f", μ = {a['replay_weight']:g}"
        if a.get("replay_uniform"):
            replay += f" + uniform:{a['replay_uniform']:g} over them"
        batch = "" if a.get("batch", 128) == 128 else f", {a['batch']} a step"
        schedule = ", cosine" if a.get("schedule") == "cosine" else ""
        if a.get("oracle"):
            batch += ", **from Persuasion itself (oracle)**"
        if a.get("swap_names"):
            batch += ", names swapped"
        if a.get("book_mix"):
            batch += f", {a['book_mix']:.0%} of it from one book"
        if a.get("context_size", 1) > 1:
            batch += f", ±{a['context_size']} neighbours"
        if a.get("min_words", 1) > 1:
            batch += f", sentences of ≥ {a['min_words']} words"
        if a.get("extra_text"):
            batch += " + " + " + ".join(Path(f).name.split(".")[0] for f in a["extra_text"])
        if a.get("llrd", 1.0) < 1.0:
            schedule += f" at the top layer, ×{a['llrd']:g} a layer down"
        objective = (
            a["loss"]
            if not a.get("memory")
            else (f"{a['loss']} + memory contrastive, tau={a['memory_tau']:g}, {a['memory']} remembered rows")
        )
        if a.get("hard_negatives"):
            objective = (f"{a['loss']} + contrastive with a mined negative a pair (from the top "
                         f"{a['hard_negatives']}), tau={a['memory_tau']:g}")  # fmt: skip
            if a.get("hn_any_book"):
                objective += ", mined from every book"
            if a.get("hn_positive_ratio"):
                objective += f", mined below {a['hn_positive_ratio']:g} × the pair's score"
        if a.get("no_dropout"):
            schedule += ", dropout off"
        if a.get("lora"):
            schedule += f", rank-{a['lora']} adapters (LoRA) of a frozen model"
        if a.get("freeze_layers"):
            schedule += f", embeddings + {a['freeze_layers']} layers frozen"
        rows = []
        for row in data["log"]:
            rows.append((a["name"], row))
            if "ema" in row:
                rows.append((f"{a['name']} (EMA {a['ema']:g})", {**row, **row["ema"]}))
        for name, row in rows:
            worse = {k: "" if row[k] < untouched[k] else " ✗" for k in ("align", "uniform")}
            recall, factbook = row["recall@10"], row["factbook_recall@10"]
            lines.append(
                f"| {name} | `{objective}` | {'same-book' if a['same_book'] else 'shuffled'}{batch} | {replay} "
                f"| {a['lr']:g}{schedule} | {row['step']} | {recall:.4f} ({recall / untouched['recall@10']:.2f}×) "
                f"| {row['align']:.3f}{worse['align']} | {row['uniform']:.3f}{worse['uniform']} "
                f"| {factbook:.4f} ({factbook / untouched['factbook_recall@10']:.2f}×) |"
            )
    return [*lines, "", NOTES]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?")
    parser.add_argument("--table", action="store_true", help="print every finished probe as one table")
    parser.add_argument("--output", default=None, help="--table: also write it to this file")
    parser.add_argument("--loss", default="align:2,alpha=2 + uniform:1,t=2")
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument(
        "--schedule", choices=("constant", "cosine"), default="constant", help="cosine: from --lr down to 0 at --steps"
    )
    parser.add_argument("--batch", type=int, default=128, help="examples per step: pairs + replay sentences")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--eval-at", type=int, nargs="*", default=[40, 80])
    parser.add_argument("--same-book", action="store_true")
    parser.add_argument("--book-mix", type=float, default=0.0, help="share of each batch's pairs from one book")
    parser.add_argument("--context-size", type=int, default=1, help="neighbours within this many sentences pair up")
    parser.add_argument("--min-words", type=int, default=1, help="drop pairs with a sentence of fewer words")
    parser.add_argument("--extra-text", nargs="*", default=[], help="more books (text files) to train on")
    parser.add_argument(
        "--memory",
        type=int,
        default=0,
        help="add a contrastive term whose negatives include the last M steps' rows (0: none)",
    )
    parser.add_argument("--memory-tau", type=float, default=0.05)
    parser.add_argument("--hard-negatives", type=int, default=0,
                        help="add a contrastive term with one mined same-book negative per pair, drawn from the K "
                        "nearest (starting model); its temperature is --memory-tau")  # fmt: skip
    parser.add_argument(
        "--hn-positive-ratio",
        type=float,
        default=None,
        help="mine only candidates scoring at most this share of the pair's own score",
    )
    parser.add_argument("--hn-any-book", action="store_true", help="mine hard negatives from every book")
    parser.add_argument(
        "--replay-uniform",
        type=float,
        default=0.0,
        help="add this weight times uniformity over each step's replay sentences",
    )
    parser.add_argument("--save", action="store_true", help="save the trained model in NAME/model")
    parser.add_argument("--lora", type=int, default=0, help="train rank-R adapters of a frozen model (0: all)")
    parser.add_argument("--llrd", type=float, default=1.0, help="layer-wise lr decay (1: one lr for all)")
    parser.add_argument("--no-dropout", action="store_true", help="train with dropout off")
    parser.add_argument("--oracle", action="store_true", help="train on Persuasion itself (a ceiling, not a setting)")
    parser.add_argument("--swap-names", action="store_true", help="replace each pair's names by random ones")
    parser.add_argument("--ema", type=float, default=0.0, help="also evaluate an EMA of the weights (decay)")
    parser.add_argument("--freeze-layers", type=int, default=0, help="freeze the embeddings and the first N layers")
    parser.add_argument("--replay", default=None, help="wordnet, pydoc or a path (hsrl.replay)")
    parser.add_argument("--replay-mode", choices=("anchor", "pooled"), default="anchor")
    parser.add_argument("--replay-sentences", type=int, default=32)
    parser.add_argument("--replay-weight", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.table:
        publish(table(), args.output)
        return 0
    if not args.name:
        parser.error("name a probe, or pass --table")
    probe(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
