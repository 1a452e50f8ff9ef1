"""How big a model a run can afford, decided in characters, not minutes.

A budget in minutes means four times fewer characters on a CPU four times slower, and a model that
wins when it reads 9M characters loses when it reads 2M. So a timed run measures how fast this
machine trains each candidate shape (a few steps, cached per machine for a day) and sizes the model
from the characters it will actually process, against the corpus it will read them from. Runs
budgeted in steps or epochs know their characters without measuring.

A probe taken while other programs keep the machine busy is used for that run only, never remembered:
one taken beside a test suite once read 0.4k chars/s on a machine that then trained at 10.5k, chose the
smaller shape, and would have chosen it for every run of the day.

The thresholds come from tiny Shakespeare runs (benchmarks/RESULTS.md). A run that reads few
characters learns most from many small steps: one layer, 16-stream batches (1x192, then 1x384 once it
can read about 2M characters) beat 2x256 at 30 s, 1 m and 3 m on a 2-core AVX2 CPU. 1x512 takes over
from 1x384 once it can read about 7M: ten minutes on that CPU read 7.6-8.3M with it and gave 1.4643 to
1.4678 on tiny Shakespeare over three runs (1x384: 1.4644 to 1.4805) and tied on the default corpus (1.1790
and 1.1991 against 1.1828 and 1.1910). 2x384, with its
32-stream batches, pays once it can read about 8M characters: on the AVX2 CPU, ten minutes of the
default corpus gave 1.2253 with 2x384 (5.6M characters expected, 4.7M read in 2,319 steps) against 1.1910
with 1x384 (8.8M in 11,574 steps); on an AVX512 CPU in fp32, ten minutes of it gave 1.1807 with 2x384 (6.8M
read) against 1.1671 with 1x512 (11.6M, 2.7 passes). Where the 1x512 would read a small corpus more than
about nine times over, it learns the text by heart, and the 2x384 takes over from 6.5M: on the AVX512 CPU in
fp32, ten minutes of tiny Shakespeare gave 1.4647, 1.4678 and 1.4690 with 2x384 (6.6-7.4M read) against
1.4745, 1.4777 and 1.4782 with 1x512 (11.5-12.2M: as many passes). On a CPU with AMX ten minutes read 17.8M
with 2x384 (1.1054). 2x512 pays only past about 30M; a corpus read more than about six times over needs
dropout, and more than twelve times over, more of it.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, fields
from typing import Any, Callable

from ..base.fsutil import atomic_write_text, user_dir
from ..base.runtime import BusyElsewhere, Precision, threads_for
from ..model.config import ModelConfig
from .config import NanPolicy, TrainConfig
from .presets import ALL_PRESETS, DEFAULT_TIME_BUDGET, PRESETS, Preset

# Characters a preset must be able to read within the budget before it is chosen over the rung below.
MIN_CHARS = {"wide": 2_000_000, "wider": 7_000_000, "medium": 8_000_000, "large": 30_000_000}
# Passes over the training split past which the one-layer rung below learns a small text by heart: there a
# preset needs only these characters to take over from it.
OVERREAD_EPOCHS = 9.0
MIN_CHARS_OVERREAD = {"medium": 6_500_000}
LADDER = ("wide", "wider", "medium", "large")  # above "compact", for corpora big enough to feed them
# Corpora smaller than these keep a small model whatever the budget: there is not enough text to feed more.
TINY_CORPUS, SMALL_CORPUS = 50_000, 300_000
# Passes over the corpus beyond which a model overfits without dropout, and beyond which 0.1 is too little:
# ten minutes of tiny Shakespeare read 15.9 times over by the 2x384 gave 1.4757 at 0.1 and 1.4549 at 0.2
# (bf16, an AVX512 CPU), where 10.5 passes at 0.1 had given 1.4563 and 1.4600.
EPOCHS_NEEDING_DROPOUT = 6.0
EPOCHS_NEEDING_MORE_DROPOUT = 12.0
# Share of a timed run spent in training steps (the rest: evaluations, checkpoints, previews).
TRAINING_SHARE = 0.9
FRESH_SECONDS = 3600  # re-measured after an hour...
CACHE_SECONDS = 24 * 3600  # ...keeping the best figure of the day
SPEED_CACHE_ENV = "CHARLSTM_SPEED_CACHE"
# Cores other programs keep busy, on average during a probe, beyond which its figure is not remembered.
BUSY_CORES = 0.5

SpeedProbe = Callable[[str], float]  # preset name -> training characters per second on this machine

# Training characters per second of each preset on the 2-core AMX machine the thresholds were fitted
# on (bf16); compact, wide and wider scaled from small by their speed ratios on a 2-core AVX2 CPU (3.0x, 1.28x,
# 0.89x).
# Used where measuring is not possible: the ranks of a torchrun run must agree on one shape.
REFERENCE_SPEEDS = {"tiny": 90_000.0, "compact": 102_000.0, "wide": 43_500.0, "wider": 30_000.0, "small": 34_000.0,
                    "medium": 15_500.0, "large": 9_000.0}


@dataclass(frozen=True)
class Sizing:
    """The shape chosen for a run and what it expects to read."""

    size: str
    chars: float  # characters the run is expected to train on
    epochs: float  # passes over the training split
    chars_per_sec: float | None  # measured, for a timed run

    def describe(self) -> str:
        if self.chars == float("inf"):
            return f"the {self.size} shape (no measured speed for a timed run of a shape given by hand)"
        speed = f" at {self.chars_per_sec / 1000:.1f}k chars/s measured" if self.chars_per_sec else ""
        return f"about {_count(self.chars)} characters, {self.epochs:.1f} epochs of this corpus{speed}"


def _count(value: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}"


def expected_chars(train_config: TrainConfig, train_chars: int, chars_per_sec: float | None) -> float:
    """Characters a run with this config will train on, by whichever budget ends it first."""
    limits = []
    window = train_config.batch_size * train_config.seq_len
    if train_config.steps is not None:
        limits.append(train_config.steps * window)
    if train_config.epochs is not None:
        limits.append(train_config.epochs * train_chars)
    if train_config.time_budget is not None and chars_per_sec:
        limits.append(train_config.time_budget * TRAINING_SHARE * chars_per_sec)
    return min(limits) if limits else float("inf")


def choose_size(corpus_chars: int, budget_chars: Callable[[str], float], first: str = "compact",
                ladder: tuple[str, ...] = LADDER, min_chars: dict[str, int] = MIN_CHARS,
                train_chars: int | None = None) -> str:
    """The largest preset that can read enough characters to beat the next smaller one, climbing
    ``ladder`` from ``first`` (the GPU rule climbs its own ladder from another rung).

    ``budget_chars(name)`` says how many characters a run of that preset would train on. Given the
    training split's size, a rung in :data:`MIN_CHARS_OVERREAD` takes over sooner from one that would
    read the split more than :data:`OVERREAD_EPOCHS` times.
    """
    if corpus_chars < TINY_CORPUS:
        return "tiny"
    if corpus_chars < SMALL_CORPUS:
        return "small"
    chosen = first
    for name in ladder:
        needed = min_chars[name]
        if train_chars and name in MIN_CHARS_OVERREAD and budget_chars(chosen) > OVERREAD_EPOCHS * train_chars:
            needed = MIN_CHARS_OVERREAD[name]
        if budget_chars(name) < needed:
            break
        chosen = name
    return chosen


def dropout_for(preset: Preset, epochs: float) -> float:
    """The preset's dropout, raised to 0.1 once the run reads its corpus many times over and to 0.2 past
    twice that: a faster machine reads a small corpus more often in the same minutes, and learns it by heart."""
    if epochs > EPOCHS_NEEDING_MORE_DROPOUT:
        return max(preset.dropout, 0.2)
    if epochs > EPOCHS_NEEDING_DROPOUT:
        return max(preset.dropout, 0.1)
    return preset.dropout


def _machine_key(device: str, precision: str, preset: str) -> str:
    import torch

    return "|".join([platform.processor() or platform.machine(), _cpu_model(), str(os.cpu_count()),
                     str(torch.get_num_threads()), torch.__version__, device, precision, preset])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def measure_speed(preset_name: str, vocab_size: int, device: str, precision: Precision, steps: int = 3,
                  batch_size: int | None = None, seq_len: int | None = None) -> float:
    """Training characters per second of a preset on this machine: one untimed step, then ``steps``
    timed ones of the real training step (forward, backward, AdamW) on random characters; at the preset's
    batch shape unless another is given (the CUDA rule grows it). The fastest step counts: a moment
    when another program took the core says nothing about the shape."""
    import torch
    import torch.nn.functional as F

    from ..base.runtime import autocast, resolve_device, resolve_precision
    from ..model.network import CharLSTM

    preset = ALL_PRESETS[preset_name]
    batch_size, seq_len = batch_size or preset.batch_size, seq_len or preset.seq_len
    target = resolve_device(device)
    arithmetic = resolve_precision(precision, target)
    model = CharLSTM(preset.model_config(vocab_size)).to(target).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (batch_size, seq_len + 1), generator=generator).to(target)
    state = model.init_state(batch_size, target)

    def step() -> None:
        with autocast(target, arithmetic):
            logits, _ = model(ids[:, :-1], state)
            loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()

    step()
    fastest = float("inf")
    for _ in range(steps):
        started = time.perf_counter()
        step()
        fastest = min(fastest, time.perf_counter() - started)
    return batch_size * seq_len / fastest


def cached_speed_probe(vocab_size: int, device: str, precision: Precision,
                       on_measure: Callable[[str], None] | None = None,
                       on_busy: Callable[[str, float], None] | None = None,
                       busy: Callable[[], float] | None = None) -> SpeedProbe:
    """A probe that measures each preset at most once an hour and remembers the best figure of the day in the
    user's cache folder: a machine's speed does not change between two runs, but a busy moment would
    understate it, so a lower measurement never replaces a higher one of the same day.

    While other programs keep more than :data:`BUSY_CORES` busy (``busy`` reads it, as the thread governor
    does), the probe runs on the threads the governor would leave the run, so its figure is what the run
    gets while the load lasts; it sizes this run only and is not remembered (``on_busy`` hears of it).
    """
    path = user_dir("cache", "speed.json", SPEED_CACHE_ENV)
    busy_elsewhere = busy or BusyElsewhere()

    def probe(name: str) -> float:
        import torch

        key = _machine_key(device, precision, name)
        try:
            known = json.loads(path.read_text(encoding="utf-8")) if path.is_file() and path.stat().st_size < 1 << 20 else {}
            if not isinstance(known, dict):
                known = {}
        except (OSError, ValueError):
            known = {}
        entry = known.get(key)
        age = time.time() - float(entry.get("at", 0)) if isinstance(entry, dict) else float("inf")
        if age < FRESH_SECONDS:
            return float(entry["chars_per_sec"])
        if on_measure is not None:
            on_measure(name)
        threads = torch.get_num_threads()
        load_before = busy_elsewhere()
        torch.set_num_threads(threads_for(os.cpu_count() or 1, load_before, threads))
        try:
            speed = measure_speed(name, vocab_size, device, precision)
        finally:
            torch.set_num_threads(threads)
        load = max(load_before, busy_elsewhere())  # the second reading averages over the measurement
        if age < CACHE_SECONDS:
            speed = max(speed, float(entry["chars_per_sec"]))  # the day's best figure is what the machine can do
        if load > BUSY_CORES:
            if on_busy is not None:
                on_busy(name, load)
            return speed
        known[key] = {"chars_per_sec": speed, "at": time.time()}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(known))
        except (OSError, ValueError):
            pass  # the cache is an optimisation: a run never fails for it
        return speed

    return probe


@dataclass(frozen=True)
class RunChoices:
    """What a user said about a new run (None: not said, let the rule choose). The command line
    and the Python API both come through here, so a flag means the same thing from either."""

    size: str | None = None
    layers: int | None = None
    hidden: int | None = None
    emb: int | None = None
    dropout: float | None = None
    cell: str = "lstm"
    batch_size: int | None = None
    seq_len: int | None = None
    lr: float | None = None
    steps: int | None = None
    epochs: float | None = None
    time_budget: float | None = None
    eval_every: int | None = None
    val_frac: float = 0.1
    seed: int = 1337
    device: str = "auto"
    precision: Precision = "auto"
    on_nan: NanPolicy = "stop"

    def is_timed(self) -> bool:
        """A run with a wall-clock budget: given, or the default when no budget at all is."""
        return self.time_budget is not None or (self.steps is None and self.epochs is None)

    def measures_speed(self) -> bool:
        """Whether the rule must time the candidate shapes: a timed run whose shape it chooses."""
        return self.is_timed() and self.size is None and self.layers is None and self.hidden is None and self.emb is None

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "RunChoices":
        return cls(**{field.name: options[field.name] for field in fields(cls) if field.name in options})


def choose_configs(
    choices: RunChoices, corpus_chars: int, vocab_size: int, speed_probe: SpeedProbe | None = None
) -> tuple[ModelConfig, TrainConfig, Sizing]:
    """The model and training configs for a new run: what the user gave, the sizing rule for the rest.

    With no budget at all a run gets :data:`DEFAULT_TIME_BUDGET`. A timed run asks ``speed_probe``
    (default: :func:`cached_speed_probe`) how fast this machine trains each candidate shape.
    """
    time_budget = choices.time_budget
    if choices.steps is None and choices.epochs is None and time_budget is None:
        time_budget = DEFAULT_TIME_BUDGET
    train_chars = int(corpus_chars * (1.0 - choices.val_frac))
    if not choices.measures_speed():
        speed_probe = None
    elif speed_probe is None:
        speed_probe = cached_speed_probe(vocab_size, choices.device, choices.precision)
    speeds: dict[str, float] = {}

    def train_config_for(preset: Preset) -> TrainConfig:
        return TrainConfig(
            batch_size=given(choices.batch_size, preset.batch_size), seq_len=given(choices.seq_len, preset.seq_len),
            steps=choices.steps, epochs=choices.epochs, time_budget=time_budget, lr=given(choices.lr, preset.lr),
            eval_every=choices.eval_every, val_frac=choices.val_frac, seed=choices.seed, device=choices.device,
            precision=choices.precision, on_nan=choices.on_nan,
        )

    def budget_chars(name: str) -> float:
        if name not in speeds and speed_probe is not None:
            speeds[name] = speed_probe(name)
        return expected_chars(train_config_for(PRESETS[name]), train_chars, speeds.get(name))

    size = choices.size or choose_size(corpus_chars, budget_chars, train_chars=train_chars)
    preset = PRESETS[size]
    train_config = train_config_for(preset)
    if size not in speeds and speed_probe is not None:
        speeds[size] = speed_probe(size)
    chars = expected_chars(train_config, train_chars, speeds.get(size))
    sizing = Sizing(size, chars, chars / max(1, train_chars), speeds.get(size))
    model_config = ModelConfig(
        vocab_size=vocab_size,
        emb_size=given(choices.emb, preset.emb_size),
        hidden_size=given(choices.hidden, preset.hidden_size),
        num_layers=given(choices.layers, preset.num_layers),
        dropout=given(choices.dropout, preset.dropout if choices.size else dropout_for(preset, sizing.epochs)),
        cell=choices.cell,  # type: ignore[arg-type]
    )
    return model_config, train_config, sizing


def given(value: Any, fallback: Any) -> Any:
    return value if value is not None else fallback
