import math
from pathlib import Path

import pytest

from charlstm.analysis.longrange import (
    DemoConfig,
    recall_gradient_norm,
    score_positions,
    train_recall_model,
)
from charlstm.data.synth import load_positions, make_synth


def test_recall_marks_the_repeated_key_and_needs_memory_for_it():
    made = make_synth("recall", 5_000, 30, seed=1)
    for p in made.positions:
        line_start = made.text.rfind("\n", 0, p) + 1
        assert made.text[line_start] == "^" and made.text[p - 1] == "="
        assert made.text[p] == made.text[line_start + 1]  # the key, 31 characters back
        assert p - (line_start + 1) == 32
    assert made.ideal_loss == 0.0
    assert made.chance_loss == pytest.approx(math.log(8))


def test_bracket_losses_match_an_independent_parse():
    made = make_synth("brackets", 20_000, 3, seed=2)
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    ideal, chance, marked = 0.0, 0.0, []
    for index, char in enumerate(made.text):
        if char in pairs:
            # Closing is chosen with weight 0.15 against 0.7 for letters and 0.15 for opening below depth 3.
            total = 0.15 + 0.7 + (0.15 if len(stack) < 3 else 0.0)
            ideal -= math.log(0.15 / total)
            chance -= math.log(0.15 / total / 3)
            assert stack.pop() == pairs[char]
            marked.append(index)
        elif char in "([{":
            stack.append(char)
            assert len(stack) <= 3
    assert marked == made.positions
    assert made.ideal_loss == pytest.approx(ideal / len(marked))
    assert made.chance_loss == pytest.approx(chance / len(marked))


def test_counted_lines_end_where_announced():
    made = make_synth("counting", 10_000, 12, seed=3)
    lines = made.text.split("\n")[:-1]
    assert len(lines) == len(made.positions)
    hazard = 0.0
    for line, position in zip(lines, made.positions):
        count, letters = line.split(":")
        assert len(letters) == int(count) and 1 <= int(count) <= 12
        assert made.text[position] == "\n"
        hazard += math.log(12 - int(count) + 1)
    assert made.ideal_loss == 0.0
    assert made.chance_loss == pytest.approx(hazard / len(lines))


def test_sidecar_round_trips(tmp_path: Path):
    made = make_synth("recall", 2_000, 10)
    made.save(tmp_path / "r.txt")
    positions, meta = load_positions(tmp_path / "r.txt")
    assert positions == made.positions and meta["kind"] == "recall"


@pytest.fixture(scope="module")
def recall_models(tmp_path_factory):
    """An LSTM and a vanilla RNN of equal size, trained the same number of steps on distance-30 recall."""
    config = DemoConfig(distances=(30,), seconds_per_run=None, steps_per_run=1000, corpus_chars=100_000)
    work = tmp_path_factory.mktemp("recall")
    lstm = train_recall_model("lstm", 64, 30, config, work)
    rnn = train_recall_model("rnn", 128, 30, config, work)
    assert abs(lstm.model.num_parameters() - rnn.model.num_parameters()) < 0.02 * lstm.model.num_parameters()
    return lstm, rnn


def test_lstm_recalls_across_thirty_characters_and_the_rnn_does_not(recall_models):
    test = make_synth("recall", 20_000, 30, seed=5)
    lstm, rnn = (score_positions(t.model, t.corpus.vocab, test.text, test.positions) for t in recall_models)
    chance = 1 / 8
    assert lstm.accuracy > 2 * chance
    assert lstm.accuracy > rnn.accuracy + 0.1


def test_gradient_through_a_hundred_steps_vanishes_faster_in_the_rnn(recall_models):
    lstm, rnn = (recall_gradient_norm(t.model, t.corpus.vocab, 100) for t in recall_models)
    assert rnn < lstm



def test_eval_positions_scores_the_marked_characters(tmp_path: Path, recall_models):
    import json
    import subprocess
    import sys

    lstm, _ = recall_models
    made = make_synth("recall", 10_000, 30, seed=9)
    corpus = tmp_path / "recall.txt"
    made.save(corpus)
    done = subprocess.run(
        [sys.executable, "-m", "charlstm", "eval", str(corpus), "-c", str(lstm.run_dir), "--which", "last", "--positions", "--json"],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    direct = score_positions(lstm.model, lstm.corpus.vocab, made.text, made.positions)
    assert figures["positions"] == len(made.positions) == direct.count
    assert figures["accuracy"] == pytest.approx(direct.accuracy, abs=1e-6)
    assert figures["chance_loss"] == pytest.approx(math.log(8))
