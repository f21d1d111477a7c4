"""``hsrl serve`` as a real process: SIGKILL during a stream of index adds, the command line's one-line
errors, and the Dockerfile's command checked against the real parser."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from service_support import make_index, unit_rows

from hsrl.index import VectorIndex
from hsrl_service.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
KEY = "process-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
DIM = 64


def _add_payload(first_id: int, count: int) -> dict:
    rows = unit_rows(count, DIM, seed=first_id).tolist()
    return {"items": [{"vector": row, "id": first_id + i} for i, row in enumerate(rows)]}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def hsrl(*args: str) -> list[str]:
    return [sys.executable, "-m", "hsrl.cli", *args]


@contextmanager
def serve_process(folder: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    port = free_port()
    command = hsrl("serve", "--index", f"docs={folder}", "--port", str(port), "--api-key", KEY, "--log-level", "error")
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"hsrl serve exited: {process.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("hsrl serve did not become healthy")
            time.sleep(0.05)
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        process.stderr.close()


def test_sigkill_during_adds_leaves_the_state_before_or_after(tmp_path: Path) -> None:
    preloaded = 8_000  # 2 MB of vectors: each save takes long enough for the kill to land inside it
    folder = make_index(tmp_path / "docs", unit_rows(preloaded, DIM), dim=DIM)
    acknowledged, batch, rng = preloaded, 25, random.Random(0)
    deadline = time.monotonic() + 45  # bounds the number of cycles, not a timing assertion
    for cycle in range(3):
        with serve_process(folder) as (process, url), httpx.Client(base_url=url, timeout=30, headers=AUTH) as http:
            assert http.get("/index/docs").json()["ntotal"] == acknowledged  # the restart sees the saved state
            for _ in range(rng.randint(2, 5)):  # some adds that complete
                response = http.post("/index/docs/add", json=_add_payload(acknowledged, batch), headers=AUTH)
                assert response.status_code == 200, response.text
                acknowledged += batch
            # One more add in flight, and SIGKILL at a random moment during it.
            payload = _add_payload(acknowledged, batch)

            def in_flight(http: httpx.Client = http, payload: dict = payload) -> None:
                with contextlib.suppress(httpx.TransportError):  # the server dies under it
                    http.post("/index/docs/add", json=payload, headers=AUTH)

            sender = threading.Thread(target=in_flight, daemon=True)
            sender.start()
            time.sleep(rng.uniform(0.0, 0.05))  # where the kill lands; nothing below depends on it
            os.kill(process.pid, signal.SIGKILL)
            sender.join(30)
        index = VectorIndex.load(folder)
        assert index.ntotal in (acknowledged, acknowledged + batch), (cycle, index.ntotal, acknowledged)
        assert sorted(index.ids().tolist()) == list(range(index.ntotal))
        acknowledged = index.ntotal
        if time.monotonic() > deadline:
            break
    with serve_process(folder) as (_, url):  # still writable after the crashes
        vector = unit_rows(1, DIM, seed=1)[0].tolist()
        response = httpx.post(f"{url}/index/docs/add", json={"items": [{"vector": vector}]}, headers=AUTH, timeout=30)
        assert response.status_code == 200 and response.json()["ntotal"] == acknowledged + 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "nothing to serve"),
        (["--index", "/does/not/exist"], "no index at /does/not/exist"),
        (["--text-model", "/does/not/exist"], "--text-model /does/not/exist: no such folder"),
        (["--index", "x", "--bogus"], "unrecognized arguments"),
        (["--index", "x", "--port", "http"], "invalid int value"),
    ],
)
def test_command_line_mistakes_are_one_line_and_status_2(args: list[str], message: str) -> None:
    done = subprocess.run(hsrl("serve", *args), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hsrl serve: error:") and message in lines[0], done.stderr


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_the_dockerfile_runs_hsrl_serve_with_flags_it_accepts() -> None:
    instructions = _dockerfile_instructions()
    entrypoint = [json.loads(arg) for op, arg in instructions if op == "ENTRYPOINT"][-1]
    cmd = [json.loads(arg) for op, arg in instructions if op == "CMD"][-1]
    assert entrypoint == ["hsrl", "serve"]
    args = build_parser().parse_args(cmd)  # argparse exits on a flag it does not know
    assert args.text_model == "/models/text"
    help_text = subprocess.run(hsrl("serve", "--help"), cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    for flag in (arg for arg in cmd if arg.startswith("--")):
        assert flag in help_text
    env = " ".join(arg for op, arg in instructions if op == "ENV")
    assert "HSRL_HOST=0.0.0.0" in env and "HSRL_PORT=8000" in env  # reachable from outside the container
    assert any(op == "EXPOSE" and arg == "8000" for op, arg in instructions)
    assert instructions[0] == ("ARG", "BASE_IMAGE=python:3.11-slim") and ("FROM", "${BASE_IMAGE}") in instructions
    runs = " ".join(arg for op, arg in instructions if op == "RUN")
    assert '".[serve]"' in runs and '"${FAISS_PACKAGE}"' in runs and "uninstall -y faiss" not in runs
    assert "cp -r" in runs and "/models/text" in runs  # the packaged MiniLM is the default model
    healthcheck = next(arg for op, arg in instructions if op == "HEALTHCHECK")
    assert "HSRL_PORT" in healthcheck and "8000/health" not in healthcheck
    copied = [name for arg in (a for op, a in instructions if op == "COPY") for name in arg.split()[:-1]]
    assert all((ROOT / name).exists() for name in copied), copied
    ignore = (ROOT / ".dockerignore").read_text()
    assert all(f"!{name}" in ignore for name in copied), "the build context must include what COPY copies"


def test_env_supplies_host_and_port_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HSRL_HOST", "0.0.0.0")
    monkeypatch.setenv("HSRL_PORT", "8123")
    args = build_parser().parse_args(["--index", "x"])
    assert (args.host, args.port) == ("0.0.0.0", 8123)
    monkeypatch.delenv("HSRL_HOST")
    monkeypatch.delenv("HSRL_PORT")
    assert build_parser().parse_args([]).host == "127.0.0.1"


def test_hsrl_does_not_import_service() -> None:
    offenders = [
        p for p in (ROOT / "hsrl").rglob("*.py") if re.search(r"^\s*(from|import)\s+service\b", p.read_text(), re.M)
    ]
    assert offenders == []


def test_models_and_indexes_take_an_optional_name() -> None:
    from hsrl_service.cli import named_path

    assert named_path("docs=/data/idx", "--index") == ("docs", Path("/data/idx"))
    assert named_path("/data/a=b/idx", "--index") == (None, Path("/data/a=b/idx"))  # "=" inside a path
    assert named_path("runs/model", "--text-model") == (None, Path("runs/model"))
    with pytest.raises(Exception, match="expected NAME=PATH"):
        named_path("docs=", "--index")


def test_torch_threads_leave_a_core_for_the_http_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    from hsrl_service.cli import _torch_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    assert _torch_threads(None) == max(1, cores - 1)
    assert _torch_threads(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert _torch_threads(None) is None  # torch reads OMP_NUM_THREADS itself
    with pytest.raises(Exception, match="--torch-threads must be >= 1"):
        _torch_threads(0)
