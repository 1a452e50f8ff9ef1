"""The character model: embedding, a stacked recurrent layer, a linear head.

The recurrent layer is PyTorch's own fused ``nn.LSTM`` (or ``nn.GRU``/``nn.RNN``
for comparison), so the time loop runs inside oneDNN/cuDNN, not in Python.
Training with dropout on a CPU calls the same kernel once per layer, on the
module's own weights, to put cheaper dropout masks between the layers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

State = tuple[torch.Tensor, ...]

_CELLS: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class CharLSTM(nn.Module):
    """Embedding -> stacked recurrent cells -> dropout -> logits over the vocabulary."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.emb_size)
        self.rnn = _CELLS[config.cell](
            config.emb_size,
            config.hidden_size,
            config.num_layers,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.head = nn.Linear(config.hidden_size, config.vocab_size)
        if self.is_lstm:
            self._open_forget_gates()

    def _open_forget_gates(self) -> None:
        """Start forget gates near 0.73 instead of 0.5, so memory and gradients survive long gaps
        from the first step (Gers et al. 2000; Jozefowicz et al. 2015)."""
        hidden = self.config.hidden_size
        with torch.no_grad():
            for layer in range(self.config.num_layers):
                # nn.LSTM orders gate rows input, forget, cell, output; both biases are added.
                getattr(self.rnn, f"bias_ih_l{layer}")[hidden : 2 * hidden].fill_(1.0)
                getattr(self.rnn, f"bias_hh_l{layer}")[hidden : 2 * hidden].fill_(0.0)

    @property
    def is_lstm(self) -> bool:
        return self.config.cell == "lstm"

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """A zero state: (h, c) for an LSTM, (h,) for a GRU or vanilla RNN."""
        device = device if device is not None else self.head.weight.device
        shape = (self.config.num_layers, batch_size, self.config.hidden_size)
        count = 2 if self.is_lstm else 1
        return tuple(torch.zeros(shape, device=device) for _ in range(count))

    def forward(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Logits (B, T, V) for ids (B, T), and the state after the last step."""
        if state is None:
            state = self.init_state(ids.shape[0], ids.device)
        hidden = self.embedding(ids)
        dropping = self.training and self.config.dropout > 0
        # On a CPU the stacked call's own dropout masks cost a tenth of a training step (see
        # byte_dropout); elsewhere (cuDNN, MPS) the stacked call is kept whole, masks and all.
        on_cpu = ids.device.type == "cpu"
        if dropping and on_cpu and self.config.num_layers > 1:
            output, new_state = self._layer_by_layer(hidden, state)
        elif self.is_lstm:
            output, (h, c) = self.rnn(hidden, (state[0], state[1]))
            new_state = (h, c)
        else:
            output, h = self.rnn(hidden, state[0])
            new_state = (h,)
        if dropping:
            output = byte_dropout(output, self.config.dropout) if on_cpu else F.dropout(output, self.config.dropout)
        return self.head(output), new_state

    def _layer_by_layer(self, hidden: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """``self.rnn`` one layer at a time, with :func:`byte_dropout` between the layers.

        The stacked call would draw its own dropout masks, one 32-bit random
        number per element: at 2x256 that was 15% of a training step on a CPU.
        """
        run_layer = _LAYER_FUNCTIONS[self.config.cell]
        layer_states: list[tuple[torch.Tensor, ...]] = []
        for layer in range(self.config.num_layers):
            if layer > 0:
                hidden = byte_dropout(hidden, self.config.dropout)
            weights = [getattr(self.rnn, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            start = tuple(s[layer : layer + 1] for s in state)
            hx = start if self.is_lstm else start[0]
            hidden, *after = run_layer(hidden, hx, weights, True, 1, 0.0, True, False, True)
            layer_states.append(tuple(after))
        return hidden, tuple(torch.cat(parts) for parts in zip(*layer_states))

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Optimiser groups with weight decay on the matrices only: the model knows which of its
        parameters are which (nanoGPT's ``configure_optimizers``), so the trainer never matches names."""
        decays = {name: p.dim() >= 2 and not name.startswith("embedding") for name, p in self.named_parameters()}
        decay = [p for name, p in self.named_parameters() if decays[name]]
        rest = [p for name, p in self.named_parameters() if not decays[name]]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def byte_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout (zero with probability ``p``, scale the rest) drawing one random byte per element.

    PyTorch's CPU dropout draws a 32-bit number per element, which costs more
    than the LSTM layer's own arithmetic at small sizes; a byte is plenty for
    a mask. The probability is rounded to a multiple of 1/256 (0.1 -> 26/256),
    at most 255/256. The kept values are scaled after masking, so a bf16 ``x``
    is not scaled by a bf16-rounded factor (256/230 would become 1.109).
    """
    threshold = min(round(p * 256), 255)
    if threshold == 0:
        return x
    count = x.numel()
    words = torch.randint(-(2**63), 2**63 - 1, ((count + 7) // 8,), dtype=torch.int64, device=x.device)
    random_bytes = words.view(torch.uint8)[:count].view(x.shape)
    return (x * (random_bytes >= threshold)).mul_(256 / (256 - threshold))


_LAYER_FUNCTIONS = {"lstm": torch.lstm, "gru": torch.gru, "rnn": torch.rnn_tanh}
"""One call of each cell's fused sequence kernel (the one nn.LSTM/GRU/RNN call) on explicit weights."""


def detach_state(state: State) -> State:
    """Cut the graph at a window boundary: the values carry on, the gradients stop."""
    return tuple(s.detach() for s in state)
