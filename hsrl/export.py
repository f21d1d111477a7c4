"""Encode a dataset with a model folder into sharded, verified, L2-normalised embeddings.

``hsrl export --model PATH --dataset INPUT --output DIR [--batch-size 64] [--shard-size 10000]`` writes::

    DIR/manifest.json               what was exported (model, dataset fingerprint, record and shard counts)
    DIR/embeddings-00000.npy        float32 (rows, d), every row finite with |‖x‖₂ − 1| ≤ 1e-3 (checked)
    DIR/metadata-00000.parquet      id, text (or path), label when the dataset has labels
    DIR/shard-00000.done            written last: the shard is complete
    ...

Inputs: a ``.txt`` file (one text per line; blank lines skipped), ``.jsonl`` (``"text"``, optional ``"id"``
and ``"label"``), ``.parquet`` (the same columns), or a folder of images (with an image model folder; a
sub-folder name is the image's label). The model is any folder :func:`hsrl.models.folder.open_model` opens
(a sentence-transformers folder for texts, an hsrl image model folder for images). Records without an ``id`` get their
position in the dataset. Text files are read through 🤗 ``datasets`` (``load_dataset("text"|"json"|"parquet",
data_files=..., streaming=True)``): one pass checks them and keeps only ids and labels, and each shard's texts
are streamed again when it is encoded, so a large file is never held in memory.

Every file is written atomically and a shard's ``.done`` marker last, so a killed export resumes with the
first unfinished shard when rerun with the same arguments (a different model, dataset or shard size in the
same ``--output`` is refused). Several processes split the shards (shard ``i`` goes to rank ``i % world``)::

    accelerate launch --num_processes 2 -m hsrl.cli export --model M --dataset D --output DIR
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m hsrl.cli export ...  # CPU-only machine
"""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hsrl.checkpoints import atomic_write_bytes, atomic_write_json
from hsrl.index import NORM_TOLERANCE
from hsrl.models.folder import local_model_folder, model_kind, open_model

__all__ = ["Records", "export_embeddings", "index_inputs", "load_embeddings", "read_dataset"]

FORMAT, VERSION = "hsrl-embeddings", 1
MANIFEST = "manifest.json"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
EncodeFn = Callable[[list[str]], np.ndarray]


def shard_files(output: Path, shard: int) -> tuple[Path, Path, Path]:
    """``(embeddings, metadata, done marker)`` paths of shard ``shard``."""
    return (output / f"embeddings-{shard:05d}.npy", output / f"metadata-{shard:05d}.parquet",
            output / f"shard-{shard:05d}.done")  # fmt: skip


# --------------------------------------------------------------------------- reading datasets


@dataclass
class Records:
    """A dataset's items in order: texts (``kind="text"``) or image file paths (``kind="image"``).

    ``items`` is ``None`` for a text file read through 🤗 ``datasets``: its texts are streamed again, shard by
    shard, by :meth:`iter_items` (only ids and labels are held), so a large file never sits in memory.
    """

    kind: str
    items: list[str] | None
    ids: Sequence[Any]
    labels: list[Any] | None
    stream: Callable[[], Iterator[str]] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def iter_items(self) -> Iterator[str]:
        """The items in dataset order (streamed from the file when ``items`` is ``None``)."""
        if self.items is not None:
            return iter(self.items)
        assert self.stream is not None
        return self.stream()

    @property
    def column(self) -> str:
        return "text" if self.kind == "text" else "path"


def read_dataset(path: str | os.PathLike[str]) -> Records:
    """Read a ``.txt``/``.jsonl``/``.parquet`` file or an image folder; ``ValueError`` on anything unusable."""
    source = Path(path)
    if source.is_dir():
        records = _read_image_folder(source)
    elif not source.exists():
        raise ValueError(f"dataset {source}: no such file or folder")
    elif source.suffix in DATASETS_BUILDERS:
        records = _stream_records(source)
    else:
        raise ValueError(f"dataset {source}: expected .txt, .jsonl, .parquet or an image folder")
    if not len(records):
        raise ValueError(f"dataset {source} holds no records")
    return records


#: 🤗 ``datasets`` packaged builders for local files (read with ``streaming=True``: no Arrow cache is written,
#: and nothing at all beside the user's file; its lock files go to ``HF_DATASETS_CACHE``).
DATASETS_BUILDERS = {".txt": "text", ".jsonl": "json", ".parquet": "parquet"}


def _rows(source: Path) -> Iterator[dict[str, Any]]:
    """The file's rows, streamed by ``datasets.load_dataset(builder, data_files=..., streaming=True)``."""
    from datasets import load_dataset

    columns = {}
    if source.suffix == ".parquet":  # read only the columns hsrl uses
        names = pq.read_schema(source).names
        columns = {"columns": [c for c in ("text", "id", "label") if c in names]}
    yield from load_dataset(DATASETS_BUILDERS[source.suffix], data_files=str(source), split="train",
                            streaming=True, **columns)  # fmt: skip


