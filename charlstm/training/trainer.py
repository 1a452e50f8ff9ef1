"""Truncated backpropagation through time, with everything a long run needs.

The trainer reads B contiguous streams in order, carries the hidden state from
window to window (detached, so gradients stop at the window edge), and fits its
learning-rate schedule to whichever budget ends the run first: steps, epochs or
wall-clock time. It never prints; it tells a :class:`TrainReporter` what happens.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from ..base.errors import CharlstmError, CheckpointError, CorpusError
from ..base.runtime import autocast, resolve_device, resolve_precision
from ..base.version import __version__
from ..data.batches import StreamBatches
from ..data.corpus import Corpus
from ..model.config import ModelConfig
from ..model.network import CharLSTM, State, detach_state
from .checkpoint import (
    FORMAT_VERSION,
    append_metrics,
    prepare_run_dir,
    saved_steps,
    write_checkpoint,
)
from . import schedule
from .config import TrainConfig
from .distributed import DistributedContext
from .evaluation import evaluation_totals
from .reporting import (
    EvalStats,
    RunInfo,
    SilentReporter,
    StepStats,
    TrainReporter,
    TrainResult,
)

# With --on-nan skip, this many non-finite batches in a row means the run has diverged for good.
MAX_SKIPS_IN_A_ROW = 20
T = TypeVar("T")






























class Trainer:
    """Owns one run: model, optimiser, data cursor, and the run directory it writes.

    Pass ``resume_state`` (from a run's ``last`` checkpoint) to continue a run
    exactly where it stopped. Pass ``distributed`` (from ``torchrun``) to train one
    rank of a data-parallel run: the rank reads its share of the batch's streams,
    DDP averages the gradients, and only rank 0 reports and writes the run.
    """

    def __init__(
        self,
        corpus: Corpus,
        model_config: ModelConfig,
        config: TrainConfig,
        run_dir: Path,
        reporter: TrainReporter | None = None,
        resume_state: dict[str, Any] | None = None,
        model_state: dict[str, torch.Tensor] | None = None,
        distributed: DistributedContext | None = None,
    ):
        self.corpus = corpus
        self.model_config = model_config
        self.config = config
        self.run_dir = Path(run_dir)
        self.distributed = distributed
        self.is_main = distributed is None or distributed.is_main
        self.reporter = (reporter if self.is_main else None) or SilentReporter()
        self.device = resolve_device(config.device)
        if distributed is not None:
            own_rows = distributed.rows(config.batch_size)  # refuses an uneven split before joining the group
            self.device = distributed.bind(self.device)
        self.precision = resolve_precision(config.precision, self.device)
        self.train_ids, self.val_ids = corpus.split(config.val_frac)
        StreamBatches.check_trainable(len(self.train_ids), config.batch_size, config.seq_len)
        if config.val_frac > 0 and len(self.val_ids) < 2:
            raise CorpusError(
                f"the validation split has {len(self.val_ids)} characters; use a larger --val-frac, "
                "a longer text, or --val-frac 0"
            )
        self.batches = StreamBatches(self.train_ids, config.batch_size, config.seq_len)
        if distributed is not None:
            self.batches = self.batches.rows(own_rows)
        torch.manual_seed(config.seed)
        self.model = CharLSTM(model_config).to(self.device)
        if model_state is not None:
            self.model.load_state_dict(model_state)
        self.forward_model: torch.nn.Module = self.model  # DDP-wrapped while train() runs under torchrun
        if distributed is not None and not distributed.is_main:
            torch.manual_seed(config.seed + distributed.rank)  # ranks past 0 draw dropout masks of their own
        self.optimizer = torch.optim.AdamW(
            self._param_groups(), lr=config.lr, betas=(0.9, 0.99), weight_decay=config.weight_decay
        )
        self.step = 0
        self.window = 0
        self.epoch = 0
        self.elapsed = 0.0
        self.train_seconds = 0.0
        self.chars_seen = 0
        self.evals_done = 0
        self.skipped_batches = 0
        self._skips_in_a_row = 0
        self.saved_steps: dict[str, int] = {}
        self.best_val_loss: float | None = None
        self.last_val_loss: float | None = None
        self.train_loss_ema: float | None = None
        self.state: State = self.model.init_state(self.batches.batch_size, self.device)
        self._stop_requested = False
        self._stopping = False
        self._resumed_from = 0
        self._resumed = resume_state is not None
        self._session_start = (0, 0.0)
        if resume_state is not None:
            self._restore(resume_state)

    @contextmanager
    def _data_parallel(self) -> Iterator[None]:
        """Under torchrun, the training forward goes through DDP (so backward averages the gradients over
        the ranks) while train() runs, and the wrapper is let go however training ends. Left alive past
        the process group's destruction, DDP would free the group itself with the GIL held while gloo's
        worker threads wait for the GIL: a run stopped by Ctrl-C hung at exit that way."""
        if self.distributed is None:
            yield
            return
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self.forward_model = DistributedDataParallel(self.model, device_ids=device_ids)
        try:
            yield
        finally:
            self.forward_model = self.model

    def _param_groups(self) -> list[dict[str, Any]]:
        """Weight decay on matrices only: biases and embeddings are left alone."""
        decay = [p for n, p in self.model.named_parameters() if p.dim() >= 2 and not n.startswith("embedding")]
        rest = [p for n, p in self.model.named_parameters() if not (p.dim() >= 2 and not n.startswith("embedding"))]
        return [{"params": decay}, {"params": rest, "weight_decay": 0.0}]

    # -- schedule -----------------------------------------------------------------

    def progress(self) -> float:
        total_windows = None if self.config.epochs is None else self.config.epochs * len(self.batches)
        return schedule.progress(self.step, self.elapsed, self.config.steps, total_windows, self.config.time_budget)

    def learning_rate(self) -> float:
        return schedule.learning_rate(self.step, self.progress(), self.config)

    def _eval_due(self) -> bool:
        return schedule.evaluation_due(self.step, self.progress(), self.evals_done, self.config)

    # -- persistence --------------------------------------------------------------

    def checkpoint_config(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "charlstm_version": __version__,
            "model": self.model_config.to_dict(),
            "vocab": self.corpus.vocab.chars,
            "train": self.config.to_dict(),
            "corpus": self.corpus.describe(),
            "precision": self.precision,
            "metrics": {
                "step": self.step,
                "epoch": self.epoch,
                "elapsed": self.elapsed,
                "chars_seen": self.chars_seen,
                "parameters": self.model.num_parameters(),
                "train_loss": self.train_loss_ema,
                "val_loss": self.last_val_loss,
                "best_val_loss": self.best_val_loss,
            },
        }

    def training_state(self) -> dict[str, Any]:
        """What ``last`` saves besides the weights; under torchrun every rank must call it (it gathers
        the whole batch's hidden state and each rank's RNG), though only rank 0 writes it."""
        saved = {
            "step": self.step,
            "window": self.window,
            "epoch": self.epoch,
            "elapsed": self.elapsed,
            "train_seconds": self.train_seconds,
            "chars_seen": self.chars_seen,
            "evals_done": self.evals_done,
            "best_val_loss": self.best_val_loss,
            "last_val_loss": self.last_val_loss,
            "train_loss_ema": self.train_loss_ema,
            "optimizer": self.optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "hidden": [self._whole_batch(s) for s in self.state],
            "skipped_batches": self.skipped_batches,
        }
        if self.distributed is not None:
            saved["rank_rng"] = self.distributed.gather_objects(torch.get_rng_state())
        if self.device.type == "cuda":
            saved["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return saved

    def _whole_batch(self, rows: torch.Tensor) -> torch.Tensor:
        """A (layers, B, H) hidden state for the whole batch: saved so, it resumes on any number of ranks."""
        return rows.detach().cpu() if self.distributed is None else self.distributed.gather_rows(rows, dim=1)

    def _own_rows(self, whole: torch.Tensor) -> torch.Tensor:
        return whole if self.distributed is None else whole[:, self.distributed.rows(self.config.batch_size)]

    def _own_rng(self, saved: dict[str, Any]) -> torch.Tensor:
        """This rank's saved RNG; on a different number of ranks, rank 0 takes the saved one and the
        others a fresh stream of their own (only dropout draws from it)."""
        if self.distributed is None or self.distributed.is_main:
            return saved["rng"]
        by_rank = saved.get("rank_rng") or []
        if len(by_rank) == self.distributed.world_size:
            return by_rank[self.distributed.rank]
        return torch.Generator().manual_seed(hash((self.config.seed, self.distributed.rank, self.step))).get_state()

    _COUNTERS = ("step", "window", "epoch", "elapsed", "train_seconds", "chars_seen", "evals_done")
    _LOSSES = ("best_val_loss", "last_val_loss", "train_loss_ema")

    def _restore(self, saved: dict[str, Any]) -> None:
        missing = [name for name in (*self._COUNTERS, *self._LOSSES, "optimizer", "rng", "hidden") if name not in saved]
        if missing:
            raise CheckpointError(f"the saved training state lacks {', '.join(missing)}; it is damaged or not charlstm's")
        try:
            for name in self._COUNTERS:
                setattr(self, name, type(getattr(self, name))(saved[name]))
            for name in self._LOSSES:
                setattr(self, name, None if saved[name] is None else float(saved[name]))
            self.skipped_batches = int(saved.get("skipped_batches", 0))
            expected = self.state
            hidden = tuple(self._own_rows(torch.as_tensor(s)).to(self.device) for s in saved["hidden"])
            if [h.shape for h in hidden] != [e.shape for e in expected]:
                raise ValueError(f"hidden state of shape {[tuple(h.shape) for h in hidden]} for a model with {[tuple(e.shape) for e in expected]}")
            if not 0 <= self.window < len(self.batches) or self.step < 0:
                raise ValueError(f"data cursor {self.window} outside the {len(self.batches)} windows of the text")
            self.optimizer.load_state_dict(saved["optimizer"])
            torch.set_rng_state(self._own_rng(saved))
            if "cuda_rng" in saved and self.device.type == "cuda":
                torch.cuda.set_rng_state(saved["cuda_rng"], self.device)
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise CheckpointError(f"the saved training state does not fit this run ({first_line[:200]})") from None
        self.state = hidden
        self._resumed_from = self.step

    def _write_failed(self, what: str, error: OSError) -> CheckpointError:
        """Why a write failed, and what is still safe on disk, in one line."""
        kept = ", ".join(f"{tag}/ holds step {step}" for tag, step in sorted(self.saved_steps.items()))
        safe = f"nothing was half-written: {kept}" if kept else "no checkpoint had been saved yet"
        then = f"resume with: charlstm train --resume {self.run_dir}" if "last" in self.saved_steps else "train again"
        return CheckpointError(
            f"could not write {what} at step {self.step} in {self.run_dir} ({error.strerror or error}); {safe}; "
            f"free some space or fix the directory, then {then}"
        )

    def _on_main(self, action: Callable[[], T]) -> T:
        """Run a write to the run directory on rank 0 alone; under torchrun every rank learns its
        result or raises its error, so a failed write stops all ranks at the same point."""
        return action() if self.distributed is None else self.distributed.on_main(action)

    def save(self, tag: str = "last") -> Path:
        state = self.training_state() if tag == "last" else None

        def write() -> None:
            try:
                write_checkpoint(self.run_dir, tag, self.model, self.checkpoint_config(), state)
            except OSError as error:
                raise self._write_failed(f"the {tag} checkpoint", error) from error

        self._on_main(write)
        self.saved_steps[tag] = self.step  # on every rank, so their messages agree on what is safe on disk
        return self.run_dir / tag

    # -- the loop -----------------------------------------------------------------

    def request_stop(self) -> None:
        """Finish the current step, save ``last`` and return (for Ctrl-C and SIGTERM)."""
        self._stop_requested = True

    def _session_chars_per_sec(self) -> float:
        """Training throughput since this process started (or resumed) the run."""
        chars = self.chars_seen - self._session_start[0]
        seconds = self.train_seconds - self._session_start[1]
        return chars / seconds if seconds > 0 else 0.0

    def _train_step(self) -> float | None:
        """One window: forward, backward, update; None when a non-finite batch was skipped.

        The loss and the gradient norm are checked before the optimiser step, so a
        diverging batch never reaches the weights.
        """
        if self.window == 0:
            self.state = self.model.init_state(self.batches.batch_size, self.device)
        x, y = self.batches.window(self.window, self.device)
        lr = self.learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with autocast(self.device, self.precision):
            logits, state = self.forward_model(x, self.state)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        self.optimizer.zero_grad(set_to_none=True)
        loss_value = loss.item()
        # Under torchrun every rank must take the same branch, or the gradient all-reduce waits forever: the
        # loss is checked summed over the ranks, and the gradients after DDP made them identical on all.
        checked = loss_value if self.distributed is None else float(self.distributed.gather_values(loss_value).sum())
        finite = math.isfinite(checked)
        if finite:
            loss.backward()
            max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
            finite = math.isfinite(float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)))
        if finite:
            self.optimizer.step()
            self.state = detach_state(state)
            self._skips_in_a_row = 0
        else:
            self._skip_or_stop(checked)
            self.state = self.model.init_state(self.batches.batch_size, self.device)
        self.step += 1
        self.chars_seen += self.config.batch_size * y.shape[1]  # the whole batch's, on every rank
        self.window += 1
        if self.window == len(self.batches):
            self.window = 0
            self.epoch += 1
        return loss_value if finite else None

    def _skip_or_stop(self, loss: float) -> None:
        """Stop at a non-finite batch, weights untouched; or, with ``on_nan="skip"``, count it and go on."""
        step = self.step + 1
        self.skipped_batches += 1
        self._skips_in_a_row += 1
        what = f"the loss is {loss}" if not math.isfinite(loss) else "the gradients are not finite"
        if self.config.on_nan == "skip" and self._skips_in_a_row < MAX_SKIPS_IN_A_ROW:
            return
        if self.config.on_nan == "skip":
            what = f"{self._skips_in_a_row} batches in a row were not finite"
        last = self.saved_steps.get("last")
        kept = f"the last good checkpoint (step {last}) is kept in {self.run_dir}" if last is not None else "no checkpoint had been saved yet"
        retry = f"charlstm train --resume {self.run_dir} --lr {self.config.lr / 2:g}" if last is not None else f"--lr {self.config.lr / 2:g}"
        raise CharlstmError(
            f"training diverged at step {step}: {what}; the weights were not updated and {kept}; "
            f"try a lower learning rate ({retry}), or --on-nan skip to skip such batches"
        )

    def _log_metrics(self, **extra: float) -> None:
        """One line of metrics.jsonl: every evaluation (with ``val_loss``) and every ``log_every`` steps
        between them (without), so the training curve has more than a handful of points."""
        record = {
            "step": self.step,
            "time": round(self.elapsed, 3),
            "lr": self.learning_rate(),
            "train_loss": self.train_loss_ema,
            "chars_per_sec": self._session_chars_per_sec(),
        }

        def write() -> None:
            try:
                append_metrics(self.run_dir, {**record, **extra})
            except OSError as error:
                raise self._write_failed("metrics.jsonl", error) from error

        self._on_main(write)

    def _evaluate_and_save(self) -> None:
        from ..generation.generator import (
            Generator,  # here, not at the top: the sampler imports this module
        )

        val_loss = self._validation_loss()
        self.evals_done += 1
        self.last_val_loss = val_loss
        is_best = self.best_val_loss is None or val_loss < self.best_val_loss
        if is_best:
            self.best_val_loss = val_loss
        preview = ""
        if self.config.preview_chars > 0 and self.is_main:
            generator = Generator(self.model, self.corpus.vocab)
            preview = generator.generate("", self.config.preview_chars, temperature=0.8, seed=self.step)[0]
            self.model.train()
        self._log_metrics(val_loss=val_loss)
        if is_best:
            self.save("best")
        self.save("last")
        self.reporter.evaluated(
            EvalStats(self.step, self.elapsed, val_loss, self.best_val_loss, is_best, preview)
        )

    def _validation_loss(self) -> float:
        """Over the whole validation split; under torchrun each rank reads a share of its streams and
        the totals are added, so the figure is the one a single process gets."""
        part = (0, 1) if self.distributed is None else (self.distributed.rank, self.distributed.world_size)
        total, count = evaluation_totals(
            self.model, self.val_ids, self.config.batch_size, self.config.seq_len, self.device, self.precision, part
        )
        if self.distributed is not None:
            total, count = self.distributed.sum(total, count)
        return total / count

    def _agree(self, loss: float = 0.0) -> float:
        """Give every rank the same clock, stop decision and loss (the mean over ranks), so all of them
        evaluate, save and stop at the same step and none waits forever in a collective; for one
        process it only takes in a stop request."""
        if self.distributed is None:
            self._stopping = self._stop_requested
            return loss
        table = self.distributed.gather_values(self.elapsed, float(self._stop_requested), loss)
        self.elapsed = float(table[:, 0].max())
        self._stopping = bool(table[:, 1].max() > 0)
        return float(table[:, 2].mean())

    def train(self) -> TrainResult:
        with self._data_parallel():
            return self._train()

    def _train(self) -> TrainResult:
        def prepare() -> dict[str, int]:
            prepare_run_dir(self.run_dir, new_run=not self._resumed)
            return saved_steps(self.run_dir)

        self.saved_steps = self._on_main(prepare)  # a refusal here stops every rank before any training
        self.model.train()
        self._session_start = (self.chars_seen, self.train_seconds)
        self.reporter.start(
            RunInfo(
                run_dir=self.run_dir,
                corpus=self.corpus.source,
                corpus_chars=len(self.corpus),
                train_chars=len(self.train_ids),
                val_chars=len(self.val_ids),
                vocab_size=len(self.corpus.vocab),
                parameters=self.model.num_parameters(),
                model=self.model_config,
                train=self.config,
                device=str(self.device),
                precision=self.precision,
                resumed_from_step=self._resumed_from,
            )
        )
        clock = time.perf_counter() - self.elapsed
        self._agree()
        while self.progress() < 1.0 and not self._stopping:
            step_start = time.perf_counter()
            loss = self._train_step()
            now = time.perf_counter()
            self.train_seconds += now - step_start
            self.elapsed = now - clock
            agreed = self._agree(loss if loss is not None else 0.0)
            if loss is not None:
                self.train_loss_ema = agreed if self.train_loss_ema is None else 0.95 * self.train_loss_ema + 0.05 * agreed
            progress = self.progress()
            self.reporter.step(
                StepStats(
                    step=self.step,
                    epoch=self.epoch,
                    progress=progress,
                    lr=self.learning_rate(),
                    train_loss=self.train_loss_ema if self.train_loss_ema is not None else float("nan"),
                    chars_per_sec=self._session_chars_per_sec(),
                    elapsed=self.elapsed,
                    eta=(self.elapsed / progress - self.elapsed) if progress > 0 else None,
                    val_loss=self.last_val_loss,
                )
            )
            if self._eval_due() or (progress >= 1.0 and self.config.val_frac > 0):
                self._evaluate_and_save()
                self.elapsed = time.perf_counter() - clock
                self._agree()
            elif self.config.log_every > 0 and self.step % self.config.log_every == 0:
                self._log_metrics()
        if self._stopping or self.config.val_frac <= 0:
            self.save("last")
        result = TrainResult(
            run_dir=self.run_dir,
            steps=self.step,
            epochs=self.step / len(self.batches),
            elapsed=self.elapsed,
            chars_per_sec=self._session_chars_per_sec(),
            parameters=self.model.num_parameters(),
            train_loss=self.train_loss_ema if self.train_loss_ema is not None else float("nan"),
            best_val_loss=self.best_val_loss,
            last_val_loss=self.last_val_loss,
            stopped_early=self._stopping,
            skipped_batches=self.skipped_batches,
        )
        self.reporter.finish(result)
        return result
