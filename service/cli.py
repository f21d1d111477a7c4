"""``hsrl serve``: load the models and indexes named on the command line, then run the app on uvicorn.

    hsrl serve --text-model runs/bookcorpus/model --index austen=runs/austen-index --port 8000

Errors a user can cause (no model and no index, a missing folder, a bad flag) end in one line on stderr and
exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from hsrl.backends import BACKENDS
from hsrl.cli.harness import OneLineArgumentParser, UsageError, run_cli
from hsrl.onnx_image import IMAGE_BACKENDS

__all__ = ["build_parser", "main"]


_DEFAULT = " (default %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    """The options of ``hsrl serve`` (the Dockerfile's CMD is checked against this parser)."""
    parser = OneLineArgumentParser(
        prog="hsrl serve",
        description="Serve embeddings (OpenAI-compatible /v1/embeddings) and nearest-neighbour search over HTTP.",
    )
    models = parser.add_argument_group("models and indexes (at least one)")
    models.add_argument("--text-model", metavar="[NAME=]PATH", help="sentence-transformers model folder")
    models.add_argument("--image-model", metavar="[NAME=]PATH", help="hsrl image model folder")
    models.add_argument(
        "--multimodal-model",
        metavar="[NAME=]PATH",
        help="two-tower image-text model folder (recipes/image_text.py): serves NAME-text and NAME-image into one "
        "space; not with --text-model or --image-model",
    )
    models.add_argument(
        "--index",
        metavar="[NAME=]PATH",
        action="append",
        default=[],
        help="an hsrl.index folder; repeatable; PATH alone names it after the folder",
    )
    models.add_argument("--device", default=None, help="torch device (default: cuda if present, else cpu)")
    models.add_argument(
        "--backend",
        default="torch",
        choices=BACKENDS,
        help="what runs the text model: torch, onnx (ONNX Runtime fp32), onnx-int8 (dynamic int8), openvino "
        "(OpenVINO fp32), openvino-bf16 (OpenVINO bfloat16, on CPUs that have it), auto (onnx, else torch); "
        "exports are made once and cached next to the model" + _DEFAULT,
    )
    models.add_argument(
        "--image-backend",
        default="torch",
        choices=IMAGE_BACKENDS,
        help="what runs the image model: torch, onnx (ONNX Runtime fp32, exported once with torch.onnx and cached "
        "next to the model), auto (onnx, else torch)" + _DEFAULT,
    )
    placements = ["auto", "never", "shard", "replicate"]
    models.add_argument("--index-gpu", default="auto", choices=placements, help="index placement" + _DEFAULT)
    models.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="intra-op threads of torch and ONNX Runtime (default: $OMP_NUM_THREADS, else one per core less one for "
        "the HTTP loop and the tokenizer)",
    )
    models.add_argument("--index-mmap", action="store_true", help="memory-map the indexes (read-only: no writes)")

    server = parser.add_argument_group("server")
    host, port = os.environ.get("HSRL_HOST", "127.0.0.1"), os.environ.get("HSRL_PORT", "8000")
    server.add_argument("--host", default=host, help="address to bind (default: $HSRL_HOST or 127.0.0.1)")
    server.add_argument("--port", type=int, default=port, help="port (default: $HSRL_PORT or 8000)")
    server.add_argument(
        "--api-key",
        default=None,
        help="bearer key required on every route but /health and /metrics (default: $HSRL_API_KEY; none = open)",
    )
    server.add_argument(
        "--public-reads",
        action="store_true",
        help="with --api-key: leave reads (embeddings, search, models, info, schema) open; only index writes need it",
    )
    server.add_argument("--cors-origin", action="append", default=[], help="allowed origin (repeatable; default off)")
    levels = ["critical", "error", "warning", "info", "debug"]
    server.add_argument("--log-level", default="info", choices=levels, help="log level" + _DEFAULT)

    batching = parser.add_argument_group("micro-batching")
    batching.add_argument("--max-batch-size", type=int, default=32, help="most items per model call" + _DEFAULT)
    batching.add_argument(
        "--max-wait-ms",
        type=float,
        default=0.0,
        help="how long an idle worker waits for a batch to fill (0: start at once; batches form while it is busy)"
        + _DEFAULT,
    )
    batching.add_argument(
        "--batch-window",
        type=int,
        default=256,
        help="items taken off the queue per round; texts are sorted by length within it" + _DEFAULT,
    )
    batching.add_argument(
        "--max-batch-tokens",
        type=int,
        default=16384,
        help="most padded tokens per text model call (items x longest; like TEI's); 0: no bound" + _DEFAULT,
    )
    batching.add_argument("--max-queue", type=int, default=1024, help="items waiting before 429" + _DEFAULT)
    batching.add_argument("--wedge-timeout-s", type=float, default=120.0, help="a longer batch: /health 503" + _DEFAULT)

    limits = parser.add_argument_group("request limits")
    limits.add_argument("--max-request-bytes", type=int, default=16 * 1024 * 1024, help="HTTP body size" + _DEFAULT)
    limits.add_argument("--max-items", type=int, default=2048, help="inputs per request" + _DEFAULT)
    limits.add_argument("--max-text-chars", type=int, default=32_768, help="characters per text" + _DEFAULT)
    limits.add_argument("--max-image-pixels", type=int, default=4096 * 4096, help="width x height per image" + _DEFAULT)
    limits.add_argument("--max-k", type=int, default=1000, help="neighbours per search" + _DEFAULT)
    return parser


