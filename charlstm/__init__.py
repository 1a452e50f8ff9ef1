"""charlstm: train a character-level LSTM on any text, sample from it, see what it learned."""

__version__ = "0.1.0"

from .checkpoint import LoadedModel, load
from .corpus import Corpus, TextOptions, Vocab
from .errors import CharlstmError
from .model import CharLSTM, ModelConfig
from .sample import Generator, SamplingOptions
from .train import TrainConfig, Trainer

__all__ = [
    "CharLSTM",
    "CharlstmError",
    "Corpus",
    "Generator",
    "LoadedModel",
    "ModelConfig",
    "SamplingOptions",
    "TextOptions",
    "TrainConfig",
    "Trainer",
    "Vocab",
    "__version__",
    "load",
]
