"""Truncated backpropagation through time, with everything a long run needs.

The trainer reads B contiguous streams in order, carries the hidden state from
window to window (detached, so gradients stop at the window edge), and fits its
learning-rate schedule to whichever budget ends the run first: steps, epochs or
wall-clock time. It never prints; it tells a :class:`TrainReporter` what happens.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..base.errors import CorpusError
from ..base.runtime import ThreadGovernor, autocast, resolve_device, resolve_precision
from ..data.batches import StreamBatches
from ..data.corpus import Corpus, Vocab
from ..model.config import ModelConfig
from ..model.network import CharLSTM, State, detach_state
from . import schedule
from .config import TrainConfig
from .device_steps import defers_host_reads, fuse_optimizer, uses_fused_optimizer
from .distributed import DistributedContext, SingleProcess, Sync
from .evaluation import EvalTotals, evaluation_windows, read_validation
from .reporting import (
    EvalStats,
    RunInfo,
    SilentReporter,
    StepStats,
    TrainReporter,
    TrainResult,
)
from .run_state import RunState, fitting, require
from .run_writer import RunWriter

# With --on-nan skip, this many non-finite batches in a row means the run has diverged for good.
MAX_SKIPS_IN_A_ROW = 20
# With deferred reads (a CUDA GPU), the host waits for the device's losses once per this many steps.
LOSS_READS_EVERY = 20

# Text shown at each evaluation: (model, vocab, step, length) -> a sample. A hook, because sampling
# lives in the generation layer above this one.
Preview = Callable[[CharLSTM, Vocab, int, int], str]


class Trainer:
    """Owns one run: model, optimiser, data cursor, and the run directory it writes.

    Pass ``resume_state`` (from a run's ``last`` checkpoint) to continue a run
    exactly where it stopped; ``model_state`` and ``parent`` (from training.finetune) to start
    from another model's weights and record where they came from. Pass ``distributed`` (from ``torchrun``) to train one
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
        preview: Preview | None = None,
        threads: ThreadGovernor | None = None,
        deferred_reads: bool | None = None,
        parent: dict[str, Any] | None = None,
    ):
        self.corpus = corpus
        self.model_config = model_config
        self.config = config
        self.run_dir = Path(run_dir)
        self.distributed: Sync = distributed or SingleProcess()
        self.is_main = self.distributed.is_main
        self.reporter = (reporter if self.is_main else None) or SilentReporter()
        self.preview = preview
        self.threads = threads  # fits torch's thread count to a busy machine between steps
        self._queued: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (step, loss, updated) not yet read
        self._updating: torch.Tensor | None = None  # on_nan "stop" with deferred reads: false from a bad batch on
        own_rows = self.distributed.rows(config.batch_size)  # refuses an uneven split before joining the group
        self.device = self.distributed.bind(resolve_device(config.device))
        self.precision = resolve_precision(config.precision, self.device)
        self.writer = RunWriter(self.run_dir, self.distributed, corpus, model_config, config, self.precision, parent)
        self.train_ids, self.val_ids = corpus.split(config.val_frac)
        StreamBatches.check_trainable(len(self.train_ids), config.batch_size, config.seq_len)
        if config.val_frac > 0 and len(self.val_ids) < 2:
            raise CorpusError(
                f"the validation split has {len(self.val_ids)} characters; use a larger --val-frac, "
                "a longer text, or --val-frac 0"
            )
        self.batches = StreamBatches(self.train_ids, config.batch_size, config.seq_len).rows(own_rows)
        torch.manual_seed(config.seed)
        self.model = CharLSTM(model_config).to(self.device)
        if model_state is not None:
            self.model.load_state_dict(model_state)
        self.forward_model: torch.nn.Module = self.model  # DDP-wrapped while train() runs under torchrun
        if not self.is_main:
            torch.manual_seed(config.seed + self.distributed.rank)  # ranks past 0 draw dropout masks of their own
        # Host reads deferred (a CUDA GPU): the fused AdamW skips a non-finite step on the device itself.
        self.deferred_reads = defers_host_reads(self.device.type, self.distributed.world_size) if deferred_reads is None else deferred_reads
        self.fused_optimizer = uses_fused_optimizer(self.device.type, self.deferred_reads)
        self.optimizer = torch.optim.AdamW(
            self.model.param_groups(config.weight_decay), lr=config.lr, betas=(0.9, 0.99), weight_decay=config.weight_decay,
            **({"fused": True} if self.fused_optimizer else {}),
        )
        self.run = RunState()
        self.planner = schedule.BudgetPlanner(
            config.time_budget,
            evaluation_windows(len(self.val_ids), config.batch_size, config.seq_len) if config.val_frac > 0 else 0,
            config.evals_per_run,
            config.eval_every,
        )
        self.hidden: State = self.model.init_state(self.batches.batch_size, self.device)
        self._skips_in_a_row = 0
        self._stop_requested = self._stopping = False
        self._last_read = (0, 0)  # validation characters the latest evaluation read, of the whole split's
        self._resumed = resume_state is not None
        if resume_state is not None:
            self._restore(resume_state)
        if self.run.next_eval_progress == 0.0:
            self.run.next_eval_progress = 1.0 / config.evals_per_run
        self._resumed_from = self.run.step
        self._session_start = (0, 0.0)

    @property
    def step(self) -> int:
        return self.run.step

    def _total_windows(self) -> float | None:
        return None if self.config.epochs is None else self.config.epochs * len(self.batches)

    def progress(self) -> float:
        """Through the budget, by its tightest limit; a timed run's clock runs to its training deadline,
        which leaves room for the final evaluation and checkpoints."""
        return schedule.progress(self.run.step, self.run.elapsed, self.config.steps, self._total_windows(),
                                 self.planner.training_deadline())

    def _steps_left(self) -> float | None:
        limits = [limit for limit in (self.config.steps, self._total_windows()) if limit is not None]
        return min(limits) - self.run.step if limits else None

    def learning_rate(self) -> float:
        return schedule.learning_rate(self.run.step, self.progress(), self.config)

    # -- persistence --------------------------------------------------------------

    def training_state(self) -> dict[str, Any]:
        """What ``last`` saves besides the weights. Every rank must call it: it gathers the whole batch's
        hidden state (so a run resumes on any number of ranks) and each rank's RNG."""
        saved = {
            **self.run.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "rank_rng": self.distributed.gather_objects(torch.get_rng_state()),
            "hidden": [self.distributed.gather_rows(rows, dim=1) for rows in self.hidden],
        }
        if self.device.type == "cuda":
            saved["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return saved

    def _restore(self, saved: dict[str, Any]) -> None:
        require(saved, also=("optimizer", "rng", "hidden"))
        with fitting():
            run = RunState.from_dict(saved, len(self.batches))
            own_rows = self.distributed.rows(self.config.batch_size)
            hidden = tuple(torch.as_tensor(whole)[:, own_rows].to(self.device) for whole in saved["hidden"])
            if [h.shape for h in hidden] != [e.shape for e in self.hidden]:
                raise ValueError(f"hidden state of shape {[tuple(h.shape) for h in hidden]} for a model with {[tuple(e.shape) for e in self.hidden]}")
            self.optimizer.load_state_dict(saved["optimizer"])
            torch.set_rng_state(self.distributed.own_rng(saved, self.config.seed, run.step))
            if "cuda_rng" in saved and self.device.type == "cuda":
                torch.cuda.set_rng_state(saved["cuda_rng"], self.device)
        self.run, self.hidden = run, hidden
        if self.fused_optimizer:
            fuse_optimizer(self.optimizer)  # a run saved by an unfused optimiser resumes on the fused kernel

    def save(self, tag: str = "last") -> Path:
        self._read_losses()
        state = self.training_state() if tag == "last" else None
        return self.writer.checkpoint(tag, self.model, self.run, state)

    # -- the loop -----------------------------------------------------------------

    def request_stop(self) -> None:
        """Finish the current step, save ``last`` and return (for Ctrl-C and SIGTERM)."""
        self._stop_requested = True

    def _session_chars_per_sec(self) -> float:
        """Training throughput since this process started (or resumed) the run."""
        chars = self.run.chars_seen - self._session_start[0]
        seconds = self.run.train_seconds - self._session_start[1]
        return chars / seconds if seconds > 0 else 0.0

    def _train_step(self) -> float | None:
        """One window: forward, backward, update; None when a non-finite batch was skipped.

        The loss and the gradient norm are checked before the optimiser step, so a
        diverging batch never reaches the weights.
        """
        run = self.run
        if run.window == 0:
            self.hidden = self.model.init_state(self.batches.batch_size, self.device)
        x, y = self.batches.window(run.window, self.device)
        lr = self.learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with autocast(self.device, self.precision):
            logits, hidden = self.forward_model(x, self.hidden)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        self.optimizer.zero_grad(set_to_none=True)
        if self.deferred_reads:
            self._step_on_device(loss, hidden)
            self._count_window(y.shape[1])
            return None  # read later, by _read_losses
        loss_value = loss.item()
        # Under torchrun every rank must take the same branch, or the gradient all-reduce waits forever: the
        # loss is checked summed over the ranks, and the gradients after DDP made them identical on all.
        checked = float(self.distributed.gather_values(loss_value).sum())
        finite = math.isfinite(checked)
        if finite:
            loss.backward()
            max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
            finite = math.isfinite(float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)))
        if finite:
            self.optimizer.step()
            self.hidden = detach_state(hidden)
            self._skips_in_a_row = 0
        else:
            self._skip_or_stop(checked)
            self.hidden = self.model.init_state(self.batches.batch_size, self.device)
        self._count_window(y.shape[1])
        return loss_value if finite else None

    def _count_window(self, window_len: int) -> None:
        run = self.run
        run.step += 1
        run.chars_seen += self.config.batch_size * window_len  # the whole batch's, on every rank
        run.window += 1
        if run.window == len(self.batches):
            run.window = 0
            run.epoch += 1

    def _step_on_device(self, loss: torch.Tensor, hidden: State) -> None:
        """Backward, clip and update without waiting for the GPU: a ``.item()`` per step would stall the
        host until every queued kernel ran, leaving the card idle while Python sets up the next step.

        The finiteness check is made on the device and the fused AdamW skips its update where it failed
        (``found_inf``, as under a GradScaler), so a bad batch still never reaches the weights; the loss
        and the verdict are read every :data:`LOSS_READS_EVERY` steps by :meth:`_read_losses`."""
        loss.backward()
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        updated = torch.isfinite(loss.detach()) & torch.isfinite(norm)
        if self.config.on_nan == "stop":  # weights stay as they were before the first bad batch
            self._updating = updated = updated if self._updating is None else self._updating & updated
        self.optimizer.found_inf = (~updated).float()  # type: ignore[attr-defined]
        self.optimizer.step()
        self.hidden = tuple(torch.where(updated, h.detach(), torch.zeros_like(h)) for h in hidden)
        self._queued.append((self.run.step + 1, loss.detach(), updated))

    def _read_losses(self) -> None:
        """Fold the queued steps' losses into the running figures, in one wait for the device; a queued
        step that was not finite is skipped or stops the run, as the step-by-step check would have."""
        if not self._queued:
            return
        queued, self._queued = self._queued, []
        table = torch.stack([torch.stack((loss.float(), updated.float())) for _, loss, updated in queued]).tolist()
        for (step, _, _), (loss, updated) in zip(queued, table):
            if updated:
                self._skips_in_a_row = 0
                self._fold_loss(loss)
            else:
                self._skip_or_stop(loss, step)

    def _fold_loss(self, loss: float) -> None:
        run = self.run
        run.train_loss_ema = loss if run.train_loss_ema is None else 0.95 * run.train_loss_ema + 0.05 * loss

    def _skip_or_stop(self, loss: float, step: int | None = None) -> None:
        """Stop at a non-finite batch, weights untouched; or, with ``on_nan="skip"``, count it and go on."""
        self.run.skipped_batches += 1
        self._skips_in_a_row += 1
        what = f"the loss is {loss}" if not math.isfinite(loss) else "the gradients are not finite"
        if self.config.on_nan == "skip" and self._skips_in_a_row < MAX_SKIPS_IN_A_ROW:
            return
        if self.config.on_nan == "skip":
            what = f"{self._skips_in_a_row} batches in a row were not finite"
        raise self.writer.diverged(step if step is not None else self.run.step + 1, what)

    def _log_metrics(self, **extra: float) -> None:
        """One line of metrics.jsonl: every evaluation (with ``val_loss``) and every ``log_every`` steps
        between them (without), so the training curve has more than a handful of points."""
        self._read_losses()
        run = self.run
        record = {"step": run.step, "time": round(run.elapsed, 3), "lr": self.learning_rate(),
                  "train_loss": run.train_loss_ema, "chars_per_sec": self._session_chars_per_sec()}
        self.writer.metrics(run.step, {**record, **extra})

    def _evaluate_and_save(self, final: bool) -> None:
        """Evaluate (the run's fixed part of the validation split, or for the final one as much of it as
        the budget allows), preview, log, save; and tell the planner what each part cost."""
        run = self.run
        if run.eval_windows == 0:
            run.eval_windows = self.planner.intermediate_windows(self.planner.run_seconds(self._steps_left(), run.elapsed))
        # The final evaluation reads at least what every other one read, so that the two compare.
        windows = max(run.eval_windows, self.planner.final_windows(run.elapsed)) if final else run.eval_windows
        started = time.perf_counter()
        totals = self._validation(windows, prefix=run.eval_windows)
        evaluated = time.perf_counter()
        run.evals_done += 1
        run.last_eval_step = run.step
        run.last_val_loss = totals.loss
        # Evaluations are compared on the windows they all read; the figure kept is the one just read.
        is_best = run.best_prefix_loss is None or totals.prefix_loss < run.best_prefix_loss
        if is_best:
            run.best_val_loss, run.best_prefix_loss = totals.loss, totals.prefix_loss
        preview = ""
        if self.preview is not None and self.config.preview_chars > 0 and self.is_main:
            preview = self.preview(self.model, self.corpus.vocab, run.step, self.config.preview_chars)
        previewed = time.perf_counter()
        self._log_metrics(val_loss=totals.loss, val_chars=totals.count)
        if is_best:
            self.save("best")
        self.save("last")
        saved = time.perf_counter()
        costs = self.distributed.gather_values(evaluated - started, saved - previewed).max(dim=0).values
        run.eval_seconds += float(costs[0])
        run.preview_seconds += previewed - evaluated
        run.save_seconds += float(costs[1])
        self.planner.observe_evaluation(windows, float(costs[0]))
        self.planner.observe_save(float(costs[1]) / (2 if is_best else 1))
        self._last_read = (totals.count, self._val_chars(totals))
        self.reporter.evaluated(EvalStats(run.step, run.elapsed, totals.loss, run.best_val_loss, is_best, preview,
                                          *self._last_read, final))

    def _val_chars(self, totals: EvalTotals) -> int:
        """Characters in a whole pass over the validation split, as evaluation reads it."""
        return totals.count * totals.of_windows // max(1, totals.windows)

    def _validation(self, windows: int, prefix: int) -> EvalTotals:
        """Under torchrun each rank reads a share of the streams and the totals are added, so the figure
        is the one a single process gets."""
        part = (self.distributed.rank, self.distributed.world_size)
        totals = read_validation(self.model, self.val_ids, self.config.batch_size, self.config.seq_len, self.device,
                                 self.precision, part, windows, prefix)
        summed = self.distributed.sum(totals.total, totals.count, totals.prefix_total, totals.prefix_count)
        totals.total, totals.prefix_total = summed[0], summed[2]
        totals.count, totals.prefix_count = int(summed[1]), int(summed[3])
        return totals

    def _agree(self, loss: float = 0.0) -> float:
        """Give every rank the same clock, stop decision and loss (the mean over ranks), so all of them
        evaluate, save and stop at the same step and none waits forever in a collective."""
        table = self.distributed.gather_values(self.run.elapsed, float(self._stop_requested), loss)
        self.run.elapsed = float(table[:, 0].max())
        self._stopping = bool(table[:, 1].max() > 0)
        return float(table[:, 2].mean())

    def train(self) -> TrainResult:
        """Train to the end of the budget or a stop request. Under torchrun the forward goes through DDP
        only meanwhile, and the wrapper is dropped however training ends (see DistributedContext.wrap)."""
        self.forward_model = self.distributed.wrap(self.model)
        try:
            return self._train()
        finally:
            self.forward_model = self.model
            self.writer.release()

    def _train(self) -> TrainResult:
        run, config = self.run, self.config
        self.writer.prepare(new_run=not self._resumed)  # a refusal here stops every rank before any training
        self.model.train()
        self._session_start = (run.chars_seen, run.train_seconds)
        self.reporter.start(RunInfo(
            run_dir=self.run_dir, corpus=self.corpus.source, corpus_chars=len(self.corpus),
            train_chars=len(self.train_ids), val_chars=len(self.val_ids), vocab_size=len(self.corpus.vocab),
            parameters=self.model.num_parameters(), model=self.model_config, train=config,
            device=str(self.device), precision=self.precision, resumed_from_step=self._resumed_from,
        ))
        clock = time.perf_counter() - run.elapsed
        self._agree()
        while self.progress() < 1.0 and not self._stopping:
            before = run.elapsed
            step_start = time.perf_counter()
            loss = self._train_step()
            now = time.perf_counter()
            run.train_seconds += now - step_start
            run.elapsed = now - clock
            agreed = self._agree(loss if loss is not None else 0.0)
            self.planner.observe_step(run.elapsed - before)
            if self.threads is not None:
                self.threads.tick()
            if loss is not None:
                self._fold_loss(agreed)
            elif self.deferred_reads and run.step % LOSS_READS_EVERY == 0:
                self._read_losses()
            progress = self.progress()
            self.reporter.step(StepStats(
                step=run.step, epoch=run.epoch, progress=progress, lr=self.learning_rate(),
                train_loss=run.train_loss_ema if run.train_loss_ema is not None else float("nan"),
                chars_per_sec=self._session_chars_per_sec(), elapsed=run.elapsed,
                eta=(run.elapsed / progress - run.elapsed) if progress > 0 else None, val_loss=run.last_val_loss,
            ))
            if self.planner.evaluation_due(run.step, progress, run.last_eval_step, run.next_eval_progress):
                slot = run.next_eval_progress
                self._evaluate_and_save(final=False)
                run.elapsed = time.perf_counter() - clock
                self._agree()
                run.next_eval_progress = self.planner.next_slot(slot, self.progress())
            elif config.log_every > 0 and run.step % config.log_every == 0:
                self._log_metrics()
        if not self._stopping and config.val_frac > 0:
            self._evaluate_and_save(final=True)
        else:
            started = time.perf_counter()
            self.save("last")
            run.save_seconds += time.perf_counter() - started
        run.elapsed = time.perf_counter() - clock
        self._agree()
        result = TrainResult(
            run_dir=self.run_dir, steps=run.step, epochs=run.step / len(self.batches), elapsed=run.elapsed,
            chars_per_sec=self._session_chars_per_sec(), parameters=self.model.num_parameters(),
            train_loss=run.train_loss_ema if run.train_loss_ema is not None else float("nan"),
            best_val_loss=run.best_val_loss, last_val_loss=run.last_val_loss,
            stopped_early=self._stopping, skipped_batches=run.skipped_batches,
            train_seconds=run.train_seconds, eval_seconds=run.eval_seconds, save_seconds=run.save_seconds,
            preview_seconds=run.preview_seconds, final_val_chars=self._last_read[0], val_chars=self._last_read[1],
        )
        self.writer.summary(dataclasses.asdict(result))
        self.reporter.finish(result)
        return result
