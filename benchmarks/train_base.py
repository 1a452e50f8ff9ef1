"""Train charlstm's shipped base model, ``charlstm/shipped/base/``, from public-domain books.

    python benchmarks/train_base.py [--corpora DIR] [--out DIR] [--steps N]

The base model is an ordinary ``charlstm train`` run (by step count, so that the same command on the
same machine gives the same weights) on five English books from ``../shared/corpora`` (Shakespeare,
Austen, Doyle, Melville, Tolstoy). Grimm's tales, Shelley's Frankenstein and the Tang poems are left
out: ``benchmarks/finetune.py`` fine-tunes on them, so they must be text the base never saw.

The run's best checkpoint is then packed: weights as fp16 safetensors (loading restores fp32) and a
config.json that names the books by file name and SHA-256 (never a path of this machine), with
the command, the wall time and the validation loss. The corpora themselves are never copied.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPORA = REPO.parent / "shared" / "corpora"
BOOKS = ("tinyshakespeare.txt", "prideprejudice.txt", "sherlock.txt", "mobydick.txt", "warpeace.txt")
HELD_OUT = ("grimm.txt", "frankenstein.txt", "tangpoems.txt")
# The shape: the `small` preset's layers, embedding, batch and learning rate, with 224 hidden units, so
# that its fp16 weights (about 1.4 MB) ship in the wheel. Characters seen fewer than 20 times in 6.8M
# (stray accents) become the unknown symbol.
SHAPE = ["--size", "small", "--hidden", "224", "--min-char-count", "20", "--seed", "1337", "--precision", "fp32"]
DEFAULT_STEPS = 2000
TARGET = REPO / "charlstm" / "shipped" / "base"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train(corpora: Path, out: Path, steps: int) -> tuple[Path, list[str], float]:
    books = [corpora / name for name in BOOKS]
    missing = [str(book) for book in books if not book.is_file()]
    if missing:
        sys.exit(f"error: corpus not found: {', '.join(missing)}; pass --corpora DIR")
    name = f"base-{steps}"
    command = ["charlstm", "train", *map(str, books), *SHAPE, "--steps", str(steps), "--out", str(out), "--name", name]
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", *command[0:1], *command[1:]], check=True, stdout=subprocess.DEVNULL)
    return out / name, command, time.perf_counter() - started


def pack(run_dir: Path, command: list[str], wall_seconds: float, corpora: Path) -> dict[str, object]:
    """best/ as fp16 weights and a config.json free of this machine's paths."""
    source = run_dir / "best"
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    weights = {name: tensor.half().contiguous() for name, tensor in load_file(str(source / "model.safetensors")).items()}
    loading = config["corpus"].get("loading", {})
    books = [{"file": name, "sha256": sha256(corpora / name), "bytes": (corpora / name).stat().st_size} for name in BOOKS]
    config["corpus"] = {
        "source": "five public-domain English books (Project Gutenberg; tiny Shakespeare from char-rnn)",
        "chars": config["corpus"]["chars"],
        "sha256": config["corpus"]["sha256"],
        "files": [{"path": book["file"], "sha256": book["sha256"], "bytes": book["bytes"]} for book in books],
        "loading": {key: value for key, value in loading.items() if key != "files"},
    }
    relative = [arg if not arg.startswith(str(corpora)) else f"../shared/corpora/{Path(arg).name}" for arg in command]
    config["base"] = {
        "name": "base",
        "trained_with": "python benchmarks/train_base.py",
        "command": shlex.join(relative[: relative.index("--out")]),
        "wall_seconds": round(wall_seconds, 1),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        "stored_as": "fp16 safetensors (loaded as fp32)",
        "held_out": list(HELD_OUT),
    }
    TARGET.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(TARGET / "model.safetensors"), metadata={"format": "pt", "charlstm": config["charlstm_version"]})
    (TARGET / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return {"val_loss": config["metrics"]["best_val_loss"], "steps": config["metrics"]["step"],
            "bytes": (TARGET / "model.safetensors").stat().st_size, **config["base"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", type=Path, default=DEFAULT_CORPORA)
    parser.add_argument("--out", type=Path, default=Path("checkpoints"))
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--pack-only", type=Path, metavar="RUN", help="pack an already trained run instead of training")
    parser.add_argument("--wall", type=float, default=0.0, help="with --pack-only: the training's wall time to record")
    args = parser.parse_args()
    if args.pack_only:
        run_dir, wall = args.pack_only, args.wall
        command = ["charlstm", "train", *[str(args.corpora / name) for name in BOOKS], *SHAPE, "--steps", str(args.steps), "--out"]
    else:
        run_dir, command, wall = train(args.corpora, args.out, args.steps)
    print(json.dumps(pack(run_dir, command, wall, args.corpora), indent=2))


if __name__ == "__main__":
    main()
