"""Which weights should `--precision auto` sample with on this CPU? int8, bf16 and fp32 steps, side by side.

For each preset, a ``Generator`` at each precision and the plain per-character ``nn.LSTM`` loop of
``charlstm bench`` run in alternating rounds (so a shared machine's drift falls on all of them), at
batch 32 and batch 1; it prints characters per second and the ratio to the plain loop. The rule in
``charlstm.generation.generator.sampling_precision`` follows what this showed: int8 on CPUs without
AMX (at every width with the compiled int8 layer step; with fbgemm alone from 256 units up, fp32 below),
bf16 with AMX. Where the compiled step is built, an "int8, fbgemm" column shows int8 steps without it
(fbgemm's products and PyTorch's passes), side by side.

    python benchmarks/sampling_precisions.py --presets compact,wide,wider,medium,large

On an AVX512 CPU, an AVX2-only one can be approximated by capping every kernel library at AVX2 (on the
AVX512-VNNI CPU of RESULTS.md this gave the batch-32 ratio the real AVX2 machine gave):

    FBGEMM_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        python benchmarks/sampling_precisions.py --presets medium
"""

from __future__ import annotations

import argparse

import torch

from charlstm.analysis.bench import (
    BENCH_VOCAB_SIZE,
    alternating_rates,
    bench_vocab,
    charlstm_sampling_loop,
    naive_sampling_loop,
)
from charlstm.base.runtime import cpu_has_amx, cpu_runs_bf16
from charlstm.generation.generator import Generator
from charlstm.model.native import LayerKernel, layer_kernel
from charlstm.model.network import CharLSTM
from charlstm.model.stepper import LSTMStepper, Stepper, int8_available
from charlstm.training.presets import ALL_PRESETS


class FbgemmGenerator(Generator):
    """int8 steps through fbgemm's products and PyTorch's passes instead of the compiled layer step."""

    def _take_stepper(self, num_streams: int) -> Stepper:
        idle = self._idle_steppers.get(num_streams)
        return idle.pop() if idle else LSTMStepper(self.model, num_streams, self.precision, native=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="compact,wide,wider,medium,large")
    parser.add_argument("--rounds", type=int, default=12, help="alternating rounds at batch 32 (batch 1 takes two thirds)")
    args = parser.parse_args()
    kernel = layer_kernel()
    fbgemm = int8_available() and isinstance(kernel, LayerKernel)
    precisions = [p for p, there in (("int8", int8_available()), ("int8, fbgemm", fbgemm),
                                     ("bf16", cpu_runs_bf16()), ("fp32", True)) if there]
    print(f"torch {torch.__version__}, CPU {torch.backends.cpu.get_cpu_capability()}, AMX {cpu_has_amx()}, "
          f"{torch.get_num_threads()} threads, int8 steps: {kernel.describe()}")
    print("| preset | batch | plain loop chars/s | " + " | ".join(f"{p} chars/s (ratio)" for p in precisions) + " |")
    print("| --- | ---: | ---: | " + " | ".join("---:" for _ in precisions) + " |")
    for name in args.presets.split(","):
        torch.manual_seed(0)
        config = ALL_PRESETS[name].model_config(BENCH_VOCAB_SIZE)
        model = CharLSTM(config)
        vocab = bench_vocab(config.vocab_size)
        label = f"{name} ({config.num_layers}x{config.hidden_size})"
        for batch, length, rounds in ((32, 60, args.rounds), (1, 200, max(1, args.rounds * 2 // 3))):
            loops = {"plain": naive_sampling_loop(model, batch)}
            for precision in precisions:
                generator = (FbgemmGenerator(model, vocab, precision="int8") if precision == "int8, fbgemm"
                             else Generator(model, vocab, precision=precision))
                loops[precision] = charlstm_sampling_loop(generator, batch)
            rates = alternating_rates(loops, length, rounds)
            cells = " | ".join(f"{rates[p] * batch:,.0f} ({rates[p] / rates['plain']:.2f}x)" for p in precisions)
            print(f"| {label} | {batch} | {rates['plain'] * batch:,.0f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