def _texts(source: Path) -> Iterator[str]:
    """The texts of ``source`` in order, streamed (``.txt``: stripped lines, blank lines skipped)."""
    for row in _rows(source):
        text = row["text"]
        if source.suffix == ".txt":
            text = text.strip()
            if not text:
                continue
        yield text


def _stream_records(source: Path) -> Records:
    """One streamed pass that checks every row and keeps only ids and labels; the texts are streamed again
    when a shard is encoded.

    Anything the stream cannot read or a row without a string ``text`` is handed to the exact in-memory
    reader (``_read_txt``/``_read_jsonl``/``_read_parquet``), which raises hsrl's one-line message: ``datasets``
    reports a bad UTF-8 byte by its offset in a 10 MB chunk and bad JSON through pyarrow with no line number,
    so only a line-by-line reader can name the line. That reader also accepts what pyarrow refuses (an ``id``
    column of mixed types, made text), so such a file is read in memory as before.
    """
    count, ids, labels = 0, [], []
    try:
        for row in _rows(source):
            text = row.get("text")
            if not isinstance(text, str):
                raise ValueError("no text")
            if source.suffix == ".txt":
                count += bool(text.strip())
                continue
            ids.append(row.get("id"))
            labels.append(row.get("label"))
            count += 1
    except Exception:  # UnicodeDecodeError, ArrowInvalid, DatasetGenerationError, ...: the exact reader says it
        return {".txt": _read_txt, ".jsonl": _read_jsonl, ".parquet": _read_parquet}[source.suffix](source)
    if source.suffix == ".txt":
        return Records("text", None, range(count), None, stream=lambda: _texts(source))
    ids = _optional_values(source, ids, "id") or range(count)
    if len(set(ids)) != len(ids):
        raise ValueError(f"dataset {source}: ids are not unique")
    return Records("text", None, ids, _optional_values(source, labels, "label"), stream=lambda: _texts(source))


def _read_text(source: Path) -> str:
    try:
        return source.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        line = source.read_bytes()[: error.start].count(b"\n") + 1
        raise ValueError(f"dataset {source}: line {line} is not valid UTF-8 (byte {error.start})") from None


def _read_txt(source: Path) -> Records:
    texts = [line.strip() for line in _read_text(source).splitlines()]
    texts = [text for text in texts if text]
    return Records("text", texts, list(range(len(texts))), None)


def _read_jsonl(source: Path) -> Records:
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(_read_text(source).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"dataset {source}: line {number} is not JSON ({error.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise ValueError(f"dataset {source}: line {number} has no string field 'text'")
        rows.append(row)
    return _records_from_rows(source, rows)


def _read_parquet(source: Path) -> Records:
    try:
        table = pq.read_table(source)
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"dataset {source}: not a readable parquet file ({error})") from None
    if "text" not in table.column_names:
        raise ValueError(f"dataset {source}: no 'text' column (columns: {', '.join(table.column_names)})")
    rows = table.select([c for c in ("text", "id", "label") if c in table.column_names]).to_pylist()
    bad = next((i for i, row in enumerate(rows) if not isinstance(row["text"], str)), None)
    if bad is not None:
        raise ValueError(f"dataset {source}: row {bad} has no text")
    return _records_from_rows(source, rows)


def _records_from_rows(source: Path, rows: list[dict[str, Any]]) -> Records:
    texts = [row["text"] for row in rows]
    ids = _optional_values(source, [row.get("id") for row in rows], "id") or list(range(len(rows)))
    if len(set(ids)) != len(ids):
        raise ValueError(f"dataset {source}: ids are not unique")
    return Records("text", texts, ids, _optional_values(source, [row.get("label") for row in rows], "label"))


def _optional_values(source: Path, column: list[Any], name: str) -> list[Any] | None:
    """A column's values, or ``None`` when no row has one; some-but-not-all is an error."""
    rows = [{name: value} for value in column]
    present = [row.get(name) is not None for row in rows]
    if not any(present):
        return None
    if not all(present):
        raise ValueError(f"dataset {source}: record {present.index(False)} has no {name!r} while others do")
    values = [row[name] for row in rows]
    # One column type: integers stay integers, anything mixed becomes text.
    return values if all(isinstance(v, int) and not isinstance(v, bool) for v in values) else [str(v) for v in values]


