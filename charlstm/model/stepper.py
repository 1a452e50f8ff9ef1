"""One character at a time through an LSTM, without ``nn.LSTM``'s cost per call.

Sampling runs the model one step per character. ``nn.LSTM`` is built for long
sequences: called with one step it re-checks and re-lays-out its weights and
runs a general kernel, which on a CPU costs several times the arithmetic. Here
each layer is one fused step instead:

- the input and recurrent weights are concatenated once, ``[W_ih | W_hh]``, so a
  layer is one matrix product of ``[x | h]`` with them, written into a buffer
  that is allocated once;
- layer 0's input product depends only on the character, so it is a table
  (vocabulary x 4H) computed once and read by index;
- no ``tanh`` at all: on this CPU it costs five times a ``sigmoid`` per element
  (33 against 7 µs for a 32 x 384 block), so both tanh's are taken as
  ``tanh(x) = 2 sigmoid(2x) - 1``. The cell gate's weights are doubled when the
  stepper is made, one ``sigmoid`` then covers all four gates, the ``2s - 1``
  folds into the in-place cell update, and the state is kept as h/2 and 2c
  (see :class:`LSTMStepper`) so that the factors of 2 cost no passes at all;
- in bf16 the weights are converted (and, where oneDNN is there, pre-packed)
  once, halving the bytes each step streams; the cell state, the gate
  arithmetic and the output layer stay in fp32;
- in int8 (CPUs without fast bf16, where the products are bound by the
  multiply-adds) each layer is one call of a compiled C step (:mod:`.native`)
  where the machine has a C compiler: the input quantised once, the products
  and the cell update in registers; fbgemm's products and PyTorch's passes
  where it has none.

What comes out is the model's own distribution: the logits match
``model(ids, state)`` to fp32 rounding (fp32) or to bf16 rounding of the matrix
products (bf16), which is also what bf16 autocast computes.
"""

from __future__ import annotations

import warnings
from typing import Callable, Protocol

import torch
import torch.nn.functional as F

from ..base.runtime import autocast
from .native import KernelAbsent, LayerKernel, layer_kernel, step_arguments
from .network import CharLSTM, State

MatVec = Callable[[torch.Tensor], torch.Tensor]


def _cell_gate_doubled(hidden_size: int) -> torch.Tensor:
    """A factor per gate row in PyTorch's (i, f, g, o) order: 2 for the cell gate g, whose
    tanh(x) the step takes as 2 sigmoid(2x) - 1, and 1 for the three sigmoid gates."""
    scale = torch.ones(4 * hidden_size, 1)
    scale[2 * hidden_size : 3 * hidden_size] = 2.0
    return scale


def _can_prepack(device: torch.device) -> bool:
    return (
        device.type == "cpu"
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def bf16_linear(weight: torch.Tensor, batch_size: int) -> MatVec:
    """``x @ weight.T`` with bf16 weights, pre-packed for oneDNN where it is available.

    The packed layout matters at small batch sizes: a plain bf16 ``addmm``
    re-packs the weights on every call and ends up slower than fp32.
    """
    weight = weight.to(torch.bfloat16).contiguous()
    if _can_prepack(weight.device):
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, batch_size)
        except RuntimeError:  # oneDNN packs bf16 only on CPUs with AVX512 or AVX-NE-CONVERT
            return lambda x: F.linear(x, weight)
        return lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
    return lambda x: F.linear(x, weight)


def int8_available(device: torch.device | str = "cpu") -> bool:
    """Whether fbgemm's int8 products (AVX2 and up) are there to run int8 weights on this CPU."""
    return torch.device(device).type == "cpu" and "fbgemm" in torch.backends.quantized.supported_engines


def int8_compiled() -> bool:
    """Whether int8 steps run the compiled layer step here (built on first ask; see :mod:`.native`)."""
    return isinstance(layer_kernel(), LayerKernel)


