"""A trained model as two ONNX graphs: one step for sampling, and a sequence for priming.

The graphs are written with ``onnx.helper`` from the weights themselves rather than traced from
PyTorch: ONNX has the three cells as operators (``LSTM``, ``GRU``, ``RNN``) and the translation is
a reordering of gate rows, so the files do not depend on which exporter a PyTorch release ships.

Both graphs take the full recurrent state and give it back, so a runtime carries it across calls
exactly as :class:`~charlstm.generation.generator.Generator` does::

    step:      ids (batch,)        h (layers, batch, hidden) [c]  ->  logits (batch, vocab)        h_out [c_out]
    sequence:  ids (batch, length) h (layers, batch, hidden) [c]  ->  logits (batch, length, vocab) h_out [c_out]

``c``/``c_out`` exist for LSTM cells only. The vocabulary, the model card and the sampling defaults
travel in each file's metadata (``charlstm.*`` keys, JSON values).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from ..base.errors import CharlstmError
from ..base.fsutil import carries_marker, check_output, write_output
from ..base.version import __version__
from ..model.network import CharLSTM
from ..training.checkpoint import LoadedModel
from .describe import model_card, sampling_defaults

if TYPE_CHECKING:
    import onnx
    import onnxruntime

OPSET = 17
PRODUCER = "charlstm"
INSTALL_HINT = "pip install 'charlstm[export]'"
# Rows of PyTorch's stacked gate matrices, reordered into ONNX's gate order.
_GATE_ORDER = {
    "lstm": (0, 3, 1, 2),  # PyTorch i, f, g, o -> ONNX i, o, f, c
    "gru": (1, 0, 2),  # PyTorch r, z, n -> ONNX z, r, h
    "rnn": (0,),
}
_OPERATOR = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}
# Largest difference from PyTorch the export accepts, relative to the largest magnitude compared:
# fp32 rounding of sums over a few hundred products, with room to spare, and far below a wrong gate.
PARITY_TOLERANCE = 1e-4

is_onnx_file = carries_marker(PRODUCER.encode())


def require_onnx() -> None:
    """Refuse in one line, before any work, when the optional ``export`` extra is missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as missing:
        raise CharlstmError(
            f"ONNX export needs onnx and onnxruntime ({missing.name} is not installed); install them with: {INSTALL_HINT}"
        ) from None


def sequence_path(step_path: Path) -> Path:
    """Where the priming graph goes: beside the step graph, ``model.onnx`` -> ``model.sequence.onnx``."""
    return step_path.with_name(f"{step_path.stem}.sequence{step_path.suffix or '.onnx'}")


def state_names(model: CharLSTM) -> tuple[list[str], list[str]]:
    """The state inputs and outputs: (h, c) for an LSTM, (h,) otherwise."""
    inputs = ["h", "c"] if model.is_lstm else ["h"]
    return inputs, [f"{name}_out" for name in inputs]


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def _gate_rows(tensor: torch.Tensor, cell: str) -> np.ndarray:
    """A PyTorch stacked gate matrix (or bias) with its gate blocks in ONNX's order."""
    blocks = _numpy(tensor).reshape(len(_GATE_ORDER[cell]), -1, *tensor.shape[1:])
    return np.concatenate([blocks[index] for index in _GATE_ORDER[cell]])


def export_metadata(loaded: LoadedModel) -> dict[str, str]:
    """What each file carries besides the graph: vocabulary, model card, sampling defaults (JSON values)."""
    state_in, _ = state_names(loaded.model)
    return {
        "charlstm.vocab": json.dumps(loaded.vocab.chars, ensure_ascii=False),
        "charlstm.model": json.dumps(model_card(loaded), ensure_ascii=False),
        "charlstm.sampling": json.dumps(sampling_defaults(loaded), ensure_ascii=False),
        "charlstm.inputs": "ids int64; " + ", ".join(state_in) + " float32 (layers, batch, hidden): the state, zeros to start",
    }


