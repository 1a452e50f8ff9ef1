import json
import math
from collections import Counter

import pytest
import torch
from conftest import TINY_MODEL, tiny_train_config

from charlstm import Corpus, ModelConfig, Trainer, load
from charlstm.base.errors import CharlstmError
from charlstm.base.runtime import cpu_runs_bf16
from charlstm.training.checkpoint import read_evaluations, read_metrics
from charlstm.training.evaluation import evaluate


def unigram_entropy_nats(text: str) -> float:
    counts = Counter(text)
    total = len(text)
    return -sum(n / total * math.log(n / total) for n in counts.values())


def test_tiny_model_beats_unigram_entropy(trained_run, tiny_text):
    metrics = read_evaluations(trained_run)
    assert metrics, "training wrote no evaluations"
    best = min(m["val_loss"] for m in metrics)
    val_text = tiny_text[-len(tiny_text) // 10 :]
    assert best < unigram_entropy_nats(val_text) - 0.5


def test_best_is_the_lowest_validation_loss_seen(trained_run):
    losses = [m["val_loss"] for m in read_evaluations(trained_run)]
    best_config = json.loads((trained_run / "best" / "config.json").read_text())
    assert best_config["metrics"]["val_loss"] == min(losses)
    assert best_config["metrics"]["best_val_loss"] == min(losses)
    last_config = json.loads((trained_run / "last" / "config.json").read_text())
    assert last_config["metrics"]["val_loss"] == losses[-1]


def test_best_checkpoint_scores_its_recorded_loss(trained_run, tiny_text):
    loaded = load(trained_run, prefer="best")
    corpus = Corpus.from_text(tiny_text, vocab=loaded.vocab)
    _, val = corpus.split(0.1)
    train = loaded.config["train"]
    loss = evaluate(loaded.model, val, train["batch_size"], train["seq_len"], torch.device("cpu"))
    assert abs(loss - loaded.config["metrics"]["val_loss"]) < 1e-4


def test_schedule_warms_up_then_decays_to_the_floor(tmp_path, tiny_text):
    corpus = Corpus.from_text(tiny_text)
    trainer = Trainer(corpus, ModelConfig(vocab_size=len(corpus.vocab), **TINY_MODEL),
                      tiny_train_config(steps=100, warmup_steps=10, lr=1e-2, min_lr_ratio=0.1), tmp_path)
    rates = []
    for step in range(101):
        trainer.run.step = step
        rates.append(trainer.learning_rate())
    assert rates[0] < rates[5] < rates[9] == 1e-2
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
    assert abs(rates[100] - 1e-3) < 1e-12


def test_bf16_training_converges_close_to_fp32_or_is_refused_in_one_line(tmp_path, tiny_text):
    corpus = Corpus.from_text(tiny_text)
    config = ModelConfig(vocab_size=len(corpus.vocab), **TINY_MODEL)
    if not cpu_runs_bf16():  # an AVX2-only CPU: oneDNN has no bf16 LSTM, so asking for it is refused up front
        with pytest.raises(CharlstmError, match="cannot run bf16.*--precision fp32"):
            Trainer(corpus, config, tiny_train_config(steps=80, precision="bf16"), tmp_path / "bf16")
        assert not (tmp_path / "bf16").exists()
        return
    results = {}
    for precision in ("fp32", "bf16"):
        trainer = Trainer(corpus, config, tiny_train_config(steps=80, precision=precision), tmp_path / precision)
        results[precision] = trainer.train().best_val_loss
    assert abs(results["bf16"] - results["fp32"]) < 0.1


def test_metrics_log_the_train_loss_between_evaluations(trained_run):
    records = read_metrics(trained_run)
    between = [r for r in records if "val_loss" not in r]
    assert len(between) > len(records) - len(between)
    assert all(set(r) == {"step", "time", "lr", "train_loss", "chars_per_sec"} for r in between)
    steps = [r["step"] for r in records]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
