"""The counters, losses and data cursor of a run: what a resume must get back exactly.

The ``last`` checkpoint saves these next to the optimiser, the RNG and the
hidden state; restoring all of them is what makes a resumed run take the very
steps an uninterrupted one would.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

from ..base.errors import CheckpointError


@dataclass
class RunState:
    step: int = 0
    window: int = 0  # the data cursor: the next window to read in the current pass
    epoch: int = 0
    elapsed: float = 0.0  # wall-clock seconds of the run, over all its sessions
    train_seconds: float = 0.0  # of which spent in training steps (throughput excludes evaluations)
    chars_seen: int = 0
    evals_done: int = 0
    best_val_loss: float | None = None
    last_val_loss: float | None = None
    train_loss_ema: float | None = None
    skipped_batches: int = 0
    # Where the time went besides training steps (the summary shows them; the budget counts them).
    eval_seconds: float = 0.0
    save_seconds: float = 0.0
    preview_seconds: float = 0.0
    # The evaluation schedule: the step of the last evaluation, the progress at which the next is due
    # (0: the first slot), and how many validation windows each intermediate evaluation reads (0: not
    # chosen yet); a resumed run keeps reading the same characters.
    last_eval_step: int = 0
    next_eval_progress: float = 0.0
    eval_windows: int = 0
    best_prefix_loss: float | None = None  # the best evaluation's loss on those windows, to compare with

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any], windows: int) -> "RunState":
        """The state ``saved`` holds, for a text of ``windows`` windows per pass; raises ValueError or
        TypeError where it does not fit (which :func:`fitting` turns into a CheckpointError)."""
        state = cls(
            **{name: type(getattr(cls, name))(saved[name]) for name in _COUNTERS},
            **{name: None if saved[name] is None else float(saved[name]) for name in _LOSSES},
            skipped_batches=int(saved.get("skipped_batches", 0)),  # absent from states saved before --on-nan skip
            # absent from states saved before the budget planner: their defaults
            **{name: type(getattr(cls, name))(saved[name]) for name in _SINCE_PLANNER if name in saved},
            best_prefix_loss=None if saved.get("best_prefix_loss") is None else float(saved["best_prefix_loss"]),
        )
        if not 0 <= state.window < windows or state.step < 0:
            raise ValueError(f"data cursor {state.window} outside the {windows} windows of the text")
        return state


_COUNTERS = ("step", "window", "epoch", "elapsed", "train_seconds", "chars_seen", "evals_done")
_LOSSES = ("best_val_loss", "last_val_loss", "train_loss_ema")
_SINCE_PLANNER = ("eval_seconds", "save_seconds", "preview_seconds", "last_eval_step", "next_eval_progress", "eval_windows")


def require(saved: dict[str, Any], also: Sequence[str]) -> None:
    """Refuse a saved training state that lacks any of RunState's required fields or ``also``."""
    missing = [name for name in (*_COUNTERS, *_LOSSES, *also) if name not in saved]
    if missing:
        raise CheckpointError(f"the saved training state lacks {', '.join(missing)}; it is damaged or not charlstm's")


@contextmanager
def fitting() -> Iterator[None]:
    """Turn whatever restoring a saved state into this run raises into one CheckpointError line."""
    try:
        yield
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"the saved training state does not fit this run ({first_line[:200]})") from None
