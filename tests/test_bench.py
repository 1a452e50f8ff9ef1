import json

from charlstm.bench import training_flops_per_char
from charlstm.model import ModelConfig

from test_cli import run_cli


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
    assert [s["batch"] for s in result["sampling"]] == [1, 32]
    for speed in result["sampling"]:
        assert speed["ratio"] == speed["charlstm_chars_per_sec"] / speed["naive_chars_per_sec"]
    assert result["first_char_ms"] > 0 and result["stepper_setup_ms"] > 0
    memory = result["memory"]
    assert memory["weight_bytes"] > 0 and memory["bound_steps_per_sec"] > 0 and memory["fraction_of_bound"] > 0
