"""Model and batch shapes fitted to the time budget and the corpus.

A CPU gives a short run few characters to learn from: a small model learns more
from them than a large one. These presets, and the rule that picks one, come from
the experiments recorded in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..base.runtime import Precision
from ..model.config import ModelConfig
from .config import NanPolicy, TrainConfig

SizeName = Literal["tiny", "small", "medium", "large"]


@dataclass(frozen=True)
class Preset:
    """A model shape with the batch shape and learning rate that suit it."""

    num_layers: int
    hidden_size: int
    emb_size: int
    batch_size: int
    seq_len: int
    lr: float
    dropout: float

    def shape(self) -> dict[str, Any]:
        """The ModelConfig fields this preset sets (what ``--size`` changes when a run is resumed)."""
        return {"num_layers": self.num_layers, "hidden_size": self.hidden_size, "emb_size": self.emb_size,
                "dropout": self.dropout}

    def model_config(self, vocab_size: int) -> ModelConfig:
        """This preset's model shape for a vocabulary of ``vocab_size`` characters."""
        return ModelConfig(vocab_size, self.emb_size, self.hidden_size, self.num_layers, self.dropout)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(num_layers=1, hidden_size=128, emb_size=32, batch_size=32, seq_len=64, lr=5e-3, dropout=0.0),
    "small": Preset(num_layers=2, hidden_size=256, emb_size=64, batch_size=32, seq_len=64, lr=6e-3, dropout=0.0),
    "medium": Preset(num_layers=2, hidden_size=384, emb_size=64, batch_size=32, seq_len=64, lr=5e-3, dropout=0.1),
    "large": Preset(num_layers=2, hidden_size=512, emb_size=64, batch_size=32, seq_len=64, lr=5e-3, dropout=0.1),
}

DEFAULT_TIME_BUDGET = 600.0


def auto_size(time_budget: float | None, corpus_chars: int) -> str:
    """The preset for a run of ``time_budget`` seconds on ``corpus_chars`` characters.

    Short budgets and small corpora get small models: they would neither see
    enough characters to train a large one nor hold enough text to feed it.
    On tiny Shakespeare 2x256 leads 2x384 for the first four minutes or so, and
    2x384 wins a ten-minute run (1.458 against 1.481); larger models are for
    budgets past an hour (benchmarks/RESULTS.md).
    """
    if corpus_chars < 50_000:
        return "tiny"
    budget = time_budget if time_budget is not None else DEFAULT_TIME_BUDGET
    if corpus_chars < 300_000 or budget <= 4 * 60:
        return "small"
    if budget <= 60 * 60:
        return "medium"
    return "large"


def auto_dropout(time_budget: float | None, preset: Preset) -> float:
    """Dropout 0.1 once a run is long enough to read its corpus many times over.

    Three minutes of 2x256 read tiny Shakespeare about five times, and dropout
    only slows them; ten minutes of it read it eighteen times and overfit
    without it (benchmarks/RESULTS.md). Past four minutes only small corpora
    still get the tiny and small presets, which is where this matters.
    """
    if time_budget is None or time_budget <= 240:
        return preset.dropout
    return max(preset.dropout, 0.1)


@dataclass(frozen=True)
class RunChoices:
    """What a user said about a new run (None: not said, let the rule choose). The command line
    and the Python API both come through here, so a flag means the same thing from either."""

    size: str | None = None
    layers: int | None = None
    hidden: int | None = None
    emb: int | None = None
    dropout: float | None = None
    cell: str = "lstm"
    batch_size: int | None = None
    seq_len: int | None = None
    lr: float | None = None
    steps: int | None = None
    epochs: float | None = None
    time_budget: float | None = None
    eval_every: int | None = None
    val_frac: float = 0.1
    seed: int = 1337
    device: str = "auto"
    precision: Precision = "auto"
    on_nan: NanPolicy = "stop"


def choose_configs(choices: RunChoices, corpus_chars: int, vocab_size: int) -> tuple[ModelConfig, TrainConfig]:
    """The model and training configs for a new run: what the user gave, the rule for the rest.

    With no budget at all a run gets :data:`DEFAULT_TIME_BUDGET`. An explicit ``size`` keeps its
    preset's dropout; a chosen one gets :func:`auto_dropout` for the budget.
    """
    time_budget = choices.time_budget
    if choices.steps is None and choices.epochs is None and time_budget is None:
        time_budget = DEFAULT_TIME_BUDGET
    preset = PRESETS[choices.size or auto_size(time_budget, corpus_chars)]

    def given(value: Any, fallback: Any) -> Any:
        return value if value is not None else fallback

    model_config = ModelConfig(
        vocab_size=vocab_size,
        emb_size=given(choices.emb, preset.emb_size),
        hidden_size=given(choices.hidden, preset.hidden_size),
        num_layers=given(choices.layers, preset.num_layers),
        dropout=given(choices.dropout, preset.dropout if choices.size else auto_dropout(time_budget, preset)),
        cell=choices.cell,  # type: ignore[arg-type]
    )
    train_config = TrainConfig(
        batch_size=given(choices.batch_size, preset.batch_size),
        seq_len=given(choices.seq_len, preset.seq_len),
        steps=choices.steps,
        epochs=choices.epochs,
        time_budget=time_budget,
        lr=given(choices.lr, preset.lr),
        eval_every=choices.eval_every,
        val_frac=choices.val_frac,
        seed=choices.seed,
        device=choices.device,
        precision=choices.precision,
        on_nan=choices.on_nan,
    )
    return model_config, train_config
