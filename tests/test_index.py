"""hsrl.index on real FAISS: ids, add/remove/search, metadata, training, atomic save, mmap, GPU decisions, CLI."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest

from hsrl.cli import main as hsrl_main
from hsrl.index import (
    GPU_MAX_K,
    VectorIndex,
    build_index,
    choose_factory,
    exact_search,
    measure_recall,
    plan_placement,
    recall_at_k,
    tune_search_parameters,
    use_gpu_for_search,
)

DIM = 32
# PQ with 4-bit codes: FAISS trains 8-bit (256-centroid) codebooks slowly on this shared 2-core machine.
FACTORIES = ["Flat", "IVF16,Flat", "HNSW16", "IVF16,PQ8x4"]


def unit(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread() -> Iterator[None]:
    # These indexes are tiny: one thread avoids OpenMP spin-waits on a busy shared machine (PQ training 10x slower).
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return unit(2000)


@pytest.mark.parametrize("factory", FACTORIES)
def test_own_ids_search_remove_and_metadata(factory: str, data: np.ndarray) -> None:
    index = VectorIndex.create(DIM, factory)
    ids = np.arange(len(data), dtype=np.int64) * 7 + 3  # sparse ids, so positions and ids differ
    assert index.add(data, ids, [{"row": i} for i in range(len(data))]).tolist() == ids.tolist()
    assert index.ntotal == len(data) and index.is_trained and index.factory == factory
    scores, found = index.search(data[:50], 5)
    assert scores.dtype == np.float32 and found.dtype == np.int64 and found.shape == (50, 5)
    assert (found[:, 0] == ids[:50]).mean() >= 0.9  # each vector finds itself (PQ: nearly always)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    assert index.get_metadata([ids[5], 999_999, -1]) == [{"row": 5}, None, None]

    assert index.remove([*ids[:10].tolist(), 999_999]) == 10
    assert index.ntotal == len(data) - 10 and index.get_metadata([ids[0]]) == [None]
    _, after = index.search(data[:20], 1)
    assert not np.isin(after, ids[:10]).any()  # removed ids are never returned again
    # Ids still map to the right vectors after a remove (IndexIDMap2 around IVF would break this).
    assert (after[10:20, 0] == ids[10:20]).mean() >= 0.9


def test_auto_ids_continue_after_the_largest(data: np.ndarray) -> None:
    index = VectorIndex.create(DIM, "Flat")
    index.add(data[:3], ids=[10, 11, 12])
    assert index.add(data[3:5]).tolist() == [13, 14]


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "HNSW16"])
def test_reconstruct_returns_the_stored_vector(factory: str, data: np.ndarray) -> None:
    index = VectorIndex.create(DIM, factory)
    index.add(data, ids=np.arange(len(data)) + 100)
    np.testing.assert_allclose(index.reconstruct(105), data[5], atol=1e-6)
    with pytest.raises(ValueError, match="cannot reconstruct id 5"):
        index.reconstruct(5)


@pytest.mark.parametrize(
    "vectors, ids, message",
    [
        (unit(3, DIM + 1), None, "dimension 33, the index has 32"),
        (unit(3) * 2, None, "must be L2-normalised: row 0 has norm 2"),
        (np.where(np.eye(3, DIM) > 0, np.nan, unit(3)), None, "NaN or infinite"),
        (unit(3), [1, 1, 2], "duplicate id 1"),
        (unit(3), [0, 1, 2], "id 0 is already in the index"),
        (unit(3), [5, -1, 6], r"ids must be in \[0, 2\*\*63\)"),
        (unit(3), [1, 2], "ids must be a 1-D sequence of 3"),
        (np.array([["a"] * DIM]), None, "must be numeric"),
    ],
)
def test_bad_adds_raise_and_change_nothing(vectors: np.ndarray, ids: list[int] | None, message: str) -> None:
    index = VectorIndex.create(DIM, "Flat")
    index.add(unit(1, seed=9), ids=[0])
    with pytest.raises(ValueError, match=message):
        index.add(vectors, ids)
    assert index.ntotal == 1


def test_norm_tolerance_is_1e_3() -> None:
    index = VectorIndex.create(DIM, "Flat")
    index.add(unit(1) * (1 + 9e-4))
    with pytest.raises(ValueError, match=r"norm 1\.0011"):
        index.add(unit(1) * 1.0011)


def test_untrained_ivf_says_how_many_vectors_it_needs() -> None:
    index = VectorIndex.create(DIM, "IVF64,Flat")
    assert not index.is_trained
    with pytest.raises(ValueError, match="at least 64 vectors, got 10"):
        index.add(unit(10))
    with pytest.raises(ValueError, match="at least 256 vectors"):
        VectorIndex.create(DIM, "PQ8").add(unit(100))


def test_search_clamps_k_and_validates_queries(data: np.ndarray) -> None:
    index = VectorIndex.create(DIM, "Flat")
    assert index.search(data[:2], 5)[1].shape == (2, 0)  # empty index: no neighbours
    index.add(data[:3])
    _, ids = index.search(data[:2], 10)
    assert ids.shape == (2, 3) and sorted(ids[0].tolist()) == [0, 1, 2]
    assert index.search(data[0], 1)[1].tolist() == [[0]]  # one 1-D query is one row
    for k in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="k must be an integer"):
            index.search(data[:1], k)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="queries have dimension 8"):
        index.search(unit(1, 8), 1)


def test_missing_neighbours_are_minus_one_with_minus_inf(data: np.ndarray) -> None:
    index = VectorIndex.create(DIM, "IVF16,Flat")
    index.add(data)
    index.set_search_parameters(nprobe=1)  # one list holds fewer than 500 vectors
    scores, ids = index.search(data[:5], 500)
    assert (ids == -1).any() and np.isneginf(scores[ids == -1]).all() and np.isfinite(scores[ids >= 0]).all()


def test_hnsw_remove_rebuilds_and_keeps_search_parameters(data: np.ndarray) -> None:
    index = VectorIndex.create(DIM, "HNSW16")
    index.add(data, metadata=[{"i": i} for i in range(len(data))])
    index.set_search_parameters(efSearch=99)
    assert index.remove([3, 4]) == 2
    assert index.search_parameters == {"efSearch": 99}
    assert faiss.downcast_index(index._index.index).hnsw.efSearch == 99
    assert index.search(data[5:6], 1)[1][0, 0] == 5 and index.get_metadata([3]) == [None]


def test_hnsw_over_lossy_codes_cannot_remove(data: np.ndarray) -> None:
    index = VectorIndex.create(DIM, "HNSW16,SQ8")
    index.add(data)
    with pytest.raises(ValueError, match="stores compressed codes, so remove from an HNSW index"):
        index.remove([1])


def test_metadata_must_match_and_be_json() -> None:
    index = VectorIndex.create(DIM, "Flat")
    with pytest.raises(ValueError, match="metadata has 1 entries for 2 vectors"):
        index.add(unit(2), metadata=[{}])
    with pytest.raises(ValueError, match=r"metadata\[0\] is not JSON-serialisable"):
        index.add(unit(1), metadata=[{"x": object()}])
    assert index.ntotal == 0


@pytest.mark.parametrize("factory", FACTORIES[:3])  # PQ saves and maps like IVF-Flat (the IVF path)
def test_save_load_round_trip_and_mmap(factory: str, data: np.ndarray, tmp_path: Path) -> None:
    index = VectorIndex.create(DIM, factory)
    index.add(data, np.arange(len(data)) + 1000, [{"t": f"doc {i}"} for i in range(len(data))])
    before = index.search(data[:20], 4)
    index.save(tmp_path / "ix")
    assert {p.name for p in (tmp_path / "ix").iterdir()} == {"index.faiss", "metadata.jsonl", "index.json"}
    assert json.loads((tmp_path / "ix" / "index.json").read_text())["count"] == len(data)
    for mmap in (False, True):
        loaded = VectorIndex.load(tmp_path / "ix", mmap=mmap)
        assert loaded.factory == factory and loaded.search_parameters == index.search_parameters
        np.testing.assert_array_equal(loaded.search(data[:20], 4)[1], before[1])
        assert loaded.get_metadata([1007]) == [{"t": "doc 7"}]
    assert loaded.read_only
    with pytest.raises(ValueError, match="read-only"):
        loaded.add(unit(1, seed=5))
    # New ids keep increasing after a reload.
    assert VectorIndex.load(tmp_path / "ix").add(unit(1, seed=5)).tolist() == [1000 + len(data)]


def _crash_on_replace(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    real, calls = os.replace, []

    def replace(src: str, dst: str) -> None:
        calls.append(dst)
        if len(calls) == call:
            raise OSError("simulated crash")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("crash_at", [1, 2])  # 1: before anything moves; 2: after the old folder moved aside
def test_a_crash_mid_save_leaves_the_previous_index(
    crash_at: int, data: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = VectorIndex.create(DIM, "Flat")
    index.add(data[:10])
    index.save(tmp_path / "ix")
    index.add(data[10:20])
    with monkeypatch.context() as patch:
        _crash_on_replace(patch, crash_at)
        with pytest.raises(OSError, match="simulated crash"):
            index.save(tmp_path / "ix")
    loaded = VectorIndex.load(tmp_path / "ix")
    assert loaded.ntotal == 10 and sorted(loaded.ids().tolist()) == list(range(10))
    assert not list(tmp_path.glob(".tmp-ix-*"))  # the half-written folder is cleaned up
    index.save(tmp_path / "ix")  # and the next save works
    assert VectorIndex.load(tmp_path / "ix").ntotal == 20


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: (p / "index.json").unlink(), "not an hsrl index folder"),
        (lambda p: (p / "index.faiss").write_bytes(b"garbage"), "not a readable hsrl index"),
        (lambda p: (p / "metadata.jsonl").write_text("{broken\n"), "metadata.jsonl line 1 is corrupt"),
        (lambda p: (p / "index.json").write_text("{}"), "index.json"),
    ],
)
def test_damaged_folders_raise_value_error(damage, message: str, data: np.ndarray, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    index = VectorIndex.create(DIM, "Flat")
    index.add(data[:5], metadata=[{"a": 1}] * 5)
    index.save(tmp_path / "ix")
    damage(tmp_path / "ix")
    with pytest.raises(ValueError, match=message):
        VectorIndex.load(tmp_path / "ix")


def test_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no index at"):
        VectorIndex.load(tmp_path / "nothing")


def test_choose_factory_rule() -> None:
    assert choose_factory(128) == "Flat"
    assert choose_factory(128, 999_999) == "Flat"
    assert choose_factory(128, 1_000_000) == "IVF4096_HNSW32,Flat"
    assert choose_factory(128, 100_000, memory_budget_mb=60) == "Flat"  # 52.6 MiB fits
    assert choose_factory(128, 100_000, memory_budget_mb=10) == "IVF1024_HNSW32,PQ32"  # 7.3 MiB (PQ64: 10.4)
    with pytest.raises(ValueError, match="too small for 100000 vectors"):
        choose_factory(128, 100_000, memory_budget_mb=1)
    for factory in ("IVF4096_HNSW32,Flat", "IVF1024_HNSW32,PQ32"):
        faiss.index_factory(128, factory, faiss.METRIC_INNER_PRODUCT)  # FAISS accepts what auto produces


def test_bad_factory_strings() -> None:
    with pytest.raises(ValueError, match="bad factory string 'IVF,Nope'"):
        VectorIndex.create(DIM, "IVF,Nope")
    with pytest.raises(ValueError, match="must not contain IDMap"):
        VectorIndex.create(DIM, "IDMap,Flat")


def test_gpu_placement_decisions() -> None:
    assert plan_placement("auto", 0, "Flat") == "cpu"  # faiss-cpu
    assert plan_placement("shard", 0, "Flat") == "cpu"
    assert plan_placement("auto", 2, "IVF64,Flat") == "replicate"
    assert plan_placement("shard", 2, "IVF64,PQ8") == "shard"
    assert plan_placement("never", 4, "Flat") == "cpu"
    assert plan_placement("auto", 4, "HNSW32") == "cpu"  # no GPU HNSW
    assert plan_placement("auto", 4, "IVF1024_HNSW32,Flat") == "replicate"  # HNSW only as coarse quantizer
    assert use_gpu_for_search("replicate", GPU_MAX_K) and not use_gpu_for_search("replicate", GPU_MAX_K + 1)
    assert not use_gpu_for_search("cpu", 1)
    with pytest.raises(ValueError, match="gpu must be one of"):
        plan_placement("cuda", 1, "Flat")
    index = VectorIndex.create(DIM, "Flat", gpu="never")
    assert not index.on_gpu and index.stats()["placement"] == "cpu"


def test_recall_helpers(data: np.ndarray) -> None:
    assert recall_at_k(np.array([[1, 2, 3]]), np.array([[3, 2, 9]]), 3) == pytest.approx(2 / 3)
    assert recall_at_k(np.array([[1, 2, -1]]), np.array([[1, 2, -1]]), 3) == 1.0  # -1 is not a neighbour
    assert recall_at_k(np.array([[1, 5], [7, 8]]), np.array([[1, 2], [7, 8]]), 1) == 1.0
    flat = VectorIndex.create(DIM, "Flat")
    flat.add(data)
    assert measure_recall(flat, data[:50], 10)["recall"] == 1.0
    pq = build_index(data, factory="IVF16,PQ8x4", recall_queries=200)
    report = pq.stats()["measured_recall"]
    assert report["k"] == 10 and report["queries"] == 200 and 0.05 < report["recall"] < 0.95
    exact = exact_search(data, data[:200], 10)[1]
    assert abs(measure_recall(pq, data[:200], 10, exact=exact)["recall"] - report["recall"]) < 0.1
    with pytest.raises(ValueError, match="stores compressed codes"):
        measure_recall(pq, data[:5], 10)


def test_stats_are_json(data: np.ndarray) -> None:
    index = build_index(data, factory="HNSW16", recall_queries=100)
    stats = json.loads(json.dumps(index.stats()))
    assert stats["ntotal"] == len(data) and stats["dim"] == DIM and stats["factory"] == "HNSW16"
    assert stats["measured_recall"]["recall"] > 0.9 and stats["search_parameters"] == {"efSearch": 64}


def test_cli_build_search_eval(data: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "data.npy", data)
    np.save(tmp_path / "queries.npy", data[:3])
    out = str(tmp_path / "ix")
    assert hsrl_main(["index", "build", "--input", str(tmp_path / "data.npy"), "--output", out,
                      "--factory", "IVF16,Flat", "--nprobe", "4", "--recall-queries", "100"]) == 0  # fmt: skip
    built = json.loads(capsys.readouterr().out)
    assert built["ntotal"] == len(data) and built["search_parameters"] == {"nprobe": 4}
    assert 0 < built["measured_recall"]["recall"] <= 1
    assert hsrl_main(["index", "search", "--index", out, "--vectors", str(tmp_path / "queries.npy"), "--k", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["results"][0]["id"] for line in lines] == [0, 1, 2]
    assert hsrl_main(["index", "eval", "--index", out, "--num-queries", "50", "--nprobe", "16"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["recall"] == 1.0 and report["queries"] == 50  # nprobe = nlist: exact


@pytest.mark.parametrize(
    "argv, message",
    [
        (["index", "build", "--input", "missing.npy", "--output", "x"], "missing.npy: no such file"),
        (["index", "search", "--index", "nowhere", "--vectors", "q.npy"], "no index at nowhere"),
        (["index", "frobnicate"], "invalid choice: 'frobnicate'"),
        (["index", "build", "--input", "data.txt", "--output", "x"], "expected an hsrl export folder or a .npy"),
    ],
)
def test_cli_errors_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert hsrl_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_cli_search_rejects_bad_queries(data: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    index = VectorIndex.create(DIM, "Flat")
    index.add(data[:5])
    index.save(tmp_path / "ix")
    np.save(tmp_path / "q.npy", data[:1] * 3)
    assert hsrl_main(["index", "search", "--index", str(tmp_path / "ix"), "--vectors", str(tmp_path / "q.npy")]) == 2
    assert "must be L2-normalised" in capsys.readouterr().err
    assert hsrl_main(["index", "search", "--index", str(tmp_path / "ix"), "--text", "hi"]) == 2
    assert "--text needs --model" in capsys.readouterr().err


def test_save_removes_temporary_copies_left_by_a_killed_save(tmp_path: Path) -> None:
    index = VectorIndex.create(8, "Flat", gpu="never")
    vectors = np.eye(8, dtype=np.float32)
    index.add(vectors)
    leftover = tmp_path / ".tmp-idx-crashed"
    leftover.mkdir()
    (leftover / "index.faiss").write_bytes(b"partial")
    index.save(tmp_path / "idx")
    assert not leftover.exists()
    assert VectorIndex.load(tmp_path / "idx").ntotal == 8


def test_auto_caps_nlist_and_pq_bits_by_the_training_set() -> None:
    assert choose_factory(64, 3000, memory_budget_mb=0.3) == "IVF64_HNSW32,PQ32x6"  # 39·64 ≤ 3000 < 39·128


@pytest.mark.slow  # two PQ trainings: about a minute on 2 cores
def test_auto_index_trains_without_faiss_warnings(capfd: pytest.CaptureFixture[str]) -> None:
    rows = unit(3000, 64)
    build_index(rows, factory="IVF256_HNSW32,PQ16", recall_queries=50)  # the old choice: FAISS warns
    assert "please provide at least" in capfd.readouterr().err
    index = build_index(rows, factory="auto", memory_budget_mb=0.3, recall_queries=50)
    assert index.factory == "IVF64_HNSW32,PQ32x6"
    err = capfd.readouterr().err
    assert "please provide at least" not in err and "WARNING" not in err


# --------------------------------------------------------------------------- tuning nprobe / efSearch


@pytest.fixture(scope="module")
def ivf_for_tuning() -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    rows = unit(3000, seed=1)
    index = VectorIndex.create(DIM, "IVF64,Flat", gpu="never")
    index.add(rows)
    queries = unit(300, seed=2)  # fresh vectors: held out from the k-means training by construction
    return index, queries, exact_search(rows, queries, 10)[1]


def test_tuned_nprobe_meets_the_target_on_held_out_queries() -> None:
    rows, tuning_queries, check_queries = unit(3000, seed=1), unit(300, seed=2), unit(300, seed=3)
    index = build_index(rows, factory="IVF64,Flat", gpu="never", target_recall=0.9, tuning_queries=tuning_queries)
    chosen = index.tuning
    assert chosen["parameter"] == "nprobe" and chosen["met"] and chosen["recall"] >= 0.9
    assert index.search_parameters == {"nprobe": chosen["value"]}
    tried = {t["value"]: t["recall"] for t in chosen["tried"]}
    assert list(tried) == [2**i for i in range(chosen["value"].bit_length())]  # powers of two up to the choice
    assert all(recall < 0.9 for value, recall in tried.items() if value < chosen["value"])  # the smallest that meets
    # Queries the tuning never saw get about the same recall (300 queries: a few hundredths of noise).
    fresh = recall_at_k(index.search(check_queries, 10)[1], exact_search(rows, check_queries, 10)[1], 10)
    assert fresh >= 0.85


def test_data_queries_are_kept_out_of_training(monkeypatch: pytest.MonkeyPatch) -> None:
    rows, trained_on = unit(3000, seed=1), []
    original = VectorIndex.train
    monkeypatch.setattr(VectorIndex, "train", lambda self, v: (trained_on.append(v), original(self, v))[1])
    index = build_index(rows, factory="IVF32,Flat", gpu="never", target_recall=0.8, recall_queries=200)
    (training,) = trained_on
    assert len(training) == 2800 and index.tuning["queries"] == 200 and index.tuning["met"]
    held_out = {row.tobytes() for row in rows} - {row.tobytes() for row in training}
    assert len(held_out) == 200


def test_a_higher_target_never_gives_a_smaller_value(
    ivf_for_tuning: tuple[VectorIndex, np.ndarray, np.ndarray],
) -> None:
    index, queries, exact = ivf_for_tuning
    chosen = [tune_search_parameters(index, queries, exact, 10, target_recall=target)["value"]
              for target in (0.2, 0.5, 0.8, 0.9, 0.95, 0.99, 1.0)]  # fmt: skip
    assert chosen == sorted(chosen) and chosen[0] < chosen[-1] <= 64


def test_hnsw_tunes_ef_search() -> None:
    rows, queries = unit(2000, seed=4), unit(200, seed=5)
    index = build_index(rows, factory="HNSW8", gpu="never", target_recall=0.95, tuning_queries=queries, recall_k=10)
    assert index.tuning["parameter"] == "efSearch" and index.tuning["recall"] >= 0.95
    assert index.search_parameters == {"efSearch": index.tuning["value"]} and index.tuning["value"] >= 16


def test_max_query_ms_chooses_a_value_and_records_it(tmp_path: Path) -> None:
    index = build_index(unit(2000, seed=6), factory="IVF32,Flat", gpu="never", max_query_ms=1000.0, recall_queries=100)
    chosen = index.tuning
    assert chosen["parameter"] == "nprobe" and chosen["max_query_ms"] == 1000.0 and chosen["target_recall"] is None
    assert chosen["value"] in {t["value"] for t in chosen["tried"]} and chosen["ms_per_query"] > 0
    index.save(tmp_path / "ix")
    info = json.loads((tmp_path / "ix" / "index.json").read_text())
    assert info["tuning"]["value"] == chosen["value"] and info["search_parameters"] == {"nprobe": chosen["value"]}


def test_flat_has_nothing_to_tune() -> None:
    index = build_index(unit(500), factory="Flat", gpu="never", target_recall=0.99, recall_queries=50)
    assert index.tuning["parameter"] is None and index.tuning["recall"] == 1.0 and index.search_parameters == {}


def test_cli_tuned_parameter_is_saved_and_applied_on_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "data.npy", unit(3000, seed=1))
    np.save(tmp_path / "queries.npy", unit(200, seed=2))
    out = tmp_path / "ix"
    assert hsrl_main(["index", "build", "--input", str(tmp_path / "data.npy"), "--output", str(out),
                      "--factory", "IVF64,Flat", "--target-recall", "0.9",
                      "--tune-queries", str(tmp_path / "queries.npy")]) == 0  # fmt: skip
    built = json.loads(capsys.readouterr().out)
    value = built["tuning"]["value"]
    assert built["tuning"]["recall"] >= 0.9 and built["search_parameters"] == {"nprobe": value} and value > 1
    assert json.loads((out / "index.json").read_text())["tuning"]["value"] == value
    loaded = VectorIndex.load(out, gpu="never")
    assert loaded.search_parameters == {"nprobe": value} and loaded.tuning == built["tuning"]
    assert faiss.extract_index_ivf(loaded._index).nprobe == value  # applied to FAISS, not only remembered


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--target-recall", "0"], "--target-recall must be in (0, 1], got 0"),
        (["--target-recall", "1.5"], "--target-recall must be in (0, 1], got 1.5"),
        (["--target-recall", "nan"], "--target-recall must be in (0, 1], got nan"),
        (["--max-query-ms", "0"], "--max-query-ms must be a number of milliseconds > 0, got 0"),
        (["--max-query-ms", "-2"], "--max-query-ms must be a number of milliseconds > 0, got -2"),
        (["--target-recall", "0.9", "--max-query-ms", "2"], "give --target-recall or --max-query-ms, not both"),
        (["--target-recall", "0.9", "--nprobe", "4"], "--nprobe/--ef-search fix what"),
        (["--tune-queries", "q.npy"], "--tune-queries needs --target-recall or --max-query-ms"),
    ],
)
def test_cli_bad_tuning_values_are_one_line(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "data.npy", unit(100))
    argv = ["index", "build", "--input", str(tmp_path / "data.npy"), "--output", str(tmp_path / "ix"), *flags]
    assert hsrl_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("hsrl index build: error:")
    assert not (tmp_path / "ix").exists()
