import json

import torch
from test_cli import run_cli

from charlstm.analysis.bench import training_flops_per_char
from charlstm.generation.generator import sampling_precision
from charlstm.model.config import ModelConfig
from charlstm.model.stepper import int8_compiled


def test_training_flops_count_every_gate_product_forward_and_backward():
    config = ModelConfig(vocab_size=10, emb_size=3, hidden_size=5, num_layers=2)
    forward = 2 * 4 * 5 * (3 + 5) + 2 * 4 * 5 * (5 + 5) + 2 * 5 * 10
    assert training_flops_per_char(config) == 3 * forward


def test_bench_runs_end_to_end_and_reports_every_measure_as_json():
    done = run_cli("bench", "--size", "tiny", "--steps", "3", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["size"] == "tiny" and result["model"]["num_layers"] == 1
    assert result["precision"] in ("bf16", "fp32")
    train = result["train"]
    for key in ("charlstm_chars_per_sec", "bare_chars_per_sec", "ratio", "flops_per_char", "charlstm_mfu", "bare_mfu"):
        assert train[key] > 0, key
    assert train["ratio"] == train["charlstm_chars_per_sec"] / train["bare_chars_per_sec"]
    assert result["peak"]["fp32_flops_per_sec"] > 0 and result["peak"]["bf16_flops_per_sec"] > 0
    chosen = result["sampling_precision"]
    assert chosen == sampling_precision("auto", torch.device("cpu"), result["model"]["hidden_size"])
    assert result["sampling_step"].startswith("compiled int8" if chosen == "int8" and int8_compiled() else ("fbgemm", "PyTorch"))
    assert [s["batch"] for s in result["sampling"] if s["precision"] == chosen] == [1, 32]
    for speed in result["sampling"]:
        assert speed["ratio"] == speed["charlstm_chars_per_sec"] / speed["naive_chars_per_sec"]
    stops = result["stops"]
    assert stops["batch"] == 32 and 1 <= stops["stopped_early"] <= 16
    assert stops["ratio"] == stops["stop_steps_per_sec"] / stops["no_stop_steps_per_sec"]
    assert result["first_char_ms"] > 0 and result["stepper_setup_ms"] > 0
    memory = result["memory"]
    assert memory["weight_bytes"] > 0 and memory["bound_steps_per_sec"] > 0 and memory["fraction_of_bound"] > 0


def test_bench_table_shows_each_charlstm_figure_beside_plain_pytorch(monkeypatch):
    from rich.console import Console

    from charlstm.analysis.bench import (
        BenchResult,
        MatmulPeak,
        MemoryBound,
        SamplingSpeed,
        StopSpeed,
        TrainingSpeed,
    )
    from charlstm.interface import terminal as console

    result = BenchResult(
        size="large", model=ModelConfig(vocab_size=65, emb_size=128, hidden_size=512, num_layers=3).to_dict(),
        parameters=5_560_000, batch_size=64, seq_len=128,
        precision="bf16", threads=2,
        train=TrainingSpeed(9_800.0, 10_000.0, 0.98, 33.2e6, 0.41, 0.42),
        peak=MatmulPeak(2048, 100e9, 200e9),
        sampling=[SamplingSpeed(1, 450.0, 2_700.0, 6.0), SamplingSpeed(32, 4_300.0, 17_200.0, 4.0)],
        stops=StopSpeed(32, 16, 70.0, 77.0, 1.1), sampling_precision="bf16",
        sampling_step="compiled int8 layer step (cc, -mavx2 -mfma)", cpu_capability="AVX512",
        prime_chars=200, first_char_ms=31.5, stepper_setup_ms=12.0,
        memory=MemoryBound(11_000_000, 55e9, 5_000.0, 2_700.0, 0.54),
    )
    recording = Console(record=True, width=160)
    monkeypatch.setattr(console, "err", recording)
    console.print_bench(result)
    shown = recording.export_text()
    for expected in ("9.80k chars/s", "10.00k chars/s", "0.98x", "6.00x", "4.00x", "31.5 ms", "54% of bound", "bf16",
                     "16 rows stopping early", "1.10x", "compiled int8 layer step"):
        assert expected in shown, expected
