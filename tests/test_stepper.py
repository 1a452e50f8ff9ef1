"""The fused sampling path computes the model's own distribution and keeps the Generator's semantics."""

import pytest
import torch

from charlstm import CharLSTM, Generator, ModelConfig, SamplingOptions, Vocab, load
from charlstm.base.errors import CharlstmError
from charlstm.base.runtime import cpu_runs_bf16
from charlstm.generation.generator import InPlaceDraw, pick_next
from charlstm.model.stepper import LSTMStepper


@pytest.fixture(scope="module")
def loaded(trained_run):
    return load(trained_run)


def run_both(model, precision, batch=3, steps=12, seed=0):
    """Feed the same random characters to the fused stepper and to model(ids, state); both logits per step."""
    rng = torch.Generator().manual_seed(seed)
    stepper = LSTMStepper(model, batch, precision)
    state = tuple(torch.randn(s.shape, generator=rng) * 0.5 for s in model.init_state(batch))
    stepper.load_state(state)
    pairs = []
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.randint(0, model.config.vocab_size, (batch,), generator=rng)
            expected, state = model(ids.unsqueeze(1), state)
            pairs.append((stepper.step(ids).clone(), expected[:, -1]))
    return pairs, stepper.state(), state


def test_fp32_fused_step_matches_the_model_forward(loaded):
    pairs, fused_state, model_state = run_both(loaded.model.eval(), "fp32")
    for fused, expected in pairs:
        torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
    for fused, expected in zip(fused_state, model_state):
        torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)


def test_bf16_fused_step_matches_the_model_to_bf16_rounding(loaded):
    pairs, _, _ = run_both(loaded.model.eval(), "bf16")
    for fused, expected in pairs:
        assert (fused - expected).abs().max() < 0.05 * expected.abs().max()
        assert torch.equal(fused.argmax(-1), expected.argmax(-1))


def test_fused_step_matches_an_untrained_deep_model_too():
    torch.manual_seed(0)
    model = CharLSTM(ModelConfig(vocab_size=20, emb_size=8, hidden_size=24, num_layers=3)).eval()
    pairs, _, _ = run_both(model, "fp32", batch=2, steps=5)
    for fused, expected in pairs:
        torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)


def test_in_place_draw_picks_what_pick_next_picks_for_the_same_seed():
    logits = torch.randn(4, 30, generator=torch.Generator().manual_seed(1)) * 3
    for options in (SamplingOptions(temperature=0.7), SamplingOptions(temperature=0.0), SamplingOptions(top_k=3)):
        draw = InPlaceDraw(options, 4, 30, torch.Generator().manual_seed(5))
        reference = torch.Generator().manual_seed(5)
        for _ in range(50):
            assert torch.equal(draw(logits), pick_next(logits, options, reference))


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_the_race_draws_from_the_softmax_and_never_a_masked_character(temperature):
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    logits = probs.log().expand(40_000, -1).clone()  # the last one is -inf: a cut character
    draw = InPlaceDraw(SamplingOptions(temperature=temperature), 40_000, 5, torch.Generator().manual_seed(3))
    counts = torch.bincount(draw(logits), minlength=5).double() / 40_000
    expected = torch.softmax(probs.log() / temperature, dim=-1).double()
    assert counts[4] == 0
    assert (counts - expected).abs().max() < 0.01, (counts, expected)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_same_seed_same_text_in_either_precision(loaded, precision):
    if precision == "bf16" and not cpu_runs_bf16():  # an AVX2-only CPU: refused up front, in one line
        with pytest.raises(CharlstmError, match="cannot run bf16"):
            Generator(loaded.model, loaded.vocab, precision=precision)
        return
    generator = Generator(loaded.model, loaded.vocab, precision=precision)
    first = generator.generate("The", 60, temperature=0.9, num_samples=2, seed=11)
    assert first == generator.generate("The", 60, temperature=0.9, num_samples=2, seed=11)


def test_streamed_top_k_characters_are_among_the_models_k_most_likely(loaded):
    generator = Generator(loaded.model, loaded.vocab, precision="fp32")
    text = generator.generate("The ", 60, temperature=2.0, top_k=2, seed=4)[0]
    lead = len(generator.lead_in)
    ids = generator.encode_prime(generator.lead_in + "The " + text)
    with torch.no_grad():
        logits, _ = loaded.model(ids.unsqueeze(0))
    top2 = torch.topk(logits[0, lead + 3 : -1], 2, dim=-1).indices
    assert (top2 == ids[lead + 4 :].unsqueeze(1)).any(dim=1).all()


def test_last_state_continues_where_the_stream_stopped(loaded):
    generator = Generator(loaded.model, loaded.vocab, precision="fp32")
    first = generator.generate("The cat", 15, temperature=0.0)[0]
    options = SamplingOptions(temperature=0.0)
    continued = "".join(c[0] for c in generator.stream(" ", 15, options, state=generator.last_state))
    assert continued == generator.generate("The cat" + first + " ", 15, temperature=0.0)[0]


def test_interleaved_streams_do_not_disturb_each_other(loaded):
    generator = Generator(loaded.model, loaded.vocab)
    alone = generator.generate("The", 30, temperature=1.0, seed=3)[0]
    options = SamplingOptions(temperature=1.0)
    one, two = generator.stream("The", 30, options, seed=3), generator.stream("The", 30, options, seed=3)
    pairs = [(a[0], b[0]) for a, b in zip(one, two)]
    assert "".join(a for a, _ in pairs) == alone == "".join(b for _, b in pairs)


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_other_cells_sample_through_the_model_forward(cell):
    torch.manual_seed(0)
    model = CharLSTM(ModelConfig(vocab_size=5, emb_size=4, hidden_size=8, num_layers=2, cell=cell))
    generator = Generator(model, Vocab(list("abcde")), precision="fp32")
    text = generator.generate("ab", 10, temperature=0.0)[0]
    ids, expected = generator.encode_prime(generator.lead_in + "ab").unsqueeze(0), []
    with torch.no_grad():
        logits, state = model(ids)
        for _ in range(10):
            best = int(logits[0, -1].argmax())
            expected.append("abcde"[best])
            logits, state = model(torch.tensor([[best]]), state)
    assert text == "".join(expected)
    assert len(generator.last_state) == 1