def int8_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> MatVec:
    """``x @ weight.T + bias`` with int8 weights, one scale per row (output), through fbgemm.

    On a CPU without fast bf16 a batch of rows is bound by the multiply-adds, and fbgemm's
    int8 kernels (u8 x s8 pairs on AVX2, VNNI where there) do about twice the fp32 rate while
    reading a quarter of the bytes. The rows are quantised per call to 7-bit unsigned
    (``reduce_range``: the AVX2 pair sums cannot saturate) and the result is fp32.
    """
    weight = weight.float().contiguous()
    scales = (weight.abs().amax(dim=1) / 127).clamp_min(1e-12).double()
    with warnings.catch_warnings():  # quantised tensors are marked deprecated; fbgemm's packed weights still need one
        warnings.simplefilter("ignore", UserWarning)
        quantized = torch.quantize_per_channel(weight, scales, torch.zeros(len(scales), dtype=torch.long), 0, torch.qint8)
    packed = torch.ops.quantized.linear_prepack(quantized, None if bias is None else bias.float().contiguous())
    return lambda x: torch.ops.quantized.linear_dynamic(x, packed, True)


class Stepper(Protocol):
    """Steps ``batch_size`` streams one character at a time from a state it holds."""

    batch_size: int

    def load_state(self, state: State) -> None: ...
    def state(self) -> State: ...
    def step(self, ids: torch.Tensor) -> torch.Tensor: ...
    def keep_rows(self, rows: torch.Tensor) -> None: ...


def forward_last(model: CharLSTM, ids: torch.Tensor, state: State | None, precision: str) -> tuple[torch.Tensor, State]:
    """The model's fp32 logits after the last of ``ids`` (B, T), and its state after them, in fp32."""
    with autocast(ids.device, precision):
        logits, state = model(ids, state)
    return logits[:, -1, :].float(), tuple(s.float() for s in state)


