import math

import pytest
from conftest import tiny_train_config

from charlstm.training.schedule import (
    FINAL_EVAL_SHARE,
    INTERMEDIATE_EVAL_SHARE,
    MIN_STEPS_BETWEEN_EVALS,
    BudgetPlanner,
    budget_tolerance,
    learning_rate,
    progress,
)


def test_progress_follows_the_tightest_budget():
    assert progress(0, 0.0, steps=100, total_windows=None, time_budget=None) == 0.0
    assert progress(25, 999.0, steps=100, total_windows=None, time_budget=None) == 0.25
    assert progress(25, 0.0, steps=100, total_windows=50.0, time_budget=None) == 0.5
    assert progress(25, 30.0, steps=100, total_windows=50.0, time_budget=40.0) == 0.75
    assert progress(10, 0.0, steps=None, total_windows=None, time_budget=None) == 0.0


def test_progress_never_passes_one_and_survives_empty_budgets():
    assert progress(200, 0.0, steps=100, total_windows=None, time_budget=None) == 1.0
    assert progress(1, 0.0, steps=0, total_windows=None, time_budget=None) == 1.0  # max(1, steps)
    assert progress(0, 0.0, steps=None, total_windows=0.25, time_budget=None) == 0.0  # max(1.0, windows)
    assert progress(0, 1.0, steps=None, total_windows=None, time_budget=0.0) == 1.0  # max(1e-9, time)


def test_learning_rate_warms_up_then_decays_to_the_floor():
    config = tiny_train_config(steps=100, warmup_steps=10, lr=1e-2, min_lr_ratio=0.1)
    rates = [learning_rate(step, progress(step, 0.0, 100, None, None), config) for step in range(101)]
    assert rates[0] == 1e-2 / 10 and rates[9] == 1e-2
    assert all(a < b for a, b in zip(rates[:9], rates[1:10]))
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
    assert abs(rates[100] - 1e-3) < 1e-12


def test_learning_rate_decays_by_progress_not_steps():
    config = tiny_train_config(warmup_steps=0, lr=1.0, min_lr_ratio=0.0)
    assert learning_rate(5, 0.0, config) == 1.0
    assert learning_rate(5, 0.5, config) == pytest.approx(0.5)
    assert learning_rate(5, 1.0, config) == 0.5 * (1.0 + math.cos(math.pi))


def test_evaluations_fall_every_eval_every_steps():
    planner = BudgetPlanner(time_budget=None, validation_windows=10, eval_every=5)
    assert [step for step in range(1, 16) if planner.evaluation_due(step, step / 100, 0, 0.25)] == [5, 10, 15]


def test_evaluations_spread_evenly_over_the_budget():
    planner = BudgetPlanner(time_budget=None, validation_windows=10, evals_per_run=4)
    assert not planner.evaluation_due(40, 0.24, 0, 0.25)
    assert planner.evaluation_due(40, 0.25, 0, 0.25)
    assert planner.next_slot(0.25, 0.25) == 0.5
    assert not planner.evaluation_due(80, 0.49, 40, 0.5)
    assert planner.evaluation_due(80, 0.5, 40, 0.5)


def test_no_evaluations_without_a_validation_split():
    assert not BudgetPlanner(time_budget=60, validation_windows=0, eval_every=5).evaluation_due(5, 0.5, 0, 0.1)
    assert not BudgetPlanner(time_budget=60, validation_windows=0).evaluation_due(50, 0.5, 0, 0.1)
    assert BudgetPlanner(time_budget=60, validation_windows=0).final_windows(10.0) == 0


class FakeRun:
    """A timed run driven by a fake clock: every step and every evaluation window costs what the test
    says, and the planner decides as the trainer's loop does (the same calls, in the same order)."""

    def __init__(self, budget: float, step_cost, window_cost: float, windows: int, evals_per_run: int = 6,
                 save_cost: float = 0.1):
        self.planner = BudgetPlanner(time_budget=budget, validation_windows=windows, evals_per_run=evals_per_run)
        self.step_cost, self.window_cost, self.save_cost = step_cost, window_cost, save_cost
        self.now, self.step, self.evaluations, self.eval_seconds = 0.0, 0, [], 0.0

    def progress(self) -> float:
        return progress(self.step, self.now, None, None, self.planner.training_deadline())

    def evaluate(self, windows: int) -> None:
        seconds = windows * self.window_cost
        self.now += seconds + self.save_cost
        self.eval_seconds += seconds
        self.planner.observe_evaluation(windows, seconds)
        self.planner.observe_save(self.save_cost)
        self.evaluations.append((self.step, windows))

    def run(self) -> "FakeRun":
        last_eval, next_slot, eval_windows = 0, 1 / self.planner.evals_per_run, 0
        while self.progress() < 1.0:
            cost = self.step_cost(self.step) if callable(self.step_cost) else self.step_cost
            self.now += cost
            self.step += 1
            self.planner.observe_step(cost)
            if self.planner.evaluation_due(self.step, self.progress(), last_eval, next_slot):
                eval_windows = eval_windows or self.planner.intermediate_windows(self.planner.time_budget)
                slot = next_slot
                self.evaluate(eval_windows)
                last_eval = self.step
                next_slot = self.planner.next_slot(slot, self.progress())
        self.evaluate(self.planner.final_windows(self.now))
        self.now += self.save_cost
        return self


