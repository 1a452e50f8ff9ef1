"""How a run trains: the settings a checkpoint records and a resume compares."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from ..base.runtime import Precision

NanPolicy = Literal["stop", "skip"]


@dataclass
class TrainConfig:
    """How to train: batch shape, optimiser, schedule, budget and bookkeeping.

    A run stops at whichever of ``steps``, ``epochs`` and ``time_budget`` (seconds)
    comes first; the learning-rate schedule follows the same progress measure, so
    a ten-minute run decays to its floor at ten minutes.
    """

    batch_size: int = 32  # batch shape and lr: the ``medium`` preset's, as ModelConfig's shape
    seq_len: int = 64
    steps: int | None = None
    epochs: float | None = None
    time_budget: float | None = None
    lr: float = 4e-3
    min_lr_ratio: float = 0.02
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int | None = None
    evals_per_run: int = 6
    log_every: int = 20
    val_frac: float = 0.1
    seed: int = 1337
    device: str = "auto"
    precision: Precision = "auto"
    preview_chars: int = 160
    on_nan: NanPolicy = "stop"

    def __post_init__(self) -> None:
        if self.steps is None and self.epochs is None and self.time_budget is None:
            raise ValueError("a run needs a budget: steps, epochs or time_budget")
        for name in ("batch_size", "seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.lr <= 0:
            raise ValueError("lr must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Rebuild a recorded config; settings this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{name: value for name, value in data.items() if name in known})
