"""The sizing rule: shapes chosen from the characters a run will read, not from minutes."""

import pytest

from charlstm.training.presets import PRESETS
from charlstm.training.sizing import (
    MIN_CHARS,
    MIN_CHARS_OVERREAD,
    OVERREAD_EPOCHS,
    REFERENCE_SPEEDS,
    RunChoices,
    Sizing,
    choose_configs,
    choose_size,
    dropout_for,
    expected_chars,
)

SHAKESPEARE_CHARS = 1_115_394
# Training characters per second per preset, as measured on a CPU with AMX (bf16) and on one without.
FAST_CPU = REFERENCE_SPEEDS
SLOW_CPU = {name: speed / 4 for name, speed in FAST_CPU.items()}


def picks(speeds: dict[str, float], seconds: float, corpus: int = SHAKESPEARE_CHARS) -> str:
    model, train, sizing = choose_configs(RunChoices(time_budget=seconds), corpus, 65, speed_probe=speeds.__getitem__)
    return sizing.size


def test_size_grows_with_the_characters_a_run_can_read():
    assert [picks(FAST_CPU, s) for s in (30, 60, 180, 240, 600, 3600, 4 * 3600)] == [
        "compact", "wide", "wide", "wide", "medium", "medium", "large"]


def test_a_slower_machine_gets_the_shape_its_characters_afford():
    # Four times slower: ten minutes read what 2.5 minutes read on the fast CPU, so the one-layer 1x384 stays.
    assert picks(SLOW_CPU, 60) == "compact"
    assert picks(SLOW_CPU, 600) == "wide"
    assert picks(SLOW_CPU, 4 * 600) == "medium"


AVX2_CPU = {**SLOW_CPU, "compact": 52_000.0, "wide": 19_100.0, "wider": 14_100.0, "medium": 10_400.0, "large": 6_000.0}


def test_two_layers_wait_until_they_can_read_enough_to_beat_one():
    # The AVX2 CPU's measured speeds: with the default corpus, ten minutes of 2x384 (5.6M characters expected)
    # lost to the one-layer models (8-13M) by 0.034 nats/char or more, so the 2x384 is not chosen there.
    assert picks(AVX2_CPU, 600, 4_700_000) == "wider"
    assert picks(AVX2_CPU, 3 * 600, 4_700_000) == "medium"


# Measured in fp32 on a 2-core AVX512 CPU (its speed cache): ten minutes of 1x512 read tiny Shakespeare 11.7 times
# over and lost to the 2x384 (1.4745-1.4782 against 1.4647-1.4690); on the default corpus (2.7 passes) it won
# (1.1671 against 1.1807).
AVX512_FP32_CPU = {**SLOW_CPU, "compact": 80_000.0, "wide": 34_000.0, "wider": 21_700.0, "medium": 14_200.0, "large": 8_000.0}


def test_two_layers_take_over_sooner_where_one_layer_would_learn_a_small_corpus_by_heart():
    assert picks(AVX512_FP32_CPU, 600) == "medium"
    assert picks(AVX512_FP32_CPU, 600, 4_700_000) == "wider"
    assert picks(AVX512_FP32_CPU, 180) == "wide"


def test_the_sooner_threshold_follows_the_passes_the_rung_below_would_make():
    train_chars = 1_000_000
    for wider_chars, expected in ((OVERREAD_EPOCHS * train_chars + 1, "medium"), (OVERREAD_EPOCHS * train_chars, "wider")):
        chars = {"wide": 3e6, "wider": wider_chars, "medium": MIN_CHARS_OVERREAD["medium"], "large": 0}
        assert choose_size(1_115_394, chars.__getitem__, train_chars=train_chars) == expected
    chars = {"wide": 3e6, "wider": 20e6, "medium": MIN_CHARS_OVERREAD["medium"] - 1, "large": 0}
    assert choose_size(1_115_394, chars.__getitem__, train_chars=train_chars) == "wider"
    assert choose_size(1_115_394, {**chars, "medium": MIN_CHARS["medium"]}.__getitem__) == "medium"  # no split given


def test_one_layer_widens_once_it_reads_enough_to_feed_512_cells():
    # On the AVX2 CPU ten minutes of 1x512 read about 8M characters, beat the 1x384 on tiny Shakespeare and tied
    # on the default corpus; three minutes read 2.5M, where the 1x384 is the better one.
    assert picks(AVX2_CPU, 600) == "wider"
    assert picks(AVX2_CPU, 180) == "wide"


def test_short_runs_get_one_layer_and_small_batches():
    for name in ("compact", "wide", "wider"):
        assert (PRESETS[name].num_layers, PRESETS[name].batch_size) == (1, 16)
    assert PRESETS["compact"].hidden_size < PRESETS["wide"].hidden_size < PRESETS["wider"].hidden_size


def test_small_corpora_get_small_models_whatever_the_budget():
    assert picks(FAST_CPU, 4 * 3600, 20_000) == "tiny"
    assert picks(FAST_CPU, 4 * 3600, 200_000) == "small"


def test_step_and_epoch_budgets_are_sized_without_measuring():
    def never(name: str) -> float:
        raise AssertionError("a run with a step or epoch budget measured speed")

    _, train, sizing = choose_configs(RunChoices(steps=10_000), SHAKESPEARE_CHARS, 65, speed_probe=never)
    assert sizing.chars == 10_000 * train.batch_size * train.seq_len and sizing.chars_per_sec is None
    _, _, sizing = choose_configs(RunChoices(epochs=2.0), SHAKESPEARE_CHARS, 65, speed_probe=never)
    assert sizing.epochs == pytest.approx(2.0)


