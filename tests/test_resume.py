"""Resuming a run: an exact continuation, budgets that extend a finished run, and clear refusals."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from conftest import TINY_CLI, main_outcome
from safetensors.torch import load_file

from charlstm.interface import terminal as console
from charlstm.training.checkpoint import load_training_state, read_metrics
from charlstm.training.resume import plan_resume


class SignalAtStep(console.ConsoleTrainReporter):
    """A reporter that sends this process a real signal once training reaches ``stop_step``."""

    def __init__(self, stop_step: int, signum: int = signal.SIGINT, **options):
        super().__init__(**options)
        self.stop_step, self.signum = stop_step, signum

    def step(self, stats) -> None:
        super().step(stats)
        if stats.step == self.stop_step:
            os.kill(os.getpid(), self.signum)


def train_args(corpus: Path, out: Path, name: str, *extra: str) -> tuple[str, ...]:
    return ("train", str(corpus), "--out", str(out), "--name", name, *TINY_CLI, *extra)


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_corpus_file) -> Path:
    """A run trained to the end of a 12-step budget through the CLI."""
    out = tmp_path_factory.mktemp("finished")
    done = main_outcome(*train_args(tiny_corpus_file, out, "run", "--steps", "12"))
    assert done.code == 0, done.stderr
    return out / "run"


@pytest.fixture
def run_copy(tmp_path, finished_run) -> Path:
    copy = tmp_path / "runs" / "run"
    shutil.copytree(finished_run, copy)
    return copy


def test_resume_matches_uninterrupted_run(tmp_path, tiny_corpus_file, monkeypatch):
    """N steps, Ctrl-C, resume, M more steps == N+M steps in one go, bit for bit.

    Dropout makes the RNG matter, the default evaluations (with text previews)
    fall both before and after the stop, and the stop lands mid-epoch with a
    carried hidden state, so every piece of the saved state is exercised.
    """
    args = ("--steps", "45", "--dropout", "0.3", "--layers", "2")
    assert main_outcome(*train_args(tiny_corpus_file, tmp_path, "whole", *args)).code == 0

    monkeypatch.setattr(console, "ConsoleTrainReporter", lambda **options: SignalAtStep(17, **options))
    interrupted = main_outcome(*train_args(tiny_corpus_file, tmp_path, "split", *args))
    assert interrupted.code == 130, interrupted.stderr
    assert f"resume it with: charlstm train --resume {tmp_path / 'split'}" in interrupted.stderr
    saved = load_training_state(tmp_path / "split" / "last")
    assert saved["step"] in (17, 18) and 0 < saved["window"]  # the stop is taken in at a step boundary

    monkeypatch.undo()
    torch.manual_seed(999)  # whatever this process did before, the run's own RNG state must win
    resumed = main_outcome("train", "--resume", str(tmp_path / "split"))
    assert resumed.code == 0, resumed.stderr
    assert "resumed" in resumed.stderr and f"from step {saved['step']}" in resumed.stderr

    for tag in ("last", "best"):
        whole = load_file(str(tmp_path / "whole" / tag / "model.safetensors"))
        split = load_file(str(tmp_path / "split" / tag / "model.safetensors"))
        assert whole.keys() == split.keys()
        for name in whole:
            assert torch.equal(whole[name], split[name]), (tag, name)
    whole_state = load_training_state(tmp_path / "whole" / "last")
    split_state = load_training_state(tmp_path / "split" / "last")
    for key in ("step", "window", "epoch", "evals_done", "best_val_loss", "last_val_loss", "train_loss_ema"):
        assert whole_state[key] == split_state[key], key
    assert torch.equal(whole_state["rng"], split_state["rng"])
    for a, b in zip(whole_state["optimizer"]["state"].values(), split_state["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    losses = lambda run: [(m["step"], m["lr"], m["train_loss"], m.get("val_loss")) for m in read_metrics(run)]  # noqa: E731
    assert losses(tmp_path / "whole") == losses(tmp_path / "split")


def test_resumed_trainer_starts_where_the_run_stopped(run_copy):
    saved = load_training_state(run_copy / "last")
    trainer = plan_resume(run_copy, train_changes={"steps": 20}).trainer()
    assert (trainer.run.step, trainer.run.window, trainer.run.epoch) == (saved["step"], saved["window"], saved["epoch"])
    assert trainer.run.elapsed == saved["elapsed"]  # a time budget counts the time already spent
    assert trainer.run.best_val_loss == saved["best_val_loss"]


def test_a_finished_run_is_extended_only_by_a_larger_budget(run_copy):
    root = run_copy.parent
    assert "has used its whole budget (steps 12) at step 12" in main_outcome("train", "--resume", "--out", str(root)).error_line
    assert "has used its whole budget (steps 10)" in main_outcome("train", "--resume", str(run_copy), "--steps", "10").error_line
    extended = main_outcome("train", "--resume", "--out", str(root), "--steps", "20")  # --resume alone: the newest run
    assert extended.code == 0, extended.stderr
    assert load_training_state(run_copy / "last")["step"] == 20
    assert [m["step"] for m in read_metrics(run_copy)][-1] == 20


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--hidden", "64", "--batch-size", "8"), "hidden_size 64 (the run has 24); batch_size 8 (the run has 4)"),
        (("--size", "large"), "hidden_size 512 (the run has 24)"),
        (("--cell", "gru", "--seq-len", "17", "--val-frac", "0.2"), "cell gru (the run has lstm); seq_len 17 (the run has 16); val_frac 0.2"),
        (("--seed", "1"), "seed 1 (the run has 1337)"),
        (("--name", "other"), "--name cannot be used with --resume"),
        (("--force",), "--force cannot be used with --resume"),
    ],
)
def test_incompatible_options_are_refused_naming_what_differs(run_copy, options, message):
    before = tree_hashes(run_copy)
    line = main_outcome("train", "--resume", str(run_copy), "--steps", "30", *options).error_line
    assert message in line
    assert tree_hashes(run_copy) == before


def test_options_that_keep_the_run_meaningful_are_taken(run_copy):
    same_model = ("--hidden", "24", "--layers", "1", "--batch-size", "4")  # repeating the run's own values is fine
    plan = plan_resume(run_copy, train_changes={"steps": 30, "lr": 1e-3, "on_nan": "skip", "batch_size": 4},
                       model_changes={"hidden_size": 24})
    assert (plan.train_config.steps, plan.train_config.lr, plan.train_config.on_nan) == (30, 1e-3, "skip")
    assert main_outcome("train", "--resume", str(run_copy), "--steps", "14", "--lr", "0.001", *same_model).code == 0


def test_a_corpus_with_characters_the_model_lacks_is_refused(run_copy, tmp_path, tiny_text):
    other = tmp_path / "other.txt"
    other.write_text(tiny_text + "Жук #1\n", encoding="utf-8")
    before = tree_hashes(run_copy)
    line = main_outcome("train", str(other), "--resume", str(run_copy), "--steps", "30").error_line
    assert "has 5 character(s) the run's vocabulary lacks: '#', '1', 'Ж', 'к', 'у'" in line
    assert tree_hashes(run_copy) == before


def test_a_changed_corpus_file_is_refused_unless_named(tmp_path, tiny_text):
    corpus = tmp_path / "text.txt"
    corpus.write_text(tiny_text, encoding="utf-8")
    assert main_outcome(*train_args(corpus, tmp_path, "run", "--steps", "8")).code == 0
    corpus.write_text(tiny_text + "The cat sat.\n", encoding="utf-8")
    line = main_outcome("train", "--resume", str(tmp_path / "run"), "--steps", "12").error_line
    assert "has changed since" in line and f"charlstm train {corpus}" in line
    named = main_outcome("train", str(corpus), "--resume", str(tmp_path / "run"), "--steps", "12")
    assert named.code == 0, named.stderr
    assert "warning:" in named.stderr and "not the text" in named.stderr


def test_a_missing_corpus_file_says_to_give_its_path(tmp_path, tiny_text):
    corpus = tmp_path / "gone.txt"
    corpus.write_text(tiny_text, encoding="utf-8")
    assert main_outcome(*train_args(corpus, tmp_path, "run", "--steps", "8")).code == 0
    corpus.unlink()
    assert "is not there any more; give its path" in main_outcome("train", "--resume", str(tmp_path / "run")).error_line


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (lambda run: run / "best", "holds no training state (only last/ does)"),
        (lambda run: run.parent / "nothing", "no run to resume at"),
        (lambda run: run / "metrics.jsonl", "holds no last/ checkpoint"),
    ],
)
def test_resume_needs_a_run_with_a_last_checkpoint(run_copy, target, message):
    assert message in main_outcome("train", "--resume", str(target(run_copy))).error_line


def test_resume_with_no_runs_under_out_says_where_it_looked(tmp_path):
    assert f"no run to resume under {tmp_path}/" in main_outcome("train", "--resume", "--out", str(tmp_path)).error_line


def test_damaged_training_state_is_refused(run_copy):
    state = load_training_state(run_copy / "last")
    del state["window"]
    torch.save(state, run_copy / "last" / "training_state.pt")
    assert "lacks window" in main_outcome("train", "--resume", str(run_copy), "--steps", "20").error_line
    state = {**load_training_state(run_copy / "last"), "window": 0, "hidden": [torch.zeros(1, 9, 24)] * 2}
    torch.save(state, run_copy / "last" / "training_state.pt")
    assert "does not fit this run (hidden state" in main_outcome("train", "--resume", str(run_copy), "--steps", "20").error_line
    config = json.loads((run_copy / "last" / "config.json").read_text())
    del config["train"]
    (run_copy / "last" / "config.json").write_text(json.dumps(config))
    assert "lacks valid training settings" in main_outcome("train", "--resume", str(run_copy), "--steps", "20").error_line
