"""How a timed run uses a CUDA GPU: the batch grown to fill the card, the model sized from what it will read.

The CPU defaults (32 streams of 64 characters) leave a data-centre GPU nearly idle: each cuDNN time step
is a (B x H) by (H x 4H) product, too small to fill the card until B is in the hundreds. So on CUDA the
rule measures instead of assuming: it doubles the streams, then the window, while training throughput
still rises by :data:`GROWTH_GAIN` and the card has the memory; it stops earlier where a larger batch
would leave the run too few optimiser steps or the corpus too few windows per pass. The model is then
chosen as on a CPU, from the characters the run will read at that speed, with the dropout that a wide
model reading a small corpus tens of times over needs.

Nothing here needs a GPU to be tested: the measurement comes in as a probe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from ..base.errors import CharlstmError
from ..base.runtime import Precision
from ..model.config import ModelConfig
from .config import TrainConfig
from .presets import ALL_PRESETS, DEFAULT_TIME_BUDGET, Preset
from .sizing import (
    MIN_CHARS,
    TRAINING_SHARE,
    RunChoices,
    choose_size,
    given,
    measure_speed,
)

# A doubled batch is kept only if it trains this much faster: less is noise, and a larger batch means fewer steps.
GROWTH_GAIN = 1.10
MAX_STREAMS, MAX_WINDOW = 1024, 256
# A timed run keeps at least this many optimiser steps: past that, more characters per step is the better trade.
MIN_STEPS = 2000
# A pass over the training split keeps at least this many windows, so a small corpus is not one batch.
MIN_WINDOWS_PER_PASS = 8
# The models a GPU may train, smallest first, and the characters each must read to beat the one before.
GPU_LADDER = ("medium", "large", "xl")
GPU_MIN_CHARS = {**MIN_CHARS, "xl": 100_000_000}
# (passes over the corpus, dropout): a wide model reading a small text many times over overfits without it.
DROPOUT_BY_EPOCHS = ((60.0, 0.25), (25.0, 0.2), (6.0, 0.1))


class ShapeProbe(Protocol):
    """Training characters per second of a preset at a batch shape; None where it runs out of memory."""

    def __call__(self, size: str, batch_size: int, seq_len: int, cudnn_benchmark: bool = True) -> float | None: ...


@dataclass(frozen=True)
class BatchTrial:
    batch_size: int
    seq_len: int
    chars_per_sec: float | None  # None: out of memory


@dataclass(frozen=True)
class BatchChoice:
    """The batch shape a preset trains at, and the measurements that chose it."""

    batch_size: int
    seq_len: int
    chars_per_sec: float | None
    trials: tuple[BatchTrial, ...]


def _fits_corpus(batch_size: int, seq_len: int, train_chars: int) -> bool:
    return batch_size * seq_len * MIN_WINDOWS_PER_PASS <= train_chars


def _keeps_steps(batch_size: int, seq_len: int, speed: float, seconds: float | None) -> bool:
    return seconds is None or seconds * speed / (batch_size * seq_len) >= MIN_STEPS


def grow_batch(probe: Callable[[int, int], float | None], start: tuple[int, int], train_chars: int,
               seconds: float | None, grow_streams: bool = True, grow_window: bool = True) -> BatchChoice:
    """Double the streams, then the window, while throughput rises by GROWTH_GAIN, memory lasts, the corpus
    has MIN_WINDOWS_PER_PASS windows per pass and ``seconds`` of training keep MIN_STEPS steps.

    Streams first: they widen every product, while a longer window only lengthens the sequential loop."""
    batch_size, seq_len = start
    speed = probe(batch_size, seq_len)
    trials = [BatchTrial(batch_size, seq_len, speed)]
    axes = [axis for axis, wanted in (("streams", grow_streams), ("window", grow_window)) if wanted]
    for axis in axes:
        while speed is not None:
            wider = (batch_size * 2, seq_len) if axis == "streams" else (batch_size, seq_len * 2)
            if wider[0] > MAX_STREAMS or wider[1] > MAX_WINDOW or not _fits_corpus(*wider, train_chars):
                break
            measured = probe(*wider)
            trials.append(BatchTrial(*wider, measured))
            if measured is None or measured < speed * GROWTH_GAIN or not _keeps_steps(*wider, measured, seconds):
                break
            (batch_size, seq_len), speed = wider, measured
    return BatchChoice(batch_size, seq_len, speed, tuple(trials))


def choose_gpu_size(corpus_chars: int, budget_chars: Callable[[str], float]) -> str:
    """The CPU rule on the GPU ladder: the largest model that reads enough characters to beat the smaller one."""
    return choose_size(corpus_chars, budget_chars, first="small", ladder=GPU_LADDER, min_chars=GPU_MIN_CHARS)


def gpu_dropout(preset: Preset, epochs: float) -> float:
    """The preset's dropout, raised step by step as the run reads its corpus more times over."""
    for passes, dropout in DROPOUT_BY_EPOCHS:
        if epochs > passes:
            return max(preset.dropout, dropout)
    return preset.dropout


def choose_cudnn_benchmark(speed: Callable[[bool], float | None]) -> bool:
    """cuDNN's autotuner on or off, whichever trained faster at the chosen shape (``speed(flag)``)."""
    on, off = speed(True), speed(False)
    return off is None or (on is not None and on >= off)