def test_the_rule_in_characters():
    order = ["compact", "wide", "wider", "medium", "large"]

    def reaching(last: str):  # every rung up to ``last`` just reaches its threshold, the ones above miss by one
        return lambda name: MIN_CHARS[name] - (order.index(name) > order.index(last))

    assert [choose_size(10**6, reaching(last)) for last in order] == order


def test_runs_that_read_their_corpus_many_times_get_dropout():
    assert dropout_for(PRESETS["small"], epochs=5.0) == 0.0
    assert dropout_for(PRESETS["small"], epochs=9.0) == 0.1
    assert dropout_for(PRESETS["small"], epochs=18.0) == 0.2
    assert dropout_for(PRESETS["medium"], epochs=1.0) == PRESETS["medium"].dropout
    assert dropout_for(PRESETS["medium"], epochs=15.9) == 0.2


def test_expected_chars_follows_the_tightest_budget():
    _, train, _ = choose_configs(RunChoices(steps=100, time_budget=60, size="small"), SHAKESPEARE_CHARS, 65)
    assert expected_chars(train, 10**6, chars_per_sec=1.0) == pytest.approx(60 * 0.9)
    assert expected_chars(train, 10**6, chars_per_sec=10**9) == 100 * train.batch_size * train.seq_len


def test_the_estimate_reads_as_characters_and_epochs():
    text = Sizing("medium", 9.1e6, 9.1, 15_500.0).describe()
    assert text == "about 9.1M characters, 9.1 epochs of this corpus at 15.5k chars/s measured"


def test_the_python_api_defaults_are_the_preset_a_default_ten_minute_run_picks():
    from charlstm import ModelConfig, TrainConfig

    preset = PRESETS[picks(FAST_CPU, 600)]
    model, train = ModelConfig(vocab_size=65), TrainConfig(steps=1)
    assert model == preset.model_config(65)
    assert (train.batch_size, train.seq_len, train.lr) == (preset.batch_size, preset.seq_len, preset.lr)


def test_the_speed_probe_measures_once_and_remembers(monkeypatch, tmp_path):
    from charlstm.training import sizing

    monkeypatch.setenv("CHARLSTM_SPEED_CACHE", str(tmp_path / "speed.json"))
    first = sizing.cached_speed_probe(65, "cpu", "fp32", busy=lambda: 0.0)("tiny")
    assert first > 0 and (tmp_path / "speed.json").is_file()

    def measured_again(*args, **kwargs):
        raise AssertionError("a cached speed was measured again")

    monkeypatch.setattr(sizing, "measure_speed", measured_again)
    assert sizing.cached_speed_probe(65, "cpu", "fp32", busy=lambda: 0.0)("tiny") == first


def test_a_speed_measured_while_the_machine_is_busy_sizes_that_run_only(monkeypatch, tmp_path):
    import torch

    from charlstm.training import sizing

    monkeypatch.setenv("CHARLSTM_SPEED_CACHE", str(tmp_path / "speed.json"))
    monkeypatch.setattr(sizing.os, "cpu_count", lambda: 2)
    threads_while_measuring = []

    def measure(*args, **kwargs):
        threads_while_measuring.append(torch.get_num_threads())
        return 400.0

    monkeypatch.setattr(sizing, "measure_speed", measure)
    told = []
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        busy_probe = sizing.cached_speed_probe(65, "cpu", "fp32", on_busy=lambda name, load: told.append((name, load)),
                                               busy=lambda: 1.4)
        assert busy_probe("small") == 400.0
        assert threads_while_measuring == [1]  # the threads the governor would leave beside 1.4 busy cores
        assert torch.get_num_threads() == 2  # and restored after
    finally:
        torch.set_num_threads(before)
    assert told == [("small", 1.4)]
    assert not (tmp_path / "speed.json").exists()  # not remembered: the next run measures again

    monkeypatch.setattr(sizing, "measure_speed", lambda *args, **kwargs: 10_500.0)
    quiet_probe = sizing.cached_speed_probe(65, "cpu", "fp32", on_busy=lambda name, load: told.append((name, load)),
                                            busy=lambda: 0.1)
    assert quiet_probe("small") == 10_500.0 and len(told) == 1
    assert (tmp_path / "speed.json").is_file()


def test_a_busy_probe_never_undercuts_the_days_quiet_figure(monkeypatch, tmp_path):
    from charlstm.training import sizing

    monkeypatch.setenv("CHARLSTM_SPEED_CACHE", str(tmp_path / "speed.json"))
    monkeypatch.setattr(sizing, "measure_speed", lambda *args, **kwargs: 10_500.0)
    sizing.cached_speed_probe(65, "cpu", "fp32", busy=lambda: 0.0)("small")
    monkeypatch.setattr(sizing.time, "time", lambda real=sizing.time.time: real() + 2 * sizing.FRESH_SECONDS)
    monkeypatch.setattr(sizing, "measure_speed", lambda *args, **kwargs: 400.0)
    assert sizing.cached_speed_probe(65, "cpu", "fp32", busy=lambda: 1.8)("small") == 10_500.0
