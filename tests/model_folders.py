"""Shared check of the one model-folder contract (no tests here): a folder a recipe wrote opens with
``hsrl export``, ``hsrl serve`` and ``hsrl eval``, and they all compute the same embeddings.

Each command runs as users run it, in this process: ``hsrl export`` and ``hsrl eval`` through the ``hsrl``
entry point, the service through ``hsrl serve``'s own parser and loader and then a real uvicorn server on
loopback answering ``POST /v1/embeddings``.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import torch

from hsrl.cli import main as hsrl_main
from hsrl.export import load_embeddings
from hsrl.models.folder import model_kind

TEXTS = ["It is a truth universally acknowledged.", "The rain fell on the quiet town.", "Stocks rose on Monday."]


def _image_dataset(folder: Path, channels: int) -> list[bytes]:
    """Three small PNGs in class sub-folders (their bytes, in export order)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for i, label in enumerate(["bag", "coat", "shoe"]):
        pixels = rng.integers(0, 256, (40, 36, 3) if channels == 3 else (40, 36), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        (folder / label).mkdir(parents=True)
        (folder / label / f"{i}.png").write_bytes(buffer.getvalue())
        images.append(buffer.getvalue())
    return images


#: ``hsrl eval image`` on a small Fashion-MNIST sample (k-NN and alignment/uniformity, no linear probe)
IMAGE_EVAL = ["--dataset", "fashion-mnist", "--train-size", "200", "--test-size", "100", "--linear-protocol", "none"]


def _text_corpus(path: Path) -> Path:
    """Ten documents of 20 sentences of *Persuasion* (one a line, blank line between): a quick ``hsrl eval text``."""
    from hsrl.data.text import load_austen

    sentences = [s for doc in load_austen(["persuasion"])[:4] for s in doc.sentences]
    path.write_text("\n\n".join("\n".join(sentences[i : i + 20]) for i in range(0, 200, 20)) + "\n")
    return path


def opens_everywhere(model: Path, tmp_path: Path) -> str:
    """Export, serve and evaluate ``model`` as users would; returns its kind."""
    from service_support import serve

    from hsrl_service.cli import _build_service, build_parser

    tmp_path.mkdir(parents=True, exist_ok=True)
    kind = model_kind(model)
    config = json.loads((model / "hsrl_config.json").read_text()) if kind == "image" else {}
    data = tmp_path / "data"
    if kind == "image":
        inputs = _image_dataset(data, config["preprocess"]["channels"])
        payload = [f"data:image/png;base64,{base64.b64encode(png).decode()}" for png in inputs]
    else:
        data = tmp_path / "data.txt"
        data.write_text("\n".join(TEXTS) + "\n")
        payload = TEXTS

    out = tmp_path / "export"
    assert hsrl_main(["export", "--model", str(model), "--dataset", str(data), "--output", str(out),
                      "--no-progress"]) == 0  # fmt: skip
    exported, _ = load_embeddings(out)
    np.testing.assert_allclose(np.linalg.norm(exported, axis=1), 1.0, atol=1e-5)

    threads = torch.get_num_threads()  # `hsrl serve` sets the process's torch threads; keep this one's
    args = build_parser().parse_args([f"--{kind}-model", str(model), "--torch-threads", str(threads)])
    with serve(_build_service(args)) as server, server.client() as client:
        response = client.post("/v1/embeddings", json={"input": payload})
    assert response.status_code == 200, response.text
    served = np.array([row["embedding"] for row in response.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(served, exported, atol=1e-5)  # one preprocessing, one model: the same rows

    report = tmp_path / "eval.json"
    eval_args = IMAGE_EVAL if kind == "image" else ["--dataset", str(_text_corpus(tmp_path / "eval.txt")),
                                                    "--max-sentences", "30"]  # fmt: skip
    assert hsrl_main(["eval", kind, "--model", str(model), *eval_args, "--output", str(report)]) == 0
    assert report.stat().st_size > 0
    return kind
