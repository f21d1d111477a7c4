"""Weight averages of fine-tunes from one start ("model soups"), evaluated as the objective probe evaluates.

    python benchmarks/text_objective_probe.py NAME_s0 --save --seed 0 ...   # one run per seed, same settings
    python benchmarks/text_soup.py runs/text_objective_probe/NAME_s{0,1,2,3}/model \\
        --output benchmarks/results/text_soup.md

Every model folder named is evaluated alone, and then the uniform averages of its first 2, 3, … n weights,
:math:`\\bar\\theta = \\frac1n \\sum_{k=1}^{n} \\theta_k` (a "uniform soup", Wortsman et al., ICML 2022), with the
untouched all-MiniLM-L6-v2 as the baseline, all in one run: *Persuasion* next-sentence recall@10, alignment and
uniformity, and the Factbook's recall@10 (:func:`hsrl.evaluation.text.evaluate_text_encoder`, float32, all
sentences, 48 tokens as trained).

Why: runs with one setting and different seeds move away from the start along a shared direction (what the novels
teach) plus a seed's own (its draws: recall@10 of one setting spans 1.27-1.42× over four seeds here). Averaging
keeps the first and shrinks the second, which is the noise a single run's number carries; fine-tunes from one
pretrained start stay in one basin, so their average is itself a good model rather than a blur.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from _report import publish


def averaged_state(states: list[dict]) -> dict:
    """The element-wise mean of the models' weights (every model shares the start's architecture)."""
    if any(state.keys() != states[0].keys() for state in states):
        raise SystemExit("the models do not share one architecture: their weights cannot be averaged")
    return {
        key: (sum(state[key].double() for state in states) / len(states)).to(states[0][key].dtype)
        if states[0][key].is_floating_point()
        else states[0][key]
        for key in states[0]
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="sentence-transformers folders fine-tuned from the same start")
    parser.add_argument("--output", default=None, help="also write the table here")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    missing = [m for m in args.models if not Path(m, "modules.json").is_file()]
    if missing:
        raise SystemExit(f"not a sentence-transformers folder: {missing[0]}")
    if len(args.models) < 2:
        raise SystemExit("name at least two models to average")

    import torch
    from sentence_transformers import SentenceTransformer

    from hsrl.data.text import austen_splits, load_factbook
    from hsrl.evaluation.text import evaluate_text_encoder
    from hsrl.models.text import build_text_encoder

    torch.set_num_threads(args.threads)
    _, heldout = austen_splits()
    factbook = load_factbook()
    encoder = build_text_encoder("minilm", max_seq_length=48, device="cpu")

    def evaluate() -> dict[str, float]:
        return evaluate_text_encoder(encoder, heldout, eval_sets={"factbook": factbook})

    rows = [("untouched MiniLM", evaluate())]
    # Each folder is read once; the averages below reuse these weights.
    states = [SentenceTransformer(folder, device="cpu").state_dict() for folder in args.models]
    for folder, state in zip(args.models, states, strict=True):
        encoder.load_state_dict(state)
        rows.append((Path(folder).parent.name, evaluate()))
    for n in range(2, len(states) + 1):
        encoder.load_state_dict(averaged_state(states[:n]))
        rows.append((f"average of the first {n}", evaluate()))
        print(rows[-1], flush=True)

    start = rows[0][1]
    lines = [
        "# Weight averages (uniform soups) of text fine-tunes from one start",
        "",
        f"Command: `python benchmarks/text_soup.py {' '.join(args.models)}` (2 CPU cores).",
        "",
        "| model | Persuasion recall@10 | align | uniform | Factbook recall@10 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, m in rows:
        worse = {k: "" if m[k] < start[k] or m is start else " ✗" for k in ("align", "uniform")}
        lines.append(
            f"| {name} | {m['recall@10']:.4f} ({m['recall@10'] / start['recall@10']:.2f}×) "
            f"| {m['align']:.3f}{worse['align']} | {m['uniform']:.3f}{worse['uniform']} "
            f"| {m['factbook_recall@10']:.4f} ({m['factbook_recall@10'] / start['factbook_recall@10']:.2f}×) |"
        )
    publish(lines, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
