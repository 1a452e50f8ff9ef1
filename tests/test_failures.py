"""Failures during a run: a full disk, an unwritable directory, a diverging loss.

Each ends in one line that says what happened and what is safe on disk, and
never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path

import pytest
import torch
from conftest import TINY_CLI, TINY_MODEL, main_outcome, tiny_train_config

from charlstm import Corpus, ModelConfig, Trainer, load
from charlstm.base.errors import CharlstmError
from charlstm.model.network import CharLSTM
from charlstm.training import checkpoint
from charlstm.training.checkpoint import load_training_state, saved_steps


def train_args(corpus: Path, out: Path, *extra: str) -> tuple[str, ...]:
    return ("train", str(corpus), "--out", str(out), "--name", "run", *TINY_CLI, *extra)


def assert_no_partial_checkpoints(run: Path) -> None:
    assert sorted(p.name for p in run.iterdir()) == ["best", "last", "metrics.jsonl"]


def test_disk_full_mid_run_says_what_was_saved_last(tmp_path, tiny_corpus_file, monkeypatch):
    real_save_file = checkpoint.save_file
    writes_of_last = []

    def disk_fills_on_the_second_last(tensors, filename, metadata=None):
        if ".last.tmp-" in filename:
            writes_of_last.append(filename)
            if len(writes_of_last) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", disk_fills_on_the_second_last)
    run = tmp_path / "run"
    line = main_outcome(*train_args(tiny_corpus_file, tmp_path, "--steps", "40", "--eval-every", "5")).final_error_line
    best_step = saved_steps(run)["best"]
    assert line == (
        f"error: could not write the last checkpoint at step 10 in {run} (No space left on device); "
        f"nothing was half-written: best/ holds step {best_step}, last/ holds step 5; "
        f"free some space or fix the directory, then resume with: charlstm train --resume {run}"
    )
    assert load_training_state(run / "last")["step"] == 5
    assert_no_partial_checkpoints(run)


def test_disk_full_when_appending_metrics_is_reported_too(tmp_path, tiny_corpus_file, monkeypatch):
    def no_space(run_dir, record):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("charlstm.training.run_writer.append_metrics", no_space)
    line = main_outcome(*train_args(tiny_corpus_file, tmp_path, "--steps", "10", "--eval-every", "5")).final_error_line
    assert "could not write metrics.jsonl at step 5" in line and "no checkpoint had been saved yet; " in line


def test_an_output_directory_that_cannot_be_written_is_refused_before_training(tmp_path, tiny_corpus_file, monkeypatch):
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a directory")
    line = main_outcome("train", str(tiny_corpus_file), "--out", str(a_file), "--name", "run", *TINY_CLI, "--steps", "5").error_line
    assert line == f"error: cannot write to {a_file / 'run'} (Not a directory); choose a writable --out"

    def read_only(self, data):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(Path, "write_bytes", read_only)
    line = main_outcome(*train_args(tiny_corpus_file, tmp_path / "ro", "--steps", "5")).error_line
    assert line == f"error: cannot write to {tmp_path / 'ro' / 'run'} (Read-only file system); choose a writable --out"


def test_a_new_run_never_overwrites_an_existing_one(tmp_path, tiny_corpus_file):
    assert main_outcome(*train_args(tiny_corpus_file, tmp_path, "--steps", "5")).code == 0
    before = (tmp_path / "run" / "last" / "model.safetensors").read_bytes()
    line = main_outcome(*train_args(tiny_corpus_file, tmp_path, "--steps", "5")).error_line
    assert f"{tmp_path / 'run'} already holds a trained run; continue it with --resume" in line
    assert (tmp_path / "run" / "last" / "model.safetensors").read_bytes() == before


def poison_head(trainer: Trainer, at_steps: set[int]) -> None:
    """Make the training forward pass of the given steps (counted from 1) return NaN logits."""

    def hook(module, inputs, output):
        if module.training and trainer.step + 1 in at_steps:
            return output * float("nan")
        return None

    trainer.model.head.register_forward_hook(hook)


def make_trainer(run_dir: Path, text: str, **config) -> Trainer:
    corpus = Corpus.from_text(text)
    return Trainer(corpus, ModelConfig(vocab_size=len(corpus.vocab), **TINY_MODEL),
                   tiny_train_config(eval_every=5, **config), run_dir)


def test_nan_loss_stops_before_the_weights_change_and_keeps_the_last_good_checkpoint(tmp_path, tiny_text):
    trainer = make_trainer(tmp_path / "run", tiny_text, steps=30)
    poison_head(trainer, {8})
    snapshots = {}
    trainer.reporter.step = lambda stats: snapshots.update(
        {stats.step: {k: v.clone() for k, v in trainer.model.state_dict().items()}})
    with pytest.raises(CharlstmError) as raised:
        trainer.train()
    assert str(raised.value) == (
        f"training diverged at step 8: the loss is nan; the weights were not updated and the last good checkpoint "
        f"(step 5) is kept in {tmp_path / 'run'}; try a lower learning rate "
        f"(charlstm train --resume {tmp_path / 'run'} --lr 0.005), or --on-nan skip to skip such batches"
    )
    after = trainer.model.state_dict()
    assert all(torch.equal(after[k], snapshots[7][k]) for k in after)
    assert load_training_state(tmp_path / "run" / "last")["step"] == 5


def test_on_nan_skip_skips_the_batch_and_goes_on(tmp_path, tiny_text):
    trainer = make_trainer(tmp_path / "run", tiny_text, steps=20, on_nan="skip")
    poison_head(trainer, {4, 9})
    result = trainer.train()
    assert result.steps == 20 and result.skipped_batches == 2
    assert math.isfinite(result.train_loss)
    assert all(torch.isfinite(p).all() for p in load(tmp_path / "run", prefer="last").model.parameters())


def test_on_nan_skip_still_stops_a_run_that_diverged_for_good(tmp_path, tiny_text):
    trainer = make_trainer(tmp_path / "run", tiny_text, steps=60, on_nan="skip")
    poison_head(trainer, set(range(3, 100)))
    with pytest.raises(CharlstmError, match="training diverged at step 22: 20 batches in a row were not finite"):
        trainer.train()


def test_nan_through_the_cli_is_one_line_naming_the_step(tmp_path, tiny_corpus_file, monkeypatch):
    real_forward = CharLSTM.forward
    training_calls = []

    def forward(self, ids, state=None):
        logits, state = real_forward(self, ids, state)
        if self.training:
            training_calls.append(1)
            if len(training_calls) == 3:
                logits = logits * float("inf") - logits * float("inf")
        return logits, state

    monkeypatch.setattr(CharLSTM, "forward", forward)
    run = tmp_path / "run"
    line = main_outcome(*train_args(tiny_corpus_file, tmp_path, "--steps", "12", "--lr", "0.5", "--eval-every", "2")).final_error_line
    assert line == (f"error: training diverged at step 3: the loss is nan; the weights were not updated and the last "
                    f"good checkpoint (step 2) is kept in {run}; try a lower learning rate (charlstm train --resume "
                    f"{run} --lr 0.25), or --on-nan skip to skip such batches")
    assert load_training_state(run / "last")["step"] == 2
