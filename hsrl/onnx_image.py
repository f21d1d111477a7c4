"""hsrl image encoders on ONNX Runtime: exported once with PyTorch's own ONNX exporter, then run by a session.

    module, info = load_image_model("runs/fm/model", "onnx", threads=1)
    module(torch.from_numpy(uint8_batch))          # (n, dim) unit rows, as the torch encoder's forward

Every hsrl image architecture (SmallAlexNet, SmallResNet, the small CNN, torchvision's ResNets) is plain
convolutions, batch norm, pooling and linear layers, which ``torch.onnx.export`` turns into a graph whose
output equals torch's to ~1e-7 (the tests check cosine ≥ 0.9999). The graph takes float32 pixels in [0, 1]
(``(n, c, h, w)``, any batch size, the model's own image size); a uint8 batch (what
:class:`hsrl.models.image.ImagePreprocess` makes) is scaled by 1/255 first, as the torch encoder does.

Caching is the text backends' (:mod:`hsrl.backends`): ``MODEL/onnx/image.onnx`` when the folder is writable,
else a mirror in ``$HSRL_ONNX_CACHE``; ``onnx/hsrl_export.json`` fingerprints the weights, so a restart opens
the file in milliseconds and a retrained folder is exported again. Written to a temporary file, fsynced, renamed.

Backends: ``onnx`` (fp32); ``auto`` (onnx, else torch, logged); ``openvino`` (text only here) and ``onnx-int8``
are refused in one line: ONNX Runtime's dynamic int8 quantises MatMul weights (the bulk of a transformer), while
these encoders' cost is in convolutions, which it would run as ConvInteger, slower than fp32 on a CPU.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from hsrl.backends import (
    BackendError,
    BackendInfo,
    check_backend,
    export_is_current,
    onnx_cache_folder,
    open_or_fall_back,
    publish_export,
    record_export,
    require_runtime,
    session_options,
)

__all__ = ["IMAGE_BACKENDS", "IMAGE_ONNX_FILE", "OnnxImageEncoder", "export_image_encoder", "load_image_model"]

log = logging.getLogger("hsrl.onnx_image")

#: The backends that run image encoders (the others in :data:`hsrl.backends.BACKENDS` are refused, see above).
IMAGE_BACKENDS = ("torch", "onnx", "auto")
#: the exported graph's name inside ``onnx/`` (beside a text model's ``model.onnx`` in a two-tower folder)
IMAGE_ONNX_FILE = "image.onnx"
_INPUT, _OUTPUT = "pixels", "embedding"


class OnnxImageEncoder:
    """The forward of an hsrl image encoder on an ONNX Runtime session.

    Called like the torch module (``encoder(batch)`` → ``(n, dim)`` float32 torch tensor) and with the same
    ``preprocess``, ``dim``, ``architecture`` and ``config``, so code that embeds images through
    :class:`hsrl.models.folder.ImageModel` or the service runs it unchanged. Layer taps (``forward_taps``) need
    the torch module.
    """

    def __init__(self, session: Any, reference: Any, file: Path) -> None:
        self.session, self.file = session, file
        self.preprocess, self.dim = reference.preprocess, int(reference.dim)
        self.architecture, self.config = reference.architecture, dict(reference.config)
        self.channels, self.size = int(self.preprocess.channels), int(self.preprocess.size)

    def __call__(self, batch: Any) -> Any:
        import torch

        array = batch.detach().cpu().numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch)
        if array.ndim != 4 or array.shape[1] != self.channels:
            raise ValueError(f"this encoder takes (N, {self.channels}, H, W) images, got shape {tuple(array.shape)}")
        pixels = array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
        (output,) = self.session.run([_OUTPUT], {_INPUT: np.ascontiguousarray(pixels)})
        return torch.from_numpy(output)

    def eval(self) -> OnnxImageEncoder:
        return self

    def to(self, device: Any) -> OnnxImageEncoder:
        """A no-op: the session's execution provider (chosen at load) decides where it runs."""
        return self


