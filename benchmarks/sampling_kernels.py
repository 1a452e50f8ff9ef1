"""Which kernel should run a sampling step's matrix products? Measured, side by side, on this machine.

One sampling step of an LSTM layer is a product of a few rows ([x | h], batch
B) with the layer's gate weights. This script times the ways PyTorch offers to
do that product for the widest layer of a 3x512 model (4H x 2H = 2048 x 1024),
interleaved in rounds so a shared machine's load falls on all of them, and
prints min and median microseconds per product. ``--compile`` also times
``torch.compile`` of a whole unfused step (cold compile included), which takes
minutes. charlstm's LSTMStepper uses the winner: bf16 weights pre-packed for
oneDNN where the CPU has AMX, int8 weights with per-row scales through
fbgemm on other CPUs (``sampling_precisions.py`` compares them whole), fp32
``addmm`` into a buffer when asked for fp32.

    OMP_NUM_THREADS=1 python benchmarks/sampling_kernels.py --batch 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from charlstm.model.config import ModelConfig
from charlstm.model.network import CharLSTM
from charlstm.model.stepper import LSTMStepper, bf16_linear, int8_available, int8_linear


def compare(kernels: dict[str, Callable[[], object]], rounds: int = 12, calls: int = 40) -> None:
    for run in kernels.values():
        for _ in range(5):
            run()
    times: dict[str, list[float]] = {name: [] for name in kernels}
    for _ in range(rounds):
        for name, run in kernels.items():
            start = time.perf_counter()
            for _ in range(calls):
                run()
            times[name].append((time.perf_counter() - start) / calls * 1e6)
    for name, spent in times.items():
        print(f"{name:48s} min {min(spent):9.1f} us   median {statistics.median(spent):9.1f} us")


def matrix_products(batch: int, rows: int = 2048, cols: int = 1024) -> dict[str, Callable[[], object]]:
    weight, bias, x = torch.randn(rows, cols) * 0.03, torch.randn(rows), torch.randn(batch, cols)
    out = torch.empty(batch, rows)
    weight_bf16, x_bf16 = weight.bfloat16(), x.bfloat16()
    prepacked = bf16_linear(weight, batch)
    scales = weight.abs().amax(dim=1) / 127
    weight_int8 = (weight / scales[:, None]).round().to(torch.int8)
    kernels = {
        "fp32 addmm into a buffer": lambda: torch.addmm(bias, x, weight.t(), out=out),
        "fp32 F.linear": lambda: F.linear(x, weight, bias),
        "bf16 F.linear (plain)": lambda: F.linear(x_bf16, weight_bf16),
        "bf16 oneDNN pre-packed (charlstm)": lambda: prepacked(x_bf16),
        "int8 weights, bf16 rows (_weight_int8pack_mm)": lambda: torch.ops.aten._weight_int8pack_mm(
            x_bf16, weight_int8, scales.bfloat16()
        ),
    }
    if int8_available():
        by_row = int8_linear(weight, bias)
        kernels["int8 weights per row, fbgemm (charlstm, no fast bf16)"] = lambda: by_row(x)
    return kernels


def unfused_step(emb, w_ih, w_hh, bias, head_w, head_b, ids, h, c):  # noqa: ANN001 - traced by torch.compile
    x = emb[ids]
    hs, cs = [], []
    for layer in range(len(w_ih)):
        i, f, g, o = (x @ w_ih[layer].t() + h[layer] @ w_hh[layer].t() + bias[layer]).chunk(4, -1)
        c_new = torch.sigmoid(f) * c[layer] + torch.sigmoid(i) * torch.tanh(g)
        x = torch.sigmoid(o) * torch.tanh(c_new)
        hs.append(x)
        cs.append(c_new)
    return x @ head_w.t() + head_b, torch.stack(hs), torch.stack(cs)


def whole_steps(batch: int, with_compile: bool) -> dict[str, Callable[[], object]]:
    torch.manual_seed(0)
    model = CharLSTM(ModelConfig(vocab_size=65, emb_size=128, hidden_size=512, num_layers=3)).eval()
    ids = torch.zeros(batch, dtype=torch.long)
    h, c = model.init_state(batch)
    steps: dict[str, Callable[[], object]] = {"model forward, one step (nn.LSTM)": lambda: model(ids.unsqueeze(1), (h, c))}
    for precision in ("fp32", "bf16", *(("int8",) if int8_available() else ())):
        stepper = LSTMStepper(model, batch, precision)
        steps[f"LSTMStepper {precision}"] = lambda stepper=stepper: stepper.step(ids)
    if with_compile:
        rnn, layers = model.rnn, model.config.num_layers
        weights = (
            model.embedding.weight.detach(),
            [getattr(rnn, f"weight_ih_l{n}").detach() for n in range(layers)],
            [getattr(rnn, f"weight_hh_l{n}").detach() for n in range(layers)],
            [(getattr(rnn, f"bias_ih_l{n}") + getattr(rnn, f"bias_hh_l{n}")).detach() for n in range(layers)],
            model.head.weight.detach(),
            model.head.bias.detach(),
        )
        compiled = torch.compile(unfused_step)
        start = time.perf_counter()
        compiled(*weights, ids, h, c)
        print(f"torch.compile cold compile: {time.perf_counter() - start:.1f} s")
        steps["torch.compile of the unfused step"] = lambda: compiled(*weights, ids, h, c)
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes of compiling)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {args.batch}")
    with torch.inference_mode():
        print("one 2048 x 1024 gate product:")
        compare(matrix_products(args.batch))
        print("one whole sampling step of the 3 x 512 model:")
        compare(whole_steps(args.batch, args.compile), rounds=8, calls=20)


if __name__ == "__main__":
    main()