def named_path(spec: str, flag: str) -> tuple[str | None, Path]:
    """``NAME=PATH`` or ``PATH`` (name ``None``: the caller names it after the folder)."""
    name, sep, path = spec.partition("=")
    if not sep or "/" in name:  # a path that merely contains "="
        return None, Path(spec)
    if not name or not path:
        raise UsageError(f"{flag} {spec!r}: expected NAME=PATH or PATH")
    return name, Path(path)


def _torch_threads(requested: int | None) -> int | None:
    """Intra-op threads for the models: the flag, else $OMP_NUM_THREADS (torch reads it), else cores - 1.

    Measured on a 2-core machine: the model in the worker thread ran 2.5x faster with 1 thread than with 2,
    because the event loop, tokenizer and clients take a core and an OpenMP team stalls at every barrier
    when one of its threads is descheduled.
    """
    if requested is not None:
        if requested < 1:
            raise UsageError(f"--torch-threads must be >= 1, got {requested}")
        return requested
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def _build_service(args: argparse.Namespace):  # -> hsrl_service.runtime.Service (imports deferred: --help stays fast)
    from hsrl_service.encoders import load_image_encoder, load_text_encoder
    from hsrl_service.indexes import IndexRegistry
    from hsrl_service.limits import Limits
    from hsrl_service.runtime import BatchingConfig, Service, ServiceConfig

    if not (args.text_model or args.image_model or args.multimodal_model or args.index):
        raise UsageError("nothing to serve: give --text-model, --image-model, --multimodal-model or --index")
    if args.multimodal_model and (args.text_model or args.image_model):
        raise UsageError("--multimodal-model serves both modalities: drop --text-model and --image-model")
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port must be 1..65535, got {args.port}")
    limits = Limits(
        max_request_bytes=args.max_request_bytes,
        max_items=args.max_items,
        max_text_chars=args.max_text_chars,
        max_image_pixels=args.max_image_pixels,
        max_k=args.max_k,
    )
    batching = BatchingConfig(
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        window=args.batch_window,
        wedge_timeout_s=args.wedge_timeout_s,
        max_batch_tokens=args.max_batch_tokens or None,
    )
    if args.max_batch_tokens < 0:
        raise UsageError(f"--max-batch-tokens must be >= 0, got {args.max_batch_tokens}")
    api_key = args.api_key or os.environ.get("HSRL_API_KEY") or None
    if args.public_reads and not api_key:
        raise UsageError("--public-reads needs --api-key (or $HSRL_API_KEY): without a key everything is open")
    config = ServiceConfig(
        limits=limits,
        batching=batching,
        api_key=api_key,
        public_reads=args.public_reads,
        cors_origins=tuple(args.cors_origin),
    )
    indexes = IndexRegistry()
    for spec in args.index:
        name, folder = named_path(spec, "--index")
        indexes.load(name or folder.resolve().name, folder, mmap=args.index_mmap, gpu=args.index_gpu)
    threads = _torch_threads(args.torch_threads)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    encoders = []
    ort_threads = threads or int(os.environ.get("OMP_NUM_THREADS") or 0) or None
    if args.text_model:
        name, folder = named_path(args.text_model, "--text-model")
        encoders.append(load_text_encoder(folder, device=args.device, name=name, backend=args.backend,
                                          threads=ort_threads))  # fmt: skip
    if args.image_model:
        name, folder = named_path(args.image_model, "--image-model")
        encoders.append(load_image_encoder(folder, device=args.device, name=name, backend=args.image_backend,
                                           threads=ort_threads))  # fmt: skip
    if args.multimodal_model:
        from hsrl_service.multimodal import load_multimodal_encoders

        name, folder = named_path(args.multimodal_model, "--multimodal-model")
        encoders.extend(load_multimodal_encoders(folder, device=args.device, name=name))
    return Service(encoders, indexes, config)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hsrl serve``; returns the exit status (2 and one line on stderr for a user's mistake)."""
    return run_cli(build_parser(), sys.argv[1:] if argv is None else argv, _serve, errors=(ValueError, OSError))


def _serve(args: argparse.Namespace) -> int:
    service = _build_service(args)
    import uvicorn

    from hsrl_service.app import create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(service)
    # Bounded graceful shutdown: in-flight requests get 30 s, then the workers finish their queues.
    uvicorn.run(
        app, host=args.host, port=args.port, log_level=args.log_level, access_log=False, timeout_graceful_shutdown=30
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
