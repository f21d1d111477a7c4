"""``--config FILE.json|yaml`` for every recipe (read by transformers' HfArgumentParser), flags overriding it,
and one-line errors for bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hsrl.cli.config import parse_config
from hsrl.training import TrainConfig


def test_json_and_yaml_files_set_defaults_and_flags_override(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text(json.dumps({"batch_size": 12, "lr": 0.01, "lr_milestones": [0.3, 0.6]}))
    (tmp_path / "run.yaml").write_text("batch_size: 20\noptimizer: adamw\n")
    from_json = parse_config(TrainConfig, ["--config", str(tmp_path / "run.json")])
    assert (from_json.batch_size, from_json.lr, from_json.lr_milestones) == (12, 0.01, (0.3, 0.6))
    overridden = parse_config(TrainConfig, ["--config", str(tmp_path / "run.yaml"), "--batch-size", "7"])
    assert (overridden.batch_size, overridden.optimizer) == (7, "adamw")
    assert parse_config(TrainConfig, []).batch_size == TrainConfig().batch_size


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.json", None, "no such file"),
        ("bad.json", '{"batch_size": 4, "batchsize": 5}', "batchsize"),
        ("bad.toml", "batch_size = 4", "expected a .json, .yaml or .yml file"),
        ("broken.json", '{"batch_size": ', "--config"),
    ],
)
def test_bad_config_files_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: str | None, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as done:
        parse_config(TrainConfig, ["--config", str(path)])
    assert done.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("usage:") is False and message in last and "Traceback" not in last
