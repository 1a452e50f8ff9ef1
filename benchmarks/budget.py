"""Does `charlstm train --time T` keep its promise, alone and on a busy machine?

    python benchmarks/budget.py [--budgets 30s,3m] [--corpora default,tinyshakespeare] [--only alone|busy]
    python benchmarks/budget.py --threads        # what helps a training step when another process takes a core

Runs `charlstm train CORPUS --time T` (no other flags) on the built-in default corpus and on tiny
Shakespeare, once alone and once beside a process that keeps one core busy (a Python busy loop), and
prints for each: wall clock from the first training step to the exit against the budget (and the
whole process's, start-up included), training steps, the share of the run spent evaluating, and the
final validation loss. ``--threads`` times the 2x384 training step with PyTorch's default OpenMP
settings, with OMP_WAIT_POLICY=PASSIVE, and with fewer threads, alone and busy, side by side.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"
CORPORA = {"default": None, "tinyshakespeare": SHARED / "tinyshakespeare.txt"}
TOLERANCE = lambda budget: max(5.0, 0.02 * budget)  # noqa: E731 - the promise, as README states it


def _burn(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


class BusyCore:
    """Another program taking one core for the duration of a block."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __enter__(self) -> "BusyCore":
        self.process = multiprocessing.Process(target=_burn, args=(time.time() + self.seconds,), daemon=True)
        self.process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.join()


def seconds_of(budget: str) -> float:
    unit = {"s": 1, "m": 60, "h": 3600}[budget[-1]]
    return float(budget[:-1]) * unit


def train(corpus: Path | None, budget: str, out: Path, name: str) -> dict[str, object]:
    command = [sys.executable, "-m", "charlstm", "train", *([str(corpus)] if corpus else []), "--time", budget,
               "--out", str(out), "--name", name]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    process_wall = time.perf_counter() - started
    config = json.loads((out / name / "last" / "config.json").read_text())
    records = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    state = config["metrics"]
    evals = [r for r in records if r.get("val_loss") is not None]
    return {"steps": state["step"], "val_loss": evals[-1]["val_loss"] if evals else float("nan"),
            "process_wall": process_wall, "model": f"{config['model']['num_layers']}x{config['model']['hidden_size']}",
            "precision": config["precision"], "run": str(out / name)}


def run_table(budgets: list[str], corpora: list[str], modes: list[str], out: Path) -> None:
    print("| corpus | budget | machine | model | wall (run) | wall (process) | bound | steps | evaluation | final val loss |")
    print("| --- | --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: |")
    for corpus_name in corpora:
        for budget in budgets:
            for mode in modes:
                name = f"budget-{corpus_name}-{budget}-{mode}-{time.strftime('%H%M%S')}"
                seconds = seconds_of(budget)
                if mode == "busy":
                    with BusyCore(seconds * 3 + 120):
                        row = train(CORPORA[corpus_name], budget, out, name)
                else:
                    row = train(CORPORA[corpus_name], budget, out, name)
                summary = json.loads((Path(row["run"]) / "summary.json").read_text())
                run_wall = summary["elapsed"]
                eval_share = summary["eval_seconds"] / max(run_wall, 1e-9)
                bound = seconds + TOLERANCE(seconds)
                print(f"| {corpus_name} | {budget} | {mode} | {row['model']} {row['precision']} | {run_wall:.1f} s | "
                      f"{row['process_wall']:.1f} s | {'within' if run_wall <= bound else 'OVER'} {bound:.0f} s | "
                      f"{row['steps']} | {eval_share:.1%} | {row['val_loss']:.4f} |", flush=True)


STEP_PROBE = """
import time, torch, torch.nn.functional as F
from charlstm.model.network import CharLSTM
from charlstm.training.presets import PRESETS
from charlstm.base.runtime import autocast, resolve_precision
threads = int(__import__('os').environ.get('PROBE_THREADS', '0'))
if threads: torch.set_num_threads(threads)
preset = PRESETS['medium']; model = CharLSTM(preset.model_config(65)).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
ids = torch.randint(0, 65, (32, 65)); dev = torch.device('cpu'); prec = resolve_precision('auto', dev)
def step():
    with autocast(dev, prec):
        logits, _ = model(ids[:, :-1]); loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
    opt.zero_grad(); loss.backward(); opt.step()
step()
times = []
for _ in range(12):
    t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
times.sort(); print(sum(times[2:10]) / 8)
"""


def thread_probe() -> None:
    variants = {
        "default (2 threads, OpenMP spins)": {},
        "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
        "1 thread": {"PROBE_THREADS": "1"},
        "1 thread, PASSIVE": {"PROBE_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"},
    }
    print("| setting | step alone (ms) | step beside a busy core (ms) | busy / alone |")
    print("| --- | ---: | ---: | ---: |")
    for label, extra in variants.items():
        env = {**os.environ, **extra}
        alone = float(subprocess.run([sys.executable, "-c", STEP_PROBE], env=env, capture_output=True, text=True, check=True).stdout)
        with BusyCore(120):
            busy = float(subprocess.run([sys.executable, "-c", STEP_PROBE], env=env, capture_output=True, text=True, check=True).stdout)
        print(f"| {label} | {alone * 1000:.0f} | {busy * 1000:.0f} | {busy / alone:.2f}x |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", default="30s,3m")
    parser.add_argument("--corpora", default="default,tinyshakespeare")
    parser.add_argument("--only", choices=["alone", "busy"])
    parser.add_argument("--out", type=Path, default=Path("checkpoints"))
    parser.add_argument("--threads", action="store_true", help="time the training step under each thread setting instead")
    args = parser.parse_args()
    if args.threads:
        thread_probe()
        return
    modes = [args.only] if args.only else ["alone", "busy"]
    run_table(args.budgets.split(","), args.corpora.split(","), modes, args.out)


if __name__ == "__main__":
    main()
