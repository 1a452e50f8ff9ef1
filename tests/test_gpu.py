"""The CUDA decisions, tested without a GPU (fake probes), and the rest on one when present."""

import pytest
import torch

from charlstm.training.gpu import (
    GPU_MIN_CHARS,
    MAX_STREAMS,
    MIN_STEPS,
    GpuSizing,
    choose_cudnn_benchmark,
    choose_gpu_configs,
    choose_gpu_size,
    gpu_dropout,
    grow_batch,
    uses_gpu_rule,
)
from charlstm.training.presets import ALL_PRESETS, PRESETS
from charlstm.training.sizing import RunChoices

SHAKESPEARE_CHARS = 1_115_394
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def saturating(full_at: int, peak: float, memory: int | None = None):
    """A card that is filled at ``full_at`` characters per step: throughput grows with the batch until then,
    then stays flat; past ``memory`` characters per step it runs out of memory."""
    calls: list[tuple[int, int]] = []

    def probe(b: int, t: int) -> float | None:
        calls.append((b, t))
        if memory is not None and b * t > memory:
            return None
        return peak * min(1.0, b * t / full_at)

    probe.calls = calls  # type: ignore[attr-defined]
    return probe


def test_the_batch_grows_streams_first_until_throughput_stops_rising():
    probe = saturating(full_at=256 * 64, peak=1e6)
    choice = grow_batch(probe, (32, 64), train_chars=10**9, seconds=None)
    assert (choice.batch_size, choice.seq_len) == (256, 64)
    # 512x64 was tried and gained nothing; then the window: 256x128 gained nothing either.
    assert [(t.batch_size, t.seq_len) for t in choice.trials] == [(32, 64), (64, 64), (128, 64), (256, 64), (512, 64), (256, 128)]
    assert choice.chars_per_sec == pytest.approx(1e6)


def test_the_window_grows_once_the_streams_stop_paying():
    def probe(b: int, t: int) -> float:  # streams cap at 128 (say, memory-bound), windows keep paying to 256
        return min(b, 128) * min(t, 256) * 10.0

    choice = grow_batch(probe, (32, 64), train_chars=10**9, seconds=None)
    assert (choice.batch_size, choice.seq_len) == (128, 256)


def test_growth_stops_where_memory_runs_short():
    probe = saturating(full_at=10**9, peak=1e9, memory=128 * 64)
    choice = grow_batch(probe, (32, 64), train_chars=10**9, seconds=None)
    assert (choice.batch_size, choice.seq_len) == (128, 64)
    assert choice.trials[-1].chars_per_sec is None


def test_growth_keeps_enough_steps_and_windows_per_pass():
    probe = saturating(full_at=10**9, peak=1e9)  # always pays: only the limits stop it
    choice = grow_batch(probe, (32, 64), train_chars=10**9, seconds=None)
    assert choice.batch_size == MAX_STREAMS
    small = grow_batch(probe, (32, 64), train_chars=1_000_000, seconds=None)
    assert small.batch_size * small.seq_len * 8 <= 1_000_000
    # Throughput that grows as the square root of the batch: each doubling pays 41%, but steps per second fall.
    timed = grow_batch(lambda b, t: 4525.5 * (b * t) ** 0.5, (32, 64), train_chars=10**9, seconds=60.0)
    assert (timed.batch_size, timed.seq_len) == (256, 64)
    assert 60.0 * timed.chars_per_sec / (256 * 64) >= MIN_STEPS


def test_a_batch_the_user_gave_is_not_grown():
    probe = saturating(full_at=10**9, peak=1e9)
    choice = grow_batch(probe, (48, 100), train_chars=10**9, seconds=None, grow_streams=False, grow_window=False)
    assert (choice.batch_size, choice.seq_len) == (48, 100) and len(choice.trials) == 1


def test_gpu_ladder_sizes_from_characters():
    assert choose_gpu_size(SHAKESPEARE_CHARS, lambda name: GPU_MIN_CHARS[name]) == "xl"
    assert choose_gpu_size(SHAKESPEARE_CHARS, lambda name: GPU_MIN_CHARS["xl"] - 1) == "large"
    assert choose_gpu_size(20_000, lambda name: 1e12) == "tiny"


