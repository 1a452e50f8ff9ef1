"""When a run is done, how fast it learns, and when it evaluates: pure arithmetic on its counters.

Kept apart from the trainer so that the schedule can be read (and tested) on
numbers alone, with no model, data or clock; a resumed run recomputes every
value from its saved counters, so these functions must stay deterministic.
"""

from __future__ import annotations

import math

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


def evaluation_due(step: int, progress: float, evals_done: int, config: TrainConfig) -> bool:
    """Whether the step just taken is followed by an evaluation (the run's end always is; the loop sees to that)."""
    # 1) no validation split, nothing to evaluate on
    if config.val_frac <= 0:
        return False
    # 2) a fixed interval in steps
    if config.eval_every is not None:
        return step % config.eval_every == 0
    # 3) otherwise evals_per_run evaluations, spread evenly over the budget
    return progress >= (evals_done + 1) / config.evals_per_run
