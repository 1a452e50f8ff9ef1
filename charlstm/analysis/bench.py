"""How fast this machine trains and samples, measured against plain PyTorch in the same process.

Every figure is a measurement of this run: charlstm's own training loop
against a bare ``nn.LSTM`` loop of the same shape and precision, the
machine's matrix-product peak (for MFU), the fused sampler against a
straightforward per-character loop, the time to a first character, and the
memory-bandwidth floor on one sampling step. The pairs are interleaved in
rounds, so a neighbour's load on a shared machine falls on both sides; the
ratios are what carries over between machines, the raw rates are not.

On a CUDA GPU (``device="cuda"``) both loops run there, at a batch wide enough
to fill the card (:data:`CUDA_BATCH`), and each timing ends with a device
synchronisation; the bench also checks that cuDNN runs the LSTM in bf16 under
autocast rather than quietly in fp32, and times batch-1 sampling on the CPU's
fused step beside the GPU's, the measurement behind ``sample --device auto``.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..base.runtime import Precision, autocast, resolve_device, resolve_precision
from ..data.corpus import Corpus, Vocab
from ..generation.controls import MAX_STOPS, GenerationRequest
from ..generation.generator import Generator, SamplingOptions, sampling_precision
from ..model.config import ModelConfig
from ..model.network import CharLSTM
from ..model.stepper import LSTMStepper
from ..training.config import TrainConfig
from ..training.presets import ALL_PRESETS
from ..training.reporting import SilentReporter, StepStats
from ..training.trainer import Trainer

BENCH_VOCAB_SIZE = 65
"""Tiny Shakespeare's alphabet size: the head's width in the benchmark model."""

DEFAULT_SIZE = "medium"
# On a GPU: the model a timed run on tiny Shakespeare trains, at a batch that fills a data-centre card.
CUDA_SIZE, CUDA_BATCH = "xl", (256, 128)
CUDA_STEPS, CUDA_MATMUL_SIZE, CUDA_SAMPLE_BATCH = 240, 8192, 64


def default_size() -> str:
    """The shape a default ten-minute run picks for tiny Shakespeare on a CPU with AMX (2x384)."""
    return DEFAULT_SIZE


@dataclass(frozen=True)
class BenchConfig:
    """What to measure: the model shape (a preset), how long, in which precision."""

    size: str
    steps: int = 24
    precision: Precision = "auto"
    rounds: int = 4
    sample_chars: int = 240
    sample_batch: int = 32
    prime_chars: int = 200
    first_char_tries: int = 5
    matmul_size: int = 2048
    device: str = "cpu"
    batch: tuple[int, int] | None = None  # (streams, window); default the preset's

    def __post_init__(self) -> None:
        if self.size not in ALL_PRESETS:
            raise ValueError(f"size must be one of {', '.join(ALL_PRESETS)}, not {self.size!r}")
        if self.steps < 1 or self.rounds < 1:
            raise ValueError("steps and rounds must be at least 1")

    @classmethod
    def for_device(cls, device: str, size: str | None = None, steps: int | None = None,
                   precision: Precision = "auto") -> "BenchConfig":
        """The defaults of ``charlstm bench``: a CPU-sized run, or on CUDA one sized to fill the card."""
        if device == "cuda":
            return cls(size=size or CUDA_SIZE, steps=steps or CUDA_STEPS, precision=precision, device=device,
                       batch=CUDA_BATCH, matmul_size=CUDA_MATMUL_SIZE, sample_batch=CUDA_SAMPLE_BATCH)
        return cls(size=size or default_size(), steps=steps or cls.steps, precision=precision, device=device)

    def batch_shape(self) -> tuple[int, int]:
        preset = ALL_PRESETS[self.size]
        return self.batch or (preset.batch_size, preset.seq_len)


@dataclass
class TrainingSpeed:
    charlstm_chars_per_sec: float
    bare_chars_per_sec: float
    ratio: float
    flops_per_char: float
    charlstm_mfu: float
    bare_mfu: float


@dataclass
class MatmulPeak:
    size: int
    fp32_flops_per_sec: float
    bf16_flops_per_sec: float


@dataclass
class SamplingSpeed:
    batch: int
    naive_chars_per_sec: float
    charlstm_chars_per_sec: float
    ratio: float
    charlstm_device: str = ""  # where charlstm's side ran, when not where the plain loop did
    precision: str = "fp32"


@dataclass
class OtherRuntimeSpeed:
    """Batch-1 sampling steps per second through another runtime, beside charlstm's fused step and the plain
    PyTorch loop, the three interleaved in the same rounds."""

    runtime: str
    runtime_steps_per_sec: float
    charlstm_steps_per_sec: float
    naive_steps_per_sec: float


@dataclass
class StopSpeed:
    """A batch whose first half stops early on stop strings, against the same batch with none."""

    batch: int
    stopped_early: int
    no_stop_steps_per_sec: float
    stop_steps_per_sec: float
    ratio: float


@dataclass
class MemoryBound:
    weight_bytes: int
    bandwidth_bytes_per_sec: float
    bound_steps_per_sec: float
    measured_steps_per_sec: float
    fraction_of_bound: float


@dataclass
class LstmPrecision:
    """Whether cuDNN ran the LSTM in bf16 under autocast, and what that bought over fp32."""

    output_dtype: str
    fp32_chars_per_sec: float
    bf16_chars_per_sec: float
    speedup: float


@dataclass
class BenchResult:
    size: str
    model: dict[str, Any]
    parameters: int
    batch_size: int
    seq_len: int
    precision: str
    threads: int
    train: TrainingSpeed
    peak: MatmulPeak
    sampling: list[SamplingSpeed]
    stops: StopSpeed
    sampling_precision: str
    sampling_step: str  # how the sampling steps run: the compiled int8 layer step, or PyTorch's operations
    cpu_capability: str
    prime_chars: int
    first_char_ms: float
    stepper_setup_ms: float
    memory: MemoryBound
    device: str = "cpu"
    device_name: str = ""
    versions: dict[str, str] | None = None
    lstm_precision: LstmPrecision | None = None
    other_runtime: OtherRuntimeSpeed | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def training_flops_per_char(config: ModelConfig) -> float:
    """Forward + backward matrix-product FLOPs per character (backward costs about twice the forward).

    Per layer an LSTM step multiplies [x | h] (in + H) by its 4H gate rows;
    the head multiplies H by V. Element-wise work and the embedding are left out.
    """
    gates = 4 if config.cell == "lstm" else 3 if config.cell == "gru" else 1
    forward = 0.0
    for layer in range(config.num_layers):
        inputs = config.emb_size if layer == 0 else config.hidden_size
        forward += 2 * gates * config.hidden_size * (inputs + config.hidden_size)
    forward += 2 * config.hidden_size * config.vocab_size
    return 3 * forward


def synchronizer(device: torch.device) -> Callable[[], None]:
    """What makes a timing honest on this device: on CUDA a kernel launch returns before the work is done."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def _best_seconds(run: Callable[[], object], repeats: int, sync: Callable[[], None] = lambda: None) -> float:
    run()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def measure_matmul_peak(size: int = 2048, repeats: int = 4, device: torch.device = torch.device("cpu"),
                        slow_product: float = 0.1) -> MatmulPeak:
    """The best FLOP rate of square products in fp32 and bf16: the denominator of MFU.

    Each dtype's products grow from 256² towards ``size``² only while one takes under ``slow_product``
    seconds: a CPU that emulates bf16 (AVX2 only: ~0.1 GFLOP/s) would otherwise spend a quarter of an
    hour on the 2048² ones, and its peak is long reached at a smaller size."""
    sync = synchronizer(device)
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        side = min(256, size)
        while True:
            a = torch.randn(side, side, device=device).to(dtype)
            b = torch.randn(side, side, device=device).to(dtype)
            out = torch.empty(side, side, dtype=dtype, device=device)
            seconds = _best_seconds(lambda: torch.mm(a, b, out=out), repeats, sync)
            rates[dtype] = max(rates.get(dtype, 0.0), 2 * side**3 / seconds)
            if side >= size or seconds > slow_product:
                break
            side = min(size, side * 2)
    return MatmulPeak(size, rates[torch.float32], rates[torch.bfloat16])


