"""--time-budget-min: the step plan, the clean stop, the saved checkpoint and resume."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_training import config, encode_views, train

from hsrl.budget import StepPlanner
from hsrl.checkpoints import find_latest_checkpoint, read_trainer_state
from hsrl.training import TrainConfig


def simulate(
    planner: StepPlanner, seconds_per_step: float, first_step: float, start_total: int = 10**9
) -> tuple[int, float]:
    """Run the planner against a clock where every step but the first takes the same time (the loop of ``fit``:
    ``start_total`` steps until the first plan, then the plan; stop at the plan or the budget)."""
    step, elapsed, total = 0, 0.0, start_total
    while step < total and not planner.exhausted(elapsed):
        elapsed += first_step if step == 0 else seconds_per_step
        step += 1
        plan = planner.observe(step, elapsed)
        if plan:
            total = plan
    return step, elapsed


@settings(max_examples=50, deadline=None)
@given(per_step=st.floats(0.01, 5.0), budget=st.floats(60.0, 3600.0), first=st.floats(0.0, 20.0))
def test_plan_fills_the_budget_with_whole_steps(per_step: float, budget: float, first: float) -> None:
    planner = StepPlanner(budget)
    steps, elapsed = simulate(planner, per_step, first)
    # Stops within one step of the budget: never more than one step past it, and no idle step left.
    assert elapsed <= budget + per_step + 1e-9
    assert elapsed > budget - per_step - 1e-9 or elapsed < first + 3 * per_step  # budget too small to plan
    if planner.planned:
        assert planner.planned == steps or planner.exhausted(elapsed)


def test_plan_follows_a_machine_that_slows_down() -> None:
    planner = StepPlanner(100.0)
    step, elapsed, plans = 0, 0.0, []
    while not planner.exhausted(elapsed) and step < (plans[-1] if plans else 10**9):
        elapsed += 0.5 if step < 50 else 1.0  # half-way through, steps take twice as long
        step += 1
        if plan := planner.observe(step, elapsed):
            plans.append(plan)
    assert plans[0] > 150 and plans[-1] < plans[0]  # planned for fast steps, then revised down
    assert elapsed == pytest.approx(100.0, abs=1.0)


def test_bad_budgets_are_refused() -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        StepPlanner(0.0)
    for bad in ({"time_budget_min": 0}, {"time_budget_min": -1.0}, {"time_budget_min": float("nan")}):
        with pytest.raises(ValueError, match="--time-budget-min must be a number of minutes > 0"):
            TrainConfig(**bad)
    with pytest.raises(ValueError, match="--max-steps must be >= 1"):
        StepPlanner(60.0, max_steps=0)


@settings(max_examples=50, deadline=None)
@given(per_step=st.floats(0.01, 5.0), budget=st.floats(60.0, 3600.0), first=st.floats(0.0, 20.0),
       cap=st.integers(1, 2000))  # fmt: skip
def test_with_max_steps_the_plan_is_the_cap_or_what_the_budget_allows(
    per_step: float, budget: float, first: float, cap: int
) -> None:
    """``--max-steps`` next to ``--time-budget-min``: no plan exceeds the cap; a budget too short for it stops the
    run as without a cap."""
    capped, uncapped = StepPlanner(budget, max_steps=cap), StepPlanner(budget)
    steps, _ = simulate(capped, per_step, first, start_total=cap)
    free_steps, _ = simulate(uncapped, per_step, first)
    assert steps == min(cap, free_steps)
    assert capped.planned <= cap


def test_a_resumed_capped_plan_stays_at_the_cap() -> None:
    planner = StepPlanner(100.0, max_steps=30)
    assert planner.resume(10, 5.0) == 30  # the budget would allow 10 + 190 steps
    assert StepPlanner(100.0, max_steps=30).resume(10, 90.0) == 11  # 9 s a step, 10 s left: fewer than the cap


def test_fit_with_a_budget_and_max_steps_trains_exactly_the_cap_when_it_fits(tmp_path: Path) -> None:
    """Slow steps (30 ms) and a 1.5 s budget: the planner plans ~45 steps after its calibration; the cap of 8 wins,
    and a run resumed with a larger budget trains up to the cap and no further."""
    cfg = config(tmp_path, time_budget_min=1.5 / 60, max_steps=8, checkpoint_every=1000)
    result = train(cfg, encode=slow(0.03))
    assert result.steps == 8
    assert read_trainer_state(find_latest_checkpoint(tmp_path / "checkpoints"))["step"] == 8

    # A cap reached before the planner's first plan (it needs two timed steps after the first): still exact.
    assert train(config(tmp_path / "two", time_budget_min=1.5 / 60, max_steps=2), encode=slow(0.03)).steps == 2

    short = tmp_path / "short"
    first = train(config(short, time_budget_min=0.5 / 60, max_steps=30, checkpoint_every=1000), encode=slow(0.03))
    assert first.steps < 30  # stopped by the budget
    more = config(short, time_budget_min=5.0, max_steps=30, checkpoint_every=1000, resume="latest")
    assert train(more, encode=slow(0.03)).steps == 30  # the rest, up to the cap


def slow(seconds: float):
    def encode(model, batch):
        time.sleep(seconds)
        return encode_views(model, batch)

    return encode


def test_fit_stops_at_the_budget_saves_and_resumes_with_the_rest(tmp_path: Path) -> None:
    budget_min = 1.5 / 60  # 1.5 s of training; a step takes >= 30 ms, an epoch is 6 steps
    cfg = config(tmp_path, time_budget_min=budget_min, checkpoint_every=1000)
    first = train(cfg, encode=slow(0.03))
    assert 3 <= first.steps < 50  # stopped by the budget, not by the data (epochs would allow 12)
    assert first.steps > 12  # and it ran past the 2 epochs that --epochs would have given
    assert first.train_seconds >= 0.8 * 1.5
    saved = find_latest_checkpoint(tmp_path / "checkpoints")
    assert saved is not None and saved.name == f"step-{first.steps:08d}"
    state = read_trainer_state(saved)
    assert state["planned_steps"] >= first.steps - 1 and state["train_seconds"] == pytest.approx(first.train_seconds)
    lines = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == first.steps  # the last step is logged

    # Resuming with a larger budget trains only the rest of it, from the saved step.
    more = config(tmp_path, time_budget_min=2 * budget_min, checkpoint_every=1000, resume="latest")
    second = train(more, encode=slow(0.03))
    assert second.steps > first.steps
    assert second.train_seconds >= 0.8 * 3.0
