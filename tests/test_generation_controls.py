"""Generation controls: stop strings, line counts, length bounds, log-probabilities, min-p, batches that end row by row."""

import io
import json
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import main_outcome

from charlstm import Generator, load
from charlstm.base.errors import CharlstmError
from charlstm.generation.controls import (
    GenerationRequest,
    SampleResult,
    SamplingOptions,
    TextDelta,
)
from charlstm.generation.generator import InPlaceDraw, pick_next


@pytest.fixture(scope="module")
def generator(trained_run):
    loaded = load(trained_run)
    return Generator(loaded.model, loaded.vocab, precision="fp32")


def plain(generator, **fields) -> list[str]:
    """The samples with no stop condition but the length: what the stops are checked against."""
    return [r.text for r in generator.complete(GenerationRequest(**fields))]


def streamed(generator, request) -> tuple[dict[int, str], dict[int, SampleResult]]:
    texts, results = {}, {}
    for event in generator.run(request):
        if isinstance(event, TextDelta):
            assert event.sample not in results, "no text after a sample's result"
            texts[event.sample] = texts.get(event.sample, "") + event.text
        else:
            results[event.index] = event
    return texts, results


def test_new_api_draws_what_generate_draws_for_the_same_seed(generator):
    assert plain(generator, prime="The", length=50, seed=3, num_samples=3) == generator.generate("The", 50, seed=3, num_samples=3)


def test_each_finish_reason(generator):
    text = plain(generator, prime="The cat", length=200, seed=1)[0]
    assert "\n" in text and " " in text
    by_length = generator.complete(GenerationRequest("The cat", 200, seed=1))[0]
    assert (by_length.finish_reason, by_length.text, by_length.generated) == ("length", text, 200)
    by_stop = generator.complete(GenerationRequest("The cat", 200, seed=1, stop=(" ",)))[0]
    assert (by_stop.finish_reason, by_stop.text, by_stop.stop) == ("stop", text[: text.index(" ")], " ")
    by_lines = generator.complete(GenerationRequest("The cat", 200, seed=1, lines=1))[0]
    assert (by_lines.finish_reason, by_lines.text) == ("lines", text[: text.index("\n")])
    kept = generator.complete(GenerationRequest("The cat", 200, seed=1, lines=1, keep_stop=True))[0]
    assert kept.text == text[: text.index("\n") + 1]


def test_two_lines_end_after_the_second_newline(generator):
    seed, text = next((s, t) for s in range(20) if (t := plain(generator, prime="The", length=400, seed=s)[0]).count("\n") >= 2)
    second = text.index("\n", text.index("\n") + 1)
    result = generator.complete(GenerationRequest("The", 400, seed=seed, lines=2))[0]
    assert result.text == text[:second] and result.finish_reason == "lines"


def test_a_stop_string_split_across_steps_is_caught_and_never_streamed(generator):
    text = plain(generator, prime="The", length=300, seed=4)[0]
    stop = text[40:43]  # three characters: three steps
    first = text.index(stop)
    texts, results = streamed(generator, GenerationRequest("The", 300, seed=4, stop=(stop, "\u0416\u0416")))
    assert results[0].finish_reason == "stop" and results[0].text == text[:first]
    assert texts.get(0, "") == text[:first]  # the deltas never showed a piece of the stop
    kept = generator.complete(GenerationRequest("The", 300, seed=4, stop=(stop,), keep_stop=True))[0]
    assert kept.text == text[: first + 3] and kept.generated == first + 3


def test_stop_strings_that_never_occur_run_to_the_length(generator):
    text = plain(generator, prime="The", length=120, seed=5)[0]
    for stops in (("qqqqqqq",), ("\u0416",), ("Жук", "zzzz")):
        result = generator.complete(GenerationRequest("The", 120, seed=5, stop=stops))[0]
        assert (result.finish_reason, result.text) == ("length", text)


