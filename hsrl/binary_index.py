"""A binary FAISS index over the sign bits of unit vectors, with float rescoring of its top candidates.

    index = BinaryRescoreIndex.create(384, "BHNSW32")        # or "BFlat" (exact Hamming search)
    index.add(vectors)                                        # float32 unit rows; their codes go to FAISS
    scores, ids = index.search(queries, k=10)                 # Hamming top k·rescore, then exact inner product

Each vector ``x`` is stored as ``d`` bits ``b_i = [x_i > 0]`` (``numpy.packbits``: d/8 bytes, 32× less than
float32) in ``faiss.IndexBinaryFlat`` or ``faiss.IndexBinaryHNSW``. For unit vectors at angle θ a random
hyperplane separates them with probability θ/π, so the Hamming distance ranks neighbours roughly as the angle
does; the top ``k · rescore`` candidates by Hamming distance are then re-ranked by the exact inner product
``q·x`` with the float vectors, kept beside the codes (memory-mapped on load: only candidates' rows are read).
Recall against the float index is measured by :func:`hsrl.index.recall_at_k` (benchmarks/quantization.py).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from hsrl.checkpoints import fsync_tree
from hsrl.index import check_unit_rows, faiss

__all__ = ["BINARY_FACTORIES", "BinaryRescoreIndex", "binary_codes"]

#: binary index kinds: exact Hamming search, or an HNSW graph over the codes (``BHNSW<M>``)
BINARY_FACTORIES = ("BFlat", "BHNSW32")
_FORMAT = "hsrl-binary-rescore/1"


def binary_codes(vectors: np.ndarray) -> np.ndarray:
    """``(n, d)`` float rows to ``(n, ceil(d/8))`` uint8 sign bits, most significant bit first."""
    return np.ascontiguousarray(np.packbits(np.asarray(vectors) > 0, axis=1))


def _make(dim: int, factory: str) -> Any:
    bits = 8 * ((dim + 7) // 8)
    if factory == "BFlat":
        inner = faiss.IndexBinaryFlat(bits)
    elif factory.startswith("BHNSW") and factory[5:].isdigit():
        inner = faiss.IndexBinaryHNSW(bits, int(factory[5:]))
    else:
        raise ValueError(f"binary factory {factory!r}: choose BFlat or BHNSW<M> (e.g. BHNSW32)")
    return faiss.IndexBinaryIDMap(inner)


class BinaryRescoreIndex:
    """Sign-bit codes in FAISS plus the float vectors for rescoring; ids are positions ``0..n-1``.

    Args:
        dim: the float vectors' dimension.
        factory: ``BFlat`` or ``BHNSW<M>``.
        rescore: candidates fetched per result (``k · rescore`` by Hamming distance, re-ranked by inner product).
        ef_search: ``BHNSW`` only: the graph search's beam width. None (default): twice the candidates wanted,
            at least 64. FAISS would otherwise search with a beam of just the candidates wanted, which misses
            true Hamming neighbours (recall of the float top 10 on Persuasion: 0.956 with a beam of 100).
    """

    def __init__(self, dim: int, factory: str = "BFlat", rescore: int = 4, ef_search: int | None = None) -> None:
        if rescore < 1:
            raise ValueError(f"rescore must be >= 1, got {rescore}")
        if ef_search is not None and ef_search < 1:
            raise ValueError(f"ef_search must be >= 1, got {ef_search}")
        self.dim, self.factory, self.rescore, self.ef_search = dim, factory, rescore, ef_search
        self.codes = _make(dim, factory)
        self.vectors = np.zeros((0, dim), dtype=np.float32)

    @classmethod
    def create(
        cls, dim: int, factory: str = "BFlat", rescore: int = 4, ef_search: int | None = None
    ) -> BinaryRescoreIndex:
        return cls(dim, factory, rescore, ef_search)

    @property
    def ntotal(self) -> int:
        return int(self.codes.ntotal)

    def add(self, vectors: np.ndarray) -> None:
        """Add float32 unit rows; int8 or packed binary codes are refused (rescoring needs the floats)."""
        array = np.asarray(vectors)
        if array.dtype.kind != "f":
            raise ValueError(
                f"a binary index takes float unit vectors (embedding_type float), got dtype {array.dtype}: "
                "it keeps them to rescore the candidates its codes find"
            )
        rows = check_unit_rows(array, self.dim)
        ids = np.arange(self.ntotal, self.ntotal + len(rows), dtype=np.int64)
        self.codes.add_with_ids(binary_codes(rows), ids)
        self.vectors = np.concatenate([np.asarray(self.vectors), rows])

    def search(self, queries: np.ndarray, k: int, rescore: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` ``(inner products, ids)`` per query: Hamming candidates re-ranked exactly; -1 pads."""
        rows = check_unit_rows(queries, self.dim, "queries")
        depth = min(self.ntotal, k * (rescore or self.rescore))
        scores = np.full((len(rows), k), -np.inf, dtype=np.float32)
        ids = np.full((len(rows), k), -1, dtype=np.int64)
        if depth == 0:
            return scores, ids
        if self.factory.startswith("BHNSW"):
            graph = faiss.downcast_IndexBinary(self.codes.index)
            graph.hnsw.efSearch = self.ef_search or max(2 * depth, 64)
        _, candidates = self.codes.search(binary_codes(rows), depth)
        for q, found in enumerate(candidates):
            found = found[found >= 0]
            exact = np.asarray(self.vectors[np.sort(found)]) @ rows[q]  # sorted reads: sequential on a memmap
            order = np.argsort(-exact, kind="stable")[:k]
            scores[q, : len(order)], ids[q, : len(order)] = exact[order], np.sort(found)[order]
        return scores, ids

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the folder atomically (a temporary folder, fsynced, then renamed over the old one)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        faiss.write_index_binary(self.codes, str(staging / "codes.faissb"))
        np.save(staging / "vectors.npy", np.asarray(self.vectors))
        meta = {
            "format": _FORMAT, "dim": self.dim, "factory": self.factory, "rescore": self.rescore,
            "ef_search": self.ef_search,
        }  # fmt: skip
        (staging / "index.json").write_text(json.dumps(meta, indent=2))
        fsync_tree(staging)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
            staging.rename(target)
            shutil.rmtree(old)
        else:
            staging.rename(target)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BinaryRescoreIndex:
        folder = Path(path)
        try:
            meta = json.loads((folder / "index.json").read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"no binary index at {folder} ({error})") from None
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{folder} is not a binary rescoring index (format {meta.get('format')!r})")
        index = cls(int(meta["dim"]), meta["factory"], int(meta["rescore"]), meta.get("ef_search"))
        index.codes = faiss.read_index_binary(str(folder / "codes.faissb"))
        index.vectors = np.load(folder / "vectors.npy", mmap_mode="r")  # rescoring reads candidates' rows only
        return index
