"""Where and in what arithmetic the model runs: the device and precision policy every layer shares.

CPUs with AMX or AVX512-bf16 run bf16 matrix products about four times faster than fp32; elsewhere
bf16 is emulated and slower, so ``auto`` decides per machine rather than per project.

torch is imported inside the functions, so that configs which name a ``Precision`` (and the
command line that builds them) load without it.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, ContextManager, Literal

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


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX or AVX512-bf16, where bf16 matrix products beat fp32."""
    import torch

    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_precision(precision: Precision, device: torch.device) -> str:
    """Pick bf16 autocast where the hardware runs it fast, fp32 elsewhere."""
    import torch

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
