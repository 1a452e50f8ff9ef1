import pytest
import torch

from charlstm import Generator, SamplingOptions, load
from charlstm.base.errors import CharlstmError, UnknownCharactersError
from charlstm.generation.generator import pick_next


@pytest.fixture(scope="module")
def generator(trained_run):
    """fp32, so that its fused steps can be held to the model's own forward exactly enough for greedy decoding."""
    loaded = load(trained_run)
    return Generator(loaded.model, loaded.vocab, precision="fp32")


def test_temperature_zero_is_argmax_decoding(generator):
    text = generator.generate("The cat", 40, temperature=0.0)[0]
    ids = generator.encode_prime(generator.lead_in + "The cat")
    state = None
    expected = []
    with torch.no_grad():
        logits, state = generator.model(ids.unsqueeze(0), state)
        for _ in range(40):
            best = int(logits[0, -1].argmax())
            expected.append(generator.vocab.chars[best])
            logits, state = generator.model(torch.tensor([[best]]), state)
    assert text == "".join(expected)


def test_same_seed_gives_the_same_sample(generator):
    first = generator.generate("The", 80, temperature=1.0, seed=7)
    assert first == generator.generate("The", 80, temperature=1.0, seed=7)
    assert first != generator.generate("The", 80, temperature=1.0, seed=8)


def test_batched_samples_differ_and_have_the_right_length(generator):
    samples = generator.generate("", 50, temperature=1.0, num_samples=4, seed=1)
    assert len(samples) == 4 and all(len(s) == 50 for s in samples)
    assert len(set(samples)) > 1


def test_top_k_never_emits_outside_the_k_most_likely():
    rng = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 30, generator=rng)
    allowed = torch.topk(logits, 5, dim=-1).indices
    for _ in range(50):
        picked = pick_next(logits, SamplingOptions(temperature=2.0, top_k=5), rng)
        assert (allowed == picked.unsqueeze(1)).any(dim=1).all()


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    rng = torch.Generator().manual_seed(0)
    seen = {int(pick_next(logits, SamplingOptions(top_p=0.7), rng)) for _ in range(300)}
    assert seen == {0, 1}


def test_top_k_in_a_stream_is_checked_at_every_step(generator):
    options = SamplingOptions(temperature=1.5, top_k=2)
    logits, state = generator.prime("The ")
    rng = torch.Generator().manual_seed(3)
    for _ in range(60):
        top2 = torch.topk(logits, 2, dim=-1).indices[0].tolist()
        picked = pick_next(logits, options, rng)
        assert int(picked) in top2
        logits, state = generator.feed_step(picked, state)


def test_bad_sampling_requests_are_refused(generator):
    with pytest.raises(UnknownCharactersError, match="'Ж'"):
        generator.generate("Жук", 10)
    with pytest.raises(CharlstmError, match="larger than the vocabulary"):
        generator.generate("", 10, top_k=10_000)
    with pytest.raises(CharlstmError):
        SamplingOptions(temperature=-1)
    with pytest.raises(CharlstmError):
        SamplingOptions(top_p=1.5)
    assert len(generator.generate("Жук", 10, unknown="skip")[0]) == 10
