import json
import shutil

import pytest
import torch

from charlstm import load
from charlstm.base.errors import CheckpointError
from charlstm.training.checkpoint import latest_run, resolve_checkpoint


def test_save_then_load_gives_identical_logits(trained_run):
    loaded = load(trained_run, prefer="last")
    again = load(trained_run / "last")
    ids = torch.randint(0, len(loaded.vocab), (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids)[0], again.model(ids)[0], rtol=0, atol=0)
        state = torch.load(trained_run / "last" / "training_state.pt", weights_only=True)
        assert state["step"] == loaded.config["metrics"]["step"]


def test_run_directory_prefers_best_and_falls_back_to_last(tmp_path, trained_run):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert resolve_checkpoint(run) == run / "best"
    shutil.rmtree(run / "best")
    assert resolve_checkpoint(run) == run / "last"


def test_newest_run_is_found(tmp_path, trained_run):
    root = tmp_path / "checkpoints"
    for name in ("older", "newer"):
        shutil.copytree(trained_run, root / name)
    config = root / "newer" / "best" / "config.json"
    config.touch()
    assert latest_run(root) == root / "newer"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "config.json").write_text('{"format_version": 1}'), "lacks the 'model' field"),
        (lambda d: (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()), "format_version": 99})), "newer"),
        (lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 50), "cannot be read"),
        (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:1000]), "cannot be read"),
    ],
)
def test_damaged_checkpoints_are_refused_clearly(tmp_path, trained_run, damage, message):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(trained_run / "best", checkpoint)
    damage(checkpoint)
    with pytest.raises(CheckpointError, match=message):
        load(checkpoint)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path, trained_run):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(trained_run / "best", checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    config["model"]["hidden_size"] += 1
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not match its config"):
        load(checkpoint)
