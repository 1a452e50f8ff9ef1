import random

import numpy as np
import pytest
import torch
from conftest import tiny_train_config
from torch import nn

from charlstm import Corpus, ModelConfig, Trainer, load
from charlstm.analysis.features import (
    FEATURES,
    inside_brackets,
    inside_quotes,
    line_position,
)
from charlstm.analysis.gates import (
    correlations,
    lstm_equations,
    saturation,
    top_units,
    trace_lstm,
)
from charlstm.base.errors import CharlstmError


@pytest.mark.parametrize("layers", [1, 3])
def test_explicit_gate_equations_reproduce_nn_lstm(layers):
    torch.manual_seed(0)
    lstm = nn.LSTM(7, 11, layers, batch_first=True)
    for parameter in lstm.parameters():
        nn.init.uniform_(parameter, -0.8, 0.8)  # larger than the default so gates reach saturation
    inputs = torch.randn(3, 25, 7)
    h0, c0 = torch.randn(layers, 3, 11), torch.randn(layers, 3, 11)
    with torch.no_grad():
        expected, (h_n, c_n) = lstm(inputs, (h0, c0))
        traced = lstm_equations(lstm, inputs, (h0, c0))
    assert torch.allclose(traced[-1]["h"], expected, atol=1e-5)
    for k, layer in enumerate(traced):
        assert torch.allclose(layer["h"][:, -1], h_n[k], atol=1e-5)
        assert torch.allclose(layer["c"][:, -1], c_n[k], atol=1e-5)
        for gate in "ifo":
            assert layer[gate].min() >= 0 and layer[gate].max() <= 1


PLAIN = "the cat sat on a mat and his dog ran to her red ball".split()
QUOTED = "zip zap yoyo buzz fizz jazz quiz wow yup".split()


def quoted_text(num_words: int, seed: int) -> str:
    """Plain words with "quoted spans" of other words: predicting a word's first letter needs to
    know whether a quote is open, so a trained model has reason to keep a quote cell."""
    rng = random.Random(seed)
    words: list[str] = []
    while num_words > 0:
        plain, quoted = rng.randint(3, 8), rng.randint(2, 6)
        words.extend(rng.choice(PLAIN) for _ in range(plain))
        words.append('"' + " ".join(rng.choice(QUOTED) for _ in range(quoted)) + '"')
        num_words -= plain + quoted
    return "\n".join(" ".join(words[i : i + 12]) for i in range(0, len(words), 12)) + "\n"


QUOTE_CELL_THRESHOLD = 0.8  # |r| of the best unit: trained ones reach 0.96-0.99, untrained ones 0.36-0.6


def best_quote_correlation(run_dir, probe: str) -> float:
    matches, _ = top_units(trace_lstm(load(run_dir), probe), ["in_quotes"], count=1)
    return abs(matches[0].r)


def test_a_trained_model_grows_a_quote_cell_that_an_untrained_one_lacks(tmp_path):
    corpus = Corpus.from_text(quoted_text(8000, seed=5))
    probe = quoted_text(400, seed=1)
    config = ModelConfig(vocab_size=len(corpus.vocab), emb_size=16, hidden_size=32, num_layers=1)
    Trainer(corpus, config, tiny_train_config(steps=150, seed=1), tmp_path / "trained").train()
    assert best_quote_correlation(tmp_path / "trained", probe) > QUOTE_CELL_THRESHOLD
    for seed in (1, 2, 3):
        untrained = Trainer(corpus, config, tiny_train_config(steps=1, seed=seed), tmp_path / f"untrained{seed}")
        untrained.save("best")
        assert best_quote_correlation(tmp_path / f"untrained{seed}", probe) < QUOTE_CELL_THRESHOLD


def test_trace_follows_the_model_and_skips_unknown_characters(trained_run):
    loaded = load(trained_run)
    trace = trace_lstm(loaded, "The cat€ sat.")
    assert trace.text == "The cat sat." and trace.unknown == {"€": 1}
    assert len(trace.layers) == 2 and trace.layers[0].cell.shape == (12, 48)
    with torch.no_grad():
        ids = torch.from_numpy(loaded.vocab.encode("The cat sat.").astype("int64")).unsqueeze(0)
        output, (h, c) = loaded.model.rnn(loaded.model.embedding(ids))
    assert np.allclose(trace.layers[-1].hidden, output[0].numpy(), atol=1e-5)
    assert np.allclose(trace.layers[0].cell[-1], c[0, 0].numpy(), atol=1e-5)


def test_inspect_refuses_a_gru_with_a_clear_message(tmp_path, tiny_text):
    corpus = Corpus.from_text(tiny_text)
    config = ModelConfig(vocab_size=len(corpus.vocab), emb_size=8, hidden_size=8, num_layers=1, cell="gru")
    Trainer(corpus, config, tiny_train_config(steps=1), tmp_path).save("best")
    with pytest.raises(CharlstmError, match="GRU.*--cell lstm"):
        trace_lstm(load(tmp_path), "the cat")


def test_features_mark_what_their_names_say():
    text = 'a "b c" (d\ne)'
    assert inside_quotes(text).tolist() == [0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert inside_brackets(text).tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0]
    assert line_position(text).tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 1, 2]
    assert FEATURES["after_newline"](text).tolist() == [float(c == "\n") for c in text]


def test_correlation_is_pearsons_r_and_zero_for_a_constant_unit():
    feature = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    values = np.stack([feature * 2 - 1, -feature, np.full(5, 0.3), np.array([1.0, 2.0, 0.0, 5.0, 1.0])], axis=1)
    r = correlations(values, feature)
    assert np.allclose(r[:3], [1.0, -1.0, 0.0])
    assert np.isclose(r[3], np.corrcoef(values[:, 3], feature)[0, 1])


def test_saturation_counts_fractions_near_zero_and_one(trained_run):
    trace = trace_lstm(load(trained_run), "The cat sat on a mat. The dog ran.\n")
    stats = saturation(trace)
    assert [(s.layer, s.gate) for s in stats] == [(k, g) for k in (0, 1) for g in ("input", "forget", "output")]
    forget = trace.layers[0].forget
    first = stats[1]
    assert np.isclose(first.left, (forget < 0.1).mean()) and np.isclose(first.right, (forget > 0.9).mean())
    assert all(0 <= s.left + s.right <= 1 and 0 <= s.units_right <= s.units == 48 for s in stats)
