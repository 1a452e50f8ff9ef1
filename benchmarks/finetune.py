"""Does starting from the shipped base model pay? Fine-tuning against training from scratch on small texts.

    python benchmarks/finetune.py [--corpora DIR] [--chars 150000] [--short 1m] [--long 10m] [--out DIR]
    python benchmarks/finetune.py --sweep lr|warmup [--sweep-lr 2e-3] [--sweep-steps 100]   # lr and warmup
    python benchmarks/finetune.py --inits                          # how new rows should start

Two small corpora the base never saw, cut from ../shared/corpora to --chars characters (written under
--out, never into the repository): Grimm's tales (English) and the Tang poems (thousands of CJK
characters the base lacks). On each, with the same file and so the same validation split (its last
10%), three plain `charlstm train` runs: (a) `--time 1m --init-from base`, (b) `--time 1m` from scratch,
(c) `--time 10m` from scratch. The table gives each run's best validation loss (nats/char) and a sample.
Runs are done one after another; each run's result is kept under --out, so an interrupted benchmark
goes on where it stopped. On a machine shared with other work, a wall-clock budget measures the
neighbours: give --short and --long as step counts (e.g. 60 and 600) for the same comparison in
equal compute (benchmarks/RESULTS.md says which was used).

--sweep fine-tunes the base on both corpora for a fixed number of steps (fixed steps, not time, so a
busy machine does not change what is compared) at several peak learning rates and warmups, through
the Python API. --inits measures, before any training, the loss of the grown model on each small
corpus and on a piece of the base's own validation text, for each way of starting the new rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPORA = REPO.parent / "shared" / "corpora"
SMALL_CORPORA = {"grimm": "grimm.txt", "tang": "tangpoems.txt"}
RUNS = {"a": ("from base", ["--init-from", "base"], "short"), "b": ("from scratch", [], "short"),
        "c": ("from scratch, 10x longer", [], "long")}
PRIMES = {"grimm": "The king said", "tang": "山"}
SWEEP_LRS = (6e-3, 3e-3, 1.5e-3, 7.5e-4)  # 6e-3 with warmup 50: a fresh run's, the baseline
SWEEP_WARMUPS = (0, 20, 50)  # 20 at the chosen lr is also in the lr sweep


def small_corpus(corpora: Path, name: str, chars: int, out: Path) -> Path:
    """The first ``chars`` characters of the book, as a file of its own (the same for every run)."""
    text = (corpora / SMALL_CORPORA[name]).read_text(encoding="utf-8")[:chars]
    path = out / "data" / f"{name}-{chars // 1000}k.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path


def charlstm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "charlstm", *args], check=True, capture_output=True, text=True)


def run_one(corpus: Path, name: str, key: str, budget: str, out: Path) -> dict[str, object]:
    """One run; ``budget`` is a duration (``1m``) or a step count (``120``)."""
    result_file = out / "results" / f"{name}-{key}.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    label, extra, _ = RUNS[key]
    run = f"{name}-{key}-{time.strftime('%Y%m%d-%H%M%S')}"
    started = time.perf_counter()
    limit = ["--steps", budget] if budget.isdigit() else ["--time", budget]
    charlstm("train", str(corpus), *limit, "--out", str(out / "runs"), "--name", run, *extra)
    wall = time.perf_counter() - started
    config = json.loads((out / "runs" / run / "last" / "config.json").read_text())
    model, metrics = config["model"], config["metrics"]
    sample = charlstm("sample", "-c", str(out / "runs" / run), "--length", "200", "--seed", "1", "--temp", "0.8",
                      "--prime", PRIMES[name]).stdout
    result = {
        "corpus": name, "run": key, "label": f"({key}) {label}, " + (f"{budget} steps" if budget.isdigit() else budget), "best_val_loss": metrics["best_val_loss"],
        "steps": metrics["step"], "chars_seen": metrics["chars_seen"], "wall_seconds": round(wall, 1),
        "model": f"{model['cell']} {model['num_layers']}x{model['hidden_size']} emb {model['emb_size']} drop {model['dropout']:g}",
        "lr": config["train"]["lr"], "vocab": len(config["vocab"]), "sample": sample, "dir": str(out / "runs" / run),
    }
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    return result


def load_small(path: Path):
    from charlstm.data.corpus import TextOptions
    from charlstm.data.sources import load_corpus

    return load_corpus([str(path)], TextOptions(), cache=None).corpus


def sweep_settings(kind: str, lr: float, skip: tuple[int, ...] = ()) -> list[tuple[float, int]]:
    """(peak lr, warmup steps) pairs: every lr at warmup 20 (and a fresh run's 6e-3 at 50), or every warmup at ``lr``."""
    if kind == "lr":
        return [(6e-3, 50), *((rate, 20) for rate in SWEEP_LRS)]
    return [(lr, warmup) for warmup in SWEEP_WARMUPS if warmup not in skip]


def sweep(paths: dict[str, Path], steps: int, settings: list[tuple[float, int]]) -> list[dict[str, object]]:
    """Fine-tune the base for ``steps`` steps at each (peak lr, warmup) and keep the best validation loss."""
    import tempfile

    from charlstm.training.finetune import finetune_train_config, plan_finetune
    from charlstm.training.sizing import RunChoices
    from charlstm.training.trainer import Trainer

    rows = []
    for name, path in paths.items():
        corpus = load_small(path)
        for lr, warmup in settings:
            plan = plan_finetune("base", corpus)
            config = dataclasses.replace(finetune_train_config(RunChoices(steps=steps, lr=lr, precision="fp32"), plan),
                                         warmup_steps=warmup, preview_chars=0)
            with tempfile.TemporaryDirectory() as scratch:
                started = time.perf_counter()
                result = Trainer(plan.corpus, plan.model_config, config, Path(scratch) / "run",
                                 model_state=plan.model_state, parent=plan.parent).train()
            rows.append({"corpus": name, "lr": lr, "warmup": warmup, "steps": steps,
                         "best_val_loss": result.best_val_loss, "seconds": round(time.perf_counter() - started, 1)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def inits(paths: dict[str, Path], corpora: Path) -> list[dict[str, object]]:
    """Loss before any training: the grown model on each small corpus's validation split and on 20k
    characters of the base's own validation text (the end of War and Peace), per way of starting new rows."""
    from charlstm.analysis.scoring import evaluate_text
    from charlstm.training.checkpoint import LoadedModel, load
    from charlstm.training.finetune import ROW_INITS, plan_finetune

    base = load("base")
    old_text = (corpora / "warpeace.txt").read_text(encoding="utf-8-sig").replace("\r\n", "\n")[-20_000:]
    rows = [{"corpus": "base validation (old chars)", "init": "the base itself",
             "loss": evaluate_text(base, old_text, precision="fp32").loss}]
    for name, path in paths.items():
        corpus = load_small(path)
        val_text = corpus.vocab.decode(corpus.split(0.1)[1])
        for init in ROW_INITS:
            plan = plan_finetune("base", corpus, init=init)
            from charlstm.model.network import CharLSTM

            model = CharLSTM(plan.model_config)
            model.load_state_dict(plan.model_state)
            grown = LoadedModel(model.eval(), plan.corpus.vocab, base.config, base.path)
            rows.append({"corpus": name, "init": init, "new_chars": len(plan.new_chars),
                         "loss": evaluate_text(grown, val_text, precision="fp32").loss,
                         "old_chars_loss": evaluate_text(grown, old_text, precision="fp32").loss})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def report(results: list[dict[str, object]]) -> None:
    print("| corpus | run | model | steps | chars seen | best val loss |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['corpus']} | {r['label']} | {r['model']}, vocab {r['vocab']} | {r['steps']} | {r['chars_seen']:,} "
              f"| {r['best_val_loss']:.4f} |")
    for r in results:
        print(f"\n{r['corpus']} {r['label']}:\n    " + str(r["sample"]).strip()[:200].replace("\n", "\n    "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", type=Path, default=DEFAULT_CORPORA)
    parser.add_argument("--chars", type=int, default=150_000)
    parser.add_argument("--short", default="1m", help="budget of (a) and (b): a duration, or a number of steps")
    parser.add_argument("--long", default="10m", help="budget of (c): a duration, or a number of steps")
    parser.add_argument("--only", default="a,b,c", help="which runs: a, b, c (comma-separated)")
    parser.add_argument("--names", default=",".join(SMALL_CORPORA), help="which small corpora (comma-separated)")
    parser.add_argument("--out", type=Path, default=Path("checkpoints/finetune-bench"))
    parser.add_argument("--sweep", choices=["lr", "warmup"], help="sweep peak learning rates, or warmups at --sweep-lr")
    parser.add_argument("--sweep-lr", type=float, default=2e-3)
    parser.add_argument("--skip-warmups", default="", help="warmups already measured (comma-separated)")
    parser.add_argument("--sweep-corpora", default=",".join(SMALL_CORPORA))
    parser.add_argument("--sweep-steps", type=int, default=100)
    parser.add_argument("--inits", action="store_true")
    args = parser.parse_args()
    paths = {name: small_corpus(args.corpora, name, args.chars, args.out) for name in SMALL_CORPORA}
    if args.sweep:
        chosen = {name: paths[name] for name in args.sweep_corpora.split(",")}
        rows = sweep(chosen, args.sweep_steps, sweep_settings(args.sweep, args.sweep_lr, tuple(int(w) for w in args.skip_warmups.split(",") if w)))
        print("| corpus | peak lr | warmup steps | best val loss after %d steps |" % args.sweep_steps)
        print("| --- | ---: | ---: | ---: |")
        for row in rows:
            print(f"| {row['corpus']} | {row['lr']:g} | {row['warmup']} | {row['best_val_loss']:.4f} |")
        return
    if args.inits:
        for row in inits(paths, args.corpora):
            print(row)
        return
    results = []
    for name in args.names.split(","):
        path = paths[name]
        for key in args.only.split(","):
            budget = args.short if RUNS[key][2] == "short" else args.long
            results.append(run_one(path, name, key, budget, args.out))
            print(f"{name} {key}: {results[-1]['best_val_loss']:.4f}", file=sys.stderr, flush=True)
    report(results)


if __name__ == "__main__":
    main()
