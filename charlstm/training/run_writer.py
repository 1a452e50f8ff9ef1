"""Everything a run writes to its directory, from rank 0 alone, and what a failed write tells the user.

Every write goes through the sync object's ``on_main``: under torchrun rank 0
writes and every rank learns the outcome, so a full disk stops all ranks at the
same step with the same one-line message instead of leaving some waiting in a
collective. The message says what is still safe on disk, which is why the
writer remembers the step each checkpoint holds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..base.errors import CharlstmError, CheckpointError
from ..base.fsutil import FileLock, atomic_write_text
from ..base.version import __version__
from ..data.corpus import Corpus
from ..model.config import ModelConfig
from ..model.network import CharLSTM
from .checkpoint import (
    FORMAT_VERSION,
    append_metrics,
    config_json,
    prepare_run_dir,
    saved_steps,
    write_checkpoint,
)
from .config import TrainConfig
from .distributed import Sync
from .layout import CONFIG_FILE, SUMMARY_FILE
from .run_state import RunState


class RunWriter:
    def __init__(self, run_dir: Path, sync: Sync, corpus: Corpus, model_config: ModelConfig, config: TrainConfig, precision: str,
                 parent: dict[str, Any] | None = None):
        self.run_dir = run_dir
        self.sync = sync
        self.corpus = corpus
        self.model_config = model_config
        self.config = config
        self.precision = precision
        self.parent = parent  # a fine-tuning run's lineage (training.finetune), kept in every config.json
        self.saved_steps: dict[str, int] = {}  # tag -> step, kept on every rank so their messages agree
        self._lock: FileLock | None = None

    def prepare(self, new_run: bool) -> None:
        """Create (or check) and lock the run directory, and prove the config serialises; a refusal here
        stops every rank before any training, rather than at the first save after hours of it."""

        def prepare() -> dict[str, int]:
            self.release()
            try:
                config_json({"train": self.config.to_dict(), "corpus": self.corpus.describe(), "model": self.model_config.to_dict()})
            except (TypeError, ValueError) as error:
                raise CheckpointError(f"this run's settings cannot be saved in {CONFIG_FILE} ({error}); report it as a bug") from None
            self._lock = prepare_run_dir(self.run_dir, new_run=new_run)
            return saved_steps(self.run_dir)

        self.saved_steps = self.sync.on_main(prepare)

    def release(self) -> None:
        """Let another process train this run; only rank 0 ever holds the lock."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def checkpoint_config(self, model: CharLSTM, run: RunState) -> dict[str, Any]:
        """What a checkpoint's config.json records: enough to rebuild, describe and resume the run."""
        return {
            "format_version": FORMAT_VERSION,
            "charlstm_version": __version__,
            "model": self.model_config.to_dict(),
            "vocab": self.corpus.vocab.chars,
            "train": self.config.to_dict(),
            "corpus": self.corpus.describe(),
            "precision": self.precision,
            **({"parent": self.parent} if self.parent is not None else {}),
            "metrics": {
                "step": run.step,
                "epoch": run.epoch,
                "elapsed": run.elapsed,
                "chars_seen": run.chars_seen,
                "parameters": model.num_parameters(),
                "train_loss": run.train_loss_ema,
                "val_loss": run.last_val_loss,
                "best_val_loss": run.best_val_loss,
            },
        }

    def checkpoint(self, tag: str, model: CharLSTM, run: RunState, state: dict[str, Any] | None) -> Path:
        """Write checkpoint ``tag``; ``state`` (the training state, for ``last``) must be gathered on every rank."""

        def write() -> None:
            try:
                write_checkpoint(self.run_dir, tag, model, self.checkpoint_config(model, run), state)
            except OSError as error:
                raise self.failed(f"the {tag} checkpoint", run.step, error) from error

        self.sync.on_main(write)
        self.saved_steps[tag] = run.step
        return self.run_dir / tag

    def metrics(self, step: int, record: dict[str, Any]) -> None:
        def write() -> None:
            try:
                append_metrics(self.run_dir, record)
            except OSError as error:
                raise self.failed("metrics.jsonl", step, error) from error

        self.sync.on_main(write)

    def summary(self, result: dict[str, Any]) -> None:
        """summary.json: the session's result (steps, losses, the wall clock and where it went), so that
        scripts and benchmarks read what the summary table showed."""
        def write() -> None:
            try:
                atomic_write_text(self.run_dir / SUMMARY_FILE, json.dumps(result, indent=2, default=str) + "\n")
            except CharlstmError as error:
                raise CheckpointError(f"{error}; the checkpoints in {self.run_dir} are complete") from None

        self.sync.on_main(write)

    def failed(self, what: str, step: int, error: OSError) -> CheckpointError:
        """Why a write failed, and what is still safe on disk, in one line."""
        kept = ", ".join(f"{tag}/ holds step {saved}" for tag, saved in sorted(self.saved_steps.items()))
        safe = f"nothing was half-written: {kept}" if kept else "no checkpoint had been saved yet"
        then = f"resume with: charlstm train --resume {self.run_dir}" if "last" in self.saved_steps else "train again"
        return CheckpointError(
            f"could not write {what} at step {step} in {self.run_dir} ({error.strerror or error}); {safe}; "
            f"free some space or fix the directory, then {then}"
        )

    def diverged(self, step: int, what: str) -> CharlstmError:
        """A run that diverged at ``step``: what is kept on disk, and how to go on from it."""
        last = self.saved_steps.get("last")
        kept = f"the last good checkpoint (step {last}) is kept in {self.run_dir}" if last is not None else "no checkpoint had been saved yet"
        lower = f"--lr {self.config.lr / 2:g}"
        retry = f"charlstm train --resume {self.run_dir} {lower}" if last is not None else lower
        return CharlstmError(
            f"training diverged at step {step}: {what}; the weights were not updated and {kept}; "
            f"try a lower learning rate ({retry}), or --on-nan skip to skip such batches"
        )
