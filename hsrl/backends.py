"""Inference backends for text models: PyTorch, ONNX Runtime in fp32 or dynamic int8, or OpenVINO in fp32.

    model, info = load_text_model("runs/demo/model", "onnx", threads=1)
    model.encode(["Anne Elliot"], normalize_embeddings=True)      # a SentenceTransformer, whatever the backend

Everything goes through sentence-transformers' own backend support (``SentenceTransformer(path,
backend="onnx")``, which exports with Optimum's ONNX exporter and runs ONNX Runtime) and its
``export_dynamic_quantized_onnx_model`` (Optimum's ``ORTQuantizer``); nothing here writes an ONNX graph itself.

Backends:

* ``torch``: the model as trained (every text model hsrl writes, the Quick-Thought GRU included).
* ``onnx``: the same math on ONNX Runtime, fp32; vectors equal torch's to ~1e-7.
* ``onnx-int8``: ONNX Runtime with weights (and activations, dynamically) quantised to int8 for this CPU's
  instruction set (``avx512_vnni`` > ``avx512`` > ``avx2`` > ``arm64``); faster, and the vectors differ
  (mean cosine to fp32 about 0.99): the README publishes the retrieval quality it costs.
* ``openvino``: the same math on Intel's OpenVINO runtime, fp32 (sentence-transformers' ``backend="openvino"``:
  Optimum Intel's exporter), precision pinned to f32 (cosine to torch ≥ 0.9999 in the tests). On this CPU it is
  the fastest exact backend: its fused kernels beat both eager PyTorch and ONNX Runtime at sentence lengths
  where those two are compute-bound (benchmarks/results/onnx_probe.md).
* ``openvino-bf16``: OpenVINO with bfloat16 inference precision, on CPUs that compute in bf16 (``avx512_bf16`` or
  AMX; refused elsewhere): the same exported graph, activations and matrix products in bf16 (cosine to fp32 about
  0.9999, its retrieval cost measured in the README).
* ``auto``: ``onnx`` when the model exports, else ``torch`` (logged); the one backend that falls back.

Exported files are cached so a restart does not export again: in ``MODEL/onnx/`` (``MODEL/openvino/``) when the
model folder is writable (where sentence-transformers itself looks for them), else in a cache folder
(``$HSRL_ONNX_CACHE``, default ``~/.cache/hsrl/onnx/<hash>``) that mirrors the model folder by symlinks and adds
its own export folders. Each export writes ``hsrl_export.json`` beside its files with a fingerprint of the
weights it came from; a model whose weights changed is exported again. Files are written to a temporary name
and renamed.

Image encoders have their own ONNX path (:mod:`hsrl.onnx_image`: ``torch.onnx``, the same cache). Which text
encoders stay on torch: the Quick-Thought GRU (a custom module, not a 🤗 transformers model: Optimum
has no export config for it) and any folder Optimum cannot export; ``onnx`` refuses them in one line,
``auto`` serves them on torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BACKENDS",
    "BackendError",
    "BackendInfo",
    "check_backend",
    "cpu_has_bf16",
    "export_is_current",
    "int8_instruction_set",
    "load_text_model",
    "onnx_cache_folder",
    "open_or_fall_back",
    "publish_export",
    "record_export",
    "require_runtime",
    "session_options",
]

log = logging.getLogger("hsrl.backends")

#: The backends a command accepts (``auto``: onnx, falling back to torch when the export fails).
BACKENDS = ("torch", "onnx", "onnx-int8", "openvino", "openvino-bf16", "auto")
#: The extra that brings ONNX Runtime and Optimum.
ONNX_EXTRA = "onnx"
#: The extra that brings OpenVINO and Optimum Intel.
OPENVINO_EXTRA = "openvino"
#: The folders inside a model folder that hold exports (each mirrored file by file in a cache folder).
EXPORT_FOLDERS = ("onnx", "openvino")
_EXPORT_RECORD = "hsrl_export.json"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


class BackendError(ValueError):
    """A backend that cannot serve this model here; the message is one line naming what to do."""


@dataclass(frozen=True)
class BackendInfo:
    """What serves a model: ``backend`` (torch | onnx | onnx-int8), ``precision`` and the file it runs."""

    backend: str
    precision: str
    requested: str
    file: str | None = None
    fallback_reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": self.backend, "precision": self.precision}
        if self.requested != self.backend:
            out["requested_backend"] = self.requested
        if self.file:
            out["file"] = self.file
        if self.fallback_reason:
            out["fallback_reason"] = self.fallback_reason
        return out


def check_backend(name: str) -> str:
    """``name`` if it is a known backend, else a one-line :class:`BackendError`."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    return name


