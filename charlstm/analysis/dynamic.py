"""Dynamic evaluation (Krause et al., "Dynamic Evaluation of Neural Sequence Models", 2018): the
model keeps learning from the text it has just scored, window by window, so the rest of a long
text is predicted by weights that have adapted to its names, style and vocabulary.

Each window is scored first, with the weights as they are, and only then used for an update, so
no character is ever scored by weights that have seen it. The update is the paper's: a gradient
step on the window's loss plus a decay back toward the trained weights,

    sgd:  θ ← θ − η·g + λ·(θ_trained − θ)
    rms:  θ ← θ − η·g / (√MS + ε) + min(1, λ·RMS_norm)·(θ_trained − θ),   RMS_norm = √MS / mean(√MS)

where MS is the mean squared gradient. The paper measured MS on the training data; here it is
the mean over the windows already read (no training text is needed, and nothing ahead is seen).
Everything happens on a copy of the model in memory: the loaded model and its checkpoint files
are never changed.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..base.errors import CorpusError
from ..base.runtime import LN2, autocast
from ..data.batches import StreamBatches
from ..model.network import CharLSTM, detach_state
from ..training.checkpoint import LoadedModel
from ..training.evaluation import eval_streams
from .scoring import EvalResult, evaluate_text, known_ids

DynamicRule = Literal["sgd", "rms"]
DYNAMIC_RULES: tuple[DynamicRule, ...] = ("sgd", "rms")

# Defaults measured on tiny Shakespeare (benchmarks/RESULTS.md, "Dynamic evaluation"), tuned on
# the tail of the training split so the validation figure they are reported on stayed unseen.
DEFAULT_RULE: DynamicRule = "rms"
DEFAULT_RATES: dict[DynamicRule, tuple[float, float]] = {"sgd": (0.02, 0.0), "rms": (1e-3, 0.001)}  # (η, λ)
DEFAULT_WINDOW = 32
EPSILON = 1e-8


@dataclass(frozen=True)
class DynamicConfig:
    """How the model learns while it reads: the rule, its step size η (``lr``) and decay λ toward
    the trained weights, the characters per update (``window``) and the parallel streams."""

    rule: DynamicRule = DEFAULT_RULE
    lr: float | None = None
    decay: float | None = None
    window: int = DEFAULT_WINDOW
    streams: int = 1

    @property
    def rates(self) -> tuple[float, float]:
        default_lr, default_decay = DEFAULT_RATES[self.rule]
        return (default_lr if self.lr is None else self.lr, default_decay if self.decay is None else self.decay)


class _Updater:
    """The paper's update rule over a model's parameters, decaying toward their trained values."""

    def __init__(self, model: CharLSTM, config: DynamicConfig):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.trained = [p.detach().clone() for p in self.params]
        self.rule = config.rule
        self.lr, self.decay = config.rates
        self.square_sums = [torch.zeros_like(p) for p in self.params]
        self.updates = 0

    @torch.no_grad()
    def step(self) -> None:
        self.updates += 1
        for param, trained, square_sum in zip(self.params, self.trained, self.square_sums):
            grad = param.grad
            if grad is None:
                continue
            pull = trained - param
            if self.rule == "sgd":
                param.add_(grad, alpha=-self.lr).add_(pull, alpha=self.decay)
            else:
                square_sum.add_(grad * grad)
                rms = (square_sum / self.updates).sqrt_()
                param.addcdiv_(grad, rms + EPSILON, value=-self.lr)
                scale = (self.decay * rms / (rms.mean() + EPSILON)).clamp_(max=1.0)
                param.add_(pull * scale)
            param.grad = None


def adapt_model(model: CharLSTM, ids: np.ndarray, config: DynamicConfig, precision: str = "fp32",
                on_window: Callable[[int, int], None] | None = None) -> tuple[float, int]:
    """Read ``ids`` as ``config.streams`` streams of ``config.window``-character windows: score each
    window, then update ``model`` (in place) on it. Returns the summed cross-entropy (nats) of the
    scores and the number of characters scored.

    The model reads without dropout, in the mode its trainer evaluates in (on a GPU the recurrent
    kernel's backward needs training mode, so the copy's dropout is switched off instead).
    """
    device = model.head.weight.device
    streams = eval_streams(len(ids), config.streams, config.window)
    batches = StreamBatches(ids, streams, config.window, what="text to adapt to")
    updater = _Updater(model, config)
    learning = updater.lr > 0 or updater.decay > 0
    model.train(device.type == "cuda")
    state = model.init_state(batches.batch_size, device)
    total, count = 0.0, 0
    for index in range(len(batches)):
        x, y = batches.window(index, device)
        with torch.set_grad_enabled(learning), autocast(device, precision):
            logits, state = model(x, state)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum")
        total += loss.item()
        count += y.numel()
        if learning:
            (loss / y.numel()).backward()
            updater.step()
        state = detach_state(state)
        if on_window is not None:
            on_window(index + 1, len(batches))
    model.eval()
    return total, count


def adaptable_copy(loaded: LoadedModel) -> CharLSTM:
    """A copy of the model to change: without dropout (dynamic evaluation scores as evaluation
    does), so training mode, which a GPU's recurrent backward needs, computes the same thing."""
    model = copy.deepcopy(loaded.model)
    model.config = dataclasses.replace(model.config, dropout=0.0)
    model.rnn.dropout = 0.0
    for param in model.parameters():
        param.requires_grad_(True)
    return model


