"""``hsrl index build|search|eval``: FAISS indexes of export folders or ``.npy`` rows (the library is
:mod:`hsrl.index`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hsrl.backends import BACKENDS
from hsrl.cli.harness import OneLineArgumentParser, UsageError, first_line, run_cli
from hsrl.index import (
    GPU_MODES,
    VectorIndex,
    build_index,
    check_tuning_targets,
    check_unit_rows,
    exact_search,
    measure_recall,
)

__all__ = ["cli_main", "load_vectors"]


def load_vectors(source: str) -> tuple[np.ndarray, np.ndarray | None, list[dict[str, Any]] | None]:
    """``(vectors, ids or None, metadata or None)`` from an export folder or a ``.npy`` file."""
    path = Path(source)
    if path.is_dir():
        from hsrl.export import index_inputs, load_embeddings  # lazy: export pulls in pyarrow

        return index_inputs(*load_embeddings(path))
    if path.suffix != ".npy":
        raise ValueError(f"{source}: expected an hsrl export folder or a .npy file")
    if not path.is_file():
        raise ValueError(f"{source}: no such file")
    try:
        return np.load(path, allow_pickle=False), None, None
    except (ValueError, OSError) as error:
        raise ValueError(f"{source}: not a readable .npy file ({first_line(error)})") from None


def _parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(prog="hsrl index", description="Build, search and evaluate FAISS indexes.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineArgumentParser)
    build = commands.add_parser("build", help="build an index from export shards or a .npy file")
    build.add_argument("--input", required=True, help="hsrl export folder or (n, d) .npy of unit rows")
    build.add_argument("--output", required=True, help="index folder to write")
    build.add_argument("--factory", default="auto", help="faiss.index_factory string or 'auto' (default)")
    build.add_argument("--memory-budget-mb", type=float, default=None, help="budget for 'auto' (MiB)")
    build.add_argument("--recall-k", type=int, default=10, help="k of the recall measured for non-exact indexes")
    build.add_argument("--recall-queries", type=int, default=1000, help="data rows used as recall queries")
    _search_parameter_flags(build)
    build.add_argument("--target-recall", type=float, default=None,
                       help="tune nprobe/efSearch: fastest value with recall@k ≥ R on held-out queries")  # fmt: skip
    build.add_argument("--max-query-ms", type=float, default=None,
                       help="tune nprobe/efSearch: the most accurate value whose ms/query is ≤ T")  # fmt: skip
    build.add_argument("--tune-queries", default=None,
                       help=".npy of held-out query rows for tuning (default: --recall-queries data rows, "
                       "kept out of IVF/PQ training)")  # fmt: skip
    search = commands.add_parser("search", help="k nearest neighbours of query vectors or a text")
    search.add_argument("--index", required=True)
    search.add_argument("--vectors", help=".npy of (q, d) unit query rows")
    search.add_argument("--text", action="append", help="a query text (repeatable); needs --model")
    search.add_argument("--model", help="model folder (or packaged name / Hub id) that encodes --text")
    search.add_argument("--backend", default="torch", choices=BACKENDS, help="what runs --model (hsrl.backends)")
    search.add_argument("--k", type=int, default=10)
    search.add_argument("--mmap", action="store_true", help="memory-map the index read-only")
    _search_parameter_flags(search)
    evaluate = commands.add_parser("eval", help="recall@k against exact search, and timing")
    evaluate.add_argument("--index", required=True)
    evaluate.add_argument("--data", help="the vectors the index was built from (export folder or .npy); "
                          "default: the index's own vectors (exact types only)")  # fmt: skip
    evaluate.add_argument("--queries", help=".npy of query rows (default: a sample of the data)")
    evaluate.add_argument("--num-queries", type=int, default=1000)
    evaluate.add_argument("--k", type=int, default=10)
    _search_parameter_flags(evaluate)
    for sub in (build, search, evaluate):
        sub.add_argument("--gpu", choices=GPU_MODES, default="auto")
    return parser


def _search_parameter_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nprobe", type=int, default=None, help="IVF lists visited per query")
    parser.add_argument("--ef-search", type=int, default=None, help="HNSW search breadth")


def _apply_search_flags(index: VectorIndex, args: argparse.Namespace) -> None:
    chosen = {"nprobe": args.nprobe, "efSearch": args.ef_search}
    index.set_search_parameters(**{name: value for name, value in chosen.items() if value is not None})


def _check_tuning_flags(args: argparse.Namespace) -> None:
    prog = "hsrl index build: error:"
    try:
        check_tuning_targets(args.target_recall, args.max_query_ms, names=("--target-recall", "--max-query-ms"))
    except ValueError as error:
        raise UsageError(f"{prog} {error}") from None
    tuning = args.target_recall is not None or args.max_query_ms is not None
    if tuning and (args.nprobe is not None or args.ef_search is not None):
        raise UsageError(f"{prog} --nprobe/--ef-search fix what --target-recall/--max-query-ms tune: give one")
    if args.tune_queries is not None and not tuning:
        raise UsageError(f"{prog} --tune-queries needs --target-recall or --max-query-ms")


def _cmd_build(args: argparse.Namespace) -> int:
    _check_tuning_flags(args)
    vectors, ids, metadata = load_vectors(args.input)
    queries = None if args.tune_queries is None else load_vectors(args.tune_queries)[0]
    start = time.perf_counter()
    index = build_index(vectors, ids, metadata, factory=args.factory, memory_budget_mb=args.memory_budget_mb,
                        gpu=args.gpu, recall_k=args.recall_k, recall_queries=args.recall_queries,
                        target_recall=args.target_recall, max_query_ms=args.max_query_ms,
                        tuning_queries=queries)  # fmt: skip
    _apply_search_flags(index, args)
    seconds = time.perf_counter() - start
    index.save(args.output)
    print(json.dumps({"output": str(args.output), "build_seconds": round(seconds, 3), **index.stats()}))
    return 0


def _query_rows(args: argparse.Namespace, dim: int) -> np.ndarray:
    if (args.vectors is None) == (args.text is None):
        raise UsageError("hsrl index search: error: give exactly one of --vectors or --text")
    if args.vectors is not None:
        return load_vectors(args.vectors)[0]
    if not args.model:
        raise UsageError("hsrl index search: error: --text needs --model (a model folder that encodes text)")
    from hsrl.models.folder import open_model  # lazy: heavy, text queries only

    return open_model(args.model, device="cpu", backend=args.backend).encode(args.text, modality="text")


def _cmd_search(args: argparse.Namespace) -> int:
    index = VectorIndex.load(args.index, mmap=args.mmap, gpu=args.gpu)
    _apply_search_flags(index, args)
    scores, ids = index.search(_query_rows(args, index.dim), args.k)
    for row, (row_scores, row_ids) in enumerate(zip(scores, ids, strict=True)):
        found = zip(row_ids, row_scores, index.get_metadata(row_ids), strict=True)
        hits = [{"id": int(i), "score": float(s), "metadata": m} for i, s, m in found if i >= 0]
        print(json.dumps({"query": row, "results": hits}, ensure_ascii=False))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    index = VectorIndex.load(args.index, gpu=args.gpu)
    _apply_search_flags(index, args)
    if args.data is not None:
        data, ids, _ = load_vectors(args.data)
        ids = np.arange(len(data), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    else:
        ids, data = index.all_vectors(exact_only=True, why="eval without --data")
    rng = np.random.default_rng(0)
    queries = (load_vectors(args.queries)[0] if args.queries else
               data[rng.choice(len(data), min(args.num_queries, len(data)), replace=False)])  # fmt: skip
    queries = check_unit_rows(queries, index.dim, "queries")
    start = time.perf_counter()
    exact = ids[exact_search(check_unit_rows(data, index.dim, "data"), queries, args.k)[1]]
    exact_seconds = time.perf_counter() - start
    report = measure_recall(index, queries, args.k, exact=exact)
    report["exact_qps"] = len(queries) / max(exact_seconds, 1e-9)
    print(json.dumps({"index": str(args.index), "factory": index.factory, "ntotal": index.ntotal, **report}))
    return 0


def cli_main(argv: Sequence[str]) -> int:
    """``hsrl index build|search|eval`` (see ``hsrl index --help``)."""
    handlers = {"build": _cmd_build, "search": _cmd_search, "eval": _cmd_eval}
    return run_cli(_parser(), argv, lambda args: handlers[args.command](args))


if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:]))