#: what each exported backend imports, the packages' names for the message, and the extra that installs them
#: (``onnx-image``: an image encoder runs a bare ONNX Runtime session, exported by torch.onnx, no Optimum)
_RUNTIMES = {
    "onnx": (("onnxruntime", "optimum.onnxruntime"), "ONNX Runtime and Optimum", ONNX_EXTRA),
    "onnx-image": (("onnxruntime",), "ONNX Runtime", ONNX_EXTRA),
    "openvino": (("openvino", "optimum.intel.openvino"), "OpenVINO and Optimum Intel", OPENVINO_EXTRA),
}


def require_runtime(backend: str, *, images: bool = False) -> None:
    """A one-line :class:`BackendError` naming the extra to install when ``backend``'s runtime is missing."""
    import importlib

    runtime = "openvino" if backend.startswith("openvino") else "onnx-image" if images else "onnx"
    modules, names, extra = _RUNTIMES[runtime]
    try:
        for module in modules:
            importlib.import_module(module)
    except ImportError as error:
        raise BackendError(
            f"backend {backend!r} needs {names} ({error}); install them with `pip install 'hsrl[{extra}]'`"
        ) from None


def int8_instruction_set() -> str:
    """The best dynamic-int8 configuration sentence-transformers offers for this CPU (read from /proc/cpuinfo).

    ``avx512_vnni`` has int8 dot products (VPDPBUSD), the fastest; machines without AVX-512 get ``avx2``.
    """
    import platform

    if platform.machine().lower() in {"arm64", "aarch64"}:
        return "arm64"
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"


def _fingerprint(folder: Path) -> dict[str, Any]:
    """Size and mtime (ns) of the weight files an export came from: a retrained folder gets a new export, even
    one saved within the same second with weights of the same size."""
    found = {}
    for name in _WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            stat = path.stat()
            found[name] = [stat.st_size, stat.st_mtime_ns]
    return found


def _writable(folder: Path) -> bool:
    """Whether files can be created in ``folder`` (tried, not guessed: root passes every ``os.access`` check, and a
    read-only mount refuses even root)."""
    target = next((folder / name for name in EXPORT_FOLDERS if (folder / name).is_dir()), folder)
    try:
        with tempfile.NamedTemporaryFile(dir=target, prefix=".hsrl-probe-"):
            return True
    except OSError:
        return False


def onnx_cache_folder(model_folder: str | os.PathLike[str], cache_root: str | os.PathLike[str] | None = None) -> Path:
    """Where a model's ONNX files live: the model folder itself when writable, else a mirror in the cache.

    The mirror (``cache_root/<sha1 of the resolved path>``) holds a symlink to every entry of the model folder
    but its export folders (:data:`EXPORT_FOLDERS`), so ``SentenceTransformer(mirror, backend="onnx")`` reads the
    tokenizer and configuration from the model and the exported files from the mirror's own ``onnx/``.
    """
    folder = Path(model_folder).resolve()
    if cache_root is None and _writable(folder):
        return folder
    root = Path(cache_root or os.environ.get("HSRL_ONNX_CACHE") or Path.home() / ".cache" / "hsrl" / "onnx")
    mirror = root / hashlib.sha1(str(folder).encode()).hexdigest()[:16]
    mirror.mkdir(parents=True, exist_ok=True)
    for entry in folder.iterdir():
        if entry.name in EXPORT_FOLDERS:
            continue
        link = mirror / entry.name
        if not link.is_symlink() or link.resolve() != entry.resolve():
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            link.symlink_to(entry)
    # Exports already in a read-only model folder are reused: linked file by file into the mirror's own folders.
    for name in EXPORT_FOLDERS:
        if (folder / name).is_dir():
            (mirror / name).mkdir(exist_ok=True)
            for entry in (folder / name).iterdir():
                link = mirror / name / entry.name
                if not link.exists():
                    link.symlink_to(entry)
    return mirror


def export_is_current(folder: Path, source: Path, file_name: str, subfolder: str = "onnx") -> bool:
    """Whether ``folder/subfolder/file_name`` exists and was exported from ``source``'s current weights."""
    record_path = folder / subfolder / _EXPORT_RECORD
    if not (folder / subfolder / file_name).is_file():
        return False
    if not record_path.is_file():  # an export shipped with the model (e.g. from the Hub): trust it
        return True
    with contextlib.suppress(OSError, ValueError):
        record = json.loads(record_path.read_text())
        return record.get("fingerprint") == _fingerprint(source)
    return False


