"""One short end-to-end run of each recipe, launched the way users launch it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
LAUNCH = [ACCELERATE, "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
          "--dynamo_backend", "no"]  # fmt: skip
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def launch(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LAUNCH, str(ROOT / "recipes" / script), *args], env=OFFLINE, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)  # fmt: skip


QUICK = ["--batch-size", "64", "--eval-train-size", "2000", "--eval-test-size", "400", "--log-with", "none",
         "--no-progress", "--checkpoint-every", "3"]  # fmt: skip


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("quickstart")
    done = launch("quickstart.py", "--output-dir", str(out), "--max-steps", "5", *QUICK)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return out


def test_quickstart_trains_evaluates_and_saves(quickstart_run: Path) -> None:
    metrics = json.loads((quickstart_run / "metrics.json").read_text())
    assert metrics["steps"] == 5
    for key in ("knn5_accuracy", "knn5_accuracy_random_encoder", "knn5_accuracy_raw_pixels"):
        assert 0.1 < metrics[key] <= 1.0  # ten classes: far above chance even untrained
    assert 0 <= metrics["alignment_test_views"] <= 4 and -4 <= metrics["uniformity_test"] <= 0
    assert (quickstart_run / "model" / "model.safetensors").stat().st_size > 0
    checkpoints = sorted(p.name for p in (quickstart_run / "checkpoints").iterdir())
    assert checkpoints == ["step-00000003", "step-00000005"]


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
    # Under `accelerate launch` the same line reaches the user (the launcher then adds its own report).
    launched = launch("quickstart.py", "--output-dir", str(tmp_path), *args, timeout=120)
    assert launched.returncode != 0 and message in launched.stderr
