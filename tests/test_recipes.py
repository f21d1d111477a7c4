"""One short end-to-end run of each recipe, launched the way users launch it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import OFFLINE, ROOT, launch
from hub_standin import HubStandIn
from model_folders import opens_everywhere

QUICK = ["--batch-size", "64", "--eval-train-size", "2000", "--eval-test-size", "400", "--log-with", "none",
         "--no-progress", "--checkpoint-every", "3"]  # fmt: skip


@pytest.fixture(scope="module")
def quickstart_hub(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, HubStandIn]:
    """One short run that also pushes its model to a stand-in Hub on loopback (real huggingface_hub client)."""
    out = tmp_path_factory.mktemp("quickstart")
    with HubStandIn() as hub:
        online = {**OFFLINE, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_standin",
                  "HF_HUB_DISABLE_TELEMETRY": "1"}  # fmt: skip
        done = launch("quickstart.py", "--output-dir", str(out), "--max-steps", "5", *QUICK,
                      "--push-to-hub", "someone/quickstart", env=online)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return out, hub


@pytest.fixture(scope="module")
def quickstart_run(quickstart_hub: tuple[Path, HubStandIn]) -> Path:
    return quickstart_hub[0]


def test_quickstart_writes_a_filled_card_and_pushes_the_model_folder(quickstart_hub: tuple[Path, HubStandIn]) -> None:
    out, hub = quickstart_hub
    card = (out / "model" / "README.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert "`align:1,alpha=2 + uniform:1,t=2`" in card and "zalando-datasets/fashion_mnist" in card
    assert f"| `knn5` | {metrics['summary']['knn5']:.4f} |" in card and "2005.10242" in card  # the summary block
    sent = hub.files["someone/quickstart"]
    assert set(sent) == {"README.md", "model.safetensors", "hsrl_config.json"}
    assert all(sent[name] == (out / "model" / name).read_bytes() for name in sent)


def test_quickstart_trains_evaluates_and_saves(quickstart_run: Path) -> None:
    metrics = json.loads((quickstart_run / "metrics.json").read_text())
    assert metrics["steps"] == 5
    for key in ("knn5_accuracy", "knn5_accuracy_random_encoder", "knn5_accuracy_raw_pixels"):
        assert 0.1 < metrics[key] <= 1.0  # ten classes: far above chance even untrained
    assert 0 <= metrics["alignment_test_views"] <= 4 and -4 <= metrics["uniformity_test"] <= 0
    summary = metrics["summary"]  # the shared key scheme: the trained value, and each baseline by prefix
    assert summary["knn5"] == metrics["knn5_accuracy"] and summary["steps"] == 5
    assert summary["random_encoder_knn5"] == metrics["knn5_accuracy_random_encoder"]
    assert summary["raw_pixels_knn5"] == metrics["knn5_accuracy_raw_pixels"]
    assert (quickstart_run / "model" / "model.safetensors").stat().st_size > 0
    checkpoints = sorted(p.name for p in (quickstart_run / "checkpoints").iterdir())
    assert checkpoints == ["step-00000003", "step-00000005"]


def test_the_quickstart_folder_opens_with_export_serve_and_eval(quickstart_run: Path, tmp_path: Path) -> None:
    assert opens_everywhere(quickstart_run / "model", tmp_path) == "image"


def test_quickstart_resumes_from_its_latest_checkpoint(quickstart_run: Path) -> None:
    done = launch("quickstart.py", "--output-dir", str(quickstart_run), "--max-steps", "7", "--resume", "latest",
                  *QUICK)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in done.stdout and "step 5" in done.stdout
    assert json.loads((quickstart_run / "metrics.json").read_text())["steps"] == 7


@pytest.mark.parametrize(
    "args, message",
    [(["--loss", "align:1 + uniformity:1"], "unknown loss term"), (["--lr", "-3"], "--lr must be > 0")],
)
def test_quickstart_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    script = str(ROOT / "recipes" / "quickstart.py")
    done = subprocess.run([sys.executable, script, "--output-dir", str(tmp_path), *args], env=OFFLINE,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert message in lines[-1] and "Traceback" not in done.stderr
    if args[0] == "--loss":  # once is enough: under `accelerate launch` the same line reaches the user (the
        # launcher then adds its own report)
        launched = launch("quickstart.py", "--output-dir", str(tmp_path), *args, timeout=120)
        assert launched.returncode != 0 and message in launched.stderr


def test_quickstart_steps_default_to_400_only_without_a_time_budget() -> None:
    """A default step count next to --time-budget-min would cap the budget (--max-steps is a cap there): the
    quick start's 400 steps apply only when no budget is given, and a --max-steps the user gives stays a cap."""
    sys.path.insert(0, str(ROOT / "recipes"))
    try:
        from quickstart import QUICKSTART_STEPS, QuickstartConfig
    finally:
        sys.path.remove(str(ROOT / "recipes"))
    from hsrl.cli.config import parse_config

    assert parse_config(QuickstartConfig, []).max_steps == QUICKSTART_STEPS == 400
    assert parse_config(QuickstartConfig, ["--time-budget-min", "10"]).max_steps is None
    assert parse_config(QuickstartConfig, ["--time-budget-min", "10", "--max-steps", "7"]).max_steps == 7