def record_export(folder: Path, source: Path, files: list[str], subfolder: str = "onnx") -> None:
    """Note in ``folder/subfolder/hsrl_export.json`` that ``files`` were exported from ``source``'s weights."""
    from hsrl.checkpoints import atomic_write_json

    record_path = folder / subfolder / _EXPORT_RECORD
    record: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        record = json.loads(record_path.read_text())
    if record.get("fingerprint") != _fingerprint(source):
        record = {"fingerprint": _fingerprint(source), "files": []}
    record["files"] = sorted(set(record.get("files", [])) | set(files))
    atomic_write_json(record_path, record)


def publish_export(temporary: Path, folder: Path, names: list[str], subfolder: str = "onnx") -> None:
    """Move ``names`` from ``temporary/subfolder`` into ``folder/subfolder``, each by an atomic rename."""
    target = folder / subfolder
    target.mkdir(exist_ok=True)
    for name in names:
        staged = target / f".{name}.tmp-{os.getpid()}"
        shutil.copyfile(temporary / subfolder / name, staged)
        with open(staged, "rb") as handle:
            os.fsync(handle.fileno())
        if (target / name).is_symlink():
            (target / name).unlink()
        os.replace(staged, target / name)


def session_options(threads: int | None) -> Any:
    """ONNX Runtime session options: ``threads`` intra-op threads (None: its default), idle threads asleep."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    # Idle pool threads spin-wait for work by default; on a shared few-core machine that burns the core the
    # HTTP loop and the tokenizer need, so they sleep instead.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _open(folder: Path, backend: str, device: str | None, **kwargs: Any) -> Any:
    from hsrl.models.quickthought import load_encoder  # what load_sentence_transformer calls, with kwargs

    return load_encoder(folder, device=device or "cpu", backend=backend, **kwargs)


def _export_onnx(folder: Path, source: Path, device: str | None, threads: int | None) -> Any:
    """The model on ONNX Runtime fp32, exported (and cached) first unless a matching export is there."""
    file_name = "model.onnx"
    options = {"file_name": f"onnx/{file_name}", "session_options": session_options(threads)}
    if export_is_current(folder, source, file_name):
        return _open(folder, "onnx", device, model_kwargs=options)
    with _quiet_optimum():
        model = _open(
            folder, "onnx", device, model_kwargs={"export": True, "session_options": options["session_options"]}
        )
    with tempfile.TemporaryDirectory(dir=folder, prefix=".onnx-export-") as temporary:
        model.transformers_model.save_pretrained(temporary)  # sentence-transformers puts it in onnx/
        names = sorted(p.name for p in (Path(temporary) / "onnx").iterdir() if p.name.startswith(file_name))
        publish_export(Path(temporary), folder, names)
    record_export(folder, source, names)
    log.info("exported %s to ONNX: %s", source, folder / "onnx" / file_name)
    return model


def _export_int8(folder: Path, source: Path, device: str | None, threads: int | None) -> tuple[Any, str]:
    from sentence_transformers.backend import export_dynamic_quantized_onnx_model

    isa = int8_instruction_set()
    file_name = f"model_qint8_{isa}.onnx"
    options = {"file_name": f"onnx/{file_name}", "session_options": session_options(threads)}
    if not export_is_current(folder, source, file_name):
        fp32 = _export_onnx(folder, source, device, threads)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".onnx-export-") as temporary, _quiet_optimum():
            export_dynamic_quantized_onnx_model(fp32, isa, temporary)
            publish_export(Path(temporary), folder, [file_name])
        record_export(folder, source, [file_name])
        log.info("quantised %s to int8 (%s): %s", source, isa, folder / "onnx" / file_name)
    return _open(folder, "onnx", device, model_kwargs=options), file_name


def _openvino_config(threads: int | None, precision: str = "f32") -> dict[str, str]:
    """OpenVINO CPU settings: ``precision`` pinned (OpenVINO would otherwise pick bf16 by itself on a CPU that has
    it), one stream for the one worker thread that calls the model, and ``threads`` inference threads."""
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    return config


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin can compute in bfloat16 here (``avx512_bf16`` or AMX)."""
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _export_openvino(
    folder: Path, source: Path, device: str | None, threads: int | None, precision: str = "f32"
) -> Any:
    """The model on OpenVINO at ``precision`` (f32 | bf16), exported (and cached in ``openvino/``) first unless a
    matching export is there; both precisions run the same exported graph."""
    file_name = "openvino_model.xml"
    options = {"file_name": f"openvino/{file_name}", "ov_config": _openvino_config(threads, precision)}
    if export_is_current(folder, source, file_name, "openvino"):
        return _open(folder, "openvino", device, model_kwargs=options)
    with _quiet_optimum():
        model = _open(folder, "openvino", device, model_kwargs={"export": True, "ov_config": options["ov_config"]})
    with tempfile.TemporaryDirectory(dir=folder, prefix=".openvino-export-") as temporary:
        model.transformers_model.save_pretrained(temporary)  # sentence-transformers puts it in openvino/
        names = sorted(p.name for p in (Path(temporary) / "openvino").iterdir() if p.name.startswith("openvino_model"))
        publish_export(Path(temporary), folder, names, "openvino")
    record_export(folder, source, names, "openvino")
    log.info("exported %s to OpenVINO: %s", source, folder / "openvino" / file_name)
    return model


