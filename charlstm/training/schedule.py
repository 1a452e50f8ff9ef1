"""When a run is done, how fast it learns, and when it evaluates: pure arithmetic on its counters.

Kept apart from the trainer so that the schedule can be read (and tested) on
numbers alone, with no model, data or clock; a resumed run recomputes every
value from its saved counters, so these functions must stay deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import TrainConfig


def progress(step: int, elapsed: float, steps: int | None, total_windows: float | None, time_budget: float | None) -> float:
    """How far through its budget a run is, 0 to 1, by whichever limit is tightest."""
    fractions = [0.0]
    # 1) the step budget
    if steps is not None:
        fractions.append(step / max(1, steps))
    # 2) the epoch budget, counted in windows (a step reads one window)
    if total_windows is not None:
        fractions.append(step / max(1.0, total_windows))
    # 3) the wall-clock budget
    if time_budget is not None:
        fractions.append(elapsed / max(1e-9, time_budget))
    return min(1.0, max(fractions))


def learning_rate(step: int, progress: float, config: TrainConfig) -> float:
    """Linear warmup over steps, then cosine decay over progress, so any budget ends at the floor."""
    peak = config.lr
    # 1) linear warmup for warmup_steps steps
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    # 2) cosine decay from the peak down to min_lr_ratio of it, reached when progress is 1
    floor = peak * config.min_lr_ratio
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


# -- the wall-clock budget ---------------------------------------------------------------------------

# Shares of a timed run that evaluation may take: the intermediate evaluations together, and the final one.
INTERMEDIATE_EVAL_SHARE = 0.05
FINAL_EVAL_SHARE = 0.05
# Training steps that must separate two evaluations (and precede the first).
MIN_STEPS_BETWEEN_EVALS = 10
# Before any evaluation is measured, one evaluation window is guessed to cost this much of a training
# step (a forward pass without gradients or optimiser; measured 0.25-0.35 on CPUs, rounded up).
EVAL_WINDOW_PER_STEP = 0.5
# Checkpoints written at the end of a run: best/ and last/.
FINAL_SAVES = 2


def budget_tolerance(time_budget: float) -> float:
    """How far past its budget a timed run may end: max(5 s, 2%), everything included."""
    return max(5.0, 0.02 * time_budget)


@dataclass
class BudgetPlanner:
    """When a run evaluates, how much of the validation split it reads, and when training must stop
    so that the final evaluation and checkpoints still fit the wall-clock budget.

    It is pure: the trainer feeds it the costs it measured (on a distributed run, values every rank
    agreed on) and asks; tests feed it a fake clock. Its choices are:

    1) intermediate evaluations read the first ``intermediate_windows`` windows of the validation
       split's stream layout — B contiguous chunks spread over the whole split, the same characters
       every time — sized so that ``evals_per_run`` of them take about INTERMEDIATE_EVAL_SHARE of the run;
    2) the final evaluation reads the whole split, or the most windows that fit FINAL_EVAL_SHARE;
    3) training stops at the budget minus a reserve for (2) and the final checkpoints;
    4) an evaluation is due at evenly spaced points of progress, never within MIN_STEPS_BETWEEN_EVALS
       steps of the previous one, and one that overran its slot pushes the next slot back.
    """

    time_budget: float | None
    validation_windows: int  # windows in a whole pass over the validation split (0: no validation)
    evals_per_run: int = 6
    eval_every: int | None = None
    step_seconds: float | None = None  # measured, smoothed
    window_seconds: float | None = None  # one evaluation window, measured
    save_seconds: float = 0.0  # the slowest checkpoint write so far

    def observe_step(self, seconds: float) -> None:
        self.step_seconds = seconds if self.step_seconds is None else 0.9 * self.step_seconds + 0.1 * seconds

    def observe_evaluation(self, windows: int, seconds: float) -> None:
        if windows > 0:
            self.window_seconds = seconds / windows

    def observe_save(self, seconds: float) -> None:
        self.save_seconds = max(self.save_seconds, seconds)

    def _window_cost(self) -> float:
        if self.window_seconds is not None:
            return self.window_seconds
        return EVAL_WINDOW_PER_STEP * (self.step_seconds or 0.0)

    def run_seconds(self, steps_left: float | None, elapsed: float) -> float | None:
        """How long the whole run is expected to take: its budget, or (without one) the measured pace."""
        if self.time_budget is not None:
            return self.time_budget
        if steps_left is None or self.step_seconds is None:
            return None
        return elapsed + steps_left * self.step_seconds

    def intermediate_windows(self, run_seconds: float | None) -> int:
        """How many windows each intermediate evaluation reads (chosen once; the run keeps it)."""
        cost = self._window_cost()
        if self.validation_windows == 0:
            return 0
        if run_seconds is None or cost <= 0:
            return self.validation_windows
        fitting = int(INTERMEDIATE_EVAL_SHARE * run_seconds / self.evals_per_run / cost)
        return max(1, min(self.validation_windows, fitting))

    def final_windows(self, elapsed: float) -> int:
        """The whole split, or as much of it as fits both FINAL_EVAL_SHARE and the time still left."""
        if self.validation_windows == 0:
            return 0
        cost = self._window_cost()
        if self.time_budget is None or cost <= 0:
            return self.validation_windows
        left = self.time_budget + budget_tolerance(self.time_budget) / 2 - elapsed - FINAL_SAVES * self.save_seconds
        allowed = min(FINAL_EVAL_SHARE * self.time_budget, left)
        return max(1, min(self.validation_windows, int(allowed / cost)))

    def reserve(self) -> float:
        """Seconds kept free at the end of a timed run: the final evaluation, the final checkpoints and
        half a training step (the last one may start just before the line)."""
        if self.time_budget is None:
            return 0.0
        final = 0.0
        if self.validation_windows:
            cost = self._window_cost()
            final = min(FINAL_EVAL_SHARE * self.time_budget, self.validation_windows * cost)
        return final + FINAL_SAVES * self.save_seconds + 0.5 * (self.step_seconds or 0.0)

    def training_deadline(self) -> float | None:
        """Elapsed seconds at which training stops (the learning-rate schedule ends there too)."""
        if self.time_budget is None:
            return None
        return max(1e-9, self.time_budget - self.reserve())

    def evaluation_due(self, step: int, progress: float, last_eval_step: int, next_eval_progress: float) -> bool:
        """Whether an intermediate evaluation follows the step just taken (the final one is the loop's)."""
        if self.validation_windows == 0 or progress >= 1.0:
            return False
        if self.eval_every is not None:
            return step % self.eval_every == 0
        if step - last_eval_step < MIN_STEPS_BETWEEN_EVALS:
            return False
        # The last slot before the end is the final evaluation's, not an intermediate one.
        return next_eval_progress < 1.0 and progress >= next_eval_progress

    def next_slot(self, slot: float, progress: float) -> float:
        """The next evaluation's point of progress, once the one planned for ``slot`` ended at
        ``progress``: the next even slot, or a whole interval later if this one overran by half of one."""
        interval = 1.0 / self.evals_per_run
        if progress > slot + interval / 2:
            return progress + interval
        return slot + interval
