import os
import subprocess
import sys

from click.testing import CliRunner

from charlstm.interface.cli import cli


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "charlstm", *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_train_then_sample_finds_the_newest_run(tmp_path, tiny_corpus_file, monkeypatch):
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    trained = runner.invoke(cli, ["train", str(tiny_corpus_file), "--steps", "20", "--batch-size", "8",
                                  "--seq-len", "32", "--hidden", "32", "--layers", "1", "--precision", "fp32"])
    assert trained.exit_code == 0, trained.output
    sampled = runner.invoke(cli, ["sample", "--temp", "0.8", "--length", "60", "--seed", "1"])
    assert sampled.exit_code == 0, sampled.output
    assert len(sampled.stdout) == 61  # 60 characters and a newline
    primed = runner.invoke(cli, ["sample", "--prime", "The", "--length", "30", "-n", "3", "--top-k", "5", "--top-p", "0.9"])
    assert primed.exit_code == 0, primed.output
    assert primed.stdout.count("--- sample") == 3
    exact = runner.invoke(cli, ["sample", "--temp", "0", "--length", "40", "--precision", "fp32"])
    assert exact.exit_code == 0 and exact.stdout == runner.invoke(cli, ["sample", "--temp", "0", "--length", "40", "--precision", "fp32"]).stdout


def test_version_and_module_entry_point():
    done = run_cli("--version")
    assert done.returncode == 0 and "0.1.0" in done.stdout


def test_errors_are_one_line_without_traceback(tmp_path):
    cases = [
        ("train", str(tmp_path / "missing.txt")),
        ("sample", "-c", str(tmp_path / "nothing")),
        ("sample", "--temp", "-1"),
        ("sample", "--top-p", "1.5"),
        ("sample", "--length", "0"),
        ("train", "--bogus-option"),
    ]
    for args in cases:
        done = run_cli(*args, cwd=tmp_path)
        assert done.returncode != 0, args
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), (args, done.stderr)
        assert "Traceback" not in done.stderr


def test_debug_shows_the_traceback(tmp_path):
    done = run_cli("--debug", "train", str(tmp_path / "missing.txt"))
    assert done.returncode != 0 and "Traceback" in done.stderr


def test_a_speed_timed_on_a_busy_machine_is_said_to_size_this_run_only(tmp_path, tiny_corpus_file, monkeypatch):
    from charlstm.training import sizing

    monkeypatch.setattr(sizing, "BusyElsewhere", lambda: (lambda: 1.5))  # other programs keep 1.5 cores busy
    monkeypatch.setattr(sizing, "measure_speed", lambda *args, **kwargs: 50_000.0)
    done = CliRunner().invoke(cli, ["train", str(tiny_corpus_file), "--time", "2s", "--out", str(tmp_path), "--precision", "fp32"])
    assert done.exit_code == 0, done.output
    assert "other programs kept 1.5 cores busy while the tiny shape was timed" in " ".join(done.stderr.split())


def test_the_header_shows_the_start_up_and_whether_the_corpus_came_from_the_cache(tmp_path, tiny_corpus_file):
    args = ["train", str(tiny_corpus_file), "--steps", "2", "--hidden", "16", "--layers", "1", "--out", str(tmp_path),
            "--precision", "fp32"]
    first, second = CliRunner().invoke(cli, [*args, "--name", "first"]), CliRunner().invoke(cli, [*args, "--name", "second"])
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    first_line = next(line for line in first.stderr.splitlines() if "start-up" in line)
    second_line = next(line for line in second.stderr.splitlines() if "start-up" in line)
    assert "not counted in the budget" in first_line and "the corpus read and encoded" in first_line
    assert "the corpus from the cache" in second_line