@contextlib.contextmanager
def _quiet_optimum():
    """Optimum and sentence-transformers log export chatter at warning level; keep it out of the user's way."""
    loggers = [logging.getLogger(name) for name in ("sentence_transformers", "optimum", "transformers")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def open_or_fall_back(
    source: Path,
    backend: str,
    open_exported: Callable[[], tuple[Any, BackendInfo]],
    open_on_torch: Callable[[], Any],
) -> tuple[Any, BackendInfo]:
    """``open_exported()``, or what its failure means for ``backend``: the one policy of text and image models.

    A :class:`BackendError` (a runtime missing, a model the backend cannot take) keeps its message; any other
    failure is an export that failed, said in one line with its first line. ``auto`` then serves the model on
    torch (``open_on_torch()``), logs why and records it in :attr:`BackendInfo.fallback_reason` (``/info`` shows
    it); every other backend raises: falling back silently would serve a user who asked for ONNX on torch.
    """
    try:
        return open_exported()
    except Exception as error:
        if isinstance(error, BackendError):
            message = str(error)
        else:
            runtime = "OpenVINO" if backend.startswith("openvino") else "ONNX"
            message = f"{runtime} export of {source} failed ({_first_line(error)})"
        if backend != "auto":
            if not isinstance(error, BackendError):
                message += "; use --backend torch, or --backend auto to fall back to torch"
            raise BackendError(message) from error
        log.warning("backend auto: %s; serving on torch", message)
        return open_on_torch(), BackendInfo("torch", "fp32", "auto", fallback_reason=message)


def load_text_model(
    path: str | os.PathLike[str],
    backend: str = "torch",
    *,
    device: str | None = None,
    threads: int | None = None,
    cache_root: str | os.PathLike[str] | None = None,
) -> tuple[Any, BackendInfo]:
    """Open a sentence-transformers folder on ``backend``; returns the model and what serves it.

    Args:
        path: a sentence-transformers folder (``hsrl.models.text.resolve_model_path`` resolves names).
        backend: one of :data:`BACKENDS`.
        device: torch device for ``torch``; the ONNX backends run on ONNX Runtime's CPU provider here (its
            CUDA provider when ``onnxruntime-gpu`` is installed), ``openvino`` on OpenVINO's CPU plugin.
        threads: ONNX Runtime's intra-op threads, OpenVINO's inference threads (torch's are set with
            ``torch.set_num_threads``).
        cache_root: force the export cache there instead of the model folder.

    Raises:
        BackendError: unknown backend, ONNX packages missing (naming the extra), or an export that fails
            (except with ``auto``, which falls back to torch).
    """
    from hsrl.models.text import load_sentence_transformer

    check_backend(backend)
    source = Path(path)
    if backend == "torch":
        return load_sentence_transformer(source, device=device), BackendInfo("torch", "fp32", "torch")

    def open_exported() -> tuple[Any, BackendInfo]:
        require_runtime(backend)
        if not (source / "config.json").is_file():
            raise BackendError(
                f"{source} has no 🤗 transformers model (config.json) for Optimum to export to "
                f"{'OpenVINO' if backend.startswith('openvino') else 'ONNX'} (e.g. a Quick-Thought GRU); serve it with "
                "--backend torch"
            )
        if backend == "openvino-bf16" and not cpu_has_bf16():  # refused before any cache folder is made
            raise BackendError("openvino-bf16 needs a CPU that computes in bfloat16 (avx512_bf16 or AMX); this one "
                               "does not: use --backend openvino")  # fmt: skip
        folder = onnx_cache_folder(source, cache_root)
        if backend.startswith("openvino"):
            precision = "bf16" if backend == "openvino-bf16" else "f32"
            model = _export_openvino(folder, source, device, threads, precision)
            file = str(folder / "openvino" / "openvino_model.xml")
            return model, BackendInfo(backend, "bf16" if precision == "bf16" else "fp32", backend, file)
        if backend == "onnx-int8":
            model, file_name = _export_int8(folder, source, device, threads)
            return model, BackendInfo("onnx-int8", "int8", backend, str(folder / "onnx" / file_name))
        model = _export_onnx(folder, source, device, threads)
        return model, BackendInfo("onnx", "fp32", backend, str(folder / "onnx" / "model.onnx"))

    return open_or_fall_back(source, backend, open_exported, lambda: load_sentence_transformer(source, device=device))