def test_dropout_rises_with_the_passes_over_the_corpus():
    xl, small = ALL_PRESETS["xl"], PRESETS["small"]
    assert gpu_dropout(small, 3.0) == 0.0
    assert gpu_dropout(small, 10.0) == 0.1
    assert gpu_dropout(small, 40.0) == 0.2
    assert gpu_dropout(xl, 100.0) == 0.25
    assert gpu_dropout(xl, 1.0) == xl.dropout


def test_cudnn_autotuner_is_kept_where_it_measured_faster():
    assert choose_cudnn_benchmark(lambda on: 2.0 if on else 1.0) is True
    assert choose_cudnn_benchmark(lambda on: 1.0 if on else 2.0) is False
    assert choose_cudnn_benchmark(lambda on: 1.0 if on else None) is True


def fake_card(size: str, b: int, t: int, cudnn_benchmark: bool = True) -> float | None:
    """An H200-like card: wider models train fewer characters per second, each saturating at 256x128."""
    per_model = {"tiny": 8e6, "small": 5e6, "medium": 3e6, "large": 2e6, "xl": 1e6}[size]
    return per_model * min(1.0, b * t / (256 * 128)) * (1.0 if cudnn_benchmark else 0.9)


def test_a_timed_cuda_run_gets_a_grown_batch_a_wide_model_and_dropout():
    model, train, sizing = choose_gpu_configs(RunChoices(time_budget=180.0), SHAKESPEARE_CHARS, 65, fake_card)
    assert isinstance(sizing, GpuSizing) and sizing.size == "xl"
    assert (train.batch_size, train.seq_len) == (512, 64)  # streams first: 512x64 fills the card as 256x128 would
    assert model.hidden_size == 1024 and sizing.epochs > 60 and model.dropout == 0.25
    assert sizing.cudnn_benchmark is True
    assert "512x64" in sizing.describe() and "1.0M chars/s" in sizing.describe()


def test_what_the_user_says_wins_on_cuda():
    model, train, sizing = choose_gpu_configs(
        RunChoices(time_budget=180.0, size="large", dropout=0.05, batch_size=64, lr=1e-3), SHAKESPEARE_CHARS, 65, fake_card)
    assert sizing.size == "large" and model.hidden_size == 512 and model.dropout == 0.05
    assert train.batch_size == 64 and train.seq_len == 256 and train.lr == 1e-3


def test_the_cuda_rule_covers_timed_runs_of_preset_shapes_only():
    assert uses_gpu_rule(RunChoices(), "cuda")
    assert uses_gpu_rule(RunChoices(time_budget=60.0, size="large"), "cuda")
    assert not uses_gpu_rule(RunChoices(), "cpu")
    assert not uses_gpu_rule(RunChoices(steps=100), "cuda")
    assert not uses_gpu_rule(RunChoices(hidden=300), "cuda")


def test_a_model_too_big_for_the_card_is_one_clear_error():
    from charlstm.base.errors import CharlstmError

    with pytest.raises(CharlstmError, match="does not fit in this GPU's memory"):
        choose_gpu_configs(RunChoices(time_budget=60.0, size="xl"), SHAKESPEARE_CHARS, 65, lambda *a, **k: None)


# -- deferred host reads: the CUDA training step, run on the CPU so it is tested everywhere ---------------


def deferred_and_plain(tmp_path, text, **config):
    from charlstm.data.corpus import Corpus
    from charlstm.model.config import ModelConfig
    from charlstm.training.trainer import Trainer
    from tests.conftest import TINY_MODEL, tiny_train_config

    corpus = Corpus.from_text(text)
    model = ModelConfig(vocab_size=len(corpus.vocab), **TINY_MODEL)
    return [Trainer(corpus, model, tiny_train_config(eval_every=5, **config), tmp_path / name, deferred_reads=deferred)
            for name, deferred in (("deferred", True), ("plain", False))]


def test_deferred_reads_train_as_the_step_by_step_check_does(tmp_path, tiny_text):
    deferred, plain = deferred_and_plain(tmp_path, tiny_text, steps=30)
    seen = {"deferred": [], "plain": []}
    deferred.reporter.step = lambda stats: seen["deferred"].append(stats.step)
    plain.reporter.step = lambda stats: seen["plain"].append(stats.step)
    a, b = deferred.train(), plain.train()
    assert seen["deferred"] == seen["plain"] == list(range(1, 31))
    assert a.steps == b.steps == 30 and a.skipped_batches == b.skipped_batches == 0
    # The deferred step clips and checks on the device; the runs agree to float rounding.
    assert a.train_loss == pytest.approx(b.train_loss, rel=1e-3)
    assert a.best_val_loss == pytest.approx(b.best_val_loss, rel=1e-3)
    for (name, p), q in zip(deferred.model.named_parameters(), plain.model.parameters()):
        assert torch.allclose(p, q, atol=1e-4), name


