"""One LSTM layer's int8 sampling step: the compiled call (product and cell update) against fbgemm's product alone.

For each shape (hidden units x inputs) and batch, the compiled ``lstm_layer_step`` and fbgemm's
``linear_dynamic`` with the same int8 weights run in alternating rounds; it prints microseconds per call,
their ratio and the compiled call's multiply-adds per second. A shape with 4 inputs shows the call's fixed
cost (quantising, the cell update, the threads' start), which the slope between the others leaves out.

    python benchmarks/layer_step.py

On an AVX512 CPU, an AVX2-only one can be approximated by capping the kernel libraries (see
sampling_precisions.py): ``FBGEMM_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2``.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from charlstm.model.native import LayerKernel, layer_kernel, run_step
from charlstm.model.stepper import int8_linear

SHAPES = ((384, 4), (384, 384), (384, 768), (512, 1024), (256, 512))


def alternating_microseconds(calls: dict[str, Callable[[], object]], rounds: int, per_round: int) -> dict[str, float]:
    spent = dict.fromkeys(calls, 0.0)
    for call in calls.values():
        for _ in range(20):
            call()
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(per_round):
                call()
            spent[name] += time.perf_counter() - start
    return {name: seconds / (rounds * per_round) * 1e6 for name, seconds in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    kernel = layer_kernel()
    if not isinstance(kernel, LayerKernel):
        raise SystemExit(f"no compiled layer step here: {kernel.describe()}")
    print(f"torch {torch.__version__}, CPU {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
          f"{kernel.describe()}, {kernel.units} units per block")
    print("| batch | hidden x inputs | compiled step µs | fbgemm product µs | fbgemm / compiled | compiled GMAC/s |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    generator = torch.Generator().manual_seed(0)
    for batch in (32, 1):
        for hidden, inputs in SHAPES:
            weight = torch.randn(4 * hidden, inputs, generator=generator) * 0.1
            bias = torch.randn(4 * hidden, generator=generator)
            layer = kernel.pack(weight, bias, None)
            x = torch.rand(batch, inputs, generator=generator) - 0.5
            double_c, half_h = torch.randn(batch, hidden, generator=generator) * 0.1, torch.zeros(batch, hidden)
            scratch, scale = torch.empty(batch, layer.inputs_padded, dtype=torch.uint8), torch.empty(batch)
            product = int8_linear(weight, bias)
            times = alternating_microseconds({
                "compiled": lambda: run_step(kernel, layer, x, None, double_c, half_h, scratch, scale),
                "fbgemm": lambda: product(x),
            }, args.rounds, max(20, 30_000 // (hidden * inputs // 1000 + 1) // max(1, batch // 8)))
            macs = batch * 4 * hidden * inputs
            print(f"| {batch} | {hidden} x {inputs} | {times['compiled']:.1f} | {times['fbgemm']:.1f} | "
                  f"{times['fbgemm'] / times['compiled']:.2f}x | {macs / times['compiled'] / 1e3:.0f} |", flush=True)


if __name__ == "__main__":
    main()