def export_image_encoder(model: Any, path: Path) -> None:
    """Write ``model`` (an :class:`hsrl.models.image.ImageEncoder`, eval mode, CPU) as an ONNX graph at ``path``:
    input ``pixels`` float32 ``(batch, c, size, size)`` in [0, 1], output ``embedding`` ``(batch, dim)``."""
    import torch

    preprocess = model.preprocess
    example = torch.rand(2, int(preprocess.channels), int(preprocess.size), int(preprocess.size))
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript-based exporter (dynamo=False) needs no extra package; it warns that it is the older one
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), str(path), dynamo=False, input_names=[_INPUT], output_names=[_OUTPUT],
            dynamic_axes={_INPUT: {0: "batch"}, _OUTPUT: {0: "batch"}}, opset_version=17,
        )  # fmt: skip


def _session(file: Path, device: str | None, threads: int | None) -> Any:
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if (device or "cpu").startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(file), session_options(threads), providers=providers)


def _onnx_model(source: Path, device: str | None, threads: int | None, cache_root: Any) -> tuple[Any, Path]:
    from hsrl.models.image import load

    reference = load(source)  # also proves the folder is a complete image model before anything is written
    folder = onnx_cache_folder(source, cache_root)
    file = folder / "onnx" / IMAGE_ONNX_FILE
    if not export_is_current(folder, source, IMAGE_ONNX_FILE):
        with tempfile.TemporaryDirectory(dir=folder, prefix=".onnx-export-") as temporary:
            (Path(temporary) / "onnx").mkdir()
            export_image_encoder(reference, Path(temporary) / "onnx" / IMAGE_ONNX_FILE)
            publish_export(Path(temporary), folder, [IMAGE_ONNX_FILE])
        record_export(folder, source, [IMAGE_ONNX_FILE])
        log.info("exported %s to ONNX: %s", source, file)
    return OnnxImageEncoder(_session(file, device, threads), reference, file), file


def load_image_model(
    path: str | os.PathLike[str],
    backend: str = "onnx",
    *,
    device: str | None = None,
    threads: int | None = None,
    cache_root: str | os.PathLike[str] | None = None,
) -> tuple[Any, BackendInfo]:
    """Open an hsrl image model folder on ``backend``; returns the callable encoder and what serves it.

    Args:
        path: an hsrl image model folder (``model.safetensors`` + ``hsrl_config.json``).
        backend: one of :data:`IMAGE_BACKENDS` (``onnx-int8`` and ``openvino`` are refused in one line).
        device: ``cuda…`` uses ONNX Runtime's CUDA provider when ``onnxruntime-gpu`` is installed.
        threads: ONNX Runtime's intra-op threads.
        cache_root: force the export cache there instead of the model folder.

    Raises:
        BackendError: an unknown backend, ``onnx-int8``, ONNX Runtime missing (naming the extra), or an export
            that fails (except with ``auto``, which falls back to torch).
    """
    from hsrl.models.image import load

    check_backend(backend)
    source = Path(path)
    if backend == "torch":
        return load(source, map_location=device or "cpu"), BackendInfo("torch", "fp32", "torch")
    if backend.startswith("openvino"):
        raise BackendError(f"{source}: the openvino backend runs text models; use --backend onnx for image models")
    if backend == "onnx-int8":
        raise BackendError(
            f"{source}: onnx-int8 is for text models (dynamic int8 quantises a transformer's MatMuls; an image "
            "encoder's convolutions would run slower as ConvInteger); use --backend onnx for image models"
        )

    def open_exported() -> tuple[Any, BackendInfo]:
        require_runtime(backend, images=True)
        module, file = _onnx_model(source, device, threads, cache_root)
        return module, BackendInfo("onnx", "fp32", backend, str(file))

    return open_or_fall_back(source, backend, open_exported, lambda: load(source, map_location=device or "cpu"))
