"""Crash-safe files and training checkpoints.

A checkpoint is a folder ``OUTPUT/checkpoints/step-00001234`` written by
``Accelerator.save_state`` into a hidden temporary folder first, flushed to disk,
and only then renamed into place (a rename is atomic on POSIX). A run killed
mid-write therefore leaves at worst a ``.tmp-*`` folder, which is ignored and
cleaned up, never a half-written checkpoint that ``--resume`` would pick.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "CHECKPOINT_PATTERN",
    "apply_umask_tree",
    "atomic_write_bytes",
    "atomic_write_json",
    "current_umask",
    "default_mode",
    "find_latest_checkpoint",
    "fsync_tree",
    "list_checkpoints",
    "publish_folder",
    "read_trainer_state",
    "remove_stale_temporaries",
]

CHECKPOINT_PATTERN = re.compile(r"^step-(\d{8,})$")
STATE_FILE = "hsrl_trainer_state.json"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process's umask, read without changing it where Linux reports it (``os.umask`` alone must set one)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)  # elsewhere: read it by setting it, then put it back at once
    os.umask(old)
    return old


def default_mode(*, folder: bool) -> int:
    """What ``open``/``mkdir`` would give under the user's umask (0644 / 0755 under 022); mkstemp and mkdtemp
    give owner-only 0600 / 0700, which would make a container running as another uid unable to read the files."""
    return (0o777 if folder else 0o666) & ~current_umask()


def apply_umask_tree(root: Path) -> None:
    """Give ``root`` and everything under it the umask's default modes (executables keep their x bits)."""
    folder_mode, file_mode = default_mode(folder=True), default_mode(folder=False)
    os.chmod(root, folder_mode)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(Path(folder) / name, folder_mode)
        for name in files:
            path = Path(folder) / name
            executable = path.stat().st_mode & stat.S_IXUSR
            os.chmod(path, folder_mode if executable else file_mode)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    The file gets the mode a plain ``open`` would (the user's umask), not mkstemp's owner-only mode.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, default_mode(folder=False))
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike[str], payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (files first, so the folders list them)."""
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            fd = os.open(Path(folder) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def publish_folder(tmp: Path, target: Path) -> None:
    """Flush the finished folder ``tmp`` to disk and rename it to ``target`` (atomically).

    Everything in it gets the mode ``open``/``mkdir`` would give under the user's umask: ``tmp`` may come from
    ``mkdtemp`` (0700) and some writers create owner-only files (safetensors' ``save_file``: 0600).
    """
    apply_umask_tree(tmp)
    fsync_tree(tmp)
    if target.exists():
        # Only reached when re-saving the same step: move the old one aside first,
        # so a crash between the two renames still leaves one complete copy.
        old = target.parent / f".old-{target.name}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
    _fsync_dir(target.parent)


def list_checkpoints(folder: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints under ``folder``, oldest first (temporary folders are skipped)."""
    root = Path(folder)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if p.is_dir() and (m := CHECKPOINT_PATTERN.match(p.name)) and (p / STATE_FILE).is_file()
    ]
    return [p for _, p in sorted(found)]


def find_latest_checkpoint(folder: str | os.PathLike[str]) -> Path | None:
    checkpoints = list_checkpoints(folder)
    return checkpoints[-1] if checkpoints else None


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / STATE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{checkpoint} is not a readable hsrl checkpoint ({error})") from None


def remove_stale_temporaries(folder: Path) -> None:
    """Delete ``.tmp-*``/``.old-*`` folders left by a run that died while saving."""
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.startswith((".tmp-", ".old-")) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