def test_a_timed_run_ends_within_its_tolerance_and_evaluates_a_small_share():
    budget = 600.0
    run = FakeRun(budget, step_cost=0.15, window_cost=0.04, windows=1000).run()
    assert run.now <= budget + budget_tolerance(budget)
    assert run.eval_seconds <= (INTERMEDIATE_EVAL_SHARE + FINAL_EVAL_SHARE) * budget * 1.01
    intermediate = run.evaluations[:-1]
    assert 4 <= len(intermediate) <= 6
    assert len({windows for _, windows in intermediate}) == 1, "every intermediate evaluation reads the same part"


def test_a_small_split_is_read_whole_every_time():
    run = FakeRun(600.0, step_cost=0.15, window_cost=0.04, windows=50).run()
    assert all(windows == 50 for _, windows in run.evaluations)


def test_a_split_too_large_for_the_budget_is_read_as_far_as_the_final_share_allows():
    budget = 60.0
    run = FakeRun(budget, step_cost=0.1, window_cost=0.05, windows=100_000).run()
    final_windows = run.evaluations[-1][1]
    assert final_windows * 0.05 <= FINAL_EVAL_SHARE * budget + 1e-9
    assert run.now <= budget + budget_tolerance(budget)


def test_a_slow_first_step_is_not_followed_by_an_evaluation():
    # 25 s budget, the first step takes 8.6 s (a third of it), the rest 1 s each.
    run = FakeRun(25.0, step_cost=lambda step: 8.6 if step == 0 else 1.0, window_cost=0.3, windows=20).run()
    intermediate = run.evaluations[:-1]
    assert all(step >= MIN_STEPS_BETWEEN_EVALS for step, _ in intermediate)
    assert run.now <= 25.0 + budget_tolerance(25.0)


def test_evaluations_slower_than_their_interval_never_stack():
    # Each evaluation takes longer than the interval between two of them would allow.
    run = FakeRun(60.0, step_cost=0.5, window_cost=2.0, windows=8).run()
    steps = [step for step, _ in run.evaluations]
    assert all(b - a >= MIN_STEPS_BETWEEN_EVALS for a, b in zip(steps, steps[1:])), steps
    assert run.now <= 60.0 + budget_tolerance(60.0)


def test_a_budget_shorter_than_one_evaluation_still_ends_on_time():
    # One pass over the validation split would take 100 s; the whole run has 10.
    run = FakeRun(10.0, step_cost=0.2, window_cost=1.0, windows=100).run()
    assert run.evaluations[-1][1] >= 1
    assert run.now <= 10.0 + budget_tolerance(10.0)


def test_an_overrun_slot_pushes_the_next_one_back():
    planner = BudgetPlanner(time_budget=100.0, validation_windows=10, evals_per_run=4)
    assert planner.next_slot(0.25, 0.27) == 0.5  # ended within its slot: the next stays in place
    assert planner.next_slot(0.25, 0.45) == pytest.approx(0.70)  # overran: a whole interval from now


def test_threads_fit_beside_other_work():
    from charlstm.base.runtime import threads_for

    assert threads_for(cores=2, busy_elsewhere=0.0, ceiling=2) == 2
    assert threads_for(cores=2, busy_elsewhere=1.0, ceiling=2) == 1
    assert threads_for(cores=2, busy_elsewhere=2.0, ceiling=2) == 1  # never none
    assert threads_for(cores=16, busy_elsewhere=3.2, ceiling=8) == 8  # never past the starting count
    assert threads_for(cores=4, busy_elsewhere=1.6, ceiling=4) == 2


def test_busy_readings_wait_for_a_window_long_enough_to_count_ticks(monkeypatch):
    from charlstm.base.runtime import BusyElsewhere

    now, slept = [0.0], []
    # (machine busy ticks, this process's ticks) at each sample: the machine gains 40 ticks a 0.2 s
    # window of which this process took 20, so one other core was busy.
    samples = iter([(0.0, 0.0), (40.0, 20.0), (80.0, 40.0), (120.0, 60.0)])
    monkeypatch.setattr(BusyElsewhere, "_sample", staticmethod(lambda: next(samples)))
    monkeypatch.setattr("os.sysconf", lambda name: 100)

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    busy = BusyElsewhere(prime=0.2, clock=lambda: now[0], sleep=sleep)
    assert busy() == pytest.approx(1.0) and slept == [pytest.approx(0.2)]
    now[0] += 0.003  # read again 3 ms later, as one speed probe after another did: it waits out the window
    assert busy() == pytest.approx(1.0) and slept[1] == pytest.approx(0.197)
    now[0] += 20.0  # the governor's cadence: no wait
    assert busy() == pytest.approx((40.0 - 20.0) / 100 / 20.0) and len(slept) == 2


def test_the_thread_governor_rechecks_on_its_own_schedule(monkeypatch):
    import torch

    from charlstm.base.runtime import ThreadGovernor

    now, busy, checks = [0.0], [0.0], []

    def measure() -> float:
        checks.append(now[0])
        return busy[0]

    started = torch.get_num_threads()
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    governor = ThreadGovernor(every=20.0, clock=lambda: now[0], busy=measure)
    governor.ceiling = governor.current = governor.cores = 2
    for step in range(100):  # a step a second for 100 seconds; the machine gets busy at 50 s
        now[0] = float(step)
        busy[0] = 1.0 if step >= 50 else 0.0
        governor.tick()
    assert checks == [0.0, 20.0, 40.0, 60.0, 80.0]
    assert governor.changes == [(60.0, 1)]
    assert torch.get_num_threads() == started
