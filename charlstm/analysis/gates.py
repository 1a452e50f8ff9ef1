"""Inside the LSTM: its gates and cells, step by step, and which cells track what.

``nn.LSTM`` runs its time loop in fused kernels and hands back only h and c at the end, so
to see the gates we recompute them from its weights with the textbook equations, in PyTorch's
gate order (input, forget, candidate g, output)::

    i = σ(W_ii x + b_ii + W_hi h + b_hi)      f = σ(W_if x + b_if + W_hf h + b_hf)
    g = tanh(W_ig x + b_ig + W_hg h + b_hg)   o = σ(W_io x + b_io + W_ho h + b_ho)
    c' = f ⊙ c + i ⊙ g                        h' = o ⊙ tanh(c')

A test checks that these reproduce ``nn.LSTM``'s h and c. Feature correlation and gate
saturation follow Karpathy, Johnson and Fei-Fei, "Visualizing and Understanding Recurrent
Networks" (2015).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..base.errors import CharlstmError
from ..training.checkpoint import LoadedModel
from .features import FEATURES, GATES, Signal
from .scoring import known_ids

LEFT_SATURATED, RIGHT_SATURATED = 0.1, 0.9


@dataclass
class LayerTrace:
    """One layer's gates and states at every step, each (T, H) for one stream of text."""

    input: np.ndarray
    forget: np.ndarray
    candidate: np.ndarray
    output: np.ndarray
    cell: np.ndarray
    hidden: np.ndarray

    def signal(self, name: Signal) -> np.ndarray:
        """What ``inspect`` shows: tanh(c) for ``cell`` (in [-1, 1]), else the gate (in [0, 1])."""
        return np.tanh(self.cell) if name == "cell" else getattr(self, name)


@dataclass
class LstmTrace:
    """The gates and states of every layer while the model read ``text`` (only known characters)."""

    text: str
    layers: list[LayerTrace]
    unknown: dict[str, int] = field(default_factory=dict)

    @property
    def hidden_size(self) -> int:
        return self.layers[0].cell.shape[1]


def lstm_equations(
    lstm: nn.LSTM, inputs: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
) -> list[dict[str, torch.Tensor]]:
    """Run ``lstm`` (batch_first) on ``inputs`` (B, T, E) with explicit gate equations.

    Returns, per layer, the tensors i, f, g, o, c, h, each (B, T, H). The last layer's h is
    ``lstm``'s output and the final c and h of each layer are its final state.
    """
    if lstm.proj_size or lstm.bidirectional or not lstm.batch_first:
        raise CharlstmError("only unidirectional batch-first LSTMs without projections can be inspected")
    batch, steps, _ = inputs.shape
    size = lstm.hidden_size
    if state is None:
        zeros = inputs.new_zeros(lstm.num_layers, batch, size)
        state = (zeros, zeros)
    layers = []
    layer_input = inputs
    for k in range(lstm.num_layers):
        w_ih, w_hh = getattr(lstm, f"weight_ih_l{k}"), getattr(lstm, f"weight_hh_l{k}")
        bias = getattr(lstm, f"bias_ih_l{k}") + getattr(lstm, f"bias_hh_l{k}") if lstm.bias else 0.0
        from_input = layer_input @ w_ih.T + bias  # all steps at once; only h @ W_hh must wait
        h, c = state[0][k], state[1][k]
        trace: dict[str, list[torch.Tensor]] = {name: [] for name in "ifgoch"}
        for t in range(steps):
            pre = from_input[:, t] + h @ w_hh.T
            i, f, o = (torch.sigmoid(pre[:, n * size : (n + 1) * size]) for n in (0, 1, 3))
            g = torch.tanh(pre[:, 2 * size : 3 * size])
            c = f * c + i * g
            h = o * torch.tanh(c)
            for name, value in zip("ifgoch", (i, f, g, o, c, h)):
                trace[name].append(value)
        stacked = {name: torch.stack(values, dim=1) for name, values in trace.items()}
        layers.append(stacked)
        layer_input = stacked["h"]
    return layers


