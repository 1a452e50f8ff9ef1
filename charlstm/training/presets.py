"""Model and batch shapes, each with the learning rate and dropout that suit it.

The rule that picks one for a run is in :mod:`.sizing`; the experiments behind both are in
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..model.config import ModelConfig

SizeName = Literal["tiny", "compact", "wide", "wider", "small", "medium", "large"]


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


# compact and wide are for runs that read few characters (a short budget, a slow CPU): one layer and
# 16-stream batches, so a character buys more optimiser steps; on a 2-core AVX2 CPU in fp32 they beat 2x256
# at 30 s, 1 m and 3 m by 0.07 to 0.37 nats/char (benchmarks/RESULTS.md, "Short budgets on a slow CPU").
# wider (1x512) is the one-layer shape for a run that can read 7M characters or more on such a CPU.
# medium's rate is 4e-3: at 5e-3 one seed in three of its ten-minute tiny-Shakespeare runs (fp32, ~11 epochs)
# hit loss spikes it never recovered from (1.5425 against 1.4554 and 1.4599); at 4e-3 the same seeds gave
# 1.4556–1.4597, at 3.5e-3 1.4646–1.4718 (benchmarks/RESULTS.md, "Seeds and the 2x384's learning rate").
PRESETS: dict[str, Preset] = {
    "tiny": Preset(num_layers=1, hidden_size=128, emb_size=32, batch_size=32, seq_len=64, lr=5e-3, dropout=0.0),
    "compact": Preset(num_layers=1, hidden_size=192, emb_size=64, batch_size=16, seq_len=64, lr=8e-3, dropout=0.0),
    "wide": Preset(num_layers=1, hidden_size=384, emb_size=64, batch_size=16, seq_len=64, lr=6e-3, dropout=0.0),
    "wider": Preset(num_layers=1, hidden_size=512, emb_size=64, batch_size=16, seq_len=64, lr=6e-3, dropout=0.0),
    "small": Preset(num_layers=2, hidden_size=256, emb_size=64, batch_size=32, seq_len=64, lr=6e-3, dropout=0.0),
    "medium": Preset(num_layers=2, hidden_size=384, emb_size=64, batch_size=32, seq_len=64, lr=4e-3, dropout=0.1),
    "large": Preset(num_layers=2, hidden_size=512, emb_size=64, batch_size=32, seq_len=64, lr=5e-3, dropout=0.1),
}

# Shapes only a GPU trains fast enough to feed: the CUDA rule (training/gpu.py) may pick them, the CPU rule
# never does. Their batch shape is where the CUDA rule starts growing; learning rate and dropout are set
# for a wide model that reads a small corpus many times over (pending measurement on a GPU).
GPU_PRESETS: dict[str, Preset] = {
    "xl": Preset(num_layers=2, hidden_size=1024, emb_size=128, batch_size=32, seq_len=64, lr=2e-3, dropout=0.2),
}

ALL_PRESETS: dict[str, Preset] = {**PRESETS, **GPU_PRESETS}

DEFAULT_TIME_BUDGET = 600.0
