"""`score --lines`: every line scored as `score` would score it alone, ranked, thresholded and
measured against labels."""

import json
import math

import numpy as np
import pytest
from conftest import main_outcome

from charlstm import load
from charlstm.analysis.lines import judge_lines, precision_at, roc_auc, score_lines
from charlstm.analysis.scoring import surprisal

NORMAL = ["The cat sat on a mat.", "His dog ran to her red ball.", "We saw it!", "The dog sat on the mat."]
ODD = "Zq%% kxj ww#"


def test_each_line_costs_what_scoring_it_alone_costs(trained_run):
    loaded = load(trained_run)
    text = "\n".join(NORMAL + [ODD, "", "the cat € sat"]) + "\n"
    scores = score_lines(loaded, text)
    assert [line.text for line in scores.lines] == NORMAL + [ODD, "", "the cat € sat"]
    for line in scores.lines:
        alone = surprisal(loaded, line.text + "\n").bits * math.log(2)
        known = ~np.isnan(alone)
        assert len(line.nats) == len(line.text) + 1
        assert np.allclose(line.nats[known], alone[known], atol=1e-4)
    euro = scores.lines[-1]
    assert euro.unknown == 1 and euro.nats[8] > 0  # charged, not skipped
    odd = scores.lines[len(NORMAL)]
    assert all(odd.mean_nats > line.mean_nats for line in scores.lines[: len(NORMAL)])


def test_carried_state_reads_the_file_as_one_stream(trained_run):
    loaded = load(trained_run)
    text = "\n".join(NORMAL)  # no final line break: the last line is scored with one
    carried = score_lines(loaded, text, carry=True)
    whole = surprisal(loaded, text + "\n").bits * math.log(2)
    assert np.allclose(np.concatenate([line.nats for line in carried.lines]), whole, atol=1e-4)
    fresh = score_lines(loaded, text)
    assert fresh.lines[0].nats == pytest.approx(carried.lines[0].nats, abs=1e-4)
    assert not np.allclose(fresh.lines[1].nats, carried.lines[1].nats, atol=1e-3)


def test_batches_of_many_lengths_give_the_same_scores(trained_run, monkeypatch):
    from charlstm.analysis import lines as module

    loaded = load(trained_run)
    text = "\n".join(NORMAL * 5 + [ODD, "a" * 200]) + "\n"
    together = score_lines(loaded, text)
    monkeypatch.setattr(module, "BATCH_ROWS", 3)
    in_threes = score_lines(loaded, text)
    for a, b in zip(together.lines, in_threes.lines):
        assert np.allclose(a.nats, b.nats, atol=1e-5)


def test_auc_and_precision_against_known_answers():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.5])
    labels = np.array([1, 0, 1, 0, 0, 1])
    # positive/negative pairs won: 0.9 beats 3, 0.7 beats 2, 0.5 ties one (half) and beats none
    assert roc_auc(scores, labels) == pytest.approx((3 + 2 + 0.5) / 9)
    assert roc_auc(scores, 1 - labels) == pytest.approx(1 - (3 + 2 + 0.5) / 9)
    assert precision_at(scores, labels, 2) == 0.5 and precision_at(scores, labels, 1) == 1.0


def test_reference_threshold_flags_only_lines_above_it(trained_run):
    loaded = load(trained_run)
    reference = score_lines(loaded, "\n".join(NORMAL * 3))
    scores = score_lines(loaded, "\n".join(NORMAL + [ODD]))
    judged = judge_lines(scores, "mean", reference=reference, percentile=100, labels=np.array([0, 0, 0, 0, 1]), top=1)
    assert judged.threshold == pytest.approx(max(line.mean_nats for line in reference.lines))
    assert list(judged.flagged) == [False, False, False, False, True]
    assert judged.auc == 1.0 and judged.precision == {1: 1.0}


def test_score_lines_command_table_jsonl_and_exit_status(trained_run, tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(NORMAL + [ODD]) + "\n")
    normal = tmp_path / "normal.txt"
    normal.write_text("\n".join(NORMAL * 3) + "\n")
    labels = tmp_path / "labels.txt"
    labels.write_text("0\n0\n0\n0\n1\n")
    shown = main_outcome("score", "--lines", str(lines), "-c", str(trained_run), "--top", "2", "--labels", str(labels))
    assert shown.code == 0, shown.stderr
    assert "ROC AUC 1.0000" in shown.stdout and "top 2 of 5" in shown.stdout
    flagged = main_outcome("score", "--lines", str(lines), "-c", str(trained_run), "--jsonl", "--reference", str(normal),
                           "--percentile", "100")
    assert flagged.code == 3
    records = [json.loads(line) for line in flagged.stdout.splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["flagged"] for r in records] == [False, False, False, False, True]
    assert records[4]["text"] == ODD and records[4]["chars"] == len(ODD) + 1
    calm = main_outcome("score", "--lines", str(normal), "-c", str(trained_run), "--jsonl", "--reference", str(normal),
                        "--percentile", "100")
    assert calm.code == 0


def test_score_lines_refuses_bad_input_in_one_line(trained_run, tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(NORMAL) + "\n")
    short = tmp_path / "labels.txt"
    short.write_text("0\n1\n")
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("0\nyes\n0\n0\n")
    run = ("score", "--lines", str(lines), "-c", str(trained_run))
    assert "2 labels for 4 lines" in main_outcome(*run, "--labels", str(short)).error_line
    assert "must be 0 or 1" in main_outcome(*run, "--labels", str(wrong)).error_line
    assert "does not exist; give the path of a text file" in main_outcome("score", "--lines", str(tmp_path / "nope"), "-c", str(trained_run)).error_line
    assert "leave out TEXT" in main_outcome(*run, "hello").error_line
    assert "--jsonl goes with --lines" in main_outcome("score", "hi", "-c", str(trained_run), "--jsonl").error_line
    no_ones = tmp_path / "zeros.txt"
    no_ones.write_text("0\n0\n0\n0\n")
    assert "at least one 1 and one 0" in main_outcome(*run, "--labels", str(no_ones)).error_line
