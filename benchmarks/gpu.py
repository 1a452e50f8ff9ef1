"""The GPU figures in one run: `charlstm bench --device cuda`, then a default `--time 3m` run on tiny Shakespeare.

    python benchmarks/gpu.py [CORPUS] [--time 3m] [--out DIR] [--dry-run]

Prepared for one short session on a rented GPU (an H200 in issue 21): it needs only what charlstm itself
needs (torch with CUDA, numpy, click, rich, safetensors), runs in well under ten minutes (the bench about
a minute, the training run its budget plus the measurement of its batch and the final evaluation), and
prints the versions it ran with, the bench table, what the training run chose and its best validation
loss beside the issue's targets: training at least 0.95x the bare cuDNN loop, and at most 1.42 nats/char
after three minutes (nanoGPT's character model reaches 1.4697 in about three minutes on an A100).

CORPUS defaults to ../shared/corpora/tinyshakespeare.txt beside the repository (or shared/corpora/ inside it). Results (the bench's JSON,
the run directory, a summary) go under --out, which defaults to $OUT when that is set (the device
machine's return folder), else ./gpu-results. --dry-run checks everything but the GPU and prints the
commands it would run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Beside the repository (a checkout), else inside it (a copy of the tree that carried shared/ along).
CORPUS_CANDIDATES = [root / "shared" / "corpora" / "tinyshakespeare.txt" for root in (REPO.parent, REPO)]
DEFAULT_CORPUS = next((path for path in CORPUS_CANDIDATES if path.is_file()), CORPUS_CANDIDATES[0])
TARGET_RATIO, TARGET_LOSS = 0.95, 1.42
NEEDED = ("torch", "numpy", "click", "rich", "safetensors")


def charlstm(*args: str) -> list[str]:
    return [sys.executable, "-m", "charlstm", *args]


def environment() -> dict[str, str]:
    """The repository's own charlstm, whatever is installed: the figures are for this tree."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def versions() -> dict[str, str]:
    import torch

    found = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": str(torch.version.cuda)}
    if torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name(0)
        found["cudnn"] = str(torch.backends.cudnn.version())
        found["bf16"] = str(torch.cuda.is_bf16_supported())
    return found


def print_bench_table(result: dict) -> None:
    """The bench's own table, drawn from its JSON (so the figures are printed and kept from one measurement)."""
    from charlstm.analysis.bench import (
        BenchResult,
        LstmPrecision,
        MatmulPeak,
        MemoryBound,
        SamplingSpeed,
        TrainingSpeed,
    )
    from charlstm.interface import terminal

    check = result.get("lstm_precision")
    terminal.print_bench(BenchResult(**{
        **result,
        "train": TrainingSpeed(**result["train"]), "peak": MatmulPeak(**result["peak"]),
        "sampling": [SamplingSpeed(**speed) for speed in result["sampling"]], "memory": MemoryBound(**result["memory"]),
        "lstm_precision": LstmPrecision(**check) if check else None,
    }))


def run_bench(out: Path) -> dict:
    started = time.perf_counter()
    done = subprocess.run(charlstm("bench", "--device", "cuda", "--json"), env=environment(), check=True,
                          stdout=subprocess.PIPE, text=True)
    (out / "bench.json").write_text(done.stdout, encoding="utf-8")
    result = json.loads(done.stdout)
    print_bench_table(result)
    print(f"bench took {time.perf_counter() - started:.0f} s", flush=True)
    return result


def run_training(corpus: Path, budget: str, out: Path) -> dict:
    name = f"gpu-{budget}-{time.strftime('%Y%m%d-%H%M%S')}"
    started = time.perf_counter()
    subprocess.run(charlstm("train", str(corpus), "--time", budget, "--out", str(out), "--name", name),
                   env=environment(), check=True, stdout=subprocess.DEVNULL)
    config = json.loads((out / name / "last" / "config.json").read_text(encoding="utf-8"))
    summary = json.loads((out / name / "summary.json").read_text(encoding="utf-8"))
    model, train = config["model"], config["train"]
    return {
        "budget": budget, "precision": config["precision"],
        "model": f"{model['num_layers']}x{model['hidden_size']} emb {model['emb_size']} dropout {model['dropout']:g}",
        "batch": f"{train['batch_size']}x{train['seq_len']} lr {train['lr']:g}",
        "steps": summary["steps"], "epochs": summary["epochs"], "chars_per_sec": summary["chars_per_sec"],
        "best_val_loss": summary["best_val_loss"], "wall_seconds": time.perf_counter() - started, "run": str(out / name),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", nargs="?", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--time", default="3m", help="the training run's budget (default 3m)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-results"))
    parser.add_argument("--skip-bench", action="store_true", help="only the training run (a second try)")
    parser.add_argument("--dry-run", action="store_true", help="check the corpus and packages, print the commands")
    args = parser.parse_args()
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        print(f"error: missing Python packages: {', '.join(missing)}; install charlstm's dependencies", file=sys.stderr)
        return 2
    if not args.corpus.is_file():
        print(f"error: corpus not found: {args.corpus}; pass its path as the first argument", file=sys.stderr)
        return 2
    found = versions()
    print("versions: " + ", ".join(f"{key} {value}" for key, value in found.items()), flush=True)
    steps = [] if args.skip_bench else [charlstm("bench", "--device", "cuda", "--json")]
    steps.append(charlstm("train", str(args.corpus), "--time", args.time, "--out", str(args.out), "--name", "gpu-..."))
    if args.dry_run:
        for command in steps:
            print("would run: " + " ".join(command[1:]))
        return 0
    if "gpu" not in found:
        print("error: no CUDA GPU is available here; run this on a machine with one (--dry-run checks the rest)",
              file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    bench = None if args.skip_bench else run_bench(args.out)
    row = run_training(args.corpus, args.time, args.out)
    print(f"training run: {row['model']}, batch {row['batch']}, {row['precision']}, {row['steps']} steps, "
          f"{row['epochs']:.1f} epochs, {row['chars_per_sec']:,.0f} chars/s, wall {row['wall_seconds']:.0f} s")
    loss_met = "met" if row["best_val_loss"] <= TARGET_LOSS else "not met"
    print(f"best validation loss after --time {args.time}: {row['best_val_loss']:.4f} nats/char "
          f"(target <= {TARGET_LOSS}: {loss_met})")
    if bench is not None:
        ratio = bench["train"]["ratio"]
        print(f"training against the bare cuDNN loop: {ratio:.3f}x "
              f"(target >= {TARGET_RATIO}: {'met' if ratio >= TARGET_RATIO else 'not met'})")
    (args.out / "gpu-summary.json").write_text(json.dumps({"versions": found, "train": row, "bench": bench}, indent=1),
                                              encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
