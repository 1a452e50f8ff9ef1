"""Option types and the options several commands share, declared once."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable

import click

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr)?\s*$", re.IGNORECASE)


_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}


class Duration(click.ParamType):
    """A wall-clock budget: ``90`` or ``90s``, ``10m``, ``1.5h``."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            seconds = float(value)
        else:
            match = _DURATION.match(str(value))
            if not match:
                self.fail(f"{value!r} is not a duration; write e.g. 90s, 10m or 1.5h", param, ctx)
            seconds = float(match.group(1)) * _UNIT_SECONDS[(match.group(2) or "s").lower()]
        if not 0 < seconds < math.inf:
            self.fail("the duration must be positive and finite", param, ctx)
        return seconds


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)b?\s*$", re.IGNORECASE)


_SIZE_UNITS = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


class Size(click.ParamType):
    """A number of characters: ``5000``, ``200k``, ``1MB``."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = _SIZE.match(str(value))
        if not match:
            self.fail(f"{value!r} is not a size; write e.g. 200k or 1MB", param, ctx)
        size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
        if not 1 <= size <= 2_000_000_000:
            self.fail("the size must be between 1 and 2G characters", param, ctx)
        return size


class FiniteFloatRange(click.FloatRange):
    """A FloatRange that also refuses nan and inf, which slip past its bounds (they compare false)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


# torch seeds its generators from a 64-bit integer.
SEED = click.IntRange(-(2**63), 2**64 - 1)


checkpoint_option = click.option(
    "-c", "--checkpoint", type=click.Path(path_type=Path),
    help="Run or checkpoint directory (default: newest run under ./checkpoints).",
)

which_option = click.option("--which", type=click.Choice(["best", "last"]), default="best", show_default=True,
                             help="Which checkpoint of a run to use.")

DEVICES = ["auto", "cpu", "cuda", "mps"]
PRECISIONS = ["auto", "bf16", "fp32"]
SAMPLING_PRECISIONS = [*PRECISIONS, "int8"]
SAMPLING_PRECISION_HELP = ("Weights for the matrix products: auto is int8 on CPUs without AMX (without a C compiler, "
                           "fp32 below hidden size 256), bf16 on CPUs with AMX and on GPUs that run it, else fp32.")


def device_option(default: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--device``: training defaults to the fastest device there is; generation to the CPU, where
    the fused one-character step is faster than a GPU round trip at batch 1."""
    return click.option("--device", type=click.Choice(DEVICES), default=default, show_default=True,
                        help="Where to run: auto picks cuda, then mps, then cpu.")


def precision_option(choices: list[str], default: str | None, help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("--precision", type=click.Choice(choices), default=default, show_default=default is not None, help=help)
