"""recipes/stl10.py end to end, launched as users launch it: a short offline Fashion-MNIST run, its
model folder and metrics, then ``hsrl eval image`` on the saved model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hsrl.models.image import load, load_preprocess

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
LAUNCH = [ACCELERATE, "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
          "--dynamo_backend", "no"]  # fmt: skip
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
SHORT = ["--dataset", "fashion-mnist", "--max-steps", "3", "--batch-size", "32", "--width", "0.1",
         "--num-workers", "1", "--eval-train-size", "300", "--eval-test-size", "100", "--linear-protocol", "fast",
         "--log-with", "none", "--no-progress"]  # fmt: skip

pytestmark = pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file(),
    reason="dataset-fashion-mnist absent",
)


def test_short_fashion_mnist_run_saves_a_model_and_its_evaluation(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = subprocess.run([*LAUNCH, str(ROOT / "recipes" / "stl10.py"), "--output-dir", str(out), *SHORT],
                          env=OFFLINE, capture_output=True, text=True, timeout=300, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["skipped_images"] == 0
    for key in ("knn5_accuracy", "knn5_accuracy_random_encoder", "knn5_accuracy_raw_pixels", "linear_accuracy",
                "linear_accuracy_random_encoder", "linear_accuracy_raw_pixels"):  # fmt: skip
        assert 0.1 < metrics[key] <= 1.0, key  # ten classes: above chance even after 3 steps
    assert metrics["evaluation"]["layers"] == ["fc7", "output"]
    assert metrics["config"]["optimizer"] == "sgd" and metrics["config"]["lr"] == pytest.approx(0.12 * 32 / 256)
    assert metrics["config"]["lr_milestones"] == "0.775,0.85,0.925"
    model = load(out / "model")
    assert model.architecture == "small_alexnet" and model.config["in_channels"] == 1
    assert load_preprocess(out / "model").size == 28

    report_path = tmp_path / "report.json"
    evaluated = subprocess.run(
        [sys.executable, "-m", "hsrl.cli", "eval", "image", "--model", str(out / "model"), "--dataset",
         "fashion-mnist", "--layer", "output", "--train-size", "300", "--test-size", "100", "--linear-protocol",
         "none", "--output", str(report_path)],
        env=OFFLINE, capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    report = json.loads(report_path.read_text())
    # The same model, images and seed as the recipe's own evaluation: the same 5-NN accuracy.
    assert report["results"]["pretrained"]["output"]["knn5"] == metrics["knn5_accuracy"]
    assert "raw_pixels" in report["results"] and "random_encoder" in evaluated.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "cifar10", "--data-root", "/nonexistent/data"], "cifar10 is not in"),
        (["--dataset", "fashion-mnist", "--channels", "2"], "--channels must be 1 or 3"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "recipes" / "stl10.py"), "--output-dir", str(tmp_path), *args],
                          env=OFFLINE, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert message in done.stderr.strip().splitlines()[-1]
