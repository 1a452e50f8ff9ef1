import math

import pytest
from conftest import tiny_train_config

from charlstm.training.schedule import evaluation_due, learning_rate, progress


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
    config = tiny_train_config(eval_every=5)
    assert [step for step in range(1, 16) if evaluation_due(step, 0.0, 0, config)] == [5, 10, 15]


def test_evaluations_spread_evenly_over_the_budget():
    config = tiny_train_config(evals_per_run=4)
    assert not evaluation_due(10, 0.24, 0, config)
    assert evaluation_due(10, 0.25, 0, config)
    assert not evaluation_due(10, 0.49, 1, config)
    assert evaluation_due(10, 0.5, 1, config)


def test_no_evaluations_without_a_validation_split():
    assert not evaluation_due(5, 1.0, 0, tiny_train_config(val_frac=0.0, eval_every=5))
    assert not evaluation_due(5, 1.0, 0, tiny_train_config(val_frac=0.0))
