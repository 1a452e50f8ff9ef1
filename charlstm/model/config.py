"""The shape of a model: saved in every checkpoint, read before any weight is allocated."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

CellType = Literal["lstm", "gru", "rnn"]
CELLS: tuple[CellType, ...] = ("lstm", "gru", "rnn")


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a model: everything needed to rebuild it before loading weights."""

    vocab_size: int
    emb_size: int = 64  # the defaults are the ``medium`` preset, what `charlstm train` picks for ten minutes
    hidden_size: int = 384
    num_layers: int = 2
    dropout: float = 0.1
    cell: CellType = "lstm"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "emb_size", "hidden_size", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout}")
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, not {self.cell!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model settings: {', '.join(sorted(unknown))}")
        return cls(**data)