def test_deferred_reads_stop_at_the_bad_batch_with_the_weights_it_found(tmp_path, tiny_text):
    from charlstm.base.errors import CharlstmError
    from tests.test_failures import poison_head

    deferred, _ = deferred_and_plain(tmp_path, tiny_text, steps=30)
    poison_head(deferred, {8})
    snapshots = {}
    deferred.reporter.step = lambda stats: snapshots.update(
        {stats.step: {k: v.clone() for k, v in deferred.model.state_dict().items()}})
    with pytest.raises(CharlstmError, match=r"training diverged at step 8: the loss is nan.*\(step 5\)"):
        deferred.train()
    after = deferred.model.state_dict()
    assert all(torch.equal(after[k], snapshots[7][k]) for k in after)


def test_deferred_reads_skip_bad_batches_when_asked(tmp_path, tiny_text):
    from tests.test_failures import poison_head

    deferred, _ = deferred_and_plain(tmp_path, tiny_text, steps=20, on_nan="skip")
    poison_head(deferred, {4, 9})
    result = deferred.train()
    assert result.steps == 20 and result.skipped_batches == 2
    assert all(torch.isfinite(p).all() for p in deferred.model.parameters())


def test_only_a_single_cuda_process_defers_its_reads():
    from charlstm.training.device_steps import defers_host_reads

    assert defers_host_reads("cuda", 1)
    assert not defers_host_reads("cpu", 1) and not defers_host_reads("cuda", 2) and not defers_host_reads("mps", 1)


def test_a_cpu_run_keeps_the_step_by_step_check_on_the_fused_optimizer(tmp_path, tiny_text):
    _, plain = deferred_and_plain(tmp_path, tiny_text, steps=2)
    from charlstm.training.trainer import Trainer

    auto = Trainer(plain.corpus, plain.model_config, plain.config, tmp_path / "auto")
    assert auto.deferred_reads is False
    assert all(group["fused"] for group in auto.optimizer.param_groups)


def test_adamw_is_fused_on_a_cpu_and_where_reads_are_deferred_only():
    from charlstm.training.device_steps import uses_fused_optimizer

    assert uses_fused_optimizer("cpu", False) and uses_fused_optimizer("cuda", True)
    assert not uses_fused_optimizer("cuda", False) and not uses_fused_optimizer("mps", False)


def test_a_restored_optimizer_is_switched_to_the_fused_kernel_that_can_skip_on_the_device():
    from charlstm.training.device_steps import fuse_optimizer

    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    weight.grad = torch.ones(3)
    optimizer.step()  # a plain AdamW: its step count is a CPU scalar
    fuse_optimizer(optimizer)
    before = weight.detach().clone()
    optimizer.found_inf = torch.tensor(1.0)
    optimizer.step()
    assert torch.equal(weight.detach(), before) and float(optimizer.state[weight]["step"]) == 1.0
    optimizer.found_inf = torch.tensor(0.0)
    optimizer.step()
    assert not torch.equal(weight.detach(), before) and float(optimizer.state[weight]["step"]) == 2.0


def test_evaluation_summed_on_the_device_equals_the_read_per_window_sum_exactly(tiny_text):
    import torch.nn.functional as F

    from charlstm.data.batches import StreamBatches
    from charlstm.data.corpus import Corpus
    from charlstm.model.config import ModelConfig
    from charlstm.model.network import CharLSTM
    from charlstm.training.evaluation import read_validation
    from tests.conftest import TINY_MODEL

    corpus = Corpus.from_text(tiny_text)
    torch.manual_seed(0)
    model = CharLSTM(ModelConfig(vocab_size=len(corpus.vocab), **TINY_MODEL)).eval()
    ids = corpus.ids[:5000]
    totals = read_validation(model, ids, 8, 32, torch.device("cpu"), prefix=3)
    expected, at_prefix, state = 0.0, None, model.init_state(8)
    batches = StreamBatches(ids, 8, 32)
    with torch.no_grad():
        for window in range(len(batches)):
            x, y = batches.window(window)
            logits, state = model(x, state)
            expected += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
            at_prefix = expected if window == 2 else at_prefix
    assert totals.total == expected and totals.prefix_total == at_prefix