def measure_read_bandwidth(num_bytes: int, repeats: int = 20, device: torch.device = torch.device("cpu")) -> float:
    """Bytes per second read by summing a buffer of ``num_bytes``: what streaming the weights can reach."""
    buffer = torch.ones(max(1, num_bytes // 4), device=device)
    return buffer.numel() * 4 / _best_seconds(buffer.sum, repeats, synchronizer(device))


def bench_vocab(vocab_size: int = BENCH_VOCAB_SIZE) -> Vocab:
    return Vocab([chr(code) for code in range(33, 33 + vocab_size)])


def bench_text(num_chars: int, vocab: Vocab, seed: int = 0) -> str:
    """Random text over ``vocab``: throughput does not depend on what the text says."""
    return "".join(np.random.default_rng(seed).choice(np.array(vocab.chars), num_chars))


class _StepClock(SilentReporter):
    """A trainer reporter that notes when the first and the last step end (after the device finished them),
    so the timing covers the whole loop without adding a wait to the steps between."""

    def __init__(self, last_step: int, sync: Callable[[], None]) -> None:
        self.last_step, self.sync = last_step, sync
        self.step_ends: list[float] = []

    def step(self, stats: StepStats) -> None:
        if stats.step in (1, self.last_step):
            self.sync()
            self.step_ends.append(time.perf_counter())


def _time_charlstm_training(corpus: Corpus, model_config: ModelConfig, train_config: TrainConfig) -> float:
    """Seconds for charlstm's Trainer.train() loop from the end of its first step to the end of its last."""
    clock = _StepClock(train_config.steps or 1, synchronizer(resolve_device(train_config.device)))
    with tempfile.TemporaryDirectory() as run_dir:
        Trainer(corpus, model_config, train_config, Path(run_dir), clock).train()
    return clock.step_ends[-1] - clock.step_ends[0]


def _time_bare_training(corpus: Corpus, model_config: ModelConfig, train_config: TrainConfig, precision: str) -> float:
    """Seconds for the same steps in plain PyTorch: embedding, nn.LSTM (cuDNN's on a GPU), linear,
    cross-entropy, AdamW."""
    torch.manual_seed(train_config.seed)
    device = resolve_device(train_config.device)
    sync = synchronizer(device)
    batch, seq_len = train_config.batch_size, train_config.seq_len
    embedding = torch.nn.Embedding(model_config.vocab_size, model_config.emb_size).to(device)
    lstm = torch.nn.LSTM(model_config.emb_size, model_config.hidden_size, model_config.num_layers,
                         batch_first=True, dropout=model_config.dropout if model_config.num_layers > 1 else 0.0).to(device)
    head = torch.nn.Linear(model_config.hidden_size, model_config.vocab_size).to(device)
    params = [*embedding.parameters(), *lstm.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=train_config.lr)
    ids = torch.from_numpy(corpus.ids[: batch * (seq_len + 1)].astype(np.int64)).view(batch, seq_len + 1).to(device)
    x, y = ids[:, :-1], ids[:, 1:]
    state = tuple(torch.zeros(model_config.num_layers, batch, model_config.hidden_size, device=device) for _ in range(2))
    step_ends = []
    steps = train_config.steps or 1
    for step in range(steps):
        with autocast(device, precision):
            output, state = lstm(embedding(x), state)
            logits = head(F.dropout(output, model_config.dropout))
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state = tuple(s.detach() for s in state)
        if step in (0, steps - 1):
            sync()
            step_ends.append(time.perf_counter())
    return step_ends[-1] - step_ends[0]


def measure_training(config: BenchConfig, model_config: ModelConfig, precision: str, peak: MatmulPeak) -> TrainingSpeed:
    """Both loops in alternating rounds; each round's first step (warm-up) is not timed."""
    preset = ALL_PRESETS[config.size]
    batch, seq_len = config.batch_shape()
    vocab = bench_vocab(model_config.vocab_size)
    corpus = Corpus.from_text(bench_text(4 * batch * seq_len + 1, vocab), source="bench", vocab=vocab)
    timed = {"charlstm": 0.0, "bare": 0.0}
    steps_done = 0
    for round_index in range(config.rounds):
        steps = config.steps // config.rounds + (1 if round_index < config.steps % config.rounds else 0)
        if steps == 0:
            continue
        train_config = TrainConfig(batch_size=batch, seq_len=seq_len, steps=steps + 1, lr=preset.lr, val_frac=0.0,
                                   device=config.device, precision=precision, preview_chars=0)  # type: ignore[arg-type]
        timed["bare"] += _time_bare_training(corpus, model_config, train_config, precision)
        timed["charlstm"] += _time_charlstm_training(corpus, model_config, train_config)
        steps_done += steps
    chars = steps_done * batch * seq_len
    flops = training_flops_per_char(model_config)
    peak_rate = peak.bf16_flops_per_sec if precision == "bf16" else peak.fp32_flops_per_sec
    charlstm_rate, bare_rate = chars / timed["charlstm"], chars / timed["bare"]
    return TrainingSpeed(charlstm_rate, bare_rate, charlstm_rate / bare_rate, flops,
                         charlstm_rate * flops / peak_rate, bare_rate * flops / peak_rate)


def naive_sampling_loop(model: CharLSTM, batch: int, seed: int = 0) -> Callable[[int], float]:
    """The straightforward way: embedding, one ``nn.LSTM`` step, linear, softmax, ``torch.multinomial``.

    The loop returns the seconds its ``length`` steps took.
    """
    device = model.head.weight.device
    rng = torch.Generator(device=device).manual_seed(seed)
    sync = synchronizer(device)

    @torch.no_grad()
    def run(length: int) -> float:
        start = time.perf_counter()
        ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
        state = model.init_state(batch)
        for _ in range(length):
            output, state = model.rnn(model.embedding(ids), state)
            probs = torch.softmax(model.head(output[:, -1]), dim=-1)
            ids = torch.multinomial(probs, 1, generator=rng)
        sync()
        return time.perf_counter() - start

    return run


def charlstm_sampling_loop(generator: Generator, batch: int) -> Callable[[int], float]:
    """``Generator.stream`` at temperature 1, timed from the first character on: the seconds of ``length``
    steps (the last feeds the final character in, as a stream always does), drawing one character per
    stream after each but the last (priming is measured apart, by ``measure_first_char``)."""

    def run(length: int) -> float:
        stream = generator.stream("", length, SamplingOptions(), num_samples=batch, seed=0)
        next(stream)
        start = time.perf_counter()
        for _ in stream:
            pass
        return time.perf_counter() - start

    return run


def alternating_rates(loops: dict[str, Callable[[int], float]], length: int, rounds: int) -> dict[str, float]:
    """Steps per second of each loop, run in alternating rounds after one short warm-up each."""
    for run in loops.values():
        run(max(2, length // 10))
    seconds = dict.fromkeys(loops, 0.0)
    for _ in range(rounds):
        for name, run in loops.items():
            seconds[name] += run(length)
    return {name: rounds * length / spent for name, spent in seconds.items()}


def measure_sampling(model: CharLSTM, generator: Generator, batch: int, length: int, rounds: int) -> SamplingSpeed:
    """The Generator against the plain loop on the model's device (the Generator may run elsewhere: then
    the figure says which path pays on a GPU box)."""
    rates = alternating_rates({"naive": naive_sampling_loop(model, batch), "charlstm": charlstm_sampling_loop(generator, batch)},
                   length, rounds)
    elsewhere = generator.device.type if generator.device.type != model.head.weight.device.type else ""
    return SamplingSpeed(batch, rates["naive"] * batch, rates["charlstm"] * batch, rates["charlstm"] / rates["naive"],
                         charlstm_device=elsewhere, precision=generator.precision)


def measure_lstm_precision(model_config: ModelConfig, batch: tuple[int, int], device: torch.device,
                           repeats: int = 5) -> LstmPrecision:
    """Forward and backward of the bare ``nn.LSTM`` in fp32 and under bf16 autocast, and the dtype its output
    comes out in: cuDNN may fall back to fp32 for some shapes, and only a measurement shows it."""
    lstm = torch.nn.LSTM(model_config.emb_size, model_config.hidden_size, model_config.num_layers,
                         batch_first=True).to(device)
    inputs = torch.randn(*batch, model_config.emb_size, device=device)
    dtype = ""

    def step(precision: str) -> None:
        nonlocal dtype
        with autocast(device, precision):
            output, _ = lstm(inputs)
        dtype = str(output.dtype).removeprefix("torch.")
        output.float().sum().backward()

    sync = synchronizer(device)
    fp32 = _best_seconds(lambda: step("fp32"), repeats, sync)
    bf16 = _best_seconds(lambda: step("bf16"), repeats, sync)
    chars = batch[0] * batch[1]
    return LstmPrecision(dtype, chars / fp32, chars / bf16, fp32 / bf16)


def measure_stops(generator: Generator, batch: int, length: int, rounds: int) -> StopSpeed:
    """Steps per second of a batch with no stop strings and of the same batch (same seed) with stops that end
    its first half midway: each of those rows stops on a four-character piece of its own unstopped text."""
    plain = GenerationRequest("", length, num_samples=batch, seed=0)
    texts = [result.text for result in generator.complete(plain)]
    early = min(batch // 2, MAX_STOPS)
    stopping = GenerationRequest("", length, num_samples=batch, seed=0,
                                 stop=tuple(dict.fromkeys(text[length // 2 : length // 2 + 4] for text in texts[:early])))
    stopped_early = sum(result.finish_reason == "stop" for result in generator.complete(stopping))

    def timed(request: GenerationRequest) -> Callable[[int], float]:
        def run(_: int) -> float:
            start = time.perf_counter()
            generator.complete(request)
            return time.perf_counter() - start
        return run

    rates = alternating_rates({"plain": timed(plain), "stops": timed(stopping)}, length, rounds)
    return StopSpeed(batch, stopped_early, rates["plain"], rates["stops"], rates["stops"] / rates["plain"])


def measure_first_char(generator: Generator, prime: str, tries: int) -> float:
    """Median seconds from asking for a sample to holding its first character, after reading ``prime``."""
    times = []
    for attempt in range(tries):
        start = time.perf_counter()
        next(generator.stream(prime, 1, SamplingOptions(), seed=attempt))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def device_description(device: torch.device) -> tuple[str, dict[str, str]]:
    """The GPU's name and the torch/CUDA/cuDNN versions a figure was taken with (empty on a CPU)."""
    if device.type != "cuda":
        return "", {"torch": torch.__version__}
    cudnn = torch.backends.cudnn.version()
    return torch.cuda.get_device_name(device), {"torch": torch.__version__, "cuda": str(torch.version.cuda),
                                                "cudnn": str(cudnn)}


SamplingLoopMaker = Callable[[CharLSTM], Callable[[int], float]]
"""Makes a batch-1 sampling loop of another runtime for a model; the loop returns the seconds ``length`` steps took."""


def run_bench(config: BenchConfig, on_phase: Callable[[str], None] = lambda phase: None,
              other_runtime: tuple[str, SamplingLoopMaker] | None = None) -> BenchResult:
    """Everything ``charlstm bench`` shows, measured now on this machine's CPU or its CUDA GPU; with
    ``other_runtime`` (its name and loop maker, e.g. onnxruntime's from the export layer), a batch-1 row
    for it too."""
    device = resolve_device(config.device)  # one clear line where the device is absent
    preset = ALL_PRESETS[config.size]
    model_config = preset.model_config(BENCH_VOCAB_SIZE)
    precision = resolve_precision(config.precision, device)
    on_phase("matrix-product peak")
    peak = measure_matmul_peak(config.matmul_size, device=device)
    on_phase("training: charlstm against a bare nn.LSTM loop")
    train = measure_training(config, model_config, precision, peak)
    lstm_precision = None
    if device.type == "cuda":
        on_phase("cuDNN's LSTM in fp32 and under bf16 autocast")
        lstm_precision = measure_lstm_precision(model_config, config.batch_shape(), device)

    torch.manual_seed(0)
    model = CharLSTM(model_config).to(device)
    vocab = bench_vocab(model_config.vocab_size)
    step_precision = sampling_precision(config.precision, device, model_config.hidden_size)
    generator = Generator(model, vocab, device=device, precision=step_precision)
    generators = [generator]
    if step_precision != precision:  # what the chosen arithmetic gains over the training precision's, side by side
        generators.append(Generator(model, vocab, device=device, precision=precision))  # type: ignore[arg-type]
    sampling = []
    for batch in (1, config.sample_batch):
        for each in generators:
            on_phase(f"sampling at batch {batch} ({each.precision}): Generator against a per-character nn.LSTM loop")
            sampling.append(measure_sampling(model, each, batch, config.sample_chars, config.rounds))
    on_phase(f"sampling at batch {config.sample_batch} with half the rows stopping early, against no stops")
    stops = measure_stops(generator, config.sample_batch, config.sample_chars, config.rounds)
    if device.type == "cuda":
        on_phase("sampling at batch 1 on the CPU's fused step against the GPU's plain loop")
        on_cpu = Generator(copy.deepcopy(model).cpu(), vocab, device="cpu", precision="auto")
        sampling.append(measure_sampling(model, on_cpu, 1, config.sample_chars, config.rounds))
    other = None
    if other_runtime is not None:
        name, make_loop = other_runtime
        on_phase(f"sampling at batch 1: {name} against the fused step and the nn.LSTM loop")
        rates = alternating_rates({"other": make_loop(model), "charlstm": charlstm_sampling_loop(generator, 1),
                        "naive": naive_sampling_loop(model, 1)}, config.sample_chars, config.rounds)
        other = OtherRuntimeSpeed(name, rates["other"], rates["charlstm"], rates["naive"])
    on_phase(f"first character after a {config.prime_chars}-character prime")
    first_char = measure_first_char(generator, bench_text(config.prime_chars, vocab), config.first_char_tries)
    setup_times = []
    for _ in range(3):
        start = time.perf_counter()
        stepper = LSTMStepper(model, 1, generator.precision)
        setup_times.append(time.perf_counter() - start)
    on_phase("memory bandwidth")
    bandwidth = measure_read_bandwidth(stepper.streamed_bytes, device=device)
    bound = bandwidth / stepper.streamed_bytes
    measured_steps = sampling[0].charlstm_chars_per_sec
    memory = MemoryBound(stepper.streamed_bytes, bandwidth, bound, measured_steps, measured_steps / bound)
    name, versions = device_description(device)
    batch_size, seq_len = config.batch_shape()
    return BenchResult(
        size=config.size,
        model=model_config.to_dict(),
        parameters=model.num_parameters(),
        batch_size=batch_size,
        seq_len=seq_len,
        precision=precision,
        threads=torch.get_num_threads(),
        train=train,
        peak=peak,
        sampling=sampling,
        stops=stops,
        sampling_precision=generator.precision,
        sampling_step=stepper.step_description,
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        prime_chars=config.prime_chars,
        first_char_ms=first_char * 1e3,
        stepper_setup_ms=statistics.median(setup_times) * 1e3,
        memory=memory,
        device=device.type,
        device_name=name,
        versions=versions,
        lstm_precision=lstm_precision,
        other_runtime=other,
    )