def build_graph(model: CharLSTM, sequence: bool, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """The step graph (``sequence=False``) or the priming graph of ``model``, weights inline."""
    from onnx import TensorProto, checker, helper, numpy_helper

    config = model.config
    cell, hidden, layers = config.cell, config.hidden_size, config.num_layers
    initializers: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def constant(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(value, name))
        return name

    def node(op: str, inputs: list[str], outputs: list[str], **attributes: Any) -> list[str]:
        nodes.append(helper.make_node(op, inputs, outputs, name=f"{op}_{len(nodes)}", **attributes))
        return outputs

    axis0, axis1 = constant("axis_0", np.array([0], np.int64)), constant("axis_1", np.array([1], np.int64))
    ids = "ids"
    if not sequence:
        ids = node("Unsqueeze", ["ids", axis1], ["ids_column"])[0]  # (batch,) -> (batch, 1)
    embedded = node("Gather", [constant("embedding", _numpy(model.embedding.weight)), ids], ["embedded"], axis=0)[0]
    x = node("Transpose", [embedded], ["time_major"], perm=[1, 0, 2])[0]  # ONNX's recurrent ops read (T, B, E)
    state_in, state_out = state_names(model)
    finals: dict[str, list[str]] = {name: [] for name in state_in}
    rnn = model.rnn
    for layer in range(layers):
        weights = [
            constant(f"W_{layer}", _gate_rows(getattr(rnn, f"weight_ih_l{layer}"), cell)[None]),
            constant(f"R_{layer}", _gate_rows(getattr(rnn, f"weight_hh_l{layer}"), cell)[None]),
            constant(f"B_{layer}", np.concatenate([_gate_rows(getattr(rnn, f"bias_ih_l{layer}"), cell),
                                                   _gate_rows(getattr(rnn, f"bias_hh_l{layer}"), cell)])[None]),
        ]
        start, end = constant(f"layer_{layer}", np.array([layer], np.int64)), constant(f"layer_{layer}_end", np.array([layer + 1], np.int64))
        starts = [node("Slice", [name, start, end, axis0], [f"{name}_{layer}"])[0] for name in state_in]
        outputs = [f"y_{layer}"] + [f"{name}_final_{layer}" for name in state_in]
        extra = {"linear_before_reset": 1} if cell == "gru" else {}  # PyTorch's GRU applies r after the product
        node(_OPERATOR[cell], [x, *weights, "", *starts], outputs, hidden_size=hidden, **extra)
        x = node("Squeeze", [outputs[0], axis1], [f"x_{layer + 1}"])[0]  # drop the direction axis
        for name, final in zip(state_in, outputs[1:]):
            finals[name].append(final)
    for name, out in zip(state_in, state_out):
        node("Concat", finals[name], [out], axis=0)
    top = node("Transpose", [x], ["batch_major"], perm=[1, 0, 2])[0]
    product = node("MatMul", [top, constant("head_weight_t", _numpy(model.head.weight).T.copy())], ["head_product"])[0]
    logits_name = "logits" if sequence else "logits_column"
    node("Add", [product, constant("head_bias", _numpy(model.head.bias))], [logits_name])
    if not sequence:
        node("Squeeze", [logits_name, axis1], ["logits"])

    ids_shape: list[str | int] = ["batch", "length"] if sequence else ["batch"]
    logits_shape: list[str | int] = ["batch", "length", config.vocab_size] if sequence else ["batch", config.vocab_size]
    state_shape: list[str | int] = [layers, "batch", hidden]
    graph = helper.make_graph(
        nodes,
        f"charlstm_{'sequence' if sequence else 'step'}",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ids_shape)]
        + [helper.make_tensor_value_info(name, TensorProto.FLOAT, state_shape) for name in state_in],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, logits_shape)]
        + [helper.make_tensor_value_info(name, TensorProto.FLOAT, state_shape) for name in state_out],
        initializers,
    )
    proto = helper.make_model(graph, producer_name=PRODUCER, producer_version=__version__,
                              opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = min(proto.ir_version, 8)  # readable by onnxruntime releases from 1.14 on
    helper.set_model_props(proto, {"charlstm.graph": "sequence" if sequence else "step", **(metadata or {})})
    checker.check_model(proto, full_check=True)
    return proto


def session(proto_bytes: bytes, threads: int = 1) -> onnxruntime.InferenceSession:
    """An onnxruntime session on ``threads`` threads that never spin while idle, so that a PyTorch loop
    measured beside it keeps its cores."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(proto_bytes, options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class OnnxParity:
    """The largest differences from PyTorch over a random prime, relative to the largest value compared."""

    streams: int
    primed_chars: int
    stepped_chars: int
    logits_difference: float
    state_difference: float

    @property
    def passed(self) -> bool:
        return max(self.logits_difference, self.state_difference) <= PARITY_TOLERANCE


def _relative_gap(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(ours - theirs).max() / max(1.0, float(np.abs(theirs).max())))


@torch.inference_mode()
def check_parity(model: CharLSTM, step_bytes: bytes, sequence_bytes: bytes, streams: int = 2,
                 primed_chars: int = 160, stepped_chars: int = 40, seed: int = 0) -> OnnxParity:
    """Run a random text through both graphs and through PyTorch: the sequence graph primes from a zero
    state, the step graph then carries the state one character at a time; every logit and state compared."""
    model = model.eval()
    generator = np.random.default_rng(seed)
    ids = generator.integers(0, model.config.vocab_size, size=(streams, primed_chars + stepped_chars), dtype=np.int64)
    state_in, _ = state_names(model)
    state = tuple(s.numpy() for s in model.init_state(streams, "cpu"))

    sequence_session, step_session = session(sequence_bytes), session(step_bytes)
    feed = {"ids": ids[:, :primed_chars], **dict(zip(state_in, state))}
    onnx_logits, *onnx_state = sequence_session.run(None, feed)
    torch_logits, torch_state = model(torch.from_numpy(ids[:, :primed_chars]), tuple(torch.from_numpy(s) for s in state))
    logits_gap = _relative_gap(onnx_logits, torch_logits.numpy())
    state_gap = max(_relative_gap(o, t.numpy()) for o, t in zip(onnx_state, torch_state))
    for position in range(primed_chars, primed_chars + stepped_chars):
        column = ids[:, position]
        onnx_logits, *onnx_state = step_session.run(None, {"ids": column, **dict(zip(state_in, onnx_state))})
        torch_logits, torch_state = model(torch.from_numpy(column[:, None]), torch_state)
        logits_gap = max(logits_gap, _relative_gap(onnx_logits, torch_logits[:, -1].numpy()))
        state_gap = max(state_gap, *(_relative_gap(o, t.numpy()) for o, t in zip(onnx_state, torch_state)))
    return OnnxParity(streams, primed_chars, stepped_chars, logits_gap, state_gap)


@dataclass(frozen=True)
class OnnxExport:
    """What ``export_onnx`` wrote and how closely the files follow PyTorch."""

    step_path: Path
    sequence_path: Path
    step_bytes: int
    sequence_bytes: int
    parity: OnnxParity


def export_onnx(loaded: LoadedModel, output: Path, force: bool = False) -> OnnxExport:
    """Write the step graph to ``output`` and the priming graph beside it, after checking both against PyTorch.

    Nothing is written unless onnxruntime's logits and states equal PyTorch's to fp32 rounding.
    """
    require_onnx()
    second = sequence_path(output)
    for path in (output, second):
        check_output(path, force, is_onnx_file)
    metadata = export_metadata(loaded)
    step_bytes = build_graph(loaded.model, sequence=False, metadata=metadata).SerializeToString()
    sequence_bytes = build_graph(loaded.model, sequence=True, metadata=metadata).SerializeToString()
    parity = check_parity(loaded.model, step_bytes, sequence_bytes)
    if not parity.passed:
        raise CharlstmError(
            f"the ONNX graphs differ from PyTorch by {max(parity.logits_difference, parity.state_difference):.2e} "
            f"(allowed {PARITY_TOLERANCE:.0e}); nothing was written: report this with the run's config.json"
        )
    write_output(output, step_bytes, force, is_onnx_file)
    write_output(second, sequence_bytes, force, is_onnx_file)
    return OnnxExport(output, second, len(step_bytes), len(sequence_bytes), parity)


def onnx_sampling_loop(model: CharLSTM, batch: int = 1, threads: int | None = None, seed: int = 0) -> Callable[[int], float]:
    """Sampling through onnxruntime's step graph, for ``charlstm bench``: each step runs the graph and
    draws by the exponential race (as charlstm's own draw does), carrying the state; the loop returns the
    seconds its ``length`` steps took."""
    runner = session(build_graph(model.eval(), sequence=False).SerializeToString(), threads or torch.get_num_threads())
    state_in, _ = state_names(model)
    generator = np.random.default_rng(seed)

    def run(length: int) -> float:
        start = time.perf_counter()
        ids = np.zeros(batch, np.int64)
        state = [np.zeros((model.config.num_layers, batch, model.config.hidden_size), np.float32) for _ in state_in]
        for _ in range(length):
            logits, *state = runner.run(None, {"ids": ids, **dict(zip(state_in, state))})
            ids = np.argmax(logits - np.log(generator.exponential(size=logits.shape)), axis=-1)
        return time.perf_counter() - start

    return run
