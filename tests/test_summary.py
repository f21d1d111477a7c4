"""The one metrics.json key scheme and its table: baselines by prefix, the change against the first one."""

from __future__ import annotations

import json
from pathlib import Path

from hsrl.evaluation.summary import format_change, format_summary, lower_is_better, write_metrics


def test_a_text_summary_shows_the_starting_model_and_marks_improvements() -> None:
    summary = {"recall@10": 0.3, "baseline_recall@10": 0.2, "align": 0.5, "baseline_align": 0.4,
               "steps": 60.0, "train_seconds": 12.34}  # fmt: skip
    lines = format_summary(summary).splitlines()
    assert lines[0] == "| summary | start | trained | change |"
    assert lines[2] == "| recall@10 | 0.2000 | 0.3000 | +0.1000 (1.50×) ✓ |"
    assert lines[3] == "| align | 0.4000 | 0.5000 | +0.1000 |"  # alignment is a loss: up is worse, no mark
    assert lines[4] == "| steps / train seconds | | 60 / 12 s | |"


def test_an_image_summary_has_a_column_per_baseline_and_names_its_layer() -> None:
    summary = {"layer": "output", "knn5": 0.8, "random_encoder_knn5": 0.6, "raw_pixels_knn5": 0.7, "uniform": -3.0,
               "steps": 5.0, "train_seconds": 1.0}  # fmt: skip
    lines = format_summary(summary).splitlines()
    assert lines[0] == "| summary | random encoder | raw pixels | trained | change |"
    assert lines[2] == "| knn5 | 0.6000 | 0.7000 | 0.8000 | +0.2000 (1.33×) ✓ |"
    assert lines[3] == "| uniform | | | -3.0000 | |" and lines[-1] == "layer: output"


def test_losses_are_lower_is_better_and_changes_say_so() -> None:
    assert lower_is_better("factbook_align") and lower_is_better("uniform") and not lower_is_better("knn5")
    assert format_change(-2.0, -3.0, "uniform").endswith("✓") and not format_change(0.5, 0.4, "knn5").endswith("✓")


def test_metrics_are_written_whole(tmp_path: Path) -> None:
    write_metrics(tmp_path / "run" / "metrics.json", {"summary": {"knn5": 0.5}})
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == {"summary": {"knn5": 0.5}}
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["metrics.json"]  # no temporary left
