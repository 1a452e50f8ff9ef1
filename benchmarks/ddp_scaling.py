"""Training throughput of one process against two data-parallel gloo processes on this CPU.

Both setups train the same model on the same global batch (so the same work per
step), one thread per process; they run in turns, several rounds, and the table
reports each one's median characters per second and its ratio to one process.
(One process with two threads is left out: on a machine shared with other jobs,
oversubscribed OpenMP threads spin and its timings mean nothing.)
On a shared machine single timings wander; the ratios, taken side by side, hold
up better.

    OMP_NUM_THREADS=1 python benchmarks/ddp_scaling.py --corpus /work/shared/corpora/tinyshakespeare.txt
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.multiprocessing as mp

from charlstm import ModelConfig, TrainConfig, Trainer, read_corpus
from charlstm.training.distributed import launched


@dataclass(frozen=True)
class Setup:
    label: str
    processes: int
    threads: int


SETUPS = (
    Setup("1 process x 1 thread", 1, 1),
    Setup("2 processes x 1 thread (DDP, gloo)", 2, 1),
)


def _rank_main(rank: int, setup: Setup, port: int, args: argparse.Namespace, out: Path) -> None:
    torch.set_num_threads(setup.threads)
    if setup.processes > 1:  # what torchrun would set
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(setup.processes),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    corpus = read_corpus(args.corpus)
    model = ModelConfig(vocab_size=len(corpus.vocab), emb_size=64, hidden_size=args.hidden, num_layers=args.layers, dropout=0.0)
    config = TrainConfig(batch_size=args.batch_size, seq_len=args.seq_len, steps=args.steps, val_frac=0.0,
                         warmup_steps=1, precision="fp32", device="cpu", preview_chars=0, log_every=0)
    with launched() as distributed:
        trainer = Trainer(corpus, model, config, out / "run", distributed=distributed)
        result = trainer.train()
    if trainer.is_main:
        (out / "chars_per_sec").write_text(str(result.chars_per_sec))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def measure(setup: Setup, args: argparse.Namespace) -> float:
    """Characters per second of one run of ``setup`` (the global batch's characters, over rank 0's training time)."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        mp.start_processes(_rank_main, args=(setup, _free_port(), args, out), nprocs=setup.processes, start_method="spawn")
        return float((out / "chars_per_sec").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path("/work/shared/corpora/tinyshakespeare.txt"))
    parser.add_argument("--steps", type=int, default=30, help="Optimiser steps per run.")
    parser.add_argument("--rounds", type=int, default=3, help="Runs of each setup, taken in turns.")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32, help="Global batch (split over the processes).")
    parser.add_argument("--seq-len", type=int, default=64)
    args = parser.parse_args()
    speeds: dict[Setup, list[float]] = {setup: [] for setup in SETUPS}
    for round_index in range(args.rounds):
        for setup in SETUPS:
            speeds[setup].append(measure(setup, args))
            print(f"round {round_index + 1}: {setup.label}: {speeds[setup][-1]:,.0f} chars/s", flush=True)
    baseline = statistics.median(speeds[SETUPS[0]])
    print(f"\n{args.layers}x{args.hidden} LSTM, global batch {args.batch_size} x {args.seq_len}, "
          f"{args.steps} steps per run, median of {args.rounds} rounds")
    print(f"{'setup':<38}{'chars/s':>12}{'vs 1x1':>9}")
    for setup, values in speeds.items():
        median = statistics.median(values)
        print(f"{setup.label:<38}{median:>12,.0f}{median / baseline:>8.2f}x")


if __name__ == "__main__":
    main()
