"""A trained model as one HTML file that writes in any browser, offline, with no server.

The page holds everything: the weights (base64 in a JSON block, float16 by default, or int8 with a
float32 scale per row, or float32), a hand-written JavaScript step for the three cells and a seeded
sampler (:mod:`charlstm.export.writer_script`), and a prompt box that streams characters as they are
drawn. Nothing is fetched: no framework, no CDN, so ``file://`` works.

The page carries its own proof: a continuation drawn at export time in Python, from the same rounded
weights with the same random numbers (mulberry32) and the same draw, which the page's ``generate``
must reproduce character for character.
"""

from __future__ import annotations

import base64
import copy
import html
import json
import math
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch

from ..base.errors import CharlstmError
from ..base.fsutil import carries_marker, check_output, write_output
from ..base.version import __version__
from ..model.network import CharLSTM
from ..training.checkpoint import LoadedModel
from .describe import model_card, sampling_defaults, training_line
from .writer_script import PAGE, SCRIPT

WeightFormat = Literal["float16", "int8", "float32"]
WEIGHT_FORMATS: tuple[WeightFormat, ...] = ("float16", "int8", "float32")
MARKER = "charlstm export html"
is_writer_page = carries_marker(MARKER.encode())

# The continuation the page must reproduce: long enough that a wrong step or draw shows at once.
REFERENCE_SETTINGS = {"prime": "", "length": 200, "temperature": 0.8, "seed": 1}


def _base64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()).decode("ascii")


def encode_tensor(tensor: torch.Tensor, weight_format: WeightFormat) -> tuple[dict[str, Any], torch.Tensor]:
    """A tensor as the page stores it, and the float32 values the page will compute with.

    Matrices take ``weight_format``; vectors (biases) stay float32, being a rounding error of the size.
    """
    values = tensor.detach().float().cpu()
    entry: dict[str, Any] = {"shape": list(values.shape)}
    if values.dim() < 2 or weight_format == "float32":
        entry.update(format="float32", data=_base64(values.numpy()))
        return entry, values
    if weight_format == "float16":
        half = values.half()
        entry.update(format="float16", data=_base64(half.numpy()))
        return entry, half.float()
    scales = values.abs().amax(dim=1) / 127
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    quantized = torch.round(values / scales[:, None]).clamp(-127, 127).to(torch.int8)
    entry.update(format="int8", data=_base64(quantized.numpy()), scales=_base64(scales.numpy()))
    return entry, quantized.float() * scales[:, None]


def page_model(model: CharLSTM, weight_format: WeightFormat) -> tuple[dict[str, dict[str, Any]], CharLSTM]:
    """Every tensor encoded for the page, and a copy of the model holding exactly what the page will read."""
    tensors: dict[str, dict[str, Any]] = {}
    rounded = copy.deepcopy(model).float().eval()
    with torch.no_grad():
        for name, parameter in rounded.named_parameters():
            tensors[name], values = encode_tensor(parameter, weight_format)
            parameter.copy_(values)
    return tensors, rounded


class Mulberry32:
    """The page's random numbers (Tommy Ettinger's mulberry32), bit for bit: uniforms in [0, 1)."""

    def __init__(self, seed: int):
        self.state = seed & 0xFFFFFFFF

    def __call__(self) -> float:
        def imul(a: int, b: int) -> int:
            return (a * b) & 0xFFFFFFFF

        self.state = (self.state + 0x6D2B79F5) & 0xFFFFFFFF
        t = self.state
        t = imul(t ^ (t >> 15), t | 1)
        t ^= (t + imul(t ^ (t >> 7), t | 61)) & 0xFFFFFFFF
        return ((t ^ (t >> 14)) & 0xFFFFFFFF) / 4294967296


def page_draw(logits: list[float], temperature: float, random: Callable[[], float], never: int | None) -> int:
    """The page's draw, step for step: softmax weights in doubles, the first id whose running sum passes u * total."""
    allowed = [v for v in range(len(logits)) if v != never]
    best = max(allowed, key=lambda v: logits[v])  # the first of equal maxima, as the page's strict comparison
    if temperature < 1e-6:
        return best
    weights = [0.0 if v == never else math.exp((logits[v] - logits[best]) / temperature) for v in range(len(logits))]
    target = random() * sum(weights)
    running = 0.0
    for v, weight in enumerate(weights):
        running += weight
        if running > target:
            return v
    return best


@torch.inference_mode()
def reference_text(rounded: CharLSTM, vocab_chars: list[str], sampling: dict[str, Any], prime: str, length: int,
                   temperature: float, seed: int) -> str:
    """What the page's ``generate`` writes, computed with PyTorch in float64 on the page's weights."""
    model = copy.deepcopy(rounded).double()
    index = {char: i for i, char in enumerate(vocab_chars)}
    never = sampling["never_draw"]
    text = unicodedata.normalize("NFC", sampling["lead_in"] + prime)  # as the page reads a prompt
    ids = [index[c] if c in index else never for c in text if c in index or never is not None]
    logits, state = model(torch.tensor([ids]), tuple(s.double() for s in model.init_state(1)))
    random = Mulberry32(seed)
    drawn = []
    for n in range(length):
        next_id = page_draw(logits[0, -1].tolist(), temperature, random, never)
        drawn.append(vocab_chars[next_id])
        if n + 1 < length:
            logits, state = model(torch.tensor([[next_id]]), state)
    return "".join(drawn)


def _json_in_script(value: Any) -> str:
    """JSON that cannot close the ``<script>`` element holding it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def writer_page(loaded: LoadedModel, weight_format: WeightFormat = "float16") -> str:
    """The whole page for ``loaded``, as text."""
    if weight_format not in WEIGHT_FORMATS:
        raise CharlstmError(f"weight format must be one of {', '.join(WEIGHT_FORMATS)}, not {weight_format!r}")
    tensors, rounded = page_model(loaded.model, weight_format)
    card = model_card(loaded)
    sampling = sampling_defaults(loaded)
    reference = dict(REFERENCE_SETTINGS)
    reference["text"] = reference_text(rounded, loaded.vocab.chars, sampling, **REFERENCE_SETTINGS)  # type: ignore[arg-type]
    model_json = {
        "config": loaded.model.config.to_dict(), "vocab": loaded.vocab.chars, "sampling": sampling, "card": card,
        "weight_format": weight_format, "tensors": tensors, "reference": reference,
    }
    return PAGE.format(
        marker=MARKER,
        title=html.escape(f"charlstm writer: {loaded.name}"),
        training=html.escape(training_line(card)),
        weight_format=weight_format,
        version=__version__,
        model_json=_json_in_script(model_json),
        script=SCRIPT,
    )


@dataclass(frozen=True)
class HtmlExport:
    path: Path
    size_bytes: int
    weight_format: WeightFormat


def export_html(loaded: LoadedModel, output: Path, weight_format: WeightFormat = "float16", force: bool = False) -> HtmlExport:
    """Write the single-file writer page for ``loaded`` to ``output``."""
    check_output(output, force, is_writer_page)
    page = writer_page(loaded, weight_format).encode("utf-8")
    write_output(output, page, force, is_writer_page)
    return HtmlExport(output, len(page), weight_format)
