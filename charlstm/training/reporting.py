"""What a run tells the outside world while it trains, as plain data; the interface draws it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..base.runtime import LN2
from ..model.config import ModelConfig
from .config import TrainConfig


@dataclass
class StepStats:
    step: int
    epoch: int
    progress: float
    lr: float
    train_loss: float
    chars_per_sec: float
    elapsed: float
    eta: float | None
    val_loss: float | None


@dataclass
class EvalStats:
    step: int
    elapsed: float
    val_loss: float
    best_val_loss: float
    is_best: bool
    preview: str
    chars: int = 0  # validation characters this evaluation scored
    of_chars: int = 0  # in the whole validation split
    final: bool = False

    @property
    def val_bpc(self) -> float:
        return self.val_loss / LN2


@dataclass
class RunInfo:
    run_dir: Path
    corpus: str
    corpus_chars: int
    train_chars: int
    val_chars: int
    vocab_size: int
    parameters: int
    model: ModelConfig
    train: TrainConfig
    device: str
    precision: str
    resumed_from_step: int


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    epochs: float
    elapsed: float
    chars_per_sec: float
    parameters: int
    train_loss: float
    best_val_loss: float | None
    last_val_loss: float | None
    stopped_early: bool = False
    skipped_batches: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    # Where the time went: training steps, evaluations, checkpoint and metrics writes, previews.
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    save_seconds: float = 0.0
    preview_seconds: float = 0.0
    final_val_chars: int = 0  # characters the final evaluation read
    val_chars: int = 0  # in the whole validation split

    @property
    def best_val_bpc(self) -> float | None:
        return None if self.best_val_loss is None else self.best_val_loss / LN2


class TrainReporter(Protocol):
    """What the trainer tells the outside world; the console layer draws it."""

    def start(self, info: RunInfo) -> None: ...
    def step(self, stats: StepStats) -> None: ...
    def evaluated(self, stats: EvalStats) -> None: ...
    def finish(self, result: TrainResult) -> None: ...


class SilentReporter:
    """For library use and tests: hears everything, shows nothing."""

    def start(self, info: RunInfo) -> None:
        pass

    def step(self, stats: StepStats) -> None:
        pass

    def evaluated(self, stats: EvalStats) -> None:
        pass

    def finish(self, result: TrainResult) -> None:
        pass
