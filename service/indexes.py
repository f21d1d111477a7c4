"""The indexes the service holds: ``hsrl.index.VectorIndex`` folders, each with a lock and write-through saves.

FAISS indexes are not safe for a search concurrent with an add, so every operation on one index holds its
lock; callers run these methods in a worker thread (they block). Each write is saved with the index's atomic
save before it is acknowledged, so a crash leaves the folder holding the state before or after that write; if
the save fails, the write is undone in memory too, so memory and disk never disagree.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["IndexRegistry", "ServedIndex"]


class ServedIndex:
    """One named index and the folder it persists to."""

    def __init__(self, name: str, folder: Path, index: Any) -> None:
        self.name, self.folder, self.index = name, folder, index
        self.lock = threading.Lock()

    @property
    def dim(self) -> int:
        return int(self.index.dim)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, list[list[dict[str, Any] | None]]]:
        """Scores, ids (``-1`` = no neighbour) and each hit's metadata."""
        with self.lock:
            scores, ids = self.index.search(queries, k)
            metadata = [self.index.get_metadata([int(i) for i in row if i >= 0]) for row in ids]
        return scores, ids, metadata

    def add(
        self,
        vectors: np.ndarray,
        ids: Sequence[int | None] | None,
        metadata: Sequence[dict[str, Any] | None] | None,
    ) -> np.ndarray:
        """Add, save atomically, and return the ids; on a failed save the vectors are removed again.

        A ``None`` id is assigned: counting up from the index's next id and above every id given in this call.
        """
        with self.lock:
            chosen = None if ids is None or all(i is None for i in ids) else self._fill_ids(ids)
            added = np.asarray(self.index.add(vectors, ids=chosen, metadata=metadata), dtype=np.int64)
            try:
                self.index.save(self.folder)
            except BaseException:
                self.index.remove(added)
                raise
            return added

    def _fill_ids(self, ids: Sequence[int | None]) -> list[int]:
        given = [i for i in ids if i is not None]
        start = max(int(self.index.next_id), max(given, default=-1) + 1)
        fresh = iter(range(start, start + len(ids)))
        return [next(fresh) if i is None else int(i) for i in ids]

    def remove(self, id_: int) -> int:
        """Remove one id (0 when it was not there), saving atomically when something changed."""
        with self.lock:
            removed = int(self.index.remove([id_]))
            if removed:
                self.index.save(self.folder)
            return removed

    def stats(self) -> dict[str, Any]:
        with self.lock:
            stats = dict(self.index.stats())
        return {"name": self.name, "dim": self.dim, "ntotal": self.ntotal, "factory": self.index.factory, **stats}


class IndexRegistry:
    """Indexes by name."""

    def __init__(self) -> None:
        self._indexes: dict[str, ServedIndex] = {}

    def load(self, name: str, folder: Path, *, mmap: bool = False, gpu: str | bool = "auto") -> ServedIndex:
        from hsrl.index import VectorIndex

        if name in self._indexes:
            raise ValueError(f"two indexes named {name!r}")
        # VectorIndex.load reports a missing folder itself, and falls back to the complete
        # previous copy when a save died between its two renames: no existence check here.
        served = ServedIndex(name, Path(folder), VectorIndex.load(folder, mmap=mmap, gpu=gpu))
        self._indexes[name] = served
        return served

    def add(self, served: ServedIndex) -> None:
        if served.name in self._indexes:
            raise ValueError(f"two indexes named {served.name!r}")
        self._indexes[served.name] = served

    def get(self, name: str | None) -> ServedIndex | None:
        """The index ``name``; with ``None``, the only index when exactly one is served."""
        if name is None:
            return next(iter(self._indexes.values())) if len(self._indexes) == 1 else None
        return self._indexes.get(name)

    def names(self) -> list[str]:
        return list(self._indexes)

    def __len__(self) -> int:
        return len(self._indexes)

    def values(self) -> list[ServedIndex]:
        return list(self._indexes.values())
