"""The service's OpenAPI contract, checked by schemathesis's own command line (`schemathesis run --checks all`)
against a real server on loopback: the packaged MiniLM, a real FAISS index, an API key. Every check must pass:
no 5xx, schema-valid requests accepted, schema-violating ones rejected, documented statuses, content types and
bodies, 405 with ``Allow`` for wrong methods, 401 without the key.

Bounded: a few examples per operation (``--max-examples``), no shrinking, one worker, a fixed seed, and a hard
timeout on the process.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service_support import SENTENCES, LiveServer, build_service, make_index, minilm, serve

from hsrl_service.limits import Limits

pytest.importorskip("schemathesis")

KEY = "contract-key"
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    vectors = minilm().encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True)
    folder = make_index(tmp_path_factory.mktemp("contract") / "docs", vectors)
    # Small limits: generated inputs stay cheap for the model.
    limits = Limits(max_request_bytes=256 * 1024, max_items=8, max_text_chars=512, max_k=50)
    with serve(build_service(indexes=[("docs", folder)], limits=limits, api_key=KEY)) as server:
        yield server


def test_schema_states_the_limits_and_what_is_served(live: LiveServer) -> None:
    schema = httpx.get(f"{live.url}/openapi.json", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()
    parts = schema["components"]["schemas"]
    search = parts["SearchRequest"]
    assert search["properties"]["k"]["maximum"] == 50 and search["properties"]["index"]["enum"] == ["docs"]
    assert search["properties"]["vector"]["minItems"] == search["properties"]["vector"]["maxItems"] == 384
    assert "image" not in search["properties"]  # no image model served
    assert parts["EmbeddingRequest"]["properties"]["modality"]["anyOf"][0]["enum"] == ["text"]
    assert parts["AddRequest"]["properties"]["items"]["maxItems"] == 8
    assert "/v1/embeddings/upload" not in schema["paths"]


def test_schemathesis_run_checks_all_finds_nothing(live: LiveServer, tmp_path: Path) -> None:
    command = [
        str(SCHEMATHESIS), "run", f"{live.url}/openapi.json", "--checks", "all",
        "--header", f"Authorization: Bearer {KEY}", "--max-examples", "12", "--no-shrink", "--workers", "1",
        "--seed", "7", "--request-timeout", "60",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    report = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, report
    assert "No issues found" in done.stdout, report
    assert httpx.get(f"{live.url}/health", timeout=30).status_code == 200
