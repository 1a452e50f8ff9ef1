from charlstm.training.presets import PRESETS, auto_dropout, auto_size

SHAKESPEARE_CHARS = 1_000_000


def test_size_grows_with_the_budget_on_a_tiny_shakespeare_sized_corpus():
    picks = [auto_size(seconds, SHAKESPEARE_CHARS) for seconds in (60, 180, 240, 600, 3600, 4 * 3600)]
    assert picks == ["small", "small", "small", "medium", "medium", "large"]
    assert auto_size(None, SHAKESPEARE_CHARS) == auto_size(600, SHAKESPEARE_CHARS)


def test_small_corpora_get_small_models_whatever_the_budget():
    assert auto_size(4 * 3600, 20_000) == "tiny"
    assert auto_size(4 * 3600, 200_000) == "small"


def test_long_runs_get_dropout_short_runs_do_not():
    assert auto_dropout(180, PRESETS["small"]) == 0.0
    assert auto_dropout(600, PRESETS["small"]) == 0.1
    assert auto_dropout(None, PRESETS["medium"]) == PRESETS["medium"].dropout


def test_the_python_api_defaults_are_the_preset_a_default_ten_minute_run_picks():
    from charlstm import ModelConfig, TrainConfig

    preset = PRESETS[auto_size(600, SHAKESPEARE_CHARS)]
    model, train = ModelConfig(vocab_size=65), TrainConfig(steps=1)
    assert model == preset.model_config(65)
    assert (train.batch_size, train.seq_len, train.lr) == (preset.batch_size, preset.seq_len, preset.lr)
