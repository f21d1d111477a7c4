"""Global batch size with gradient caching: quality at equal compute, and peak memory per step.

    python benchmarks/text_batch_size.py memory      # peak RSS of one step, with and without caching
    python benchmarks/text_batch_size.py quality     # recipe runs at equal compute (same number of pairs)

``memory``: each configuration runs one ``hsrl.training.fit`` step of all-MiniLM-L6-v2
(Austen neighbour pairs, 48 tokens, align + uniform) in a fresh process and reports that
process's peak resident memory (``ru_maxrss``) and the step's seconds. Without caching the
activations of the whole batch are held at once; with ``--cache-chunk-size`` only one chunk's.
A plain step whose memory, extrapolated linearly from the smaller plain steps, would not fit in
the machine's available memory is reported as such instead of being run.

``quality``: ``recipes/bookcorpus.py`` fine-tunes MiniLM on the same number of pairs at each
global batch size (so the same compute: fewer, larger steps), with caching in chunks of 64
for batches above 64, and reports held-out alignment, uniformity and next-sentence recall@10 on
*Persuasion* and on the Factbook set. Results are written as Markdown to ``--output``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _report import publish

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
CHUNK = 64


def probe(batch: int, chunk: int | None) -> None:
    """One fit step in this process; prints a JSON line with peak RSS (MiB) and seconds."""
    import resource
    import tempfile

    import torch

    from hsrl.data.text import SentencePairDataset, austen_splits
    from hsrl.losses import HypersphereLoss
    from hsrl.models.text import build_text_encoder, pair_collate, pair_encoder
    from hsrl.training import TrainConfig, fit, make_dataloader, training_session

    torch.manual_seed(0)
    encoder = build_text_encoder("minilm", max_seq_length=48)
    dataset = SentencePairDataset.from_documents(austen_splits()[0])
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(output_dir=out, batch_size=batch, max_steps=1, optimizer="adam", lr=1e-5,
                             cache_chunk_size=chunk, checkpoint_every=None, log_with="none",
                             progress=False)  # fmt: skip
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        start = time.perf_counter()
        with training_session(config) as accelerator:
            loader = make_dataloader(dataset, config, collate_fn=pair_collate(encoder))
            fit(encoder, HypersphereLoss("align:1 + uniform:1"), loader, config, accelerator=accelerator,
                encode=pair_encoder(encoder))  # fmt: skip
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # On a GPU the step runs on it (Accelerate picks the device); its peak is what bounds the batch there.
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    print(json.dumps({"batch": batch, "chunk": chunk, "peak_mib": peak, "before_mib": before, "seconds": seconds,
                      "gpu_peak_mib": gpu_peak}))  # fmt: skip


def available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def memory(batches: list[int], output: Path) -> None:
    rows, plain = [], []
    for batch in batches:
        for chunk in (None, CHUNK):
            if chunk is not None and chunk >= batch:
                continue
            if chunk is None and len(plain) >= 2:
                (b0, m0), (b1, m1) = plain[-2], plain[-1]
                predicted = m1 + (m1 - m0) / (b1 - b0) * (batch - b1)
                if predicted > 0.8 * available_mib():
                    rows.append(f"| {batch} | none | not run: about {predicted / 1024:.1f} GiB predicted "
                                f"(> 80% of {available_mib() / 1024:.1f} GiB available) | | |")  # fmt: skip
                    continue
            cmd = [sys.executable, __file__, "probe", "--batch", str(batch)] + (
                ["--chunk", str(chunk)] if chunk else []
            )
            done = subprocess.run(cmd, env={**os.environ, **OFFLINE}, capture_output=True, text=True)
            if done.returncode != 0:
                rows.append(f"| {batch} | {chunk or 'none'} | failed: {done.stderr.strip().splitlines()[-1:]} | | |")
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            if chunk is None:
                plain.append((batch, result["peak_mib"]))
            gpu = result.get("gpu_peak_mib")
            rows.append(f"| {batch} | {chunk or 'none'} | {result['peak_mib'] / 1024:.2f} | {result['seconds']:.0f} | "
                        + (f"{gpu / 1024:.2f} |" if gpu is not None else "no GPU |"))  # fmt: skip
            print(rows[-1], flush=True)
    publish(
        [
            "# Peak memory of one training step: all-MiniLM-L6-v2, 48 tokens, with and without gradient caching",
            "",
            f"Command: `python benchmarks/text_batch_size.py memory` ({time.strftime('%Y-%m-%d')}, 2 CPU cores). "
            "Peak resident memory of a fresh process that loads the model and the corpus and runs one step "
            "(the model, the Austen corpus and Python included).",
            "",
            "| global batch (pairs) | cache chunk | peak RSS (GiB) | step + set-up s | peak GPU memory (GiB) |",
            "| --- | --- | --- | --- | --- |",
            *rows,
        ],
        output,
    )


def quality(batches: list[int], pairs: int, output: Path, runs_dir: Path, parallel: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def run(batch: int) -> dict:
        folder = runs_dir / f"batch{batch}"
        if not (folder / "metrics.json").is_file():
            steps = max(1, pairs // batch)
            cmd = [sys.executable, str(ROOT / "recipes" / "bookcorpus.py"), "--dataset", "austen", "--model", "minilm",
                   "--loss", "align:1,alpha=2 + uniform:1,t=2", "--lr", "1e-4", "--batch-size", str(batch),
                   "--max-steps", str(steps), "--max-seq-length", "48", "--checkpoint-every", "100000",
                   "--log-with", "none", "--no-progress", "--output-dir", str(folder)]  # fmt: skip
            if batch > CHUNK:
                cmd += ["--cache-chunk-size", str(CHUNK)]
            env = {**os.environ, **OFFLINE, "OMP_NUM_THREADS": str(max(1, 2 // parallel))}
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                return {"batch": batch, "error": done.stderr.strip().splitlines()[-1:]}
        return {"batch": batch, **json.loads((folder / "metrics.json").read_text())["summary"]}

    with ThreadPoolExecutor(parallel) as pool:
        results = list(pool.map(run, batches))
    rows = []
    for r in results:
        if "error" in r:
            rows.append(f"| {r['batch']} | error {r['error']} | | | | | | |")
            continue
        rows.append(
            f"| {r['batch']} | {r['steps']:.0f} | {r['recall@10']:.4f} | {r['align']:.3f} | {r['uniform']:.3f} "
            f"| {r['factbook_recall@10']:.4f} | {r['factbook_align']:.3f} | {r['factbook_uniform']:.3f} |"
        )
    base = next((r for r in results if "baseline_recall@10" in r), None)
    if base:
        rows.append(
            f"| untouched MiniLM | 0 | {base['baseline_recall@10']:.4f} | {base['baseline_align']:.3f} "
            f"| {base['baseline_uniform']:.3f} | {base['baseline_factbook_recall@10']:.4f} "
            f"| {base['baseline_factbook_align']:.3f} | {base['baseline_factbook_uniform']:.3f} |"
        )
    publish(
        [
            f"# Global batch size at equal compute ({pairs} pairs each): align:1 + uniform:1 (t=2), lr 1e-4",
            "",
            f"Command: `python benchmarks/text_batch_size.py quality --pairs {pairs}` ({time.strftime('%Y-%m-%d')}, "
            f"2 CPU cores, {parallel} runs at a time). Batches above {CHUNK} pairs use `--cache-chunk-size {CHUNK}`.",
            "",
            "| global batch | steps | Persuasion recall@10 | align | uniform | Factbook recall@10 | align | uniform |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            *rows,
        ],
        output,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["memory", "quality", "probe"])
    parser.add_argument("--batch", type=int, help="probe: the batch")
    parser.add_argument("--chunk", type=int, help="probe: the cache chunk")
    parser.add_argument("--batches", type=int, nargs="*")
    parser.add_argument("--pairs", type=int, default=4096, help="quality: pairs seen by every run")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--runs-dir", default="runs/text_batch_size")
    parser.add_argument("--output")
    args = parser.parse_args()
    if args.mode == "probe":
        probe(args.batch, args.chunk)
    elif args.mode == "memory":
        memory(args.batches or [64, 256, 1024, 4096], Path(args.output or "benchmarks/results/text_batch_memory.md"))
    else:
        quality(
            args.batches or [32, 128, 512, 2048],
            args.pairs,
            Path(args.output or "benchmarks/results/text_batch_size.md"),
            Path(args.runs_dir),
            args.parallel,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
