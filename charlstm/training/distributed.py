"""Data-parallel training across processes, GPUs and machines, on torch.distributed.

``torchrun`` starts one process per GPU (or per CPU share) and tells each its
place through environment variables; :meth:`DistributedContext.from_env` reads
them. Each rank trains on its own rows of the same B streams the single-process
trainer would read, :class:`~torch.nn.parallel.DistributedDataParallel` averages
the gradients, and so every rank takes exactly the update one process would take
with the whole batch. Everything that decides *when* something happens (the
clock, a stop request, the loss that triggers a divergence stop) is agreed on
through one small all-gather per step, so no rank leaves a collective the others
still wait in.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..base.errors import CharlstmError

T = TypeVar("T")


@dataclass
class DistributedContext:
    """Where this process stands among the ranks of one data-parallel run.

    ``device`` is where collectives put their tensors: NCCL needs them on the
    rank's GPU, gloo on the CPU; :meth:`bind` sets it.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device = field(default=torch.device("cpu"), init=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "DistributedContext | None":
        """The context torchrun describes, or None for a plain single-process run (also for one rank)."""
        world_size = int(environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return None
        try:
            rank, local_rank = int(environ["RANK"]), int(environ["LOCAL_RANK"])
        except KeyError as missing:
            raise CharlstmError(
                f"WORLD_SIZE is {world_size} but {missing.args[0]} is not set; launch with torchrun, "
                "which sets RANK, LOCAL_RANK and WORLD_SIZE together"
            ) from None
        return cls(rank=rank, world_size=world_size, local_rank=local_rank)

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints and metrics and shows progress."""
        return self.rank == 0

    def bind(self, device: torch.device) -> torch.device:
        """This rank's device (``cuda:LOCAL_RANK`` on GPUs), with the process group joined once:
        NCCL between GPUs, gloo between CPU processes."""
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        elif device.type != "cpu":
            raise CharlstmError(f"data-parallel training runs on CUDA GPUs or CPUs, not {device.type}; use --device cpu")
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        self.device = device
        return device

    def rows(self, batch_size: int) -> slice:
        """This rank's streams of the global batch: an equal share, so averaged gradients equal the whole batch's."""
        if batch_size % self.world_size:
            lower = batch_size - batch_size % self.world_size
            choices = " or ".join(str(n) for n in (lower, lower + self.world_size) if n > 0)
            raise CharlstmError(
                f"--batch-size {batch_size} does not split evenly over {self.world_size} processes; "
                f"use a multiple of {self.world_size} such as {choices}"
            )
        share = batch_size // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    def gather_values(self, *values: float) -> torch.Tensor:
        """Every rank's ``values`` as a (world_size, len(values)) float64 table, identical on all ranks:
        each rank then reduces it in the same order, so their decisions cannot differ by a rounding."""
        mine = torch.tensor(values, dtype=torch.float64, device=self.device)
        table = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(table, mine)
        return torch.stack(table).cpu()

    def sum(self, *values: float) -> list[float]:
        """The sums of ``values`` over all ranks."""
        return self.gather_values(*values).sum(dim=0).tolist()

    def gather_rows(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        """Every rank's slice of a batch-shaped tensor joined along ``dim``, in rank order."""
        local = tensor.detach().to(self.device).contiguous()
        pieces = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(pieces, local)
        return torch.cat(pieces, dim=dim).cpu()

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (small picklable things such as RNG states), in rank order."""
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def on_main(self, action: Callable[[], T]) -> T:
        """Run ``action`` on rank 0 alone (a write to the run directory) and give every rank its outcome:
        its result, or the very error it raised. A refusal on rank 0 then stops all ranks at once,
        instead of leaving the others waiting in a collective rank 0 never reaches."""
        outcome: list[Any] = [None, None]
        if self.is_main:
            try:
                outcome[0] = action()
            except Exception as error:
                outcome[1] = error
        dist.broadcast_object_list(outcome, src=0, device=self.device)
        result, failure = outcome
        if failure is not None:
            raise failure
        return result

    def own_rng(self, saved: dict[str, Any], seed: int, step: int) -> torch.Tensor:
        """This rank's RNG state from a saved training state; on a different number of ranks, rank 0 takes
        the saved one and the others a fresh stream of their own (only dropout draws from it)."""
        if self.is_main:
            return saved["rng"]
        by_rank = saved.get("rank_rng") or []
        if len(by_rank) == self.world_size:
            return by_rank[self.rank]
        return torch.Generator().manual_seed(hash((seed, self.rank, step))).get_state()

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` behind DDP, so that backward averages the gradients over the ranks. The caller must
        hold the wrapper in one place only and let it go however training ends: left alive past the
        process group's destruction, DDP would free the group itself with the GIL held while gloo's worker
        threads wait for the GIL (a run stopped by Ctrl-C hung at exit that way)."""
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


class SingleProcess:
    """The one process of a plain run, with DistributedContext's interface: every collective is the
    identity on its own values, so the trainer has one code path and decides only at construction."""

    rank = 0
    world_size = 1
    is_main = True

    def bind(self, device: torch.device) -> torch.device:
        return device

    def rows(self, batch_size: int) -> slice:
        return slice(None)

    def gather_values(self, *values: float) -> torch.Tensor:
        return torch.tensor([values], dtype=torch.float64)

    def sum(self, *values: float) -> list[float]:
        return list(values)

    def gather_rows(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        return tensor.detach().cpu()

    def gather_objects(self, value: Any) -> list[Any]:
        return [value]

    def on_main(self, action: Callable[[], T]) -> T:
        return action()

    def own_rng(self, saved: dict[str, Any], seed: int, step: int) -> torch.Tensor:
        return saved["rng"]

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model


# What the trainer synchronises through: the ranks of a torchrun launch, or the one plain process.
Sync = DistributedContext | SingleProcess


@contextmanager
def launched(environ: Mapping[str, str] = os.environ) -> Iterator[DistributedContext | None]:
    """The context of a torchrun launch (None without one), with its process group closed at the end."""
    context = DistributedContext.from_env(environ)
    try:
        yield context
    finally:
        if context is not None:
            context.close()


def signals_arrive_twice(environ: Mapping[str, str] = os.environ) -> bool:
    """True in a worker torchrun started: its agent passes each SIGINT or SIGTERM it gets on to every
    worker, and a Ctrl-C in the terminal reaches the workers directly as well, so one press arrives twice."""
    return "TORCHELASTIC_RUN_ID" in environ