@dataclass
class DynamicResult:
    """The static and the dynamic loss of the same text, read the same way, side by side."""

    static: EvalResult
    dynamic_loss: float
    dynamic_seconds: float
    config: DynamicConfig

    @property
    def gain(self) -> float:
        """How much lower the dynamic loss is, in nats per character."""
        return self.static.loss - self.dynamic_loss

    def to_dict(self) -> dict[str, Any]:
        lr, decay = self.config.rates
        return {
            **self.static.to_dict(),
            "static_loss": self.static.loss,
            "static_bpc": self.static.bpc,
            "static_seconds": self.static.seconds,
            "dynamic_loss": self.dynamic_loss,
            "dynamic_bpc": self.dynamic_loss / LN2,
            "dynamic_seconds": self.dynamic_seconds,
            "gain": self.gain,
            "rule": self.config.rule,
            "lr": lr,
            "decay": decay,
            "window": self.config.window,
        }


def dynamic_evaluation(loaded: LoadedModel, text: str, config: DynamicConfig, precision: str | None = None,
                       on_window: Callable[[int, int], None] | None = None) -> DynamicResult:
    """Static loss of ``text`` (``charlstm eval`` read with the same streams and windows) and its
    dynamic loss, scoring each window before learning from it, on a copy of the model."""
    ids, _, unknown = known_ids(loaded.vocab, text)
    if len(ids) < 2:
        raise CorpusError(f"the text has {len(ids)} character(s) the model knows; evaluation needs at least 2")
    precision = precision or str(loaded.config.get("precision", "fp32"))
    static = evaluate_text(loaded, text, streams=config.streams, seq_len=config.window, precision=precision)
    start = time.perf_counter()
    total, count = adapt_model(adaptable_copy(loaded), ids, config, precision, on_window)
    return DynamicResult(static, total / count, time.perf_counter() - start, config)


def adapted(loaded: LoadedModel, text: str, config: DynamicConfig, precision: str | None = None) -> LoadedModel:
    """``loaded`` with weights adapted to ``text`` by the same updates, in memory only: what
    ``sample --adapt-to`` samples from."""
    ids, _, _ = known_ids(loaded.vocab, text)
    if len(ids) < 2:
        raise CorpusError(f"the text to adapt to has {len(ids)} character(s) the model knows; it needs at least 2")
    model = adaptable_copy(loaded)
    adapt_model(model, ids, config, precision or str(loaded.config.get("precision", "fp32")))
    for param in model.parameters():
        param.requires_grad_(False)
    return dataclasses.replace(loaded, model=model)
