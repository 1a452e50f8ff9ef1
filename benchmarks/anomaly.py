"""Find the odd log line out: train a character model on normal log lines, rank a test log by
surprise (`charlstm score --lines`), report ROC AUC and precision@k per kind of anomaly.

    python benchmarks/anomaly.py [--time 90] [--threads 1] [--seed 0] [--keep DIR]

The log is synthetic and written here: timestamps, hosts, services with their process ids,
users, methods, paths, status codes, sizes and durations, with rare-but-normal variation (error
codes, a long tail of users and paths, a slow request now and then). The test log holds normal
lines (from the same generator, never seen in training) and injected anomalies of five kinds:

    unknown_user   a user name outside the population        (one field changed)
    odd_path       a path no service serves (traversal, probes)
    bad_timestamp  a malformed or impossible timestamp
    shuffled       the line's fields in another order
    binary_junk    bytes of binary data decoded as text

A model of a fixed shape is trained on the normal lines for ``--time`` seconds through the Python
API, then every test line is scored from a fresh state. Per kind, the AUC is the chance that a
line of that kind outranks a normal line. The scoring speed is measured beside plain `eval` of
the same text by the same model, in the same process; and again for the shape a default
ten-minute run trains (2x384), untrained, since speed does not depend on the weights.
``--keep DIR`` writes the logs, the labels and the run there, to try the CLI on them.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from charlstm import Corpus, ModelConfig, TrainConfig, Trainer
from charlstm.analysis.lines import RANK_BY, precision_at, roc_auc, score_lines
from charlstm.analysis.scoring import evaluate_text
from charlstm.data.corpus import Vocab
from charlstm.model.network import CharLSTM
from charlstm.training.checkpoint import LoadedModel, load
from charlstm.training.presets import PRESETS

KINDS = ("unknown_user", "odd_path", "bad_timestamp", "shuffled", "binary_junk")
SERVICES = {"sshd": ("login", "logout", "auth"), "nginx": ("GET", "POST", "PUT", "DELETE"), "cron": ("run",),
            "app": ("GET", "POST")}
PATHS = ["/", "/index.html", "/api/v1/orders", "/api/v1/orders/{id}", "/api/v1/users/{id}", "/api/v1/cart",
         "/static/css/site.css", "/static/js/app.js", "/login", "/logout", "/search?q={word}", "/health",
         "/api/v2/invoices/{id}/pdf", "/images/{id}.png"]
WORDS = ["shoes", "coat", "lamp", "chair", "book", "phone", "desk", "mug", "rug", "bike"]
ODD_PATHS = ["/../../etc/passwd", "/wp-admin/setup-config.php", "/cgi-bin/.%2e/%2e%2e/bin/sh", "/.env",
             "/api/v1/orders/1 OR 1=1--", "/phpmyadmin/index.php", "/%00%00%00", "/api/v1/users/-1/../../admin"]
FIRST = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "oscar",
         "peggy", "trent", "victor", "walter", "sybil", "rupert", "nina", "omar"]


@dataclass
class LogWorld:
    """The population the normal log is drawn from: hosts, users (a few busy, a long tail), paths."""

    rng: random.Random

    def __post_init__(self) -> None:
        self.hosts = [f"web-{n:02d}" for n in range(1, 9)] + ["db-01", "db-02", "batch-01"]
        self.users = [f"{name}{suffix}" for name in FIRST for suffix in ("", ".ops", "_svc")][:48]
        self.user_weights = [1.0 / (rank + 1) for rank in range(len(self.users))]  # Zipf: rare users are normal
        self.start = time.mktime((2026, 3, 1, 0, 0, 0, 0, 0, -1))

    def timestamp(self, seconds: float) -> str:
        stamp = time.gmtime(self.start + seconds)
        return time.strftime("%Y-%m-%dT%H:%M:%S", stamp) + f".{self.rng.randrange(1000):03d}Z"

    def path(self) -> str:
        path = self.rng.choice(PATHS)
        return path.replace("{id}", str(self.rng.randrange(1, 99999))).replace("{word}", self.rng.choice(WORDS))

    def fields(self, seconds: float) -> list[str]:
        rng = self.rng
        service = rng.choices(list(SERVICES), weights=[2, 6, 1, 4])[0]
        user = rng.choices(self.users, weights=self.user_weights)[0]
        status = rng.choices(["200", "201", "204", "301", "304", "400", "401", "403", "404", "500", "503"],
                             weights=[70, 5, 3, 2, 6, 2, 2, 1, 5, 0.5, 0.3])[0]
        ms = int(rng.lognormvariate(3.3, 0.8)) + (rng.randrange(2000, 9000) if rng.random() < 0.01 else 0)
        action = rng.choice(SERVICES[service])
        target = self.path() if service in ("nginx", "app") else ("job=" + rng.choice(["backup", "rotate", "report"])
                                                                  if service == "cron" else "port=22")
        return [self.timestamp(seconds), rng.choice(self.hosts), f"{service}[{rng.randrange(100, 32768)}]:",
                f"user={user}", f"action={action}", target, f"status={status}", f"bytes={int(rng.expovariate(1 / 4000))}",
                f"ms={ms}"]

    def normal_lines(self, count: int, offset: float = 0.0) -> list[str]:
        seconds, lines = offset, []
        for _ in range(count):
            seconds += self.rng.expovariate(1 / 2.0)
            lines.append(" ".join(self.fields(seconds)))
        return lines

    def anomaly(self, kind: str, seconds: float) -> str:
        rng, fields = self.rng, self.fields(seconds)
        if kind == "unknown_user":
            name = "".join(rng.choice("bcdfghjklmnpqrstvwxz0123456789") for _ in range(rng.randint(5, 9)))
            fields[3] = f"user={name}"
        elif kind == "odd_path":
            fields[1] = rng.choice(self.hosts[:8])
            fields[2] = f"nginx[{rng.randrange(100, 32768)}]:"
            fields[5] = rng.choice(ODD_PATHS)
        elif kind == "bad_timestamp":
            fields[0] = rng.choice([
                f"2026-{rng.randint(13, 19)}-{rng.randint(32, 39)}T{rng.randint(24, 29)}:{rng.randint(60, 99)}:00.000Z",
                time.strftime("%d/%m/%Y %H:%M:%S", time.gmtime(self.start + seconds)),
                str(int(self.start + seconds)),
                fields[0][:10] + " " + fields[0][11:19],
            ])
        elif kind == "shuffled":
            head = fields[:3]
            tail = fields[3:]
            while tail == fields[3:]:
                rng.shuffle(tail)
            fields = head + tail if rng.random() < 0.5 else tail[:2] + head + tail[2:]
        elif kind == "binary_junk":
            junk = bytes(rng.randrange(128, 256) if rng.random() < 0.7 else rng.randrange(33, 127)
                         for _ in range(rng.randint(20, 80)))
            return junk.decode("latin-1")
        return " ".join(fields)


def make_logs(seed: int, train_lines: int, test_normal: int, per_kind: int) -> tuple[str, list[str], list[str]]:
    """The training log, and the test log's lines with each line's kind ("normal" or an anomaly)."""
    world = LogWorld(random.Random(seed))
    train = world.normal_lines(train_lines)
    test = world.normal_lines(test_normal, offset=train_lines * 2.0)
    kinds = ["normal"] * len(test)
    for kind in KINDS:
        for _ in range(per_kind):
            position = world.rng.randrange(len(test) + 1)
            test.insert(position, world.anomaly(kind, train_lines * 2.0 + position * 2.0))
            kinds.insert(position, kind)
    return "\n".join(train) + "\n", test, kinds


def speed(loaded: LoadedModel, text: str) -> dict[str, float]:
    """chars/s of `score --lines` (fresh state, batched) and of plain `eval` on the same text, side by side."""
    lines = score_lines(loaded, text)
    plain = evaluate_text(loaded, text)
    return {"lines_chars_per_sec": lines.chars_per_sec, "eval_chars_per_sec": plain.chars_per_sec,
            "ratio": lines.chars_per_sec / plain.chars_per_sec}


def default_shape_model(vocab: Vocab) -> LoadedModel:
    """The shape a default ten-minute run trains, untrained: for its speed only."""
    torch.manual_seed(0)
    model = CharLSTM(PRESETS["medium"].model_config(len(vocab))).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return LoadedModel(model, vocab, {"train": {"batch_size": 32, "seq_len": 64}, "precision": "fp32"}, Path("<medium>"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--time", type=float, default=90.0, help="training budget in seconds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-lines", type=int, default=6000)
    parser.add_argument("--test-lines", type=int, default=2000)
    parser.add_argument("--per-kind", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--keep", type=Path, help="write the logs, labels and run here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="charlstm-anomaly-"))
    folder.mkdir(parents=True, exist_ok=True)
    train_text, test_lines, kinds = make_logs(args.seed, args.train_lines, args.test_lines, args.per_kind)
    (folder / "normal.log").write_text(train_text, encoding="utf-8")
    (folder / "test.log").write_text("\n".join(test_lines) + "\n", encoding="utf-8")
    (folder / "labels.txt").write_text("".join("0\n" if kind == "normal" else "1\n" for kind in kinds))
    (folder / "reference.log").write_text("\n".join(LogWorld(random.Random(args.seed + 1)).normal_lines(1000)) + "\n")

    corpus = Corpus.from_text(train_text, source="normal.log")
    config = ModelConfig(vocab_size=len(corpus.vocab), emb_size=32, hidden_size=args.hidden, num_layers=1, dropout=0.0)
    run_dir = folder / "run"
    started = time.perf_counter()
    result = Trainer(corpus, config, TrainConfig(batch_size=32, seq_len=128, time_budget=args.time, lr=6e-3,
                                                 precision="fp32", device="cpu", preview_chars=0, evals_per_run=3),
                     run_dir).train()
    train_seconds = time.perf_counter() - started
    loaded = load(run_dir)
    scores = score_lines(loaded, "\n".join(test_lines) + "\n")
    labels = np.array([kind != "normal" for kind in kinds], dtype=int)
    kind_array = np.array(kinds)
    report: dict[str, object] = {
        "model": f"1x{args.hidden} emb 32", "train_seconds": round(train_seconds, 1), "steps": result.steps,
        "val_loss": result.best_val_loss, "train_chars": len(train_text), "test_lines": len(test_lines),
        "anomalies": int(labels.sum()), "threads": args.threads, "by": {},
    }
    for by in RANK_BY:
        keys = scores.keys(by)
        per_kind = {}
        for kind in ("all", *KINDS):
            chosen = (kind_array == "normal") | ((kind_array != "normal") if kind == "all" else (kind_array == kind))
            k = int(labels[chosen].sum())
            per_kind[kind] = {"auc": roc_auc(keys[chosen], labels[chosen]),
                              "precision_at_k": precision_at(keys[chosen], labels[chosen], k), "k": k}
        report["by"][by] = per_kind  # type: ignore[index]
    test_text = "\n".join(test_lines) + "\n"
    report["speed_trained"] = speed(loaded, test_text)
    report["speed_default_shape"] = speed(default_shape_model(loaded.vocab), test_text)
    print(json.dumps(report, indent=2))
    print("\n| kind | AUC (mean) | P@k (mean) | AUC (total) | P@k (total) | AUC (peak) | P@k (peak) | k |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind in ("all", *KINDS):
        row = [report["by"][by][kind] for by in RANK_BY]  # type: ignore[index]
        cells = " | ".join(f"{r['auc']:.3f} | {r['precision_at_k']:.3f}" for r in row)
        print(f"| {kind} | {cells} | {row[0]['k']} |")
    print(f"\nfiles in {folder}")


if __name__ == "__main__":
    main()
