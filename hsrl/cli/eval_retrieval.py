"""``hsrl eval retrieval``: IR metrics and k-NN accuracy of queries against a corpus (the library, with the
formulas, is :mod:`hsrl.evaluation.retrieval`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hsrl.cli.harness import OneLineArgumentParser, run_cli
from hsrl.evaluation.retrieval import (
    embed_items,
    knn_classification_accuracy,
    label_relevance,
    read_items,
    read_qrels,
    retrieval_metrics,
)

__all__ = ["cli_main"]


def _load_model(path: str | None) -> Any:
    if path is None:
        return None
    from hsrl.models.folder import open_model  # lazy: heavy import

    return open_model(path)


def _parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(prog="hsrl eval retrieval", description="IR metrics and k-NN through hsrl.index.")
    parser.add_argument("--queries", required=True, help="queries .jsonl or an hsrl export folder")
    parser.add_argument("--corpus", required=True, help="corpus .jsonl or an hsrl export folder")
    relevance = parser.add_mutually_exclusive_group(required=True)
    relevance.add_argument("--qrels", help="qrels .tsv (query-id, corpus-id, score) or .jsonl")
    relevance.add_argument("--labels", action="store_true", help="relevance = same class label; adds k-NN accuracy")
    parser.add_argument("--model", help="sentence-transformers folder, for .jsonl inputs")
    parser.add_argument("--factory", default="Flat", help="index type to search with (default: exact Flat)")
    parser.add_argument("--knn-k", type=int, default=5, help="k of the k-NN classification (default: 5)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", help="also write the metrics to this JSON file")
    return parser


def _run(args: argparse.Namespace) -> int:
    queries, corpus = read_items(args.queries, corpus=False), read_items(args.corpus, corpus=True)
    # Every input is checked before the model loads, so a mistake costs no model start-up.
    if args.labels:
        if queries.labels is None or corpus.labels is None:
            raise ValueError("--labels needs a label on every query and corpus item")
        relevant = label_relevance(queries.ids, queries.labels, corpus.ids, corpus.labels)
    else:
        relevant = read_qrels(args.qrels)
    model = _load_model(args.model) if queries.embeddings is None or corpus.embeddings is None else None
    query_vectors = embed_items(queries, model, args.batch_size)
    corpus_vectors = embed_items(corpus, model, args.batch_size)
    metrics = retrieval_metrics(query_vectors, corpus_vectors, queries.ids, corpus.ids, relevant, factory=args.factory)
    if args.labels:
        metrics[f"knn{args.knn_k}_accuracy"] = knn_classification_accuracy(
            query_vectors, queries.labels, corpus_vectors, corpus.labels, k=args.knn_k, factory=args.factory
        )
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


def cli_main(argv: Sequence[str]) -> int:
    """``hsrl eval retrieval`` (see ``hsrl eval retrieval --help``)."""
    return run_cli(_parser(), argv, _run)


if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:]))
