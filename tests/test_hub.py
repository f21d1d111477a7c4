"""Model cards and ``--push-to-hub``: the real ``huggingface_hub.HfApi`` against a stand-in Hub on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from hub_standin import HubStandIn

from hsrl.hub import check_push_target, push_folder
from hsrl.models.card import PAPER_CITATION, write_model_card, write_run_card

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process may reach the Hub (the stand-in): the tests' environment is offline."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_standin")


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
    assert hub.repos == [{"name": "hsrl-model", "organization": "someone", "visibility": "private"}]
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