def test_batch_samples_end_on_their_own_and_the_deltas_add_up(generator):
    request = GenerationRequest("The", 300, seed=6, num_samples=6, stop=(".",), lines=1)
    texts, results = streamed(generator, request)
    assert sorted(results) == list(range(6))
    assert {r.finish_reason for r in results.values()} >= {"stop"}
    assert len({r.generated for r in results.values()}) > 1  # they ended at different steps
    for index, result in results.items():
        assert texts.get(index, "") == result.text
        assert "." not in result.text and "\n" not in result.text
    # A row draws the same characters whether or not the others have stopped: each text is its unstopped one, cut.
    unstopped = plain(generator, prime="The", length=300, seed=6, num_samples=6)
    for index, result in results.items():
        assert unstopped[index].startswith(result.text) and len(unstopped[index]) == 300


def test_logprobs_equal_log_softmax_of_the_models_own_forward(generator):
    result = generator.complete(GenerationRequest("The cat", 60, seed=7, logprobs=3, num_samples=2))[1]
    assert result.logprobs is not None and len(result.logprobs) == len(result.text) == 60
    ids = generator.encode_prime(generator.lead_in + "The cat" + result.text)
    with torch.no_grad():
        logits, _ = generator.model(ids.unsqueeze(0))
    expected = F.log_softmax(logits[0].float(), dim=-1)[-61:-1]  # the distributions each character was drawn from
    prime_len = len(generator.lead_in) + len("The cat")
    for position, entry in enumerate(result.logprobs):
        row = expected[position]
        assert entry.char == result.text[position]
        char_id = int(ids[prime_len + position])
        assert entry.logprob == pytest.approx(float(row[char_id]), abs=1e-4)
        top_values, top_ids = torch.topk(row, 3)
        assert [c for c, _ in entry.top] == [generator.vocab.chars[i] for i in top_ids.tolist()]
        assert [v for _, v in entry.top] == pytest.approx(top_values.tolist(), abs=1e-4)


def test_min_p_draws_only_characters_near_the_likeliest():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.12, 0.08]]))
    rng = torch.Generator().manual_seed(0)
    assert {int(pick_next(logits, SamplingOptions(min_p=0.25), rng)) for _ in range(300)} == {0, 1}
    draw = InPlaceDraw(SamplingOptions(min_p=0.25), 1, 4, rng)
    assert {int(draw(logits.clone())[0]) for _ in range(300)} == {0, 1}


def test_a_long_prime_is_read_by_the_sequence_kernel(generator, monkeypatch):
    calls = []
    forward = generator.model.forward
    monkeypatch.setattr(generator.model, "forward", lambda ids, state=None: calls.append(ids.shape) or forward(ids, state))
    prime = "The cat sat on a mat. " * 400  # 8,800 characters
    result = generator.complete(GenerationRequest(prime, 20, seed=1))[0]
    assert len(result.text) == 20 and result.prime_chars == len(prime)
    assert len(calls) == 1 and calls[0][1] == len(prime) + len(generator.lead_in)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(lines=0), "lines must be at least 1"),
        (dict(length=0), "length must be between"),
        (dict(stop=("",)), "stop string cannot be empty"),
        (dict(logprobs=21), "logprobs must be between"),
        (dict(num_samples=0), "at least 1"),
    ],
)
def test_out_of_range_requests_are_refused(fields, message):
    with pytest.raises(CharlstmError, match=message):
        GenerationRequest(**fields)
    with pytest.raises(CharlstmError, match="min-p"):
        SamplingOptions(min_p=1.5)


@pytest.mark.parametrize(
    "args, words",
    [
        (("--lines", "0"), "'--lines': 0 is not in the range"),
        (("--length", "0"), "'--length': 0 is not in the range"),
        (("--logprobs", "21", "--json"), "'--logprobs': 21 is not in the range"),
        (("--min-p", "1.5"), "'--min-p'"),
        (("--stop", "\\q"), "unknown escape"),
        (("--prime", "x", "--prime-file", "y"), "not both"),
        (("--logprobs", "2"), "add --json"),
    ],
)
def test_cli_refuses_out_of_range_values_in_one_line(trained_run, args, words):
    assert words in main_outcome("sample", "-c", str(trained_run), *args).error_line