@needs_cuda
def test_cuda_windows_arrive_from_pinned_memory_intact():
    import numpy as np

    from charlstm.data.batches import StreamBatches

    batches = StreamBatches(np.arange(10_000) % 97, 16, 32)
    x, y = batches.window(3, torch.device("cuda"))
    cx, cy = batches.window(3)
    assert x.is_cuda and torch.equal(x.cpu(), cx) and torch.equal(y.cpu(), cy)


@needs_cuda
def test_cudnn_runs_the_lstm_in_bf16_under_autocast():
    lstm = torch.nn.LSTM(64, 256, 2, batch_first=True).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        output, _ = lstm(torch.randn(8, 16, 64, device="cuda"))
    assert output.dtype == torch.bfloat16


@needs_cuda
def test_a_cuda_trainer_defers_its_reads_and_trains(tmp_path, tiny_text):
    from charlstm.data.corpus import Corpus
    from charlstm.model.config import ModelConfig
    from charlstm.training.trainer import Trainer
    from tests.conftest import TINY_MODEL, tiny_train_config

    corpus = Corpus.from_text(tiny_text)
    trainer = Trainer(corpus, ModelConfig(vocab_size=len(corpus.vocab), **TINY_MODEL),
                      tiny_train_config(steps=40, device="cuda", precision="auto"), tmp_path / "run")
    assert trainer.deferred_reads and trainer.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    result = trainer.train()
    assert result.steps == 40 and result.best_val_loss < 4.0


def test_sampling_auto_takes_the_gpu_only_for_a_wide_batch(monkeypatch):
    from charlstm.base.runtime import GPU_SAMPLING_MIN_BATCH, resolve_sampling_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_sampling_device("auto", 1).type == "cpu"
    assert resolve_sampling_device("auto", GPU_SAMPLING_MIN_BATCH - 1).type == "cpu"
    assert resolve_sampling_device("auto", GPU_SAMPLING_MIN_BATCH).type == "cuda"
    assert resolve_sampling_device("cpu", 64).type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_sampling_device("auto", 64).type == "cpu"


def test_bench_on_cuda_refuses_in_one_line_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    from tests.conftest import main_outcome

    outcome = main_outcome("bench", "--device", "cuda")
    assert outcome.code != 0
    assert outcome.error_line == "error: --device cuda was asked for but no CUDA GPU is available; use --device cpu"


def test_bench_defaults_on_cuda_fill_the_card():
    from charlstm.analysis.bench import CUDA_BATCH, BenchConfig

    config = BenchConfig.for_device("cuda")
    assert config.size == "xl" and config.batch_shape() == CUDA_BATCH and config.steps >= 100
    cpu = BenchConfig.for_device("cpu")
    assert (cpu.size, cpu.steps, cpu.batch_shape(), cpu.sample_batch) == ("medium", 24, (32, 64), 32)


@needs_cuda
def test_bench_on_cuda_reports_the_bf16_check_and_both_sampling_paths():
    from charlstm.analysis.bench import BenchConfig, run_bench

    result = run_bench(BenchConfig(size="small", steps=8, rounds=2, sample_chars=20, device="cuda", batch=(64, 64),
                                   sample_batch=64, matmul_size=1024))
    assert result.device == "cuda" and result.versions["cudnn"]
    assert result.lstm_precision is not None and result.train.ratio > 0
    assert [s.batch for s in result.sampling] == [1, 64, 1] and result.sampling[-1].charlstm_device == "cpu"


def test_the_gpu_script_checks_everything_but_the_gpu(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be\n" * 50, encoding="utf-8")
    dry = subprocess.run([sys.executable, str(script), str(corpus), "--dry-run"], capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert "would run: -m charlstm bench --device cuda --json" in dry.stdout
    assert f"would run: -m charlstm train {corpus} --time 3m" in dry.stdout
    missing = subprocess.run([sys.executable, str(script), str(tmp_path / "absent.txt")], capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.startswith("error: corpus not found")
    if not torch.cuda.is_available():
        refused = subprocess.run([sys.executable, str(script), str(corpus)], capture_output=True, text=True)
        assert refused.returncode == 1 and refused.stderr.strip().splitlines() == [
            "error: no CUDA GPU is available here; run this on a machine with one (--dry-run checks the rest)"]
