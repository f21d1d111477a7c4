"""The HTTP API against a real uvicorn server, the real all-MiniLM-L6-v2 and real FAISS indexes:
OpenAI-compatible embeddings, images, search, index writes, the API key, errors, /info, /metrics, CORS."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from service_support import (
    SENTENCES,
    LiveServer,
    assert_error,
    blank_png,
    build_service,
    data_uri,
    image_model_folder,
    make_index,
    metric_samples,
    minilm,
    png_bytes,
    serve,
    unit_rows,
)

from hsrl.index import VectorIndex
from hsrl_service.limits import Limits

KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMITS = Limits(max_request_bytes=2 * 1024 * 1024, max_items=64, max_text_chars=10_000, max_image_pixels=1_000_000)


def reference(texts: list[str]) -> np.ndarray:
    return minilm().encode(texts, normalize_embeddings=True, convert_to_numpy=True)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("indexes")
    return {
        "docs": make_index(root / "docs", reference(SENTENCES)),
        "images": make_index(root / "images", dim=16),
    }


@pytest.fixture(scope="module")
def server(folders: dict[str, Path]) -> Iterator[LiveServer]:
    service = build_service(image=True, indexes=list(folders.items()), limits=LIMITS, api_key=KEY)
    with serve(service) as live:
        yield live


@pytest.fixture()
def client(server: LiveServer):
    """A client that sends the API key (every route but /health and /metrics needs it)."""
    with server.client(headers=AUTH) as http:
        yield http


@pytest.fixture()
def anonymous(server: LiveServer):
    """A client with no default ``Authorization`` header."""
    with server.client() as http:
        yield http


def _rows(body: dict) -> np.ndarray:
    return np.array([item["embedding"] for item in body["data"]], dtype=np.float32)


# ------------------------------------------------------------------ embeddings


def test_embeddings_have_openai_shape(client) -> None:
    response = client.post("/v1/embeddings", json={"input": "A man is eating food."})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list" and body["model"] == "minilm"
    assert [(d["object"], d["index"]) for d in body["data"]] == [("embedding", 0)]
    assert len(body["data"][0]["embedding"]) == 384
    tokens = len(minilm().tokenizer("A man is eating food.")["input_ids"])
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_embeddings_equal_sentence_transformers_encode(client) -> None:
    body = client.post("/v1/embeddings", json={"input": SENTENCES, "model": "text"}).json()
    rows = _rows(body)
    assert [d["index"] for d in body["data"]] == list(range(len(SENTENCES)))
    np.testing.assert_allclose(rows, reference(SENTENCES), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)


def test_base64_encoding_is_little_endian_float32(client) -> None:
    floats = _rows(client.post("/v1/embeddings", json={"input": SENTENCES[:3]}).json())
    body = client.post("/v1/embeddings", json={"input": SENTENCES[:3], "encoding_format": "base64"}).json()
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in body["data"]])
    np.testing.assert_array_equal(decoded, floats)


def test_dimensions_truncate_and_renormalise(client) -> None:
    body = client.post("/v1/embeddings", json={"input": SENTENCES[:2], "dimensions": 64}).json()
    full = reference(SENTENCES[:2])[:, :64]
    np.testing.assert_allclose(_rows(body), full / np.linalg.norm(full, axis=1, keepdims=True), atol=1e-5)
    for bad in (0, -1):  # below the schema's minimum: pydantic's validation error
        assert_error(client.post("/v1/embeddings", json={"input": "x", "dimensions": bad}), 422, "invalid_request")
    assert_error(client.post("/v1/embeddings", json={"input": "x", "dimensions": 385}), 422, "invalid_dimensions")


def test_model_is_chosen_by_modality_or_name(client) -> None:
    for model in ("text", "minilm"):
        assert client.post("/v1/embeddings", json={"input": "hi", "model": model}).json()["model"] == "minilm"
    # A name the service does not serve (an OpenAI client's default) is answered by the input's modality's model.
    assert client.post("/v1/embeddings", json={"input": "hi", "model": "text-embedding-3-small"}).json()["model"] == (
        "minilm"
    )
    image = client.post("/v1/embeddings", json={"input": data_uri(png_bytes()), "model": "clip-vit-b-32"}).json()
    assert image["model"] == "alexnet-tiny"
    assert_error(client.post("/v1/embeddings", json={"input": data_uri(png_bytes()), "model": "minilm"}), 422,
                 "wrong_modality")  # fmt: skip
    models = client.get("/v1/models").json()
    assert {(m["id"], m["modality"], m["dim"]) for m in models["data"]} == {
        ("minilm", "text", 384),
        ("alexnet-tiny", "image", 16),
    }
    assert all(isinstance(m["created"], int) and m["created"] > 1_600_000_000 for m in models["data"])
    assert client.get("/v1/models/minilm").json() == next(m for m in models["data"] if m["id"] == "minilm")
    assert_error(client.get("/v1/models/gpt-4"), 404, "model_not_found")


def test_images_by_data_uri_and_upload_equal_hsrl_export(client, tmp_path: Path) -> None:
    from hsrl.models.folder import open_model  # what `hsrl export` encodes with: the model + its preprocessing

    images = [png_bytes(seed=1), png_bytes(64, 48, seed=2)]
    by_uri = client.post("/v1/embeddings", json={"input": [data_uri(b) for b in images]})
    assert by_uri.status_code == 200, by_uri.text
    assert by_uri.json()["model"] == "alexnet-tiny"
    uploaded = client.post("/v1/embeddings/upload", files=[("files", (f"{i}.png", b)) for i, b in enumerate(images)])
    assert uploaded.status_code == 200, uploaded.text
    # The reference: what `hsrl export` computes for the same files with the same model folder.
    paths = []
    for i, data in enumerate(images):
        (tmp_path / f"{i}.png").write_bytes(data)
        paths.append(str(tmp_path / f"{i}.png"))
    exported = open_model(image_model_folder(), device="cpu").encode(paths)
    np.testing.assert_allclose(_rows(by_uri.json()), exported, atol=1e-5)
    np.testing.assert_allclose(_rows(uploaded.json()), exported, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(_rows(uploaded.json()), axis=1), 1.0, atol=1e-5)


# ------------------------------------------------------------------ search and index writes


def test_search_by_text_returns_the_sentence_with_metadata(client) -> None:
    body = client.post("/search", json={"index": "docs", "text": SENTENCES[3], "k": 3}).json()
    assert body["object"] == "search.result" and body["index"] == "docs"
    top = body["data"][0]
    assert top["id"] == 3 and top["metadata"] == {"row": 3} and top["score"] == pytest.approx(1.0, abs=1e-4)
    assert [hit["score"] for hit in body["data"]] == sorted((hit["score"] for hit in body["data"]), reverse=True)


def test_search_by_vector_matches_exact_search(client, folders) -> None:
    query = unit_rows(1, seed=7)[0]
    body = client.post("/search", json={"index": "docs", "vector": query.tolist(), "k": 100}).json()
    scores = reference(SENTENCES) @ query
    order = np.argsort(-scores)
    assert [hit["id"] for hit in body["data"]] == order.tolist()  # k > ntotal: every vector, best first
    np.testing.assert_allclose([hit["score"] for hit in body["data"]], scores[order], atol=1e-5)


def test_search_by_image(client) -> None:
    image = data_uri(png_bytes(seed=5))
    added = client.post("/index/images/add", json={"items": [{"vector": [1.0] * 16}]}, headers=AUTH)
    assert added.status_code == 200, added.text
    vector = client.post("/v1/embeddings", json={"input": image}).json()["data"][0]["embedding"]
    add = client.post(
        "/index/images/add", json={"items": [{"vector": vector, "id": 77, "metadata": {"f": "5.png"}}]}, headers=AUTH
    )
    assert add.json()["ids"] == [77]
    hit = client.post("/search", json={"index": "images", "image": image, "k": 1}).json()["data"][0]
    assert (hit["id"], hit["metadata"]) == (77, {"f": "5.png"}) and hit["score"] == pytest.approx(1.0, abs=1e-5)


def test_add_texts_then_delete_persists(client, folders) -> None:
    before = client.get("/index/docs").json()["ntotal"]
    item = {"text": "Penguins live in Antarctica.", "metadata": {"src": "t"}}
    response = client.post("/index/docs/add", json={"items": [item]})
    assert response.status_code == 200, response.text
    (new_id,) = response.json()["ids"]
    assert response.json()["ntotal"] == before + 1
    hit = client.post("/search", json={"index": "docs", "text": "Where do penguins live?", "k": 1}).json()["data"][0]
    assert hit["id"] == new_id and hit["metadata"] == {"text": "Penguins live in Antarctica.", "src": "t"}
    assert VectorIndex.load(folders["docs"]).ntotal == before + 1  # saved before the answer
    deleted = client.delete(f"/index/docs/{new_id}", headers=AUTH)
    assert deleted.status_code == 200 and deleted.json()["ntotal"] == before
    assert VectorIndex.load(folders["docs"]).ntotal == before
    assert_error(client.delete(f"/index/docs/{new_id}", headers=AUTH), 404, "id_not_found")
    taken = {"items": [{"vector": unit_rows(1)[0].tolist(), "id": 0}]}
    assert_error(client.post("/index/docs/add", json=taken), 409, "id_conflict")
    twice = {"items": [{"vector": unit_rows(1)[0].tolist(), "id": 500}, {"text": "x", "id": 500}]}
    assert_error(client.post("/index/docs/add", json=twice), 409, "duplicate_id")


def _digest(folder: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file())).hexdigest()


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}]
)
def test_writes_without_the_key_are_401_and_change_nothing(client, anonymous, folders, headers) -> None:
    before, digest = client.get("/index/docs").json()["ntotal"], _digest(folders["docs"])
    vector = unit_rows(1, seed=3)[0].tolist()
    for response in (
        anonymous.post("/index/docs/add", json={"items": [{"vector": vector}]}, headers=headers),
        anonymous.post("/index/docs/add", json={"items": [{"text": "x"}]}, headers=headers),
        anonymous.delete("/index/docs/0", headers=headers),
    ):
        assert_error(response, 401, "invalid_api_key")
        assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/index/docs").json()["ntotal"] == before
    assert _digest(folders["docs"]) == digest


READS = [
    ("POST", "/v1/embeddings", {"json": {"input": "Anne Elliot"}}),
    ("POST", "/search", {"json": {"index": "docs", "text": "a letter", "k": 1}}),
    ("POST", "/v1/embeddings/upload", {"files": {"files": ("a.png", b"x")}}),
    ("GET", "/v1/models", {}),
    ("GET", "/v1/models/minilm", {}),
    ("GET", "/index/docs", {}),
    ("GET", "/info", {}),
    ("GET", "/openapi.json", {}),
    ("GET", "/docs", {}),
]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}], ids=["no key", "wrong key"])
def test_with_a_key_every_route_but_health_and_metrics_is_401(anonymous, client, headers) -> None:
    for method, path, kwargs in READS:
        response = anonymous.request(method, path, headers=headers, **kwargs)
        assert_error(response, 401, "invalid_api_key")
        assert response.headers["www-authenticate"] == "Bearer"
    assert anonymous.get("/health", headers=headers).status_code == 200
    assert anonymous.get("/metrics", headers=headers).status_code == 200
    assert client.post("/v1/embeddings", json={"input": "Anne Elliot"}).status_code == 200  # with the key


def test_public_reads_leaves_only_writes_guarded(folders) -> None:
    service = build_service(indexes=[("docs", folders["docs"])], limits=LIMITS, api_key=KEY, public_reads=True)
    with serve(service) as live, live.client() as http:
        assert http.post("/v1/embeddings", json={"input": "Anne Elliot"}).status_code == 200
        assert http.post("/search", json={"text": "a letter", "k": 1}).status_code == 200
        assert http.get("/openapi.json").status_code == 200 and http.get("/info").json()["auth"] == "api-key (writes)"
        assert_error(http.post("/index/docs/add", json={"items": [{"text": "x"}]}), 401, "invalid_api_key")
        assert_error(http.delete("/index/docs/0"), 401, "invalid_api_key")


# ------------------------------------------------------------------ bad input

TEN_MB = "a" * (10 * 1024 * 1024)
VEC = [0.1] * 384
BAD_REQUESTS = {
    "empty list": ("/v1/embeddings", {"input": []}, 422),
    "empty string": ("/v1/embeddings", {"input": ""}, 422),
    "blank string in list": ("/v1/embeddings", {"input": ["ok", "   "]}, 422),
    "10 MB string": ("/v1/embeddings", {"input": TEN_MB}, 413),
    "text over max chars": ("/v1/embeddings", {"input": "word " * 3000}, 422),
    "too many inputs": ("/v1/embeddings", {"input": ["x"] * 65}, 422),
    "input is a number": ("/v1/embeddings", {"input": 3}, 422),
    "token id outside the vocabulary": ("/v1/embeddings", {"input": [101, 10**9]}, 422),
    "negative token id": ("/v1/embeddings", {"input": [[101, -3]]}, 422),
    "empty token list": ("/v1/embeddings", {"input": [[]]}, 422),
    "ints and texts mixed": ("/v1/embeddings", {"input": ["x", 5]}, 422),
    "input is null": ("/v1/embeddings", {"input": None}, 422),
    "input missing": ("/v1/embeddings", {"model": "text"}, 422),
    "input is an object": ("/v1/embeddings", {"input": {"a": 1}}, 422),
    "model is a number": ("/v1/embeddings", {"input": "x", "model": 5}, 422),
    "unknown encoding": ("/v1/embeddings", {"input": "x", "encoding_format": "hex"}, 422),
    "dimensions is text": ("/v1/embeddings", {"input": "x", "dimensions": "many"}, 422),
    "mixed text and image": ("/v1/embeddings", {"input": ["x", data_uri(png_bytes())]}, 422),
    "invalid base64": ("/v1/embeddings", {"input": "data:image/png;base64,not*base64!"}, 422),
    "non-image file": ("/v1/embeddings", {"input": data_uri(b"just some text, not a picture")}, 422),
    "truncated image": ("/v1/embeddings", {"input": data_uri(png_bytes()[:200])}, 422),
    "huge image": ("/v1/embeddings", {"input": data_uri(blank_png(2000, 1000))}, 413),
    "text to the image model": ("/v1/embeddings", {"input": "a cat", "model": "image"}, 422),
    "NaN in vector": ("/search", '{"index": "docs", "vector": [NaN' + ", 0.1" * 383 + '], "k": 1}', 422),
    "infinity in vector": ("/search", '{"index": "docs", "vector": [Infinity' + ", 0.1" * 383 + '], "k": 1}', 422),
    "zero vector": ("/search", {"index": "docs", "vector": [0.0] * 384, "k": 1}, 422),
    "wrong vector dim": ("/search", {"index": "docs", "vector": [0.1] * 383, "k": 1}, 422),
    "text to a 16-d index": ("/search", {"index": "images", "text": "a cat", "k": 1}, 422),
    "unknown index": ("/search", {"index": "nope", "vector": VEC, "k": 1}, 404),
    "index omitted, two served": ("/search", {"vector": VEC, "k": 1}, 422),
    "k=0": ("/search", {"index": "docs", "vector": VEC, "k": 0}, 422),
    "k=10^6": ("/search", {"index": "docs", "vector": VEC, "k": 10**6}, 422),
    "k is text": ("/search", {"index": "docs", "vector": VEC, "k": "ten"}, 422),
    "two queries": ("/search", {"index": "docs", "vector": VEC, "text": "x", "k": 1}, 422),
    "no query": ("/search", {"index": "docs", "k": 1}, 422),
    "unknown field": ("/search", {"index": "docs", "vector": VEC, "k": 1, "kk": 2}, 422),
    "invalid JSON": ("/v1/embeddings", '{"input": ', 422),
    "NaN in added vector": ("/index/docs/add", '{"items": [{"vector": [NaN' + ", 0.1" * 383 + "]}]}", 422),
    "old parallel-list form": ("/index/docs/add", {"vectors": [VEC], "ids": [1]}, 422),
    "vector and text in one item": ("/index/docs/add", {"items": [{"vector": VEC, "text": "x"}]}, 422),
    "empty item": ("/index/docs/add", {"items": [{"id": 3}]}, 422),
    "negative id": ("/index/docs/add", {"items": [{"vector": VEC, "id": -5}]}, 422),
    "boolean id": ("/index/docs/add", {"items": [{"vector": VEC, "id": True}]}, 422),
    "booleans as a vector": ("/search", {"index": "docs", "vector": [True] * 384, "k": 1}, 422),
    "add to unknown index": ("/index/nope/add", {"items": [{"vector": VEC}]}, 404),
    "metadata not an object": ("/index/docs/add", {"items": [{"vector": VEC, "metadata": 3}]}, 422),
    "image modality with a URL": ("/v1/embeddings", {"input": "https://example.com/cat.png", "modality": "image"}, 422),
    "token ids as image": ("/v1/embeddings", {"input": [101, 102], "modality": "image"}, 422),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_bad_input_is_a_4xx_with_the_error_body_and_the_service_keeps_serving(client, case) -> None:
    path, payload, status = BAD_REQUESTS[case]
    if isinstance(payload, str):
        response = client.post(path, content=payload, headers={"content-type": "application/json", **AUTH})
    else:
        response = client.post(path, json=payload, headers=AUTH)
    assert_error(response, status)
    assert client.post("/v1/embeddings", json={"input": "still here"}).status_code == 200


def test_bad_uploads(client) -> None:
    assert_error(client.post("/v1/embeddings/upload", files={"files": ("a.txt", b"hello")}), 422, "invalid_image")
    huge = client.post("/v1/embeddings/upload", files={"files": ("big.png", blank_png(1200, 1000))})
    assert_error(huge, 413, "image_too_large")
    assert_error(client.post("/v1/embeddings/upload", data={"model": "image"}), 422)
    assert_error(client.post("/v1/embeddings/upload", files={"files": ("a.png", png_bytes())}, data={"model": "text"}),
                 422, "wrong_modality")  # fmt: skip


def test_routing_errors_use_the_error_body(client) -> None:
    assert_error(client.get("/nowhere"), 404, "not_found")
    assert_error(client.put("/search"), 405, "method_not_allowed")
    assert_error(client.get("/index/nope"), 404, "index_not_found")
    assert_error(client.delete("/index/docs/not-a-number"), 404, "not_found")  # ids are digits only
    wrong = client.delete("/index/docs/add")  # the add route exists, for POST only
    assert_error(wrong, 405, "method_not_allowed")
    assert wrong.headers["allow"] == "POST"


# ------------------------------------------------------------------ operations


def test_info_describes_models_indexes_and_limits(client) -> None:
    info = client.get("/info").json()
    assert {m["name"]: m["dim"] for m in info["models"]} == {"minilm": 384, "alexnet-tiny": 16}
    assert {i["name"] for i in info["indexes"]} == {"docs", "images"}
    assert info["limits"]["max_items"] == 64 and info["auth"] == "api-key" and info["version"]
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_metrics_count_requests_and_time_each_stage(client) -> None:
    client.post("/v1/embeddings", json={"input": SENTENCES[:2]})
    client.post("/search", json={"index": "nope", "vector": VEC, "k": 1})
    text = client.get("/metrics").text
    requests = metric_samples(text, "hsrl_http_requests_total")
    assert requests['{method="POST",route="/v1/embeddings",status="200"}'] >= 1
    assert requests['{method="POST",route="/search",status="404"}'] >= 1
    for stage in ("hsrl_queue_wait_seconds", "hsrl_inference_seconds", "hsrl_batch_size"):
        assert metric_samples(text, f"{stage}_count")['{model="minilm"}'] >= 1
    assert metric_samples(text, "hsrl_http_request_duration_seconds_count")['{route="/v1/embeddings"}'] >= 1
    assert metric_samples(text, "hsrl_queue_items") == {'{model="minilm"}': 0.0, '{model="alexnet-tiny"}': 0.0}
    assert "# TYPE hsrl_batch_size histogram" in text
    # prometheus_client's own collectors: process and garbage-collector metrics come with the library
    assert "python_gc_objects_collected_total" in text and "process_cpu_seconds_total" in text


def test_cors_is_off_by_default_and_on_for_named_origins(tmp_path: Path) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    folder = make_index(tmp_path / "i", dim=4)
    with serve(build_service(text=False, indexes=[("i", folder)])) as live, live.client() as http:
        assert "access-control-allow-origin" not in http.options("/search", headers=preflight).headers
    service = build_service(text=False, indexes=[("i", folder)], cors_origins=("https://app.example",))
    with serve(service) as live, live.client() as http:
        allowed = http.options("/search", headers=preflight)
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
