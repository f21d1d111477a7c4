"""hsrl.index against the same raw FAISS calls: build time, queries per second and recall@10, side by side.

Random unit vectors (the hardest case for approximate search: no cluster structure) and separate random unit
queries. For each index type the raw side builds exactly the structure hsrl.index builds (IndexIDMap2 for Flat
and HNSW, an IVF with native ids and a hash-table direct map), so the difference is the wrapper's own cost:
input validation (one norm pass), id checks, the lock and the output conversion. Recall@10 is against the
exact Flat results. Search timings are the best of ``--repeats`` alternating runs (the machine is shared).

    python benchmarks/index.py                        # 1M x 128, 10k queries
    python benchmarks/index.py --n 200000 --output benchmarks/results/index.md
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hsrl.index import VectorIndex, recall_at_k


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def raw_index(kind: str, dim: int, args: argparse.Namespace) -> faiss.Index:
    """The FAISS structure hsrl.index builds for ``kind``, made with plain FAISS calls."""
    if kind == "IVF":
        index = faiss.index_factory(dim, f"IVF{args.nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        return index
    return faiss.IndexIDMap2(faiss.index_factory(dim, factory(kind, args), faiss.METRIC_INNER_PRODUCT))


def factory(kind: str, args: argparse.Namespace) -> str:
    return {"Flat": "Flat", "IVF": f"IVF{args.nlist},Flat", "HNSW": f"HNSW{args.hnsw_m}"}[kind]


def set_raw_parameters(index: faiss.Index, kind: str, args: argparse.Namespace) -> None:
    if kind == "IVF":
        index.nprobe = args.nprobe
    elif kind == "HNSW":
        faiss.downcast_index(index.index).hnsw.efSearch = args.ef_search


def build_both(kind: str, data: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    ids = np.arange(len(data), dtype=np.int64)

    def build_raw() -> faiss.Index:
        index = raw_index(kind, data.shape[1], args)
        if not index.is_trained:
            index.train(data)
        index.add_with_ids(data, ids)
        set_raw_parameters(index, kind, args)
        return index

    def build_hsrl() -> VectorIndex:
        index = VectorIndex.create(data.shape[1], factory(kind, args), gpu="never")
        index.add(data)  # ids 0..n-1, assigned
        index.set_search_parameters(**({"nprobe": args.nprobe} if kind == "IVF" else
                                       {"efSearch": args.ef_search} if kind == "HNSW" else {}))  # fmt: skip
        return index

    raw_seconds, raw = timed(build_raw)
    hsrl_seconds, wrapped = timed(build_hsrl)
    return {"raw": raw, "hsrl": wrapped, "build_raw": raw_seconds, "build_hsrl": hsrl_seconds}


def search_both(built: dict[str, Any], queries: np.ndarray, k: int, repeats: int) -> dict[str, Any]:
    raw_times, hsrl_times = [], []
    for _ in range(repeats):  # alternate, so both sides see the same machine load
        seconds, (_, raw_ids) = timed(lambda: built["raw"].search(queries, k))
        raw_times.append(seconds)
        seconds, (_, hsrl_ids) = timed(lambda: built["hsrl"].search(queries, k))
        hsrl_times.append(seconds)
    return {"raw_ids": raw_ids, "hsrl_ids": hsrl_ids, "qps_raw": len(queries) / min(raw_times),
            "qps_hsrl": len(queries) / min(hsrl_times)}  # fmt: skip


def single_query_qps(built: dict[str, Any], queries: np.ndarray, k: int, repeats: int) -> tuple[float, float]:
    """Queries per second when each call carries one query (the service's small-batch case)."""
    raw_best = hsrl_best = math.inf
    for _ in range(repeats):
        raw_best = min(raw_best, timed(lambda: [built["raw"].search(q[None], k) for q in queries])[0])
        hsrl_best = min(hsrl_best, timed(lambda: [built["hsrl"].search(q[None], k) for q in queries])[0])
    return len(queries) / raw_best, len(queries) / hsrl_best


def overhead(raw: float, wrapped: float) -> str:
    return f"{100 * (wrapped - raw) / raw:+.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--nlist", type=int, default=None, help="IVF lists (default: power of two near 4*sqrt(n))")
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-search", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--single-queries", type=int, default=1000, help="one-query calls timed per index")
    parser.add_argument("--kinds", default="Flat,IVF,HNSW")
    parser.add_argument("--output", type=Path, default=None, help="write the markdown table here")
    args = parser.parse_args()
    args.nlist = args.nlist or 2 ** round(math.log2(4 * math.sqrt(args.n)))

    data, queries = unit_rows(args.n, args.dim, seed=0), unit_rows(args.queries, args.dim, seed=1)
    rows, exact = [], None
    for kind in ["Flat"] + [k for k in args.kinds.split(",") if k != "Flat"]:  # Flat first: the ground truth
        built = build_both(kind, data, args)
        found = search_both(built, queries, args.k, args.repeats if kind != "Flat" else 1)
        exact = found["raw_ids"] if kind == "Flat" else exact
        single = single_query_qps(built, queries[: args.single_queries], args.k, args.repeats)
        rows.append((factory(kind, args), built, found, single, exact))
        print(f"{kind}: done", file=sys.stderr, flush=True)
        if kind not in args.kinds.split(","):
            rows.pop()

    lines = [
        f"`python benchmarks/index.py {' '.join(sys.argv[1:])}` — {args.n:,} × {args.dim} random unit vectors, "
        f"{args.queries:,} queries, k = {args.k}; IVF nprobe = {args.nprobe}, HNSW efSearch = {args.ef_search}; "
        f"faiss {faiss.__version__}, {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"{faiss.omp_get_max_threads()} FAISS threads. QPS: best of {args.repeats} alternating runs "
        "(Flat: one run), all queries in one call; single-query QPS: one query per call.",
        "",
        "| index | build s (faiss) | build s (hsrl) | build overhead | QPS (faiss) | QPS (hsrl) | search overhead "
        "| 1-query QPS (faiss) | 1-query QPS (hsrl) | 1-query overhead | recall@10 (faiss) | recall@10 (hsrl) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, built, found, (single_raw, single_hsrl), truth in rows:
        recall_raw, recall_hsrl = (
            recall_at_k(found["raw_ids"], truth, args.k),
            recall_at_k(found["hsrl_ids"], truth, args.k),
        )
        lines.append(
            f"| {name} | {built['build_raw']:.2f} | {built['build_hsrl']:.2f} "
            f"| {overhead(built['build_raw'], built['build_hsrl'])} | {found['qps_raw']:,.0f} "
            f"| {found['qps_hsrl']:,.0f} | {overhead(1 / found['qps_raw'], 1 / found['qps_hsrl'])} "
            f"| {single_raw:,.0f} | {single_hsrl:,.0f} | {overhead(1 / single_raw, 1 / single_hsrl)} "
            f"| {recall_raw:.4f} | {recall_hsrl:.4f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text("# hsrl.index vs raw FAISS\n\n" + table + "\n")


if __name__ == "__main__":
    main()