class ModelStepper:
    """The stepper interface over the model's own forward: for GRU and vanilla-RNN cells."""

    def __init__(self, model: CharLSTM, batch_size: int, precision: str = "fp32"):
        self.model = model
        self.batch_size = batch_size
        self.precision = precision
        self._state = model.init_state(batch_size)

    def load_state(self, state: State) -> None:
        self._state = state

    def state(self) -> State:
        return self._state

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        logits, self._state = forward_last(self.model, ids.unsqueeze(1), self._state, self.precision)
        return logits

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Go on with only these rows (indices into the current ones, in this order)."""
        self._state = tuple(s.index_select(1, rows) for s in self._state)


class LSTMStepper:
    """Steps ``batch_size`` streams of a CharLSTM (LSTM cell) one character at a time.

    The stepper copies the model's weights when it is made: later changes to
    the model are not seen (make a new one). ``step`` returns a logits buffer
    that the next step overwrites.

    Between steps it holds each layer's h halved and its c doubled, which saves
    operations without changing a bit of the result: tanh(c) = 2 sigmoid(2c) - 1
    then needs no doubling of c, h/2 = o (sigmoid(2c) - 1/2) no doubling of the
    sigmoid, and every weight that reads h is doubled once here instead. The
    halved h's of all layers sit side by side in one buffer, so the input of
    layer l, [h of layer l-1 at this step | its own h from the last step], is a
    slice of it that layer l-1 has just written: no copies between layers.
    """

    def __init__(self, model: CharLSTM, batch_size: int, precision: str = "fp32", native: bool = True):
        if not model.is_lstm:
            raise ValueError(f"the fused step is for LSTM cells, not {model.config.cell}")
        if precision not in ("fp32", "bf16", "int8"):
            raise ValueError(f"precision must be fp32, bf16 or int8, not {precision!r}")
        config = model.config
        hidden, layers = config.hidden_size, config.num_layers
        device = model.head.weight.device
        self.batch_size = batch_size
        self.precision = precision
        compute = {"bf16": torch.bfloat16, "int8": torch.int8}.get(precision, torch.float32)
        # int8 steps take the compiled layer step where there is one; fp32 and bf16 run PyTorch's operations.
        if compute != torch.int8 or not native:
            kernel: LayerKernel | KernelAbsent = KernelAbsent("asked for them")
        elif device.type != "cpu":
            kernel = KernelAbsent(f"the model is on {device.type}; the compiled step reads CPU memory")
        else:
            kernel = layer_kernel()
        self.layer_kernel = kernel if isinstance(kernel, LayerKernel) else None
        self.step_description = kernel.describe() if compute == torch.int8 else "PyTorch operations"
        scale = _cell_gate_doubled(hidden).to(device)
        rnn = model.rnn
        with torch.no_grad():
            bias0 = (rnn.bias_ih_l0 + rnn.bias_hh_l0).float() * scale[:, 0]
            self.input_table = F.linear(model.embedding.weight.float(), rnn.weight_ih_l0.float() * scale, bias0)
            self.gates = torch.zeros(batch_size, 4 * hidden, device=device)
            # Each layer's gate weights and bias; layer 0's input product and bias are the table above.
            layer_weights: list[tuple[torch.Tensor, torch.Tensor | None]] = []
            for layer in range(layers):
                w_hh = getattr(rnn, f"weight_hh_l{layer}").float() * scale * 2.0
                if layer == 0:
                    layer_weights.append((w_hh, None))
                    continue
                w_ih = getattr(rnn, f"weight_ih_l{layer}").float() * scale * 2.0
                bias = (getattr(rnn, f"bias_ih_l{layer}") + getattr(rnn, f"bias_hh_l{layer}")).float() * scale[:, 0]
                layer_weights.append((torch.cat([w_ih, w_hh], dim=1), bias))
            if self.layer_kernel is not None:
                self.packed_layers = [self.layer_kernel.pack(weight, bias, self.input_table if layer == 0 else None)
                                      for layer, (weight, bias) in enumerate(layer_weights)]
                self.scratch = torch.empty(batch_size, max(packed.inputs_padded for packed in self.packed_layers),
                                           dtype=torch.uint8)
                self.scratch_scale = torch.empty(batch_size)
            else:
                self.gate_steps = [self._activated_gates(weight, bias, compute) for weight, bias in layer_weights]
            # The weight bytes one step reads: where memory bandwidth is the limit, the floor on its time.
            element = 1 if compute == torch.int8 else torch.finfo(compute).bits // 8
            recurrent = sum(4 * hidden * (hidden if layer == 0 else 2 * hidden) for layer in range(layers))
            self.streamed_bytes = recurrent * element + model.head.weight.numel() * 4
            self.head_weight_t = (model.head.weight.detach().float() * 2.0).t().contiguous()
            self.head_bias = model.head.bias.detach().float().clone()

        def buffer(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, device=device)

        self.full_half_h = buffer(batch_size, layers * hidden)
        self.full_double_c = buffer(layers, batch_size, hidden)
        self.full_half_tanh_c = buffer(batch_size, hidden)
        self.full_logits = buffer(batch_size, config.vocab_size)
        self.full_gates = self.gates
        self._bind(batch_size)

    def _bind(self, rows: int) -> None:
        """Point every working view at the first ``rows`` rows of the buffers: finished streams cost nothing."""
        layers, hidden = self.full_double_c.shape[0], self.full_double_c.shape[-1]
        self.rows = rows
        self.gates = self.full_gates[:rows]
        half_h = self.full_half_h[:rows]
        self.half_h = [half_h[:, layer * hidden : (layer + 1) * hidden] for layer in range(layers)]
        inputs = [half_h[:, max(0, layer - 1) * hidden : (layer + 1) * hidden] for layer in range(layers)]
        self.double_c = self.full_double_c[:, :rows]
        self.half_tanh_c, self.logits = self.full_half_tanh_c[:rows], self.full_logits[:rows]
        self.i, self.f, self.g, self.o = self.gates.split(hidden, dim=1)
        if self.layer_kernel is not None:  # each layer's call, less the ids (see native.step_arguments)
            self.compiled_layers = [
                step_arguments(layer, x, double_c, h, self.scratch[:rows], self.scratch_scale[:rows])
                for layer, x, double_c, h in zip(self.packed_layers, inputs, self.double_c, self.half_h)
            ]
        else:
            self.layers = list(zip(self.gate_steps, inputs, self.double_c, self.half_h))

    def _activated_gates(self, weight: torch.Tensor, bias: torch.Tensor | None, compute: torch.dtype) -> Callable[[torch.Tensor], object]:
        """The gate buffer set to sigmoid(``x @ weight.T + bias``); with no bias, the product is added to what is
        there (layer 0's table rows) first."""
        if compute == torch.bfloat16:
            product = bf16_linear(weight, self.batch_size)
            if bias is None:
                return lambda x: self.gates.add_(product(x.to(torch.bfloat16))).sigmoid_()
            return lambda x: torch.add(bias, product(x.to(torch.bfloat16)), out=self.gates).sigmoid_()
        if compute == torch.int8:
            product = int8_linear(weight, bias)
            if bias is None:
                return lambda x: self.gates.add_(product(x)).sigmoid_()
            return lambda x: torch.sigmoid(product(x), out=self.gates)
        weight_t = weight.t()
        if bias is None:
            return lambda x: self.gates.addmm_(x, weight_t).sigmoid_()
        return lambda x: torch.addmm(bias, x, weight_t, out=self.gates).sigmoid_()

    def load_state(self, state: State) -> None:
        """Start from ``state`` ((h, c), each layers x rows x hidden, rows up to the batch size).

        The shapes are checked: the buffers are never resized, since the compiled step holds their addresses."""
        h, c = state
        layers, batch, hidden = self.full_double_c.shape
        if h.shape != c.shape or h.dim() != 3 or h.shape[0] != layers or h.shape[2] != hidden or not 1 <= h.shape[1] <= batch:
            raise ValueError(f"a state for this stepper is (h, c), each {layers} x rows x {hidden} with rows 1..{batch}; "
                             f"got {tuple(h.shape)} and {tuple(c.shape)}")
        self._bind(h.shape[1])
        torch.mul(c, 2.0, out=self.double_c)
        for layer, half_h in enumerate(self.half_h):
            torch.mul(h[layer], 0.5, out=half_h)

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Go on with only these rows (indices into the current ones, in this order), moved to the front."""
        self.load_state(tuple(s.index_select(1, rows) for s in self.state()))

    def state(self) -> State:
        """A copy of the current (h, c), in the layout ``CharLSTM.forward`` takes."""
        return (torch.stack(self.half_h) * 2.0, self.double_c * 0.5)

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Feed one character per stream (ids, shape (rows,)); the logits (rows, vocab) of the next."""
        if self.layer_kernel is not None:
            return self._compiled_step(ids)
        torch.index_select(self.input_table, 0, ids, out=self.gates)
        for activate_gates, x, double_c, half_h in self.layers:
            activate_gates(x)  # g now holds sigmoid(2 g_pre): tanh(g_pre) = 2 g - 1
            double_c.mul_(self.f).addcmul_(self.i, self.g, value=4.0).sub_(self.i, alpha=2.0)  # 2c = f 2c + 2i (2g - 1)
            torch.sigmoid(double_c, out=self.half_tanh_c).sub_(0.5)  # tanh(c) / 2
            torch.mul(self.o, self.half_tanh_c, out=half_h)  # h / 2
        return torch.addmm(self.head_bias, half_h, self.head_weight_t, out=self.logits)

    def _compiled_step(self, ids: torch.Tensor) -> torch.Tensor:
        """``step`` with each layer one call of the compiled int8 step (layer 0 reads its table row by id)."""
        ids = ids.to(device="cpu", dtype=torch.int64).contiguous()
        if ids.shape != (self.rows,):
            raise ValueError(f"one character id per stream: {self.rows} ids, got shape {tuple(ids.shape)}")
        step, ids_pointer = self.layer_kernel.step, ids.data_ptr()
        for before_ids, after_ids in self.compiled_layers:
            if step(*before_ids, ids_pointer, *after_ids):
                vocab = self.input_table.shape[0]
                raise IndexError(f"character ids must be in 0..{vocab - 1}, got {ids.min().item()}..{ids.max().item()}")
        return torch.addmm(self.head_bias, self.half_h[-1], self.head_weight_t, out=self.logits)
