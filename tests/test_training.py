"""The shared training loop: exact resume, divergence guard, checkpoints, configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from hsrl.checkpoints import find_latest_checkpoint, list_checkpoints
from hsrl.cli.config import parse_config
from hsrl.losses import HypersphereLoss
from hsrl.training import (
    EpochShuffleSampler,
    LRSchedule,
    TrainConfig,
    TrainingDivergedError,
    encode_views,
    fit,
    make_dataloader,
    training_session,
)


class DropoutEncoder(nn.Module):
    """Dropout makes the result depend on the random state, so resume must restore it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)


def pairs(n: int = 24) -> TensorDataset:
    g = torch.Generator().manual_seed(123)
    a = torch.randn(n, 8, generator=g)
    return TensorDataset(a, a + 0.1 * torch.randn(n, 8, generator=g))


def config(out: Path, **overrides) -> TrainConfig:
    base = {
        "output_dir": str(out),
        "batch_size": 4,
        "epochs": 2,
        "optimizer": "sgd",
        "lr": 0.1,
        "lr_schedule": "multistep",
        "lr_milestones": (0.5,),
        "checkpoint_every": 4,
        "log_every": 1,
        "metrics_every": 2,
        "progress": False,
        "log_with": "none",
        "seed": 11,
    }
    return TrainConfig(**{**base, **overrides})


def train(cfg: TrainConfig, encode=encode_views):
    with training_session(cfg) as accelerator:
        model = DropoutEncoder()
        loss = HypersphereLoss("align:1,alpha=2 + uniform:1,t=2")
        return fit(model, loss, make_dataloader(pairs(), cfg), cfg, accelerator=accelerator, encode=encode)


def crash_on_call(n: int):
    calls = {"n": 0}

    def encode(model, batch):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt("simulated kill")
        return encode_views(model, batch)

    return encode


def test_resumed_mid_epoch_run_ends_with_the_same_weights(tmp_path: Path) -> None:
    # 24 examples / batch 4 = 6 steps an epoch, 12 in all; checkpoints at 4 and 8.
    uninterrupted = train(config(tmp_path / "a"))
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path / "b"), encode=crash_on_call(11))  # dies during step 11
    latest = find_latest_checkpoint(tmp_path / "b" / "checkpoints")
    assert latest is not None and latest.name == "step-00000008"  # mid-way through epoch 2
    resumed = train(config(tmp_path / "b", resume="latest"))
    assert uninterrupted.steps == resumed.steps == 12
    for name, value in uninterrupted.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert uninterrupted.last_loss == resumed.last_loss


def test_resume_from_an_explicit_checkpoint_and_bad_paths(tmp_path: Path) -> None:
    train(config(tmp_path / "a", epochs=1))
    first = list_checkpoints(tmp_path / "a" / "checkpoints")[0]
    resumed = train(config(tmp_path / "a", epochs=1, resume=str(first)))
    assert resumed.steps == 6
    with pytest.raises(ValueError, match="not an hsrl checkpoint"):
        train(config(tmp_path / "a", resume=str(tmp_path / "missing")))


def test_an_interrupted_save_leaves_no_checkpoint_that_resume_would_pick(tmp_path: Path) -> None:
    train(config(tmp_path, epochs=1))
    folder = tmp_path / "checkpoints"
    half = folder / ".tmp-step-00000099"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"partial")
    (folder / "step-00000050").mkdir()  # no state file: incomplete
    assert find_latest_checkpoint(folder).name == "step-00000006"
    train(config(tmp_path, epochs=1, resume="latest"))  # cleans temporaries on start
    assert not half.exists()


def test_divergence_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    calls = {"n": 0}

    def poisoned(model, batch):
        calls["n"] += 1
        x, y = encode_views(model, batch)
        return (x * float("nan"), y) if calls["n"] == 6 else (x, y)

    with pytest.raises(TrainingDivergedError, match=r"NaN or infinite at step 6.*step-00000004"):
        train(config(tmp_path), encode=poisoned)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-00000004"]


def test_logs_carry_loss_parts_and_batch_metrics(tmp_path: Path) -> None:
    result = train(config(tmp_path, epochs=1))
    lines = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in lines] == list(range(1, 7))
    assert {"train/loss", "train/align", "train/uniform", "train/lr"} <= set(lines[0])
    assert "batch/uniform" in lines[1] and "batch/uniform" not in lines[0]
    assert lines[-1]["train/loss"] == pytest.approx(result.last_loss)
    # multistep at half of training: LR drops by 10x after step 3
    assert lines[2]["train/lr"] == pytest.approx(0.1) and lines[3]["train/lr"] == pytest.approx(0.01)


def test_sampler_order_depends_only_on_seed_and_epoch() -> None:
    a, b = EpochShuffleSampler(50, seed=1), EpochShuffleSampler(50, seed=1)
    torch.manual_seed(0)
    first = list(a)
    torch.manual_seed(99)  # the global random state plays no part
    assert list(b) == first and sorted(first) == list(range(50))
    a.set_epoch(1)
    assert list(a) != first


@pytest.mark.parametrize(
    "shape, expected",
    [
        ("constant", [1, 1, 1, 1]),
        ("multistep", [1, 1, 0.1, 0.1]),
        ("linear", [1, 0.75, 0.5, 0.25]),
        ("cosine", [1, 0.8535533905932737, 0.5, 0.14644660940672624]),
    ],
)
def test_lr_schedules(shape: str, expected: list[float]) -> None:
    schedule = LRSchedule(4, 0, shape, (0.5,), 0.1, 0.0)
    assert [schedule(s) for s in range(4)] == pytest.approx(expected)
    warm = LRSchedule(10, 4, shape, (0.5,), 0.1, 0.0)
    assert [warm(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])