@dataclass(frozen=True)
class GpuSizing:
    """What the CUDA rule chose for a run and the measurements behind it (shown when the run starts)."""

    size: str
    chars: float
    epochs: float
    chars_per_sec: float
    batch: BatchChoice
    cudnn_benchmark: bool

    def describe(self) -> str:
        tried = ", ".join(
            f"{t.batch_size}x{t.seq_len} {'out of memory' if t.chars_per_sec is None else _rate(t.chars_per_sec)}"
            for t in self.batch.trials
        )
        return (f"about {_count(self.chars)} characters, {self.epochs:.1f} epochs of this corpus at "
                f"{_rate(self.chars_per_sec)} measured; batch {self.batch.batch_size}x{self.batch.seq_len} "
                f"(tried {tried}); cuDNN autotuner {'on' if self.cudnn_benchmark else 'off'}")


def _count(value: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}"


def _rate(chars_per_sec: float) -> str:
    return f"{_count(chars_per_sec)} chars/s"


def uses_gpu_rule(choices: RunChoices, device_type: str) -> bool:
    """A timed run on CUDA whose model shape is a preset (named or chosen): a hand-given shape keeps the
    plain rule, and a run budgeted in steps or epochs keeps its batch, so that a step means what it says."""
    by_hand = choices.layers is not None or choices.hidden is not None or choices.emb is not None
    return device_type == "cuda" and choices.is_timed() and not by_hand


def choose_gpu_configs(choices: RunChoices, corpus_chars: int, vocab_size: int,
                       probe: ShapeProbe) -> tuple[ModelConfig, TrainConfig, GpuSizing]:
    """The configs of a timed CUDA run: for each candidate model the batch grown by measurement, then the
    largest model that reads enough characters at its measured speed (the rule of :mod:`.sizing`)."""
    time_budget = choices.time_budget if choices.time_budget is not None else DEFAULT_TIME_BUDGET
    seconds = time_budget * TRAINING_SHARE
    train_chars = int(corpus_chars * (1.0 - choices.val_frac))
    grown: dict[str, BatchChoice] = {}

    def batch_for(name: str) -> BatchChoice:
        if name not in grown:
            preset = ALL_PRESETS[name]
            start = (given(choices.batch_size, preset.batch_size), given(choices.seq_len, preset.seq_len))
            grown[name] = grow_batch(lambda b, t: probe(name, b, t), start, train_chars, seconds,
                                     grow_streams=choices.batch_size is None, grow_window=choices.seq_len is None)
        return grown[name]

    def budget_chars(name: str) -> float:
        return seconds * (batch_for(name).chars_per_sec or 0.0)

    size = choices.size or choose_gpu_size(corpus_chars, budget_chars)
    preset, batch = ALL_PRESETS[size], batch_for(size)
    if batch.chars_per_sec is None:
        raise CharlstmError(f"the {size} model does not fit in this GPU's memory at batch {batch.batch_size}x"
                            f"{batch.seq_len}; use a smaller --size, --batch-size or --seq-len")
    benchmark = choose_cudnn_benchmark(lambda flag: probe(size, batch.batch_size, batch.seq_len, flag))
    chars = seconds * batch.chars_per_sec
    epochs = chars / max(1, train_chars)
    train_config = TrainConfig(
        batch_size=batch.batch_size, seq_len=batch.seq_len, time_budget=time_budget, lr=given(choices.lr, preset.lr),
        eval_every=choices.eval_every, val_frac=choices.val_frac, seed=choices.seed, device=choices.device,
        precision=choices.precision, on_nan=choices.on_nan,
    )
    model_config = ModelConfig(
        vocab_size=vocab_size, emb_size=preset.emb_size, hidden_size=preset.hidden_size,
        num_layers=preset.num_layers, cell=choices.cell,  # type: ignore[arg-type]
        dropout=given(choices.dropout, preset.dropout if choices.size else gpu_dropout(preset, epochs)),
    )
    return model_config, train_config, GpuSizing(size, chars, epochs, batch.chars_per_sec, batch, benchmark)


def cuda_shape_probe(vocab_size: int, device: str, precision: Precision,
                     on_measure: Callable[[str], None] | None = None) -> ShapeProbe:
    """The real probe: a few training steps of the preset at that shape on the GPU (out of memory: None)."""
    import torch

    def probe(size: str, batch_size: int, seq_len: int, cudnn_benchmark: bool = True) -> float | None:
        if on_measure is not None:
            on_measure(f"{size} at batch {batch_size}x{seq_len}")
        torch.backends.cudnn.benchmark = cudnn_benchmark
        try:
            return measure_speed(size, vocab_size, device, precision, batch_size=batch_size, seq_len=seq_len)
        except torch.cuda.OutOfMemoryError:
            return None
        finally:
            torch.cuda.empty_cache()

    return probe


def apply_cuda_settings(cudnn_benchmark: bool) -> None:
    """The process-wide settings a CUDA run trains under: the autotuner as measured, and TF32 for any fp32
    products (a run in bf16 autocast has few; one in fp32 gains several times from the tensor cores)."""
    import torch

    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
