"""Dynamic evaluation: each window scored before the model learns from it, on a copy in memory."""

import hashlib
import json
import random

import numpy as np
import pytest
from conftest import main_outcome

from charlstm import load
from charlstm.analysis.dynamic import (
    DynamicConfig,
    adapt_model,
    adaptable_copy,
    adapted,
    dynamic_evaluation,
)
from charlstm.analysis.scoring import evaluate_text, known_ids


def test_rate_zero_is_static_evaluation_exactly(trained_run, tiny_text):
    loaded = load(trained_run)
    text = tiny_text[:3000]
    still = dynamic_evaluation(loaded, text, DynamicConfig(rule="sgd", lr=0.0, decay=0.0, window=40))
    assert still.dynamic_loss == still.static.loss
    assert still.static.loss == evaluate_text(loaded, text, streams=1, seq_len=40).loss
    # with a decay but no step the weights stay the trained ones; only the kernel that keeps
    # what a backward needs may round differently
    pulled = dynamic_evaluation(loaded, text, DynamicConfig(rule="rms", lr=0.0, decay=0.1, window=40))
    assert pulled.dynamic_loss == pytest.approx(pulled.static.loss, abs=1e-6)


def test_no_character_is_scored_by_weights_that_have_seen_it(trained_run, tiny_text):
    loaded = load(trained_run)
    half = "".join(random.Random(3).choice("abcdefghijklmnoprstuvwy .") for _ in range(400))
    ids, _, _ = known_ids(loaded.vocab, half + half)
    config = DynamicConfig(rule="sgd", lr=1.0, decay=0.0, window=len(half))
    # one window: scored before any update, so exactly the static score however large the step
    first, count = adapt_model(adaptable_copy(loaded), ids[: len(half) + 1], config)
    static_first = evaluate_text(loaded, half + half[0], streams=1, seq_len=len(half))
    assert first / count == pytest.approx(static_first.loss, abs=1e-6)
    # in 20-character windows, with the second half repeating the first: the first half is scored as
    # it was alone, and the second half profits from having been read
    config = DynamicConfig(rule="rms", lr=0.01, decay=0.0, window=20)
    first, count = adapt_model(adaptable_copy(loaded), ids[: len(half) + 1], config)
    both, both_count = adapt_model(adaptable_copy(loaded), ids, config)
    windows = []
    adapt_model(adaptable_copy(loaded), ids, config, on_window=lambda done, total: windows.append(done))
    assert windows == list(range(1, 41))  # 799 characters scored: 39 windows of 20 and one of 19
    second = (both - first) / (both_count - count)
    assert second < first / count - 0.3, (first / count, second)


def test_dynamic_evaluation_lowers_the_loss_of_a_repetitive_text(trained_run, tiny_text):
    loaded = load(trained_run)
    text = ("The dog sat on her red mat. " * 40)[:1000]
    result = dynamic_evaluation(loaded, text, DynamicConfig(window=20))
    assert result.gain > 0.05
    record = result.to_dict()
    assert record["static_loss"] == result.static.loss and record["dynamic_loss"] == result.dynamic_loss
    assert record["rule"] == "rms" and record["window"] == 20


def test_adapted_model_is_a_copy_and_the_original_is_untouched(trained_run, tiny_text):
    loaded = load(trained_run)
    before = {name: tensor.clone() for name, tensor in loaded.model.state_dict().items()}
    changed = adapted(loaded, tiny_text[:800], DynamicConfig(window=32))
    after = loaded.model.state_dict()
    assert all(np.array_equal(before[name].numpy(), after[name].numpy()) for name in before)
    assert any(not np.array_equal(before[name].numpy(), value.numpy()) for name, value in changed.model.state_dict().items())
    assert changed.vocab is loaded.vocab


def _digests(folder):
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_eval_dynamic_command_shows_both_losses_and_leaves_the_checkpoint_alone(trained_run, tiny_corpus_file, tmp_path):
    before = _digests(trained_run)
    outcome = main_outcome("eval", str(tiny_corpus_file), "-c", str(trained_run), "--split", "val", "--dynamic",
                           "--window", "64", "--json")
    assert outcome.code == 0, outcome.stderr
    record = json.loads(outcome.stdout)
    assert record["static_loss"] == pytest.approx(record["loss"]) and record["dynamic_loss"] < record["static_loss"]
    assert record["gain"] == pytest.approx(record["static_loss"] - record["dynamic_loss"])
    table = main_outcome("eval", str(tiny_corpus_file), "-c", str(trained_run), "--split", "val", "--dynamic",
                         "--rule", "sgd", "--lr", "0.01", "--decay", "0.01", "--window", "64")
    assert table.code == 0 and "dynamic" in table.stdout and "gain" in table.stdout and "unchanged" in table.stdout
    assert _digests(trained_run) == before
    adapt_to = tmp_path / "style.txt"
    adapt_to.write_text("The red dog ran. " * 30)
    sampled = main_outcome("sample", "-c", str(trained_run), "--adapt-to", str(adapt_to), "--length", "40", "--seed", "1")
    assert sampled.code == 0, sampled.stderr
    assert _digests(trained_run) == before


def test_dynamic_options_refuse_in_one_line(trained_run, tiny_corpus_file):
    assert "--lr goes with --dynamic" in main_outcome("eval", str(tiny_corpus_file), "-c", str(trained_run),
                                                      "--lr", "0.1").error_line
    assert "give one" in main_outcome("eval", str(tiny_corpus_file), "-c", str(trained_run), "--dynamic",
                                      "--positions").error_line
