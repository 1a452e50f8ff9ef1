import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from charlstm import load
from charlstm.analysis.scoring import (
    evaluate_text,
    profile_vocab,
    split_text,
    summarize_run,
    surprisal,
)
from charlstm.interface.cli import cli, main
from charlstm.interface.views import loss_chart
from charlstm.training.checkpoint import read_evaluations


def test_eval_of_the_validation_split_matches_the_trainers_evaluation(trained_run, tiny_text):
    for tag in ("best", "last"):
        loaded = load(trained_run, prefer=tag)
        result = evaluate_text(loaded, split_text(tiny_text, 0.1, "val"))
        assert abs(result.loss - loaded.config["metrics"]["val_loss"]) < 1e-6
        assert result.bpc == pytest.approx(result.loss / math.log(2))
        assert result.perplexity == pytest.approx(math.exp(result.loss))
    assert abs(result.loss - read_evaluations(trained_run)[-1]["val_loss"]) < 1e-6


def test_eval_counts_unknown_characters_and_scores_the_rest(trained_run, tiny_text):
    loaded = load(trained_run)
    text = tiny_text[:3000]
    clean = evaluate_text(loaded, text)
    dirty = evaluate_text(loaded, text[:1000] + "€€ñ" + text[1000:])
    assert dirty.unknown == {"€": 2, "ñ": 1} and dirty.unknown_count == 3
    assert dirty.text_chars == clean.text_chars + 3
    assert dirty.loss == pytest.approx(clean.loss, abs=1e-6)


def test_one_stream_reads_the_whole_text(trained_run, tiny_text):
    result = evaluate_text(load(trained_run), tiny_text[:2000], streams=1, seq_len=64)
    assert result.streams == 1 and result.scored_chars == 1999


def test_surprisal_is_minus_log2_of_the_next_character_probability(trained_run):
    loaded = load(trained_run)
    text = "The cat sat."
    result = surprisal(loaded, text)
    expected = []
    with torch.no_grad():
        _, state = loaded.model(torch.tensor([[loaded.vocab.index("\n")]]), None)  # the lead-in's first newline
        previous = "\n"
        for char in text:
            logits, state = loaded.model(torch.tensor([[loaded.vocab.index(previous)]]), state)
            probs = torch.softmax(logits[0, -1], dim=-1)
            expected.append(-math.log2(probs[loaded.vocab.index(char)].item()))
            previous = char
    assert np.allclose(result.bits, expected, atol=1e-4)


def test_unknown_characters_are_not_scored_and_a_misspelt_word_stands_out(trained_run):
    result = surprisal(load(trained_run), "The cat sat on the mat.\nThe dog ran to wbgmd€ ball.")
    assert np.isnan(result.bits[result.text.index("€")]) and result.unknown == {"€": 1}
    assert np.isfinite(result.mean_bits)
    assert result.spans(1)[0].text == "wbgmd€"
    assert (result.spans(1)[0].line, result.spans(1)[0].column) == (2, 16)


def test_vocabulary_profile_counts_each_kind():
    profile = profile_vocab(list("\n !$,.09Aaé\x07"))
    assert (profile.letters, profile.digits, profile.punctuation, profile.symbols) == (3, 2, 3, 1)
    assert (profile.whitespace, profile.control, profile.non_ascii) == (2, 1, 1)


def test_loss_chart_draws_both_curves_between_the_extremes():
    records = [{"step": s, "train_loss": 4 - s / 50} for s in range(0, 101, 10)]
    records += [{"step": 50, "train_loss": 3.0, "val_loss": 3.2}, {"step": 100, "train_loss": 2.0, "val_loss": 2.5}]
    chart = loss_chart(sorted(records, key=lambda r: r["step"]), width=40, height=8).plain
    lines = chart.splitlines()
    assert lines[0].strip().startswith("4.000") and lines[7].strip().startswith("2.000")
    assert chart.count("◆") == 2 + 1  # two evaluations and the legend
    assert "step 100" in chart


