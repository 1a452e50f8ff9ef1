"""`charlstm export`: ONNX files that onnxruntime runs as PyTorch does, and one HTML page that writes in a browser
as PyTorch does — checked in onnxruntime and in headless Chromium, not by reading the files."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from conftest import main_outcome

from charlstm import CharLSTM, Generator, LoadedModel, ModelConfig, Vocab, load
from charlstm.export.html_page import export_html, page_model, reference_text
from charlstm.export.onnx_model import export_onnx, onnx_sampling_loop, sequence_path

VOCAB = Vocab(sorted(set("\n abcdefghijklmnopqrstuvwxyz.,!?ABCT")))


def random_model(cell: str, seed: int = 0) -> LoadedModel:
    """An untrained model of each cell type: the arithmetic is what is compared, not what it learned."""
    torch.manual_seed(seed)
    model = CharLSTM(ModelConfig(vocab_size=len(VOCAB), emb_size=12, hidden_size=24, num_layers=2, dropout=0.0, cell=cell))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(3.0)  # larger weights than the initialisation: saturating gates, peaked distributions
    return LoadedModel(model=model.eval(), vocab=VOCAB, config={"metrics": {"step": 0}}, path=Path(f"{cell}-run/best"))


# ---------------------------------------------------------------- ONNX


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_onnxruntime_carries_the_state_across_calls_as_pytorch_does(tmp_path, cell):
    loaded = random_model(cell)
    done = export_onnx(loaded, tmp_path / "model.onnx")
    assert done.parity.passed and done.sequence_path == tmp_path / "model.sequence.onnx"
    step = onnxruntime.InferenceSession(str(done.step_path), providers=["CPUExecutionProvider"])
    sequence = onnxruntime.InferenceSession(str(done.sequence_path), providers=["CPUExecutionProvider"])
    names = ["h", "c"] if cell == "lstm" else ["h"]
    assert [i.name for i in step.get_inputs()] == ["ids", *names]
    assert [o.name for o in step.get_outputs()] == ["logits", *(f"{n}_out" for n in names)]

    rng = np.random.default_rng(1)
    ids = rng.integers(0, len(VOCAB), size=(3, 30))  # batch 3: the batch axis is dynamic
    start = tuple(torch.randn(2, 3, 24) * 0.5 for _ in names)  # a state mid-text, not zeros
    logits, *state = sequence.run(None, {"ids": ids[:, :20], **{n: s.numpy() for n, s in zip(names, start)}})
    with torch.no_grad():
        expected, torch_state = loaded.model(torch.from_numpy(ids[:, :20]), start)
        np.testing.assert_allclose(logits, expected.numpy(), atol=2e-5)
        for position in range(20, 30):
            logits, *state = step.run(None, {"ids": ids[:, position], **dict(zip(names, state))})
            expected, torch_state = loaded.model(torch.from_numpy(ids[:, position : position + 1]), torch_state)
            np.testing.assert_allclose(logits, expected[:, -1].numpy(), atol=2e-5)
            for ours, theirs in zip(state, torch_state):
                np.testing.assert_allclose(ours, theirs.numpy(), atol=2e-5)


def test_onnx_files_carry_the_vocabulary_and_sampling_defaults(tmp_path):
    loaded = random_model("lstm")
    export_onnx(loaded, tmp_path / "m.onnx")
    for path in (tmp_path / "m.onnx", tmp_path / "m.sequence.onnx"):
        props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        assert json.loads(props["charlstm.vocab"]) == VOCAB.chars
        sampling = json.loads(props["charlstm.sampling"])
        assert sampling["lead_in"] == Generator(loaded.model, VOCAB).lead_in and sampling["temperature"] == 1.0
        assert json.loads(props["charlstm.model"])["model"]["cell"] == "lstm"


def test_graphs_that_disagree_with_pytorch_are_refused_and_nothing_is_written(tmp_path, monkeypatch):
    from charlstm import CharlstmError
    from charlstm.export import onnx_model

    monkeypatch.setitem(onnx_model._GATE_ORDER, "lstm", (0, 1, 2, 3))  # PyTorch's gate order where ONNX wants its own
    with pytest.raises(CharlstmError, match="differ from PyTorch"):
        export_onnx(random_model("lstm"), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_export_onnx_command_checks_parity_and_says_so(trained_run, tmp_path):
    target = tmp_path / "tiny.onnx"
    done = main_outcome("export", str(trained_run), "--format", "onnx", "-o", str(target))
    assert done.code == 0, done.stderr
    assert "onnxruntime matches PyTorch" in done.stderr and target.exists() and sequence_path(target).exists()
    again = main_outcome("export", str(trained_run), "--format", "onnx", "-o", str(target))
    assert again.code == 0, again.stderr  # its own earlier output is replaced without --force


def test_export_onnx_without_the_extra_names_the_install_command(trained_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as when it is not installed
    line = main_outcome("export", str(trained_run), "--format", "onnx", "-o", str(tmp_path / "m.onnx")).error_line
    assert "pip install 'charlstm[export]'" in line
    assert not (tmp_path / "m.onnx").exists()


def test_bench_loop_through_onnxruntime_samples():
    loop = onnx_sampling_loop(random_model("gru").model)
    assert loop(20) > 0


# ---------------------------------------------------------------- bad input, shared by both formats


@pytest.mark.parametrize("export_format", ["onnx", "html"])
def test_an_existing_file_is_kept_unless_forced(trained_run, tmp_path, export_format):
    target = tmp_path / f"mine.{export_format}"
    target.write_text("my own notes\n")
    line = main_outcome("export", str(trained_run), "--format", export_format, "-o", str(target)).error_line
    assert "--force" in line and target.read_text() == "my own notes\n"
    forced = main_outcome("export", str(trained_run), "--format", export_format, "-o", str(target), "--force")
    assert forced.code == 0, forced.stderr
    assert target.read_bytes() != b"my own notes\n"


@pytest.mark.parametrize("export_format", ["onnx", "html"])
def test_an_unwritable_place_is_one_line(trained_run, tmp_path, export_format):
    line = main_outcome("export", str(trained_run), "--format", export_format, "-o", str(tmp_path / "no" / "x")).error_line
    assert "does not exist" in line
    line = main_outcome("export", str(trained_run), "--format", export_format, "-o", str(tmp_path)).error_line
    assert "directory" in line or "folder" in line


@pytest.mark.parametrize("export_format", ["onnx", "html"])
def test_a_damaged_run_is_one_line(trained_run, tmp_path, export_format):
    damaged = tmp_path / "damaged"
    shutil.copytree(trained_run, damaged)
    weights = damaged / "best" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    line = main_outcome("export", str(damaged), "--format", export_format, "-o", str(tmp_path / "out")).error_line
    assert "model.safetensors" in line and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the HTML page, in headless Chromium


def open_page(browser, path: Path):
    """The exported page from disk, with every request that is not the file itself recorded and refused."""
    page = browser.new_page()
    fetched: list[str] = []
    errors: list[str] = []

    def refuse(route):
        if route.request.url != path.as_uri():
            fetched.append(route.request.url)
            return route.abort()
        return route.continue_()

    page.route("**/*", refuse)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(path.as_uri())
    page.wait_for_function("() => window.charlstm !== undefined")
    return page, fetched, errors


def torch_probabilities(loaded: LoadedModel, prime: str) -> np.ndarray:
    logits, _ = Generator(loaded.model, loaded.vocab).prime(prime)
    return torch.softmax(logits[0].double(), -1).numpy()


def test_page_distribution_matches_pytorch_after_a_200_character_prime(browser, trained_run, tiny_text, tmp_path):
    loaded = load(trained_run)
    prime = tiny_text[1000:1200]
    expected = torch_probabilities(loaded, prime)
    gaps = {}
    for weight_format in ("float16", "float32"):
        path = export_html(loaded, tmp_path / f"{weight_format}.html", weight_format).path
        page, fetched, errors = open_page(browser, path)
        got = np.array(page.evaluate("prime => charlstm.distribution(prime)", prime))
        gaps[weight_format] = float(np.abs(got - expected).max())
        assert fetched == [] and errors == []
        page.close()
    assert gaps["float16"] < 1e-3
    assert gaps["float32"] < 1e-5


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_page_writes_the_seeded_text_python_computes_for_it(browser, tmp_path, cell):
    loaded = random_model(cell, seed=3)
    path = export_html(loaded, tmp_path / "w.html", "int8").path
    page, fetched, errors = open_page(browser, path)
    assert page.evaluate("charlstm.checkReference()")
    reference = page.evaluate("charlstm.reference")
    assert len(reference["text"]) == reference["length"]
    _, rounded = page_model(loaded.model, "int8")
    assert page.evaluate("charlstm.vocab") == VOCAB.chars
    lead_in = Generator(loaded.model, VOCAB).lead_in
    for prime, temperature, seed in (("the cat", 1.0, 7), ("A dog. ", 0.5, 123456789), ("", 0.0, 0)):
        expected = reference_text(rounded, VOCAB.chars, {"lead_in": lead_in, "never_draw": None}, prime, 120, temperature, seed)
        got = page.evaluate("([p, t, s]) => charlstm.generate(p, 120, t, s)", [prime, temperature, seed])
        assert got == expected, (prime, temperature, seed)
    assert fetched == [] and errors == []


def test_page_streams_a_generation_from_its_controls_and_measures_its_speed(browser, trained_run, tmp_path, capsys):
    loaded = load(trained_run)
    done = export_html(loaded, tmp_path / "writer.html")
    page, fetched, errors = open_page(browser, done.path)
    assert loaded.name in page.title() and "steps of batch" in page.inner_text("body")
    page.fill("#prompt", "The cat")
    page.fill("#length", "400")
    page.fill("#seed", "5")
    page.click("#generate")
    page.wait_for_function("() => document.getElementById('stop').disabled")
    assert page.inner_text("#output") == "The cat" + page.evaluate("charlstm.generate('The cat', 400, 0.8, 5)")
    assert "400 characters" in page.inner_text("#status")

    chars = 3000
    page_seconds = page.evaluate(f"() => {{ const t = performance.now(); charlstm.generate('', {chars}, 1.0, 1); "
                                 "return (performance.now() - t) / 1000; }")
    generator = Generator(loaded.model, loaded.vocab)
    start = time.perf_counter()
    generator.generate("", chars, seed=1)
    python_seconds = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n  browser {chars / page_seconds:,.0f} chars/s, charlstm (Python, fp32) {chars / python_seconds:,.0f} chars/s "
              f"for the tiny test model; page {done.size_bytes / 1e3:.0f} kB")
    assert page_seconds > 0 and fetched == [] and errors == []


def test_bench_table_shows_onnxruntime_beside_the_fused_step_and_the_plain_loop(monkeypatch):
    from rich.console import Console

    from charlstm.analysis.bench import (
        BenchResult,
        MatmulPeak,
        MemoryBound,
        OtherRuntimeSpeed,
        SamplingSpeed,
        StopSpeed,
        TrainingSpeed,
    )
    from charlstm.interface import terminal as console

    result = BenchResult(
        size="medium", model=ModelConfig(vocab_size=65).to_dict(), parameters=1_900_000, batch_size=32, seq_len=64,
        precision="fp32", threads=2, train=TrainingSpeed(9_000.0, 9_000.0, 1.0, 11e6, 0.3, 0.3),
        peak=MatmulPeak(2048, 100e9, 1e9), sampling=[SamplingSpeed(1, 600.0, 3_000.0, 5.0)],
        stops=StopSpeed(32, 16, 70.0, 77.0, 1.1), sampling_precision="fp32", sampling_step="PyTorch operations",
        cpu_capability="AVX2",
        prime_chars=200, first_char_ms=9.0, stepper_setup_ms=5.0, memory=MemoryBound(7_000_000, 50e9, 7_000.0, 3_000.0, 0.4),
        other_runtime=OtherRuntimeSpeed("onnxruntime", 2_400.0, 3_000.0, 600.0),
    )
    recording = Console(record=True, width=200)
    monkeypatch.setattr(console, "err", recording)
    console.print_bench(result)
    shown = recording.export_text()
    assert "beside onnxruntime" in shown and "onnxruntime, same rounds" in shown
    for expected in ("2.40k chars/s", "3.00k chars/s", "5.00x", "4.00x"):
        assert expected in shown, expected
