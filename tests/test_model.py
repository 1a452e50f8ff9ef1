import pytest
import torch

from charlstm.model import network as model_module
from charlstm.model.config import ModelConfig
from charlstm.model.network import CharLSTM, byte_dropout, detach_state


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_forward_returns_logits_and_carries_state(cell):
    model = CharLSTM(ModelConfig(vocab_size=11, emb_size=8, hidden_size=16, num_layers=2, cell=cell)).eval()
    ids = torch.randint(0, 11, (3, 10))
    logits, state = model(ids)
    assert logits.shape == (3, 10, 11)
    assert len(state) == (2 if cell == "lstm" else 1)
    # Feeding the text in two halves with the state carried gives the same logits as one pass.
    first, mid = model(ids[:, :4])
    second, _ = model(ids[:, 4:], detach_state(mid))
    torch.testing.assert_close(torch.cat([first, second], dim=1), logits)


def test_parameter_count_matches_the_layers():
    config = ModelConfig(vocab_size=10, emb_size=4, hidden_size=6, num_layers=1)
    lstm = 4 * 6 * (4 + 6) + 2 * 4 * 6
    assert CharLSTM(config).num_parameters() == 10 * 4 + lstm + 6 * 10 + 10


def test_config_round_trips_and_rejects_nonsense():
    config = ModelConfig(vocab_size=5)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError):
        ModelConfig(vocab_size=0)
    with pytest.raises(ValueError):
        ModelConfig.from_dict({"vocab_size": 5, "colour": "red"})


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_training_with_dropout_runs_the_stacked_layers_one_by_one_to_the_same_result(cell, monkeypatch):
    torch.manual_seed(0)
    model = CharLSTM(ModelConfig(vocab_size=9, emb_size=5, hidden_size=7, num_layers=3, dropout=0.3, cell=cell))
    ids = torch.randint(0, 9, (4, 6))
    state = tuple(torch.randn_like(s) for s in model.init_state(4))
    expected, expected_state = model.eval()(ids, state)
    monkeypatch.setattr(model_module, "byte_dropout", lambda x, p: x)
    got, got_state = model.train()(ids, state)
    torch.testing.assert_close(got, expected)
    for a, b in zip(got_state, expected_state):
        torch.testing.assert_close(a, b)


def test_training_drops_between_every_pair_of_layers_and_before_the_head(monkeypatch):
    torch.manual_seed(0)
    model = CharLSTM(ModelConfig(vocab_size=9, emb_size=5, hidden_size=7, num_layers=3, dropout=0.3)).train()
    seen = []
    real = model_module.byte_dropout
    monkeypatch.setattr(model_module, "byte_dropout", lambda x, p: seen.append((tuple(x.shape), p)) or real(x, p))
    model(torch.randint(0, 9, (4, 6)))
    assert seen == [((4, 6, 7), 0.3)] * 3
    seen.clear()
    model.eval()(torch.randint(0, 9, (4, 6)))
    assert seen == []


def test_byte_dropout_drops_p_of_every_byte_position_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.ones(8, 100_000)
    dropped = byte_dropout(x, 0.1)
    zeros = (dropped == 0).float()
    # Each of a random word's eight bytes masks a different element: all must be fair.
    per_position = zeros.view(-1, 8).mean(dim=0)
    assert torch.all((per_position - 26 / 256).abs() < 0.005), per_position
    assert abs(dropped.mean().item() - 1.0) < 0.01
    assert torch.allclose(dropped.unique(), torch.tensor([0.0, 256 / 230]))
    assert torch.equal(byte_dropout(x, 0.001), x)
    assert byte_dropout(x, 0.9999).count_nonzero() < x.numel() // 100  # p near 1 rounds to 255/256
    # bf16 activations: no systematic shrink from a bf16-rounded scale (256/230 -> 1.109 would be -0.33%).
    activations = (torch.rand(8, 100_000) + 1.0).to(torch.bfloat16)
    ratio = byte_dropout(activations, 0.1).double().mean() / activations.double().mean()
    assert abs(ratio.item() - 1.0) < 0.0015
