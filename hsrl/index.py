"""A FAISS index of L2-normalised embeddings with your own ids, metadata, atomic save and GPU search.

Every vector lives on the unit sphere, so the inner product is the cosine similarity:
``score(q, x) = qᵀx = cos∠(q, x)`` and ``‖q − x‖² = 2 − 2·qᵀx`` (the same ranking as Euclidean distance).

Index types are ``faiss.index_factory`` strings (``"Flat"``, ``"IVF1024,Flat"``, ``"HNSW32"``,
``"IVF1024,PQ16"``, ...) or ``"auto"`` (:func:`choose_factory`). Ids are your own int64 values:

- IVF indexes keep ids natively (with a hash-table direct map, so ``remove`` and ``reconstruct`` work).
  They are deliberately *not* wrapped in ``IndexIDMap2``: its ``remove_ids`` assumes the sub-index renumbers
  its entries after a removal, which IVF does not, so the wrapper would return wrong ids after a remove.
- Every other type is wrapped in ``faiss.IndexIDMap2``. HNSW graphs cannot delete nodes: ``remove`` rebuilds
  the graph from the exactly stored vectors (O(n log n), documented cost); an HNSW over lossy codes raises.

A saved index is a folder: ``index.faiss``, ``metadata.jsonl`` (one ``{"id", "metadata"}`` per line, only ids
that have metadata) and ``index.json`` (format version, dim, factory, count, next id, search parameters,
measured recall, and the tuning record of :func:`tune_search_parameters`). It is written into a temporary
sibling, fsynced and renamed, so a crash leaves the previous folder or the new one, never a mix.
``VectorIndex.load(path, mmap=True)`` maps the codes read-only.

GPU: when ``faiss.get_num_gpus() > 0`` and ``gpu != "never"``, searches run on a copy on all GPUs (replicas or
shards); the CPU index stays the source of truth for add/remove/save, so "moved to CPU before writing" holds by
construction. HNSW and ``k > 2048`` (FAISS's GPU selection limit) search on CPU.

Example:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((100, 8)).astype("float32")
    >>> x /= np.linalg.norm(x, axis=1, keepdims=True)
    >>> index = VectorIndex.create(8)
    >>> ids = index.add(x, metadata=[{"row": i} for i in range(100)])
    >>> scores, found = index.search(x[:2], k=3)
    >>> found[:, 0].tolist(), index.get_metadata([found[0, 0]])
    ([0, 1], [{'row': 0}])
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hsrl.checkpoints import publish_folder
from hsrl.errors import first_line

FAISS_HINT = "FAISS is not installed: pip install 'hsrl[cpu]' (or 'hsrl[gpu]' for CUDA 12; never both)"


class _MissingFaiss:
    """Stands in for the ``faiss`` module when neither extra is installed: the module still imports (export needs
    no FAISS), and the first real use raises one clear ``ImportError``."""

    def __getattr__(self, name: str) -> Any:
        raise ImportError(FAISS_HINT)


try:
    import faiss
except ImportError:  # faiss-cpu / faiss-gpu-cu12 come from the `cpu` / `gpu` extras
    faiss = _MissingFaiss()

__all__ = [
    "FLAT_LIMIT",
    "GPU_MAX_K",
    "NORM_TOLERANCE",
    "VectorIndex",
    "build_index",
    "check_tuning_targets",
    "check_unit_rows",
    "choose_factory",
    "exact_search",
    "measure_recall",
    "plan_placement",
    "recall_at_k",
    "tune_search_parameters",
    "tuning_candidates",
    "use_gpu_for_search",
]

FORMAT_VERSION = 1
#: Rows must satisfy |‖x‖₂ − 1| ≤ NORM_TOLERANCE.
NORM_TOLERANCE = 1e-3
#: ``auto`` uses exact search below this many vectors (when it fits the memory budget).
FLAT_LIMIT = 1_000_000
#: FAISS GPU indexes select at most this many neighbours (``GPU_MAX_SELECTION_K``).
GPU_MAX_K = 2048
GPU_MODES = ("auto", "never", "shard", "replicate")
#: Bytes per vector besides its code: the id (8) and its id-map / direct-map hash entry (~32).
ID_OVERHEAD_BYTES = 40
#: PQ sub-quantizer counts ``auto`` tries, largest (most accurate) first; 8-bit codes, so m bytes per vector.
PQ_CANDIDATES = (64, 48, 32, 24, 16, 12, 8, 4, 2, 1)
DEFAULT_EF_SEARCH = 64

INDEX_FILE, METADATA_FILE, INFO_FILE = "index.faiss", "metadata.jsonl", "index.json"


# --------------------------------------------------------------------------- pure decisions


#: FAISS's k-means asks for this many training points per centroid (fewer: a "please provide at least" warning).
MIN_POINTS_PER_CENTROID = 39


def _trainable_centroids(n: int) -> int:
    """The largest power of two ``c`` with ``39·c ≤ n`` (at least 1): k-means centroids ``n`` points can train."""
    return 2 ** max(0, (max(n, 1) // MIN_POINTS_PER_CENTROID).bit_length() - 1)


def choose_factory(dim: int, num_vectors: int | None = None, memory_budget_mb: float | None = None) -> str:
    """The ``auto`` rule (in the spirit of autofaiss): exact while it is affordable, else IVF sized to the budget.

    With ``n`` vectors of dimension ``d`` and budget ``B`` bytes (unlimited when ``None``):

    1. ``Flat`` if ``n < 1M`` (or ``n`` unknown) and ``n·(4d + 40) ≤ B``: exact search, no training.
    2. Else ``IVF{L}_HNSW32,Flat`` with ``L`` the power of two nearest ``4·√n`` (an HNSW coarse quantizer, as
       autofaiss uses for large ``L``), capped so that k-means has 39 training points per list
       (``39·L ≤ n``, FAISS's own minimum), if ``n·(4d + 40) + 4·L·d ≤ B``.
    3. Else ``IVF{L}_HNSW32,PQ{m}`` with the largest ``m ∈ {64, 48, 32, ..., 1}`` dividing ``d`` whose
       ``n·(m + 40) + 4·L·d`` fits (``m`` one-byte codes per vector; ``PQ{m}x{b}`` with ``b < 8`` bits
       when ``n < 39·256``, so the codebooks are trainable too).
    4. Else ``ValueError`` naming the smallest budget that would work.

    Args:
        dim: Vector dimension.
        num_vectors: Expected number of vectors (``None``: unknown, so Flat, which grows without training).
        memory_budget_mb: Memory for the index in MiB (``None``: unlimited).

    Returns:
        A ``faiss.index_factory`` string.
    """
    _check_positive_int(dim, "dim")
    n = 0 if num_vectors is None else _check_positive_int(num_vectors, "num_vectors_hint", allow_zero=True)
    if memory_budget_mb is not None and not (math.isfinite(memory_budget_mb) and memory_budget_mb > 0):
        raise ValueError(f"memory_budget_mb must be a positive number, got {memory_budget_mb}")
    budget = math.inf if memory_budget_mb is None else memory_budget_mb * 2**20
    flat_bytes = n * (4 * dim + ID_OVERHEAD_BYTES)
    if (num_vectors is None or n < FLAT_LIMIT) and flat_bytes <= budget:
        return "Flat"
    nlist = min(2 ** max(4, round(math.log2(4 * math.sqrt(max(n, 1))))), _trainable_centroids(n))
    centroid_bytes = 4 * nlist * dim
    if flat_bytes + centroid_bytes <= budget:
        return f"IVF{nlist}_HNSW32,Flat"
    # PQ codebooks are k-means too: 2^nbits centroids per sub-vector, 8 bits once the data allow it.
    nbits = max(1, min(8, _trainable_centroids(n).bit_length() - 1))
    pq_suffix = "" if nbits == 8 else f"x{nbits}"
    for m in (m for m in PQ_CANDIDATES if dim % m == 0):
        if n * (m + ID_OVERHEAD_BYTES) + centroid_bytes <= budget:
            return f"IVF{nlist}_HNSW32,PQ{m}{pq_suffix}"
    need_mb = (n * (1 + ID_OVERHEAD_BYTES) + centroid_bytes) / 2**20
    raise ValueError(f"memory budget {memory_budget_mb} MiB is too small for {n} vectors; need at least {need_mb:.1f}")


def plan_placement(gpu: str, num_gpus: int, factory: str) -> str:
    """Where an index searches: ``"cpu"``, ``"replicate"`` (a full copy per GPU) or ``"shard"`` (split over GPUs).

    ``never`` or no GPU → ``cpu`` (so ``faiss-cpu`` works unchanged, even with ``gpu="shard"``); HNSW has no
    FAISS GPU implementation → ``cpu``; ``auto`` → ``replicate`` (FAISS's default: the most queries per second;
    choose ``shard`` when one GPU cannot hold the whole index).
    """
    if gpu not in GPU_MODES:
        raise ValueError(f"gpu must be one of {', '.join(GPU_MODES)}, got {gpu!r}")
    if gpu == "never" or num_gpus <= 0 or "HNSW" in factory.split(",")[0].split("_")[0]:
        return "cpu"
    return "replicate" if gpu == "auto" else gpu


def use_gpu_for_search(placement: str, k: int) -> bool:
    """Whether a search of ``k`` neighbours runs on the GPU copy (GPU selection stops at ``k = 2048``)."""
    return placement != "cpu" and k <= GPU_MAX_K


# --------------------------------------------------------------------------- validation


def _check_positive_int(value: Any, name: str, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be an integer ≥ {0 if allow_zero else 1}, got {value!r}")
    return int(value)


def check_unit_rows(vectors: Any, dim: int, what: str = "vectors") -> np.ndarray:
    """``vectors`` as C-contiguous float32 ``(n, dim)`` rows on the unit sphere, or ``ValueError``.

    A 1-D vector is taken as one row. Rows must be finite with ``|‖x‖₂ − 1| ≤ 1e-3``.
    """
    array = np.asarray(vectors)
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{what} must be numeric, got dtype {array.dtype}")
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (n, {dim}), got shape {array.shape}")
    if array.shape[1] != dim:
        raise ValueError(f"{what} have dimension {array.shape[1]}, the index has {dim}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    # One pass: NaN/inf anywhere in a row makes its squared norm NaN/inf, which also fails the comparison.
    # |‖x‖² − 1| ≤ 1e-3 is checked first as the cheap common case (‖x‖ within 1e-3 implies ‖x‖² within 2e-3).
    squared = np.einsum("ij,ij->i", array, array)
    if not (np.abs(squared - 1.0) <= NORM_TOLERANCE).all():
        _explain_bad_rows(np.sqrt(squared.astype(np.float64)), what)
    return array


def _explain_bad_rows(norms: np.ndarray, what: str) -> None:
    finite = np.isfinite(norms)
    if not finite.all():
        raise ValueError(f"{what} contain NaN or infinite values (row {int(np.flatnonzero(~finite)[0])})")
    bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
    if bad.size:
        row = int(bad[0])
        raise ValueError(f"{what} must be L2-normalised: row {row} has norm {norms[row]:.6g} (tolerance 1e-3)")


def _check_ids(ids: Any, count: int) -> np.ndarray:
    array = np.asarray(ids)
    if array.ndim != 1 or array.shape[0] != count:
        raise ValueError(f"ids must be a 1-D sequence of {count} integers, got shape {array.shape}")
    if count and array.dtype.kind not in "iu":
        raise ValueError(f"ids must be integers, got dtype {array.dtype}")
    array = array.astype(np.int64, copy=False)
    if count and (array.min() < 0 or (array.dtype.kind == "u" and array.max() > np.iinfo(np.int64).max)):
        raise ValueError("ids must be in [0, 2**63): -1 means 'no result' in search output")
    return np.ascontiguousarray(array)


# --------------------------------------------------------------------------- recall


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """Mean overlap of the approximate and the exact top-k (the "k-recall@k" of ANN benchmarks).

    ``R@k = (1/|Q|) Σ_q |A_q ∩ E_q| / |E_q|``, with ``A_q`` and ``E_q`` the first ``k`` ids of row ``q``
    (``-1``, "no result", excluded; a row with no exact result counts 1).
    """
    _check_positive_int(k, "k")
    approx, exact = np.asarray(approx_ids)[:, :k], np.asarray(exact_ids)[:, :k]
    if approx.shape[0] != exact.shape[0]:
        raise ValueError(f"approx_ids has {approx.shape[0]} rows, exact_ids {exact.shape[0]}")
    total = 0.0
    for found, truth in zip(approx, exact, strict=True):
        truth = truth[truth >= 0]
        total += 1.0 if truth.size == 0 else np.intersect1d(found[found >= 0], truth).size / truth.size
    return total / max(1, approx.shape[0])


def exact_search(data: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of ``queries`` among ``data`` rows: ``(scores, row positions)``."""
    k = min(_check_positive_int(k, "k"), data.shape[0])
    data = np.ascontiguousarray(data, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    return faiss.knn(queries, data, k, metric=faiss.METRIC_INNER_PRODUCT)


def measure_recall(index: VectorIndex, queries: np.ndarray, k: int, exact: np.ndarray | None = None) -> dict[str, Any]:
    """Recall@k of ``index.search`` against exact (Flat) search, plus the search throughput.

    Args:
        index: The index to measure.
        queries: ``(q, d)`` unit rows.
        k: Neighbours per query.
        exact: The exact top-k ids ``(q, ≥k)``. When ``None`` they are computed by brute force over the
            index's own vectors, which needs an exactly reconstructible index (Flat, HNSW, IVF-Flat);
            for compressed codes (PQ, SQ) pass them.

    Returns:
        ``{"k", "queries", "recall", "qps", "seconds"}``; ``recall`` is :func:`recall_at_k`.
    """
    queries = check_unit_rows(queries, index.dim, "queries")
    k = _check_positive_int(k, "k")
    if exact is None:
        ids, vectors = index.all_vectors(exact_only=True, why="exact recall without `exact` ids")
        exact = ids[exact_search(vectors, queries, k)[1]] if ids.size else np.full((len(queries), k), -1)
    start = time.perf_counter()
    _, approx = index.search(queries, k)
    seconds = time.perf_counter() - start
    recall = recall_at_k(approx, np.asarray(exact), k)
    return {"k": k, "queries": len(queries), "recall": recall, "qps": len(queries) / max(seconds, 1e-9),
            "seconds": seconds}  # fmt: skip


# --------------------------------------------------------------------------- tuning (autofaiss-style)

#: ``efSearch`` values tried stop at this power of two (beyond it HNSW search is slower than exact search).
MAX_EF_SEARCH = 2**15
#: Single-query searches timed per candidate value for the ms/query figure.
TIMING_QUERIES = 100


def check_tuning_targets(
    target_recall: float | None,
    max_query_ms: float | None,
    names: tuple[str, str] = ("target_recall", "max_query_ms"),
) -> None:
    """``ValueError`` unless at most one target is given, with ``0 < target_recall ≤ 1`` or ``max_query_ms > 0``.

    ``names`` are how the two are called in the message (the CLI passes its flags).
    """
    recall_name, ms_name = names
    if target_recall is not None and max_query_ms is not None:
        raise ValueError(f"give {recall_name} or {ms_name}, not both")
    if target_recall is not None and not (math.isfinite(target_recall) and 0 < target_recall <= 1):
        raise ValueError(f"{recall_name} must be in (0, 1], got {target_recall:g}")
    if max_query_ms is not None and not (math.isfinite(max_query_ms) and max_query_ms > 0):
        raise ValueError(f"{ms_name} must be a number of milliseconds > 0, got {max_query_ms:g}")


def tuning_candidates(index: VectorIndex) -> tuple[str | None, list[int]]:
    """The search parameter of ``index`` and the values tuning tries, in increasing cost.

    IVF: ``nprobe ∈ {1, 2, 4, ..., nlist}`` (``nlist`` itself last when it is not a power of two).
    HNSW: ``efSearch ∈ {2^a ≥ 16, ...}`` up to the first power of two ≥ ``ntotal`` (at most 2^15).
    Other types (``Flat``) have nothing to tune: ``(None, [])``.
    """
    ivf = faiss.try_extract_index_ivf(index._index)
    if ivf is not None:
        nlist = int(ivf.nlist)
        values = [2**i for i in range(nlist.bit_length()) if 2**i <= nlist]
        return "nprobe", values + ([nlist] if values[-1] != nlist else [])
    if _is_hnsw(index._index):
        top = min(MAX_EF_SEARCH, 2 ** max(4, (max(index.ntotal, 1) - 1).bit_length()))
        return "efSearch", [2**i for i in range(4, top.bit_length())]
    return None, []


def _ms_per_query(index: VectorIndex, queries: np.ndarray, k: int) -> float:
    """Mean wall time of one-query searches (the latency a caller sees), over the first queries, in ms."""
    rows = queries[:TIMING_QUERIES]
    start = time.perf_counter()
    for row in rows:
        index.search(row[None, :], k)
    return (time.perf_counter() - start) * 1000 / max(1, len(rows))


def tune_search_parameters(
    index: VectorIndex,
    queries: np.ndarray,
    exact_ids: np.ndarray,
    k: int,
    *,
    target_recall: float | None = None,
    max_query_ms: float | None = None,
) -> dict[str, Any]:
    """Choose ``nprobe`` (IVF) or ``efSearch`` (HNSW) for a recall or latency target, as autofaiss does.

    The values of :func:`tuning_candidates` are tried in increasing order; each gets its recall@k
    (:func:`recall_at_k` of ``index.search(queries, k)`` against ``exact_ids``) and its ms/query (mean of
    single-query searches over the first 100 queries). The choice is

    - ``target_recall = R``: the first (fastest) value with ``recall ≥ R``; if none reaches it, the value
      with the highest recall (``met: false``). A higher ``R`` therefore never chooses a smaller value.
    - ``max_query_ms = T``: among the values with ``ms/query ≤ T``, the one with the highest recall (the
      smaller on ties); the search stops at the first value over ``T``. If even the first is over ``T``,
      it is chosen (``met: false``).

    Use queries held out from training (not the vectors k-means saw): their recall is what new queries get.
    The chosen value is set on ``index``; with nothing to tune (``Flat``) the index is only measured.

    Args:
        index: A filled index (its search parameters are changed).
        queries: ``(q, d)`` unit rows.
        exact_ids: Their exact top-k ids ``(q, ≥k)`` (e.g. from :func:`exact_search`).
        k: Neighbours per query for recall@k.
        target_recall: Recall@k to reach, in ``(0, 1]``.
        max_query_ms: Milliseconds per query not to exceed, ``> 0``.

    Returns:
        ``{"parameter", "value", "recall", "ms_per_query", "k", "queries", "target_recall",
        "max_query_ms", "met", "tried": [{"value", "recall", "ms_per_query"}, ...]}``.
    """
    check_tuning_targets(target_recall, max_query_ms)
    if target_recall is None and max_query_ms is None:
        raise ValueError("tuning needs target_recall or max_query_ms")
    k = _check_positive_int(k, "k")
    queries = check_unit_rows(queries, index.dim, "queries")
    exact_ids = np.asarray(exact_ids)
    if len(queries) == 0 or exact_ids.shape[0] != len(queries):
        raise ValueError(f"tuning needs queries with their exact ids, got {len(queries)} and {exact_ids.shape[0]}")
    parameter, values = tuning_candidates(index)
    tried: list[dict[str, Any]] = []
    for value in values or [None]:
        if parameter is not None:
            index.set_search_parameters(**{parameter: value})
        recall = recall_at_k(index.search(queries, k)[1], exact_ids, k)
        tried.append({"value": value, "recall": recall, "ms_per_query": _ms_per_query(index, queries, k)})
        if target_recall is not None and recall >= target_recall:
            break
        if max_query_ms is not None and tried[-1]["ms_per_query"] > max_query_ms:
            break
        if recall >= 1.0:  # larger values cost more and cannot find more
            break
    if target_recall is not None:
        met = tried[-1]["recall"] >= target_recall
        best = tried[-1] if met else max(tried, key=lambda t: t["recall"])  # max: the first of equal recalls
    else:
        under = [t for t in tried if t["ms_per_query"] <= max_query_ms]
        met = bool(under)
        best = max(under, key=lambda t: t["recall"]) if under else tried[0]
    if parameter is not None:
        index.set_search_parameters(**{parameter: best["value"]})
    return {"parameter": parameter, "value": best["value"], "recall": best["recall"],
            "ms_per_query": best["ms_per_query"], "k": k, "queries": len(queries), "target_recall": target_recall,
            "max_query_ms": max_query_ms, "met": met, "tried": tried}  # fmt: skip


# --------------------------------------------------------------------------- the index


class VectorIndex:
    """FAISS inner-product index over L2-normalised float32 vectors with int64 ids and JSON metadata.

    Create with :meth:`create` or :meth:`load`. One operation runs at a time (an internal lock), so the
    object is safe to share between threads; FAISS itself parallelises each search.
    """

    def __init__(
        self,
        index: faiss.Index,
        factory: str,
        *,
        metadata: dict[int, dict[str, Any]] | None = None,
        next_id: int = 0,
        read_only: bool = False,
        gpu: str | bool = "auto",
        search_parameters: dict[str, int] | None = None,
        measured_recall: dict[str, Any] | None = None,
        tuning: dict[str, Any] | None = None,
    ) -> None:
        self._index = index
        self._factory = factory
        self._metadata: dict[int, dict[str, Any]] = dict(metadata or {})
        self._next_id = next_id
        self._read_only = read_only
        self._lock = threading.RLock()
        self._search_parameters: dict[str, int] = {}
        self.measured_recall = measured_recall
        #: What :func:`tune_search_parameters` chose and measured (saved in ``index.json``), or ``None``.
        self.tuning = tuning
        # A bool is accepted too (True: "auto", False: "never"), as a command-line switch would give it.
        mode = {True: "auto", False: "never"}.get(gpu, gpu) if isinstance(gpu, bool) else gpu
        self._placement = plan_placement(mode, faiss.get_num_gpus(), factory)
        self._gpu_index: faiss.Index | None = None
        self._gpu_stale = True
        if search_parameters:
            self.set_search_parameters(**search_parameters)

    # ----------------------------------------------------------------- construction

    @classmethod
    def create(
        cls,
        dim: int,
        factory: str = "auto",
        *,
        num_vectors_hint: int | None = None,
        memory_budget_mb: float | None = None,
        gpu: str | bool = "auto",
    ) -> VectorIndex:
        """A new empty index.

        Args:
            dim: Vector dimension.
            factory: A ``faiss.index_factory`` string, or ``"auto"`` (:func:`choose_factory`).
            num_vectors_hint: Expected size, used by ``auto``.
            memory_budget_mb: Memory budget in MiB, used by ``auto``.
            gpu: ``auto`` | ``never`` | ``shard`` | ``replicate`` (:func:`plan_placement`).
        """
        _check_positive_int(dim, "dim")
        if not isinstance(factory, str) or not factory.strip():
            raise ValueError(f"factory must be a faiss.index_factory string or 'auto', got {factory!r}")
        if factory == "auto":
            factory = choose_factory(dim, num_vectors_hint, memory_budget_mb)
        elif "IDMap" in factory:
            raise ValueError("factory must not contain IDMap: ids are handled by hsrl.index")
        try:
            base = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as error:
            raise ValueError(f"bad factory string {factory!r}: {first_line(error)}") from None
        ivf = faiss.try_extract_index_ivf(base)
        if ivf is not None:
            # Native ids + a hash-table direct map: remove and reconstruct by id (see the module docstring).
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
            index = base
        else:
            index = faiss.IndexIDMap2(base)
        parameters = _default_search_parameters(index)
        return cls(index, factory, gpu=gpu, search_parameters=parameters)

    # ----------------------------------------------------------------- properties

    @property
    def ntotal(self) -> int:
        """Number of vectors held."""
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return int(self._index.d)

    @property
    def factory(self) -> str:
        """The ``faiss.index_factory`` string actually built (``auto`` resolved)."""
        return self._factory

    @property
    def is_trained(self) -> bool:
        """False for an IVF/PQ index that has not seen its first add (or :meth:`train`) yet."""
        return bool(self._index.is_trained)

    @property
    def on_gpu(self) -> bool:
        """Whether searches (with ``k ≤ 2048``) run on GPUs."""
        return self._placement != "cpu"

    @property
    def read_only(self) -> bool:
        """True for a memory-mapped index: add/remove/train raise ``ValueError``."""
        return self._read_only

    @property
    def search_parameters(self) -> dict[str, int]:
        """Search-time parameters in effect (``nprobe`` for IVF, ``efSearch`` for HNSW)."""
        return dict(self._search_parameters)

    # ----------------------------------------------------------------- mutation

    def train(self, vectors: np.ndarray) -> None:
        """Train an IVF/PQ index on ``vectors`` (``add`` does it on the first call when needed)."""
        with self._lock:
            self._check_writable()
            rows = check_unit_rows(vectors, self.dim)
            self._train(rows)

    def _train(self, rows: np.ndarray) -> None:
        need = _min_training_vectors(self._index)
        if rows.shape[0] < need:
            raise ValueError(
                f"{self._factory} must be trained on at least {need} vectors, got {rows.shape[0]}: "
                "add at least that many in the first call (or choose Flat/HNSW, which need no training)"
            )
        self._index.train(rows)
        self._gpu_stale = True

    @property
    def next_id(self) -> int:
        """The id the next add without ids starts from (one above the largest id ever stored)."""
        return int(self._next_id)

    def add(
        self,
        vectors: np.ndarray,
        ids: np.ndarray | Sequence[int] | None = None,
        metadata: Sequence[dict[str, Any] | None] | None = None,
    ) -> np.ndarray:
        """Add unit rows with their ids (increasing from the largest id so far when ``None``) and metadata.

        Duplicate ids (within the call or with stored ids), negative ids, NaN/inf, a wrong dimension and
        rows off the sphere raise ``ValueError`` and change nothing. An untrained index is trained on these
        rows first. Returns the int64 ids.
        """
        with self._lock:
            self._check_writable()
            rows = check_unit_rows(vectors, self.dim)
            n = rows.shape[0]
            new_ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64) if ids is None else None
            if new_ids is None:
                new_ids = _check_ids(ids, n)
                self._check_new_ids(new_ids)
            records = self._check_metadata(metadata, n)
            if n == 0:
                return new_ids
            if not self.is_trained:
                self._train(rows)
            self._index.add_with_ids(rows, new_ids)
            if self._gpu_index is not None and not self._gpu_stale:
                self._gpu_index.add_with_ids(rows, new_ids)
            for id_, record in zip(new_ids.tolist(), records, strict=True):
                if record is not None:
                    self._metadata[id_] = record
            self._next_id = max(self._next_id, int(new_ids.max()) + 1)
            return new_ids

    def remove(self, ids: np.ndarray | Sequence[int]) -> int:
        """Remove ``ids`` (unknown ids are ignored) with their metadata; returns how many were removed.

        HNSW graphs cannot delete nodes, so the graph is rebuilt from its exactly stored vectors
        (O(n log n)); an HNSW over lossy codes (``HNSW32,PQ16``) raises ``ValueError``.
        """
        with self._lock:
            self._check_writable()
            targets = _check_ids(np.atleast_1d(np.asarray(ids)), np.atleast_1d(np.asarray(ids)).shape[0])
            targets = np.unique(targets)
            if targets.size == 0 or self.ntotal == 0:
                return 0
            if _is_hnsw(self._index):
                removed = self._rebuild_without(targets)
            elif faiss.try_extract_index_ivf(self._index) is not None:
                # The IVF hash-table direct map only accepts an explicit array of ids.
                removed = int(self._index.remove_ids(faiss.IDSelectorArray(targets)))
            else:
                removed = int(self._index.remove_ids(faiss.IDSelectorBatch(targets)))
            for id_ in targets.tolist():
                self._metadata.pop(id_, None)
            self._gpu_stale = True
            return removed

    def _rebuild_without(self, targets: np.ndarray) -> int:
        ids, vectors = self.all_vectors(exact_only=True, why="remove from an HNSW index")
        keep = ~np.isin(ids, targets)
        fresh = faiss.IndexIDMap2(faiss.index_factory(self.dim, self._factory, faiss.METRIC_INNER_PRODUCT))
        hnsw = faiss.downcast_index(fresh.index).hnsw
        hnsw.efConstruction = faiss.downcast_index(self._index.index).hnsw.efConstruction
        fresh.add_with_ids(np.ascontiguousarray(vectors[keep]), ids[keep])
        self._index = fresh
        self.set_search_parameters(**self._search_parameters)
        return int((~keep).sum())

    def set_search_parameters(self, **parameters: int) -> None:
        """Set FAISS search parameters, e.g. ``nprobe=32`` (IVF) or ``efSearch=128`` (HNSW)."""
        with self._lock:
            space = faiss.ParameterSpace()
            for name, value in parameters.items():
                _check_positive_int(value, name)
                try:
                    space.set_index_parameter(self._index, name, int(value))
                except RuntimeError as error:
                    raise ValueError(f"{self._factory} has no search parameter {name!r}: {first_line(error)}") from None
                self._search_parameters[name] = int(value)
            self._gpu_stale = True

    # ----------------------------------------------------------------- queries

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best inner products of each query: ``(scores float32 (q, k'), ids int64 (q, k'))``.

        ``k' = min(k, ntotal)``: asking for more neighbours than vectors returns all of them (an empty index
        returns ``(q, 0)`` arrays). Rows sorted by decreasing score. An approximate index may find fewer than
        ``k'``: the missing places hold id ``-1`` and score ``-inf``. ``k ≥ 1`` and queries are validated
        like :meth:`add`.
        """
        k = _check_positive_int(k, "k")
        rows = check_unit_rows(queries, self.dim, "queries")
        with self._lock:
            kk = min(k, self.ntotal)
            if kk == 0 or rows.shape[0] == 0:
                return np.empty((rows.shape[0], kk), np.float32), np.empty((rows.shape[0], kk), np.int64)
            scores, ids = self._searcher(kk).search(rows, kk)
        scores[ids < 0] = -np.inf
        return scores, ids.astype(np.int64, copy=False)

    def _searcher(self, k: int) -> faiss.Index:
        if not use_gpu_for_search(self._placement, k):
            return self._index
        if self._gpu_stale or self._gpu_index is None:
            self._gpu_index = _copy_to_gpus(self._index, self._placement)
            self._gpu_stale = self._gpu_index is None
            if self._gpu_index is None:
                self._placement = "cpu"  # this index type has no GPU version: stay on CPU from now on
                return self._index
        return self._gpu_index

    def get_metadata(self, ids: np.ndarray | Sequence[int]) -> list[dict[str, Any] | None]:
        """The metadata of each id (``None`` for ids without metadata, unknown ids and ``-1``)."""
        with self._lock:
            return [self._metadata.get(int(i)) for i in np.atleast_1d(np.asarray(ids)).tolist()]

    def reconstruct(self, id_: int) -> np.ndarray:
        """The stored vector of ``id_`` (exact for Flat/HNSW/IVF-Flat, decoded for PQ/SQ codes)."""
        with self._lock:
            try:
                return self._index.reconstruct(int(id_))
            except RuntimeError as error:
                raise ValueError(f"cannot reconstruct id {id_}: {first_line(error)}") from None

    def ids(self) -> np.ndarray:
        """All stored ids (int64; IDMap order, or inverted-list order for IVF)."""
        with self._lock:
            return _stored_ids(self._index)

    def all_vectors(
        self, *, exact_only: bool = False, why: str = "reading exact vectors"
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, vectors)`` of everything stored; ``exact_only`` refuses lossy codes with ``ValueError``."""
        with self._lock:
            if exact_only and not _stores_exact_vectors(self._index):
                raise ValueError(f"{self._factory} stores compressed codes, so {why} needs the original vectors")
            ids = _stored_ids(self._index)
            if isinstance(self._index, faiss.IndexIDMap2):
                vectors = self._index.index.reconstruct_n(0, self.ntotal)
            else:
                vectors = np.vstack([self._index.reconstruct(int(i)) for i in ids]) if ids.size else None
            return ids, (np.empty((0, self.dim), np.float32) if vectors is None else vectors)

    def stats(self) -> dict[str, Any]:
        """A JSON-able summary: size, type, placement, parameters and measured recall."""
        with self._lock:
            return {
                "format_version": FORMAT_VERSION,
                "dim": self.dim,
                "factory": self._factory,
                "metric": "inner_product",
                "ntotal": self.ntotal,
                "is_trained": self.is_trained,
                "on_gpu": self.on_gpu,
                "placement": self._placement,
                "read_only": self._read_only,
                "next_id": self._next_id,
                "with_metadata": len(self._metadata),
                "search_parameters": dict(self._search_parameters),
                "measured_recall": self.measured_recall,
                "tuning": self.tuning,
            }

    # ----------------------------------------------------------------- persistence

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the index folder atomically (temporary sibling, fsync, rename); returns its path."""
        target = Path(path)
        with self._lock:
            target.parent.mkdir(parents=True, exist_ok=True)
            # A process killed mid-save leaves its temporary copy behind; one writer per index
            # folder is assumed, so any such leftover is stale.
            for stale in target.parent.glob(f".tmp-{target.name}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
            try:
                # self._index is the CPU copy (GPU copies are search mirrors), so it is written as is.
                faiss.write_index(self._index, str(tmp / INDEX_FILE))
                with open(tmp / METADATA_FILE, "w", encoding="utf-8") as handle:
                    for id_, record in sorted(self._metadata.items()):
                        handle.write(json.dumps({"id": id_, "metadata": record}, ensure_ascii=False) + "\n")
                info = {
                    **self.stats(),
                    "count": self.ntotal,
                    "ivf": faiss.try_extract_index_ivf(self._index) is not None,
                }
                (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
                publish_folder(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str], mmap: bool = False, gpu: str | bool = "auto") -> VectorIndex:
        """Read a folder written by :meth:`save`; ``mmap=True`` maps the codes read-only (no add/remove).

        A folder missing its files, with a corrupt file or inconsistent counts raises ``ValueError``. If a
        save died between its two renames, the complete previous copy (``.old-NAME``) is loaded.
        """
        folder = _saved_folder(Path(path))
        try:
            info = json.loads((folder / INFO_FILE).read_text())
            dim, factory, count = int(info["dim"]), str(info["factory"]), int(info["count"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path} is not a readable hsrl index ({INFO_FILE}: {error})") from None
        if info.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path} has index format {info.get('format_version')}, expected {FORMAT_VERSION}")
        index = _read_faiss(folder / INDEX_FILE, mmap=mmap, ivf=bool(info.get("ivf")), origin=path)
        if index.d != dim or index.ntotal != count:
            raise ValueError(f"{path} is inconsistent: {INDEX_FILE} holds {index.ntotal}×{index.d}, "
                             f"{INFO_FILE} says {count}×{dim}")  # fmt: skip
        metadata = _read_metadata(folder / METADATA_FILE, origin=path)
        return cls(index, factory, metadata=metadata, next_id=int(info.get("next_id", 0)), read_only=mmap, gpu=gpu,
                   search_parameters=info.get("search_parameters") or None,
                   measured_recall=info.get("measured_recall"), tuning=info.get("tuning"))  # fmt: skip

    # ----------------------------------------------------------------- helpers

    def _check_writable(self) -> None:
        if self._read_only:
            raise ValueError("this index was loaded with mmap=True and is read-only; load it without mmap to modify")

    def _check_new_ids(self, new_ids: np.ndarray) -> None:
        if new_ids.size == 0:
            return
        unique, counts = np.unique(new_ids, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"duplicate id {int(unique[counts > 1][0])} in this add")
        clash = new_ids[np.isin(new_ids, _stored_ids(self._index))]
        if clash.size:
            raise ValueError(f"id {int(clash[0])} is already in the index (remove it first to replace it)")

    @staticmethod
    def _check_metadata(metadata: Sequence[dict[str, Any] | None] | None, n: int) -> list[dict[str, Any] | None]:
        if metadata is None:
            return [None] * n
        records = list(metadata)
        if len(records) != n:
            raise ValueError(f"metadata has {len(records)} entries for {n} vectors")
        for position, record in enumerate(records):
            if record is not None and not isinstance(record, dict):
                raise ValueError(f"metadata[{position}] must be a dict or None, got {type(record).__name__}")
            try:
                json.dumps(record, allow_nan=False)
            except (TypeError, ValueError) as error:
                raise ValueError(f"metadata[{position}] is not JSON-serialisable: {error}") from None
        return records


def _is_hnsw(index: faiss.Index) -> bool:
    return isinstance(index, faiss.IndexIDMap2) and isinstance(faiss.downcast_index(index.index), faiss.IndexHNSW)


def _stores_exact_vectors(index: faiss.Index) -> bool:
    inner = faiss.try_extract_index_ivf(index)
    inner = faiss.downcast_index(inner if inner is not None else getattr(index, "index", index))
    if isinstance(inner, faiss.IndexHNSW):
        inner = faiss.downcast_index(inner.storage)
    return isinstance(inner, (faiss.IndexFlat, faiss.IndexIVFFlat))


def _stored_ids(index: faiss.Index) -> np.ndarray:
    if isinstance(index, faiss.IndexIDMap2):
        return faiss.vector_to_array(index.id_map).astype(np.int64, copy=False)
    lists = faiss.extract_index_ivf(index).invlists
    parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy() for i in range(lists.nlist)]
    return np.concatenate(parts).astype(np.int64, copy=False) if parts else np.empty(0, np.int64)


def _min_training_vectors(index: faiss.Index) -> int:
    """FAISS refuses k-means with fewer points than centroids: IVF needs ``nlist``, PQ ``2^nbits`` per book."""
    need = 1
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        need = max(need, int(ivf.nlist))
    inner = faiss.downcast_index(ivf if ivf is not None else getattr(index, "index", index))
    pq = getattr(inner, "pq", None)
    if pq is not None:
        need = max(need, int(pq.ksub))
    return need


def _default_search_parameters(index: faiss.Index) -> dict[str, int]:
    # FAISS defaults (nprobe=1, efSearch=16) trade most of the recall away; these are the usual starting points.
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return {"nprobe": max(1, min(int(ivf.nlist), round(math.sqrt(ivf.nlist))))}
    if _is_hnsw(index):
        return {"efSearch": DEFAULT_EF_SEARCH}
    return {}


def _copy_to_gpus(index: faiss.Index, placement: str) -> faiss.Index | None:
    """A copy of ``index`` on all GPUs, or ``None`` when this index type has no GPU version."""
    options = faiss.GpuMultipleClonerOptions()
    options.shard = placement == "shard"
    try:
        return faiss.index_cpu_to_all_gpus(index, co=options)
    except RuntimeError as error:
        print(f"hsrl.index: searching on CPU ({first_line(error)})", file=sys.stderr)
        return None


def _saved_folder(path: Path) -> Path:
    if (path / INFO_FILE).is_file():
        return path
    # A save that died between "move the old folder aside" and "rename the new one in" left the old one here.
    old = path.parent / f".old-{path.name}"
    if not path.exists() and (old / INFO_FILE).is_file():
        return old
    if not path.exists():
        raise ValueError(f"no index at {path}")
    raise ValueError(f"{path} is not an hsrl index folder (no {INFO_FILE})")


def _read_faiss(file: Path, *, mmap: bool, ivf: bool, origin: Any) -> faiss.Index:
    if not file.is_file():
        raise ValueError(f"{origin} is not a readable hsrl index (missing {INDEX_FILE})")
    # IVF maps its inverted lists with IO_FLAG_MMAP; flat codes (Flat, HNSW storage, PQ) need IO_FLAG_MMAP_IFC.
    flags = (faiss.IO_FLAG_MMAP if ivf else getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP)) if mmap else 0
    try:
        return faiss.read_index(str(file), flags | (faiss.IO_FLAG_READ_ONLY if mmap else 0))
    except RuntimeError as error:
        raise ValueError(f"{origin} is not a readable hsrl index ({INDEX_FILE}: {first_line(error)})") from None


def _read_metadata(file: Path, *, origin: Any) -> dict[int, dict[str, Any]]:
    metadata: dict[int, dict[str, Any]] = {}
    if not file.is_file():
        raise ValueError(f"{origin} is not a readable hsrl index (missing {METADATA_FILE})")
    with open(file, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                record = json.loads(line)
                metadata[int(record["id"])] = record["metadata"]
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{origin}: {METADATA_FILE} line {number} is corrupt ({error})") from None
    return metadata


def build_index(
    vectors: np.ndarray,
    ids: np.ndarray | Sequence[int] | None = None,
    metadata: Sequence[dict[str, Any] | None] | None = None,
    *,
    factory: str = "auto",
    memory_budget_mb: float | None = None,
    gpu: str = "auto",
    recall_k: int = 10,
    recall_queries: int = 1000,
    seed: int = 0,
    target_recall: float | None = None,
    max_query_ms: float | None = None,
    tuning_queries: np.ndarray | None = None,
) -> VectorIndex:
    """Create, fill and — for every non-exact index — measure recall@k on a sample of the data as queries.

    The recall (:func:`measure_recall` against exact search over ``vectors``) is kept in
    ``index.measured_recall``, reported by ``stats()`` and saved with the index.

    With ``target_recall`` or ``max_query_ms`` the search parameter is tuned
    (:func:`tune_search_parameters`) on held-out queries: ``tuning_queries`` when given, else
    ``recall_queries`` rows of the data that an IVF/PQ index is then *not* trained on (they are still
    added). The choice is kept in ``index.tuning`` and its parameter in the saved search parameters.
    """
    check_tuning_targets(target_recall, max_query_ms)
    tune = target_recall is not None or max_query_ms is not None
    rows = check_unit_rows(vectors, np.asarray(vectors).shape[-1])
    index = VectorIndex.create(rows.shape[1], factory, num_vectors_hint=rows.shape[0],
                               memory_budget_mb=memory_budget_mb, gpu=gpu)  # fmt: skip
    n = rows.shape[0]
    sample = np.random.default_rng(seed).choice(n, min(recall_queries, n), replace=False)
    queries = rows[sample] if tuning_queries is None else check_unit_rows(tuning_queries, index.dim, "queries")
    if tune and tuning_queries is None and not index.is_trained:
        held_out = np.zeros(n, dtype=bool)
        held_out[sample] = True
        if (~held_out).sum() >= _min_training_vectors(index._index):
            index.train(rows[~held_out])  # queries k-means never saw, as new queries will be
    stored = index.add(rows, ids, metadata)
    if (index.factory != "Flat" or tune) and n and len(queries):
        exact = stored[exact_search(rows, queries, recall_k)[1]]
        if tune:
            index.tuning = tune_search_parameters(index, queries, exact, recall_k, target_recall=target_recall,
                                                  max_query_ms=max_query_ms)  # fmt: skip
        index.measured_recall = measure_recall(index, queries, recall_k, exact=exact)
    return index