def test_config_flags_help_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = parse_config(
        TrainConfig,
        [
            "--lr",
            "0.5",
            "--max-steps",
            "7",
            "--no-progress",
            "--betas",
            "0.5",
            "0.99",
            "--optimizer",
            "sgd",
            "--checkpoint-every",
            "none",
        ],
    )
    assert (cfg.lr, cfg.max_steps, cfg.progress, cfg.betas, cfg.optimizer) == (0.5, 7, False, (0.5, 0.99), "sgd")
    assert cfg.checkpoint_every is None
    with pytest.raises(SystemExit):
        parse_config(TrainConfig, ["--help"])
    assert "--lr-milestones" in capsys.readouterr().out
    for bad in (["--lr", "-1"], ["--optimizer", "lbfgs"], ["--batch-size", "zero"], ["--lr-milestones", "2"]):
        with pytest.raises(SystemExit) as exit_info:
            parse_config(TrainConfig, bad)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "error:" in err[-1] and "Traceback" not in "".join(err)


def test_too_little_data_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no full batch"):
        train(config(tmp_path, batch_size=64))


def test_grouped_batches_hold_one_group_each_and_depend_only_on_seed_and_epoch() -> None:
    from hsrl.training import GroupedBatchSampler

    groups = ["a"] * 10 + ["b"] * 7 + ["c"] * 2
    sampler = GroupedBatchSampler(groups, batch_size=3, seed=4)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3 + 2  # full batches only; "c" has none
    assert all(len(b) == 3 and len({groups[i] for i in b}) == 1 for b in batches)
    assert len({i for b in batches for i in b}) == 15  # no index twice in an epoch
    assert list(GroupedBatchSampler(groups, 3, seed=4)) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches


def test_same_book_loader_trains_and_too_small_groups_are_clear(tmp_path: Path) -> None:
    cfg = config(tmp_path, epochs=1)
    groups = ["x"] * 12 + ["y"] * 12
    with training_session(cfg) as accelerator:
        loader = make_dataloader(pairs(), cfg, groups=groups)
        result = fit(DropoutEncoder(), HypersphereLoss("align:1 + uniform:1"), loader, cfg, accelerator=accelerator)
    assert result.steps == 6
    with pytest.raises(ValueError, match="no group has a full batch"):
        make_dataloader(pairs(), config(tmp_path, batch_size=13), groups=groups)


def test_mixed_precision_is_the_launchers_unless_a_flag_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from accelerate.state import AcceleratorState

    from hsrl.training import make_accelerator

    assert TrainConfig().mixed_precision is None
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch --mixed_precision bf16` sets
    try:
        AcceleratorState._reset_state(True)  # the state is a per-process singleton
        assert str(make_accelerator(config(tmp_path)).mixed_precision) == "bf16"
        AcceleratorState._reset_state(True)
        assert str(make_accelerator(config(tmp_path, mixed_precision="no")).mixed_precision) == "no"
    finally:
        AcceleratorState._reset_state(True)


def test_trackers_are_accelerates_and_missing_ones_are_one_line() -> None:
    assert TrainConfig(log_with="none").trackers() == []
    assert TrainConfig(log_with="tensorboard").trackers() == ["tensorboard"]
    with pytest.raises(ValueError, match="unknown tracker neptune"):
        TrainConfig(log_with="neptune")
    with pytest.raises(ValueError, match=r"--log-with wandb: not installed \(pip install wandb\)"):
        TrainConfig(log_with="tensorboard,wandb")


def _train_plain(cfg: TrainConfig, objective: str):
    with training_session(cfg) as accelerator:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 4))

        def encode(m, batch):
            return F.normalize(m(batch[0]), dim=1), F.normalize(m(batch[1]), dim=1)

        return fit(model, HypersphereLoss(objective), make_dataloader(pairs(), cfg), cfg, accelerator=accelerator,
                   encode=encode)  # fmt: skip


def test_a_bf16_run_returns_a_model_that_embeds_in_full_precision(tmp_path: Path) -> None:
    """Training autocasts to bfloat16; the model fit returns does not (its evaluation, export and serving would
    otherwise run in bf16 while the starting model's ran in float32)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    try:
        result = _train_plain(config(tmp_path, epochs=1, checkpoint_every=None, mixed_precision="bf16"), "align:1")
    finally:
        AcceleratorState._reset_state(True)
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))
    weight, bias = result.model[0].weight.detach(), result.model[0].bias.detach()
    out = result.model(x).detach()
    assert out.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa (errors near 1e-2 here); float32 agrees to rounding.
    torch.testing.assert_close(out, x @ weight.T + bias, rtol=0, atol=1e-5)


def test_gradient_accumulation_equals_the_big_batch_for_a_mean_loss_but_not_for_uniformity(tmp_path: Path) -> None:
    big = config(tmp_path / "big", batch_size=8, epochs=1, checkpoint_every=None)
    small = config(tmp_path / "small", batch_size=4, epochs=1, checkpoint_every=None, gradient_accumulation_steps=2)
    a, b = _train_plain(big, "align:1"), _train_plain(small, "align:1")
    assert a.steps == b.steps == 3  # 24 examples: 3 optimizer steps either way
    for name, value in a.model.state_dict().items():
        torch.testing.assert_close(b.model.state_dict()[name], value, rtol=0, atol=1e-6)
    # Uniformity is not a mean over examples: two batches of 4 are not one batch of 8.
    c, d = _train_plain(big, "uniform:1"), _train_plain(small, "uniform:1")
    assert any(not torch.allclose(c.model.state_dict()[k], v, atol=1e-4) for k, v in d.model.state_dict().items())
