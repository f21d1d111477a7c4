"""recipes/stl10.py end to end, launched as users launch it: a short offline Fashion-MNIST run, its
model folder and metrics, then ``hsrl eval image`` on the saved model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import LAUNCH, OFFLINE, ROOT, hsrl_command, needs_fashion_mnist, recipe_module
from model_folders import opens_everywhere

from hsrl.cli.config import parse_config
from hsrl.models.image import load, load_preprocess

SHORT = ["--dataset", "fashion-mnist", "--batch-size", "32", "--eval-train-size", "300", "--eval-test-size", "100",
         "--linear-protocol", "fast", "--log-with", "none", "--no-progress"]  # fmt: skip

pytestmark = needs_fashion_mnist


def recipe_config(*args: str) -> Any:
    """The recipe's parsed configuration (its presets resolved), without launching it."""
    return parse_config(recipe_module("stl10").STL10Config, list(args))


def test_presets_fill_what_the_command_line_leaves_unset() -> None:
    fashion = recipe_config("--dataset", "fashion-mnist")
    assert fashion.preset == "fashion-mnist" and fashion.encoder == "small_resnet" and fashion.optimizer == "adamw"
    assert fashion.num_workers == 0 and fashion.lr_schedule == "cosine" and fashion.batch_size == 256
    paper = recipe_config("--dataset", "fashion-mnist", "--preset", "paper-stl10", "--batch-size", "512")
    assert paper.encoder == "small_alexnet" and paper.optimizer == "sgd" and paper.lr_schedule == "multistep"
    assert paper.batch_size == 512 and paper.lr == pytest.approx(0.12 * 512 / 256)  # the flag wins, lr follows it
    stl = recipe_config()
    assert stl.preset == "paper-stl10" and stl.batch_size == 768 and stl.epochs == 200
    assert recipe_config("--dataset", "fashion-mnist", "--lr", "0.01").lr == 0.01


def test_fashion_mnist_defaults_under_a_time_budget_save_evaluate_summarise_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [*LAUNCH, str(ROOT / "recipes" / "stl10.py"), "--output-dir", str(out), *SHORT]
    done = subprocess.run([*command, "--time-budget-min", "0.05"], env=OFFLINE, capture_output=True, text=True,
                          timeout=300, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    summary = metrics["summary"]
    assert metrics["skipped_images"] == 0 and summary["steps"] == metrics["steps"] >= 1
    assert 0 < summary["train_seconds"] < 3 + 30  # the budget (3 s) stopped training, not --epochs
    assert summary["layer"] == "stage2" and metrics["evaluation"]["layers"] == ["stage2", "output"]
    for key in ("knn5", "linear", "output_knn5", "raw_pixels_knn5", "random_encoder_knn5"):
        assert 0.1 < summary[key] <= 1.0, key  # ten classes: above chance even after a few steps
    assert 0 <= summary["align"] <= 4 and -4 <= summary["uniform"] <= 0
    assert summary["knn5"] == metrics["evaluation"]["results"]["pretrained"]["stage2"]["knn5"]
    assert "| summary | random encoder | raw pixels | trained | change |" in done.stdout  # printed at the end
    assert metrics["config"]["optimizer"] == "adamw" and metrics["config"]["encoder"] == "small_resnet"
    model = load(out / "model")
    assert model.architecture == "small_resnet" and model.config["in_channels"] == 1
    assert load_preprocess(out / "model").size == 28

    resumed = subprocess.run([*command, "--time-budget-min", "0.1", "--resume", "latest", "--no-eval"], env=OFFLINE,
                             capture_output=True, text=True, timeout=300, cwd=ROOT)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert json.loads((out / "metrics.json").read_text())["steps"] > metrics["steps"]

    report_path = tmp_path / "report.json"
    evaluated = subprocess.run(
        hsrl_command("eval", "image", "--model", str(out / "model"), "--dataset",
         "fashion-mnist", "--layer", "output", "--train-size", "300", "--test-size", "100", "--linear-protocol",
         "none", "--knn-protocol", "lightly", "--output", str(report_path)),
        env=OFFLINE, capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    report = json.loads(report_path.read_text())
    assert report["knn_protocol"] == "lightly" and report["k"] == 200
    assert 0.1 < report["results"]["pretrained"]["output"]["knn200_t0.1"] <= 1
    assert "raw_pixels" in report["results"] and "random_encoder" in evaluated.stdout
    assert opens_everywhere(out / "model", tmp_path / "opened") == "image"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "cifar10", "--data-root", "/nonexistent/data"], "cifar10 is not in"),
        (["--dataset", "fashion-mnist", "--channels", "2"], "--channels must be 1 or 3"),
        (["--dataset", "fashion-mnist", "--preset", "imagenet"], "unknown preset 'imagenet'"),
        (["--dataset", "fashion-mnist", "--time-budget-min", "0"], "--time-budget-min must be"),
        (["--dataset", "fashion-mnist", "--time-budget-min", "ten"], "invalid"),
        (["--dataset", "fashion-mnist", "--time-budget-min", "5", "--max-steps", "0"], "--max-steps must be >= 1"),
        (["--dataset", "fashion-mnist", "--head-grid", "0"], "--head-grid must be >= 1"),
        (["--dataset", "fashion-mnist", "--encoder", "small_alexnet", "--head-grid", "2"], "for the small_resnet"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The recipe's ``main`` in this process (an uncaught exception would fail the test here)."""
    try:
        code = recipe_module("stl10").main(["--output-dir", str(tmp_path), *args])
    except SystemExit as stop:  # the flag parser's usage error
        code = stop.code
    assert code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_bad_input_on_the_command_line_is_one_line_without_a_traceback(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "recipes" / "stl10.py"), "--output-dir", str(tmp_path),
                           "--dataset", "cifar10", "--data-root", "/nonexistent/data"],
                          env=OFFLINE, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "cifar10 is not in" in done.stderr.strip().splitlines()[-1]