def test_summary_reads_config_and_metrics(trained_run):
    summary = summarize_run(trained_run)
    assert summary.checkpoint == trained_run / "best"
    assert len(summary.evaluations) == 3 and len(summary.records) > 3
    assert summary.profile.size == len(summary.vocab)


# -- the commands, end to end ------------------------------------------------------------------------

def invoke(*args: str):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_eval_command_prints_a_table_and_json(trained_run, tiny_corpus_file, tiny_text):
    table = invoke("eval", str(tiny_corpus_file), "-c", str(trained_run), "--split", "val").stdout
    assert "bpc" in table and "perplexity" in table
    figures = json.loads(invoke("eval", str(tiny_corpus_file), "-c", str(trained_run), "--split", "val", "--json").stdout)
    assert figures["loss"] == pytest.approx(load(trained_run).config["metrics"]["val_loss"], abs=1e-6)
    assert figures["unknown_chars"] == 0 and figures["split"] == "val" and figures["chars_per_sec"] > 0


def test_score_command_shows_a_heat_map_and_writes_html(trained_run, tmp_path):
    page = tmp_path / "score.html"
    shown = invoke("score", "The cat sat on a wbgmd.", "-c", str(trained_run), "--html", str(page)).stdout
    lines = shown.splitlines()
    assert lines[0] == "The cat sat on a wbgmd." and set(lines[1]) <= set("▁▂▃▄▅▆▇█")
    assert "most surprising words" in shown and "wbgmd." in shown
    document = page.read_text(encoding="utf-8")
    assert document.startswith("<!doctype html>") and "bits" in document
    assert "<script" not in document and "http" not in document  # self-contained
    assert document.count("<span style=") == len("The cat sat on a wbgmd.") + 5  # characters and legend


def test_inspect_command_ranks_units_shows_bands_and_saturation(trained_run):
    text = 'The cat sat.\nThe dog ran to (her red) ball.\n'
    top = invoke("inspect", text, "-c", str(trained_run), "--top", "4").stdout
    assert "not ranked" in top and "in_quotes" in top
    assert top.count("layer ") >= 3 and "gate saturation" in top
    one = invoke("inspect", text, "-c", str(trained_run), "--layer", "0", "--unit", "5", "--gate", "forget").stdout
    assert one.startswith("layer 0 unit 5: forget gate") and "forget" in one


def test_info_and_plot_commands(trained_run, tmp_path, monkeypatch):
    panel = invoke("info", str(trained_run)).stdout
    for expected in ("LSTM 2x48", "vocabulary", "best val", "◆ validation loss", "batch_size 8"):
        assert expected in panel
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    missing = CliRunner().invoke(cli, ["plot", str(trained_run), "-o", str(tmp_path / "c.png")])
    assert missing.exit_code != 0 and "pip install 'charlstm[plot]'" in str(missing.exception)
    assert not (tmp_path / "c.png").exists()


def test_plot_writes_a_png(trained_run, tmp_path):
    pytest.importorskip("matplotlib")
    invoke("plot", str(trained_run), "-o", str(tmp_path / "curves.png"))
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_new_commands_fail_in_one_line(trained_run, tmp_path, capsys):
    cases = [
        ("eval", str(tmp_path / "missing.txt"), "-c", str(trained_run)),
        ("score", "-c", str(trained_run)),
        ("score", "abc", "-f", str(tmp_path / "x.txt"), "-c", str(trained_run)),
        ("inspect", "abc", "-c", str(trained_run), "--layer", "7", "--unit", "0"),
        ("inspect", "abc", "-c", str(trained_run), "--unit", "999"),
        ("inspect", "abc", "-c", str(trained_run), "--gate", "sideways"),
        ("info", str(tmp_path / "nothing")),
        ("score", "The cat", "-c", str(trained_run), "--html", str(tmp_path / "no" / "dir" / "x.html")),
        ("score", "€€€", "-c", str(trained_run)),
    ]
    for args in cases:
        with pytest.raises(SystemExit) as exit:
            main(list(args))
        assert exit.value.code != 0, args
        stderr = capsys.readouterr().err
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), (args, stderr)