def test_same_seed_gives_the_same_samples_with_and_without_json(trained_run):
    common = ("sample", "-c", str(trained_run), "--seed", "9", "--length", "120", "--stop", "\\n", "--precision", "fp32")
    one = main_outcome(*common, "--prime", "The")
    one_json = json.loads(main_outcome(*common, "--prime", "The", "--json").stdout)
    assert one.stdout == "The" + one_json["text"] + "\n"
    assert one_json["seed"] == 9 and one_json["checkpoint"] and one_json["finish_reason"] in ("stop", "length")
    assert one_json["characters"] == len(one_json["text"]) and "timing" in one_json
    several = main_outcome(*common, "-n", "3").stdout
    several_json = [json.loads(line) for line in main_outcome(*common, "-n", "3", "--json").stdout.splitlines()]
    assert several == "".join(f"--- sample {i} ---\n{s['text']}\n" for i, s in enumerate(several_json, 1))


def test_prime_from_a_file_and_from_standard_input(trained_run, tmp_path, monkeypatch):
    common = ("sample", "-c", str(trained_run), "--seed", "3", "--length", "30", "--json")
    direct = json.loads(main_outcome(*common, "--prime", "The dog ").stdout)["text"]
    prime_file = tmp_path / "prime.txt"
    prime_file.write_bytes(b"\xef\xbb\xbfThe dog ")  # a BOM is dropped, as in a corpus
    assert json.loads(main_outcome(*common, "--prime-file", str(prime_file)).stdout)["text"] == direct
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"The dog ")))
    assert json.loads(main_outcome(*common, "--prime", "-").stdout)["text"] == direct
    assert "does not exist" in main_outcome(*common, "--prime-file", str(tmp_path / "nope")).error_line


def test_logprobs_in_json_are_natural_logs_that_sum_below_zero(trained_run):
    line = main_outcome("sample", "-c", str(trained_run), "--seed", "1", "--length", "10", "--json", "--logprobs", "2").stdout
    data = json.loads(line)
    assert len(data["logprobs"]) == 10 and all(len(entry["top"]) == 2 for entry in data["logprobs"])
    assert all(entry["logprob"] <= 0 and math.isfinite(entry["logprob"]) for entry in data["logprobs"])


def test_beam_of_width_one_is_greedy_decoding_stops_included(generator):
    greedy = generator.generate("The cat", 80, temperature=0.0)[0]
    assert generator.complete(GenerationRequest("The cat", 80, beam=1))[0].text == greedy
    stop = greedy[20:22]
    stopped = generator.complete(GenerationRequest("The cat", 80, beam=1, stop=(stop,)))[0]
    assert (stopped.text, stopped.finish_reason) == (greedy[: greedy.index(stop)], "stop")
    sampled = generator.complete(GenerationRequest("The cat", 80, SamplingOptions(temperature=0.0), stop=(stop,)))[0]
    assert sampled.text == stopped.text


def test_wider_beams_find_continuations_at_least_as_probable_and_respect_stops(generator):
    def total(width):
        result = generator.complete(GenerationRequest("The cat", 40, beam=width, logprobs=0))[0]
        assert result.finish_reason == "length" and len(result.text) == 40
        return sum(entry.logprob for entry in result.logprobs)

    assert total(4) >= total(1) - 1e-3
    once, again = (generator.complete(GenerationRequest("The", 60, beam=4, seed=seed))[0].text for seed in (1, 2))
    assert once == again  # deterministic: the seed plays no part
    ended = generator.complete(GenerationRequest("The", 300, beam=3, lines=1, keep_stop=True))[0]
    assert ended.finish_reason in ("lines", "length") and ended.text.count("\n") <= 1
    assert ended.finish_reason == "length" or ended.text.endswith("\n")
    with pytest.raises(CharlstmError, match="leave the number of samples at 1"):
        GenerationRequest(beam=2, num_samples=2)