def _read_image_folder(source: Path) -> Records:
    paths = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    relative = [p.relative_to(source) for p in paths]
    labelled = bool(relative) and all(len(r.parts) > 1 for r in relative)
    labels = [r.parts[0] for r in relative] if labelled else None
    return Records("image", [str(p) for p in paths], [str(r) for r in relative], labels)


def _fingerprint(source: Path) -> str:
    """sha256 of the file's bytes, or of the folder's sorted (relative path, size) list."""
    digest = hashlib.sha256()
    if source.is_dir():
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            digest.update(f"{path.relative_to(source)}\0{path.stat().st_size}\n".encode())
    else:
        with open(source, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- export


def verify_embeddings(vectors: np.ndarray, rows: int, where: str) -> np.ndarray:
    """float32 ``(rows, d)``, finite, ``|‖x‖₂ − 1| ≤ 1e-3`` per row; else ``ValueError`` naming ``where``."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] != rows:
        raise ValueError(f"{where}: the model returned shape {array.shape}, expected ({rows}, d)")
    if not np.isfinite(array).all():
        raise ValueError(f"{where}: the model returned NaN or infinite values")
    norms = np.linalg.norm(array.astype(np.float64), axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
    if bad.size:
        row = int(bad[0])
        raise ValueError(f"{where}: row {row} has norm {norms[row]:.6g}, not 1 (tolerance {NORM_TOLERANCE})")
    return np.ascontiguousarray(array)


def _manifest(model: Path, dataset: Path, kind: str, records: Records, shard_size: int) -> dict[str, Any]:
    count = len(records)
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": str(model.resolve()),
        "model_kind": kind,
        "dataset": str(dataset.resolve()),
        "dataset_sha256": _fingerprint(dataset),
        "num_records": count,
        "shard_size": shard_size,
        "num_shards": -(-count // shard_size),
        "has_labels": records.labels is not None,
    }


def _claim_output(output: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest, or check that an existing one describes the same export (so resuming is safe)."""
    path = output / MANIFEST
    if path.is_file():
        try:
            existing = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise ValueError(f"{path} is corrupt; delete {output} and export again") from None
        differs = [key for key in manifest if existing.get(key) != manifest[key]]
        if differs:
            raise ValueError(f"{output} holds another export ({', '.join(differs)} differ); choose a new --output")
        return
    # Hidden names are other processes' temporary files (e.g. a manifest being written right now).
    if output.exists() and any(not p.name.startswith(".") for p in output.iterdir()):
        raise ValueError(f"{output} is not empty and holds no hsrl export; choose a new --output")
    atomic_write_json(path, manifest)


def _shard_done(output: Path, shard: int) -> bool:
    embeddings, metadata, done = shard_files(output, shard)
    return done.is_file() and embeddings.is_file() and metadata.is_file()


def _metadata_table(records: Records, start: int, stop: int, items: list[str]) -> pa.Table:
    columns: dict[str, list[Any]] = {"id": list(records.ids[start:stop]), records.column: items}
    if records.labels is not None:
        columns["label"] = records.labels[start:stop]
    return pa.table(columns)


def _write_shard(output: Path, shard: int, vectors: np.ndarray, table: pa.Table) -> None:
    embeddings_path, metadata_path, done_path = shard_files(output, shard)
    buffer = io.BytesIO()
    np.save(buffer, vectors, allow_pickle=False)
    atomic_write_bytes(embeddings_path, buffer.getvalue())
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(metadata_path, sink.getvalue().to_pybytes())
    # The marker goes last: its presence means both files above are complete.
    atomic_write_json(done_path, {"shard": shard, "rows": int(vectors.shape[0]), "dim": int(vectors.shape[1])})


def export_embeddings(
    model: str | os.PathLike[str],
    dataset: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    batch_size: int = 64,
    shard_size: int = 10_000,
    device: str | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    encode: EncodeFn | None = None,
    backend: str = "torch",
) -> dict[str, Any]:
    """Encode ``dataset`` with ``model`` into verified shards under ``output`` (see the module docstring).

    Args:
        model: A model folder (:func:`hsrl.models.folder.open_model`), a packaged name or a Hub id.
        dataset: ``.txt`` / ``.jsonl`` / ``.parquet`` file or image folder.
        output: Export folder; rerunning with the same arguments skips finished shards.
        batch_size: Items per model batch.
        shard_size: Records per shard.
        device: Torch device for the model (``None``: the library's default).
        rank: This process's index; it exports shards ``i`` with ``i % world_size == rank``.
        world_size: Number of processes sharing the export.
        progress: Show a tqdm bar.
        encode: An already loaded encoder (texts or paths → rows), e.g. to reuse a model across calls.
        backend: What runs a text model (``hsrl.backends.BACKENDS``); recorded in the manifest unless torch, so
            a resumed export never mixes the vectors of two backends.

    Returns:
        The manifest, with ``"exported"`` (shards written by this call) and ``"skipped"`` (already done).
    """
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    model_path, dataset_path, out = local_model_folder(model), Path(dataset), Path(output)
    kind = folder_kind = model_kind(model_path)
    records = read_dataset(dataset_path)
    if kind == "two_tower":  # one space, two towers: the dataset's modality picks the tower
        kind = records.kind
    if records.kind != kind:
        raise ValueError(f"model {model_path} is a {kind} model but dataset {dataset_path} holds {records.kind}s")
    manifest = _manifest(model_path, dataset_path, kind, records, shard_size)
    if backend != "torch":
        from hsrl.backends import check_backend

        check_backend(backend)
        if folder_kind not in ("text", "image"):
            raise ValueError(f"--backend {backend}: {folder_kind} models run on torch only (use --backend torch)")
        manifest["backend"] = backend
    out.mkdir(parents=True, exist_ok=True)
    _claim_output(out, manifest)
    mine = [s for s in range(manifest["num_shards"]) if s % world_size == rank]
    todo = [s for s in mine if not _shard_done(out, s)]
    if todo and encode is None:
        encoder = open_model(model_path, device=device, backend=backend)
        encode = functools.partial(encoder.encode, batch_size=batch_size, modality=records.kind)
    _export_shards(out, records, todo, shard_size, batch_size, encode, progress and rank == 0)
    return {**manifest, "exported": todo, "skipped": [s for s in mine if s not in todo]}


def _export_shards(
    out: Path, records: Records, shards: list[int], shard_size: int, batch_size: int, encode: Any, progress: bool
) -> None:
    from tqdm.auto import tqdm

    total = sum(len(records.ids[s * shard_size : (s + 1) * shard_size]) for s in shards)
    # Several batches per encode call: the model sorts by length within a call, and the bar still moves often.
    chunk = batch_size * 8
    # One pass over the items (a stream for large text files): skip finished shards, hold one shard at a time.
    items, position = records.iter_items(), 0
    with tqdm(total=total, desc="export", unit=records.kind, disable=not progress) as bar:
        for shard in sorted(shards):
            start, stop = shard * shard_size, min((shard + 1) * shard_size, len(records))
            next(itertools.islice(items, start - position, start - position), None)  # skip to `start`
            parts, shard_items = [], []
            for begin in range(start, stop, chunk):
                batch = list(itertools.islice(items, min(chunk, stop - begin)))
                parts.append(np.asarray(encode(batch), dtype=np.float32))
                shard_items += batch
                bar.update(len(batch))
            position = stop
            vectors = verify_embeddings(np.concatenate(parts), stop - start, f"shard {shard}")
            _write_shard(out, shard, vectors, _metadata_table(records, start, stop, shard_items))


# --------------------------------------------------------------------------- reading exports


def load_embeddings(output: str | os.PathLike[str]) -> tuple[np.ndarray, pa.Table]:
    """All shards of a finished export: ``(float32 (n, d) rows, metadata table)`` in dataset order."""
    out = Path(output)
    try:
        manifest = json.loads((out / MANIFEST).read_text())
        num_shards = int(manifest["num_shards"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"{out} is not an hsrl export (no readable {MANIFEST})") from None
    missing = [s for s in range(num_shards) if not _shard_done(out, s)]
    if missing:
        raise ValueError(f"{out}: export incomplete, {len(missing)} of {num_shards} shards missing "
                         f"(first: {missing[0]}); rerun hsrl export to resume")  # fmt: skip
    vectors, tables = [], []
    for shard in range(num_shards):
        embeddings_path, metadata_path, _ = shard_files(out, shard)
        try:
            vectors.append(np.load(embeddings_path, allow_pickle=False))
            tables.append(pq.read_table(metadata_path))
        except (ValueError, OSError, pa.ArrowException) as error:
            raise ValueError(f"{out}: shard {shard} is unreadable ({error})") from None
        if len(vectors[-1]) != tables[-1].num_rows:
            raise ValueError(f"{out}: shard {shard} has {len(vectors[-1])} vectors but {tables[-1].num_rows} rows")
    return np.concatenate(vectors), pa.concat_tables(tables)


def index_inputs(vectors: np.ndarray, table: pa.Table) -> tuple[np.ndarray, np.ndarray | None, list[dict[str, Any]]]:
    """``(vectors, ids, metadata)`` for ``hsrl.index``: integer dataset ids become index ids, else positions."""
    ids = None
    if "id" in table.column_names and pa.types.is_integer(table.schema.field("id").type):
        ids = np.asarray(table.column("id").to_numpy(), dtype=np.int64)
    return vectors, ids, table.to_pylist()
