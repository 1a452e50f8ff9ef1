import pytest
import torch

from charlstm.model import CharLSTM, ModelConfig, detach_state


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