@torch.no_grad()
def trace_lstm(loaded: LoadedModel, text: str) -> LstmTrace:
    """Read ``text`` from a zero state and record every gate and state of every layer."""
    model = loaded.model
    if not model.is_lstm:
        raise CharlstmError(
            f"inspect reads LSTM gates, and this model's cell is {model.config.cell.upper()}; "
            "inspect a model trained with --cell lstm, or use 'charlstm score', which works for every cell"
        )
    ids, _, unknown = known_ids(loaded.vocab, text)
    if len(ids) == 0:
        raise CharlstmError("the text has no character the model knows; nothing to inspect")
    model.eval()
    device = model.head.weight.device
    embedded = model.embedding(torch.from_numpy(ids.astype(np.int64)).to(device)).unsqueeze(0).float()
    layers = lstm_equations(model.rnn, embedded)
    names = dict(input="i", forget="f", candidate="g", output="o", cell="c", hidden="h")
    traces = [
        LayerTrace(**{field_name: layer[key][0].cpu().numpy() for field_name, key in names.items()})
        for layer in layers
    ]
    return LstmTrace(text=loaded.vocab.decode(ids), layers=traces, unknown=unknown)




@dataclass(frozen=True)
class UnitMatch:
    """A unit whose signal follows a feature; ``r`` is Pearson's correlation over the text."""

    feature: str
    layer: int
    unit: int
    r: float


def correlations(values: np.ndarray, feature: np.ndarray) -> np.ndarray:
    """Pearson's r of each column of ``values`` (T, H) with ``feature`` (T,); 0 for a constant column."""
    centred = values - values.mean(axis=0)
    target = feature - feature.mean()
    spread = np.sqrt((centred**2).sum(axis=0) * (target**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (centred * target[:, None]).sum(axis=0) / spread
    return np.nan_to_num(r)


def top_units(
    trace: LstmTrace,
    features: list[str] | None = None,
    count: int = 8,
    signal: Signal = "cell",
    layer: int | None = None,
) -> tuple[list[UnitMatch], list[str]]:
    """The ``count`` units (over all layers, or ``layer``) whose signal correlates most strongly
    with any of ``features``, strongest first; and the features the text does not vary in
    (a text without quotes says nothing about a quote cell)."""
    features = features or list(FEATURES)
    unknown = [name for name in features if name not in FEATURES]
    if unknown:
        raise CharlstmError(f"unknown feature {unknown[0]!r}; choose from {', '.join(FEATURES)}")
    layers = range(len(trace.layers)) if layer is None else [check_layer(trace, layer)]
    matches, constant = [], []
    for name in features:
        feature = FEATURES[name](trace.text)
        if np.ptp(feature) == 0:
            constant.append(name)
            continue
        for k in layers:
            r = correlations(trace.layers[k].signal(signal), feature)
            matches.extend(UnitMatch(name, k, int(unit), float(r[unit])) for unit in range(len(r)))
    return sorted(matches, key=lambda m: -abs(m.r))[:count], constant


def check_layer(trace: LstmTrace, layer: int) -> int:
    if not 0 <= layer < len(trace.layers):
        raise CharlstmError(f"--layer {layer} does not exist; this model has layers 0 to {len(trace.layers) - 1}")
    return layer


def check_unit(trace: LstmTrace, unit: int) -> int:
    if not 0 <= unit < trace.hidden_size:
        raise CharlstmError(f"--unit {unit} does not exist; this model has units 0 to {trace.hidden_size - 1}")
    return unit


@dataclass(frozen=True)
class GateSaturation:
    """How often a layer's gate sits near 0 (left) or 1 (right), over all its units and steps.

    ``units_left``/``units_right`` count units saturated that way more than half the time: a
    forget gate right-saturated for good is a cell that remembers for a long time.
    """

    layer: int
    gate: Signal
    left: float
    right: float
    units_left: int
    units_right: int
    units: int


def saturation(trace: LstmTrace) -> list[GateSaturation]:
    stats = []
    for k, layer in enumerate(trace.layers):
        for gate in GATES:
            values = layer.signal(gate)
            left = (values < LEFT_SATURATED).mean(axis=0)
            right = (values > RIGHT_SATURATED).mean(axis=0)
            stats.append(GateSaturation(k, gate, float(left.mean()), float(right.mean()),
                                        int((left > 0.5).sum()), int((right > 0.5).sum()), values.shape[1]))
    return stats
