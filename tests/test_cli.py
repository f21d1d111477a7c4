"""The ``hsrl`` dispatcher: help, unknown commands, one-line errors."""

from __future__ import annotations

import pytest

from hsrl.cli import COMMANDS, main


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_unknown_command_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trian"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown command 'trian'" in err[0]


def test_unknown_eval_kind_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "audio"]) == 2
    assert "unknown kind 'audio'" in capsys.readouterr().err
