"""Time budgets: plan a run's number of steps (and so its LR schedule) for a wall-clock budget.

``--time-budget-min M`` makes comparisons fair on the user's own hardware: every
configuration trains for the same M minutes. A schedule such as cosine decay needs the
total number of steps in advance, so :class:`StepPlanner` measures the step time and plans:

* the first step of a run (or of a resumed piece) is not timed: it pays for allocation,
  lazy initialisation and warm caches;
* after a short calibration window (at least 2 timed steps and 1% of the budget) the
  plan is ``planned = step + floor(remaining_seconds / seconds_per_step)``;
* the plan is revised at every further 10% of the budget with the step time measured so far,
  so slow checkpoints or a busy machine do not leave the schedule unfinished;
* the run stops at the planned step, or at once when the budget is spent, whichever is first;
* a resumed run starts from the plan its average step time gives for the remaining budget
  (which may be larger than when it was saved), then revises as above;
* with ``max_steps`` (``--max-steps`` next to ``--time-budget-min``) no plan exceeds it: the run
  trains that many steps, or fewer when the machine cannot fit them in the budget. A recipe
  tuned for a step count then trains the same steps on any machine fast enough, and still
  stops in time on a slow one.

Until the first plan the schedule runs against ``max_steps`` or, without it, a provisional,
very long horizon, so the LR follows its warm-up and then stays near its peak (a cosine at
progress ~0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["PROVISIONAL_STEPS", "StepPlanner"]

#: The schedule's horizon before the first plan: long enough that progress is ~0.
PROVISIONAL_STEPS = 10**9


@dataclass
class StepPlanner:
    """Plans the step count of a run that must stop after ``budget_seconds`` of training.

    Args:
        budget_seconds: the whole budget, over every resumed piece of the run.
        min_window_fraction: the calibration window's least share of the budget.
        revise_every: revise the plan each time this share of the budget has passed.
        max_steps: the most steps any plan may give (None: as many as the budget allows).
    """

    budget_seconds: float
    max_steps: int | None = None
    min_window_fraction: float = 0.01
    revise_every: float = 0.1
    planned: int = 0
    _window_start: tuple[int, float] | None = field(default=None, repr=False)
    _next_revision: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        if not (self.budget_seconds > 0 and math.isfinite(self.budget_seconds)):
            raise ValueError(f"the time budget must be > 0 seconds, got {self.budget_seconds}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"--max-steps must be >= 1, got {self.max_steps}")

    def _capped(self, plan: int) -> int:
        return plan if self.max_steps is None else min(plan, self.max_steps)

    def resume(self, step: int, elapsed: float) -> int:
        """The plan for a run resumed at ``step`` after ``elapsed`` seconds, from its average step time.

        The budget may have grown since the checkpoint (a longer run continued), so the
        saved plan is not reused; the first revision refines this estimate.
        """
        if step > 0 and elapsed > 0:
            per_step = elapsed / step
            self.planned = self._capped(step + max(0, math.floor((self.budget_seconds - elapsed) / per_step)))
        return self.planned

    def exhausted(self, elapsed: float) -> bool:
        """True when ``elapsed`` seconds of training have used up the budget."""
        return elapsed >= self.budget_seconds

    def observe(self, step: int, elapsed: float) -> int | None:
        """Record that ``step`` steps are done after ``elapsed`` seconds; return a new plan, or None.

        ``elapsed`` counts training seconds over the whole run (resumed pieces included).
        """
        if self._window_start is None:  # the first step of this piece ends: the timed window starts
            self._window_start = (step, elapsed)
            return None
        first_step, first_time = self._window_start
        steps, seconds = step - first_step, elapsed - first_time
        if steps < 2 or seconds <= 0:
            return None
        if self.planned and elapsed < self._next_revision:
            return None
        if not self.planned and seconds < self.min_window_fraction * self.budget_seconds:
            return None
        per_step = seconds / steps
        remaining = max(0.0, self.budget_seconds - elapsed)
        # At least one more step (the caller stops on the plan or the budget, whichever is first), at most the cap
        # (which may be the step just done).
        self.planned = max(step, self._capped(max(step + 1, step + math.floor(remaining / per_step))))
        passed = math.floor(elapsed / (self.revise_every * self.budget_seconds)) + 1
        self._next_revision = passed * self.revise_every * self.budget_seconds
        return self.planned
