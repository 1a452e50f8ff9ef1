"""When the trainer may run ahead of the device, and the optimiser setting that lets it.

A CUDA kernel launch returns at once; reading a value back (``.item()``, ``float(tensor)``) waits until
the GPU has run everything queued. One such read per step leaves the card idle while Python prepares the
next step, so on CUDA the trainer checks each step's loss on the device and reads the losses back every
few steps. On a CPU the work is done by the time the call returns: a read costs nothing, and the trainer
keeps the plain step-by-step check. A torchrun run agrees on the loss through a collective every step
anyway, so it keeps the plain check too.
"""

from __future__ import annotations

import torch


def defers_host_reads(device_type: str, world_size: int) -> bool:
    """Whether a run reads its losses back in batches: a single process training on a CUDA GPU."""
    return device_type == "cuda" and world_size == 1


def uses_fused_optimizer(device_type: str, deferred_reads: bool) -> bool:
    """Whether AdamW runs its fused kernel: where reads are deferred (it can skip a step on the device),
    and on a CPU, where it replaces a loop over the parameters: a 1x384 step (16 x 64) ran 1.024x
    as fast fused on a 2-core AVX2 CPU (median of 12 interleaved rounds)."""
    return deferred_reads or device_type == "cpu"


def fuse_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Switch a restored AdamW to its fused kernel (a checkpoint records the kernel it was saved with): its
    step counts must then live beside the parameters, as float32, where a non-fused CUDA run kept them on the CPU."""
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, None
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            if "step" in state:
                state["step"] = torch.as_tensor(state["step"], dtype=torch.float32, device=param.device)
