"""charlstm: train a character-level LSTM on any text, sample from it, see what it learned.

The public API is imported on first use, so that ``charlstm --help`` and ``charlstm --version``
answer without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .base.version import __version__ as __version__

_PUBLIC = {
    "CharlstmError": "charlstm.base.errors",
    "Corpus": "charlstm.data.corpus",
    "TextOptions": "charlstm.data.corpus",
    "Vocab": "charlstm.data.corpus",
    "read_corpus": "charlstm.data.sources",
    "CharLSTM": "charlstm.model.network",
    "ModelConfig": "charlstm.model.config",
    "TrainConfig": "charlstm.training.config",
    "Trainer": "charlstm.training.trainer",
    "LoadedModel": "charlstm.training.checkpoint",
    "load": "charlstm.training.checkpoint",
    "Generator": "charlstm.generation.generator",
    "SamplingOptions": "charlstm.generation.generator",
    "GenerationRequest": "charlstm.generation.controls",
    "SampleResult": "charlstm.generation.controls",
    "TextDelta": "charlstm.generation.controls",
}

__all__ = sorted([*_PUBLIC, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'charlstm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
