"""Where and in what arithmetic the model runs: the device and precision policy every layer shares.

CPUs with AMX or AVX512-bf16 run bf16 matrix products about four times faster than fp32; elsewhere
bf16 is emulated and slower, so ``auto`` decides per machine rather than per project.

torch is imported inside the functions, so that configs which name a ``Precision`` (and the
command line that builds them) load without it.
"""

from __future__ import annotations

import functools
import math
import os
import time
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Literal

from .errors import CharlstmError

if TYPE_CHECKING:
    import torch

Precision = Literal["auto", "bf16", "fp32"]


LN2 = math.log(2.0)


def resolve_device(name: str = "auto") -> torch.device:
    """cuda, then mps, then cpu for ``auto``; a clear error for one that is not there."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CharlstmError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CharlstmError("--device mps was asked for but Apple's MPS is not available; use --device cpu")
    return torch.device(name)


# Samples drawn at once from which ``--device auto`` samples on a CUDA GPU: each character is a round trip
# to the device (launches, then the draw read back), which one stream cannot repay, while the CPU's fused
# step serves it from cache. `charlstm bench --device cuda` measures both sides at batch 1 and 64.
GPU_SAMPLING_MIN_BATCH = 16


def resolve_sampling_device(name: str, batch: int) -> torch.device:
    """Where to sample ``batch`` streams: ``auto`` takes a CUDA GPU only from GPU_SAMPLING_MIN_BATCH streams
    on (never MPS, whose round trips cost as much), the CPU otherwise; a named device as ``resolve_device``."""
    import torch

    if name != "auto":
        return resolve_device(name)
    on_gpu = batch >= GPU_SAMPLING_MIN_BATCH and torch.cuda.is_available()
    return torch.device("cuda" if on_gpu else "cpu")


def cpu_has_amx() -> bool:
    """True on CPUs with AMX tiles, where oneDNN's bf16 products run on the tile unit."""
    import torch

    return getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX or AVX512-bf16, where bf16 matrix products beat fp32."""
    import torch

    return cpu_has_amx() or getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()


@functools.lru_cache(maxsize=None)
def cpu_runs_bf16() -> bool:
    """Whether this CPU can run bf16 at all: oneDNN builds no bf16 LSTM on a CPU without AVX512 or
    AVX-NE-CONVERT (an AVX2-only one), and asked anyway it fails deep inside the forward. A two-character
    forward of a tiny LSTM finds out once, in about a millisecond."""
    import torch

    lstm = torch.nn.LSTM(4, 4)
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            lstm(torch.zeros(2, 1, 4))
    except RuntimeError:
        return False
    return True


def resolve_precision(precision: Precision, device: torch.device) -> str:
    """Pick bf16 autocast where the hardware runs it fast, fp32 elsewhere."""
    import torch

    if precision == "bf16" and device.type == "cpu" and not cpu_runs_bf16():
        raise CharlstmError("this CPU cannot run bf16 (it has neither AVX512 nor AVX-NE-CONVERT); "
                            "use --precision fp32, or auto, which picks fp32 here")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def autocast(device: torch.device, precision: str) -> ContextManager[Any]:
    import torch

    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


# -- sharing the CPU -------------------------------------------------------------------------------


class BusyElsewhere:
    """Cores kept busy by other processes, averaged since the previous call (0 where /proc is absent).

    This process's own CPU time is subtracted, so it can be read while training runs. A call waits until
    its window is ``prime`` seconds long: the counters move in ticks of 10 ms and a process's own are
    booked late, so two readings a few milliseconds apart once showed "4.7 cores busy" on an idle 2-core
    machine. Calls ``prime`` or more apart (the thread governor's, every 20 s) cost two small file reads.
    """

    def __init__(self, prime: float = 0.2, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.prime, self.clock, self.sleep = prime, clock, sleep
        self.last: tuple[float, float, float] | None = None  # (when, busy ticks of the machine, of this process)

    @staticmethod
    def _sample() -> tuple[float, float]:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [float(value) for value in stat.readline().split()[1:]]
        with open("/proc/self/stat", encoding="ascii") as own:
            mine = own.read().rsplit(")", 1)[1].split()
        busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0.0)  # all but idle and iowait
        return busy, float(mine[11]) + float(mine[12])  # utime + stime of this process, all its threads

    def __call__(self) -> float:
        try:
            if self.last is None:
                self.last = (self.clock(), *self._sample())
            waited = self.clock() - self.last[0]
            if waited < self.prime:
                self.sleep(self.prime - waited)
            busy, mine = self._sample()
        except (OSError, ValueError, IndexError):
            return 0.0
        now = self.clock()
        then, busy_before, mine_before = self.last
        self.last = (now, busy, mine)
        ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        return max(0.0, (busy - busy_before) - (mine - mine_before)) / ticks / max(now - then, 1e-3)


def threads_for(cores: int, busy_elsewhere: float, ceiling: int) -> int:
    """Intra-op threads that fit beside the other work: PyTorch's threads wait on each other at every
    parallel region, so one thread that shares its core with another program slows all of them down
    (a 2x384 step went from 0.15 s to 1.3 s on two cores with one taken); a thread fewer costs far less."""
    return max(1, min(ceiling, int(cores - busy_elsewhere + 0.5)))


class ThreadGovernor:
    """Re-checks every ``every`` seconds how busy the machine is and sets torch's thread count to fit;
    never above the count it started with, so a caller that chose one thread keeps one thread."""

    def __init__(self, every: float = 20.0, clock: Callable[[], float] = time.monotonic,
                 busy: Callable[[], float] | None = None):
        import torch

        self.every, self.clock, self.busy = every, clock, busy or BusyElsewhere()
        self.ceiling = self.current = torch.get_num_threads()
        self.cores = os.cpu_count() or 1
        self.checked_at: float | None = None
        self.changes: list[tuple[float, int]] = []  # (when, threads), for the record

    def tick(self) -> None:
        now = self.clock()
        if self.checked_at is not None and now - self.checked_at < self.every:
            return
        self.checked_at = now
        import torch

        wanted = threads_for(self.cores, self.busy(), self.ceiling)
        if wanted != self.current:
            torch.set_num_threads(wanted)
            self.current = wanted
            self.changes.append((now, wanted))