def test_repl_settings_lines_min_p_and_logprobs(trained_run):
    from charlstm.generation.session import ReplSession, ReplSettings, apply_setting
    from charlstm.interface.repl import heat_line

    loaded = load(trained_run)
    settings = ReplSettings(seed=3, length=300)
    for name, args in (("lines", ["1"]), ("min-p", ["0.05"]), ("logprobs", ["2"])):
        settings = apply_setting(settings, name, args)
    assert (settings.lines, settings.min_p, settings.logprobs) == (1, 0.05, 2)
    assert "minp=0.05 lines=1 logprobs=2" in settings.summary()
    for name, value, message in (("lines", "0", "1 or more"), ("logprobs", "99", "0 to 20"), ("min-p", "2", "min-p")):
        with pytest.raises(CharlstmError, match=message):
            apply_setting(settings, name, [value])
    session = ReplSession(loaded, settings)
    turn = session.start_turn("The")
    text = "".join(turn)
    record = turn.record
    assert record.ended in ("lines", "length") and text.count("\n") <= 1
    assert record.ended == "length" or text.endswith("\n")
    # The heat line's numbers are the model's own: the same as a request for the same text gives.
    expected = Generator(loaded.model, loaded.vocab).continuation_logprobs("The", text, 2)
    assert [e.logprob for e in record.logprobs] == pytest.approx([e.logprob for e in expected], abs=1e-5)
    line = heat_line(record.logprobs)
    assert len(line.plain.split("  ")[0]) == len(text) and line.plain.endswith("bits/char")


def test_int8_steps_keep_the_models_probabilities_to_int8_rounding(generator):
    from charlstm.model.stepper import LSTMStepper, int8_available

    if not int8_available():
        pytest.skip("this PyTorch has no fbgemm engine")
    model = generator.model
    ids = torch.randint(0, len(generator.vocab), (8, 60), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, _ = model(ids)
        stepper = LSTMStepper(model, 8, "int8")
        stepper.load_state(model.init_state(8))
        got = torch.stack([stepper.step(ids[:, t]).clone() for t in range(60)], dim=1)
    # Weights rounded to 1/254 of each row's range, inputs to 1/127 of theirs: probabilities within a few 1e-3.
    difference = (expected.softmax(-1) - got.softmax(-1)).abs()
    assert float(difference.max()) < 0.03 and float(difference.mean()) < 1e-3
    int8 = Generator(model, generator.vocab, precision="int8")
    assert len(int8.complete(GenerationRequest("The", 50, seed=1, num_samples=3, stop=(".",)))) == 3


@pytest.mark.parametrize("amx, compiled, hidden, asked, chosen", [
    (False, False, 384, "auto", "int8"),   # AVX2 or AVX512-VNNI without AMX: int8 products beat fp32 and bf16
    (False, False, 192, "auto", "fp32"),   # with fbgemm, below INT8_FROM_HIDDEN its per-call cost outweighs the saving
    (False, True, 64, "auto", "int8"),     # the compiled layer step wins at every size
    (True, True, 384, "auto", None),       # AMX runs oneDNN's bf16 products on its tiles
    (False, True, 384, "fp32", "fp32"),    # a named precision is kept
    (False, False, 384, "int8", "int8"),
])
def test_auto_sampling_takes_int8_on_cpus_without_amx(monkeypatch, amx, compiled, hidden, asked, chosen):
    from charlstm.base.runtime import resolve_precision
    from charlstm.generation import generator as generation

    monkeypatch.setattr(generation, "cpu_has_amx", lambda: amx)
    monkeypatch.setattr(generation, "int8_available", lambda device: True)
    monkeypatch.setattr(generation, "int8_compiled", lambda: compiled)
    expected = chosen or resolve_precision("auto", torch.device("cpu"))
    assert generation.sampling_precision(asked, torch.device("cpu"), hidden) == expected
