"""Two CPU processes training two towers on the global batch equal one process on the whole batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import launch_command

from hsrl.training import training_session

sys.path.insert(0, str(Path(__file__).parent))
from image_text_cases import fit_config, fit_two_towers, trained_state

WORKER = Path(__file__).with_name("image_text_worker.py")


@pytest.fixture(scope="module")
def two_process_result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("two-towers")
    command, env = launch_command([str(WORKER), str(out)], processes=2)  # MULTI_CPU on gloo, a free port
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "terminate called" not in done.stderr
    return torch.load(out / "result.pt")


def test_two_tower_fit_on_two_processes_equals_one_process_on_the_global_batch(
    two_process_result: dict, tmp_path: Path
) -> None:
    assert two_process_result["distributed_type"] == "DistributedType.MULTI_CPU"
    config = fit_config(tmp_path, per_process_batch=8)
    with training_session(config) as accelerator:
        result = fit_two_towers(config, accelerator)
    losses = [h["train/loss"] for h in result.history if "train/loss" in h]
    assert result.steps == two_process_result["steps"] == 3
    torch.testing.assert_close(torch.tensor(two_process_result["losses"]), torch.tensor(losses), rtol=0, atol=1e-5)
    reference = trained_state(result)
    assert set(reference) == set(two_process_result["weights"])
    for name, value in reference.items():
        torch.testing.assert_close(two_process_result["weights"][name], value, rtol=0, atol=1e-5)
    # The scales did learn (the test would pass vacuously if they were frozen).
    assert float(reference["logit_bias"]) != -10.0


def test_gradient_caching_equals_the_plain_step_for_two_towers(tmp_path: Path) -> None:
    objective = "align:1 + uniform:1 + uniform_union:0.5"
    states = []
    for chunk in (None, 3):
        config = fit_config(tmp_path / str(chunk), per_process_batch=8)
        config.cache_chunk_size = chunk
        with training_session(config) as accelerator:
            states.append(trained_state(fit_two_towers(config, accelerator, objective)))
    for name, value in states[0].items():
        torch.testing.assert_close(states[1][name], value, rtol=1e-5, atol=1e-6)
    assert not torch.equal(states[0]["image.projection.weight"], fit_two_towers_initial_projection())


def fit_two_towers_initial_projection() -> torch.Tensor:
    torch.manual_seed(3)
    from image_text_cases import TinyImageEncoder

    from hsrl.models.two_tower import ImageTower

    return ImageTower(TinyImageEncoder(), 6).projection.weight.detach().clone()
