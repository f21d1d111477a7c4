"""Image encoders on ONNX Runtime (hsrl.onnx_image): the vectors equal torch's, the export is cached and
refreshed with the weights, every command path (open_model, export, the service over HTTP) takes it, and the
backends it cannot serve are one clear line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from hsrl.backends import BackendError
from hsrl.cli import main as hsrl_main
from hsrl.export import export_embeddings, load_embeddings
from hsrl.models import image as image_models
from hsrl.models.folder import open_model
from hsrl.onnx_image import IMAGE_ONNX_FILE, OnnxImageEncoder, load_image_model

#: architecture -> constructor arguments: each kind of layer hsrl's encoders use
ARCHITECTURES = {
    "small_resnet": {"in_channels": 1, "image_size": 28, "dim": 16, "widths": (8, 16, 24), "channels_last": True},
    "small_alexnet": {"in_channels": 3, "image_size": 32, "dim": 16, "width": 0.125, "fc_dim": 64},
    "small_cnn": {"in_channels": 1, "image_size": 28, "dim": 8, "width": 4},
}


def model_folder(folder: Path, architecture: str, seed: int = 0) -> Path:
    """A saved encoder whose batch-norm statistics moved (a train-mode forward), so eval mode is not identity."""
    torch.manual_seed(seed)
    model = image_models.build_encoder(architecture, **ARCHITECTURES[architecture])
    config = ARCHITECTURES[architecture]
    model.train()(torch.rand(16, config["in_channels"], config["image_size"], config["image_size"]))
    image_models.save(model.eval(), folder)
    return folder


def uint8_batch(architecture: str, n: int = 6, seed: int = 1) -> torch.Tensor:
    config = ARCHITECTURES[architecture]
    shape = (n, config["in_channels"], config["image_size"], config["image_size"])
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_onnx_vectors_equal_torch_for_uint8_and_float_pixels(tmp_path: Path, architecture: str) -> None:
    folder = model_folder(tmp_path / "model", architecture)
    onnx, info = load_image_model(folder, "onnx", threads=1)
    torch_model = image_models.load(folder)
    assert isinstance(onnx, OnnxImageEncoder) and info.backend == "onnx" and info.precision == "fp32"
    assert info.file == str(folder / "onnx" / IMAGE_ONNX_FILE)
    batch = uint8_batch(architecture)
    with torch.no_grad():
        expected = torch_model(batch).numpy()
        expected_float = torch_model(batch.float() / 255).numpy()
    got = onnx(batch).numpy()
    assert got.shape == expected.shape and cosine(got, expected).min() >= 0.9999
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(onnx(batch.float() / 255).numpy(), expected_float, atol=1e-5)
    assert onnx(batch[:1]).shape == (1, expected.shape[1])  # any batch size
    with pytest.raises(ValueError, match="takes"):
        onnx(torch.zeros(2, 2, 28, 28, dtype=torch.uint8))


def test_export_is_cached_and_redone_when_the_weights_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hsrl.onnx_image as onnx_image

    folder = model_folder(tmp_path / "model", "small_resnet")
    load_image_model(folder, "onnx")
    file = folder / "onnx" / IMAGE_ONNX_FILE
    written = file.stat().st_mtime_ns

    def refuse(*args: object) -> None:
        raise AssertionError("exported again although the cached graph is current")

    with monkeypatch.context() as patch:  # a restart opens the cached graph
        patch.setattr(onnx_image, "export_image_encoder", refuse)
        load_image_model(folder, "onnx")
    assert file.stat().st_mtime_ns == written
    model_folder(folder, "small_resnet", seed=1)  # retrained (same architecture, same file size)
    again, _ = load_image_model(folder, "onnx")
    batch = uint8_batch("small_resnet")
    with torch.no_grad():
        np.testing.assert_allclose(again(batch).numpy(), image_models.load(folder)(batch).numpy(), atol=1e-5)
    assert file.stat().st_mtime_ns != written


def test_cache_folder_leaves_the_model_folder_untouched(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "model", "small_cnn")
    _, info = load_image_model(folder, "onnx", cache_root=tmp_path / "cache")
    assert Path(info.file).is_relative_to(tmp_path / "cache") and Path(info.file).is_file()
    assert not (folder / "onnx").exists()


def test_backends_it_cannot_serve_are_one_line_and_auto_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hsrl.onnx_image as onnx_image

    folder = model_folder(tmp_path / "model", "small_cnn")
    with pytest.raises(BackendError, match="use --backend onnx for image models"):
        load_image_model(folder, "onnx-int8")
    with pytest.raises(BackendError, match="unknown backend"):
        load_image_model(folder, "tensorrt")

    def broken(*args: object) -> None:
        raise RuntimeError("unsupported operator\nwith details")

    monkeypatch.setattr(onnx_image, "export_image_encoder", broken)
    expected = r"ONNX export of .* failed \(RuntimeError: unsupported operator\); use --backend torch"
    with pytest.raises(BackendError, match=expected):
        load_image_model(folder, "onnx")
    module, info = load_image_model(folder, "auto")
    assert isinstance(module, image_models.ImageEncoder) and info.backend == "torch"
    assert info.requested == "auto" and "unsupported operator" in info.fallback_reason


def test_open_model_and_export_run_an_image_model_on_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    folder = model_folder(tmp_path / "model", "small_alexnet")
    rng = np.random.default_rng(0)
    for i, shape in enumerate([(40, 48, 3), (32, 32, 3), (50, 36), (33, 60, 3)]):
        (tmp_path / "images" / "x").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(tmp_path / "images" / "x" / f"{i}.png")
    paths = sorted(str(p) for p in (tmp_path / "images" / "x").iterdir())
    opened = open_model(folder, backend="onnx")
    assert opened.backend.backend == "onnx"
    np.testing.assert_allclose(opened.encode(paths), open_model(folder).encode(paths), atol=1e-5)
    export_embeddings(folder, tmp_path / "images", tmp_path / "torch", progress=False)
    argv = ["export", "--model", str(folder), "--dataset", str(tmp_path / "images"), "--output",
            str(tmp_path / "onnx-export"), "--backend", "onnx", "--no-progress"]  # fmt: skip
    assert hsrl_main(argv) == 0
    vectors, _ = load_embeddings(tmp_path / "onnx-export")
    np.testing.assert_allclose(vectors, load_embeddings(tmp_path / "torch")[0], atol=1e-5)
    argv[-2] = "onnx-int8"
    argv[argv.index("--output") + 1] = str(tmp_path / "int8")
    assert hsrl_main(argv) == 2
    assert "use --backend onnx for image models" in capsys.readouterr().err.strip().splitlines()[-1]


def test_service_serves_an_image_model_on_onnx_over_http(tmp_path: Path) -> None:
    from service_support import build_service, data_uri, png_bytes, serve

    from hsrl_service.encoders import load_image_encoder

    folder = model_folder(tmp_path / "model", "small_alexnet")
    pictures = [png_bytes(seed=1), png_bytes(64, 48, seed=2)]
    on_onnx = load_image_encoder(folder, name="tiny", backend="onnx", threads=1)
    with serve(build_service(text=False, encoders=[on_onnx])) as server, server.client() as http:
        body = http.post("/v1/embeddings", json={"input": [data_uri(p) for p in pictures]}).json()
        info = http.get("/info").json()
    rows = np.array([item["embedding"] for item in body["data"]], dtype=np.float32)
    # the reference: what `hsrl export` computes with torch for the same files
    paths = []
    for i, data in enumerate(pictures):
        (tmp_path / f"{i}.png").write_bytes(data)
        paths.append(str(tmp_path / f"{i}.png"))
    assert cosine(rows, open_model(folder).encode(paths)).min() >= 0.9999
    described = next(m for m in info["models"] if m["name"] == "tiny")
    assert described["backend"] == "onnx" and described["precision"] == "fp32"
    assert described["file"].endswith(f"onnx/{IMAGE_ONNX_FILE}")
